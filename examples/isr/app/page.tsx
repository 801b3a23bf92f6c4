export default function Home() {
  return (
    <main>
      <h1>strata-cache: the incremental cache (ISR, route handlers, fetch cache)</h1>
      <p>See examples/isr/README.md for what each route shows.</p>
    </main>
  )
}
