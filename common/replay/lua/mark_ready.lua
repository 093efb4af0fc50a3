-- Attach masks to a stored chunk and make it sampleable (idempotent).
-- KEYS: order, ready, the chunk's mask key, stats. ARGV: id, masks, steps.
-- Returns 0 if the chunk is no longer stored (evicted meanwhile), else 1.
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 1 end
redis.call('SET', KEYS[3], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[1], ARGV[1])
redis.call('HINCRBY', KEYS[4], 'ready_chunks', 1)
redis.call('HINCRBY', KEYS[4], 'ready_chunks_stored', 1)
redis.call('HINCRBY', KEYS[4], 'ready_steps', tonumber(ARGV[3]))
return 1
