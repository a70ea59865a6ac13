"""sensor driver."""
