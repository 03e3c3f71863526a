"""The REST API: public market data, signed trading, operator endpoints, the web page."""
