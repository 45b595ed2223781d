"""Resize on the NEON kernels. Resize is separable: per axis, the taps and weights of each
output position come from the sizes alone (:mod:`backplane.ops.resize`, in float64, as
onnx.reference defines them); nearest is then a gather (numpy, exact in every type), and
linear and cubic a weighted sum over the data (``resample`` in kernels/neon/resample.c).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from backplane.ops import resize as resize_math

from .ops.common import dense, dt, ints


def _resize_axis(rt: Any, x: Any, t: Any, axis: int, nearest: bool) -> Any:
    """Resample one axis of ``x`` by the taps ``t`` of :func:`backplane.ops.resize.taps`."""
    if nearest:  # a selection: exact in every type
        return np.take(x, t.nearest(), axis=axis)
    x = dense(x)
    n_out, taps = t.index.shape
    outer = int(np.prod(x.shape[:axis], dtype=np.int64))
    inner = int(np.prod(x.shape[axis + 1:], dtype=np.int64))
    out = np.empty(x.shape[:axis] + (n_out,) + x.shape[axis + 1:], x.dtype)
    if out.size:
        rt.call("resample", [x, dense(t.index), dense(t.weight.astype(np.float32))], [out],
                (dt(x), outer, x.shape[axis], inner, n_out, taps))
    return out


def resize(rt: Any, x: Any, roi: Any = None, scales: Any = None, sizes: Any = None,
           antialias: int = 0, axes: Any = None,
           coordinate_transformation_mode: str = "half_pixel", cubic_coeff_a: float = -0.75,
           exclude_outside: int = 0, extrapolation_value: float = 0.0,
           keep_aspect_ratio_policy: str = "stretch", mode: str = "nearest",
           nearest_mode: str = "round_prefer_floor") -> Any:
    """ONNX Resize, every mode and coordinate transformation, any rank."""
    def values(a: Any) -> Any:
        return None if a is None else np.asarray(a).reshape(-1).tolist()

    planned = resize_math.plan(x.shape, [int(a) for a in axes] if axes is not None else None,
                               values(roi), values(scales),
                               ints(sizes) if sizes is not None else None,
                               keep_aspect_ratio_policy)
    work, outside_masks = x, []
    for ax in planned:
        a, n_in = ax.axis, work.shape[ax.axis]
        if ax.size == 0 or n_in == 0:
            work = np.empty(work.shape[:a] + (ax.size,) + work.shape[a + 1:], work.dtype)
            continue
        t = resize_math.taps(n_in, ax, mode, coordinate_transformation_mode, nearest_mode,
                             antialias, cubic_coeff_a, exclude_outside)
        work = _resize_axis(rt, work, t, a, mode == "nearest")
        if t.outside is not None and t.outside.any():
            outside_masks.append((a, t.outside))
    for a, outside in outside_masks:  # tf_crop_and_resize: a selection, no arithmetic
        mask = outside.reshape((1,) * a + (-1,) + (1,) * (x.ndim - a - 1))
        work = np.where(mask, np.asarray(extrapolation_value, work.dtype), work)
    return np.array(work, copy=True) if work is x else work
