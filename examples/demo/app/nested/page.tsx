import { Suspense } from 'react'
import { connection } from 'next/server'
import { getInner, getOuter1, getOuter2 } from '@/lib/cached'

async function Nested() {
  await connection()
  const [outer1, outer2, inner] = await Promise.all([getOuter1(), getOuter2(), getInner()])
  return (
    <ul>
      <li>
        outer1 (tags outer1, inner): <code data-testid="outer1">{outer1.outer}</code>, its inner:{' '}
        <code data-testid="outer1-inner">{outer1.inner}</code>
      </li>
      <li>
        outer2 (tags outer2, inner): <code data-testid="outer2">{outer2.outer}</code>, its inner:{' '}
        <code data-testid="outer2-inner">{outer2.inner}</code>
      </li>
      <li>
        inner (tag inner): <code data-testid="inner">{inner}</code>
      </li>
    </ul>
  )
}

export default function NestedPage() {
  return (
    <main>
      <h1>Nested caches</h1>
      <Suspense fallback={<p>loading</p>}>
        <Nested />
      </Suspense>
    </main>
  )
}
