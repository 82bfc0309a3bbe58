-- Several GCRA counters of one window each (all keys share one hash tag), charged together
-- or not at all, each reporting its own verdict so the caller knows which one refused. A copy
-- of gcraCounters in gcra.ts (same integer math: TAT = whole + frac/limit ms); both are tested
-- against one table of cases. A negative cost gives units back and is never refused; a counter
-- back to a full bucket is deleted. Must not read the server clock (the caller's time is
-- ARGV[1]) and must not leave a key without a TTL.
--
-- KEYS[i]    GCRA state of counter i, value "whole:frac"
-- ARGV[1]    now, ms (integer)
-- ARGV[2]    cost (integer; 0 only reads, negative refunds)
-- ARGV[1+2i] limit of counter i, ARGV[2+2i] its period in ms (integers)
-- Returns    { allowed (1|0), then per counter: allowed (1|0), retryAfterMs, remaining }

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
local ok = {}
local retry = {}
local charged = {}
local uncharged = {}
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
        ok[i] = 0
        local wait = allowW - now
        if r > 0 then
            wait = wait + 1
        end
        retry[i] = wait
        charged[i] = 0
    else
        ok[i] = 1
        retry[i] = 0
        local rem = divmod((now - allowW) * limit - r, period)
        charged[i] = math.min(limit, math.max(0, rem))
    end
    local cur = divmod((now - baseW + period) * limit - baseF, period)
    uncharged[i] = math.min(limit, math.max(0, cur))
    newW[i], newF[i] = w, r
end

local out = { allowed }
for i = 1, #KEYS do
    local rem = uncharged[i]
    if allowed == 1 then
        rem = charged[i]
    end
    out[#out + 1] = ok[i]
    out[#out + 1] = retry[i]
    out[#out + 1] = rem
end
if allowed == 1 and cost ~= 0 then
    for i = 1, #KEYS do
        if newW[i] < now or (newW[i] == now and newF[i] == 0) then
            redis.call('DEL', KEYS[i])
        else
            local ttl = newW[i] - now
            if newF[i] > 0 then
                ttl = ttl + 1
            end
            redis.call('SET', KEYS[i], string.format('%.0f:%.0f', newW[i], newF[i]), 'PX', math.max(1, ttl))
        end
    end
end
return out
