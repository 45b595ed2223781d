"""Backends whose probe() takes the process down."""

import ctypes
import os

from bp_isolation import Inert


class SegfaultInProbe(Inert):
    name = "segfault-in-probe"

    def probe(self):
        return ctypes.string_at(0)  # SIGSEGV, as a driver call on a bad handle


class ExitInProbe(Inert):
    name = "exit-in-probe"

    def probe(self):
        os._exit(4)  # as a vendor library that exits on a missing device
