"""The ``quantlab`` command line (``app``: the commands; ``render``: everything they print)."""

from quantlab.cli.app import main

__all__ = ["main"]
