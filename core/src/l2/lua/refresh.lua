-- refreshTags: what changed in the tag state since a cursor, in one round trip (design notes
-- §2). Read-only.
--
-- KEYS (one hash tag): 1 state HASH, 2 log STREAM, 3 epoch STRING (see update_tags.lua).
-- ARGV: 1 known epoch ("" = never synced), 2 last log id seen ("" = none), 3 max log entries.
-- Returns { kind, epoch, last id, flag, items... }:
--   kind "I" (incremental): items = tag, state, tag, state ... from the log entries after the
--        cursor, in log order (later wins); flag "1" = the batch was full, call again.
--   kind "R" (resync): items = the whole state (HGETALL); flag "1" = data was lost (the epoch
--        changed or vanished, or the log is behind the cursor): the caller drops its L1.

local state, log, epoch_key = KEYS[1], KEYS[2], KEYS[3]
local known_epoch, known_id = ARGV[1], ARGV[2]
local count = tonumber(ARGV[3])

local epoch = redis.call('GET', epoch_key)
if not epoch then
  -- Nothing was ever invalidated here. If we had seen an epoch, Redis lost it (restarted
  -- empty, flushed, failed over to an empty replica).
  if known_epoch ~= '' then
    return { 'R', '', '', '1' }
  end
  return { 'I', '', '', '0' }
end

local function parse_id(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  if not ms then
    return nil
  end
  return { tonumber(ms), tonumber(seq) }
end

local function greater(a, b)
  return a[1] > b[1] or (a[1] == b[1] and a[2] > b[2])
end

local function last_entry_id()
  local last = redis.call('XREVRANGE', log, '+', '-', 'COUNT', 1)
  if #last == 0 then
    return nil
  end
  return last[1][1]
end

local function resync(lost)
  local out = { 'R', epoch, last_entry_id() or '0-0', lost }
  local all = redis.call('HGETALL', state)
  for i = 1, #all do
    out[#out + 1] = all[i]
  end
  return out
end

if epoch ~= known_epoch then
  if known_epoch ~= '' then
    return resync('1')
  end
  return resync('0')
end
local known = parse_id(known_id)
if not known then
  return resync('0')
end

local last_id = last_entry_id()
if not last_id then
  -- The log is gone but the epoch is not: nothing to follow until the next update (which
  -- starts a new epoch). If we had seen entries, they were lost.
  if known_id ~= '0-0' then
    return resync('1')
  end
  return { 'I', epoch, known_id, '0' }
end
if last_id == known_id then
  return { 'I', epoch, known_id, '0' }
end
local last = parse_id(last_id)
if last and greater(known, last) then
  -- Our cursor is ahead of the log: the log lost entries we saw (e.g. a failover to a replica
  -- that had not received them). Other instances may never see them: treat as data loss.
  return resync('1')
end
local first = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)
if #first > 0 then
  local f = parse_id(first[1][1])
  if f and greater(f, known) then
    -- Entries after our cursor may have been trimmed away (MAXLEN): we cannot tell what they
    -- said, so read the whole state.
    return resync('0')
  end
end

local entries = redis.call('XRANGE', log, '(' .. known_id, '+', 'COUNT', count)
local out = { 'I', epoch, known_id, '0' }
for _, entry in ipairs(entries) do
  out[3] = entry[1]
  local fields = entry[2]
  for j = 1, #fields do
    out[#out + 1] = fields[j]
  end
end
if #entries >= count then
  out[4] = '1'
end
return out
