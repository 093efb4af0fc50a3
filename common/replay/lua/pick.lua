-- Pick up to ARGV[2] ready chunks at random (with repetition) that hold ARGV[1] frames.
-- KEYS: ready, info. Returns a flat list id1, info1, id2, info2, ...
-- A chunk shorter than the window is skipped; a missing or malformed info record is
-- returned as it is, so that the client refuses the chunk.
local out = {}
if redis.call('ZCARD', KEYS[1]) == 0 then return out end
local window = tonumber(ARGV[1])
local wanted = tonumber(ARGV[2])
for attempt = 1, 16 do
  local need = wanted - #out / 2
  if need == 0 then break end
  for _, id in ipairs(redis.call('ZRANDMEMBER', KEYS[1], -need)) do
    local info = redis.call('HGET', KEYS[2], id) or ''
    local steps = tonumber(string.match(info, '^(%d+):') or '')
    if steps == nil or steps + 1 >= window then
      table.insert(out, id)
      table.insert(out, info)
    end
  end
end
return out
