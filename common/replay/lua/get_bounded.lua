-- A blob, nil if it is missing, or its length (an integer) if it is over ARGV[1] bytes,
-- so that an oversized blob is never transferred. KEYS: the blob's key.
local n = redis.call('STRLEN', KEYS[1])
if n > tonumber(ARGV[1]) then return n end
return redis.call('GET', KEYS[1])
