-- Credit a deposit to an existing account. KEYS: 1 profile, 2 balances, 3 update seq,
-- 4 update channel
-- ARGV: 1 asset, 2 amount (positive integer units). Returns the new available.
-- The profile keeps what was ever deposited, so an audit can check that the sum over
-- accounts of available + held equals the sum of deposits, asset by asset.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('UNKNOWN_ACCOUNT')
end
-- Balances stay below 2^53 units, where the scripts' comparisons are exact.
local held = tonumber(redis.call('HGET', KEYS[2], 'held:' .. ARGV[1]) or '0')
local avail = tonumber(redis.call('HGET', KEYS[2], 'avail:' .. ARGV[1]) or '0')
if avail + held + tonumber(ARGV[2]) >= 9007199254740992 then
  return redis.error_reply('BALANCE_TOO_LARGE')
end
redis.call('HINCRBY', KEYS[1], 'deposited:' .. ARGV[1], ARGV[2])
local available = redis.call('HINCRBY', KEYS[2], 'avail:' .. ARGV[1], ARGV[2])
publish_update(KEYS[3], KEYS[4], KEYS[2], {}, {}, {[ARGV[1]] = true})
return available
