import { headers } from 'next/headers'
import { freshValue, recordRun } from '@/lib/runs'

/** Reads `headers()`: request-time only, never cached, despite `revalidate`. */
export const revalidate = 3

export async function GET(): Promise<Response> {
  const userAgent = (await headers()).get('user-agent')
  const runs = recordRun('headers')
  return Response.json({ value: freshValue(), runs, userAgent })
}
