"""Glasshouse: a FastAPI service template that is observable from its first request."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("glasshouse")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"
