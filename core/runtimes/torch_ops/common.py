"""What the torch kernel families share: the run's float type, host reads, axes, windows."""

from __future__ import annotations

import contextvars
import weakref
from typing import Any

import torch
import torch.nn.functional as F

#: The torch dtype ONNX's ``float`` (TensorProto code 1) stands for in the current run:
#: float32, or float16 / bfloat16 in a reduced-precision run. Set by the runner per run.
FLOAT: contextvars.ContextVar[torch.dtype] = contextvars.ContextVar(
    "backplane_torch_float", default=torch.float32)

#: ONNX TensorProto codes of the element types the table computes on.
ONNX_TYPES: dict[int, torch.dtype] = {
    1: torch.float32, 2: torch.uint8, 3: torch.int8, 4: torch.uint16, 5: torch.int16,
    6: torch.int32, 7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64,
    16: torch.bfloat16}

#: The reduced-precision float types.
REDUCED = (torch.float16, torch.bfloat16)


def onnx_dtype(code: int) -> torch.dtype:
    """The torch dtype of ONNX element type ``code`` in this run (float: :data:`FLOAT`)."""
    if code == 1:
        return FLOAT.get()
    try:
        return ONNX_TYPES[code]
    except KeyError:
        raise TypeError(f"ONNX element type {code} has no torch kernel here; the table "
                        f"computes on {sorted(ONNX_TYPES)}") from None


#: Host copies of small constants, recorded by the runner as it uploads them (see
#: :func:`remember`): shape-like inputs are read on the host, and reading a GPU tensor costs
#: a device-to-host copy and a synchronisation per node per run. A recorded float32
#: constant also keeps its exact values where a reduced-precision run lowered the tensor.
#: Keyed by the tensor's id, with a weak reference to it (a tensor cannot be a weak
#: dictionary key: comparing two is element-wise); an entry goes when its tensor does.
HOST_COPIES: dict[int, tuple[Any, list[Any]]] = {}
#: Constants up to this many elements get a host copy.
HOST_COPY_ELEMENTS = 64


def remember(tensor: Any, values: list[Any]) -> None:
    """Record ``values`` (flat) as the host copy of the constant ``tensor``."""
    key = id(tensor)
    HOST_COPIES[key] = (weakref.ref(tensor), values)
    weakref.finalize(tensor, HOST_COPIES.pop, key, None)


def host_values(t: Any) -> tuple[list[Any], bool]:
    """A shape-like input's values on the host, and whether they are exact (a recorded
    constant, or a tensor not lowered to fp16/bf16)."""
    entry = HOST_COPIES.get(id(t))
    if entry is not None and entry[0]() is t:
        return entry[1], True
    return t.reshape(-1).tolist(), t.dtype not in REDUCED


def ints(t: Any) -> list[int]:
    """A shape-like input as Python ints (its values decide a shape, so they go to the host)."""
    return [int(v) for v in host_values(t)[0]]


def floats(t: Any) -> list[float]:
    """A float input read to the host (Resize's roi)."""
    return [float(v) for v in host_values(t)[0]]


def norm_axis(axis: int, rank: int) -> int:
    """``axis`` in [0, rank), or ValueError when it is out of range."""
    if not -max(rank, 1) <= axis < max(rank, 1):
        raise ValueError(f"axis {axis} is out of range for rank {rank}")
    return axis % rank if rank else 0


def iinfo(dtype: torch.dtype) -> Any:
    """torch's limits of integer ``dtype``."""
    return torch.iinfo(dtype)


def pad_spatial(x: Any, begins: list[int], ends: list[int], value: float = 0.0) -> Any:
    """``x`` padded (or cropped, for negative pads) on its spatial axes."""
    if not any(begins) and not any(ends):
        return x
    widths = []
    for b, e in zip(reversed(begins), reversed(ends)):  # F.pad: last axis first
        widths += [b, e]
    return F.pad(x, widths, value=value)


#: torch's convolution for each number of spatial axes.
CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
