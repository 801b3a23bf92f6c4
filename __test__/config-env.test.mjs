// A bad environment value: the handler's get stays a miss (never fails a render), the other
// methods reject with STRATA_CONFIG naming the variable. Own process: the store is per process.
import { createRequire } from 'node:module'
import { expect, it, vi } from 'vitest'

process.env.STRATA_L1_MAX_BYTES = 'plenty'
const require = createRequire(import.meta.url)
const { StrataError, config } = require('strata-cache')
const handler = require('strata-cache/use-cache')

it('a bad environment value is reported at first use, naming the variable', async () => {
  const warn = vi.spyOn(console, 'warn').mockImplementation(() => {})
  await expect(handler.get('k', [])).resolves.toBeUndefined()
  expect(warn.mock.calls.some((c) => String(c[0]).includes('STRATA_L1_MAX_BYTES'))).toBe(true)
  warn.mockRestore()
  const err = await handler.updateTags(['t']).then(() => null, (e) => e)
  expect(err).toBeInstanceOf(StrataError)
  expect(err.code).toBe('STRATA_CONFIG')
  expect(err.message).toContain('STRATA_L1_MAX_BYTES')
  expect(config()).toBeNull()
  // Fixing the environment before the next use works: nothing was half-initialised.
  process.env.STRATA_L1_MAX_BYTES = '8MiB'
  await handler.refreshTags()
  expect(config().l1MaxBytes).toBe(8 * 1024 * 1024)
})
