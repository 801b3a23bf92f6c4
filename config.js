'use strict'
/**
 * `strata-cache/config`: what `next.config.ts` needs, without loading the native addon.
 *
 *   import { withStrataCache } from 'strata-cache/config'
 *   export default withStrataCache({ cacheComponents: true })
 */
module.exports = require('./lib/with-strata-cache.js')
