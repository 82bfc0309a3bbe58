-- Greylisting (RFC 6647) records, one key per call so that triplet and client keys may live
-- in different Cluster slots. Every decision reads the times stored in the value, never the
-- key's TTL: the TTL only removes records that can no longer matter. Must not read the
-- server clock (the caller's time is ARGV[2]) and must not leave a key without a TTL.
--
-- ARGV[1]  operation:
--   'client-check'  KEYS[1] = client record "count:until"
--                   ARGV[3] = passTtlMs, ARGV[4] = autoAllowAfter (> 0)
--                   Returns 1 (and extends the record by passTtlMs) when the client is
--                   known: count >= autoAllowAfter and until > now; else 0.
--   'client-count'  KEYS[1] = client record; ARGV[3] = passTtlMs
--                   Adds one pass (starting from 0 when the record has lapsed); the record
--                   lives passTtlMs from now. Returns the new count.
--   'triplet'       KEYS[1] = triplet record, "g:<first seen>" or "p:<pass until>"
--                   ARGV[3] = delayMs, ARGV[4] = retryWindowMs, ARGV[5] = passTtlMs
--                   Returns { verdict, retryAfterMs, passedNow (1|0) }:
--                   'pass'  passed record still live: extended by passTtlMs
--                   'pass'  first seen delayMs to retryWindowMs ago: now passed, passedNow 1
--                   'early' first seen less than delayMs ago (record unchanged)
--                   'new'   no live record: first seen = now, kept retryWindowMs
-- ARGV[2]  now, ms

local key = KEYS[1]
local op = ARGV[1]
local now = tonumber(ARGV[2])

if op == 'client-check' then
    local passTtl = tonumber(ARGV[3])
    local need = tonumber(ARGV[4])
    local v = redis.call('GET', key)
    if not v then
        return 0
    end
    local n, untilMs = string.match(v, '^(%d+):(%-?%d+)$')
    if not n or tonumber(untilMs) <= now or tonumber(n) < need then
        return 0
    end
    redis.call('SET', key, n .. ':' .. string.format('%.0f', now + passTtl), 'PX', passTtl)
    return 1
end

if op == 'client-count' then
    local passTtl = tonumber(ARGV[3])
    local count = 1
    local v = redis.call('GET', key)
    if v then
        local n, untilMs = string.match(v, '^(%d+):(%-?%d+)$')
        if n and tonumber(untilMs) > now then
            count = tonumber(n) + 1
        end
    end
    redis.call('SET', key, string.format('%.0f:%.0f', count, now + passTtl), 'PX', passTtl)
    return count
end

if op == 'triplet' then
    local delay = tonumber(ARGV[3])
    local window = tonumber(ARGV[4])
    local passTtl = tonumber(ARGV[5])
    local v = redis.call('GET', key)
    if v then
        local kind, t = string.match(v, '^([gp]):(%-?%d+)$')
        if kind == 'p' and tonumber(t) > now then
            redis.call('SET', key, 'p:' .. string.format('%.0f', now + passTtl), 'PX', passTtl)
            return { 'pass', 0, 0 }
        end
        if kind == 'g' then
            local elapsed = now - tonumber(t)
            if elapsed < delay then
                return { 'early', delay - elapsed, 0 }
            end
            if elapsed <= window then
                redis.call('SET', key, 'p:' .. string.format('%.0f', now + passTtl), 'PX', passTtl)
                return { 'pass', 0, 1 }
            end
        end
    end
    -- The TTL is one ms past the last time a retry counts, so the record outlives its use.
    redis.call('SET', key, 'g:' .. string.format('%.0f', now), 'PX', window + 1)
    return { 'new', delay, 0 }
end

return redis.error_reply('unknown operation ' .. tostring(op))
