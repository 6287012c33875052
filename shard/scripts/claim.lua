-- claim: decide, once for every node, whether this partition is a
-- request's home or hands the request on to a newer home. Used during the
-- retry window after partitions were added: a request walks its homes
-- under the generations' sets, oldest first, and claims at each one but
-- the last (ARCHITECTURE 4.2). The decision lives in the request's slot
-- in the pointers hash, next to the pointer a home keeps there, so a
-- claim and every take or point made at this partition as the request's
-- home are serialised by this Redis.
--
-- KEYS[1] records hash
-- KEYS[2] pointers hash
-- ARGV[1] request id
-- ARGV[2] pid of the request's next home (the redirect to write); "" only
--         with ARGV[3]: remove the stale redirect, making this the home
-- ARGV[3] pid of a redirect the caller knows to be stale (its partition
--         left the home set), to be replaced; "" when none
--
-- The slot holds "<pid>:<round>" (a pointer: this is the home), or
-- "h<pid>" (a redirect: the home is partition pid), or nothing.
--
-- Returns {code, text}:
--   0 home here: the slot holds a pointer (text), or the records hold a
--     took record (text = "o:<seq>:<qty>"); a short record alone does not
--     count, a request passing through as a non-home leaves one
--   1 redirected: text = the pid the slot redirects to (written now, or
--     earlier by another attempt)
local reqid = ARGV[1]
local cur = redis.call('HGET', KEYS[2], reqid)
if cur then
  if string.sub(cur, 1, 1) == 'h' then
    if ARGV[3] ~= '' and cur == 'h' .. ARGV[3] then
      if ARGV[2] == '' then
        redis.call('HDEL', KEYS[2], reqid)
        return {0, ''}
      end
      redis.call('HSET', KEYS[2], reqid, 'h' .. ARGV[2])
      return {1, ARGV[2]}
    end
    return {1, string.sub(cur, 2)}
  end
  return {0, cur}
end
local rec = redis.call('HGET', KEYS[1], reqid)
if rec and string.sub(rec, 1, 2) == 'o:' then
  return {0, rec}
end
redis.call('HSET', KEYS[2], reqid, 'h' .. ARGV[2])
return {1, ARGV[2]}
