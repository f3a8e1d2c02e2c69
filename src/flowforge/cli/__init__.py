"""The ``flowforge`` command: a thin shell over :mod:`flowforge.recipes`."""

from flowforge.cli.main import main

__all__ = ["main"]
