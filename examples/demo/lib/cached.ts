import { cacheLife, cacheTag } from 'next/cache'
import { freshValue } from './value'

/**
 * `'use cache'` (handler kind `default`), tag `products`, with a short revalidate window so
 * stale-while-revalidate is observable: fresh for 2 s, then served stale once while it is
 * regenerated in the background, hard-expired after 60 s. `view` is part of the cache key: `/`
 * and `/action` read two entries that share the tag, so invalidating the tag from the action must
 * reach the entry the action did not re-render.
 */
export async function getProducts(view: 'home' | 'action'): Promise<string> {
  'use cache'
  cacheTag('products')
  cacheLife({ stale: 1, revalidate: 2, expire: 60 })
  return `${freshValue()}-${view}`
}

/** `'use cache: remote'` (handler kind `remote`), tag `remote-tag`, long-lived. */
export async function getRemote(): Promise<string> {
  'use cache: remote'
  cacheTag('remote-tag')
  cacheLife('hours')
  return freshValue()
}

/** Inner cache shared by both outer caches below; its tag and lifetime propagate to them. */
export async function getInner(): Promise<string> {
  'use cache'
  cacheTag('inner')
  cacheLife('hours')
  return freshValue()
}

export async function getOuter1(): Promise<{ outer: string; inner: string }> {
  'use cache'
  cacheTag('outer1')
  return { outer: freshValue(), inner: await getInner() }
}

export async function getOuter2(): Promise<{ outer: string; inner: string }> {
  'use cache'
  cacheTag('outer2')
  return { outer: freshValue(), inner: await getInner() }
}

/**
 * Default cacheLife (revalidate 15 min): prerendered into a fully static page at build time and
 * served by Next's incremental cache (`x-nextjs-cache`); the handler is read when the page is
 * regenerated after `revalidateTag('static-tag', 'max')`.
 */
export async function getStatic(): Promise<string> {
  'use cache'
  cacheTag('static-tag')
  return freshValue()
}
