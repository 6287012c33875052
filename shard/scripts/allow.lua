-- allow: a SKU's per-user allowance (sale rules, issue 15). One hash per
-- limited SKU, on one shard (skus.limit_shard), so that the count of a
-- user is exact across every partition and node. The scheduler takes a
-- request's allowance BEFORE its stock take and settles or gives it back
-- after; the ledger gives it back on release and expiry; the ledger's
-- allowance sweep resolves what a crash left pending (ARCHITECTURE.md,
-- "Sale rules").
--
-- KEYS[1] allowance hash:
--   "u:" .. user   -> units the user holds (sum of the user's entries)
--   "r:" .. reqid  -> "p:<qty>:<ms>:<user>"     pending: taken, stock take not settled
--                   | "h:<qty>:<detail>:<user>" held: the request took, detail id
--                   | "x:<ms>"                  given back (released or expired);
--                                               a retry of it takes no allowance
--   "d:" .. detail -> reqid of a held entry (a release names the detail only)
-- ARGV[1] op, then per op:
--   take   reqid, user, qty, limit, now ms -> {code, held}
--          TAKEN (1), AGAIN (2: the id holds an entry, a retry), LIMIT (3:
--          limit reached, nothing written), GIVEN_BACK (4: given back
--          earlier, a retry of a released request: no allowance needed)
--   settle reqid, user, qty, detail       -> {code}  HELD (1) now, HELD_BEFORE
--          (2) already, GIVEN_BACK (4) earlier (nothing changed). An entry
--          the sweep dropped is recorded again: the deduction exists, so it
--          counts.
--   give   reqid, expect, now ms, tomb    -> {code}  DONE (1) given back,
--          NOTHING (0) to give (absent, already given, or not equal to
--          expect when expect is not ""; expect "p" matches any pending
--          entry). tomb "1" leaves the "x" record, "0" deletes the entry (a
--          take that found no stock).
--   givedetail detail, now ms             -> {code}  as give with tomb "1"
--   forget field, expect                  -> {code}  DONE (1): deleted field
--          as it still equalled expect (the sweep's old tombstones and
--          orphans), else NOTHING (0)
--   batch  k, then per op: its name, its number of arguments, its
--          arguments -> per op {code, held or 0} (2k values). Take and
--          settle go this way.
-- (Go: AllowCode, decodeAllow in shard/replies.go.)
local TAKEN, AGAIN, LIMIT, GIVEN_BACK = 1, 2, 3, 4
local HELD, HELD_BEFORE = 1, 2
local NOTHING, DONE = 0, 1
local key, op = KEYS[1], ARGV[1]

local function parse(e)
  local kind = string.sub(e, 1, 1)
  if kind == 'p' then
    local qty, ms, user = string.match(e, '^p:(%d+):(%d+):(.*)$')
    return kind, tonumber(qty), user, ms
  elseif kind == 'h' then
    local qty, detail, user = string.match(e, '^h:(%d+):([^:]*:%d+:%d+:%d+):(.*)$')
    return kind, tonumber(qty), user, detail
  end
  return kind, 0, '', ''
end

local function giveback(reqid, e, now, tomb)
  local kind, qty, user, detail = parse(e)
  if kind ~= 'p' and kind ~= 'h' then return NOTHING end
  local left = redis.call('HINCRBY', key, 'u:' .. user, -qty)
  if left <= 0 then redis.call('HDEL', key, 'u:' .. user) end
  if kind == 'h' then redis.call('HDEL', key, 'd:' .. detail) end
  if tomb == '1' then
    redis.call('HSET', key, 'r:' .. reqid, 'x:' .. now)
  else
    redis.call('HDEL', key, 'r:' .. reqid)
  end
  return DONE
end

-- run runs op with its arguments A (A[1] is ARGV[2] of a single op) and
-- returns its reply, or nil for an unknown op.
local function run(op, A)
  if op == 'take' then
    local reqid, user, qty, limit, now = A[1], A[2], tonumber(A[3]), tonumber(A[4]), A[5]
    local held = tonumber(redis.call('HGET', key, 'u:' .. user) or '0')
    local e = redis.call('HGET', key, 'r:' .. reqid)
    if e then
      if string.sub(e, 1, 1) == 'x' then return {GIVEN_BACK, held} end
      return {AGAIN, held}
    end
    if held + qty > limit then return {LIMIT, held} end
    redis.call('HINCRBY', key, 'u:' .. user, qty)
    redis.call('HSET', key, 'r:' .. reqid, 'p:' .. qty .. ':' .. now .. ':' .. user)
    return {TAKEN, held + qty}
  elseif op == 'settle' then
    local reqid, user, qty, detail = A[1], A[2], A[3], A[4]
    local e = redis.call('HGET', key, 'r:' .. reqid)
    if e then
      local kind, eqty, euser = parse(e)
      if kind == 'h' then return {HELD_BEFORE} end
      if kind == 'x' then return {GIVEN_BACK} end
      -- Pending: the units are counted already, under the entry's qty.
      redis.call('HSET', key, 'r:' .. reqid, 'h:' .. eqty .. ':' .. detail .. ':' .. euser, 'd:' .. detail, reqid)
      return {HELD}
    end
    redis.call('HINCRBY', key, 'u:' .. user, qty)
    redis.call('HSET', key, 'r:' .. reqid, 'h:' .. qty .. ':' .. detail .. ':' .. user, 'd:' .. detail, reqid)
    return {HELD}
  elseif op == 'give' then
    local reqid, expect, now, tomb = A[1], A[2], A[3], A[4]
    local e = redis.call('HGET', key, 'r:' .. reqid)
    if not e then return {NOTHING} end
    if expect == 'p' then
      if string.sub(e, 1, 1) ~= 'p' then return {NOTHING} end
    elseif expect ~= '' and e ~= expect then
      return {NOTHING}
    end
    return {giveback(reqid, e, now, tomb)}
  elseif op == 'givedetail' then
    local detail, now = A[1], A[2]
    local reqid = redis.call('HGET', key, 'd:' .. detail)
    if not reqid then return {NOTHING} end
    redis.call('HDEL', key, 'd:' .. detail)
    local e = redis.call('HGET', key, 'r:' .. reqid)
    if not e then return {NOTHING} end
    return {giveback(reqid, e, now, '1')}
  elseif op == 'forget' then
    local field, expect = A[1], A[2]
    if redis.call('HGET', key, field) == expect then
      redis.call('HDEL', key, field)
      return {DONE}
    end
    return {NOTHING}
  end
end

if op == 'batch' then
  -- Several ops in one call, run in order exactly as separate calls would
  -- (a later op sees an earlier one's writes): the scheduler sends the
  -- takes and settles that arrive together in one call, since the call
  -- costs Redis far more than the op.
  local out, x = {}, 3
  for i = 1, tonumber(ARGV[2]) do
    local name, n = ARGV[x], tonumber(ARGV[x + 1])
    local A = {}
    for j = 1, n do A[j] = ARGV[x + 1 + j] end
    x = x + 2 + n
    local r = run(name, A)
    if not r then return redis.error_reply('allow: unknown op ' .. tostring(name)) end
    out[#out + 1] = r[1]; out[#out + 1] = r[2] or 0
  end
  return out
end
local A = {}
for j = 2, #ARGV do A[j - 1] = ARGV[j] end
local r = run(op, A)
if r then return r end
return redis.error_reply('allow: unknown op ' .. tostring(op))
