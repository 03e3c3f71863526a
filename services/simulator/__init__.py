"""A simulated market: makers quoting around a random-walk mid, takers, cancels."""
