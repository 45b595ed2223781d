"""Allocates without end while being imported (bounded at 64 GiB, so that a machine without
the check's memory limit survives it; the allocations are calloc'ed and never touched)."""

from bp_isolation import Inert

_hoard = [bytes(2**28) for _ in range(256)]


class Backend(Inert):
    name = "memory-at-import"
