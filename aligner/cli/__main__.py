"""``python -m aligner.cli``: the ``dynalign`` command."""

from aligner.cli import main

main()
