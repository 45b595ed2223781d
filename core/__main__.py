"""``python -m backplane`` is the ``backplane`` command."""

from .cli import main

main()
