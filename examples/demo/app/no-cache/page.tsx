import { Suspense } from 'react'
import { connection } from 'next/server'

async function Now() {
  await connection()
  return <code data-testid="now">{`${Date.now()}-${Math.random().toString(36).slice(2, 10)}`}</code>
}

export default function NoCachePage() {
  return (
    <main>
      <h1>No cache</h1>
      <p>Rendered on every request without any cache: the cache handler is never called.</p>
      <p>
        now:{' '}
        <Suspense fallback={<code>loading</code>}>
          <Now />
        </Suspense>
      </p>
    </main>
  )
}
