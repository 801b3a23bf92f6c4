import { freshValue, recordRun } from '@/lib/runs'

/**
 * `GET|POST /api/mixed`: the same `revalidate = 3` as /api/time, plus a POST export. A route
 * that exports POST (or PUT, DELETE, PATCH, OPTIONS) is not prerendered at all, so GET is not
 * cached either (next `app-route/module.js` `hasNonStaticMethods`); POST never is.
 */
export const revalidate = 3

export async function GET(): Promise<Response> {
  const runs = recordRun('mixed:get')
  return Response.json({ value: freshValue(), runs })
}

export async function POST(): Promise<Response> {
  const runs = recordRun('mixed:post')
  return Response.json({ value: freshValue(), runs })
}
