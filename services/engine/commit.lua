-- Commit one engine batch atomically on the pair's slot (DESIGN §5).
-- KEYS: 1 state, 2 events, 3 bids, 4 asks, 5 inbox, 6 trades, 7 md channel, 8 lease,
--       9.. candles of each interval (sorted sets scored by bar start)
-- ARGV: 1 expected event seq before the batch (fencing: if another writer moved the
--       pair on, nothing is written), 2 the batch's first input id, 3 events blob ('' = none),
--       4 md blob ('' = none), 5 trades kept, 6 bars kept per interval, 7 the writer's
--       fencing token (must be the lease's, once the pair has a lease),
--       then: n state fields, (field, value)...;
--       n bid levels, (price, lots)...; n ask levels, (price, lots)...;
--       n trades, msgpack TradeTicks (oldest first)...; n bars, (key index, start, wire bar)...;
--       then the traced orders of the batch for settlement's spans ('' = none; optional)
-- The state fields include event_seq (the seq of the batch's last event) and
-- last_input_id (the batch's last input): the engine's place in its input stream.
local state, events, bids, asks, inbox, trades, md = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local token = redis.call('HGET', KEYS[8], 'token')
if token and token ~= ARGV[7] then
  return redis.error_reply('FENCED lease token is ' .. token .. ', writer has ' .. ARGV[7])
end
local current = redis.call('HGET', state, 'event_seq') or '0'
if current ~= ARGV[1] then
  return redis.error_reply('STALE_WRITER event_seq is ' .. current .. ', expected ' .. ARGV[1])
end
-- Inputs commit in stream order, none skipped: the batch starts right after the last one.
local committed = redis.call('HGET', state, 'last_input_id')
if #redis.call('XRANGE', inbox, committed and ('(' .. committed) or '-', '(' .. ARGV[2], 'COUNT', 1) > 0 then
  return redis.error_reply('GAP inputs after ' .. (committed or 'the start') .. ' come before ' .. ARGV[2])
end
-- unpack() is bounded by Lua's stack, so variadic calls go in chunks.
local function in_chunks(first, last, call)
  for s = first, last, 1000 do call(s, math.min(s + 999, last)) end
end
local i = 8
local n = tonumber(ARGV[i]); i = i + 1
local state_first, state_last = i, i + 2 * n - 1
i = i + 2 * n
for _, book in ipairs({bids, asks}) do
  n = tonumber(ARGV[i]); i = i + 1
  for j = i, i + 2 * n - 1, 2 do
    if ARGV[j + 1] == '0' then
      redis.call('HDEL', book, ARGV[j])
    else
      redis.call('HSET', book, ARGV[j], ARGV[j + 1])
    end
  end
  i = i + 2 * n
end
n = tonumber(ARGV[i]); i = i + 1
if n > 0 then
  in_chunks(i, i + n - 1, function(a, b) redis.call('LPUSH', trades, unpack(ARGV, a, b)) end)
  redis.call('LTRIM', trades, 0, tonumber(ARGV[5]) - 1)
end
i = i + n
n = tonumber(ARGV[i]); i = i + 1
for j = i, i + 3 * n - 1, 3 do
  -- A bar is replaced whole: one member per start time.
  local key = KEYS[tonumber(ARGV[j])]
  redis.call('ZREMRANGEBYSCORE', key, ARGV[j + 1], ARGV[j + 1])
  redis.call('ZADD', key, ARGV[j + 1], ARGV[j + 2])
  redis.call('ZREMRANGEBYRANK', key, 0, -tonumber(ARGV[6]) - 1)
end
local traces = ARGV[i + 3 * n]
if ARGV[3] ~= '' then
  if traces and traces ~= '' then
    redis.call('XADD', events, '*', 'seq', ARGV[state_first + 1], 'e', ARGV[3], 'tp', traces)
  else
    redis.call('XADD', events, '*', 'seq', ARGV[state_first + 1], 'e', ARGV[3])
  end
end
redis.call('HSET', state, unpack(ARGV, state_first, state_last))
if ARGV[4] ~= '' then
  redis.call('SPUBLISH', md, ARGV[4])
end
return 1
