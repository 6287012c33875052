-- init: create a partition's state, or confirm the one that is there.
--
-- KEYS[1] state hash
-- ARGV[1] epoch
-- ARGV[2] threshold
-- ARGV[3] "1" to create the state when it is missing, "0" to only check
--
-- Returns {code, epoch}: 1 present with this epoch (threshold updated),
-- 3 created, 0 missing (not created), 5 present with another epoch.
local ep = redis.call('HGET', KEYS[1], 'ep')
if ep then
  if ep ~= ARGV[1] then
    return {5, ep}
  end
  redis.call('HSET', KEYS[1], 'thr', ARGV[2])
  return {1, ep}
end
if ARGV[3] ~= '1' then
  return {0, ''}
end
redis.call('HSET', KEYS[1], 'ep', ARGV[1], 'a', 0, 'b', 0, 'act', 'a', 'thr', ARGV[2], 'seq', 0, 'st', 'open')
return {3, ARGV[1]}
