-- init: create a partition's state, or confirm the one that is there.
--
-- KEYS[1] state hash
-- ARGV[1] epoch
-- ARGV[2] threshold
-- ARGV[3] "1" to create the state when it is missing, "0" to only check
--
-- Returns {code, epoch}: PRESENT (1) with this epoch (threshold updated),
-- CREATED (3) now, MISSING (0) and not created, OTHER (5) present with
-- another epoch. (Go: InitCode, decodeInit in shard/replies.go.)
local MISSING, PRESENT, CREATED, OTHER = 0, 1, 3, 5
local ep = redis.call('HGET', KEYS[1], 'ep')
if ep then
  if ep ~= ARGV[1] then
    return {OTHER, ep}
  end
  redis.call('HSET', KEYS[1], 'thr', ARGV[2])
  return {PRESENT, ep}
end
if ARGV[3] ~= '1' then
  return {MISSING, ''}
end
redis.call('HSET', KEYS[1], 'ep', ARGV[1], 'a', 0, 'b', 0, 'act', 'a', 'thr', ARGV[2], 'seq', 0, 'st', 'open')
return {CREATED, ARGV[1]}
