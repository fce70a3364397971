-- Take a slot in a sliding-window failure budget, or refuse (and record the refusal's audit event).
--
-- KEYS[1]  the budget: a sorted set of counted entries, all in one hash slot with KEYS[2]
-- KEYS[2]  the audit stream of the same shard (only read when an event is given)
-- KEYS[3]  optional: the clients that signed in to this number recently (a sorted set, same slot)
-- ARGV     now_ms, window_ms, limit, hold_ms, member, mode, [stream_field, event, stream_share,
--          [client, known_since_ms]]
--          mode "r": add a reservation that lapses at now + hold_ms unless settled;
--          mode "h": add a failure now (every attempt counts, e.g. registrations).
--
-- Entries: a failure is scored by the time it happened (> 0); a reservation by minus the time it
-- lapses (< 0), so both are pruned with one range each and members stay short random ids.
-- Returns {1, remaining, member, reset_seconds} when allowed, {0, retry_after_seconds, appended}
-- when refused: appended is 0 when the stream already holds stream_share entries (its part of
-- AUDIT_MAX_BACKLOG), and the caller then stores the event in Postgres itself.
-- A refusal writes nothing to the budget, so refused attempts never extend the window. A client in
-- KEYS[3] scored at or after known_since_ms is exempt from the limit (its own budget still applies):
-- strangers' failures cannot lock the owner out. Its attempts still take and settle reservations.
local key = KEYS[1]
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local hold = tonumber(ARGV[4])

redis.call('ZREMRANGEBYSCORE', key, 0, now - window)
redis.call('ZREMRANGEBYSCORE', key, -now, '(0')
local count = redis.call('ZCARD', key)

local exempt = false
if count >= limit and ARGV[10] then
  local since = redis.call('ZSCORE', KEYS[3], ARGV[10])
  exempt = since ~= false and tonumber(since) >= tonumber(ARGV[11])
end

if count >= limit and not exempt then
  -- The slot frees when enough failures leave the window. A reservation is expected to settle as a
  -- failure (the attack case), which frees its slot a window after it settles, so no earlier than
  -- now + window: it frees after every counted failure, never later than window + hold.
  local need = count - limit + 1
  local failures = redis.call('ZCOUNT', key, '(0', '+inf')
  local free_at = now + window
  if failures >= need then
    local oldest = redis.call('ZRANGEBYSCORE', key, '(0', '+inf', 'WITHSCORES', 'LIMIT', need - 1, 1)
    free_at = tonumber(oldest[2]) + window
  end
  local retry_after = math.max(1, math.ceil((free_at - now) / 1000))
  if ARGV[8] and ARGV[8] ~= '' and redis.call('XLEN', KEYS[2]) < tonumber(ARGV[9]) then
    redis.call('XADD', KEYS[2], '*', ARGV[7], ARGV[8])
    return {0, retry_after, 1}
  end
  return {0, retry_after, 0}
end

local member = ARGV[5]
local score = -(now + hold)
if ARGV[6] == 'h' then
  score = now
end
-- Members are random; on the (astronomically rare) clash, lengthen rather than overwrite.
while redis.call('ZADD', key, 'NX', score, member) == 0 do
  member = member .. '.'
end
redis.call('PEXPIRE', key, window + hold)
-- Seconds until the oldest counted failure leaves the window (0: none), for the RateLimit header.
local reset = 0
local oldest = redis.call('ZRANGEBYSCORE', key, '(0', '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
if oldest[2] then
  reset = math.max(1, math.ceil((tonumber(oldest[2]) + window - now) / 1000))
end
return {1, math.max(0, limit - count - 1), member, reset}
