-- Debit a withdrawal from available only (held funds back open orders and are never
-- taken). KEYS: 1 profile, 2 balances, 3 update seq, 4 update channel.
-- ARGV: 1 asset, 2 amount (positive integer units).
-- Returns the new available. The profile keeps what was ever withdrawn, for the audit
-- sum(available + held) == deposits - withdrawals.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('UNKNOWN_ACCOUNT')
end
local available = redis.call('HGET', KEYS[2], 'avail:' .. ARGV[1]) or '0'
if tonumber(available) < tonumber(ARGV[2]) then
  return redis.error_reply('INSUFFICIENT_FUNDS')
end
redis.call('HINCRBY', KEYS[1], 'withdrawn:' .. ARGV[1], ARGV[2])
local available = redis.call('HINCRBY', KEYS[2], 'avail:' .. ARGV[1], '-' .. ARGV[2])
publish_update(KEYS[3], KEYS[4], KEYS[2], {}, {}, {[ARGV[1]] = true})
return available
