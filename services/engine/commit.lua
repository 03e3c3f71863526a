-- Commit one engine batch atomically on the pair's slot (DESIGN §5).
-- KEYS: 1 state, 2 events, 3 bids, 4 asks, 5 inbox, 6 trades, 7 md channel
-- ARGV: 1 expected previous event seq (fencing: another writer moved the pair on),
--       2 consumer group, 3 last input id, 4 event seq after the batch, 5 md seq,
--       6 trade id, 7 events blob ('' = none), 8 md blob ('' = none), 9 trade history cap,
--       then: n ids, ids..., n bid levels, (price, lots)..., n ask levels, (price, lots)...,
--       n trades, wire trades (oldest first)...
local state, events, bids, asks, inbox, trades, md = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local current = redis.call('HGET', state, 'event_seq') or '0'
if current ~= ARGV[1] then
  return redis.error_reply('STALE_WRITER event_seq is ' .. current .. ', expected ' .. ARGV[1])
end
-- unpack() is bounded by Lua's stack, so variadic calls go in chunks.
local function in_chunks(first, last, call)
  for s = first, last, 1000 do call(s, math.min(s + 999, last)) end
end
local i = 10
local n = tonumber(ARGV[i]); i = i + 1
in_chunks(i, i + n - 1, function(a, b) redis.call('XACK', inbox, ARGV[2], unpack(ARGV, a, b)) end)
i = i + n
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
  redis.call('LTRIM', trades, 0, tonumber(ARGV[9]) - 1)
end
if ARGV[7] ~= '' then
  redis.call('XADD', events, '*', 'seq', ARGV[4], 'e', ARGV[7])
end
redis.call('HSET', state, 'event_seq', ARGV[4], 'md_seq', ARGV[5], 'trade_id', ARGV[6],
  'last_input_id', ARGV[3])
if ARGV[8] ~= '' then
  redis.call('SPUBLISH', md, ARGV[8])
end
return 1
