import { cookies } from 'next/headers'
import { freshValue, recordRun } from '@/lib/runs'

/** Reads `cookies()`: request-time only, never cached, despite `revalidate`. */
export const revalidate = 3

export async function GET(): Promise<Response> {
  const theme = (await cookies()).get('theme')?.value ?? null
  const runs = recordRun('cookies')
  return Response.json({ value: freshValue(), runs, theme })
}
