"""hyperv driver."""
