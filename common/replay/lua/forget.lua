-- forget(prefix, id): remove everything of chunk `id` but its place in the order zset.
-- Prepended to evict.lua and dead_letter.lua, whose first six KEYS are
-- order, ready, meta, stats, size, info (`ReplayKeys.removal`).
-- Tolerates malformed records: they are what gets removed.
local function forget(prefix, id)
  local size = tonumber(redis.call('HGET', KEYS[5], id) or '0') or 0
  local info = redis.call('HGET', KEYS[6], id)
  local steps = 0
  if info then steps = tonumber(string.match(info, '^(%d+):') or '0') end
  redis.call('DEL', prefix .. 'chunk:' .. id, prefix .. 'mask:' .. id)
  redis.call('HDEL', KEYS[3], id)
  redis.call('HDEL', KEYS[5], id)
  redis.call('HDEL', KEYS[6], id)
  if redis.call('ZREM', KEYS[2], id) == 1 then
    redis.call('HINCRBY', KEYS[4], 'ready_chunks_stored', -1)
  end
  -- (Redis refuses "-0", the string Lua makes of -0)
  if size ~= 0 then redis.call('HINCRBY', KEYS[4], 'stored_bytes', -size) end
  if steps ~= 0 then redis.call('HINCRBY', KEYS[4], 'stored_steps', -steps) end
end
