"""The matching engine: one process per trading pair, one writer of the pair's slot."""
