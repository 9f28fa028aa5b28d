"""The Lua scripts of the Redis queue: each runs atomically, so daemons sharing one Redis never
double-move a retry or settle a lease that was taken over. Used by ``router/queue/redis.py``.
"""

# KEYS[1] stream; ARGV: payloads. One XADD each, in order: a batch of puts in one command
# (redis-py packs and parses a pipelined XADD per message, a fifth of an ingest's CPU).
PUT_MANY = """
for i = 1, #ARGV do
  redis.call('XADD', KEYS[1], '*', 'm', ARGV[i], 'a', '0')
end
return #ARGV
"""

# KEYS: stream, dedupe key. ARGV: payload, message id, window ms. Returns the id to report.
PUT_DEDUPE = """
local earlier = redis.call('GET', KEYS[2])
if earlier then return earlier end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('XADD', KEYS[1], '*', 'm', ARGV[1], 'a', '0')
return ARGV[2]
"""

# Shared head of the settle scripts. KEYS[1] stream; ARGV[1] group, ARGV[2] entry id,
# ARGV[3] times_delivered of the lease. Removes the entry if the lease is current and
# returns its payload, else nil.
SETTLE_HEAD = """
local function take_entry()
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
  if #p == 0 or p[1][4] ~= tonumber(ARGV[3]) then return nil end
  local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  redis.call('XDEL', KEYS[1], ARGV[2])
  if #e == 0 then return nil end
  local f = e[1][2]
  for i = 1, #f, 2 do if f[i] == 'm' then return f[i + 1] end end
  return nil
end
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local m = take_entry()
if not m then return 0 end
"""

# KEYS: stream, delayed. ARGV[4] attempts so far, ARGV[5] retry in ms.
RETRY = (
    SETTLE_HEAD
    + """
redis.call('ZADD', KEYS[2], now_ms() + tonumber(ARGV[5]), ARGV[4] .. '|' .. m)
return 1
"""
)

# KEYS: stream, dead, dead:info, dead:order. ARGV[4] message id, ARGV[5] info JSON.
DEAD = (
    SETTLE_HEAD
    + """
redis.call('HSET', KEYS[2], ARGV[4], m)
redis.call('HSET', KEYS[3], ARGV[4], ARGV[5])
redis.call('ZADD', KEYS[4], now_ms(), ARGV[4])
return 1
"""
)

# KEYS: stream. ARGV[4] attempts to keep. A lease taken for a cancelled take() goes back.
REQUEUE = (
    SETTLE_HEAD
    + """
redis.call('XADD', KEYS[1], '*', 'm', m, 'a', ARGV[4])
return 1
"""
)

# KEYS: delayed, stream. ARGV[1] limit. Moves due retries; returns {moved, ms to next or -1}.
MOVE_DUE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(due) do
  local sep = string.find(member, '|', 1, true)
  local attempts, payload = string.sub(member, 1, sep - 1), string.sub(member, sep + 1)
  redis.call('XADD', KEYS[2], '*', 'm', payload, 'a', attempts)
  redis.call('ZREM', KEYS[1], member)
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if #nxt == 0 then return {#due, -1} end
return {#due, math.max(0, math.floor(tonumber(nxt[2]) - now))}
"""

# KEYS: dead, dead:info, dead:order, stream. ARGV: message ids. Returns how many replayed.
REPLAY = """
local n = 0
for _, id in ipairs(ARGV) do
  local m = redis.call('HGET', KEYS[1], id)
  if m then
    redis.call('XADD', KEYS[4], '*', 'm', m, 'a', '0')
    redis.call('HDEL', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
    redis.call('ZREM', KEYS[3], id)
    n = n + 1
  end
end
return n
"""
