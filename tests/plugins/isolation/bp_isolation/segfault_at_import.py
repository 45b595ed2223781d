"""Reads address 0 while being imported, as a vendor library with a bad static
initialiser would: SIGSEGV."""

import ctypes

from bp_isolation import Inert

ctypes.string_at(0)


class Backend(Inert):
    name = "segfault-at-import"
