import type { ReactNode } from 'react'

export const metadata = { title: 'strata-cache ISR example' }

export default function RootLayout({ children }: { children: ReactNode }) {
  return (
    <html lang="en">
      <body style={{ fontFamily: 'system-ui, sans-serif', margin: '2rem' }}>
        <nav style={{ display: 'flex', gap: '1rem', marginBottom: '1.5rem' }}>
          <a href="/isr">ISR page</a>
          <a href="/products">products</a>
          <a href="/legacy">pages router</a>
          <a href="/action">server actions</a>
          <a href="/api/time">/api/time</a>
          <a href="/api/runs">runs</a>
        </nav>
        {children}
      </body>
    </html>
  )
}
