"""The extraction service: the library behind HTTP (`extract serve`)."""

from .app import create_app
from .settings import Settings

__all__ = ["Settings", "create_app"]
