-- Store an engine snapshot, fenced like a commit. KEYS: 1 snapshot, 2 lease
-- ARGV: 1 the writer's fencing token, 2 the snapshot blob
local token = redis.call('HGET', KEYS[2], 'token')
if token and token ~= ARGV[1] then
  return redis.error_reply('FENCED lease token is ' .. token)
end
redis.call('SET', KEYS[1], ARGV[2])
return 1
