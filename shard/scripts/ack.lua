-- ack: forget details that the broker confirmed: acknowledge them in the
-- consumer group and delete them from the stream, together.
--
-- KEYS[1] detail stream
-- ARGV[1] group
-- ARGV[2..] entry ids
--
-- Returns the number of entries deleted.
local ids = {}
for i = 2, #ARGV do ids[#ids + 1] = ARGV[i] end
redis.call('XACK', KEYS[1], ARGV[1], unpack(ids))
return redis.call('XDEL', KEYS[1], unpack(ids))
