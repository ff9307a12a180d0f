"""The Lua scripts of the Redis driver (each write, batch of writes, epoch change and compaction
runs as one script), and the encoding of their arguments and replies."""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from dfdb.drivers.base import ABSENT, ANY, Entry, Expect, PutRequest
from dfdb.errors import CorruptObjectError

__all__ = [
    "COMPACT",
    "DIGEST",
    "LEASE",
    "LIST_ROUND",
    "NEW_EPOCH",
    "WRITE",
    "WRITE_MANY",
    "entry_of",
    "expect_arg",
    "glob_escape",
    "plain_row",
    "unpack_round",
    "write_calls",
    "write_many_args",
    "write_many_outcomes",
]

PUTS_PER_CALL = 64
"""Writes that one ``WRITE_MANY`` call makes at most (a call holds the server for about
40 us a write; the calls of a batch go in one pipeline)."""

BYTES_PER_CALL = 1 << 20
"""Value bytes past which a ``WRITE_MANY`` call takes no more writes (a request stays far
below the server's limits on one request, and a call does not hold the server long copying
values; a larger value goes alone)."""

# Shared by WRITE and LEASE: apply one change (and log it), and the lease table. ARGV[1] is the prefix.
_APPLY = """
local prefix = ARGV[1]
local shared = {}  -- the ACL checks of keys shared by writes, made in this call: false or the refusal
local function refused(cmd, key, ...)
  if redis.acl_check_cmd(cmd, key, ...) then return false end
  return {'NOPERM', cmd .. ' ' .. key}
end
local lengths = {}  -- stream key -> its length, once read in this call (only the call changes it)
local function apply(ekey, tbl, id, op, expect, topic, value, maxlen, expired)
  -- one read: a put needs the revision and topic, a delete the value too
  local old = (op == 'put') and redis.pcall('HMGET', ekey, 'r', 't') or redis.pcall('HMGET', ekey, 'r', 't', 'v')
  local foreign = old['err'] ~= nil
  if foreign then
    if not string.find(old['err'], 'WRONGTYPE', 1, true) then return redis.error_reply(old['err']) end
    -- another program's key where an entry belongs: only replaced or deleted unchecked
    if expect ~= 'any' then return {'WRONGTYPE', redis.call('TYPE', ekey)['ok']} end
    old = {false, false, false}
  end
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
  local index, tindex = prefix .. '/i/' .. tbl, prefix .. '/i/' .. tbl .. tsuffix
  local streams = {prefix .. '/s/' .. tbl, prefix .. '/s/' .. tbl .. tsuffix}
  -- every write this user's ACL refuses is found before the first one is made: a script
  -- stopped half-way keeps what it wrote (an entry without its change: lost to watchers)
  if redis.acl_check_cmd then  -- Redis 7; each command checked in turn
    local set = (op == 'put') and 'SADD' or 'SREM'
    -- a batch's writes share every key but their entry's: those checked once per call
    if shared['rev'] == nil then shared['rev'] = refused('INCR', prefix .. '/rev') end
    local no = shared['rev'] or refused('DEL', ekey) or refused('HSET', ekey, 'r', '1')
    if no then return no end
    local scope = set .. ' ' .. tindex
    no = shared[scope]
    if no == nil then
      no = refused(set, index, id) or refused(set, tindex, id) or refused('HSET', prefix .. '/trim', 'k', '1')
      for _, key in ipairs(streams) do
        no = no or refused('XADD', key, '1-0', 'a', 'b') or refused('XLEN', key)
          or refused('XRANGE', key, '-', '+', 'COUNT', '1') or refused('XTRIM', key, 'MINID', '1-0')
      end
      shared[scope] = no
    end
    if no then return no end
  end
  if foreign then redis.call('DEL', ekey) end
  local rev = redis.call('INCR', prefix .. '/rev')
  if op == 'put' then
    redis.call('HSET', ekey, 'r', rev, 't', topic, 'v', value)
    if not exists then
      redis.call('SADD', index, id)
      redis.call('SADD', tindex, id)
    end
  else
    redis.call('DEL', ekey)
    redis.call('SREM', index, id)
    redis.call('SREM', tindex, id)
  end
  local sid = rev .. '-0'
  local fields = {'a', action, 'b', tbl, 'i', id, 'p', topic, 'v', value}
  if expired then table.insert(fields, 'x') table.insert(fields, '1') end
  local limit = tonumber(maxlen)
  local slack = math.min(1000, math.max(1, math.floor(limit / 10)))
  for _, key in ipairs(streams) do
    redis.call('XADD', key, sid, unpack(fields))
    local len = lengths[key]
    if len then len = len + 1 else len = redis.call('XLEN', key) end
    lengths[key] = len
    if len > limit + slack then
      -- trim, recording the highest discarded revision in the same step
      local gone = redis.call('XRANGE', key, '-', '+', 'COUNT', len - limit)
      local last = tonumber(string.match(gone[#gone][1], '^(%d+)'))
      redis.call('XTRIM', key, 'MINID', (last + 1) .. '-0')
      redis.call('HSET', prefix .. '/trim', key, last)
      lengths[key] = nil  -- read again when next written
    end
  end
  -- a put: the revision alone, an integer reply (the caller has the topic and value)
  if op == 'put' then return rev end
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
# reply: a put's revision (an integer), or {status, detail[, topic, value]}
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
if lease ~= '' and (type(done) == 'number' or done[1] == 'OK') then
  redis.call('HSET', prefix .. '/lk/' .. lease, ARGV[2] .. '/' .. ARGV[3], type(done) == 'number' and done or done[2])
end
return done
"""
)

# KEYS: epoch, rev
# ARGV: prefix, maxlen, epoch, the puts packed by write_many_args (per put: five big-endian
# 32-bit lengths, then the table, id, expectation, topic and value)
# reply: {'EPOCH', the epoch on the server} (nothing written), or {'OK', the revision of each
# put in order, comma separated (0: refused), then per refused put what WRITE replies or the
# error that stopped it (the next puts are still made)}
WRITE_MANY = (
    _APPLY
    + """
local current = redis.call('GET', KEYS[1])
if current ~= ARGV[3] then return {'EPOCH', current or ''} end
local packed, maxlen, pos, revisions, out = ARGV[4], ARGV[2], 1, {}, {'OK', ''}
while pos <= #packed do
  local a, b, c, d, e, at = struct.unpack('>I4I4I4I4I4', packed, pos)
  local tbl = string.sub(packed, at, at + a - 1)
  local id = string.sub(packed, at + a, at + a + b - 1)
  at = at + a + b
  local expect, topic = string.sub(packed, at, at + c - 1), string.sub(packed, at + c, at + c + d - 1)
  at = at + c + d
  local value = string.sub(packed, at, at + e - 1)
  pos = at + e
  local ekey = prefix .. '/e/' .. tbl .. '/' .. id
  local ok, done = pcall(apply, ekey, tbl, id, 'put', expect, topic, value, maxlen, false)
  if not ok then
    done = (type(done) == 'table' and done['err']) and done or redis.error_reply(tostring(done))
  end
  if type(done) == 'number' then
    revisions[#revisions + 1] = string.format('%d', done)
  else
    revisions[#revisions + 1] = '0'
    out[#out + 1] = done
  end
end
out[2] = table.concat(revisions, ',')
return out
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
    """The (id, [r, t, v]) of a listing round packed by the ``LIST_ROUND`` script (an id
    that is not UTF-8 comes as r ``!``, as a key that is not a hash does)."""
    offset, end = 0, len(packed)
    while offset < end:
        id_size, *sizes = _ROUND_HEAD.unpack_from(packed, offset)
        offset += _ROUND_HEAD.size + id_size
        raw_id = packed[offset - id_size : offset]
        fields: list[bytes | None] = []
        for size in sizes:
            if size == _NIL:
                fields.append(None)
            else:
                fields.append(packed[offset : offset + size])
                offset += size
        yield _row(raw_id, fields)


def plain_row(raw_id: bytes, reply: list[bytes | None] | Exception) -> tuple[str, list[bytes | None]]:
    """The (id, [r, t, v]) of an ``HMGET`` reply, as :func:`unpack_round` gives it (an
    error, such as that of a key that is not a hash, comes as r ``!`` and v its text)."""
    return _row(raw_id, [b"!", None, str(reply).encode()] if isinstance(reply, Exception) else reply)


def _row(raw_id: bytes, fields: list[bytes | None]) -> tuple[str, list[bytes | None]]:
    try:
        return raw_id.decode(), fields
    except UnicodeDecodeError:  # another program's key: no dfdb id, reported as not an entry
        return raw_id.decode(errors="backslashreplace"), [b"!", None, b"its id is not UTF-8"]


def write_calls(writes: Sequence[PutRequest]) -> list[Sequence[PutRequest]]:
    """``writes`` in runs of at most ``PUTS_PER_CALL`` writes, each closed once its values
    reach ``BYTES_PER_CALL`` bytes: one ``WRITE_MANY`` call each."""
    calls: list[Sequence[PutRequest]] = []
    start, size = 0, 0
    for i, w in enumerate(writes):
        size += len(w.value)
        if size >= BYTES_PER_CALL or i + 1 - start == PUTS_PER_CALL:
            calls.append(writes[start : i + 1])
            start, size = i + 1, 0
    if start < len(writes):
        calls.append(writes[start:])
    return calls


_PUT_HEAD = struct.Struct(">IIIII")


class _Dataset(Protocol):
    prefix: str
    maxlen: int
    epoch: str


def write_many_args(dataset: _Dataset, call: Sequence[PutRequest]) -> list[Any]:
    """The arguments of one ``WRITE_MANY`` call making ``call`` in ``dataset``: the puts
    packed into one (one argument to encode and send, not five per put)."""
    parts: list[bytes] = []
    for w in call:
        table, id, topic = w.table.encode(), w.id.encode(), (w.topic or "").encode()
        expect = expect_arg(w.expect).encode()
        parts += (_PUT_HEAD.pack(len(table), len(id), len(expect), len(topic), len(w.value)), table, id, expect, topic)
        parts.append(w.value)
    return [dataset.prefix, dataset.maxlen, dataset.epoch, b"".join(parts)]


def write_many_outcomes(reply: list[Any] | Exception, count: int) -> list[Any]:
    """Per put of a ``WRITE_MANY`` call, in order: its revision, or what refused it (the reply
    of the write script, or the error that stopped it). An ``EPOCH`` reply, or an error
    for the whole call, is every put's."""
    if isinstance(reply, Exception) or reply[0] != b"OK":
        return [reply] * count
    refused = iter(reply[2:])
    return [int(r) or next(refused) for r in reply[1].split(b",")]


def expect_arg(expect: Expect) -> str:
    """The write script's expectation argument."""
    return "absent" if expect is ABSENT else "any" if expect is ANY else str(expect)


def entry_of(table: str, id: str, row: list[Any]) -> Entry | None:
    """An entry from ``HMGET r t v``; ``None`` when absent."""
    if row[0] is None:
        return None
    try:
        return Entry(table, id, row[1].decode() or None if row[1] is not None else None, row[2] or b"", int(row[0]))
    except (ValueError, UnicodeDecodeError, AttributeError) as exc:
        raise CorruptObjectError(table, id, f"malformed dfdb entry ({exc})") from None


def glob_escape(text: str) -> str:
    """``text`` matched literally by a ``SCAN MATCH`` pattern."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)
