"""The WebSocket gateway: public market data (book, trades) fanned out from Redis pub/sub.

Modules: `book_view` (pure book copy and depth streams), `subscriber` (sharded pub/sub,
one reader per node), `feed` (one pair's sync and fan-out), `hub` (the watched pairs),
`client` (a connection's bounded send queue), `protocol` (client frames), `frames`
(server frames), `server` (the WebSocket server and entry points), `settings`.
"""
