-- take: deduct stock for a batch of requests on one or more partitions of
-- one Redis, each request atomically with its dedup record and its detail
-- record. The only code that decrements stock. Requests that arrive
-- together for the partitions of a shard share one call; the script
-- handles each partition's requests one after the other exactly as
-- separate calls would (a duplicate later in the batch sees the record the
-- earlier one made), and the partitions one after the other, each exactly
-- as a call of its own would (nothing is shared between them but the
-- clock). It reads and writes each partition's keys once per batch: a
-- redis.call costs several microseconds of its own, and a script call
-- about twenty, far more than the work of one request. The caller bounds
-- a call (requests, partitions) so that it never holds Redis long; on a
-- Redis Cluster it sends one partition per call (its keys share one hash
-- tag, another partition's do not).
--
-- Per partition j (0-based), KEYS[4j+1..4j+4]:
--   state hash   a, b (sub-domain levels), act ("a"|"b"), thr, ep, seq, st
--   records base: request id -> "o:<seq>:<qty>" (took here) | "s:<round>" (short here)
--   pointers base (home role): request id -> "<pid>:<round>" (where the request goes)
--     | "h<pid>" (redirect, written by claim: the request's home is pid)
--     Records and pointers live in generation hashes "<base><g>", g =
--     floor(Redis time ms / generation length): a lookup reads generation
--     g, then g-1; writes go to g, which expires at the end of g+1
--     (ARCHITECTURE 2, "Generations of records"). The generation keys
--     share the hash tag of the declared base keys.
--   detail stream: one entry per batch that took, id "<first seq>-0",
--     fields n (details), t (ms), then per detail i (0-based):
--     r<i> request id, q<i> qty, and u<i> user id when there is one;
--     detail i has sequence first seq + i
-- ARGV[1] number of partitions m; then per partition, in KEYS order:
--   epoch the caller believes the partition has
--   number of requests n
--   the highest detail sequence the caller has seen of the partition
--     (0 when none): a state below it went back (the shard lost writes)
--   generation length in ms (scheduler.retry_window)
--   then 5 values per request: request id; qty (> 0); round (>= 1); this
--   partition's pid when it is the request's home, "" otherwise; user id
--   ("" when none)
--
-- Returns, per partition in KEYS order: a, b, act, need (from the levels
-- after the partition's whole batch), then per request: code, seq, qty, text
--   act ACT_A | ACT_B; need NEED_NONE | NEED_A | NEED_B (refill that one)
--   code (the constants below; Go: shard.Took ... shard.StreamRefused)
local TOOK = 1           -- deducted now; seq, qty are the detail's
local TOOK_EARLIER = 2   -- an earlier attempt took (dedup); seq, qty its
local SHORT = 3          -- not enough stock here (recorded for the round)
local MOVED = 4          -- text = the request's pointer, or "h<pid>" when
                         -- the slot redirects the request to another home
local LOST = 5           -- state missing or another epoch: never sell here
local CLOSED = 6         -- fenced or closed
local ROLLED_BACK = 7    -- open, and the state's sequence is below the one
                         -- seen: nothing is read or written, so no
                         -- deduction reuses a lost one's sequence and no
                         -- retry is answered from a record the lost
                         -- writes contradict
local REUSED = 9         -- the id took here earlier for another qty; seq,
                         -- qty are that deduction's; nothing is deducted
local STREAM_REFUSED = 10 -- the stream refused the entry (the state went
                         -- back, the stream did not): nothing of this
                         -- partition was written; text = Redis's error
local ACT_A, ACT_B = 0, 1
local NEED_NONE, NEED_A, NEED_B = 0, 1, 2

local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local out = {}

-- Numbers go to strings with decimal(): Lua's own conversion (x .. '',
-- or a number handed to redis.call) prints a double with "%.14g" or
-- "%.17g", about three times dearer than "%d", and a take converts
-- several per request. Values the caller sent as strings (qty, round)
-- are used as sent.
local fmt = string.format
local function decimal(x) return fmt('%d', x) end
local mss = decimal(ms)

-- lookup reads fields from generation cur, then prev for those it lacks.
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

-- take runs one partition's batch: its keys start at KEYS[k + 1], its
-- arguments at ARGV[x]. It appends the partition's part of the reply and
-- returns the index of the next partition's arguments.
local function take(k, x)
  local state, records, pointers, stream = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
  local epoch, n, seen, glen = ARGV[x], tonumber(ARGV[x + 1]), tonumber(ARGV[x + 2]), tonumber(ARGV[x + 3])
  -- request i's values are ARGV[r0 + 5i + 1 .. r0 + 5i + 5] (i 0-based)
  local r0 = x + 3
  local nextx = r0 + 5 * n + 1
  local h = #out
  out[h + 1] = 0; out[h + 2] = 0; out[h + 3] = ACT_A; out[h + 4] = NEED_NONE

  local g = math.floor(ms / glen)
  local gs, gp = decimal(g), decimal(g - 1)
  local rcur, rprev = records .. gs, records .. gp
  local pcur, pprev = pointers .. gs, pointers .. gp

  local f = redis.call('HMGET', state, 'a', 'b', 'act', 'thr', 'ep', 'seq', 'st', 'rg')
  if not f[5] or f[5] ~= epoch then
    -- Lost. A request homed here still follows a pointer written since the
    -- shard came back (it moved on to another partition), so that its retry
    -- meets its first outcome; the rest are told the state is gone.
    for i = 0, n - 1 do
      local base = r0 + 5 * i
      local code, text = LOST, ''
      local self = ARGV[base + 4]
      if self ~= '' then
        local p = redis.call('HGET', pcur, ARGV[base + 1]) or redis.call('HGET', pprev, ARGV[base + 1])
        if p and p ~= self .. ':' .. ARGV[base + 3] then
          code, text = MOVED, p
        end
      end
      out[#out + 1] = code; out[#out + 1] = 0; out[#out + 1] = 0; out[#out + 1] = text
    end
    return nextx
  end
  local a, b, thr, seq = tonumber(f[1]), tonumber(f[2]), tonumber(f[4]), tonumber(f[6])
  local act = ACT_A
  if f[3] == 'b' then act = ACT_B end
  local open = f[7] == 'open'
  -- An open state that went back must not sell; once fenced (st no longer
  -- open) it never sells anyway, and its surviving records still answer
  -- retries.
  if open and seq < seen then
    for i = 1, n do
      out[#out + 1] = ROLLED_BACK; out[#out + 1] = 0; out[#out + 1] = 0; out[#out + 1] = ''
    end
    return nextx
  end

  -- Every request's record, and the pointers of those homed here, in one
  -- read each.
  local ids, homes = {}, {}
  for i = 0, n - 1 do
    local base = r0 + 5 * i
    ids[i + 1] = ARGV[base + 1]
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

  for i = 0, n - 1 do
    local base = r0 + 5 * i
    local reqid, qty, round = ARGV[base + 1], tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
    local qtys, rounds = ARGV[base + 2], ARGV[base + 3]
    local self, user = ARGV[base + 4], ARGV[base + 5]
    local code, rseq, rqty, text = 0, 0, 0, ''

    -- Home role: the pointer decides which (partition, round) may take for
    -- this request. Absent means "home, round 1".
    if self ~= '' then
      local p = ptrs[reqid] or (self .. ':1')
      if p ~= self .. ':' .. rounds then
        code, text = MOVED, p
      end
    end

    if code == 0 then
      local rec = recs[reqid]
      if rec then
        if string.sub(rec, 1, 1) == 'o' then
          local c = string.find(rec, ':', 3, true)
          code, rseq, rqty = TOOK_EARLIER, tonumber(string.sub(rec, 3, c - 1)), tonumber(string.sub(rec, c + 1))
          -- The id took here for another quantity: not a retry of that
          -- request, and never a second deduction.
          if rqty ~= qty then code = REUSED end
        elseif tonumber(string.sub(rec, 3)) >= round then
          code = SHORT
        end
      end
    end

    if code == 0 and (not open or a + b < qty) then
      local rec = 's:' .. rounds
      recs[reqid] = rec
      written[#written + 1] = reqid; written[#written + 1] = rec
      code = SHORT
      if not open then code = CLOSED end
    end

    if code == 0 then
      -- Deduct from the active sub-domain first; a remainder that it cannot
      -- cover comes from the idle one, so scattered units still sell.
      local cur, oth = a, b
      if act == ACT_B then cur, oth = b, a end
      local fromcur = qty
      if cur < qty then fromcur = cur end
      cur = cur - fromcur
      oth = oth - (qty - fromcur)
      -- Swap when the active one runs low and the idle one holds more.
      if cur < thr and oth > cur then
        act = 1 - act
        cur, oth = oth, cur
      end
      if act == ACT_A then a, b = cur, oth else a, b = oth, cur end
      seq = seq + 1
      local rec = 'o:' .. decimal(seq) .. ':' .. qtys
      recs[reqid] = rec
      written[#written + 1] = reqid; written[#written + 1] = rec
      local i = decimal(took)
      entry[#entry + 1] = 'r' .. i; entry[#entry + 1] = reqid
      entry[#entry + 1] = 'q' .. i; entry[#entry + 1] = qtys
      if user ~= '' then
        entry[#entry + 1] = 'u' .. i; entry[#entry + 1] = user
      end
      took = took + 1
      code, rseq, rqty = TOOK, seq, qty
    end

    out[#out + 1] = code; out[#out + 1] = rseq; out[#out + 1] = rqty; out[#out + 1] = text
  end

  -- The XADD first: it is the one write that can fail (an ID not above the
  -- stream's last one: the state went back but the stream did not), and a
  -- script's writes stay. Failing here writes nothing of this partition, so
  -- no record can answer a retry with a deduction that never happened; the
  -- error is caught so that the other partitions of the call still answer.
  if took > 0 then
    local r = redis.pcall('XADD', stream, decimal(first) .. '-0', 'n', decimal(took), 't', mss, unpack(entry))
    if type(r) == 'table' and r.err then
      for i = 0, n - 1 do
        local o = h + 4 + 4 * i
        out[o + 1] = STREAM_REFUSED; out[o + 2] = 0; out[o + 3] = 0; out[o + 4] = r.err
      end
      return nextx
    end
  end
  if #written > 0 then
    redis.call('HSET', rcur, unpack(written))
    -- The first write of a generation sets its end: generation g is read
    -- until g+1 ends. rg in the state remembers that it is set.
    if f[8] ~= gs then
      redis.call('PEXPIREAT', rcur, decimal((g + 2) * glen))
      redis.call('HSET', state, 'rg', gs)
    end
  end
  if took > 0 then
    local actname = 'a'
    if act == ACT_B then actname = 'b' end
    redis.call('HSET', state, 'a', decimal(a), 'b', decimal(b), 'act', actname, 'seq', decimal(seq))
  end

  -- The idle sub-domain is the one to refill; an active one below the
  -- threshold is swapped out by the next deduction.
  local need = NEED_NONE
  if act == ACT_A and b < thr then need = NEED_B end
  if act == ACT_B and a < thr then need = NEED_A end
  out[h + 1], out[h + 2], out[h + 3], out[h + 4] = a, b, act, need
  return nextx
end

local x = 2
for j = 0, tonumber(ARGV[1]) - 1 do
  x = take(4 * j, x)
end
return out
