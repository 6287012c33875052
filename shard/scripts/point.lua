-- point: compare-and-set a request's pointer on its home partition. The
-- pointer names the one (partition, round) that may take for the request, so
-- concurrent attempts and retries of one request id follow a single path.
--
-- KEYS[1] records hash of the home partition
-- KEYS[2] pointers hash of the home partition
-- ARGV[1] request id
-- ARGV[2] expected pointer "<pid>:<round>"
-- ARGV[3] new pointer
-- ARGV[4] this partition's pid
--
-- Returns {code, text}: 1 moved (text = new pointer), 0 conflict (text =
-- current pointer), 2 the request already took here (text = its record).
local reqid = ARGV[1]
local cur = redis.call('HGET', KEYS[2], reqid)
if not cur then cur = ARGV[4] .. ':1' end
if cur ~= ARGV[2] then
  return {0, cur}
end
local c = string.find(cur, ':', 1, true)
if string.sub(cur, 1, c - 1) == ARGV[4] then
  -- Moving away from this partition: it must not have taken for the request.
  -- Takes here check the pointer, so none can take after the move.
  local rec = redis.call('HGET', KEYS[1], reqid)
  if rec and string.sub(rec, 1, 1) == 'o' then
    return {2, rec}
  end
end
redis.call('HSET', KEYS[2], reqid, ARGV[3])
return {1, ARGV[3]}
