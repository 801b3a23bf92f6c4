import { Suspense } from 'react'
import { connection } from 'next/server'
import { getRemote } from '@/lib/cached'

// `connection()` makes this part request-time, so every request reads the entry through the
// `remote` cache handler instead of the prerendered static shell.
async function Remote() {
  await connection()
  return <code data-testid="remote">{await getRemote()}</code>
}

export default function RemotePage() {
  return (
    <main>
      <h1>&apos;use cache: remote&apos; with cacheTag(&apos;remote-tag&apos;)</h1>
      <p>
        remote:{' '}
        <Suspense fallback={<code>loading</code>}>
          <Remote />
        </Suspense>
      </p>
    </main>
  )
}
