"""Settlement: applies each engine event to the accounts it concerns, exactly once."""
