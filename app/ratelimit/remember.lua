-- Remember a client that signed in to a phone number (its password-lock exemption, see reserve.lua).
--
-- KEYS[1]  the number's known clients: a sorted set of client keys scored by their last sign-in
-- ARGV     now_ms, keep_ms, max_clients, client
-- Clients older than keep_ms are dropped, and only the max_clients most recent are kept, so a
-- number's set stays small whatever signs in to it.
local key = KEYS[1]
local now = tonumber(ARGV[1])
local keep = tonumber(ARGV[2])
redis.call('ZADD', key, now, ARGV[4])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - keep)
redis.call('ZREMRANGEBYRANK', key, 0, -(tonumber(ARGV[3]) + 1))
redis.call('PEXPIRE', key, keep)
return 1
