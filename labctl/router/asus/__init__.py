"""ASUSWRT 3.0.0.6 (SDN) router driver: codec, client, planner, transaction, emulator."""
