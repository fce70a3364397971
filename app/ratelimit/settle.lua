-- Settle a reservation: drop it, or turn it into a failure; optionally record the audit event.
--
-- KEYS[1]          the budget holding the reservation
-- KEYS[2..1+n]     budgets whose failures a success clears (the phone's PIN lock), same hash slot
-- KEYS[#KEYS]      the audit stream of the same shard, when an event is given
-- ARGV             now_ms, window_ms, hold_ms, member, outcome, n, [stream_field, event, stream_share]
--                  outcome "s" success, "f" failure, "r" release (refused or invalid elsewhere)
--
-- A failure is stamped now (settle time) under the reservation's member: ZADD replaces the
-- reservation's score, or records the failure anyway when the reservation already lapsed; a
-- verified wrong guess always counts.
-- Returns 1, or 0 when an event was given and its stream already holds stream_share entries (its
-- part of AUDIT_MAX_BACKLOG): nothing is appended and the caller stores the event in Postgres.
local key = KEYS[1]
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local hold = tonumber(ARGV[3])
local member = ARGV[4]
local outcome = ARGV[5]

if outcome == 'f' then
  redis.call('ZADD', key, now, member)
  redis.call('PEXPIRE', key, window + hold)
else
  redis.call('ZREM', key, member)
  if outcome == 's' then
    for i = 2, 1 + tonumber(ARGV[6]) do
      -- Failures only: other requests' reservations stay in flight.
      redis.call('ZREMRANGEBYSCORE', KEYS[i], '(0', '+inf')
    end
  end
end
if ARGV[8] then
  if redis.call('XLEN', KEYS[#KEYS]) >= tonumber(ARGV[9]) then
    return 0
  end
  redis.call('XADD', KEYS[#KEYS], '*', ARGV[7], ARGV[8])
end
return 1
