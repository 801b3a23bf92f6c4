import { cachedProducts, fetchProducts } from '@/lib/products'
import { freshValue, recordRun } from '@/lib/runs'

/**
 * An ISR page whose data carries the tag `products`: a `fetch` with `next.tags` and an
 * `unstable_cache` with `tags`. Both tags end up on the page's entry too, so
 * `revalidateTag('products')` reaches the page and its data.
 */
export const revalidate = 3600

export default async function ProductsPage() {
  const [fetched, cached] = await Promise.all([fetchProducts(), cachedProducts()])
  recordRun('products')
  return (
    <main>
      <h1>Products (tag products)</h1>
      <p>
        page rendered: <code data-testid="rendered">{freshValue()}</code>
      </p>
      <p>
        fetch (origin hit #): <code data-testid="fetched">{String(fetched.hits)}</code>
      </p>
      <p>
        unstable_cache: <code data-testid="cached">{cached.value}</code>
      </p>
    </main>
  )
}
