import type { ReactNode } from 'react'
import Link from 'next/link'

export const metadata = { title: 'strata-cache demo' }

export default function RootLayout({ children }: { children: ReactNode }) {
  return (
    <html lang="en">
      <body style={{ fontFamily: 'system-ui, sans-serif', margin: '2rem' }}>
        <nav style={{ display: 'flex', gap: '1rem', marginBottom: '1.5rem' }}>
          <Link href="/">products</Link>
          <Link href="/action">server action</Link>
          <Link href="/remote">remote</Link>
          <Link href="/nested">nested</Link>
          <Link href="/static">static</Link>
          <Link href="/no-cache">no cache</Link>
          <a href="/api/strata-stats">stats</a>
        </nav>
        {children}
      </body>
    </html>
  )
}
