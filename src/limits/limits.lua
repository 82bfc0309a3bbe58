-- Every shared-store decision in one script: GCRA takes over several windows of one key
-- (the step of gcra.ts gcra()), counters charged together (gcraCounters), concurrency leases
-- and greylisting (RFC 6647). A call carries a list of operations and answers each in order,
-- so all the work of one SMTP stage (lease renewals, every limit, greylisting) is one round
-- trip and one atomic step. The GCRA arithmetic is the exact integer math of gcra.ts
-- (TAT = whole + frac/limit ms), tested against one table of cases. Must not read the server
-- clock (the caller's time is ARGV[1]) and must not leave a key without a TTL.
--
-- ARGV[1]  now, ms (integer). Then the operations, each taking its keys from KEYS in order:
--   'take', n, cost (>= 0; 0 only reads), gate, then limit and period (ms) of n windows
--       KEYS: the n window states "whole:frac". Either every window admits the cost and all
--       are charged, or nothing is written.  Answer { allowed (1|0), retryAfterMs, remaining }
--   'charge', n, cost (negative refunds, never refused), then limit and period of n counters
--       KEYS: the n counter states. Charged together or not at all; a counter back to a full
--       bucket is deleted.  Answer { allowed, then per counter: allowed, retryAfterMs, remaining }
--   'acquire' | 'renew', holder, max (acquire only), ttl (ms), gate
--       KEYS: the lease set (sorted set of holders scored by expiry). Expired leases go first.
--       A holder that has a lease renews it; acquire also grants one while fewer than max
--       are live.  Answer { ok (1|0), active, granted (1 when the holder had no live lease
--       and got one now, 0 otherwise) }
--   'release', holder
--       KEYS: the lease set. Removes the holder's lease, if any (undoes a grant whose reply
--       came too late).  Answer { removed (1|0) }
--   'greylist', delayMs, retryWindowMs, passTtlMs, autoAllowAfter, provisionalMs, capLimit, capPeriod, allLimit, allPeriod
--       KEYS: the triplet record, the client record, and when capLimit > 0 the GCRA state of
--       the cap on new records of the client's network: a new triplet is recorded only when
--       that cap admits it (charged in the same step), else it is answered 'capped' with the
--       cap's wait and nothing is written. When allLimit > 0 the next key is the GCRA state of
--       the entry's cap on all its new records, charged together with the network's (neither
--       when one refuses); when it alone refuses the answer is 'capped_global', nothing
--       written. With provisionalMs > 0 a new triplet's record is
--       provisional: it counts for provisionalMs only, unless 'grey-keep' keeps it first.
--       Skipped when an earlier operation of the
--       call with gate 1 was refused. A pass is not counted for the client's auto-allowing
--       (the caller credits it with 'grey-client-count' once the recipient proved real).
--       Answer { verdict, retryAfterMs, passedNow (1 on the pass that ends the delay) }
--       ('skipped', 0, 0 when skipped)
--   'grey-client-check', passTtlMs, autoAllowAfter | 'grey-client-count', passTtlMs |
--   'grey-triplet', delayMs, retryWindowMs, passTtlMs, provisionalMs | 'grey-forget', firstSeen
--       One greylisting record each (KEYS: that record), for a Redis Cluster where the
--       triplet, client and cap keys live in different slots; 'grey-client-count' is also the
--       credit of a pass. There the cap is a 'take' of its own after a 'new', and a triplet
--       the cap refused is removed again with 'grey-forget' (only the record written then,
--       'g:<firstSeen>[:<until>]'; answer { removed }).  Answers as greylist_* below.
--   'grey-keep', firstSeen, retryWindowMs
--       KEYS: a triplet record. A provisional record first seen then (or none: it ran out)
--       becomes the waiting record 'g:<firstSeen>', until retryWindow after firstSeen; any
--       other record is left alone.  Answer { kept (1|0) }
-- Returns  the list of answers, one per operation.

local now = tonumber(ARGV[1])

local function divmod(a, b)
    local q = math.floor(a / b)
    local r = a - q * b
    if r < 0 then
        q = q - 1
        r = r + b
    elseif r >= b then
        q = q + 1
        r = r - b
    end
    return q, r
end

-- One GCRA window: the stored TAT (an empty or past one is a full bucket), the new TAT
-- whole:frac after `cost`, whether the cost is refused and the wait, units of cost 1 left
-- after the charge (rem, when admitted) and as things stand (cur).
local function step(key, limit, period, cost)
    local baseW, baseF = now, 0
    local v = redis.call('GET', key)
    if v then
        local w, f = string.match(v, '^(%-?%d+):(%d+)$')
        if w then
            w = tonumber(w)
            if w >= now then
                baseW, baseF = w, tonumber(f)
            end
        end
    end
    local q, r = divmod(baseF + cost * period, limit)
    local w = baseW + q
    -- allowAt = newTat - period: the earliest time this cost fits.
    local allowW = w - period
    local refused = allowW > now or (allowW == now and r > 0)
    local wait, rem = 0, 0
    if refused then
        wait = allowW - now
        if r > 0 then
            wait = wait + 1
        end
    else
        rem = divmod((now - allowW) * limit - r, period)
    end
    local cur = divmod((now - baseW + period) * limit - baseF, period)
    return refused, wait, rem, cur, w, r
end

local function ttlOf(w, f)
    local ttl = w - now
    if f > 0 then
        ttl = ttl + 1
    end
    return math.max(1, ttl)
end

local function take(keys, cost, limits, periods)
    local allowed = 1
    local retry = 0
    local charged = nil
    local uncharged = nil
    local newW, newF = {}, {}
    for i = 1, #keys do
        local refused, wait, rem, cur, w, r = step(keys[i], limits[i], periods[i], cost)
        if refused then
            allowed = 0
            if wait > retry then
                retry = wait
            end
        elseif charged == nil or rem < charged then
            charged = rem
        end
        if uncharged == nil or cur < uncharged then
            uncharged = cur
        end
        newW[i], newF[i] = w, r
    end
    if allowed == 0 then
        return { 0, retry, math.max(0, uncharged) }
    end
    if cost > 0 then
        for i = 1, #keys do
            redis.call('SET', keys[i], string.format('%.0f:%.0f', newW[i], newF[i]), 'PX', ttlOf(newW[i], newF[i]))
        end
    end
    return { 1, 0, math.max(0, charged) }
end

local function charge(keys, cost, limits, periods)
    local allowed = 1
    local ok, retry, charged, uncharged, newW, newF = {}, {}, {}, {}, {}, {}
    for i = 1, #keys do
        local limit = limits[i]
        local refused, wait, rem, cur, w, r = step(keys[i], limit, periods[i], cost)
        if refused then
            allowed = 0
            ok[i], retry[i], charged[i] = 0, wait, 0
        else
            ok[i], retry[i] = 1, 0
            charged[i] = math.min(limit, math.max(0, rem))
        end
        uncharged[i] = math.min(limit, math.max(0, cur))
        newW[i], newF[i] = w, r
    end
    local out = { allowed }
    for i = 1, #keys do
        local rem = uncharged[i]
        if allowed == 1 then
            rem = charged[i]
        end
        out[#out + 1] = ok[i]
        out[#out + 1] = retry[i]
        out[#out + 1] = rem
    end
    if allowed == 1 and cost ~= 0 then
        for i = 1, #keys do
            if newW[i] < now or (newW[i] == now and newF[i] == 0) then
                redis.call('DEL', keys[i])
            else
                redis.call('SET', keys[i], string.format('%.0f:%.0f', newW[i], newF[i]), 'PX', ttlOf(newW[i], newF[i]))
            end
        end
    end
    return out
end

-- The set's own TTL always covers its longest lease.
local function lease(key, op, holder, max, ttl)
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    local held = redis.call('ZSCORE', key, holder)
    local ok = 0
    local granted = 0
    if held then
        redis.call('ZADD', key, now + ttl, holder)
        ok = 1
    elseif op == 'acquire' and redis.call('ZCARD', key) < max then
        redis.call('ZADD', key, now + ttl, holder)
        ok = 1
        granted = 1
    end
    local active = redis.call('ZCARD', key)
    if active > 0 then
        local last = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
        redis.call('PEXPIRE', key, math.max(1, tonumber(last[2]) - now))
    end
    return { ok, active, granted }
end

-- Greylisting decides from the times stored in the values, never from a key's TTL: the TTL
-- only removes records that can no longer matter.
-- Client record "count:until": 1 (and extended by passTtl) when the client is known.
local function greylistClientCheck(key, passTtl, need)
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

-- Adds one pass (from 0 when the record has lapsed); the record lives passTtl from now.
local function greylistClientCount(key, passTtl)
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

-- Triplet record "g:<first seen>", "g:<first seen>:<until>" (provisional: it counts before
-- <until> only) or "p:<pass until>". { verdict, retryAfterMs, passedNow }:
-- 'pass' (live passed record, extended), 'pass' with passedNow 1 (first seen delay to
-- retryWindow ago), 'early' (first seen less than delay ago, unchanged), 'new' (first seen = now),
-- 'capped' (it would be new, but the cap on its network's new records refused: not written),
-- 'capped_global' (the network's cap had room, the entry's cap on all new records did not:
-- not written). Both caps are charged together, and neither when one refuses.
local function greylistTriplet(key, delay, window, passTtl, provisional, capKey, capLimit, capPeriod, allKey, allLimit, allPeriod)
    local v = redis.call('GET', key)
    if v then
        local kind, t, u = string.match(v, '^([gp]):(%-?%d+):?(%-?%d*)$')
        if kind == 'g' and u ~= '' and tonumber(u) <= now then
            kind = nil
        end
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
    local capKeys, capLimits, capPeriods = {}, {}, {}
    if capLimit > 0 then
        capKeys[1], capLimits[1], capPeriods[1] = capKey, capLimit, capPeriod
    end
    if allLimit > 0 then
        local n = #capKeys + 1
        capKeys[n], capLimits[n], capPeriods[n] = allKey, allLimit, allPeriod
    end
    if #capKeys > 0 then
        local capped = take(capKeys, 1, capLimits, capPeriods)
        if capped[1] == 0 then
            if capLimit > 0 then
                local refused, wait = step(capKey, capLimit, capPeriod, 1)
                if refused then
                    return { 'capped', wait, 0 }
                end
            end
            return { 'capped_global', capped[2], 0 }
        end
    end
    if provisional > 0 then
        redis.call('SET', key, string.format('g:%.0f:%.0f', now, now + provisional), 'PX', provisional)
    else
        -- The TTL is one ms past the last time a retry counts, so the record outlives its use.
        redis.call('SET', key, 'g:' .. string.format('%.0f', now), 'PX', window + 1)
    end
    return { 'new', delay, 0 }
end

-- A provisional record first seen at firstSeen (or none) becomes a waiting one; 1 when written.
local function greylistKeep(key, firstSeen, window)
    local waiting = 'g:' .. string.format('%.0f', firstSeen)
    local v = redis.call('GET', key)
    if v and string.sub(v, 1, #waiting + 1) ~= waiting .. ':' then
        return 0
    end
    local ttl = firstSeen + window + 1 - now
    if ttl <= 0 then
        return 0
    end
    redis.call('SET', key, waiting, 'PX', ttl)
    return 1
end

-- { verdict, retryAfterMs, passedNow }. A pass is not counted towards the client's
-- auto-allowing here: the caller credits it ('grey-client-count') once the recipient proved real.
local function greylist(tripletKey, clientKey, delay, window, passTtl, autoAllow, provisional, c)
    if autoAllow > 0 and greylistClientCheck(clientKey, passTtl, autoAllow) == 1 then
        return { 'known-client', 0, 0 }
    end
    return greylistTriplet(tripletKey, delay, window, passTtl, provisional, c.key, c.limit, c.period, c.allKey, c.allLimit, c.allPeriod)
end

local out = {}
local k = 1
local a = 2
local gated = false
local function nextKey()
    local key = KEYS[k]
    k = k + 1
    return key
end
local function nextNumber()
    local n = tonumber(ARGV[a])
    a = a + 1
    return n
end

while a <= #ARGV do
    local op = ARGV[a]
    a = a + 1
    local answer
    if op == 'take' or op == 'charge' then
        local n = nextNumber()
        local cost = nextNumber()
        local gate = 0
        if op == 'take' then
            gate = nextNumber()
        end
        local keys, limits, periods = {}, {}, {}
        for i = 1, n do
            keys[i] = nextKey()
            limits[i] = nextNumber()
            periods[i] = nextNumber()
        end
        if op == 'take' then
            answer = take(keys, cost, limits, periods)
        else
            answer = charge(keys, cost, limits, periods)
        end
        if gate == 1 and answer[1] == 0 then
            gated = true
        end
    elseif op == 'acquire' or op == 'renew' then
        local key = nextKey()
        local holder = ARGV[a]
        a = a + 1
        local max = nextNumber()
        local ttl = nextNumber()
        local gate = nextNumber()
        answer = lease(key, op, holder, max, ttl)
        if gate == 1 and answer[1] == 0 then
            gated = true
        end
    elseif op == 'release' then
        local key = nextKey()
        local holder = ARGV[a]
        a = a + 1
        answer = { redis.call('ZREM', key, holder) }
    elseif op == 'greylist' then
        local tripletKey = nextKey()
        local clientKey = nextKey()
        local delay = nextNumber()
        local window = nextNumber()
        local passTtl = nextNumber()
        local autoAllow = nextNumber()
        local provisional = nextNumber()
        local capLimit = nextNumber()
        local capPeriod = nextNumber()
        local allLimit = nextNumber()
        local allPeriod = nextNumber()
        local capKey, allKey = nil, nil
        if capLimit > 0 then
            capKey = nextKey()
        end
        if allLimit > 0 then
            allKey = nextKey()
        end
        if gated then
            answer = { 'skipped', 0, 0 }
        else
            answer = greylist(
                tripletKey,
                clientKey,
                delay,
                window,
                passTtl,
                autoAllow,
                provisional,
                { key = capKey, limit = capLimit, period = capPeriod, allKey = allKey, allLimit = allLimit, allPeriod = allPeriod }
            )
        end
    elseif op == 'grey-client-check' then
        local key = nextKey()
        local passTtl = nextNumber()
        local need = nextNumber()
        answer = { greylistClientCheck(key, passTtl, need) }
    elseif op == 'grey-client-count' then
        local key = nextKey()
        answer = { greylistClientCount(key, nextNumber()) }
    elseif op == 'grey-triplet' then
        local key = nextKey()
        local delay = nextNumber()
        local window = nextNumber()
        local passTtl = nextNumber()
        local provisional = nextNumber()
        answer = greylistTriplet(key, delay, window, passTtl, provisional, nil, 0, 0, nil, 0, 0)
    elseif op == 'grey-forget' then
        local key = nextKey()
        local written = 'g:' .. string.format('%.0f', nextNumber())
        local v = redis.call('GET', key)
        local removed = 0
        if v == written or (v and string.sub(v, 1, #written + 1) == written .. ':') then
            removed = redis.call('DEL', key)
        end
        answer = { removed }
    elseif op == 'grey-keep' then
        local key = nextKey()
        local firstSeen = nextNumber()
        answer = { greylistKeep(key, firstSeen, nextNumber()) }
    else
        return redis.error_reply('unknown operation ' .. tostring(op))
    end
    out[#out + 1] = answer
end
return out
