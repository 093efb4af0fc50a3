-- Refuse a chunk or stream entry: remove the chunk (if any), keep the record, count it.
-- KEYS: order, ready, meta, stats, size, info, dead-letter
-- ARGV: prefix, chunk id ('' for a record without one), JSON record, list cap
if ARGV[2] ~= '' then
  if redis.call('ZREM', KEYS[1], ARGV[2]) == 1 then
    forget(ARGV[1], ARGV[2])
  else
    redis.call('DEL', ARGV[1] .. 'chunk:' .. ARGV[2], ARGV[1] .. 'mask:' .. ARGV[2])
  end
end
redis.call('LPUSH', KEYS[7], ARGV[3])
redis.call('LTRIM', KEYS[7], 0, tonumber(ARGV[4]) - 1)
redis.call('HINCRBY', KEYS[4], 'dead_letters', 1)
return 1
