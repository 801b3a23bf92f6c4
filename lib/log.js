'use strict'
/**
 * strata-cache's log: one line per message on the console, filtered by `STRATA_LOG`
 * (silent | error | warn | info | debug; default info, read at every message), and the one
 * process-wide set of messages already logged once.
 */
const { toStrataError } = require('./errors.js')

const LOG_LEVELS = { silent: 0, error: 1, warn: 2, info: 3, debug: 4 }
/** The ids of the messages logged once in this process (`logOnce`). */
const loggedOnce = new Set()

/**
 * Whether debug lines are on, as `STRATA_LOG` said when it was last read (at load, at every
 * message, at every `debugEnabled()`). The L1 paths (a hit, an L1-only write) test this field
 * instead of calling `debugEnabled()`: reading `process.env` costs a good part of a hit.
 */
const debug = { on: false }

function logLevel() {
  const level = LOG_LEVELS[(process.env.STRATA_LOG || 'info').toLowerCase()] ?? LOG_LEVELS.info
  debug.on = level >= LOG_LEVELS.debug
  return level
}
logLevel()

/** Whether `STRATA_LOG=debug` (read now): check it before building a debug line. */
function debugEnabled() {
  return logLevel() >= LOG_LEVELS.debug
}

function log(level, message, err) {
  if (LOG_LEVELS[level] > logLevel()) return
  const line = `strata-cache: ${message}${err ? `: ${err.message || err}` : ''}`
  if (level === 'error') console.error(line)
  else if (level === 'warn') console.warn(line)
  else console.log(line)
}

/** Logs a message the first time `id` is seen in this process. */
function logOnce(level, id, message, err) {
  if (loggedOnce.has(id)) return
  loggedOnce.add(id)
  log(level, message, err)
}

/**
 * Warns about a failure the caller absorbs (a get that becomes a miss, a refresh that keeps
 * local state): once per `id` and error code in this process.
 */
function warnOncePerCode(id, message, err) {
  const e = toStrataError(err)
  logOnce('warn', `${id}:${e.code}`, message, e)
}

/** A key as a log line shows it: quoted (control characters escaped) and cut at 64 characters. */
function shortKey(key) {
  return key.length <= 64 ? JSON.stringify(key) : `${JSON.stringify(key.slice(0, 64))}… (${key.length} chars)`
}

module.exports = { log, logOnce, warnOncePerCode, debug, debugEnabled, shortKey }
