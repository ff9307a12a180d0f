"""The Lua scripts of the Redis driver: each write, epoch change and compaction runs as one script."""

from __future__ import annotations

import struct
from collections.abc import Iterator

__all__ = ["COMPACT", "DIGEST", "LIST_ROUND", "NEW_EPOCH", "WRITE", "unpack_round"]

# KEYS: entry, rev, epoch   ARGV: prefix, table, id, op, expect, topic, value, maxlen, epoch
WRITE = """
local prefix, tbl, id, op, expect, topic, value, maxlen, epoch =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], ARGV[8], ARGV[9]
local current = redis.call('GET', KEYS[3])
if current ~= epoch then return {'EPOCH', current or ''} end
local kind = redis.call('TYPE', KEYS[1])['ok']
local foreign = kind ~= 'hash' and kind ~= 'none'
-- another program's key where an entry belongs: only replaced or deleted unchecked
if foreign and expect ~= 'any' then return {'WRONGTYPE', kind} end
local old = foreign and {false, false, false} or redis.call('HMGET', KEYS[1], 'r', 't', 'v')
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
local tsuffix = (topic == '') and '/n' or ('/t/' .. topic)
-- every write this user's ACL refuses is found before the first one is made: a script
-- stopped half-way keeps what it wrote (an entry without its change: lost to watchers)
if redis.acl_check_cmd then  -- Redis 7
  local set = (op == 'put') and 'SADD' or 'SREM'
  local checks = {{'INCR', KEYS[2]}, {'DEL', KEYS[1]}, {'HSET', KEYS[1], 'r', '1'},
    {set, prefix .. '/i/' .. tbl, id}, {set, prefix .. '/i/' .. tbl .. tsuffix, id},
    {'HSET', prefix .. '/trim', 'k', '1'}}
  for _, key in ipairs({prefix .. '/s/' .. tbl, prefix .. '/s/' .. tbl .. tsuffix}) do
    table.insert(checks, {'XADD', key, '1-0', 'a', 'b'})
    table.insert(checks, {'XTRIM', key, 'MINID', '1-0'})
  end
  for _, check in ipairs(checks) do
    if not redis.acl_check_cmd(unpack(check)) then return {'NOPERM', check[1] .. ' ' .. check[2]} end
  end
end
if foreign then redis.call('DEL', KEYS[1]) end
local rev = redis.call('INCR', KEYS[2])
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
# keys of those buckets), then the index sets to read ('' = the table's, '/n', '/t/TOPIC')
# Returns the epoch and revision, then per non-empty bucket: bucket, count, hash (the sum of
# the first 32 bits of sha1(id .. '\n' .. revision), modulo 2^32); or id, revision pairs.
# The bucket of an id is the first 32 bits of sha1(id) modulo the bucket count (dfdb.drivers.digest).
DIGEST = """
local prefix, tbl, n, wanted = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local counts, sums, out = {}, {}, {redis.call('GET', KEYS[1]) or '', redis.call('GET', KEYS[2]) or '0'}
for i = 5, #ARGV do
  for _, id in ipairs(redis.call('SMEMBERS', prefix .. '/i/' .. tbl .. ARGV[i])) do
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
end
for b, c in pairs(counts) do
  out[#out + 1] = b
  out[#out + 1] = c
  out[#out + 1] = sums[b]
end
return out
"""

# KEYS: index set   ARGV: cursor, count, entry key prefix ('<prefix>/e/<table>/')
# One round of a listing: SSCAN, then each entry it names, packed into one string (one reply
# to parse, not four per entry): per id, four big-endian 32-bit lengths (2^32-1: nil) of the
# id and the entry's r, t and v, then those bytes. A key that is not a hash (another
# program's) comes as r '!' and v its error.
LIST_ROUND = """
local NIL = 4294967295
local function size(x) if x then return #x end return NIL end
local scan = redis.call('SSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local parts = {}
for i, id in ipairs(scan[2]) do
  local row = redis.pcall('HMGET', ARGV[3] .. id, 'r', 't', 'v')
  local r, t, v
  if row['err'] then r, t, v = '!', false, row['err'] else r, t, v = row[1], row[2], row[3] end
  parts[i] = struct.pack('>I4I4I4I4', #id, size(r), size(t), size(v)) .. id .. (r or '') .. (t or '') .. (v or '')
end
return {scan[1], table.concat(parts)}
"""


_ROUND_HEAD = struct.Struct(">IIII")
_NIL = 0xFFFFFFFF


def unpack_round(packed: bytes) -> Iterator[tuple[str, list[bytes | None]]]:
    """The (id, [r, t, v]) of a listing round packed by the ``LIST_ROUND`` script."""
    offset, end = 0, len(packed)
    while offset < end:
        id_size, *sizes = _ROUND_HEAD.unpack_from(packed, offset)
        offset += _ROUND_HEAD.size + id_size
        id = packed[offset - id_size : offset].decode()
        fields: list[bytes | None] = []
        for size in sizes:
            if size == _NIL:
                fields.append(None)
            else:
                fields.append(packed[offset : offset + size])
                offset += size
        yield id, fields
