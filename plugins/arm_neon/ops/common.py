"""The op codes of kernels/neon/bp_neon.h and the helpers every NEON kernel family shares."""

from __future__ import annotations

from typing import Any

import numpy as np

F32, F16, BF16 = 0, 1, 2
#: Unary op codes of kernels/neon/bp_neon.h.
UNARY = {"Relu": 0, "LeakyRelu": 1, "Sigmoid": 2, "Tanh": 3, "Exp": 4, "Log": 5, "Sqrt": 6,
         "Abs": 7, "Neg": 8, "Erf": 9, "Gelu": 10, "GeluTanh": 11, "HardSigmoid": 12,
         "HardSwish": 13, "Clip": 14}
BINARY = {"Add": 0, "Sub": 1, "Mul": 2, "Div": 3, "Pow": 4}
ACT_NONE, ACT_RELU, ACT_CLIP, ACT_GELU, ACT_GELU_TANH = range(5)
MAX_RANK = 8


def dt(a: Any) -> int:
    """The element-type code of ``a`` (F32, F16, BF16) the kernels take."""
    if a.dtype == np.float32:
        return F32
    if a.dtype == np.float16:
        return F16
    if a.dtype.name == "bfloat16":  # ml_dtypes' type: only the element-wise kernels take it
        return BF16
    raise TypeError(f"the NEON kernels take float32, float16 or bfloat16, not {a.dtype}")


def dense(a: Any) -> Any:
    """A dense row-major array (0-d arrays stay 0-d, unlike numpy.ascontiguousarray)."""
    a = np.asarray(a)
    return a if a.flags.c_contiguous else a.copy(order="C")


def ints(a: Any) -> list[int]:
    """An integer input as Python ints."""
    return [int(v) for v in np.asarray(a).reshape(-1)]


def norm_axis(a: int, rank: int) -> int:
    """``a`` counted from the front (a negative axis counts from the back)."""
    return a + rank if a < 0 else a
