-- drain: take every unit out of a partition (both sub-domains) so that it can
-- go back to the MySQL pool, exactly once per drain id.
--
-- KEYS[1] state hash
-- KEYS[2] applied hash
-- ARGV[1] drain id
-- ARGV[2] epoch
-- ARGV[3] "1" to close the partition (no more takes or refills), "0" to keep it open
--
-- Returns {code, amount}: 1 drained now, 2 drained earlier (amount recorded
-- then), 5 lost (nothing can be drained: state missing or another epoch).
local field = 'd' .. ARGV[1]
local done = redis.call('HGET', KEYS[2], field)
if done then
  return {2, tonumber(done)}
end
local f = redis.call('HMGET', KEYS[1], 'a', 'b', 'ep')
if not f[3] or f[3] ~= ARGV[2] then
  return {5, 0}
end
local amount = tonumber(f[1]) + tonumber(f[2])
redis.call('HSET', KEYS[1], 'a', 0, 'b', 0)
if ARGV[3] == '1' then
  redis.call('HSET', KEYS[1], 'st', 'closed')
end
redis.call('HSET', KEYS[2], field, amount)
return {1, amount}
