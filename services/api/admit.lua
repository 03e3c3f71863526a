-- Admit one signed request of an API key: its rate limit, then its signature's single use.
-- KEYS: 1 the key's token bucket (hash), 2 the signature's replay guard
-- ARGV: 1 tokens per second, 2 burst, 3 how long a signature stays used (ms)
-- Returns 0 (admitted), -1 (signature already used) or the ms to wait (rate limited).
-- Nothing is recorded for a refused request.
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens, at = tonumber(state[1]) or burst, tonumber(state[2]) or now_ms
tokens = math.min(burst, tokens + math.max(0, now_ms - at) * rate / 1000)
if tokens < 1 then
  return math.ceil((1 - tokens) * 1000 / rate)
end
if redis.call('SET', KEYS[2], 1, 'NX', 'PX', ARGV[3]) == false then
  return -1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens - 1), 'at', now_ms)
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return 0
