-- drain: take every unit out of a partition (both sub-domains) so that it can
-- go back to the MySQL pool, exactly once per drain id.
--
-- KEYS[1] state hash
-- KEYS[2] applied hash
-- ARGV[1] drain id
-- ARGV[2] epoch
-- ARGV[3] "1" to close the partition (no more takes or refills), "0" to keep it open
--
-- Returns {code, amount}: DRAINED (1) now, DRAINED_BEFORE (2) by an earlier
-- run (amount recorded then), LOST (5) nothing can be drained: state
-- missing or another epoch. (Go: DrainCode, decodeDrain in shard/replies.go.)
local DRAINED, DRAINED_BEFORE, LOST = 1, 2, 5
local field = 'd' .. ARGV[1]
local done = redis.call('HGET', KEYS[2], field)
if done then
  return {DRAINED_BEFORE, tonumber(done)}
end
local f = redis.call('HMGET', KEYS[1], 'a', 'b', 'ep')
if not f[3] or f[3] ~= ARGV[2] then
  return {LOST, 0}
end
local amount = tonumber(f[1]) + tonumber(f[2])
redis.call('HSET', KEYS[1], 'a', 0, 'b', 0)
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[1], 'st', 'closed')
end
redis.call('HSET', KEYS[2], field, amount)
return {DRAINED, amount}
