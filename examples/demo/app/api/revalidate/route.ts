import { revalidatePath, revalidateTag } from 'next/cache'
import type { NextRequest } from 'next/server'

/**
 * `POST|GET /api/revalidate?tag=<tag>[&expire=<seconds>]` → `revalidateTag(tag, 'max')`
 * (stale-while-revalidate: the next read serves the old value once while regenerating), or
 * `revalidateTag(tag, { expire })` when `expire` is given (`expire=0`: hard-expire now).
 * `?path=</path>` → `revalidatePath(path)` (the next request to that path regenerates).
 * Both may be given; `tag` may repeat.
 */
async function handle(request: NextRequest): Promise<Response> {
  const params = request.nextUrl.searchParams
  const tags = params.getAll('tag')
  const paths = params.getAll('path')
  const expireParam = params.get('expire')
  const profile = expireParam === null ? 'max' : { expire: Number(expireParam) }
  if (tags.length === 0 && paths.length === 0) {
    return Response.json({ error: 'pass ?tag=<tag> and/or ?path=</path>' }, { status: 400 })
  }
  if (typeof profile === 'object' && !Number.isFinite(profile.expire)) {
    return Response.json({ error: 'expire must be a number of seconds' }, { status: 400 })
  }
  for (const tag of tags) revalidateTag(tag, profile)
  for (const path of paths) revalidatePath(path)
  return Response.json({ revalidated: true, tags, paths, profile, now: Date.now() })
}

export const GET = handle
export const POST = handle
