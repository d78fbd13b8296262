"""The Lua scripts of ``RedisBatchStore`` (``store_redis.py`` lists the keys): each reads and
writes a tenant's budget in one step, so replicas storing files and answers at once never take a
tenant past it together."""

from __future__ import annotations

# The tenant's bytes now, after dropping what expired: files whose key is gone (their own, shorter
# life) or older than ttl, and the answers' bytes of a batch whose answers are gone (a batch
# forgotten before its run dropped them).  A sizes field is a file id (``file-…``, its size) or a
# batch id (``batch_…``, the bytes of its stored answers).
_USED = """
local function used(index, sizes, now, ttl, file_prefix, batch_prefix)
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', index, '-inf', now - ttl)) do
    redis.call('HDEL', sizes, id)
  end
  redis.call('ZREMRANGEBYSCORE', index, '-inf', now - ttl)
  for _, id in ipairs(redis.call('ZRANGE', index, 0, -1)) do
    if redis.call('EXISTS', file_prefix .. id) == 0 then
      redis.call('ZREM', index, id)
      redis.call('HDEL', sizes, id)
    end
  end
  local total, fields = 0, redis.call('HGETALL', sizes)
  for i = 1, #fields, 2 do
    local f = fields[i]
    if string.sub(f, 1, 6) == 'batch_'
        and redis.call('EXISTS', batch_prefix .. f .. ':results') == 0 then
      redis.call('HDEL', sizes, f)
    else
      total = total + tonumber(fields[i + 1])
    end
  end
  return total
end
"""

# KEYS: file, index, sizes.  ARGV: id, meta, content, now, ttl, most files, most bytes, forced,
# the file's life (s), the key prefix of the tenant's files, of its batches.  -1: too many files;
# -2: too many bytes (nothing written).
PUT_FILE = (
    _USED
    + """
local index, sizes = KEYS[2], KEYS[3]
local now, ttl = tonumber(ARGV[4]), tonumber(ARGV[5])
local total = used(index, sizes, now, ttl, ARGV[10], ARGV[11])
if ARGV[8] ~= '1' then
  if redis.call('ZCARD', index) + 1 > tonumber(ARGV[6]) then return -1 end
  if total + string.len(ARGV[3]) > tonumber(ARGV[7]) then return -2 end
end
redis.call('HSET', KEYS[1], 'meta', ARGV[2], 'content', ARGV[3])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[9]))
redis.call('ZADD', index, now, ARGV[1])
redis.call('HSET', sizes, ARGV[1], string.len(ARGV[3]))
redis.call('EXPIRE', index, ttl)
redis.call('EXPIRE', sizes, ttl)
return 1
"""
)

# KEYS: index, sizes.  ARGV: now, ttl, the key prefix of the tenant's files, of its batches.
# -> {files, bytes}
USAGE = (
    _USED
    + """
local total = used(KEYS[1], KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3], ARGV[4])
return {redis.call('ZCARD', KEYS[1]), total}
"""
)

# KEYS: results, answered, index, sizes.  ARGV: line index, 1/0 + line, now, ttl, most bytes,
# the key prefix of the tenant's files, of its batches, batch id, forced.
# -> {-1, the tenant's bytes} when they leave no room; else {1, 0} (stored, or answered already).
ADD_RESULT = (
    _USED
    + """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then return {1, 0} end
local ttl, size = tonumber(ARGV[4]), string.len(ARGV[2])
local total = used(KEYS[3], KEYS[4], tonumber(ARGV[3]), ttl, ARGV[6], ARGV[7])
if ARGV[9] ~= '1' and total + size > tonumber(ARGV[5]) then return {-1, total} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], string.sub(ARGV[2], 1, 1))
redis.call('HINCRBY', KEYS[4], ARGV[8], size)
for _, key in ipairs({KEYS[1], KEYS[2], KEYS[4]}) do redis.call('EXPIRE', key, ttl) end
return {1, 0}
"""
)

# KEYS: batch, index.  ARGV: id, batch (JSON), created_at, now, ttl, most batches.
# 0: the tenant keeps as many batches as it may (nothing written).
PUT_BATCH = """
local ttl = tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[4]) - ttl)
if not redis.call('ZSCORE', KEYS[2], ARGV[1])
    and redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[6]) then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ttl)
redis.call('ZADD', KEYS[2], tonumber(ARGV[3]), ARGV[1])
redis.call('EXPIRE', KEYS[2], ttl)
return 1
"""

# KEYS: the tenant's active set, the active set, lease.  ARGV: id, tenant/id, owner, ttl ms, most.
ACTIVATE = """
if redis.call('SCARD', KEYS[1]) >= tonumber(ARGV[5]) then return 0 end
redis.call('SADD', KEYS[1], ARGV[1])
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4])
return 1
"""

# KEYS: lease.  ARGV: owner, ttl ms.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
