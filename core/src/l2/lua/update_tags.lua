-- updateTags: records an invalidation of every tag in ARGV[6..] atomically, stamped with the
-- Redis clock (design notes §1, §2). The rules are those of `tags.rs` (Next's built-in handler):
--   no durations              -> expired = now
--   durations without expire  -> stale = now                      (expired keeps its value)
--   durations with expire     -> stale = now, expired = now + expire * 1000
-- Cost: O(#tags * log(#tag records)) plus a bounded prune; nothing here depends on how many
-- entries carry a tag (entries are judged against the state when read, never scanned).
--
-- KEYS (one hash tag, so one Cluster slot):
--   1 state  HASH   tag -> "stale|expired|updated_at" (ms in the Redis clock, "" = none)
--   2 idx    ZSET   tag -> the last time the record can matter to an entry (for pruning)
--   3 log    STREAM one entry per call: tag -> new state
--   4 epoch  STRING identity of this tag state (a new value = everything before is gone)
-- ARGV:
--   1 mode: "n" no durations, "d" durations without expire, "x" durations with expire
--   2 expire in seconds (mode "x")
--   3 max_ttl in ms: records that stopped mattering longer ago than this are pruned
--   4 approximate cap of the log (XADD MAXLEN ~)
--   5 random token, part of a newly created epoch
--   6.. the tags (distinct)
-- Returns { now, last log id written, epoch, state of ARGV[6], state of ARGV[7], ... }.

-- Redis < 5 replicates scripts verbatim, which forbids writes after TIME; effects replication
-- (the default since 5, the only mode since 7) makes this a no-op.
if redis.replicate_commands then
  redis.replicate_commands()
end

local state, idx, log, epoch_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local mode = ARGV[1]

local function fmt(x)
  -- 17 significant digits round-trip an IEEE double exactly (tostring keeps only 14).
  return string.format('%.17g', x)
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local nows = fmt(now)

local epoch = redis.call('GET', epoch_key)
if #ARGV < 6 then
  return { nows, '', epoch or '' }
end
-- The log is written together with the epoch, so a missing log under an existing epoch means
-- the tag keys were partly lost (evicted, deleted): start a new identity so every instance
-- resynchronises instead of trusting a cursor into a log that no longer exists.
if (not epoch) or redis.call('EXISTS', log) == 0 then
  epoch = t[1] .. '.' .. t[2] .. '-' .. ARGV[5]
  redis.call('SET', epoch_key, epoch)
end

local expire_ms = nil
if mode == 'x' then
  expire_ms = tonumber(ARGV[2]) * 1000
end
local max_len = ARGV[4]

local out = { nows, '', epoch }
local fields = {}
local last_id = ''
local ntags = 0
for i = 6, #ARGV do
  local tag = ARGV[i]
  ntags = ntags + 1
  local stale, expired = '', ''
  local old = redis.call('HGET', state, tag)
  if old then
    local s, e = string.match(old, '^([^|]*)|([^|]*)|')
    if s then
      stale, expired = s, e
    end
  end
  if mode == 'n' then
    expired = nows
  else
    stale = nows
    if expire_ms then
      expired = fmt(now + expire_ms)
    end
  end
  local value = stale .. '|' .. expired .. '|' .. nows
  redis.call('HSET', state, tag, value)
  -- The record matters to entries created before max(stale, expired) (stale <= now) while
  -- they live, i.e. for at most max_ttl after that; it can be dropped afterwards.
  local relevant = now
  local e = tonumber(expired)
  if e and e > relevant then
    relevant = e
  end
  redis.call('ZADD', idx, fmt(relevant), tag)
  out[#out + 1] = value
  fields[#fields + 1] = tag
  fields[#fields + 1] = value
  -- unpack() is bounded by Lua's C stack: split very large calls into several log entries.
  if #fields >= 1000 then
    last_id = redis.call('XADD', log, 'MAXLEN', '~', max_len, '*', unpack(fields))
    fields = {}
  end
end
if #fields > 0 then
  last_id = redis.call('XADD', log, 'MAXLEN', '~', max_len, '*', unpack(fields))
end
out[2] = last_id

-- Prune records that can no longer change a decision: every entry they could affect is gone
-- by its TTL (<= max_ttl). At most max(64, 2 * tags in this call) per call, so pruning keeps
-- up with growth and the cost of one call stays bounded.
local limit = math.max(64, 2 * ntags)
local cutoff = now - tonumber(ARGV[3])
local stale_tags = redis.call('ZRANGEBYSCORE', idx, '-inf', '(' .. fmt(cutoff), 'LIMIT', 0, limit)
if #stale_tags > 0 then
  redis.call('HDEL', state, unpack(stale_tags))
  redis.call('ZREM', idx, unpack(stale_tags))
end

return out
