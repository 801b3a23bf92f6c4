import { Suspense } from 'react'
import { connection } from 'next/server'
import { getProducts } from './cached'

// `connection()` keeps this part out of the prerender: it is read through the cache handler on
// every request. (Without it `next build` still makes it a dynamic hole because expire < 300 s,
// but warns "Unexpected cache miss after cache warming phase" for a short-lived cache.)
async function ProductsValue({ view }: { view: 'home' | 'action' }) {
  await connection()
  return <code data-testid="products">{await getProducts(view)}</code>
}

/** The `products` value of `view`, read on every request. */
export function Products({ view }: { view: 'home' | 'action' }) {
  return (
    <Suspense fallback={<code>loading</code>}>
      <ProductsValue view={view} />
    </Suspense>
  )
}
