-- Concurrency leases of one key: a sorted set of holder ids scored by expiry time (ms).
-- Expired leases are dropped first, so the leases of a dead instance stop counting once
-- their TTL has passed. The set's own TTL always covers its longest lease. Must not read
-- the server clock (the caller's time is ARGV[5]).
--
-- KEYS[1]  the lease set
-- ARGV[1]  'acquire' or 'renew'
-- ARGV[2]  holder id
-- ARGV[3]  max live leases (acquire only)
-- ARGV[4]  lease TTL, ms
-- ARGV[5]  now, ms
-- Returns  { ok (1|0), active }: acquire: ok = acquired (a holder that already has a lease
--          renews it and gets 1); renew: ok = the lease was live and was extended.
--          active = live leases after the call.

local key = KEYS[1]
local op = ARGV[1]
local holder = ARGV[2]
local max = tonumber(ARGV[3])
local ttl = tonumber(ARGV[4])
local now = tonumber(ARGV[5])

redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
local held = redis.call('ZSCORE', key, holder)
local ok = 0
if held then
    redis.call('ZADD', key, now + ttl, holder)
    ok = 1
elseif op == 'acquire' and redis.call('ZCARD', key) < max then
    redis.call('ZADD', key, now + ttl, holder)
    ok = 1
end
local active = redis.call('ZCARD', key)
if active > 0 then
    local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
    redis.call('PEXPIRE', key, math.max(1, tonumber(last[2]) - now))
end
return { ok, active }
