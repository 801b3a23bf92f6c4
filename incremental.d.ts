import type { IncrementalCacheHandler } from './index'

/** The incremental cache handler class configured from the environment (see `createIncrementalCacheHandler`). */
declare const Handler: IncrementalCacheHandler & { default: IncrementalCacheHandler }
export = Handler
