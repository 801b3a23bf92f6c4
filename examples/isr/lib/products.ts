import { unstable_cache } from 'next/cache'
import { freshValue, recordRun } from './runs'

/**
 * The origin the tagged fetch reads (examples/isr/origin.mjs; the e2e test starts one in its own
 * process and passes its URL). Read at request time, not inlined at build time.
 */
function originUrl(): string {
  return process.env.ISR_ORIGIN_URL || 'http://127.0.0.1:3001'
}

/** What the origin answers: how many requests it has served so far, and when. */
export type OriginData = { hits: number; at: number }

/**
 * `fetch` with `next.tags`: a FETCH entry of the incremental cache tagged `products`. Its long
 * revalidate keeps time out of the picture, so only the tag invalidates it.
 */
export async function fetchProducts(): Promise<OriginData> {
  const res = await fetch(`${originUrl()}/data`, { next: { revalidate: 3600, tags: ['products'] } })
  if (!res.ok) throw new Error(`origin answered ${res.status}`)
  return res.json()
}

/** `unstable_cache` with tag `products` (also a FETCH entry, keyed by `products-uc`). */
export const cachedProducts = unstable_cache(
  async () => ({ value: freshValue(), runs: recordRun('unstable_cache') }),
  ['products-uc'],
  { tags: ['products'], revalidate: 3600 },
)
