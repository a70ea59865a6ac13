"""scans driver."""
