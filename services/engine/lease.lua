-- The writer's lease of a pair (DESIGN §5). KEYS: 1 lease hash {holder, token, expires}
-- ARGV: 1 holder id, 2 ttl ms, 3 'acquire', 'renew' or 'release', 4 the token held
-- Returns the fencing token (> 0) on success, 0 otherwise. Every takeover increments
-- the token, and the commit script refuses any other, so a writer that was paused past
-- its lease can never commit after a standby took over. Time is the server's.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local holder = redis.call('HGET', KEYS[1], 'holder')
local token = tonumber(redis.call('HGET', KEYS[1], 'token') or '0')
local expires = tonumber(redis.call('HGET', KEYS[1], 'expires') or '0')
local until_ms = now + tonumber(ARGV[2])
if ARGV[3] == 'release' then
  -- A clean stop hands over at once; the token stays, so fencing still holds.
  if holder == ARGV[1] and tostring(token) == ARGV[4] then
    redis.call('HSET', KEYS[1], 'expires', 0)
    return token
  end
  return 0
end
if ARGV[3] == 'renew' then
  if holder == ARGV[1] and tostring(token) == ARGV[4] and expires > now then
    redis.call('HSET', KEYS[1], 'expires', until_ms)
    return token
  end
  return 0
end
if holder and holder ~= ARGV[1] and expires > now then
  return 0  -- held by a live writer
end
token = token + 1
redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'token', token, 'expires', until_ms)
return token
