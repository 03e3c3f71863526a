-- Stage R1: hold an order's funds on the account's slot and record the order.
-- KEYS: 1 balances, 2 order record, 3 open order ids, 4 client_order_id -> order_id,
--       5 unconfirmed orders (zset: until the engine has seen it, a reconciler watches it),
--       6 update seq, 7 update channel
-- ARGV: 1 hold asset, 2 hold amount (integer units), 3 order id, 4 client order id,
--       5 creation ms, 6.. order record fields as name, value pairs
-- Returns {1, order_id} when held, {0, first_order_id} for a repeated client order id,
-- {-1, 'INSUFFICIENT_FUNDS'} when the account cannot pay (nothing changed).
if ARGV[4] ~= '' then
  local first = redis.call('HGET', KEYS[4], ARGV[4])
  if first then return {0, first} end
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {1, ARGV[3]}  -- this very hold, sent again after a lost reply: held once
end
local available = redis.call('HGET', KEYS[1], 'avail:' .. ARGV[1]) or '0'
if tonumber(available) < tonumber(ARGV[2]) then
  return {-1, 'INSUFFICIENT_FUNDS'}
end
redis.call('HINCRBY', KEYS[1], 'avail:' .. ARGV[1], '-' .. ARGV[2])
redis.call('HINCRBY', KEYS[1], 'held:' .. ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], unpack(ARGV, 6))
redis.call('SADD', KEYS[3], ARGV[3])
redis.call('ZADD', KEYS[5], ARGV[5], ARGV[3])
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[4], ARGV[4], ARGV[3])
end
publish_update(KEYS[6], KEYS[7], KEYS[1], {KEYS[2]}, {}, {[ARGV[1]] = true})
return {1, ARGV[3]}
