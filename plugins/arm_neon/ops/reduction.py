"""Normalisation, reductions and pooling on the NEON kernels."""

from __future__ import annotations

from typing import Any

import numpy as np

from backplane.ops import pool_geometry

from .common import F32, dense, dt, ints, norm_axis


# --------------------------------------------------------------------------- normalisation

def softmax(rt: Any, x: Any, axis: int = -1) -> Any:
    x = dense(x)
    y = np.empty_like(x)
    if x.size == 0:
        return y
    axis = norm_axis(axis, x.ndim)
    outer = int(np.prod(x.shape[:axis], dtype=np.int64))
    inner = int(np.prod(x.shape[axis + 1:], dtype=np.int64))
    rt.call("softmax", [x], [y], (dt(x), outer, x.shape[axis], inner))
    return y


def layer_norm(rt: Any, x: Any, scale: Any, bias: Any = None, axis: int = -1,
               epsilon: float = 1e-5, stash_type: int = 1) -> tuple[Any, Any, Any]:
    x = dense(x)
    axis = norm_axis(axis, x.ndim)
    norm = x.shape[axis:]
    R = int(np.prod(norm, dtype=np.int64))
    rows = int(np.prod(x.shape[:axis], dtype=np.int64))
    stats_shape = x.shape[:axis] + (1,) * (x.ndim - axis)
    y = np.empty_like(x)
    mean = np.empty(stats_shape, np.float32)
    inv = np.empty(stats_shape, np.float32)
    if rows == 0 or R == 0:
        return y, mean, inv
    s = dense(np.broadcast_to(scale, norm))
    b = None if bias is None else dense(np.broadcast_to(bias, norm).astype(s.dtype))
    rt.call("layer_norm", [x, s, b], [y, mean, inv], (dt(x), dt(s), rows, R), (epsilon,))
    return y, mean, inv


def batch_norm(rt: Any, x: Any, scale: Any, bias: Any, mean: Any, var: Any,
               epsilon: float = 1e-5, momentum: float = 0.9, training_mode: int = 0) -> Any:
    if training_mode:
        raise ValueError("BatchNormalization in training mode")
    x = dense(x)
    y = np.empty_like(x)
    if x.size == 0:
        return y
    channels = x.shape[1] if x.ndim > 1 else 1
    inner = int(np.prod(x.shape[2:], dtype=np.int64))
    params = [dense(np.asarray(p).astype(np.float32)) for p in (scale, bias, mean, var)]
    rt.call("batch_norm", [x, *params], [y], (dt(x), x.shape[0], channels, inner), (epsilon,))
    return y


# --------------------------------------------------------------------------- reductions

_REDUCE = {"sum": 0, "mean": 1, "max": 2}


def _reduce(rt: Any, kind: str, data: Any, axes: Any = None, keepdims: int = 1,
            noop_with_empty_axes: int = 0) -> Any:
    chosen = [] if axes is None else ints(axes)
    if not chosen and noop_with_empty_axes:
        return np.array(data, copy=True)
    rank = data.ndim
    chosen = sorted({norm_axis(a, rank) for a in chosen}) if chosen else list(range(rank))
    kept = [i for i in range(rank) if i not in chosen]
    out_shape = tuple(1 if i in chosen else data.shape[i] for i in range(rank)) if keepdims \
        else tuple(data.shape[i] for i in kept)
    if chosen == list(range(chosen[0], chosen[-1] + 1)) if chosen else True:
        x = dense(data)
        lo, hi = (chosen[0], chosen[-1] + 1) if chosen else (0, 0)
        outer = int(np.prod(data.shape[:lo], dtype=np.int64))
        R = int(np.prod(data.shape[lo:hi], dtype=np.int64))
        inner = int(np.prod(data.shape[hi:], dtype=np.int64))
    else:  # the reduced axes last, as one
        x = dense(np.transpose(data, kept + chosen))
        outer = int(np.prod([data.shape[i] for i in kept], dtype=np.int64))
        R = int(np.prod([data.shape[i] for i in chosen], dtype=np.int64))
        inner = 1
    y = np.empty(out_shape, data.dtype)
    if y.size:
        rt.call("reduce", [x], [y], (dt(data), _REDUCE[kind], outer, R, inner))
    return y


def reduce_sum(rt: Any, data: Any, axes: Any = None, **attrs: Any) -> Any:
    return _reduce(rt, "sum", data, axes, **attrs)


def reduce_mean(rt: Any, data: Any, axes: Any = None, **attrs: Any) -> Any:
    return _reduce(rt, "mean", data, axes, **attrs)


def reduce_max(rt: Any, data: Any, axes: Any = None, **attrs: Any) -> Any:
    return _reduce(rt, "max", data, axes, **attrs)


def global_average_pool(rt: Any, x: Any) -> Any:
    x = dense(x)
    rows = x.shape[0] * x.shape[1]
    R = int(np.prod(x.shape[2:], dtype=np.int64))
    y = np.empty(x.shape[:2] + (1,) * (x.ndim - 2), x.dtype)
    if y.size:
        rt.call("reduce", [x], [y], (dt(x), _REDUCE["mean"], rows, R, 1))
    return y


def _windows(a: Any, kernel: list[int], strides: list[int], dilations: list[int],
             out: list[int]) -> Any:
    """[..., out..., k...] views of the last len(kernel) axes of ``a`` (padded already)."""
    nsp = len(kernel)
    spans = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    v = np.lib.stride_tricks.sliding_window_view(a, spans, axis=tuple(range(a.ndim - nsp, a.ndim)))
    lead = a.ndim - nsp
    index = [slice(None)] * lead
    index += [slice(0, (o - 1) * s + 1, s) for o, s in zip(out, strides)]
    index += [slice(None, None, d) for d in dilations]
    return v[tuple(index)]


def _pool(rt: Any, kind: str, x: Any, kernel_shape: Any, auto_pad: str = "NOTSET",
          ceil_mode: int = 0, dilations: Any = None, pads: Any = None, strides: Any = None,
          count_include_pad: int = 0, storage_order: int = 0) -> Any:
    """MaxPool and AveragePool with the output sizes of backplane's oracle (np_pool): the
    windows are gathered here (data movement), their max or mean computed by the kernel."""
    kernel = list(kernel_shape)
    nsp = len(kernel)
    spatial = list(x.shape[2:])
    strides = list(strides or [1] * nsp)
    dilations = list(dilations or [1] * nsp)
    begins, ends, out, extra = pool_geometry(spatial, kernel, strides, dilations, pads,
                                             auto_pad, ceil_mode)
    widths = [(b, e + x_) for b, e, x_ in zip(begins, ends, extra)]
    y = np.empty(x.shape[:2] + tuple(out), x.dtype)
    indices = np.empty(y.shape, np.int64) if kind == "max" else None
    if y.size == 0:
        return (y, indices) if kind == "max" else y
    P, K = int(np.prod(out)), int(np.prod(kernel))
    fill = -np.inf if kind == "max" else 0.0
    xp = np.pad(x, [(0, 0), (0, 0)] + widths, constant_values=fill)
    rows = dense(_windows(xp, kernel, strides, dilations, out)).reshape(-1, K)
    if kind == "max":
        flat = np.arange(int(np.prod(spatial))).reshape(spatial[::-1] if storage_order else spatial)
        if storage_order:
            flat = flat.transpose(list(range(nsp))[::-1])
        where = _windows(np.pad(flat, widths, constant_values=-1), kernel, strides, dilations,
                         out).reshape(P, K)
        best = np.empty(rows.shape[0], np.int64)
        rt.call("pool_windows", [rows, None], [y, best], (dt(x), 0, rows.shape[0], K, P))
        image = int(np.prod(spatial))
        offsets = np.arange(x.shape[0] * x.shape[1], dtype=np.int64).repeat(P) * image
        found = where[np.arange(rows.shape[0]) % P, best]
        indices[...] = (found + offsets).reshape(y.shape)  # as the oracle: -1 + offset in pads
        return y, indices
    inside = np.ones(spatial if not count_include_pad else
                     [s + b + e for s, b, e in zip(spatial, begins, ends)], np.float32)
    region = np.pad(inside, widths if not count_include_pad else [(0, x_) for x_ in extra])
    counted = dense(_windows(region, kernel, strides, dilations, out)).reshape(P, K)
    counts = np.empty(P, np.float32)
    rt.call("reduce", [counted], [counts], (F32, _REDUCE["sum"], P, K, 1))
    rt.call("pool_windows", [rows, counts], [y, None], (dt(x), 1, rows.shape[0], K, P))
    return y


def max_pool(rt: Any, x: Any, **attrs: Any) -> Any:
    return _pool(rt, "max", x, **attrs)


def average_pool(rt: Any, x: Any, **attrs: Any) -> Any:
    return _pool(rt, "avg", x, **attrs)
