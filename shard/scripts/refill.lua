-- refill: inject an allocation from the MySQL pool into one sub-domain,
-- exactly once per allocation id.
--
-- KEYS[1] state hash
-- KEYS[2] applied hash: "f<id>" -> qty for fills, "d<id>" -> qty for drains
-- ARGV[1] allocation id
-- ARGV[2] sub-domain "a" | "b"
-- ARGV[3] qty
-- ARGV[4] epoch the allocation was made for
-- ARGV[5] cap: apply only while the sub-domain holds less than this
--
-- Returns {code, a, b, act} (act 0: a active, 1: b; Go: RefillCode,
-- decodeRefill in shard/replies.go):
--   APPLIED (1) now, APPLIED_BEFORE (2) by an earlier run,
--   LOST (5) state missing or another epoch, CLOSED (6) closed or fenced,
--   FULL (7) the sub-domain is at its cap, REFUSED (8) by an earlier run.
-- LOST to REFUSED are final: the refusal is recorded under the allocation
-- id, so this allocation never applies later (two runs of one pending
-- allocation cannot end one voided and the other applied), and the caller
-- returns its units to the pool.
local APPLIED, APPLIED_BEFORE, LOST, CLOSED, FULL, REFUSED = 1, 2, 5, 6, 7, 8
local field = 'f' .. ARGV[1]
local f = redis.call('HMGET', KEYS[1], 'a', 'b', 'act', 'ep', 'st')
local act = 0
if f[3] == 'b' then act = 1 end
local done = redis.call('HGET', KEYS[2], field)
if done then
  local code = APPLIED_BEFORE
  if done == 'x' then code = REFUSED end
  return {code, tonumber(f[1]) or 0, tonumber(f[2]) or 0, act}
end
if not f[4] or f[4] ~= ARGV[4] then
  redis.call('HSET', KEYS[2], field, 'x')
  return {LOST, 0, 0, 0}
end
local a, b = tonumber(f[1]), tonumber(f[2])
if f[5] ~= 'open' then
  redis.call('HSET', KEYS[2], field, 'x')
  return {CLOSED, a, b, act}
end
local level = a
if ARGV[2] == 'b' then level = b end
if level >= tonumber(ARGV[5]) then
  redis.call('HSET', KEYS[2], field, 'x')
  return {FULL, a, b, act}
end
local n = redis.call('HINCRBY', KEYS[1], ARGV[2], ARGV[3])
if ARGV[2] == 'a' then a = n else b = n end
redis.call('HSET', KEYS[2], field, ARGV[3])
return {APPLIED, a, b, act}
