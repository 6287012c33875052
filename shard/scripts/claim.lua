-- claim: decide, once for every node, whether this partition is a
-- request's home or hands the request on to a newer home. Used during the
-- retry window after partitions were added: a request walks its homes
-- under the generations' sets, oldest first, and claims at each one but
-- the last (ARCHITECTURE 4.2). The decision lives in the request's slot
-- in the pointers hash, next to the pointer a home keeps there, so a
-- claim and every take or point made at this partition as the request's
-- home are serialised by this Redis.
--
-- KEYS[1] records base, KEYS[2] pointers base: the generation hashes
--         "<base><g>" as in take.lua (g, then g-1, are read; g is written)
-- ARGV[1] request id
-- ARGV[2] pid of the request's next home (the redirect to write); "" only
--         with ARGV[3]: remove the stale redirect, making this the home
-- ARGV[3] pid of a redirect the caller knows to be stale (its partition
--         left the home set), to be replaced; "" when none
-- ARGV[4] generation length in ms (scheduler.retry_window)
--
-- The slot holds "<pid>:<round>" (a pointer: this is the home), or
-- "h<pid>" (a redirect: the home is partition pid), or nothing.
--
-- Returns {code, text}:
--   HOME (0) home here: the slot holds a pointer (text), or the records
--     hold a took record (text = "o:<seq>:<qty>"); a short record alone
--     does not count, a request passing through as a non-home leaves one
--   REDIRECTED (1) text = the pid the slot redirects to (written now, or
--     earlier by another attempt)
-- (Go: ClaimCode, decodeClaim in shard/replies.go.)
local HOME, REDIRECTED = 0, 1
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local glen = tonumber(ARGV[4])
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
if cur then
  if string.sub(cur, 1, 1) == 'h' then
    if ARGV[3] ~= '' and cur == 'h' .. ARGV[3] then
      if ARGV[2] == '' then
        redis.call('HDEL', pcur, reqid)
        redis.call('HDEL', pprev, reqid)
        return {HOME, ''}
      end
      setptr(reqid, 'h' .. ARGV[2])
      return {REDIRECTED, ARGV[2]}
    end
    return {REDIRECTED, string.sub(cur, 2)}
  end
  return {HOME, cur}
end
local rec = get(rcur, rprev, reqid)
if rec and string.sub(rec, 1, 2) == 'o:' then
  return {HOME, rec}
end
setptr(reqid, 'h' .. ARGV[2])
return {REDIRECTED, ARGV[2]}
