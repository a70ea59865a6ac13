"""router driver."""
