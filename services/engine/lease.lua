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
  -- Held by a live writer: this one waits, and says so (the ops page lists standbys).
  redis.call('HSET', KEYS[1], 'standby:' .. ARGV[1], until_ms)
  return 0
end
token = token + 1
redis.call('HSET', KEYS[1], 'holder', ARGV[1], 'token', token, 'expires', until_ms)
-- The new holder is no standby; nor is any whose report has run out.
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  if string.sub(fields[i], 1, 8) == 'standby:' and
      (fields[i] == 'standby:' .. ARGV[1] or tonumber(fields[i + 1]) <= now) then
    redis.call('HDEL', KEYS[1], fields[i])
  end
end
return token
