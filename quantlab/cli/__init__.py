"""The ``quantlab`` command line (``app``: the commands; ``render``: everything they print)."""

from quantlab.cli.app import app, main

__all__ = ["app", "main"]
