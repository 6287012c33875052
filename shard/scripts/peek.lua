-- peek: whether a partition holds anything for a request: its pointer
-- (home role) and its record. Read-only. Used during the retry window
-- after partitions were added, to find a request's home under the
-- partition set it may have first been served with.
--
-- KEYS[1] records hash
-- KEYS[2] pointers hash
-- ARGV[1] request id
--
-- Returns {pointer or "", record or ""}. Only a pointer or a took-record
-- proves this was the request's home (or where it took): a short record
-- may be left by the request passing through as a fallback.
local p = redis.call('HGET', KEYS[2], ARGV[1]) or ''
local r = redis.call('HGET', KEYS[1], ARGV[1]) or ''
if string.sub(r, 1, 2) ~= 'o:' then r = '' end
return {p, r}
