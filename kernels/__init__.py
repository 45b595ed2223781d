"""Kernel sources of the kernel backends: ``opencl/*.cl``, ``cuda/*.cu``, ``neon/*.c``.

They ship as package data; a backend reads them with :func:`source`.
"""

from __future__ import annotations

from importlib import resources


def source(relative_path: str) -> str:
    """The text of a kernel source, e.g. ``source("opencl/elementwise.cl")``."""
    return resources.files(__name__).joinpath(relative_path).read_text("utf-8")
