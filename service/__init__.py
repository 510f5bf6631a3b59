"""The extraction service: the library behind HTTP (`extract serve`)."""

from service.app import create_app
from service.settings import Settings

__all__ = ["Settings", "create_app"]
