"""Pooling, normalisation and reductions of the torch op table."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from backplane.ops import pool_geometry

from .common import CONV, FLOAT, iinfo, ints, norm_axis, pad_spatial


# --------------------------------------------------------------------------- pooling

def _pool_geometry(x: Any, kernel: list[int], strides: Any, pads: Any, dilations: Any,
                   ceil_mode: int, auto_pad: str) -> tuple[list[int], list[int], list[int],
                                                          list[int], list[int], list[int]]:
    """(strides, dilations, begin pads, end pads, extra end pads, output sizes) of a pool,
    as ONNX defines them: with ``ceil_mode`` a last partial window counts unless it would
    start in the end padding; ``extra`` pads the input so that window is whole."""
    nsp = len(kernel)
    strides = list(strides) if strides else [1] * nsp
    dilations = list(dilations) if dilations else [1] * nsp
    begins, ends, out, extra = pool_geometry(x.shape[2:], kernel, strides, dilations, pads,
                                             auto_pad, ceil_mode)
    return strides, dilations, begins, ends, extra, out


_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


def max_pool(x: Any, kernel_shape: Any, auto_pad: str = "NOTSET", ceil_mode: int = 0,
             dilations: Any = None, pads: Any = None, storage_order: int = 0,
             strides: Any = None) -> tuple[Any, Any]:
    """MaxPool and its Indices: the input padded explicitly with the type's lowest value
    (so asymmetric pads and ONNX's ceil rule need nothing from torch's own padding), then
    torch's max pool; torch's indices into the padded image become ONNX's flat indices
    into the unpadded input (row-major, or column-major per image with storage_order=1)."""
    kernel = list(kernel_shape)
    nsp = len(kernel)
    strides, dilations, begins, ends, extra, _ = _pool_geometry(
        x, kernel, strides, pads, dilations, ceil_mode, auto_pad)
    low = -math.inf if x.is_floating_point() else iinfo(x.dtype).min
    xp = pad_spatial(x, begins, [e + a for e, a in zip(ends, extra)], low)
    y, where = _MAX_POOL[nsp](xp, kernel, strides, 0, dilations, return_indices=True)
    padded, spatial = list(xp.shape[2:]), list(x.shape[2:])
    flat = torch.zeros_like(where)
    rest = where
    coords = []
    for size in reversed(padded):
        coords.append(rest % size)
        rest = rest // size
    coords.reverse()
    order = range(nsp - 1, -1, -1) if storage_order else range(nsp)
    for i in order:
        flat = flat * spatial[i] + (coords[i] - begins[i])
    image = math.prod(spatial)
    offsets = torch.arange(x.shape[0] * x.shape[1], device=x.device, dtype=torch.int64)
    offsets = (offsets * image).reshape(x.shape[:2] + (1,) * nsp)
    return y, flat + offsets


def average_pool(x: Any, kernel_shape: Any, auto_pad: str = "NOTSET", ceil_mode: int = 0,
                 count_include_pad: int = 0, dilations: Any = None, pads: Any = None,
                 strides: Any = None) -> Any:
    """AveragePool as a depthwise convolution with a kernel of ones over the explicitly
    padded input (torch's avg_pool has no dilations, and no 3-D fp16 kernel on the CPU),
    divided by the count of the elements each window averages: the input's only, or the
    pads' too with ``count_include_pad``, never the extra end of a ceil-mode window."""
    kernel = list(kernel_shape)
    nsp = len(kernel)
    strides, dilations, begins, ends, extra, _ = _pool_geometry(
        x, kernel, strides, pads, dilations, ceil_mode, auto_pad)
    c = x.shape[1]
    xp = pad_spatial(x, begins, [e + a for e, a in zip(ends, extra)])
    ones = torch.ones((c, 1, *kernel), dtype=x.dtype, device=x.device)
    total = CONV[nsp](xp, ones, None, stride=strides, dilation=dilations, groups=c)
    if count_include_pad:
        region = torch.ones([1, 1] + [s + b + e for s, b, e in zip(x.shape[2:], begins, ends)],
                            device=x.device)
        region = pad_spatial(region, [0] * nsp, extra)
    else:
        region = torch.ones([1, 1, *x.shape[2:]], device=x.device)
        region = pad_spatial(region, begins, [e + a for e, a in zip(ends, extra)])
    count = CONV[nsp](region, torch.ones((1, 1, *kernel), device=x.device), None,
                      stride=strides, dilation=dilations)
    return total / count.to(x.dtype)


def global_average_pool(x: Any) -> Any:
    return x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)


# --------------------------------------------------------------------------- normalisation

def batch_norm(x: Any, scale: Any, b: Any, mean: Any, var: Any, epsilon: float = 1e-5,
               momentum: float = 0.9, training_mode: int = 0) -> Any:
    """Inference-mode BatchNormalization (torch's, which takes float32 statistics with an
    fp16 or bf16 input, as cuDNN does)."""
    return F.batch_norm(x, mean, var, scale, b, training=False, eps=epsilon)


def layer_norm(x: Any, scale: Any, bias: Any = None, axis: int = -1, epsilon: float = 1e-5,
               stash_type: int = 1) -> tuple[Any, Any, Any]:
    """Mean, variance and the normalised values in float32 (``stash_type`` 1: ONNX computes
    them wider than an fp16 input), and the scale and bias applied in float32 too, rounded
    once to the input's type, as torch's fused layer_norm kernels do on GPUs (ONNX's body
    applies them in the input's type, whose two roundings miss the oracle by up to 4e-3
    on fp16 rows of 1,025 where the result lands near zero). Mean and InvStdDev are float
    outputs."""
    axis = norm_axis(axis, x.ndim)
    dims = tuple(range(axis, x.ndim))
    xf = x.float()
    mean = xf.mean(dim=dims, keepdim=True)
    d = xf - mean
    inv = torch.rsqrt((d * d).mean(dim=dims, keepdim=True) + epsilon)
    y = d * inv * scale.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype), mean.to(FLOAT.get()), inv.to(FLOAT.get())


def softmax(x: Any, axis: int = -1) -> Any:
    return torch.softmax(x, dim=norm_axis(axis, x.ndim))


# --------------------------------------------------------------------------- reductions

def _reduce_axes(x: Any, axes: Any, noop_with_empty_axes: int) -> list[int] | None:
    """The axes to reduce, or None for no reduction at all."""
    found = ints(axes) if axes is not None else []
    if not found:
        return None if noop_with_empty_axes else list(range(x.ndim))
    return sorted({norm_axis(a, x.ndim) for a in found})


def _empty_reduction(x: Any, dims: list[int], keepdims: int, value: Any) -> Any:
    shape = [1 if i in dims else d for i, d in enumerate(x.shape)] if keepdims else \
        [d for i, d in enumerate(x.shape) if i not in dims]
    return torch.full(shape, value, dtype=x.dtype, device=x.device)


def reduce_sum(x: Any, axes: Any = None, keepdims: int = 1, noop_with_empty_axes: int = 0) -> Any:
    dims = _reduce_axes(x, axes, noop_with_empty_axes)
    if dims is None:
        return x
    if not dims:  # a scalar over all of its (no) axes
        return x
    return x.sum(dim=dims, keepdim=bool(keepdims), dtype=x.dtype)


def reduce_mean(x: Any, axes: Any = None, keepdims: int = 1,
                noop_with_empty_axes: int = 0) -> Any:
    """Floats: torch's mean. Integers: the sum divided by the count, truncated, as ONNX's
    mean of integers cast back to their type."""
    dims = _reduce_axes(x, axes, noop_with_empty_axes)
    if dims is None:
        return x
    if not dims:
        return x
    if x.is_floating_point():
        return x.mean(dim=dims, keepdim=bool(keepdims))
    count = math.prod(x.shape[i] for i in dims)
    total = x.sum(dim=dims, keepdim=bool(keepdims), dtype=x.dtype)
    return torch.div(total, count, rounding_mode="trunc")


def reduce_max(x: Any, axes: Any = None, keepdims: int = 1, noop_with_empty_axes: int = 0) -> Any:
    """The maximum; over an empty set, the identity (-inf, the type's minimum, False)."""
    dims = _reduce_axes(x, axes, noop_with_empty_axes)
    if dims is None:
        return x
    if not dims:
        return x
    if any(x.shape[i] == 0 for i in dims):
        low = (False if x.dtype == torch.bool else -math.inf if x.is_floating_point()
               else iinfo(x.dtype).min)
        return _empty_reduction(x, dims, keepdims, low)
    if x.dtype == torch.bool:
        return x.any(dim=tuple(dims), keepdim=bool(keepdims))
    return torch.amax(x, dim=dims, keepdim=bool(keepdims))
