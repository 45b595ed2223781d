"""Data movement on the NEON backend: numpy views and copies, no kernel."""

from __future__ import annotations

from typing import Any

import numpy as np

from .common import ints, norm_axis


# --------------------------------------------------------------------------- data movement
# No arithmetic: numpy views and copies.

def identity(rt: Any, x: Any) -> Any:
    return x


def reshape(rt: Any, x: Any, shape: Any, allowzero: int = 0) -> Any:
    target = ints(shape)
    out = [x.shape[i] if d == 0 and not allowzero else d for i, d in enumerate(target)]
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1], dtype=np.int64))
        out[out.index(-1)] = x.size // known if known else 0
    return np.reshape(x, out)


def flatten(rt: Any, x: Any, axis: int = 1) -> Any:
    axis = norm_axis(axis, x.ndim)
    return np.reshape(x, (int(np.prod(x.shape[:axis], dtype=np.int64)),
                          int(np.prod(x.shape[axis:], dtype=np.int64))))


def squeeze(rt: Any, x: Any, axes_in: Any = None, axes: Any = None) -> Any:
    chosen = ints(axes_in) if axes_in is not None else axes
    if chosen is None:
        return np.reshape(x, [d for d in x.shape if d != 1])
    drop = {norm_axis(a, x.ndim) for a in chosen}
    return np.reshape(x, [d for i, d in enumerate(x.shape) if i not in drop])


def unsqueeze(rt: Any, x: Any, axes_in: Any = None, axes: Any = None) -> Any:
    chosen = ints(axes_in) if axes_in is not None else list(axes)
    rank = x.ndim + len(chosen)
    add = {norm_axis(a, rank) for a in chosen}
    it = iter(x.shape)
    return np.reshape(x, [1 if i in add else next(it) for i in range(rank)])


def shape_op(rt: Any, x: Any, start: int = 0, end: int | None = None) -> Any:
    return np.asarray(x.shape[start:end], np.int64)


def transpose(rt: Any, x: Any, perm: Any = None) -> Any:
    return np.transpose(x, None if perm is None else list(perm))


def expand(rt: Any, x: Any, shape: Any) -> Any:
    out = np.broadcast_shapes(x.shape, tuple(ints(shape)))
    return np.broadcast_to(x, out).copy()


def slice_op(rt: Any, x: Any, starts: Any, ends: Any, axes: Any = None, steps: Any = None) -> Any:
    starts, ends = ints(starts), ints(ends)
    axes = ints(axes) if axes is not None else list(range(len(starts)))
    steps = ints(steps) if steps is not None else [1] * len(starts)
    index = [slice(None)] * x.ndim
    for s, e, a, k in zip(starts, ends, axes, steps):
        if k == 0:
            raise ValueError("Slice step 0")
        a = norm_axis(a, x.ndim)
        lo, hi, k = slice(s, e, k).indices(x.shape[a])
        index[a] = slice(lo, hi if hi >= 0 else None, k)
    return x[tuple(index)]


def concat(rt: Any, *inputs: Any, axis: int = 0) -> Any:
    return np.concatenate(inputs, axis=axis)


def gather(rt: Any, x: Any, indices: Any, axis: int = 0) -> Any:
    return np.take(x, np.asarray(indices, np.int64), axis=norm_axis(axis, x.ndim))


def where(rt: Any, cond: Any, x: Any, y: Any) -> Any:
    return np.where(cond, x, y)


def cast(rt: Any, x: Any, to: int, saturate: int = 1) -> Any:
    from onnx import helper

    dst = np.dtype(helper.tensor_dtype_to_np_dtype(to))
    if dst == np.bool_:
        return np.asarray(x) != 0
    with np.errstate(over="ignore", invalid="ignore"):  # ONNX: out of range is inf or undefined
        return np.asarray(x).astype(dst)


def pad(rt: Any, x: Any, pads: Any, constant_value: Any = None, axes: Any = None,
        mode: str = "constant") -> Any:
    p = ints(pads)
    rank = x.ndim
    chosen = [norm_axis(a, rank) for a in ints(axes)] if axes is not None else list(range(rank))
    begins, ends = [0] * rank, [0] * rank
    for i, a in enumerate(chosen):
        begins[a], ends[a] = p[i], p[i + len(chosen)]
    # negative pads crop: slice first, then pad the rest
    crop = tuple(slice(-b if b < 0 else 0, x.shape[i] + e if e < 0 else None)
                 for i, (b, e) in enumerate(zip(begins, ends)))
    x = x[crop]
    widths = [(max(b, 0), max(e, 0)) for b, e in zip(begins, ends)]
    if mode == "constant":
        value = 0 if constant_value is None else np.asarray(constant_value).reshape(-1)[0]
        return np.pad(x, widths, mode="constant", constant_values=value)
    return np.pad(x, widths, mode={"reflect": "reflect", "edge": "edge", "wrap": "wrap"}[mode])
