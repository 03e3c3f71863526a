-- Prepended to every script that changes an account: publishes the change, in the same
-- atomic step, on the account's sharded channel (DESIGN §3), numbered by a per-account
-- seq so a subscriber can tell a lost message:
--   {"seq": N, "orders": [order record...], "fills": [wire fill...],
--    "balances": {ASSET: [available units, held units]}}
local function publish_update(useq_key, channel, balances_key, order_keys, fills, assets)
  local update = {seq = redis.call('INCR', useq_key)}
  if #order_keys > 0 then
    update.orders = {}
    for _, key in ipairs(order_keys) do
      local flat = redis.call('HGETALL', key)
      local record = {}
      for j = 1, #flat, 2 do record[flat[j]] = flat[j + 1] end
      table.insert(update.orders, record)
    end
  end
  if #fills > 0 then update.fills = fills end
  local balances, any = {}, false
  for asset, _ in pairs(assets) do
    local v = redis.call('HMGET', balances_key, 'avail:' .. asset, 'held:' .. asset)
    balances[asset] = {v[1] or '0', v[2] or '0'}
    any = true
  end
  if any then update.balances = balances end
  redis.call('SPUBLISH', channel, cjson.encode(update))
end
