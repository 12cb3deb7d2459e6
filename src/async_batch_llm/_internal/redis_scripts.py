"""The Lua scripts of :class:`~async_batch_llm.backends.redis.RedisQuotaBackend`.

Each runs atomically inside Redis and reads Redis's own clock (``TIME``), so processes on
different hosts agree on the time without synchronised clocks. Numbers cross the boundary as
strings (a Lua number returned to Redis is truncated to an integer).

Keys (``NS`` is the namespace, ``SCOPE`` the percent-encoded scope name):

- ``NS:q:SCOPE`` — hash of the scope's buckets: ``DIM:l`` (level) and ``DIM:t`` (time of that
  level) per dimension; expires after ``bucket_ttl`` without use (by then every bucket would be
  full again anyway).
- ``NS:r:SCOPE:ID`` — a granted, unsettled reservation; expires after ``reservation_ttl``.
- ``NS:cooldown`` — hash: ``until`` (server time the cooldown ends) and ``consecutive``.
"""

from __future__ import annotations

__all__ = ["ACQUIRE", "BEGIN_COOLDOWN", "EXTEND_COOLDOWN", "RESET_CONSECUTIVE", "SETTLE"]

_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local function fmt(x) return string.format('%.17g', x) end
local function level_of(key, dim, rate, cap)
  local v = redis.call('HMGET', key, dim .. ':l', dim .. ':t')
  local lvl, at = tonumber(v[1]), tonumber(v[2])
  if lvl == nil or at == nil then return cap end
  if now > at then lvl = lvl + (now - at) * rate end
  if lvl > cap then lvl = cap end
  return lvl
end
"""

ACQUIRE = (
    _PRELUDE
    + """
-- KEYS: bucket hash, reservation key, cooldown hash
-- ARGV: reservation ttl ms, bucket ttl ms, then (dim, amount, rate, capacity, reserve)*
if redis.call('EXISTS', KEYS[2]) == 1 then return '0' end
local cd = tonumber(redis.call('HGET', KEYS[3], 'until') or '0')
if cd > now then return fmt(cd - now) end
local wait = 0
local levels = {}
local n = (#ARGV - 2) / 5
for i = 0, n - 1 do
  local b = 3 + i * 5
  local amount, rate, cap, reserve =
    tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]), tonumber(ARGV[b + 4])
  local lvl = level_of(KEYS[1], ARGV[b], rate, cap)
  local need = amount + reserve
  if need > cap then need = cap end
  local missing = need - lvl
  if missing > rate * 0.000001 then
    local w = missing / rate
    if w > wait then wait = w end
  end
  levels[i] = lvl
end
if wait > 0 then return fmt(wait) end
for i = 0, n - 1 do
  local b = 3 + i * 5
  redis.call('HSET', KEYS[1], ARGV[b] .. ':l', fmt(levels[i] - tonumber(ARGV[b + 1])),
    ARGV[b] .. ':t', string.format('%.6f', now))
end
if n > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
return '0'
"""
)

SETTLE = (
    _PRELUDE
    + """
-- KEYS: bucket hash, reservation key
-- ARGV: bucket ttl ms, then (dim, delta, rate, capacity)*
if redis.call('DEL', KEYS[2]) == 0 then return 0 end
local n = (#ARGV - 1) / 4
for i = 0, n - 1 do
  local b = 2 + i * 4
  local delta, rate, cap = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
  local lvl = level_of(KEYS[1], ARGV[b], rate, cap) - delta
  if lvl > cap then lvl = cap end
  redis.call('HSET', KEYS[1], ARGV[b] .. ':l', fmt(lvl), ARGV[b] .. ':t',
    string.format('%.6f', now))
end
if n > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return 1
"""
)

BEGIN_COOLDOWN = (
    _PRELUDE
    + """
-- KEYS: cooldown hash; ARGV: floor seconds, key ttl ms
local untilv = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
if untilv > now then
  local cons = tonumber(redis.call('HGET', KEYS[1], 'consecutive') or '0')
  return {0, cons, fmt(untilv - now)}
end
local cons = redis.call('HINCRBY', KEYS[1], 'consecutive', 1)
local floor = tonumber(ARGV[1])
redis.call('HSET', KEYS[1], 'until', string.format('%.6f', now + floor))
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, cons, fmt(floor)}
"""
)

EXTEND_COOLDOWN = (
    _PRELUDE
    + """
-- KEYS: cooldown hash; ARGV: seconds from now, key ttl ms
local untilv = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
local wanted = now + tonumber(ARGV[1])
if wanted > untilv then
  untilv = wanted
  redis.call('HSET', KEYS[1], 'until', string.format('%.6f', untilv))
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local left = untilv - now
if left < 0 then left = 0 end
return fmt(left)
"""
)

RESET_CONSECUTIVE = """
-- KEYS: cooldown hash
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'consecutive', 0) end
return 1
"""
