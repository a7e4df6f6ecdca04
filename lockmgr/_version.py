"""The package's version: the one source (pyproject.toml reads it; ``lockmgr --version`` prints it)."""

__version__ = "0.1.0"
