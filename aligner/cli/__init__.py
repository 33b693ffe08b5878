"""The ``dynalign`` command line, thin over the library: :mod:`aligner.cli.app` holds the root group and what
the commands share; each module beside it registers one group of commands on it."""

from aligner.cli import config, data, history, query, run, tools  # noqa: E402,F401  (each registers its commands)
from aligner.cli.app import cli, main

__all__ = ["cli", "main"]
