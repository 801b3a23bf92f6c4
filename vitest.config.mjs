import { defineConfig } from 'vitest/config'

// Two projects:
// - `unit`: every __test__/**/*.test.mjs outside __test__/e2e, files in parallel;
// - `e2e`:  __test__/e2e/*.test.mjs. global-setup.mjs runs `next build` of examples/demo once;
//   each file starts its own `next start`. Files run one at a time (a Next server plus the test
//   process already saturate 2 cores), and only after the unit project (`groupOrder`), so the
//   timing-sensitive e2e checks (cacheLife windows of 2 s) don't compete with other tests.
export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: 'unit',
          include: ['__test__/**/*.test.mjs'],
          exclude: ['__test__/e2e/**', '**/node_modules/**'],
          testTimeout: 30_000,
          hookTimeout: 60_000,
          sequence: { groupOrder: 0 },
        },
      },
      {
        test: {
          name: 'e2e',
          include: ['__test__/e2e/**/*.test.mjs'],
          globalSetup: ['__test__/e2e/global-setup.mjs'],
          fileParallelism: false,
          testTimeout: 60_000,
          hookTimeout: 120_000, // beforeAll starts `next start`; globalSetup's build is not bound by it
          sequence: { groupOrder: 1 },
        },
      },
    ],
  },
})
