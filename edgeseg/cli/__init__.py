"""The ``edgeseg`` command line (``edgeseg.cli.app``): one module per command group."""

from edgeseg.cli.app import app, main

__all__ = ["app", "main"]
