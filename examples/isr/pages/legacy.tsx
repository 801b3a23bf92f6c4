import type { GetStaticProps } from 'next'
import { freshValue, recordRun } from '@/lib/runs'

type Props = { value: string; runs: number }

/** Pages Router ISR (`PAGES` entry): getStaticProps with `revalidate: 3`. */
export const getStaticProps: GetStaticProps<Props> = async () => {
  const runs = recordRun('legacy')
  return { props: { value: freshValue(), runs }, revalidate: 3 }
}

export default function Legacy({ value, runs }: Props) {
  return (
    <main style={{ fontFamily: 'system-ui, sans-serif', margin: '2rem' }}>
      <h1>Pages Router, getStaticProps revalidate: 3</h1>
      <p>
        generated: <code data-testid="legacy">{value}</code> (run #<span data-testid="runs">{runs}</span>)
      </p>
    </main>
  )
}
