"""The package version: one place, read by pyproject.toml (dynamic version) and written into every export."""

__version__ = "0.1.0"
