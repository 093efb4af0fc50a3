-- Store one chunk whole, or nothing.
-- KEYS: chunk, mask, meta, info, size, order, ready, stats, to-segment, frame-shape, by-actor
-- ARGV: id, blob, meta, info, size, steps, segment ('1': queue it for the segmenter,
--       else it is ready with ARGV[8] as masks), masks, "H:W", actor id
-- Returns 1 when stored, 0 when the id is already stored (a retry whose first reply was
-- lost), or the run's "H:W" when the chunk's frames are of another size.
if redis.call('ZSCORE', KEYS[6], ARGV[1]) then return 0 end
local shape = redis.call('GET', KEYS[10])
if not shape then
  redis.call('SET', KEYS[10], ARGV[9])
elseif shape ~= ARGV[9] then
  return shape
end
local size, steps = tonumber(ARGV[5]), tonumber(ARGV[6])
redis.call('SET', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[4])
redis.call('HSET', KEYS[5], ARGV[1], size)
redis.call('ZADD', KEYS[6], ARGV[1], ARGV[1])
redis.call('HINCRBY', KEYS[8], 'inserted_chunks', 1)
redis.call('HINCRBY', KEYS[8], 'inserted_steps', steps)
redis.call('HINCRBY', KEYS[8], 'inserted_bytes', size)
redis.call('HINCRBY', KEYS[8], 'stored_bytes', size)
redis.call('HINCRBY', KEYS[8], 'stored_steps', steps)
redis.call('HINCRBY', KEYS[11], ARGV[10] .. ':chunks', 1)
redis.call('HINCRBY', KEYS[11], ARGV[10] .. ':steps', steps)
if ARGV[7] == '1' then
  redis.call('XADD', KEYS[9], '*', 'id', ARGV[1])
else
  redis.call('SET', KEYS[2], ARGV[8])
  redis.call('ZADD', KEYS[7], ARGV[1], ARGV[1])
  redis.call('HINCRBY', KEYS[8], 'ready_chunks', 1)
  redis.call('HINCRBY', KEYS[8], 'ready_chunks_stored', 1)
  redis.call('HINCRBY', KEYS[8], 'ready_steps', steps)
end
return 1
