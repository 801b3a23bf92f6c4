import { connection } from 'next/server'
import { allRuns } from '@/lib/runs'

/** The execution counters of this server process (see lib/runs.ts); never cached. */
export async function GET(): Promise<Response> {
  await connection()
  return Response.json({ pid: process.pid, runs: allRuns() }, { headers: { 'cache-control': 'no-store' } })
}
