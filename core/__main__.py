"""``python -m backplane`` is the ``backplane`` command."""

from backplane.cli import main

main()
