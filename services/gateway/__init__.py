"""The WebSocket gateway: public market data (book, trades, candles, ticker) and, after
`login`, each account's private updates (orders, fills, balances), fanned out from Redis
sharded pub/sub.

Modules: `book_view` (pure book copy and depth streams), `bars` (pure candle and 24 h
state), `subscriber` (sharded pub/sub, one reader per node), `feed` (one pair's sync and
fan-out), `bar_channels` (a pair's candles and ticker channels), `account_feed` (one
account's updates and its sessions), `login` (HMAC login), `hub` (the watched pairs and
accounts), `client` (a connection's bounded send queue and conflation), `protocol` (client
frames and their rate limit), `frames` (server frames), `server` (the WebSocket server and
entry points), `settings`.
"""
