-- take: deduct stock for a batch of requests on one partition, each
-- atomically with its dedup record and its detail record. The only code
-- that decrements stock. Requests that arrive together for one partition
-- share one call; the script handles them one after the other exactly as
-- separate calls would (a duplicate later in the batch sees the record the
-- earlier one made), but reads and writes the partition's keys once per
-- batch: a redis.call costs several microseconds of its own, far more than
-- the work of one request.
--
-- KEYS[1] state hash   a, b (sub-domain levels), act ("a"|"b"), thr, ep, seq, st
-- KEYS[2] records base: request id -> "o:<seq>:<qty>" (took here) | "s:<round>" (short here)
-- KEYS[3] pointers base (home role): request id -> "<pid>:<round>" (where the request goes)
--         | "h<pid>" (redirect, written by claim: the request's home is pid)
--         Records and pointers live in generation hashes "<base><g>", g =
--         floor(Redis time ms / ARGV[4]): a lookup reads generation g, then
--         g-1; writes go to g, which expires at the end of g+1 (ARCHITECTURE
--         2, "Generations of records"). The generation keys share the hash
--         tag of the declared base keys.
-- KEYS[4] detail stream: one entry per batch that took, id "<first seq>-0",
--         fields n (details), t (ms), then per detail i (0-based):
--         r<i> request id, q<i> qty, and u<i> user id when there is one;
--         detail i has sequence first seq + i
-- ARGV[1] epoch the caller believes the partition has
-- ARGV[2] number of requests n
-- ARGV[3] the highest detail sequence the caller has seen of the partition
--         (0 when none): a state below it went back (the shard lost writes)
-- ARGV[4] generation length in ms (scheduler.retry_window)
-- then 5 values per request:
--   request id; qty (> 0); round (>= 1); this partition's pid when it is
--   the request's home, "" otherwise; user id ("" when none)
--
-- Returns {a, b, act, need, then per request: code, seq, qty, text}
--   code 1 took, 2 took earlier (dedup), 3 short, 4 moved (text = pointer, or
--        "h<pid>" when the slot redirects the request to another home),
--        5 lost (state missing or another epoch: never sell here), 6 closed,
--        7 rolled back (open, and the state's sequence is below ARGV[3]: nothing is
--        read or written, so no deduction reuses a lost one's sequence and
--        no retry is answered from a record the lost writes contradict),
--        9 reused (the id took here earlier for another qty, seq and qty
--        are that deduction's; nothing is deducted)
--   act 0 = a active, 1 = b active; need 0 none, 1 refill a, 2 refill b
--   (from the levels after the whole batch)
local n = tonumber(ARGV[2])
local seen = tonumber(ARGV[3])
local out = {0, 0, 0, 0}

local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local glen = tonumber(ARGV[4])
local g = math.floor(ms / glen)
local gs = string.format('%d', g)
local rcur, rprev = KEYS[2] .. gs, KEYS[2] .. string.format('%d', g - 1)
local pcur, pprev = KEYS[3] .. gs, KEYS[3] .. string.format('%d', g - 1)

-- lookup reads fields from generation g, then g-1 for those it lacks.
local function lookup(cur, prev, fields, into)
  local got = redis.call('HMGET', cur, unpack(fields))
  local miss = {}
  for i = 1, #fields do
    if got[i] then into[fields[i]] = got[i] else miss[#miss + 1] = fields[i] end
  end
  if #miss > 0 then
    got = redis.call('HMGET', prev, unpack(miss))
    for i = 1, #miss do
      if got[i] then into[miss[i]] = got[i] end
    end
  end
end

local f = redis.call('HMGET', KEYS[1], 'a', 'b', 'act', 'thr', 'ep', 'seq', 'st', 'rg')
if not f[5] or f[5] ~= ARGV[1] then
  -- Lost. A request homed here still follows a pointer written since the
  -- shard came back (it moved on to another partition), so that its retry
  -- meets its first outcome; the rest are told the state is gone.
  for i = 1, n do
    local base = 4 + (i - 1) * 5
    local code, text = 5, ''
    local self = ARGV[base + 4]
    if self ~= '' then
      local p = redis.call('HGET', pcur, ARGV[base + 1]) or redis.call('HGET', pprev, ARGV[base + 1])
      if p and p ~= self .. ':' .. ARGV[base + 3] then
        code, text = 4, p
      end
    end
    out[#out + 1] = code; out[#out + 1] = 0; out[#out + 1] = 0; out[#out + 1] = text
  end
  return out
end
local a, b, thr, seq = tonumber(f[1]), tonumber(f[2]), tonumber(f[4]), tonumber(f[6])
local act = 0
if f[3] == 'b' then act = 1 end
local open = f[7] == 'open'
-- An open state that went back must not sell; once fenced (st no longer
-- open) it never sells anyway, and its surviving records still answer
-- retries.
if open and seq < seen then
  for i = 1, n do
    out[#out + 1] = 7; out[#out + 1] = 0; out[#out + 1] = 0; out[#out + 1] = ''
  end
  return out
end

-- Every request's record, and the pointers of those homed here, in one
-- read each.
local ids, homes = {}, {}
for i = 1, n do
  local base = 4 + (i - 1) * 5
  ids[i] = ARGV[base + 1]
  if ARGV[base + 4] ~= '' then homes[#homes + 1] = ARGV[base + 1] end
end
local recs, ptrs = {}, {}
lookup(rcur, rprev, ids, recs)
if #homes > 0 then
  lookup(pcur, pprev, homes, ptrs)
end

local written = {} -- records to write, as HSET arguments
local entry = {}   -- the stream entry's details
local first = seq + 1
local took = 0

for i = 1, n do
  local base = 4 + (i - 1) * 5
  local reqid, qty, round = ARGV[base + 1], tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
  local self, user = ARGV[base + 4], ARGV[base + 5]
  local code, rseq, rqty, text = 0, 0, 0, ''

  -- Home role: the pointer decides which (partition, round) may take for
  -- this request. Absent means "home, round 1".
  if self ~= '' then
    local p = ptrs[reqid] or (self .. ':1')
    if p ~= self .. ':' .. round then
      code, text = 4, p
    end
  end

  if code == 0 then
    local rec = recs[reqid]
    if rec then
      if string.sub(rec, 1, 1) == 'o' then
        local c = string.find(rec, ':', 3, true)
        code, rseq, rqty = 2, tonumber(string.sub(rec, 3, c - 1)), tonumber(string.sub(rec, c + 1))
        -- The id took here for another quantity: not a retry of that
        -- request, and never a second deduction.
        if rqty ~= qty then code = 9 end
      elseif tonumber(string.sub(rec, 3)) >= round then
        code = 3
      end
    end
  end

  if code == 0 and (not open or a + b < qty) then
    local rec = 's:' .. round
    recs[reqid] = rec
    written[#written + 1] = reqid; written[#written + 1] = rec
    code = 3
    if not open then code = 6 end
  end

  if code == 0 then
    -- Deduct from the active sub-domain first; a remainder that it cannot
    -- cover comes from the idle one, so scattered units still sell.
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
    seq = seq + 1
    local rec = 'o:' .. seq .. ':' .. qty
    recs[reqid] = rec
    written[#written + 1] = reqid; written[#written + 1] = rec
    entry[#entry + 1] = 'r' .. took; entry[#entry + 1] = reqid
    entry[#entry + 1] = 'q' .. took; entry[#entry + 1] = qty
    if user ~= '' then
      entry[#entry + 1] = 'u' .. took; entry[#entry + 1] = user
    end
    took = took + 1
    code, rseq, rqty = 1, seq, qty
  end

  out[#out + 1] = code; out[#out + 1] = rseq; out[#out + 1] = rqty; out[#out + 1] = text
end

-- The XADD first: it is the one write that can fail (an ID not above the
-- stream's last one: the state went back but the stream did not), and a
-- script's writes before an error stay. Failing here writes nothing, so
-- no record can answer a retry with a deduction that never happened.
if took > 0 then
  redis.call('XADD', KEYS[4], first .. '-0', 'n', took, 't', ms, unpack(entry))
end
if #written > 0 then
  redis.call('HSET', rcur, unpack(written))
  -- The first write of a generation sets its end: generation g is read
  -- until g+1 ends. rg in the state remembers that it is set.
  if f[8] ~= gs then
    redis.call('PEXPIREAT', rcur, (g + 2) * glen)
    redis.call('HSET', KEYS[1], 'rg', gs)
  end
end
if took > 0 then
  local actname = 'a'
  if act == 1 then actname = 'b' end
  redis.call('HSET', KEYS[1], 'a', a, 'b', b, 'act', actname, 'seq', seq)
end

-- The idle sub-domain is the one to refill; an active one below the
-- threshold is swapped out by the next deduction.
local need = 0
if act == 0 and b < thr then need = 2 end
if act == 1 and a < thr then need = 1 end
out[1], out[2], out[3], out[4] = a, b, act, need
return out
