"""Use cases: plan, apply, verify. No Click, no printing; results are returned as data."""
