-- GCRA over several windows of one limit key, atomically: either every window admits the
-- cost and all are charged, or nothing is written. A copy of gcra.ts (same integer math:
-- TAT = whole + frac/limit ms); both are tested against one table of cases. Must not read
-- the server clock (the caller's time is ARGV[1]) and must not leave a key without a TTL.
--
-- KEYS[i]   GCRA state of window i, value "whole:frac"; all keys share one hash tag
-- ARGV[1]   now, ms (integer)
-- ARGV[2]   cost (integer >= 0; 0 only reads)
-- ARGV[1+2i] limit of window i, ARGV[2+2i] period of window i in ms (integers)
-- Returns   { allowed (1|0), retryAfterMs, remaining }

local now = tonumber(ARGV[1])
local cost = tonumber(ARGV[2])

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

local allowed = 1
local retry = 0
local charged = nil
local uncharged = nil
local newW = {}
local newF = {}

for i = 1, #KEYS do
    local limit = tonumber(ARGV[1 + 2 * i])
    local period = tonumber(ARGV[2 + 2 * i])
    local baseW, baseF = now, 0
    local v = redis.call('GET', KEYS[i])
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
    local allowW = w - period
    if allowW > now or (allowW == now and r > 0) then
        allowed = 0
        local wait = allowW - now
        if r > 0 then
            wait = wait + 1
        end
        if wait > retry then
            retry = wait
        end
    else
        local rem = divmod((now - allowW) * limit - r, period)
        if charged == nil or rem < charged then
            charged = rem
        end
    end
    local cur = divmod((now - baseW + period) * limit - baseF, period)
    if uncharged == nil or cur < uncharged then
        uncharged = cur
    end
    newW[i], newF[i] = w, r
end

if allowed == 0 then
    return { 0, retry, math.max(0, uncharged) }
end
if cost > 0 then
    for i = 1, #KEYS do
        local ttl = newW[i] - now
        if newF[i] > 0 then
            ttl = ttl + 1
        end
        redis.call('SET', KEYS[i], string.format('%.0f:%.0f', newW[i], newF[i]), 'PX', math.max(1, ttl))
    end
end
return { 1, 0, math.max(0, charged) }
