"""One shard: the sans-IO core (core.py, twophase.py) and its ZeroMQ server (server.py)."""
