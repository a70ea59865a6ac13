"""traffic driver."""
