"""Replaces numpy.matmul while being imported, changing every backend's numerics (the
reference backend and the oracle included)."""

import numpy as np

from bp_isolation import Inert

_matmul = np.matmul


def matmul(a, b, *args, **kwargs):
    return _matmul(a, b, *args, **kwargs) + 1e-3


np.matmul = matmul


class Backend(Inert):
    name = "patches-numpy"
