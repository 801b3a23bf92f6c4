'use server'

import { revalidatePath, updateTag } from 'next/cache'

/** `revalidatePath('/isr')` from a server action: the next request to /isr regenerates it. */
export async function revalidateIsr(): Promise<void> {
  revalidatePath('/isr')
}

/** `updateTag('products')` from a server action: expires everything tagged products now. */
export async function updateProducts(): Promise<void> {
  updateTag('products')
}
