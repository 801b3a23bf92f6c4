import { cachedProducts, fetchProducts } from '@/lib/products'
import { freshValue, recordRun } from '@/lib/runs'

/**
 * `GET /api/products`: a route handler (`APP_ROUTE`) built from the tagged fetch and the tagged
 * `unstable_cache`, so its entry carries the tag `products` too. Long revalidate: only the tag
 * (or `revalidatePath('/api/products')`) makes it change.
 */
export const revalidate = 3600

export async function GET(): Promise<Response> {
  const [fetched, cached] = await Promise.all([fetchProducts(), cachedProducts()])
  const runs = recordRun('products-route')
  return Response.json({ value: freshValue(), runs, fetched, cached })
}
