"""`extract`: the command line, one module per command."""

from extractor.cli.main import main

__all__ = ["main"]
