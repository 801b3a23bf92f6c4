import type { UseCacheHandler } from './index'

/** The 'use cache' handler configured from the environment (see `createUseCacheHandler`). */
declare const handler: UseCacheHandler & { default: UseCacheHandler }
export = handler
