'use server'

import { updateTag } from 'next/cache'

/** Expires `products` now: this action's own re-render already reads a fresh value. */
export async function refreshProducts(): Promise<void> {
  updateTag('products')
}
