import { connection } from 'next/server'
import { freshValue, recordRun } from '@/lib/runs'

/** Awaits `connection()`: request-time only, never cached, despite `revalidate`. */
export const revalidate = 3

export async function GET(): Promise<Response> {
  await connection()
  const runs = recordRun('connection')
  return Response.json({ value: freshValue(), runs })
}
