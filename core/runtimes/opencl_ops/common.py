"""Helpers the OpenCL kernel families share: element types, strides, views, host reads."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyopencl.array as cla

from backplane.runtimes.opencl import CL_TYPES, MAXR, RAW_TYPES, mirror, state_of

FLOAT_MIN = {"float32": "-INFINITY"}
INT_LIMITS = {"int8": (-128, 127), "uint8": (0, 255), "int32": (-2 ** 31, 2 ** 31 - 1),
              "int64": (-2 ** 63, 2 ** 63 - 1), "int16": (-2 ** 15, 2 ** 15 - 1),
              "uint16": (0, 2 ** 16 - 1), "bool": (0, 1)}
ACT = {"none": 0, "relu": 1, "clip": 2, "gelu": 3, "gelu_tanh": 4}


def cl_type(dtype: Any) -> str:
    """The OpenCL C type of numpy ``dtype``."""
    return CL_TYPES[str(np.dtype(dtype))]


def raw_type(dtype: Any) -> str:
    """The unsigned OpenCL C type of ``dtype``'s width: its elements as raw bits."""
    return RAW_TYPES[np.dtype(dtype).itemsize]


def is_floating(dtype: Any) -> bool:
    """Whether ``dtype`` is a floating-point type."""
    return np.dtype(dtype).kind == "f"


def dense_strides(shape: tuple[int, ...]) -> list[int]:
    """Row-major element strides of a dense ``shape``."""
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= int(d)
    return out[::-1]


def norm_axis(axis: int, rank: int) -> int:
    """``axis`` in [0, rank), or ValueError when it is out of range."""
    if not -max(rank, 1) <= axis < max(rank, 1):
        raise ValueError(f"axis {axis} is out of range for rank {rank}")
    return axis % rank if rank else 0


def collapse(dims: list[int], strides: list[list[int]]) -> tuple[list[int], list[list[int]]]:
    """Drop size-1 dimensions and merge neighbours that every operand walks contiguously."""
    keep = [i for i, d in enumerate(dims) if d != 1]
    out_dims: list[int] = []
    out_str: list[list[int]] = [[] for _ in strides]
    for i in keep:
        d = dims[i]
        if out_dims and all(o[-1] == s[i] * d for o, s in zip(out_str, strides)):
            out_dims[-1] *= d
            for o, s in zip(out_str, strides):
                o[-1] = s[i]
        else:
            out_dims.append(d)
            for o, s in zip(out_str, strides):
                o.append(s[i])
    if len(out_dims) > MAXR:
        raise ValueError(f"the OpenCL kernels index at most {MAXR} dimensions after merging "
                         f"contiguous ones; this operand needs {len(out_dims)}")
    return out_dims, out_str


def pad_rank(values: list[int], fill: int = 0) -> list[int]:
    """``values`` filled with ``fill`` to the kernels' MAXR dimensions."""
    return list(values) + [fill] * (MAXR - len(values))


def broadcast_strides(shape: tuple[int, ...], out_shape: tuple[int, ...]) -> list[int]:
    """Element strides of a dense ``shape`` read as ``out_shape`` (0 where broadcast)."""
    st = dense_strides(shape)
    lead = len(out_shape) - len(shape)
    return [0 if i < lead or shape[i - lead] == 1 else st[i - lead]
            for i in range(len(out_shape))]


def view(x: Any, shape: Any) -> Any:
    """The same buffer seen with another shape (no copy)."""
    shape = tuple(int(d) for d in shape)
    if int(np.prod(shape)) != x.size:
        raise ValueError(f"cannot view {x.shape} as {shape}")
    if x.size == 0 or x.base_data is None:
        out = state_of(x).empty(shape, x.dtype)
    else:
        out = cla.Array(x.queue, shape, x.dtype, data=x.base_data, offset=x.offset)
    host = getattr(x, "host_mirror", None)
    if host is not None:
        out.host_mirror = host.reshape(shape)
    return out


def host_ints(x: Any) -> list[int]:
    """A small integer array's values as Python ints (``runtimes.opencl.mirror``)."""
    return [int(v) for v in np.asarray(mirror(x)).reshape(-1)]


def scalar_from(x: Any, st: Any, dtype: Any) -> Any:
    """A one-element device array of ``dtype`` holding ``x`` (a Python number)."""
    return st.upload(np.asarray(x, dtype=dtype))


def to3(values: list[int], fill: int) -> list[int]:
    """``values`` as three spatial sizes, ``fill`` in front of 1-D and 2-D ones."""
    return [fill] * (3 - len(values)) + list(values)
