-- Credit a deposit to an existing account. KEYS: 1 profile, 2 balances
-- ARGV: 1 asset, 2 amount (positive integer units). Returns the new available.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return redis.error_reply('UNKNOWN_ACCOUNT')
end
return redis.call('HINCRBY', KEYS[2], 'avail:' .. ARGV[1], ARGV[2])
