import { Suspense } from 'react'
import { connection } from 'next/server'
import { getProducts } from '@/lib/cached'

// `connection()` keeps this part out of the prerender: it is read through the cache handler on
// every request. (Without it `next build` still makes it a dynamic hole because expire < 300 s,
// but warns "Unexpected cache miss after cache warming phase" for a short-lived cache.)
async function Products() {
  await connection()
  return <code data-testid="products">{await getProducts('home')}</code>
}

export default function Home() {
  return (
    <main>
      <h1>&apos;use cache&apos; with cacheTag(&apos;products&apos;)</h1>
      <p>Fresh for 2 s, then served stale once while it regenerates (cacheLife stale 1, revalidate 2, expire 60).</p>
      <p>
        products:{' '}
        <Suspense fallback={<code>loading</code>}>
          <Products />
        </Suspense>
      </p>
    </main>
  )
}
