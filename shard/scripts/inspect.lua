-- inspect: a partition's state in one read.
--
-- KEYS[1] state hash
-- KEYS[2] detail stream
-- KEYS[3] records hash
--
-- Returns {exists, a, b, act, seq, thr, st, ep, stream length, records}
local f = redis.call('HMGET', KEYS[1], 'a', 'b', 'act', 'seq', 'thr', 'st', 'ep')
if not f[7] then
  return {0, 0, 0, 0, 0, 0, '', '', redis.call('XLEN', KEYS[2]), redis.call('HLEN', KEYS[3])}
end
local act = 0
if f[3] == 'b' then act = 1 end
return {1, tonumber(f[1]), tonumber(f[2]), act, tonumber(f[4]), tonumber(f[5]), f[6], f[7],
  redis.call('XLEN', KEYS[2]), redis.call('HLEN', KEYS[3])}
