"""Calls sys.exit(5) while being imported: SystemExit is no Exception, so a loader that
catches Exception lets it end the application."""

import sys

from bp_isolation import Inert

sys.exit(5)


class Backend(Inert):
    name = "sys-exit-at-import"
