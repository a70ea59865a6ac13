"""labctl: build and prove a home IoT/OT security lab as code."""

__version__ = "0.1.0"
