import { Suspense } from 'react'
import { connection } from 'next/server'
import { getProducts } from '@/lib/cached'
import { refreshProducts } from './actions'

// `connection()` keeps this part out of the prerender: it is read through the cache handler on
// every request. (Without it `next build` still makes it a dynamic hole because expire < 300 s,
// but warns "Unexpected cache miss after cache warming phase" for a short-lived cache.)
async function Products() {
  await connection()
  return <code data-testid="products">{await getProducts('action')}</code>
}

export default function ActionPage() {
  return (
    <main>
      <h1>Server action with updateTag(&apos;products&apos;)</h1>
      <p>
        The action expires every entry tagged products (this page&apos;s and the one on /); its own
        response already shows the new value.
      </p>
      <p>
        products:{' '}
        <Suspense fallback={<code>loading</code>}>
          <Products />
        </Suspense>
      </p>
      <form action={refreshProducts}>
        <button type="submit" data-testid="refresh">
          updateTag(&apos;products&apos;)
        </button>
      </form>
    </main>
  )
}
