-- find: whether a partition still holds deduction <seq> in its stream, and
-- with what qty. Read-only. Confirm and release use it to check that a
-- token names a deduction that exists before its detail reaches MySQL.
--
-- KEYS[1] state hash
-- KEYS[2] detail stream
-- ARGV[1] epoch (the partition's, from MySQL)
-- ARGV[2] seq (>= 1)
--
-- Returns {code, qty, state seq} (Go: FindCode, decodeFind in
-- shard/replies.go):
--   LOST (0)   the state is missing or carries another epoch
--   FOUND (1)  the stream holds the detail; qty is its qty
--   ABSENT (2) the stream does not hold it: trimmed after the broker
--              confirmed it when seq <= state seq, never deducted when
--              seq > state seq
-- Entry ids are "<first seq>-0" and an entry holds the n details
-- first..first+n-1, so the only entry that can hold seq is the last one
-- whose id is <= "<seq>-0".
local FOUND, ABSENT, LOST = 1, 2, 0
local f = redis.call('HMGET', KEYS[1], 'ep', 'seq')
if f[1] ~= ARGV[1] then
  return {LOST, 0, 0}
end
local cur = tonumber(f[2]) or 0
local seq = tonumber(ARGV[2])
local e = redis.call('XREVRANGE', KEYS[2], ARGV[2] .. '-0', '-', 'COUNT', 1)
if #e == 1 then
  local first = tonumber(string.match(e[1][1], '^(%d+)-'))
  local fields = e[1][2]
  local h = {}
  for i = 1, #fields, 2 do
    h[fields[i]] = fields[i + 1]
  end
  local i = seq - first
  if i >= 0 and i < (tonumber(h['n']) or 0) then
    return {FOUND, tonumber(h['q' .. i]) or 0, cur}
  end
end
return {ABSENT, 0, cur}
