"""The Lua scripts of the Redis driver: each write, epoch change and compaction runs as one script."""

from __future__ import annotations

__all__ = ["COMPACT", "LEASE", "NEW_EPOCH", "WRITE"]

# Shared by WRITE and LEASE: apply one change (and log it), and the lease table. ARGV[1] is the prefix.
_APPLY = """
local prefix = ARGV[1]
local function apply(ekey, tbl, id, op, expect, topic, value, maxlen, expired)
  local kind = redis.call('TYPE', ekey)['ok']
  local foreign = kind ~= 'hash' and kind ~= 'none'
  if foreign then  -- another program's key where an entry belongs: only replaced or deleted unchecked
    if expect ~= 'any' then return {'WRONGTYPE', kind} end
    redis.call('DEL', ekey)
  end
  local old = redis.call('HMGET', ekey, 'r', 't', 'v')
  local exists = old[1] ~= false
  local action
  if op == 'put' then
    if expect == 'absent' then
      if exists then return {'EXISTS', old[1]} end
    elseif expect ~= 'any' then
      if not exists then return {'NOTFOUND', ''} end
      if old[1] ~= expect then return {'CONFLICT', old[1]} end
    end
    if exists and old[2] ~= topic then return {'TOPIC', old[2]} end
    action = exists and 'update' or 'create'
  else
    if not exists and not foreign then return {'NOTFOUND', ''} end
    if expect ~= 'any' and old[1] ~= expect then return {'CONFLICT', old[1]} end
    action = 'delete'
    topic = old[2] or ''
    value = old[3] or ''
  end
  local rev = redis.call('INCR', prefix .. '/rev')
  local tsuffix = (topic == '') and '/n' or ('/t/' .. topic)
  if op == 'put' then
    redis.call('HSET', ekey, 'r', rev, 't', topic, 'v', value)
    if not exists then
      redis.call('SADD', prefix .. '/i/' .. tbl, id)
      redis.call('SADD', prefix .. '/i/' .. tbl .. tsuffix, id)
    end
  else
    redis.call('DEL', ekey)
    redis.call('SREM', prefix .. '/i/' .. tbl, id)
    redis.call('SREM', prefix .. '/i/' .. tbl .. tsuffix, id)
  end
  local sid = rev .. '-0'
  local fields = {'a', action, 'b', tbl, 'i', id, 'p', topic, 'v', value}
  if expired then table.insert(fields, 'x') table.insert(fields, '1') end
  local limit = tonumber(maxlen)
  local slack = math.min(1000, math.max(1, math.floor(limit / 10)))
  for _, key in ipairs({prefix .. '/s/' .. tbl, prefix .. '/s/' .. tbl .. tsuffix}) do
    redis.call('XADD', key, sid, unpack(fields))
    local len = redis.call('XLEN', key)
    if len > limit + slack then
      -- trim, recording the highest discarded revision in the same step
      local gone = redis.call('XRANGE', key, '-', '+', 'COUNT', len - limit)
      local last = tonumber(string.match(gone[#gone][1], '^(%d+)'))
      redis.call('XTRIM', key, 'MINID', (last + 1) .. '-0')
      redis.call('HSET', prefix .. '/trim', key, last)
    end
  end
  if op == 'put' then return {'OK', tostring(rev)} end  -- the caller has the topic and value
  return {'OK', tostring(rev), topic, value}
end

-- leases: P/leases zset (lease -> deadline, ms of server TIME), P/lttl hash (lease -> ttl ms),
-- P/lk/LEASE hash ('table/id' -> revision bound at), P/lh/LEASE set (locks held),
-- P/lock/NAME hash (h: holder lease or '', t: last fencing token)
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function end_lease(lease, maxlen)
  local bound = redis.call('HGETALL', prefix .. '/lk/' .. lease)
  local keys = {}
  for i = 1, #bound, 2 do table.insert(keys, {bound[i], bound[i + 1]}) end
  table.sort(keys, function(a, b) return tonumber(a[2]) < tonumber(b[2]) end)
  for _, kv in ipairs(keys) do
    local ekey = prefix .. '/e/' .. kv[1]
    if redis.call('TYPE', ekey)['ok'] == 'hash' and redis.call('HGET', ekey, 'r') == kv[2] then
      local slash = string.find(kv[1], '/', 1, true)
      apply(ekey, string.sub(kv[1], 1, slash - 1), string.sub(kv[1], slash + 1), 'delete', 'any', '', '', maxlen, true)
    end
  end
  for _, name in ipairs(redis.call('SMEMBERS', prefix .. '/lh/' .. lease)) do
    local lk = prefix .. '/lock/' .. name
    if redis.call('HGET', lk, 'h') == lease then redis.call('HSET', lk, 'h', '') end
  end
  redis.call('DEL', prefix .. '/lk/' .. lease, prefix .. '/lh/' .. lease)
  redis.call('ZREM', prefix .. '/leases', lease)
  redis.call('HDEL', prefix .. '/lttl', lease)
end
local function reap(now, maxlen)
  local due = redis.call('ZRANGEBYSCORE', prefix .. '/leases', '-inf', '(' .. now)
  for _, lease in ipairs(due) do end_lease(lease, maxlen) end
  return #due
end
local function alive(lease, now)
  local deadline = redis.call('ZSCORE', prefix .. '/leases', lease)
  return deadline and tonumber(deadline) >= now
end
"""

# KEYS: entry, rev, epoch
# ARGV: prefix, table, id, op, expect, topic, value, maxlen, epoch[, lease, guard lease, lock, token]
WRITE = (
    _APPLY
    + """
local current = redis.call('GET', KEYS[3])
if current ~= ARGV[9] then return {'EPOCH', current or ''} end
local lease, guard = ARGV[10] or '', ARGV[11] or ''
if lease ~= '' or guard ~= '' then
  local now = now_ms()
  reap(now, ARGV[8])
  if lease ~= '' and not alive(lease, now) then return {'LEASE', lease} end
  if guard ~= '' then
    if not alive(guard, now) then return {'LEASE', guard} end
    if ARGV[12] ~= '' then
      local row = redis.call('HMGET', prefix .. '/lock/' .. ARGV[12], 'h', 't')
      if row[1] ~= guard or row[2] ~= ARGV[13] then return {'GUARD', ARGV[12]} end
    end
  end
end
local done = apply(KEYS[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], false)
if done[1] == 'OK' and lease ~= '' then
  redis.call('HSET', prefix .. '/lk/' .. lease, ARGV[2] .. '/' .. ARGV[3], done[2])
end
return done
"""
)

# ARGV: prefix, op, lease, ttl ms | lock name, maxlen, token    reply: {status, leases reaped[, token]}
LEASE = (
    _APPLY
    + """
local op, lease, maxlen = ARGV[2], ARGV[3], ARGV[5]
local now = now_ms()
local reaped = reap(now, maxlen)
if op == 'reap' then return {'OK', reaped} end
if op == 'grant' then
  redis.call('ZADD', prefix .. '/leases', now + tonumber(ARGV[4]), lease)
  redis.call('HSET', prefix .. '/lttl', lease, ARGV[4])
  return {'OK', reaped}
end
if op == 'revoke' then end_lease(lease, maxlen) return {'OK', reaped} end
if not alive(lease, now) then return {'LOST', reaped} end
if op == 'keepalive' then
  redis.call('ZADD', prefix .. '/leases', 'XX', now + tonumber(redis.call('HGET', prefix .. '/lttl', lease)), lease)
  return {'OK', reaped}
end
local lk = prefix .. '/lock/' .. ARGV[4]
local row = redis.call('HMGET', lk, 'h', 't')
if op == 'acquire' then
  if row[1] == lease then return {'OK', reaped, row[2]} end
  if row[1] and row[1] ~= '' then return {'BUSY', reaped} end
  local token = tostring(tonumber(row[2] or '0') + 1)
  redis.call('HSET', lk, 'h', lease, 't', token)
  redis.call('SADD', prefix .. '/lh/' .. lease, ARGV[4])
  return {'OK', reaped, token}
end
if op == 'release' and row[1] == lease and row[2] == ARGV[6] then
  redis.call('HSET', lk, 'h', '')
  redis.call('SREM', prefix .. '/lh/' .. lease, ARGV[4])
end
return {'OK', reaped}
"""
)

# KEYS: epoch   ARGV: expected old epoch ('' = absent), new epoch
NEW_EPOCH = """
local current = redis.call('GET', KEYS[1])
if (current or '') == ARGV[1] then redis.call('SET', KEYS[1], ARGV[2]) return ARGV[2] end
return current
"""

# KEYS: trim hash, stream   discard the whole stream, recording its last revision
COMPACT = """
local info = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
if #info == 0 then return 0 end
local last = tonumber(string.match(info[1][1], '^(%d+)'))
redis.call('XTRIM', KEYS[2], 'MAXLEN', 0)
local known = tonumber(redis.call('HGET', KEYS[1], KEYS[2]) or '0')
if last > known then redis.call('HSET', KEYS[1], KEYS[2], last) end
return last
"""
