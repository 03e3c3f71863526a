-- Before an amend: make the order's hold cover what the amended order could spend.
-- KEYS: 1 balances, 2 order record, 3 update seq, 4 update channel
-- ARGV: 1 hold asset, 2 new total qty (lots), 3 hold units per unfilled lot at the new price
-- Returns OK, or a refusal code with nothing changed.
local status = redis.call('HGET', KEYS[2], 'status')
if not status or status == 'filled' or status == 'cancelled' or status == 'rejected' then
  return 'ORDER_NOT_OPEN'
end
local unfilled = tonumber(ARGV[2]) - tonumber(redis.call('HGET', KEYS[2], 'filled'))
if unfilled <= 0 then
  return 'QTY_NOT_ABOVE_FILLED'
end
-- Fills not yet settled only lower the need (each costs at most its old price), so a
-- hold sized from the settled state is enough.
local extra = unfilled * tonumber(ARGV[3]) - tonumber(redis.call('HGET', KEYS[2], 'hold_left'))
if extra > 0 then
  local available = tonumber(redis.call('HGET', KEYS[1], 'avail:' .. ARGV[1]) or '0')
  if available < extra then
    return 'INSUFFICIENT_FUNDS'
  end
  extra = string.format('%d', extra)
  redis.call('HINCRBY', KEYS[1], 'avail:' .. ARGV[1], '-' .. extra)
  redis.call('HINCRBY', KEYS[1], 'held:' .. ARGV[1], extra)
  redis.call('HINCRBY', KEYS[2], 'hold_left', extra)
  publish_update(KEYS[3], KEYS[4], KEYS[1], {}, {}, {[ARGV[1]] = true})
end
return 'OK'
