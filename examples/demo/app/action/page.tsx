import { Products } from '@/lib/products'
import { refreshProducts } from './actions'

export default function ActionPage() {
  return (
    <main>
      <h1>Server action with updateTag(&apos;products&apos;)</h1>
      <p>
        The action expires every entry tagged products (this page&apos;s and the one on /); its own
        response already shows the new value.
      </p>
      <p>
        products:{' '}
        <Products view="action" />
      </p>
      <form action={refreshProducts}>
        <button type="submit" data-testid="refresh">
          updateTag(&apos;products&apos;)
        </button>
      </form>
    </main>
  )
}
