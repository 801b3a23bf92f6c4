import { Products } from '@/lib/products'

export default function Home() {
  return (
    <main>
      <h1>&apos;use cache&apos; with cacheTag(&apos;products&apos;)</h1>
      <p>Fresh for 2 s, then served stale once while it regenerates (cacheLife stale 1, revalidate 2, expire 60).</p>
      <p>
        products:{' '}
        <Products view="home" />
      </p>
    </main>
  )
}
