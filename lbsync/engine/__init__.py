"""The Docker engine: its API client and what its answers parse into (containers, swarm)."""
