// A/A control for bench/run.mjs (`--aa`): a second instance of Next's built-in handler posing as
// "ours". Its ratios to the built-in show how precise the method is on this machine (ideally 1.00×).
const { createDefaultCacheHandler } = require('next/dist/server/lib/cache-handlers/default');

exports.createUseCacheHandler = ({ l1MaxBytes }) => createDefaultCacheHandler(l1MaxBytes);
