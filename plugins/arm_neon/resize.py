"""Resize on the NEON kernels. Resize is separable: per axis, the taps and weights of each
output position come from the sizes alone (computed here in float64, as onnx.reference
defines them: coordinate transformations, nearest modes, linear and cubic with
antialiasing, exclude_outside); nearest is then a gather (numpy, exact in every type), and
linear and cubic a weighted sum over the data (``resample`` in kernels/neon/resample.c).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .ops import _axis, _dense, _dt, _ints


def _coordinates(ctm: str, y: Any, scale: float, n_in: int, out_w: float, n_out: int,
                 roi: tuple[float, float] | None) -> tuple[Any, Any]:
    """Source coordinate of each output index, and (tf_crop_and_resize) which fall outside."""
    outside = None
    if ctm == "align_corners":
        x = np.zeros_like(y) if out_w == 1 else y * (n_in - 1) / (out_w - 1)
    elif ctm == "asymmetric":
        x = y / scale
    elif ctm == "tf_crop_and_resize":
        lo, hi = roi if roi is not None else (0.0, 1.0)
        x = np.full_like(y, (hi - lo) * (n_in - 1) / 2) if out_w == 1 else \
            y * (hi - lo) * (n_in - 1) / (out_w - 1)
        x = x + lo * (n_in - 1)
        outside = (x < 0) | (x > n_in - 1)
    elif ctm == "pytorch_half_pixel":
        x = np.full_like(y, -0.5) if out_w == 1 else (y + 0.5) / scale - 0.5
    elif ctm == "half_pixel":
        x = (y + 0.5) / scale - 0.5
    elif ctm == "half_pixel_symmetric":
        x = n_in / 2 * (1 - n_out / out_w) + (y + 0.5) / scale - 0.5
    else:
        raise ValueError(f"unknown coordinate_transformation_mode {ctm!r}")
    return x, outside


def _coefficients(mode: str, ratio: Any, scale: float, antialias: int, cubic_a: float,
                  nearest_mode: str) -> Any:
    """[outputs, taps] interpolation weights per mode."""
    if mode == "nearest":
        whole = ratio == 1.0
        up = {"round_prefer_floor": ratio > 0.5, "round_prefer_ceil": ratio >= 0.5,
              "floor": np.zeros_like(whole), "ceil": np.ones_like(whole)}[nearest_mode]
        up = (up | whole).astype(np.float64)
        return np.stack([1 - up, up], -1)
    s = min(scale, 1.0) if antialias else 1.0
    if mode == "linear":
        if not antialias:
            return np.stack([1 - ratio, ratio], -1)
        start = int(math.floor(-1 / s) + 1)
        taps = np.arange(start, 2 - start, dtype=np.float64)
        c = np.clip(1 - np.abs((taps[None, :] - ratio[:, None]) * s), 0, 1)
        return c / c.sum(-1, keepdims=True)
    if mode == "cubic":
        a = cubic_a
        start = int(math.floor(-2 / s) + 1) if antialias else -1
        taps = np.arange(start, 2 - start, dtype=np.float64)
        t = np.abs((taps[None, :] - ratio[:, None]) * s)
        c = np.where(t <= 1, ((a + 2) * t - (a + 3)) * t * t + 1,
                     np.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0.0))
        return c / c.sum(-1, keepdims=True) if antialias else c
    raise ValueError(f"unknown Resize mode {mode!r}")


def _resize_axis(rt: Any, x: Any, axis: int, scale: float, n_out: int, roi: Any, mode: str,
                 ctm: str, nearest_mode: str, antialias: int, cubic_a: float,
                 exclude_outside: int) -> tuple[Any, Any]:
    n_in = x.shape[axis]
    if n_out == 0 or n_in == 0:
        shape = list(x.shape)
        shape[axis] = n_out
        return np.empty(shape, x.dtype), None
    y = np.arange(n_out, dtype=np.float64)
    x_ori, outside = _coordinates(ctm, y, scale, n_in, scale * n_in, n_out, roi)
    base = np.floor(x_ori)
    ratio = np.where(x_ori == base, 1.0, x_ori - base)
    coeffs = _coefficients(mode, ratio, scale, antialias, cubic_a, nearest_mode)
    taps = coeffs.shape[-1]
    # the taps nearest x_ori, ties to the smaller index (onnx.reference's neighbours)
    pad = (taps + 1) // 2
    xp = x_ori + pad
    p = np.floor(xp)
    frac = xp - p
    if taps % 2 == 0:
        offset = np.where(frac == 0, -(taps // 2), -(taps // 2) + 1)
    else:
        offset = np.where(frac <= 0.5, -((taps - 1) // 2), -((taps - 1) // 2) + 1)
    idx = (p.astype(np.int64) + offset)[:, None] + np.arange(taps)[None, :] - pad
    if exclude_outside:
        coeffs = np.where((idx < 0) | (idx >= n_in), 0.0, coeffs)
        total = coeffs.sum(-1, keepdims=True)
        coeffs = coeffs / np.where(total == 0, 1.0, total)
    idx = np.clip(idx, 0, n_in - 1)
    if mode == "nearest":  # a selection: exact in every type
        pick = np.take_along_axis(idx, coeffs.argmax(-1)[:, None], 1).reshape(-1)
        return np.take(x, pick, axis=axis), outside
    x = _dense(x)
    outer = int(np.prod(x.shape[:axis], dtype=np.int64))
    inner = int(np.prod(x.shape[axis + 1:], dtype=np.int64))
    out = np.empty(x.shape[:axis] + (n_out,) + x.shape[axis + 1:], x.dtype)
    if out.size:
        rt.call("resample", [x, _dense(idx), _dense(coeffs.astype(np.float32))], [out],
                (_dt(x), outer, n_in, inner, n_out, taps))
    return out, outside


def resize(rt: Any, x: Any, roi: Any = None, scales: Any = None, sizes: Any = None,
           antialias: int = 0, axes: Any = None,
           coordinate_transformation_mode: str = "half_pixel", cubic_coeff_a: float = -0.75,
           exclude_outside: int = 0, extrapolation_value: float = 0.0,
           keep_aspect_ratio_policy: str = "stretch", mode: str = "nearest",
           nearest_mode: str = "round_prefer_floor") -> Any:
    rank = x.ndim
    ax = [_axis(int(a), rank) for a in axes] if axes is not None else list(range(rank))
    roi_v = [float(v) for v in np.asarray(roi).reshape(-1)] if roi is not None and \
        np.asarray(roi).size else None
    full_roi = None
    if roi_v is not None:
        full_roi = [0.0] * rank + [1.0] * rank
        for i, a in enumerate(ax):
            full_roi[a], full_roi[rank + a] = roi_v[i], roi_v[len(ax) + i]
    shape = list(x.shape)
    if sizes is not None and np.asarray(sizes).size:
        want = _ints(sizes)
        out = list(shape)
        for i, a in enumerate(ax):
            out[a] = want[i]
        factors = [out[i] / shape[i] if shape[i] else 1.0 for i in range(rank)]
        if keep_aspect_ratio_policy != "stretch":
            chosen = [factors[a] for a in ax]
            f = min(chosen) if keep_aspect_ratio_policy == "not_larger" else max(chosen)
            factors = [f if i in ax else 1.0 for i in range(rank)]
            out = [int(f * shape[i] + 0.5) if i in ax else shape[i] for i in range(rank)]
    else:
        given = [float(v) for v in np.asarray(scales).reshape(-1)]
        factors = [1.0] * rank
        for i, a in enumerate(ax):
            factors[a] = given[i]
        out = [int(n * f) for n, f in zip(shape, factors)]
    work, outside_masks = x, []
    for a in ax:
        r = None if full_roi is None else (full_roi[a], full_roi[rank + a])
        if (math.isclose(factors[a], 1.0) and out[a] == work.shape[a]
                and (r is None or (math.isclose(r[0], 0.0) and math.isclose(r[1], 1.0)))):
            continue
        work, outside = _resize_axis(rt, work, a, factors[a], out[a], r, mode,
                                     coordinate_transformation_mode, nearest_mode, antialias,
                                     cubic_coeff_a, exclude_outside)
        if outside is not None and outside.any():
            outside_masks.append((a, outside))
    for a, outside in outside_masks:  # tf_crop_and_resize: a selection, no arithmetic
        mask = outside.reshape((1,) * a + (-1,) + (1,) * (rank - a - 1))
        work = np.where(mask, np.asarray(extrapolation_value, work.dtype), work)
    return np.array(work, copy=True) if work is x else work
