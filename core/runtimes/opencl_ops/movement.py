"""Shapes and data movement: views, strided copies, Concat, Gather, Pad (movement.cl)."""

from __future__ import annotations

from typing import Any

import numpy as np

from backplane.runtimes.opencl import MAXR, RAW_NUMPY, mirror, state_of

from .common import (broadcast_strides, collapse, dense_strides, host_ints, norm_axis, pad_rank,
                     raw_type, view)
from .elementwise import strided_copy


# --------------------------------------------------------------------------- shapes (views)

def identity(x: Any) -> Any:
    return view(x, x.shape)


def reshape(x: Any, shape: Any, allowzero: int = 0) -> Any:
    target = host_ints(shape)
    out = []
    for i, d in enumerate(target):
        out.append(x.shape[i] if d == 0 and not allowzero else d)
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1]))
        out[out.index(-1)] = x.size // known if known else 0
    return view(x, out)


def flatten(x: Any, axis: int = 1) -> Any:
    axis = axis + x.ndim if axis < 0 else axis
    return view(x, (int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:]))))


def squeeze(x: Any, axes_in: Any = None, axes: Any = None) -> Any:
    chosen = host_ints(axes_in) if axes_in is not None else axes
    if chosen is None:
        shape = [d for d in x.shape if d != 1]
    else:
        drop = {norm_axis(a, x.ndim) for a in chosen}
        shape = [d for i, d in enumerate(x.shape) if i not in drop]
    return view(x, shape)


def unsqueeze(x: Any, axes_in: Any = None, axes: Any = None) -> Any:
    chosen = host_ints(axes_in) if axes_in is not None else list(axes)
    rank = x.ndim + len(chosen)
    add = {a + rank if a < 0 else a for a in chosen}
    it = iter(x.shape)
    return view(x, [1 if i in add else next(it) for i in range(rank)])


def shape_op(x: Any, start: int = 0, end: int | None = None) -> Any:
    """Shape: computed on the host from the array's metadata, uploaded as int64."""
    return state_of(x).upload(np.asarray(x.shape[start:end], np.int64))


# --------------------------------------------------------------------------- data movement

def transpose(x: Any, perm: Any = None) -> Any:
    perm = list(perm) if perm is not None else list(range(x.ndim))[::-1]
    st = dense_strides(x.shape)
    return strided_copy(x, tuple(x.shape[p] for p in perm), [st[p] for p in perm], 0)


def expand(x: Any, shape: Any) -> Any:
    out_shape = tuple(np.broadcast_shapes(x.shape, tuple(host_ints(shape))))
    return strided_copy(x, out_shape, broadcast_strides(x.shape, out_shape), 0)


def slice_op(x: Any, starts: Any, ends: Any, axes: Any = None, steps: Any = None) -> Any:
    starts, ends = host_ints(starts), host_ints(ends)
    axes = host_ints(axes) if axes is not None else list(range(len(starts)))
    steps = host_ints(steps) if steps is not None else [1] * len(starts)
    strides = dense_strides(x.shape)
    out_shape, out_strides, base = list(x.shape), list(strides), 0
    for s, e, a, k in zip(starts, ends, axes, steps):
        a = norm_axis(a, x.ndim)
        if k == 0:
            raise ValueError("Slice step 0")
        dim = x.shape[a]
        lo, hi, k = slice(s, e, k).indices(dim)
        n = len(range(lo, hi, k))
        out_shape[a] = n
        out_strides[a] = strides[a] * k
        if n:
            base += lo * strides[a]
    return strided_copy(x, tuple(out_shape), out_strides, base)


def concat(*inputs: Any, axis: int = 0) -> Any:
    st = state_of(inputs[0])
    axis = norm_axis(axis, inputs[0].ndim)
    out_shape = list(inputs[0].shape)
    out_shape[axis] = sum(a.shape[axis] for a in inputs)
    y = st.empty(tuple(out_shape), inputs[0].dtype)
    ostr = dense_strides(tuple(out_shape))
    raw = raw_type(y.dtype)
    knl = st.kernel("movement", f"#define RT {raw}\n#define MODE 0\n", "scatter_copy")
    at = 0
    for a in inputs:
        if a.size:
            dims, (s,) = collapse(list(a.shape), [list(ostr)])
            # dims merged for the output strides must also be dense in the input: they are,
            # since both walk row-major and the input is dense.
            table = (len(dims), *pad_rank(dims, 1), *pad_rank(s), at * ostr[axis])
            st.launch1d(knl, a.size, y.base_data, st.buf(a), st.layout(table), np.int64(a.size))
        at += a.shape[axis]
    return y


def gather(x: Any, indices: Any, axis: int = 0) -> Any:
    st = state_of(x)
    axis = norm_axis(axis, x.ndim)
    n_axis = x.shape[axis]
    idx = np.asarray(mirror(indices), np.int64)
    if idx.size and (idx.min() < -n_axis or idx.max() >= n_axis):
        bad = idx[(idx < -n_axis) | (idx >= n_axis)].reshape(-1)[0]
        raise IndexError(f"Gather index {bad} is out of range for axis {axis} of size {n_axis}")
    idx = np.where(idx < 0, idx + n_axis, idx)
    out_shape = x.shape[:axis] + idx.shape + x.shape[axis + 1:]
    y = st.empty(out_shape, x.dtype)
    if y.size == 0:
        return y
    dev_idx = st.upload(idx)
    inner = int(np.prod(x.shape[axis + 1:]))
    knl = st.kernel("movement", f"#define RT {raw_type(x.dtype)}\n#define MODE 0\n", "gather")
    st.launch1d(knl, y.size, y.base_data, st.buf(x), st.buf(dev_idx), np.int64(y.size),
                np.int64(idx.size), np.int64(n_axis), np.int64(inner))
    return y


_PAD_MODES = {"constant": 0, "reflect": 1, "edge": 2, "wrap": 3}


def pad(x: Any, pads: Any, constant_value: Any = None, axes: Any = None,
        mode: str = "constant") -> Any:
    st = state_of(x)
    rank = x.ndim
    p = host_ints(pads)
    chosen = [norm_axis(a, rank) for a in host_ints(axes)] if axes is not None \
        else list(range(rank))
    begins, ends = [0] * rank, [0] * rank
    for i, a in enumerate(chosen):
        begins[a], ends[a] = p[i], p[i + len(chosen)]
    out_shape = tuple(d + b + e for d, b, e in zip(x.shape, begins, ends))
    y = st.empty(out_shape, x.dtype)
    if y.size == 0:
        return y
    value = 0 if constant_value is None else np.asarray(mirror(constant_value)).reshape(-1)[0]
    raw_value = np.asarray(value, x.dtype).reshape(1).view(RAW_NUMPY[x.dtype.itemsize])[0]
    if rank > MAXR:
        raise ValueError(f"Pad of rank {rank}: at most {MAXR}")
    table = (rank, *pad_rank(list(out_shape), 1), *pad_rank(list(x.shape), 1),
             *pad_rank(dense_strides(x.shape)), *pad_rank(begins))
    raw = raw_type(x.dtype)
    knl = st.kernel("movement", f"#define RT {raw}\n#define MODE {_PAD_MODES[mode]}\n", "pad")
    st.launch1d(knl, y.size, y.base_data, st.buf(x), st.layout(table), np.int64(y.size),
                raw_value)
    return y
