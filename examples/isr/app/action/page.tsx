import { revalidateIsr, updateProducts } from './actions'

export default function ActionPage() {
  return (
    <main>
      <h1>Server actions</h1>
      <form action={revalidateIsr}>
        <button type="submit">revalidatePath(&apos;/isr&apos;)</button>
      </form>
      <form action={updateProducts}>
        <button type="submit">updateTag(&apos;products&apos;)</button>
      </form>
    </main>
  )
}
