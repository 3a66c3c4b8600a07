"""The Redis ledger's Lua scripts: reserve, settle, release, renew and snapshot, each one atomic round trip.

Keys, all under the prefix (ARGV[1]): `held`, `spent` and `calls` are hashes whose fields are
rows, `scope|value` (`total|`, `per_day|2025-01-31`, `per_key|alice`, `model|gpt-4o-2024-08-06`,
`family|gpt-4o`; `held` also counts reservations in `count|`); `leases` is a sorted set of
reservation ids by lease expiry (ms, the server's clock); `res:ID` is a held (or lapsed)
reservation; `done:ID` marks one settled (with the settling attempt's token) or released, for
`keep_s` seconds, which is what makes settle and release idempotent (a released one is still
charged, once, by a settle that says what the call was: its answer was paid); a `held` total that would go below zero
(the hash was lost under a hold, to an evicting policy) is dropped instead; `spends` is a capped stream
of settled calls (with the host, pid and start time of the process that settled each, and the id of the
call log each was meant for), for audit and for repairing a call log whose process ended between the
charge and the record. `epoch` names this ledger's life: made by the first reserve, it lets a process that saw
it notice the data gone (a restart without persistence, a FLUSHALL, an eviction), which the reserve script then marks
`lost` for every process, refusing until an operator sets it to `reset:` and anything. `seq` counts every hold and charge:
a process that saw it higher than it is now (Redis restarted from a snapshot older than what was written, a failover to a
replica behind its primary) marks the ledger `lost` the same way, since the epoch, older than the snapshot, came back with it. Amounts travel as decimal strings and are compared as Lua numbers,
exact to 2^53 nano-dollars (about $9 million).
"""

from __future__ import annotations

_PRELUDE = """
local p = ARGV[1]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function rows(day, key, model, family)
  return {'total|', 'per_day|' .. day, 'per_key|' .. key, 'model|' .. model, 'family|' .. family}
end
local function add_held(r, sign)  -- r: usd, day, key, model, family
  local fields = rows(r[2], r[3], r[4], r[5])
  fields[#fields + 1] = 'count|'
  for i, field in ipairs(fields) do
    local amount = (i == #fields) and '1' or r[1]
    if amount ~= '0' and redis.call('HINCRBY', p .. 'held', field, sign .. amount) <= 0 then  -- below 0: the hash was lost
      redis.call('HDEL', p .. 'held', field)
    end
  end
end
local function purge(now, keep)  -- leases that lapsed stop holding; the record stays for a late settle
  local ids = redis.call('ZRANGEBYSCORE', p .. 'leases', '-inf', now, 'LIMIT', 0, 512)
  for _, id in ipairs(ids) do
    local rk = p .. 'res:' .. id
    local r = redis.call('HMGET', rk, 'usd', 'day', 'key', 'model', 'family', 'state')
    if r[6] == 'held' then
      add_held(r, '-')
      redis.call('HSET', rk, 'state', 'lapsed')
      redis.call('EXPIRE', rk, keep)
    end
    redis.call('ZREM', p .. 'leases', id)
  end
end
local function usages(first)  -- settled and held under each (row, limit) pair from ARGV[first]
  local out, worst = {}, nil
  for i = first, #ARGV, 2 do
    local spent, held = '0', '0'
    if ARGV[i] ~= '' then
      spent = redis.call('HGET', p .. 'spent', ARGV[i]) or '0'
      held = redis.call('HGET', p .. 'held', ARGV[i]) or '0'
    end
    local headroom = tonumber(ARGV[i + 1]) - tonumber(spent) - tonumber(held)
    if worst == nil or headroom < worst then worst = headroom end
    out[#out + 1] = spent
    out[#out + 1] = held
  end
  return out, worst
end
"""

# ARGV: prefix, id, call_id, model, family, key, day, usd, lease_ms, keep_s, the ledger's epoch as the caller last saw it
# ('' for never), a new epoch should there be none, the ledger's `seq` as the caller last saw it under that epoch, then
# (row, limit) pairs. Returns {1, epoch, seq} when held (or already held under this id), {0, epoch, seq, spent, held, ...}
# per cap when refused, {-1, 'lost'} when the ledger lost its data: its epoch gone or made anew, or its `seq` (counting
# every hold and charge) behind what the caller saw, as after a restart from an older snapshot.
RESERVE = _PRELUDE + """
local epoch = redis.call('GET', p .. 'epoch')
if epoch == 'lost' then return {-1, epoch} end
local reset = epoch and string.sub(epoch, 1, 6) == 'reset:'
local seq = tonumber(redis.call('GET', p .. 'seq') or '0')
if ARGV[11] ~= '' and ((epoch ~= ARGV[11] and not reset) or (epoch == ARGV[11] and seq < tonumber(ARGV[13]))) then
  redis.call('SET', p .. 'epoch', 'lost')  -- gone, made anew by a process that never saw the old one, or gone back in time
  return {-1, 'lost'}
end
if not epoch then
  epoch = ARGV[12]
  redis.call('SET', p .. 'epoch', epoch)
elseif reset and not string.find(epoch, '|', 1, true) then
  epoch = epoch .. '|' .. ARGV[12]  -- an operator's reset begins a life of its own, told apart from a later reset in the same words
  redis.call('SET', p .. 'epoch', epoch)
end
local now = now_ms()
purge(now, ARGV[10])
local rk = p .. 'res:' .. ARGV[2]
if redis.call('EXISTS', rk) == 1 or redis.call('EXISTS', p .. 'done:' .. ARGV[2]) == 1 then return {1, epoch, seq} end
local out, worst = usages(14)
if worst ~= nil and tonumber(ARGV[8]) > worst then
  table.insert(out, 1, seq)
  table.insert(out, 1, epoch)
  table.insert(out, 1, 0)
  return out
end
redis.call('HSET', rk, 'call_id', ARGV[3], 'model', ARGV[4], 'family', ARGV[5], 'key', ARGV[6], 'day', ARGV[7],
  'usd', ARGV[8], 'state', 'held')
redis.call('ZADD', p .. 'leases', now + tonumber(ARGV[9]), ARGV[2])
add_held({ARGV[8], ARGV[7], ARGV[6], ARGV[4], ARGV[5]}, '')
return {1, epoch, redis.call('INCR', p .. 'seq')}
"""

# ARGV: prefix, id, token, usd, prompt, completion, cached, keep_s, spends_kept, then the
# reservation's call_id, model, family, key, day (to charge one the ledger lost), then the settling
# process's host, pid and start time ('' when unknown), then '1' and the id of the call log the call is
# recorded in ('' for none), or '0' and '' when the settle did not say, kept on its entry in the spends stream, then
# the reservation's own hold (nano-dollars), its entry's reserved_nano when the ledger no longer holds its record.
# Returns 1 charged now (or by this token before), 2 already settled by another attempt, 3 charged though
# the ledger did not know the reservation (it lost its data), 4 charged though it was released (the answer
# was paid), 0 when not held and there is no call_id to charge it under.
SETTLE = _PRELUDE + """
local rk, dk = p .. 'res:' .. ARGV[2], p .. 'done:' .. ARGV[2]
local done = redis.call('GET', dk)
local status = 1
if done then
  if done == 'settled:' .. ARGV[3] then return 1 end
  if string.sub(done, 1, 8) == 'settled:' then return 2 end
  status = 4
end
local r = redis.call('HMGET', rk, 'usd', 'day', 'key', 'model', 'family', 'state', 'call_id')
if not r[6] then
  if ARGV[10] == '' then return 0 end
  if status == 1 then status = 3 end
  r = {ARGV[20], ARGV[14], ARGV[13], ARGV[11], ARGV[12], 'unknown', ARGV[10]}
end
if r[6] == 'held' then
  add_held(r, '-')
  redis.call('ZREM', p .. 'leases', ARGV[2])
end
for _, field in ipairs(rows(r[2], r[3], r[4], r[5])) do
  redis.call('HINCRBY', p .. 'spent', field, ARGV[4])
  redis.call('HINCRBY', p .. 'calls', field, 1)
end
redis.call('DEL', rk)
redis.call('SET', dk, 'settled:' .. ARGV[3], 'EX', ARGV[8])
local entry = {'reservation_id', ARGV[2], 'call_id', r[7], 'model', r[4], 'key', r[3], 'day', r[2],
  'usd_nano', ARGV[4], 'reserved_nano', r[1], 'prompt_tokens', ARGV[5], 'completion_tokens', ARGV[6],
  'cached_tokens', ARGV[7], 'host', ARGV[15], 'pid', ARGV[16], 'pid_start', ARGV[17]}
if ARGV[18] == '1' then
  entry[#entry + 1] = 'log_id'
  entry[#entry + 1] = ARGV[19]
end
redis.call('XADD', p .. 'spends', 'MAXLEN', '~', ARGV[9], '*', unpack(entry))
redis.call('INCR', p .. 'seq')
return status
"""

# ARGV: prefix, id, keep_s. Returns 1 when a held reservation was freed, else 0 (settled, released, unknown, or its
# lease lapsed: a lapsed hold not yet purged still leaves the held totals here, but it held nothing any more).
RELEASE = _PRELUDE + """
local rk, dk = p .. 'res:' .. ARGV[2], p .. 'done:' .. ARGV[2]
if redis.call('EXISTS', dk) == 1 then return 0 end
local r = redis.call('HMGET', rk, 'usd', 'day', 'key', 'model', 'family', 'state')
if not r[6] then return 0 end
local freed = 0
if r[6] == 'held' then
  local expires = redis.call('ZSCORE', p .. 'leases', ARGV[2])
  if expires and tonumber(expires) > now_ms() then freed = 1 end
  add_held(r, '-')
  redis.call('ZREM', p .. 'leases', ARGV[2])
end
redis.call('DEL', rk)
redis.call('SET', dk, 'released', 'EX', ARGV[3])
return freed
"""

# ARGV: prefix, id, lease_ms. Returns 1 when a held reservation's lease now runs lease_ms from now, else 0
# (settled, released, unknown, or its lease lapsed already: a lapsed hold stopped counting and is never revived).
RENEW = _PRELUDE + """
local now = now_ms()
local expires = redis.call('ZSCORE', p .. 'leases', ARGV[2])
if not expires or tonumber(expires) <= now then return 0 end
redis.call('ZADD', p .. 'leases', 'XX', now + tonumber(ARGV[3]), ARGV[2])
return 1
"""

# ARGV: prefix, keep_s, then (row, limit) pairs. Returns {held, count, {spent, held, ...}, spent rows, calls rows}.
SNAPSHOT = _PRELUDE + """
purge(now_ms(), ARGV[2])
local out = usages(3)
return {redis.call('HGET', p .. 'held', 'total|') or '0', redis.call('HGET', p .. 'held', 'count|') or '0', out,
  redis.call('HGETALL', p .. 'spent'), redis.call('HGETALL', p .. 'calls')}
"""
