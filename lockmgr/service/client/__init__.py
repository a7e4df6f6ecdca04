"""The clients of the lock service."""
