"""The Lua scripts of the Redis driver: each write, epoch change and compaction runs as one script."""

from __future__ import annotations

__all__ = ["COMPACT", "DIGEST", "NEW_EPOCH", "WRITE"]

# KEYS: entry, rev, epoch   ARGV: prefix, table, id, op, expect, topic, value, maxlen, epoch
WRITE = """
local prefix, tbl, id, op, expect, topic, value, maxlen, epoch =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local current = redis.call('GET', KEYS[3])
if current ~= epoch then return {'EPOCH', current or ''} end
local kind = redis.call('TYPE', KEYS[1])['ok']
local foreign = kind ~= 'hash' and kind ~= 'none'
if foreign then  -- another program's key where an entry belongs: only replaced or deleted unchecked
  if expect ~= 'any' then return {'WRONGTYPE', kind} end
  redis.call('DEL', KEYS[1])
end
local old = redis.call('HMGET', KEYS[1], 'r', 't', 'v')
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
local rev = redis.call('INCR', KEYS[2])
local tsuffix = (topic == '') and '/n' or ('/t/' .. topic)
if op == 'put' then
  redis.call('HSET', KEYS[1], 'r', rev, 't', topic, 'v', value)
  if not exists then
    redis.call('SADD', prefix .. '/i/' .. tbl, id)
    redis.call('SADD', prefix .. '/i/' .. tbl .. tsuffix, id)
  end
else
  redis.call('DEL', KEYS[1])
  redis.call('SREM', prefix .. '/i/' .. tbl, id)
  redis.call('SREM', prefix .. '/i/' .. tbl .. tsuffix, id)
end
local sid = rev .. '-0'
local fields = {'a', action, 'b', tbl, 'i', id, 'p', topic, 'v', value}
local limit = tonumber(maxlen)
local slack = math.min(1000, math.max(1, math.floor(limit / 10)))
for _, key in ipairs({prefix .. '/s/' .. tbl, prefix .. '/s/' .. tbl .. tsuffix}) do
  redis.call('XADD', key, sid, unpack(fields))
  local len = redis.call('XLEN', key)
  if len > limit + slack then
    -- trim, recording the highest discarded revision in the same step
    local old = redis.call('XRANGE', key, '-', '+', 'COUNT', len - limit)
    local last = tonumber(string.match(old[#old][1], '^(%d+)'))
    redis.call('XTRIM', key, 'MINID', (last + 1) .. '-0')
    redis.call('HSET', prefix .. '/trim', key, last)
  end
end
if op == 'put' then return {'OK', tostring(rev)} end  -- the caller has the topic and value
return {'OK', tostring(rev), topic, value}
"""

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

# KEYS: epoch, rev   ARGV: prefix, table, buckets, wanted ('' = the digest; else ',B1,B2,' = the
# keys of those buckets), the index set to read ('' = the table's, '/n', '/t/TOPIC'), an SSCAN
# cursor and count: one slice of the set per call, so that no call blocks the server for long.
# Returns the epoch, the revision and the next cursor, then either one string packing, per
# non-empty bucket of the slice, its number (16 bits), count and hash (32 bits each, big-endian;
# the hash is the sum of the first 32 bits of sha1(id .. '\\n' .. revision), modulo 2^32), or
# id, revision pairs. The bucket of an id is the first 32 bits of sha1(id) modulo the
# bucket count (dfdb.drivers.digest).
DIGEST = """
local prefix, tbl, n, wanted = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local scan = redis.call('SSCAN', prefix .. '/i/' .. tbl .. ARGV[5], ARGV[6], 'COUNT', ARGV[7])
local counts, sums = {}, {}
local out = {redis.call('GET', KEYS[1]) or '', redis.call('GET', KEYS[2]) or '0', scan[1]}
for _, id in ipairs(scan[2]) do
  local r = redis.pcall('HGET', prefix .. '/e/' .. tbl .. '/' .. id, 'r')
  if type(r) == 'string' then
    local b = tonumber(string.sub(redis.sha1hex(id), 1, 8), 16) % n
    if wanted == '' then
      counts[b] = (counts[b] or 0) + 1
      sums[b] = ((sums[b] or 0) + tonumber(string.sub(redis.sha1hex(id .. '\\n' .. r), 1, 8), 16)) % 4294967296
    elseif string.find(wanted, ',' .. b .. ',', 1, true) then
      out[#out + 1] = id
      out[#out + 1] = r
    end
  end
end
local packed = {}
for b, c in pairs(counts) do packed[#packed + 1] = struct.pack('>HII', b, c, sums[b]) end
if wanted == '' then out[4] = table.concat(packed) end
return out
"""
