-- Debit a withdrawal from available only (held funds back open orders and are never
-- taken), once per reference.
-- KEYS: 1 profile, 2 balances, 3 update seq, 4 update channel, 5 transfers by reference
-- ARGV: 1 asset, 2 amount (positive integer units), 3 reference.
-- Returns {available, applied} as deposit.lua does. The profile keeps what was ever
-- withdrawn, for the audit sum(available + held) == deposits - withdrawals.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('UNKNOWN_ACCOUNT')
end
local transfer = 'withdrawal ' .. ARGV[1] .. ' ' .. ARGV[2]
local seen = redis.call('HGET', KEYS[5], ARGV[3])
local available = redis.call('HGET', KEYS[2], 'avail:' .. ARGV[1]) or '0'
if seen then
  if seen ~= transfer then return redis.error_reply('REFERENCE_REUSED') end
  return {tonumber(available), 0}
end
if tonumber(available) < tonumber(ARGV[2]) then
  return redis.error_reply('INSUFFICIENT_FUNDS')
end
redis.call('HSET', KEYS[5], ARGV[3], transfer)
redis.call('HINCRBY', KEYS[1], 'withdrawn:' .. ARGV[1], ARGV[2])
available = redis.call('HINCRBY', KEYS[2], 'avail:' .. ARGV[1], '-' .. ARGV[2])
publish_update(KEYS[3], KEYS[4], KEYS[2], {}, {}, {[ARGV[1]] = true})
return {available, 1}
