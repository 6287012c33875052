-- take: deduct qty for one request from a partition, atomically with its
-- dedup record and its detail record. The only code that decrements stock.
--
-- KEYS[1] state hash   a, b (sub-domain levels), act ("a"|"b"), thr, ep, seq, st
-- KEYS[2] records hash request id -> "o:<seq>:<qty>" (took here) | "s:<round>" (short here)
-- KEYS[3] pointers hash (home role) request id -> "<pid>:<round>" (where the request goes)
-- KEYS[4] detail stream, entry id "<seq>-0", fields r (request), q (qty), t (ms), u (user)
-- ARGV[1] request id
-- ARGV[2] qty (> 0)
-- ARGV[3] round (>= 1)
-- ARGV[4] this partition's pid when it is the request's home, "" otherwise
-- ARGV[5] epoch the caller believes the partition has
-- ARGV[6] user id ("" when none)
--
-- Returns {code, a, b, act, seq, qty, need, text}
--   code 1 took, 2 took earlier (dedup), 3 short, 4 moved (text = pointer),
--        5 lost (state missing or another epoch: never sell here), 6 closed
--   act 0 = a active, 1 = b active; need 0 none, 1 refill a, 2 refill b
local reqid, qty, round = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])

local f = redis.call('HMGET', KEYS[1], 'a', 'b', 'act', 'thr', 'ep', 'seq', 'st')
if not f[5] or f[5] ~= ARGV[5] then
  return {5, 0, 0, 0, 0, 0, 0, ''}
end
local a, b, thr = tonumber(f[1]), tonumber(f[2]), tonumber(f[4])
local act = 0
if f[3] == 'b' then act = 1 end

local function need()
  -- the idle sub-domain is the one to refill; an active one below the
  -- threshold is swapped out by the next deduction
  if act == 0 and b < thr then return 2 end
  if act == 1 and a < thr then return 1 end
  return 0
end

-- Home role: the pointer decides which (partition, round) may take for this
-- request. Absent means "home, round 1".
if ARGV[4] ~= '' then
  local p = redis.call('HGET', KEYS[3], reqid)
  if not p then p = ARGV[4] .. ':1' end
  if p ~= ARGV[4] .. ':' .. ARGV[3] then
    return {4, a, b, act, 0, 0, need(), p}
  end
end

local rec = redis.call('HGET', KEYS[2], reqid)
if rec then
  if string.sub(rec, 1, 1) == 'o' then
    local c = string.find(rec, ':', 3, true)
    return {2, a, b, act, tonumber(string.sub(rec, 3, c - 1)), tonumber(string.sub(rec, c + 1)), need(), ''}
  end
  if tonumber(string.sub(rec, 3)) >= round then
    return {3, a, b, act, 0, 0, need(), ''}
  end
end

if f[7] ~= 'open' then
  redis.call('HSET', KEYS[2], reqid, 's:' .. round)
  return {6, a, b, act, 0, 0, 0, ''}
end

if a + b < qty then
  redis.call('HSET', KEYS[2], reqid, 's:' .. round)
  return {3, a, b, act, 0, 0, need(), ''}
end

-- Deduct from the active sub-domain first; a remainder that it cannot cover
-- comes from the idle one, so scattered units still sell.
local cur, oth = a, b
if act == 1 then cur, oth = b, a end
local fromcur = qty
if cur < qty then fromcur = cur end
cur = cur - fromcur
oth = oth - (qty - fromcur)
-- Swap when the active one runs low and the idle one holds more.
if cur < thr and oth > cur then
  act = 1 - act
  cur, oth = oth, cur
end
if act == 0 then a, b = cur, oth else a, b = oth, cur end

local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local actname = 'a'
if act == 1 then actname = 'b' end
redis.call('HSET', KEYS[1], 'a', a, 'b', b, 'act', actname)
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[6] ~= '' then
  redis.call('XADD', KEYS[4], seq .. '-0', 'r', reqid, 'q', qty, 't', ms, 'u', ARGV[6])
else
  redis.call('XADD', KEYS[4], seq .. '-0', 'r', reqid, 'q', qty, 't', ms)
end
redis.call('HSET', KEYS[2], reqid, 'o:' .. seq .. ':' .. qty)
return {1, a, b, act, seq, qty, need(), ''}
