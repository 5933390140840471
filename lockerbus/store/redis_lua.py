"""The Lua scripts of the Redis store: each runs atomically inside Redis.

Keys, all under one prefix ``P`` (``ARGV[1]`` of every script):

* ``P:epoch``     string: the sequence space's name
* ``P:seq``       hash: namespace -> last seq assigned
* ``P:log:<ns>``  sorted set: score seq, member ``<seq>:<crc32 hex>:<body>``
* ``P:ts:<ns>``   sorted set: score event timestamp, member seq (for ``since``)
* ``P:exp``       sorted set: score expiry time, member ``<ns>\\n<seq>``
* ``P:order``     sorted set: score global append counter, member ``<ns>\\n<seq>`` (the count)
* ``P:gseq``      the global append counter (capacity evicts in append order)
* ``P:stats``     hash: evictions by reason
* ``P:id:<id>``   string ``<epoch>\\n<ns>\\n<seq>``: where the event with that id is
  (contract §12), expiring with the event; an entry whose event is gone
  (evicted, corrupt, another epoch) is ignored and overwritten
* ``P:state:lockers``     hash: ``kioskId\\nlockerId`` -> the locker's entry (JSON, with seq)
* ``P:state:help``        hash: open help id -> its request as opened (JSON, with seq)
* ``P:state:help:status`` hash: open help id -> its current status
* ``P:state:help:upd``    hash: open help id -> its last update (JSON, with seq), if any

``P:state:built`` says the state is complete (set for a new sequence space, and
by a rebuild); a store from before the state has history but not this key.
The ``state`` keys (contract §11) are never expired or evicted: only the
APPEND script's state section (below) writes them, in the step that appends.

``body`` is the event's compact JSON without ``seq``; the stored and published
event is ``{"seq":<seq>,`` + body without its ``{``, so the seq is assigned and
the event written and published in one step.  The checksum covers ``body``; the
seq is kept twice (score and member prefix) and a disagreement counts as
corruption.  Times come from the caller's clock (``now``), not Redis's, so
tests can drive expiry.  Key names are built inside the scripts, so this
targets a single Redis server (or a primary with replicas), not Redis Cluster.
"""

from __future__ import annotations

from typing import Final

_COMMON: Final = r"""
local P = ARGV[1]

-- The epoch, created with the candidate name when missing: a Redis that lost
-- its data (restarted without persistence, flushed) starts a new sequence
-- space instead of reusing seqs clients already hold.
local function ensure_epoch(candidate)
  local epoch = redis.call('GET', P .. ':epoch')
  if epoch then return epoch end
  for _, ns in ipairs(redis.call('HKEYS', P .. ':seq')) do
    redis.call('DEL', P .. ':log:' .. ns, P .. ':ts:' .. ns)
  end
  redis.call('DEL', P .. ':seq', P .. ':exp', P .. ':order')
  redis.call('DEL', P .. ':state:lockers', P .. ':state:help', P .. ':state:help:status',
    P .. ':state:help:upd')
  redis.call('SET', P .. ':state:built', '1')
  redis.call('SET', P .. ':epoch', candidate)
  return candidate
end

local function drop(key)
  local at = string.find(key, '\n', 1, true)
  local ns, seq = string.sub(key, 1, at - 1), string.sub(key, at + 1)
  redis.call('ZREMRANGEBYSCORE', P .. ':log:' .. ns, seq, seq)
  redis.call('ZREM', P .. ':ts:' .. ns, seq)
  redis.call('ZREM', P .. ':exp', key)
  redis.call('ZREM', P .. ':order', key)
end

local function expire(now)
  local keys = redis.call('ZRANGEBYSCORE', P .. ':exp', '-inf', now, 'LIMIT', 0, 5000)
  for _, key in ipairs(keys) do drop(key) end
  if #keys > 0 then redis.call('HINCRBY', P .. ':stats', 'ttl', #keys) end
  return #keys
end

local function last_seq(ns)
  return tonumber(redis.call('HGET', P .. ':seq', ns) or '0')
end

local function push_rows(out, rows)
  for _, value in ipairs(rows) do out[#out + 1] = value end
end

-- Rows (member, score, ...) for the given seqs, in the given order.
local function rows_for(log, seqs)
  local out = {}
  for _, seq in ipairs(seqs) do
    push_rows(out, redis.call('ZRANGEBYSCORE', log, seq, seq, 'WITHSCORES'))
  end
  return out
end

-- Seqs in (lo, hi] whose timestamp is at or after since, sorted.
local function seqs_since(ns, lo, hi, since, descending)
  local found = {}
  for _, seq in ipairs(redis.call('ZRANGEBYSCORE', P .. ':ts:' .. ns, since, '+inf')) do
    local n = tonumber(seq)
    if n > lo and n <= hi then found[#found + 1] = n end
  end
  if descending then
    table.sort(found, function(a, b) return a > b end)
  else
    table.sort(found)
  end
  return found
end

local function take(list, n)
  local out = {}
  for i = 1, math.min(n, #list) do out[i] = string.format('%d', list[i]) end
  return out
end
"""

# ARGV: P, ns, body, crc, ts, expires, now, the namespace's max_events, expected epoch,
#       candidate epoch, channel, event id ('' for none), ttl in ms, state kind ('' none),
#       state key, state record (JSON without seq), help status, expected help status
# -> {seq, epoch}; {0, epoch}: the epoch changed; {-1, epoch, member}: the id is held (§12);
#    {-2, epoch, current status}: the state refused it (§11).  The id is decided first.
APPEND: Final = (
    _COMMON
    + r"""
local epoch = ensure_epoch(ARGV[10])
if epoch ~= ARGV[9] then return {0, epoch} end
expire(ARGV[7])
local ns = ARGV[2]
-- >>> event ids (contract §12): a held id stores nothing and answers the stored member
local id_key = P .. ':id:' .. ARGV[12]
if ARGV[12] ~= '' then
  local held = redis.call('GET', id_key)
  if held then
    local held_epoch, held_ns, held_seq = string.match(held, '^([^\n]*)\n(.*)\n(%d+)$')
    if held_epoch == epoch then
      local rows = redis.call('ZRANGEBYSCORE', P .. ':log:' .. held_ns, held_seq, held_seq)
      if rows[1] then return {-1, epoch, rows[1]} end
    end
  end
end
-- <<< event ids
-- >>> state (contract §11), part 1: the help consistency check, before anything is written
local state_kind, state_key = ARGV[14], ARGV[15]
local help_status = P .. ':state:help:status'
if state_kind == 'help_new' then
  local current = redis.call('HGET', help_status, state_key)
  if current then return {-2, epoch, current} end
elseif state_kind == 'help_update' then
  local current = redis.call('HGET', help_status, state_key)
  if not current then return {-2, epoch, ''} end
  if current ~= ARGV[18] then return {-2, epoch, current} end
end
-- <<< state
local seq = string.format('%d', redis.call('HINCRBY', P .. ':seq', ns, 1))
-- >>> state, part 2: the entry the event leaves, numbered with its seq
if state_kind ~= '' then
  local entry = '{"seq":' .. seq .. ',' .. string.sub(ARGV[16], 2)
  if state_kind == 'locker' then
    redis.call('HSET', P .. ':state:lockers', state_key, entry)
  elseif ARGV[17] == 'resolved' then
    redis.call('HDEL', P .. ':state:help', state_key)
    redis.call('HDEL', help_status, state_key)
    redis.call('HDEL', P .. ':state:help:upd', state_key)
  elseif state_kind == 'help_new' then
    redis.call('HSET', P .. ':state:help', state_key, entry)
    redis.call('HSET', help_status, state_key, ARGV[17])
    redis.call('HDEL', P .. ':state:help:upd', state_key)
  else
    redis.call('HSET', help_status, state_key, ARGV[17])
    redis.call('HSET', P .. ':state:help:upd', state_key, entry)
  end
end
local key = ns .. '\n' .. seq
redis.call('ZADD', P .. ':log:' .. ns, seq, seq .. ':' .. ARGV[4] .. ':' .. ARGV[3])
redis.call('ZADD', P .. ':ts:' .. ns, ARGV[5], seq)
redis.call('ZADD', P .. ':exp', ARGV[6], key)
redis.call('ZADD', P .. ':order', redis.call('INCR', P .. ':gseq'), key)
-- capacity is the namespace's own (contract §11): its oldest go, no other's
local excess = redis.call('ZCARD', P .. ':log:' .. ns) - tonumber(ARGV[8])
if excess > 0 then
  local victims = redis.call('ZRANGE', P .. ':log:' .. ns, 0, excess - 1, 'WITHSCORES')
  for i = 2, #victims, 2 do
    drop(ns .. '\n' .. string.format('%d', tonumber(victims[i])))
  end
  redis.call('HINCRBY', P .. ':stats', 'capacity', #victims / 2)
end
-- >>> event ids (contract §12)
if ARGV[12] ~= '' then
  redis.call('SET', id_key, epoch .. '\n' .. ns .. '\n' .. seq, 'PX', ARGV[13])
end
-- <<< event ids
redis.call('PUBLISH', ARGV[11], '{"seq":' .. seq .. ',' .. string.sub(ARGV[3], 2))
return {tonumber(seq), epoch}
"""
)

# ARGV: P, candidate epoch, now, ns, after_seq (-1: none)
# -> {epoch, last_seq, how many are held in (after_seq, last_seq]}
FACTS: Final = (
    _COMMON
    + r"""
local epoch = ensure_epoch(ARGV[2])
expire(ARGV[3])
local ns, after = ARGV[4], tonumber(ARGV[5])
local last = last_seq(ns)
local held = 0
if after >= 0 and after < last then
  held = redis.call('ZCOUNT', P .. ':log:' .. ns, '(' .. ARGV[5], last)
end
return {epoch, last, held}
"""
)

# ARGV: P, candidate epoch, now, ns, lo, hi, limit, since ('' for none)
# -> {epoch, member, score, ...}: the newest limit + 1 rows with lo < seq <= hi, newest first
NEWEST: Final = (
    _COMMON
    + r"""
local epoch = ensure_epoch(ARGV[2])
expire(ARGV[3])
local ns, lo, hi, n = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]) + 1
local log = P .. ':log:' .. ns
local out = {epoch}
if hi <= lo then return out end
local rows = redis.call('ZREVRANGEBYSCORE', log, hi, '(' .. ARGV[5], 'WITHSCORES', 'LIMIT', 0, n)
if ARGV[8] == '' then
  push_rows(out, rows)
  return out
end
local since = tonumber(ARGV[8])
-- Usually the newest rows are recent enough, and are then the answer.
local recent = true
for i = 2, #rows, 2 do
  local ts = redis.call('ZSCORE', P .. ':ts:' .. ns, rows[i])
  if not ts or tonumber(ts) < since then recent = false break end
end
if recent then
  push_rows(out, rows)
  return out
end
push_rows(out, rows_for(log, take(seqs_since(ns, lo, hi, since, true), n)))
return out
"""
)

# ARGV: P, candidate epoch, now, ns, after, limit, since ('' for none)
# -> {epoch, last_seq, member, score, ...}: the oldest limit + 1 rows after ``after``
OLDEST: Final = (
    _COMMON
    + r"""
local epoch = ensure_epoch(ARGV[2])
expire(ARGV[3])
local ns, after, n = ARGV[4], tonumber(ARGV[5]), tonumber(ARGV[6]) + 1
local log = P .. ':log:' .. ns
local last = last_seq(ns)
local out = {epoch, last}
if ARGV[7] == '' then
  local rows = redis.call('ZRANGEBYSCORE', log, '(' .. ARGV[5], '+inf', 'WITHSCORES', 'LIMIT', 0, n)
  push_rows(out, rows)
else
  push_rows(out, rows_for(log, take(seqs_since(ns, after, last, tonumber(ARGV[7]), false), n)))
end
return out
"""
)

# ARGV: P, candidate epoch, now -> {epoch, removed}
EXPIRE: Final = (
    _COMMON
    + r"""
local epoch = ensure_epoch(ARGV[2])
local removed, batch = 0, 1
while batch > 0 do
  batch = expire(ARGV[3])
  removed = removed + batch
end
return {epoch, removed}
"""
)

# ARGV: P, candidate epoch, now
# -> {epoch, events, {reason, count, ...}, {ns, count, oldest|nil, newest|nil, last, ...}}
STATS: Final = (
    _COMMON
    + r"""
local epoch = ensure_epoch(ARGV[2])
expire(ARGV[3])
local namespaces = {}
for _, ns in ipairs(redis.call('HKEYS', P .. ':seq')) do
  local log = P .. ':log:' .. ns
  local oldest = redis.call('ZRANGE', log, 0, 0, 'WITHSCORES')
  local newest = redis.call('ZRANGE', log, -1, -1, 'WITHSCORES')
  namespaces[#namespaces + 1] = ns
  namespaces[#namespaces + 1] = redis.call('ZCARD', log)
  namespaces[#namespaces + 1] = oldest[2] or false
  namespaces[#namespaces + 1] = newest[2] or false
  namespaces[#namespaces + 1] = last_seq(ns)
end
return {epoch, redis.call('ZCARD', P .. ':order'), redis.call('HGETALL', P .. ':stats'), namespaces}
"""
)

# ARGV: P, ns, member, seq, member, seq, ... -> the seqs that were still there and removed
REMOVE: Final = (
    _COMMON
    + r"""
local ns, removed = ARGV[2], {}
for i = 3, #ARGV, 2 do
  if redis.call('ZREM', P .. ':log:' .. ns, ARGV[i]) == 1 then
    drop(ns .. '\n' .. ARGV[i + 1])
    removed[#removed + 1] = tonumber(ARGV[i + 1])
  end
end
if #removed > 0 then redis.call('HINCRBY', P .. ':stats', 'corrupt', #removed) end
return removed
"""
)

# ARGV: P, candidate epoch -> epoch (with a write: proves the write path for readiness)
EPOCH: Final = (
    _COMMON
    + r"""
redis.call('INCR', P .. ':probe')
return ensure_epoch(ARGV[2])
"""
)

# ARGV: P, candidate epoch, kind ('lockers' or 'help'), its namespace
# -> {epoch, last_seq, {key, entry, ...}, {key, update, ...}}: the state and the position
STATE: Final = (
    _COMMON
    + r"""
local epoch = ensure_epoch(ARGV[2])
local last = last_seq(ARGV[4])
if ARGV[3] == 'lockers' then
  return {epoch, last, redis.call('HGETALL', P .. ':state:lockers'), {}}
end
return {epoch, last, redis.call('HGETALL', P .. ':state:help'),
  redis.call('HGETALL', P .. ':state:help:upd')}
"""
)

# ARGV: P, candidate epoch, expected epoch, lockers last_seq, help last_seq, how many lockers,
#       then key, entry per locker, then key, entry, status per open help request
# -> 1 when replaced, 0 when the epoch or a position moved meanwhile (fold again)
REPLACE_STATE: Final = (
    _COMMON
    + r"""
local epoch = ensure_epoch(ARGV[2])
if epoch ~= ARGV[3] then return 0 end
if last_seq('/ws/lockers') ~= tonumber(ARGV[4]) or last_seq('/ws/help') ~= tonumber(ARGV[5]) then
  return 0
end
redis.call('DEL', P .. ':state:lockers', P .. ':state:help', P .. ':state:help:status',
  P .. ':state:help:upd')
local lockers = tonumber(ARGV[6])
for i = 7, 6 + 2 * lockers, 2 do
  redis.call('HSET', P .. ':state:lockers', ARGV[i], ARGV[i + 1])
end
for i = 7 + 2 * lockers, #ARGV, 3 do
  redis.call('HSET', P .. ':state:help', ARGV[i], ARGV[i + 1])
  redis.call('HSET', P .. ':state:help:status', ARGV[i], ARGV[i + 2])
end
redis.call('SET', P .. ':state:built', '1')
return 1
"""
)
