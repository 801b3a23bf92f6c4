/**
 * A value that differs on every evaluation: creation time (ms) + a random id.
 * Rendered as the only text child of an element with a `data-testid`, so the e2e tests can
 * parse it from HTML and from RSC payloads alike (see __test__/e2e/next-app.mjs `parseValue`).
 */
export function freshValue(): string {
  return `${Date.now()}-${Math.random().toString(36).slice(2, 10)}`
}
