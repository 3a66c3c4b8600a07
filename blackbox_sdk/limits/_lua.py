"""The Redis scripts of the rate window: each admission, correction and release is one script, one round trip.

A scope is two keys sharing a hash tag: a sorted set of event ids scored by their time, and a hash
of id -> tokens that also holds the running total under ``#total``. Times are seconds as decimal
strings (``%.6f``), so no precision is lost to Lua's number formatting. ``ADMIT`` mirrors
``_window.judge``: trim, move events the clock went back past to now, count, admit and record, or return the wait until the call fits. The total
changes by nothing when zero tokens leave it: Lua's ``-0`` reaches Redis as "-0", which HINCRBY refuses.
"""

from __future__ import annotations

_TRIM = """
local function trim(z, h, cutoff)
  local expired = redis.call('ZRANGEBYSCORE', z, '-inf', cutoff)
  local gone = 0
  for first = 1, #expired, 500 do
    local batch = {}
    for i = first, math.min(first + 499, #expired) do batch[#batch + 1] = expired[i] end
    for _, amount in ipairs(redis.call('HMGET', h, unpack(batch))) do gone = gone + (tonumber(amount) or 0) end
    redis.call('HDEL', h, unpack(batch))
  end
  if #expired > 0 then
    redis.call('ZREMRANGEBYSCORE', z, '-inf', cutoff)
    if gone ~= 0 then redis.call('HINCRBY', h, '#total', 0 - gone) end
  end
end
"""

# KEYS: zset, hash. ARGV: id, tokens, window_s, rpm (-1: none), tpm (-1: none), now ('' : the server's TIME), ttl_ms,
# the store's epoch key, the epoch as the caller last saw it ('' for never), a new epoch should there be none.
# Returns {1, at, requests, tokens, newest_at} when admitted (the window's after it, and its latest event's time before
# it, '' for none; {1, at} for an id already in),
# {0, at, wait_s, 'rpm' | 'tpm', requests, tokens, newest_at} when refused ('inf' for a call larger than tpm itself),
# each with the epoch after it; {-1, ms, epoch} while the store is refusing for having lost its data (ms left).
# An epoch gone, or made anew by a process that never saw the old one, means the server lost the windows' counts
# (a restart without persistence, a FLUSHALL): every admission is then refused for one window, after which whatever
# was forgotten would have left it anyway, so the limit holds.
ADMIT = _TRIM + """
local ek, seen = ARGV[8], ARGV[9]
local epoch = redis.call('GET', ek)
local lost = redis.call('PTTL', ek .. ':lost')
if lost > 0 then return {-1, lost, epoch} end
if seen ~= '' and epoch ~= seen and not (epoch and string.sub(epoch, -#seen - 1) == '|' .. seen) then
  lost = math.max(1, math.ceil(tonumber(ARGV[3]) * 1000))
  epoch = ARGV[10] .. '|' .. seen  -- the epoch after seen's: a process that saw seen adopts it, refusing nothing more
  redis.call('SET', ek .. ':lost', '1', 'PX', lost)
  redis.call('SET', ek, epoch)
  return {-1, lost, epoch}
end
if not epoch then
  epoch = ARGV[10]
  redis.call('SET', ek, epoch)
end
local z, h = KEYS[1], KEYS[2]
local id, tokens, window = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local rpm, tpm, now = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
if not now then
  local t = redis.call('TIME')
  now = tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local at = string.format('%.6f', now)
trim(z, h, string.format('%.6f', now - window))
for _, late in ipairs(redis.call('ZRANGEBYSCORE', z, '(' .. at, '+inf')) do redis.call('ZADD', z, at, late) end
if redis.call('ZSCORE', z, id) then return {1, at, epoch} end
local count = redis.call('ZCARD', z)
local total = tonumber(redis.call('HGET', h, '#total') or '0')
local need_requests, need_tokens = 0, 0
if rpm >= 0 then need_requests = count + 1 - rpm end
if tpm >= 0 then need_tokens = total + tokens - tpm end
if need_requests <= 0 and need_tokens <= 0 then
  local before = redis.call('ZRANGE', z, -1, -1, 'WITHSCORES')[2] or ''
  redis.call('ZADD', z, at, id)
  redis.call('HSET', h, id, tokens)
  redis.call('HINCRBY', h, '#total', tokens)
  redis.call('PEXPIRE', z, ARGV[7])
  redis.call('PEXPIRE', h, ARGV[7])
  return {1, at, count + 1, total + tokens, before, epoch}
end
local wait_requests, wait_tokens = 0, 0
if need_requests > 0 then
  local nth = redis.call('ZRANGE', z, need_requests - 1, need_requests - 1, 'WITHSCORES')
  wait_requests = tonumber(nth[2]) + window - now
end
if need_tokens > 0 then
  wait_tokens = -1
  local live = redis.call('ZRANGE', z, 0, -1, 'WITHSCORES')
  local freed = 0
  for i = 1, #live, 2 do
    freed = freed + (tonumber(redis.call('HGET', h, live[i])) or 0)
    if freed >= need_tokens then wait_tokens = tonumber(live[i + 1]) + window - now break end
  end
  if wait_tokens < 0 then wait_tokens = math.huge end
end
local newest = redis.call('ZRANGE', z, -1, -1, 'WITHSCORES')[2] or at
if wait_requests >= wait_tokens then
  return {0, at, string.format('%.6f', wait_requests), 'rpm', count, total, newest, epoch}
end
return {0, at, string.format('%.6f', wait_tokens), 'tpm', count, total, newest, epoch}
"""

# KEYS: zset, hash. ARGV: id, tokens. Returns 1 when the event was live and now holds ``tokens``.
CORRECT = """
local old = redis.call('HGET', KEYS[2], ARGV[1])
if not old or not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
local change = tonumber(ARGV[2]) - tonumber(old)
if change ~= 0 then redis.call('HINCRBY', KEYS[2], '#total', change) end
return 1
"""

# KEYS: zset, hash. ARGV: id. Returns 1 when a live event was dropped.
RELEASE = """
local old = redis.call('HGET', KEYS[2], ARGV[1])
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
local gone = tonumber(old) or 0
if gone ~= 0 then redis.call('HINCRBY', KEYS[2], '#total', 0 - gone) end
return 1
"""
