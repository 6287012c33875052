-- point: compare-and-set a request's pointer on its home partition. The
-- pointer names the one (partition, round) that may take for the request, so
-- concurrent attempts and retries of one request id follow a single path.
--
-- KEYS[1] records base, KEYS[2] pointers base of the home partition: the
--         generation hashes "<base><g>" as in take.lua (g, then g-1, are
--         read; g is written)
-- ARGV[1] request id
-- ARGV[2] expected pointer "<pid>:<round>"
-- ARGV[3] new pointer
-- ARGV[4] this partition's pid
-- ARGV[5] generation length in ms (scheduler.retry_window)
--
-- Returns {code, text}: MOVED (1, text = new pointer), CONFLICT (0, text =
-- current pointer), TOOK (2, the request already took here, text = its
-- record "o:<seq>:<qty>"). (Go: PointCode, decodePoint in shard/replies.go.)
local CONFLICT, MOVED, TOOK = 0, 1, 2
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local glen = tonumber(ARGV[5])
local g = math.floor(ms / glen)
local rcur, rprev = KEYS[1] .. string.format('%d', g), KEYS[1] .. string.format('%d', g - 1)
local pcur, pprev = KEYS[2] .. string.format('%d', g), KEYS[2] .. string.format('%d', g - 1)
-- A field of generation g, else of g-1.
local function get(cur, prev, field)
  return redis.call('HGET', cur, field) or redis.call('HGET', prev, field)
end
-- A write goes to generation g, which is read until g+1 ends.
local function setptr(field, value)
  redis.call('HSET', pcur, field, value)
  redis.call('PEXPIREAT', pcur, (g + 2) * glen)
end
local reqid = ARGV[1]
local cur = get(pcur, pprev, reqid)
if not cur then cur = ARGV[4] .. ':1' end
if cur ~= ARGV[2] then
  return {CONFLICT, cur}
end
local c = string.find(cur, ':', 1, true)
if string.sub(cur, 1, c - 1) == ARGV[4] then
  -- Moving away from this partition: it must not have taken for the request.
  -- Takes here check the pointer, so none can take after the move.
  local rec = get(rcur, rprev, reqid)
  if rec and string.sub(rec, 1, 1) == 'o' then
    return {TOOK, rec}
  end
end
setptr(reqid, ARGV[3])
return {MOVED, ARGV[3]}
