import { freshValue, recordRun } from '@/lib/runs'

/** An ISR page (`APP_PAGE`): prerendered at build time, regenerated at most every 3 s. */
export const revalidate = 3

export default function IsrPage() {
  const runs = recordRun('isr')
  return (
    <main>
      <h1>ISR page, revalidate = 3</h1>
      <p>
        rendered: <code data-testid="isr">{freshValue()}</code> (render #<span data-testid="runs">{runs}</span> of
        this process)
      </p>
    </main>
  )
}
