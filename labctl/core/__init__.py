"""Core: errors, secrets, assets, plan model, playbook schema. Imports nothing above it."""
