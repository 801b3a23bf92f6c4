'use strict'
/**
 * The incremental cache handler configured from the environment, for `next.config.ts`:
 *
 *   cacheHandler: require.resolve('strata-cache/incremental'),
 *   cacheMaxMemorySize: 0, // strata-cache's L1 replaces Next's own memory cache
 *
 * Next imports this module and instantiates its default export (a class) for every incremental
 * cache it makes; all state is per process and shared with the 'use cache' handler.
 * Configuration is read when the handler is first used, at run time, not at `next build`.
 */
const { createIncrementalCacheHandler } = require('./index.js')

const Handler = createIncrementalCacheHandler()

module.exports = Handler
module.exports.default = Handler
