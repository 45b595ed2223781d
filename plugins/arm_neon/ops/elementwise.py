"""Element-wise ops and quantization on the NEON kernels."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .common import BF16, BINARY, F16, F32, MAX_RANK, UNARY, dense, dt, norm_axis


# --------------------------------------------------------------------------- element-wise

def unary(rt: Any, op: str, x: Any, p0: float = 0.0, p1: float = 0.0) -> Any:
    x = dense(x)
    y = np.empty_like(x)
    if x.size:
        rt.call("unary", [x], [y], (UNARY[op], dt(x), x.size), (p0, p1))
    return y


def unary_op(rt: Any, op: str, x: Any) -> Any:
    return unary(rt, op, x)


def leaky_relu(rt: Any, x: Any, alpha: float = 0.01) -> Any:
    return unary(rt, "LeakyRelu", x, alpha)


def hard_sigmoid(rt: Any, x: Any, alpha: float = 0.2, beta: float = 0.5) -> Any:
    return unary(rt, "HardSigmoid", x, alpha, beta)


def gelu(rt: Any, x: Any, approximate: str = "none") -> Any:
    return unary(rt, "GeluTanh" if approximate == "tanh" else "Gelu", x)


def clip(rt: Any, x: Any, lo: Any = None, hi: Any = None) -> Any:
    low = float(np.asarray(lo).reshape(-1)[0]) if lo is not None else -math.inf
    high = float(np.asarray(hi).reshape(-1)[0]) if hi is not None else math.inf
    return unary(rt, "Clip", x, min(low, high), high)  # min > max: every element is max


def broadcast_layout(shape_a: tuple, shape_b: tuple) -> tuple[tuple, list, list, list]:
    """(output shape, collapsed dims, a strides, b strides) of a broadcast over dense
    inputs: dims of size 1 dropped, neighbours that are contiguous in both inputs merged, so
    the innermost strides are 0 or 1."""
    out = tuple(np.broadcast_shapes(shape_a, shape_b))
    rank = len(out)

    def strides(shape: tuple) -> list[int]:
        full = (1,) * (rank - len(shape)) + tuple(shape)
        st, acc = [0] * rank, 1
        for i in range(rank - 1, -1, -1):
            st[i] = acc if full[i] != 1 else 0
            acc *= full[i]
        return st

    sa, sb = strides(shape_a), strides(shape_b)
    dims, ra, rb = [], [], []
    for d, a, b in zip(out, sa, sb):
        if d == 1:
            continue
        if dims and ra[-1] == a * d and rb[-1] == b * d:
            dims[-1] *= d
            ra[-1], rb[-1] = a, b
        else:
            dims.append(d)
            ra.append(a)
            rb.append(b)
    if not dims:
        dims, ra, rb = [1], [0], [0]
    return out, dims, ra, rb


def binary(rt: Any, op: str, a: Any, b: Any) -> Any:
    if op == "Pow" and a.dtype != b.dtype:
        # the exponent has a type of its own: both widen (exactly) to f32, then one rounding
        wide = binary(rt, op, a.astype(np.float32), b.astype(np.float32))
        return wide.astype(a.dtype)
    a, b = dense(a), dense(b)
    out, dims, sa, sb = broadcast_layout(a.shape, b.shape)
    y = np.empty(out, a.dtype)
    if y.size == 0:
        return y
    if len(dims) > MAX_RANK:
        raise ValueError(f"a broadcast of {len(dims)} independent dimensions (at most {MAX_RANK})")
    rt.call("binary", [a, b], [y], (BINARY[op], dt(a), len(dims), *dims, *sa, *sb))
    return y


# --------------------------------------------------------------------------- quantization

def _per_axis(x: Any, param: Any, axis: int, block_size: int = 0
              ) -> tuple[int, int, int, Any]:
    """(outer, C, inner, param as one value per C) for a per-tensor, per-axis or blocked
    parameter (a blocked one is repeated to one value per element: C = x.size)."""
    if block_size:
        p = np.repeat(np.asarray(param), block_size, axis=norm_axis(axis, x.ndim))
        p = p[tuple(slice(0, d) for d in x.shape)]
        return 1, int(x.size), 1, p.reshape(-1)
    p = np.asarray(param).reshape(-1)
    if p.size == 1 or x.ndim == 0:
        return 1, 1, int(x.size), p[:1]
    axis = norm_axis(axis, x.ndim)
    if p.size != x.shape[axis]:
        raise ValueError(f"a per-axis parameter of {p.size} values for axis {axis} of {x.shape}")
    return (int(np.prod(x.shape[:axis], dtype=np.int64)), x.shape[axis],
            int(np.prod(x.shape[axis + 1:], dtype=np.int64)), p)


def quantize_linear(rt: Any, x: Any, y_scale: Any, y_zero_point: Any = None, axis: int = 1,
                    block_size: int = 0, output_dtype: int = 0, saturate: int = 1) -> Any:
    if y_zero_point is not None:
        out = np.asarray(y_zero_point).dtype
    else:
        out = np.dtype(np.int8) if output_dtype == 3 else np.dtype(np.uint8)
    if out not in (np.dtype(np.uint8), np.dtype(np.int8)):
        raise TypeError(f"QuantizeLinear to {out}: uint8 and int8 only")
    x = dense(x)
    y = np.empty(x.shape, out)
    if x.size == 0:
        return y
    outer, C, inner, scale = _per_axis(x, y_scale, axis, block_size)
    zp = None if y_zero_point is None else dense(
        _per_axis(x, y_zero_point, axis, block_size)[3].astype(np.int32))
    rt.call("quantize", [x, dense(scale.astype(np.float32)), zp], [y],
            (dt(x), int(out == np.int8), outer, C, inner))
    return y


def dequantize_linear(rt: Any, x: Any, x_scale: Any, x_zero_point: Any = None, axis: int = 1,
                      block_size: int = 0, output_dtype: int = 0) -> Any:
    import ml_dtypes

    kinds = {np.dtype(np.uint8): 0, np.dtype(np.int8): 1, np.dtype(np.int32): 2}
    if x.dtype not in kinds:
        raise TypeError(f"DequantizeLinear of {x.dtype}: uint8, int8 and int32 only")
    scale_dt = np.asarray(x_scale).dtype
    outs = {np.dtype(np.float32): (np.float32, F32), np.dtype(np.float16): (np.float16, F16),
            np.dtype(ml_dtypes.bfloat16): (ml_dtypes.bfloat16, BF16)}
    if scale_dt not in outs:
        raise TypeError(f"DequantizeLinear with {scale_dt} scales")
    out_type, ydt = outs[scale_dt]
    x = dense(x)
    y = np.empty(x.shape, out_type)
    if x.size == 0:
        return y
    outer, C, inner, scale = _per_axis(x, x_scale, axis, block_size)
    zp = None if x_zero_point is None else dense(
        _per_axis(x, x_zero_point, axis, block_size)[3].astype(np.int32))
    rt.call("dequantize", [x, dense(scale.astype(np.float32)), zp], [y],
            (kinds[x.dtype], ydt, outer, C, inner))
    return y
