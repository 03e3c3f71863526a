-- Credit a deposit to an existing account, once per reference.
-- KEYS: 1 profile, 2 balances, 3 update seq, 4 update channel, 5 transfers by reference
-- ARGV: 1 asset, 2 amount (positive integer units), 3 reference.
-- Returns {available, applied}: applied 0 when the reference was already applied (nothing
-- changes); REFERENCE_REUSED if it was, for another transfer.
-- The profile keeps what was ever deposited, so an audit can check that the sum over
-- accounts of available + held equals the sum of deposits, asset by asset.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('UNKNOWN_ACCOUNT')
end
local transfer = 'deposit ' .. ARGV[1] .. ' ' .. ARGV[2]
local seen = redis.call('HGET', KEYS[5], ARGV[3])
if seen then
  if seen ~= transfer then return redis.error_reply('REFERENCE_REUSED') end
  return {tonumber(redis.call('HGET', KEYS[2], 'avail:' .. ARGV[1]) or '0'), 0}
end
-- Balances stay below 2^53 units, where the scripts' comparisons are exact.
local held = tonumber(redis.call('HGET', KEYS[2], 'held:' .. ARGV[1]) or '0')
local avail = tonumber(redis.call('HGET', KEYS[2], 'avail:' .. ARGV[1]) or '0')
if avail + held + tonumber(ARGV[2]) >= 9007199254740992 then
  return redis.error_reply('BALANCE_TOO_LARGE')
end
redis.call('HSET', KEYS[5], ARGV[3], transfer)
redis.call('HINCRBY', KEYS[1], 'deposited:' .. ARGV[1], ARGV[2])
local available = redis.call('HINCRBY', KEYS[2], 'avail:' .. ARGV[1], ARGV[2])
publish_update(KEYS[3], KEYS[4], KEYS[2], {}, {}, {[ARGV[1]] = true})
return {available, 1}
