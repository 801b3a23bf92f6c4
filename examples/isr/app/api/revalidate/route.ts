import { revalidatePath, revalidateTag } from 'next/cache'
import type { NextRequest } from 'next/server'

/**
 * `GET|POST /api/revalidate`:
 * - `?tag=<t>&profile=max` → `revalidateTag(t, 'max')`: stale-while-revalidate, the next read
 *   serves the old entry while it is regenerated;
 * - `?tag=<t>` → `revalidateTag(t)` (the deprecated one-argument form, still supported at run
 *   time): the entries expire now, the next read regenerates them;
 * - `?path=</p>` → `revalidatePath(p)`.
 * `tag` and `path` may repeat and be combined.
 */
async function handle(request: NextRequest): Promise<Response> {
  const params = request.nextUrl.searchParams
  const tags = params.getAll('tag')
  const paths = params.getAll('path')
  const profile = params.get('profile')
  if (tags.length === 0 && paths.length === 0) {
    return Response.json({ error: 'pass ?tag=<tag>[&profile=max] and/or ?path=</path>' }, { status: 400 })
  }
  // The one-argument form is deprecated in the types (Next 16 wants a profile) but kept at run
  // time: it expires the tag at once.
  const expireNow = revalidateTag as unknown as (tag: string) => void
  for (const tag of tags) {
    if (profile) revalidateTag(tag, profile)
    else expireNow(tag)
  }
  for (const path of paths) revalidatePath(path)
  return Response.json({ revalidated: true, tags, paths, profile, now: Date.now() })
}

export const GET = handle
export const POST = handle
