-- inspect: a partition's state in one read.
--
-- KEYS[1] state hash
-- KEYS[2] detail stream
-- KEYS[3] records base (generation hashes "<base><g>", as in take.lua)
-- ARGV[1] generation length in ms
--
-- Returns {exists, a, b, act, seq, thr, st, ep, stream length, records}
-- (exists 1 or 0, act 0: a active, 1: b; records: those of generations g
-- and g-1, the ones still read). Go: decodeInspect in shard/replies.go.
local now = redis.call('TIME')
local g = math.floor((tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)) / tonumber(ARGV[1]))
local nrec = redis.call('HLEN', KEYS[3] .. string.format('%d', g)) +
  redis.call('HLEN', KEYS[3] .. string.format('%d', g - 1))
local f = redis.call('HMGET', KEYS[1], 'a', 'b', 'act', 'seq', 'thr', 'st', 'ep')
if not f[7] then
  return {0, 0, 0, 0, 0, 0, '', '', redis.call('XLEN', KEYS[2]), nrec}
end
local act = 0
if f[3] == 'b' then act = 1 end
return {1, tonumber(f[1]), tonumber(f[2]), act, tonumber(f[4]), tonumber(f[5]), f[6], f[7],
  redis.call('XLEN', KEYS[2]), nrec}
