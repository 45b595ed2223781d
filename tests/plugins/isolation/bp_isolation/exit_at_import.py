"""Calls os._exit(3) while being imported, as a vendor library that finds no licence does."""

import os

from bp_isolation import Inert

os._exit(3)


class Backend(Inert):
    name = "exit-at-import"
