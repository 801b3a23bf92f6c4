import { freshValue, recordRun } from '@/lib/runs'

/** `dynamic = 'force-static'`: prerendered once at build time, never revalidated by time. */
export const dynamic = 'force-static'

export async function GET(): Promise<Response> {
  const runs = recordRun('static')
  return Response.json({ value: freshValue(), runs, pid: process.pid })
}
