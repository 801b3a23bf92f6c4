'use strict'
/**
 * The 'use cache' handler configured from the environment, for `next.config.ts`:
 *
 *   cacheHandlers: {
 *     default: require.resolve('strata-cache/use-cache'),
 *     remote: require.resolve('strata-cache/use-cache'),
 *   }
 *
 * Next imports this module and uses its default export as the handler object (never `new`).
 * Configuration is read when the handler is first used, at run time, not at `next build`.
 */
const { createUseCacheHandler } = require('./index.js')

const handler = createUseCacheHandler()

module.exports = handler
module.exports.default = handler
