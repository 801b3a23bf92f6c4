import { freshValue, recordRun } from '@/lib/runs'

/**
 * `GET /api/time`: prerendered at build time and regenerated at most every 3 s (an `APP_ROUTE`
 * entry of the incremental cache). `value` changes on every execution; `runs` counts the
 * executions of this GET in the process that ran it (the build's own run included in a seed).
 */
export const revalidate = 3

export async function GET(): Promise<Response> {
  const runs = recordRun('time')
  return Response.json({ value: freshValue(), now: Date.now(), runs, pid: process.pid })
}
