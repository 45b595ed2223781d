"""Shapes, data movement, Pad and Resize of the torch op table."""

from __future__ import annotations

import math
from typing import Any

import torch

from .common import floats, host_values, iinfo, ints, norm_axis


# --------------------------------------------------------------------------- shapes

def reshape(x: Any, shape: Any, allowzero: int = 0) -> Any:
    target = ints(shape)
    if not allowzero:  # 0 copies the input's dimension
        target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
    return x.reshape(target)


def flatten(x: Any, axis: int = 1) -> Any:
    axis = axis + x.ndim if axis < 0 else axis
    if not 0 <= axis <= x.ndim:
        raise ValueError(f"Flatten axis {axis} is out of range for rank {x.ndim}")
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


def squeeze(x: Any, axes: Any = None) -> Any:
    if axes is None:
        return x.reshape([d for d in x.shape if d != 1])
    drop = {norm_axis(a, x.ndim) for a in ints(axes)}
    for a in drop:
        if x.shape[a] != 1:
            raise ValueError(f"Squeeze axis {a} has size {x.shape[a]}, not 1")
    return x.reshape([d for i, d in enumerate(x.shape) if i not in drop])


def unsqueeze(x: Any, axes: Any) -> Any:
    found = ints(axes)
    rank = x.ndim + len(found)
    new = {norm_axis(a, rank) for a in found}
    dims = iter(x.shape)
    return x.reshape([1 if i in new else next(dims) for i in range(rank)])


def transpose(x: Any, perm: Any = None) -> Any:
    return x.permute(list(perm) if perm is not None else list(range(x.ndim))[::-1])


def expand(x: Any, shape: Any) -> Any:
    return x.expand(torch.broadcast_shapes(x.shape, tuple(ints(shape))))


def shape_of(x: Any, start: int = 0, end: int | None = None) -> Any:
    return torch.tensor(list(x.shape)[start:end], dtype=torch.int64, device=x.device)


def concat(*inputs: Any, axis: int) -> Any:
    return torch.cat(inputs, dim=norm_axis(axis, inputs[0].ndim))


def slice_(x: Any, starts: Any, ends: Any, axes: Any = None, steps: Any = None) -> Any:
    """ONNX Slice: starts and ends clamped per the step's sign; positive steps are a view,
    negative ones a gather (torch slices have no negative steps)."""
    starts, ends = ints(starts), ints(ends)
    axes = [norm_axis(a, x.ndim) for a in ints(axes)] if axes is not None else \
        list(range(len(starts)))
    steps = ints(steps) if steps is not None else [1] * len(starts)
    index: list[Any] = [slice(None)] * x.ndim
    gathers = []
    for a, start, end, step in zip(axes, starts, ends, steps):
        n = x.shape[a]
        if step == 0:
            raise ValueError("Slice step must not be 0")
        start = start + n if start < 0 else start
        end = end + n if end < 0 else end
        if step > 0:
            index[a] = slice(min(max(start, 0), n), min(max(end, 0), n), step)
        else:
            start, end = min(max(start, 0), n - 1), min(max(end, -1), n - 1)
            gathers.append((a, range(start, end, step)))
    y = x[tuple(index)]
    for a, positions in gathers:
        idx = torch.tensor(list(positions), dtype=torch.int64, device=x.device)
        y = y.index_select(a, idx)
    return y


def gather(x: Any, indices: Any, axis: int = 0) -> Any:
    """Gather with negative indices. Out-of-range indices raise here: on a GPU they would
    be a device-side assert that poisons the whole context."""
    axis = norm_axis(axis, x.ndim)
    n = x.shape[axis]
    idx = indices.to(torch.int64).reshape(-1)
    if idx.numel() and bool(((idx < -n) | (idx >= n)).any()):
        bad = idx[(idx < -n) | (idx >= n)][0].item()
        raise IndexError(f"Gather index {bad} is out of range for axis {axis} of size {n}")
    idx = torch.where(idx < 0, idx + n, idx)
    y = x.index_select(axis, idx)
    return y.reshape(x.shape[:axis] + indices.shape + x.shape[axis + 1:])


def pad(x: Any, pads: Any, constant_value: Any = None, axes: Any = None,
        mode: str = "constant") -> Any:
    """ONNX Pad on any axes, any element type: negative pads crop first; constant mode
    writes the input into a filled tensor, edge/reflect/wrap gather along each axis."""
    p = ints(pads)
    rank = x.ndim
    on = [norm_axis(a, rank) for a in ints(axes)] if axes is not None else list(range(rank))
    if len(p) != 2 * len(on):
        raise ValueError(f"Pad has {len(p)} pads for {len(on)} axes")
    begins, ends = [0] * rank, [0] * rank
    for i, a in enumerate(on):
        begins[a], ends[a] = p[i], p[len(on) + i]
    for a in range(rank):  # crop
        lo, hi = max(-begins[a], 0), x.shape[a] - max(-ends[a], 0)
        if lo or hi != x.shape[a]:
            x = x.narrow(a, lo, max(hi - lo, 0))
    begins, ends = [max(b, 0) for b in begins], [max(e, 0) for e in ends]
    if not any(begins) and not any(ends):
        return x
    if mode == "constant":
        shape = [d + b + e for d, b, e in zip(x.shape, begins, ends)]
        if constant_value is not None and constant_value.numel():
            out = constant_value.reshape(()).to(x.dtype).expand(shape).contiguous()
        else:
            out = torch.zeros(shape, dtype=x.dtype, device=x.device)
        out[tuple(slice(b, b + d) for b, d in zip(begins, x.shape))] = x
        return out
    for a in range(rank):
        if not (begins[a] or ends[a]):
            continue
        n = x.shape[a]
        i = torch.arange(-begins[a], n + ends[a], device=x.device)
        if mode == "edge":
            i = i.clamp(0, n - 1)
        elif mode == "wrap":
            i = torch.remainder(i, n)
        elif mode == "reflect":
            if n == 1:
                i = torch.zeros_like(i)
            else:
                i = torch.remainder(i, 2 * n - 2)
                i = torch.where(i >= n, 2 * n - 2 - i, i)
        else:
            raise ValueError(f"Pad mode {mode!r} is not one of constant, edge, reflect, wrap")
        x = x.index_select(a, i)
    return x


# --------------------------------------------------------------------------- Resize

def _resize_axis(x: Any, t: Any, axis: int, nearest: bool) -> Any:
    """Resample one axis (Resize is separable) by the taps ``t`` of
    :func:`backplane.ops.resize.taps`: a selection for nearest mode, else a gather and a
    weighted sum on the device in ``x``'s type."""
    if nearest:  # a selection, exact in every type (and inf * 0 never meets NaN)
        return x.index_select(axis, torch.from_numpy(t.nearest()).to(x.device))
    shape = list(x.shape)
    shape[axis:axis + 1] = list(t.index.shape)
    g = x.index_select(axis, torch.from_numpy(t.index.reshape(-1)).to(x.device)).reshape(shape)
    w = torch.from_numpy(t.weight).to(device=x.device, dtype=x.dtype)
    w = w.reshape((1,) * axis + tuple(w.shape) + (1,) * (x.ndim - axis - 1))
    return (g * w).sum(axis + 1)


def resize(x: Any, roi: Any = None, scales: Any = None, sizes: Any = None, antialias: int = 0,
           axes: Any = None, coordinate_transformation_mode: str = "half_pixel",
           cubic_coeff_a: float = -0.75, exclude_outside: int = 0,
           extrapolation_value: float = 0.0, keep_aspect_ratio_policy: str = "stretch",
           mode: str = "nearest", nearest_mode: str = "round_prefer_floor") -> Any:
    """ONNX Resize, every mode and coordinate transformation, any rank: per axis, the
    source taps and weights computed in float64 on the host as onnx.reference does
    (:mod:`backplane.ops.resize`), then a gather and a weighted sum on the device in the
    input's type. Integer inputs of linear and cubic modes are weighted in float64 and
    rounded back with saturation."""
    # on use only: the op registry reads its schema tables when first asked
    from backplane.ops import resize as resize_math

    want = ints(sizes) if sizes is not None and sizes.numel() else None
    given, exact = host_values(scales) if want is None else (None, True)
    planned = resize_math.plan(list(x.shape), axes, floats(roi) if roi is not None else None,
                               given, want, keep_aspect_ratio_policy, exact)
    exact_types = not x.is_floating_point() and mode != "nearest"
    work = x.double() if exact_types else x
    outside_masks = []
    for ax in planned:
        a, n_in = ax.axis, work.shape[ax.axis]
        if ax.size == 0 or n_in == 0:
            shape = list(work.shape)
            shape[a] = ax.size
            work = work.new_empty(shape)
            continue
        t = resize_math.taps(n_in, ax, mode, coordinate_transformation_mode, nearest_mode,
                             antialias, cubic_coeff_a, exclude_outside)
        work = _resize_axis(work, t, a, mode == "nearest")
        if t.outside is not None and t.outside.any():
            outside_masks.append((a, torch.from_numpy(t.outside).to(work.device)))
    for a, outside in outside_masks:
        mask = outside.reshape((1,) * a + (-1,) + (1,) * (x.ndim - a - 1))
        work = torch.where(mask, torch.tensor(extrapolation_value, dtype=work.dtype,
                                              device=work.device), work)
    if exact_types:
        info = iinfo(x.dtype)
        work = torch.round(work).clamp(info.min, info.max).to(x.dtype)
    return work
