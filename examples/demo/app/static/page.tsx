import { getStatic } from '@/lib/cached'

export default async function StaticPage() {
  return (
    <main>
      <h1>Static page from a &apos;use cache&apos; function (tag static-tag)</h1>
      <p>
        Prerendered at build; <code>x-nextjs-cache</code> tells whether a response came from Next&apos;s
        incremental cache (HIT) or was served stale while regenerating (STALE).
      </p>
      <p>
        static: <code data-testid="static">{await getStatic()}</code>
      </p>
    </main>
  )
}
