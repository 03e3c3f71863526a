-- Apply one engine entry's legs to ONE account, exactly once (DESIGN §2, stage R2).
-- KEYS: 1 balances, 2 applied (pair -> last settled event seq), 3 open order ids,
--       4 fills (newest first), 5 closed order ids (newest first), 6 unconfirmed orders,
--       7 update seq, 8 update channel, 9.. the order records the legs name (leg.o is an
--       index into KEYS)
-- ARGV: 1 pair, 2 event seq of the entry's last event, 3 legs (JSON, each with its
--       event's seq), 4 history kept
-- Amounts stay strings end to end: HINCRBY is exact on 64-bit integers, Lua numbers
-- are not. Leg kinds: fill (side, base, quote, lots, fee, pay + rebate for a buy or
-- gain for a sell, fill = the wire fill), cancel (also expiries), reject, amend
-- (price, qty), seen (the engine accepted it), fee (asset, amount: the fee account's
-- share). done = the order ended. Any leg proves the engine has the order.
local last = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if last >= tonumber(ARGV[2]) then
  return 0  -- a replay after a crash: already applied
end
local balances, keep = KEYS[1], tonumber(ARGV[4])
-- What changed, for the account's update stream.
local changed_orders, seen_order, fills, assets = {}, {}, {}, {}
for _, leg in ipairs(cjson.decode(ARGV[3])) do
  if leg.seq <= last then
    -- Applied already, in an entry of an engine commit that a failover lost and the
    -- engine made again with other batch boundaries: each leg counts once.
  elseif leg.kind == 'fee' then
    redis.call('HINCRBY', balances, 'avail:' .. leg.asset, leg.amount)
    assets[leg.asset] = true
  else
    local order = KEYS[leg.o]
    redis.call('ZREM', KEYS[6], leg.id)
    if redis.call('EXISTS', order) == 1 and leg.kind ~= 'seen' then
      if not seen_order[order] then
        seen_order[order] = true
        table.insert(changed_orders, order)
        assets[redis.call('HGET', order, 'hold_asset')] = true
      end
      if leg.kind == 'fill' then
        local base_asset = redis.call('HGET', order, 'base')
        local quote_asset = redis.call('HGET', order, 'quote')
        if leg.side == 'buy' then
          redis.call('HINCRBY', balances, 'held:' .. quote_asset, '-' .. leg.pay)
          redis.call('HINCRBY', balances, 'avail:' .. base_asset, leg.base)
          redis.call('HINCRBY', order, 'hold_left', '-' .. leg.pay)
          if leg.rebate ~= '0' then
            redis.call('HINCRBY', balances, 'avail:' .. quote_asset, leg.rebate)
          end
        else
          redis.call('HINCRBY', balances, 'held:' .. base_asset, '-' .. leg.base)
          redis.call('HINCRBY', balances, 'avail:' .. quote_asset, leg.gain)
          redis.call('HINCRBY', order, 'hold_left', '-' .. leg.base)
        end
        redis.call('HINCRBY', order, 'filled', leg.lots)
        redis.call('HINCRBY', order, 'quote_filled', leg.quote)
        redis.call('HINCRBY', order, 'fee', leg.fee)
        redis.call('HSET', order, 'status', leg.done and 'filled' or 'partially_filled')
        redis.call('LPUSH', KEYS[4], leg.fill)
        redis.call('LTRIM', KEYS[4], 0, keep - 1)
        table.insert(fills, cjson.decode(leg.fill))
        assets[base_asset], assets[quote_asset] = true, true
      elseif leg.kind == 'cancel' then
        redis.call('HSET', order, 'status', 'cancelled', 'reason', leg.reason)
      elseif leg.kind == 'amend' then
        redis.call('HSET', order, 'price', leg.price, 'qty', leg.qty)
      else
        redis.call('HSET', order, 'status', 'rejected', 'reason', leg.reason)
      end
      redis.call('HSET', order, 'updated_ts', leg.ts)
      if leg.done then
        -- The order is over: whatever it still holds goes back to available.
        local left = redis.call('HGET', order, 'hold_left')
        if left ~= '0' then
          local asset = redis.call('HGET', order, 'hold_asset')
          redis.call('HINCRBY', balances, 'held:' .. asset, '-' .. left)
          redis.call('HINCRBY', balances, 'avail:' .. asset, left)
          redis.call('HSET', order, 'hold_left', '0')
        end
        redis.call('SREM', KEYS[3], leg.id)
        redis.call('LPUSH', KEYS[5], leg.id)
        redis.call('LTRIM', KEYS[5], 0, keep - 1)
      end
    end
  end
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
if #changed_orders > 0 or next(assets) then
  publish_update(KEYS[7], KEYS[8], balances, changed_orders, fills, assets)
end
return 1
