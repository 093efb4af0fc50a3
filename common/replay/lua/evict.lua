-- Evict the oldest chunks until the run holds at most ARGV[2] chunks and ARGV[3] bytes.
-- KEYS: order, ready, meta, stats, size, info. ARGV: prefix, max chunks, max bytes.
-- Returns how many chunks it evicted.
local prefix = ARGV[1]
local max_chunks = tonumber(ARGV[2])
local max_bytes = tonumber(ARGV[3])
local evicted = 0
while redis.call('ZCARD', KEYS[1]) > 0 do
  local stored = redis.call('ZCARD', KEYS[1])
  local bytes = tonumber(redis.call('HGET', KEYS[4], 'stored_bytes') or '0')
  if stored <= max_chunks and bytes <= max_bytes then break end
  forget(prefix, redis.call('ZPOPMIN', KEYS[1])[1])
  redis.call('HINCRBY', KEYS[4], 'evicted_chunks', 1)
  evicted = evicted + 1
end
return evicted
