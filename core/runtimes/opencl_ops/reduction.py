"""Pooling, reductions and normalisation: the window and row kernels (pool.cl, reduce.cl)."""

from __future__ import annotations

from typing import Any

import numpy as np

from backplane.ops import pool_geometry
from backplane.runtimes.opencl import state_of

from .common import (INT_LIMITS, broadcast_strides, cl_type, collapse, dense_strides, host_ints,
                     is_floating, norm_axis, pad_rank, to3)
from .elementwise import strided_copy


# --------------------------------------------------------------------------- pooling

def pool(kind: str, x: Any, kernel_shape: Any, auto_pad: str = "NOTSET", ceil_mode: int = 0,
         dilations: Any = None, pads: Any = None, strides: Any = None,
         count_include_pad: int = 0, storage_order: int = 0, want_indices: bool = False) -> Any:
    st = state_of(x)
    nsp = x.ndim - 2
    kernel = list(kernel_shape)
    strides = list(strides or [1] * nsp)
    dilations = list(dilations or [1] * nsp)
    spatial = list(x.shape[2:])
    begins, ends, out_sp, _ = pool_geometry(spatial, kernel, strides, dilations, pads,
                                            auto_pad, ceil_mode)
    p = begins + ends
    shape = (*x.shape[:2], *out_sp)
    y = st.empty(shape, x.dtype)
    ind = st.empty(shape, np.int64) if want_indices else None
    if y.size == 0:
        return (y, ind) if want_indices else y
    P = [*to3(spatial, 1), *to3(out_sp, 1), *to3(kernel, 1), *to3(strides, 1),
         *to3(p[:nsp], 0), *to3(dilations, 1), *to3(p[nsp:], 0), int(count_include_pad),
         int(storage_order)]
    is_float = is_floating(x.dtype)
    lowest = "-INFINITY" if is_float else str(INT_LIMITS[str(x.dtype)][0])
    prelude = (f"#define T {cl_type(x.dtype)}\n#define IS_MAX {int(kind == 'max')}\n"
               f"#define IS_FLOAT {int(is_float)}\n#define LOWEST (({cl_type(x.dtype)}){lowest})\n")
    knl = st.kernel("pool", prelude, "pool")
    st.launch1d(knl, y.size, y.base_data, ind.base_data if ind is not None else y.base_data,
                st.buf(x), st.layout(tuple(P)), np.int64(y.size), np.int32(want_indices))
    return (y, ind) if want_indices else y


def max_pool(x: Any, **attrs: Any) -> Any:
    return pool("max", x, want_indices=True, **attrs)


def average_pool(x: Any, **attrs: Any) -> Any:
    return pool("avg", x, **attrs)


def global_average_pool(x: Any) -> Any:
    return reduce("mean", x, list(range(2, x.ndim)), keepdims=1)


# --------------------------------------------------------------------------- reductions

def reduce(mode: str, x: Any, axes: list[int] | None, keepdims: int = 1,
           noop_with_empty_axes: int = 0) -> Any:
    st = state_of(x)
    rank = x.ndim
    if not axes:
        if noop_with_empty_axes:
            return strided_copy(x, x.shape, dense_strides(x.shape), 0)
        axes = list(range(rank))
    axes = sorted({norm_axis(a, rank) for a in axes})
    kept = [i for i in range(rank) if i not in axes]
    strides = dense_strides(x.shape)
    out_shape = tuple(1 if i in axes else x.shape[i] for i in range(rank)) if keepdims \
        else tuple(x.shape[i] for i in kept)
    y = st.empty(out_shape, x.dtype)
    nout = y.size
    nred = int(np.prod([x.shape[i] for i in axes])) if axes else 1
    if nout == 0:
        return y
    kd, (ks,) = collapse([x.shape[i] for i in kept], [[strides[i] for i in kept]])
    rd, (rs,) = collapse([x.shape[i] for i in axes], [[strides[i] for i in axes]])
    if not rd:
        rd, rs = [1], [0]
    dt = str(x.dtype)
    is_float = is_floating(x.dtype)
    if mode == "max":
        acc = cl_type(dt)
        init = "-INFINITY" if is_float else str(INT_LIMITS[dt][0]) + ("L" if dt == "int64" else "")
        if dt == "int64":
            init = "LONG_MIN"
    else:
        acc = "float" if is_float else "long"
        init = "0"
    if mode == "mean" and not is_float and nred == 0:
        raise ValueError("ReduceMean over no element")
    prelude = (f"#define T {cl_type(dt)}\n#define TA {acc}\n#define TO {cl_type(dt)}\n"
               f"#define MODE {dict(sum=0, mean=1, max=2)[mode]}\n#define INIT (({acc}){init})\n"
               f"#define KAHAN {int(is_float and mode != 'max')}\n")
    table = (len(kd), *pad_rank(kd, 1), *pad_rank(ks), len(rd), *pad_rank(rd, 1), *pad_rank(rs))
    knl = st.kernel("reduce", prelude, "reduce")
    st.launch1d(knl, nout, y.base_data, st.buf(x), st.layout(table), np.int64(nout),
                np.int64(nred))
    return y


def reduce_op(mode: str):
    def fn(x: Any, axes_in: Any = None, axes: Any = None, keepdims: int = 1,
           noop_with_empty_axes: int = 0) -> Any:
        chosen = host_ints(axes_in) if axes_in is not None else axes
        return reduce(mode, x, list(chosen) if chosen is not None else None, keepdims,
                      noop_with_empty_axes)
    return fn


reduce_op_sum = reduce_op("sum")
reduce_op_mean = reduce_op("mean")
reduce_op_max = reduce_op("max")


# --------------------------------------------------------------------------- normalisation

_NORM = "#define NORM 1\n"


def softmax(x: Any, axis: int = -1) -> Any:
    st = state_of(x)
    y = st.empty(x.shape, np.float32)
    if y.size == 0:
        return y
    axis = norm_axis(axis, x.ndim)
    outer = int(np.prod(x.shape[:axis]))
    inner = int(np.prod(x.shape[axis + 1:]))
    rows = outer * inner
    knl = st.kernel("reduce", _NORM, "softmax")
    st.launch1d(knl, rows, y.base_data, st.buf(x), np.int64(rows), np.int64(x.shape[axis]),
                np.int64(inner))
    return y


def layer_norm(x: Any, scale: Any, bias: Any = None, axis: int = -1, epsilon: float = 1e-5,
               stash_type: int = 1) -> tuple[Any, Any, Any]:
    st = state_of(x)
    axis = norm_axis(axis, x.ndim)
    rows = int(np.prod(x.shape[:axis]))
    n = int(np.prod(x.shape[axis:]))
    norm_shape = tuple(x.shape[axis:])
    if scale.shape != norm_shape:
        scale = strided_copy(scale, norm_shape, broadcast_strides(scale.shape, norm_shape), 0)
    if bias is not None and bias.shape != norm_shape:
        bias = strided_copy(bias, norm_shape, broadcast_strides(bias.shape, norm_shape), 0)
    y = st.empty(x.shape, np.float32)
    stat_shape = tuple(x.shape[:axis]) + (1,) * (x.ndim - axis)
    mean = st.empty(stat_shape, np.float32)
    rstd = st.empty(stat_shape, np.float32)
    if y.size:
        knl = st.kernel("reduce", _NORM, "layernorm")
        st.launch1d(knl, rows, y.base_data, mean.base_data, rstd.base_data, st.buf(x),
                    st.buf(scale), st.buf(bias) if bias is not None else st.buf(scale),
                    np.int64(rows), np.int64(n), np.float32(epsilon),
                    np.int32(bias is not None), np.int32(1))
    return y, mean, rstd


def batch_norm(x: Any, scale: Any, b: Any, mean: Any, var: Any, epsilon: float = 1e-5,
               momentum: float = 0.9, training_mode: int = 0) -> Any:
    st = state_of(x)
    y = st.empty(x.shape, np.float32)
    if y.size == 0:
        return y
    channels = x.shape[1] if x.ndim > 1 else 1
    inner = int(np.prod(x.shape[2:]))
    knl = st.kernel("reduce", _NORM, "batchnorm")
    st.launch1d(knl, y.size, y.base_data, st.buf(x), st.buf(scale), st.buf(b), st.buf(mean),
                st.buf(var), np.int64(y.size), np.int64(channels), np.int64(inner),
                np.float32(epsilon))
    return y
