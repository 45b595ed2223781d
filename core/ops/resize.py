"""Resize's arithmetic on sizes and coordinates, shared by the kernels that implement it.

ONNX Resize is separable: each axis is resampled on its own, and which source elements an
output position reads (its taps), and with which weights, follow from the axis's sizes and
the node's attributes alone, never from the data. This module computes them as
onnx.reference defines them, in numpy float64: :func:`plan` picks the axes to resample,
with each one's scale, output size and region of interest; :func:`taps` gives an axis's
tap indices and weights, one row per output position (coordinate transformation modes,
nearest modes, linear and cubic with antialiasing, ``exclude_outside``, and the positions
``tf_crop_and_resize`` puts outside the input). The arrays are small, so every backend
computes them here on the host and applies them with its own arithmetic: a selection by
:meth:`Taps.nearest` for nearest mode, a weighted sum over :attr:`Taps.index` for linear
and cubic, and ``extrapolation_value`` where :attr:`Taps.outside` is set.

Nothing in the package imports this module: kernels import it when they run, so
``import backplane.ops`` still imports no numpy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Axis:
    """One axis that Resize resamples."""

    #: The axis, counted from 0.
    axis: int
    #: The scale factor (output size over input size, or as given).
    scale: float
    #: The output size along the axis.
    size: int
    #: The region of interest along the axis, (start, end) as fractions of the input, or
    #: None where the node gives none.
    roi: tuple[float, float] | None


@dataclass(frozen=True)
class Taps:
    """Where each output position along one axis reads from, and with which weights."""

    #: [outputs, taps] int64 source indices, clamped into the input.
    index: np.ndarray
    #: [outputs, taps] float64 weights (zero where ``exclude_outside`` drops a tap).
    weight: np.ndarray
    #: [outputs] bool, the positions that take ``extrapolation_value``
    #: (``tf_crop_and_resize``), or None where none can.
    outside: np.ndarray | None

    def nearest(self) -> np.ndarray:
        """[outputs] int64: the one source index per output position (nearest mode)."""
        return np.take_along_axis(self.index, self.weight.argmax(-1)[:, None], 1).reshape(-1)


def _output_sizes(shape: Sequence[int], scales: Sequence[float], exact: bool) -> list[int]:
    """Output sizes floor(size * scale). Scales that are not exact (a graph input that a
    reduced-precision run lowered to fp16 or bf16 with every other float32 value) lost
    their low bits: a product within that rounding of an integer is that integer, the size
    the graph was inferred with."""
    out = []
    for n, s in zip(shape, scales):
        v = n * s
        near = round(v)
        out.append(near if not exact and abs(v - near) <= abs(v) * 2 ** -7 else int(v))
    return out


def plan(shape: Sequence[int], axes: Sequence[int] | None, roi: Sequence[float] | None,
         scales: Sequence[float] | None, sizes: Sequence[int] | None,
         keep_aspect_ratio_policy: str = "stretch", exact_scales: bool = True) -> list[Axis]:
    """The axes a Resize node resamples, in order.

    ``shape`` is the input's shape; ``axes`` the node's attribute (None: every axis);
    ``roi``, ``scales`` and ``sizes`` the values of its inputs, None or empty where it
    leaves them out (``sizes`` wins over ``scales`` when both are given);
    ``keep_aspect_ratio_policy`` the attribute; ``exact_scales`` False where the scales
    went through a reduced-precision type, so that output sizes are rounded back to the
    integers they stood for. An axis whose scale is 1, size unchanged and region of
    interest whole is left out: it would copy its input.
    """
    rank = len(shape)
    bound = max(rank, 1)
    if axes is None:
        ax = list(range(rank))
    else:
        ax = []
        for a in axes:
            if not -bound <= int(a) < bound:
                raise ValueError(f"Resize axis {a} is out of range for rank {rank}")
            ax.append(int(a) % rank if rank else 0)
    full_roi = None
    if roi is not None and len(roi):
        full_roi = [0.0] * rank + [1.0] * rank
        for i, a in enumerate(ax):
            full_roi[a], full_roi[rank + a] = float(roi[i]), float(roi[len(ax) + i])
    shape = list(shape)
    if sizes is not None and len(sizes):
        out = list(shape)
        for i, a in enumerate(ax):
            out[a] = int(sizes[i])
        factors = [out[i] / shape[i] if shape[i] else 1.0 for i in range(rank)]
        if keep_aspect_ratio_policy != "stretch":
            chosen = [factors[a] for a in ax]
            s = min(chosen) if keep_aspect_ratio_policy == "not_larger" else max(chosen)
            factors = [s if i in ax else 1.0 for i in range(rank)]
            out = [int(s * shape[i] + 0.5) if i in ax else shape[i] for i in range(rank)]
    else:
        factors = [1.0] * rank
        for i, a in enumerate(ax):
            factors[a] = float(scales[i])
        out = _output_sizes(shape, factors, exact_scales)
    planned = []
    for a in ax:
        r = None if full_roi is None else (full_roi[a], full_roi[rank + a])
        if (math.isclose(factors[a], 1.0) and out[a] == shape[a]
                and (r is None or (math.isclose(r[0], 0.0) and math.isclose(r[1], 1.0)))):
            continue
        planned.append(Axis(a, factors[a], out[a], r))
    return planned


def _coordinates(ctm: str, y: np.ndarray, scale: float, n_in: int, n_out: int,
                 roi: tuple[float, float] | None) -> tuple[np.ndarray, np.ndarray | None]:
    """Source coordinate of each output index per ``coordinate_transformation_mode``, and
    for tf_crop_and_resize which of them fall outside the input (else None)."""
    out_w = scale * n_in
    outside = None
    if ctm == "align_corners":
        x = np.zeros_like(y) if out_w == 1 else y * (n_in - 1) / (out_w - 1)
    elif ctm == "asymmetric":
        x = y / scale
    elif ctm == "tf_crop_and_resize":
        lo, hi = roi if roi is not None else (0.0, 1.0)
        if out_w == 1:
            x = np.full_like(y, (hi - lo) * (n_in - 1) / 2)
        else:
            x = y * (hi - lo) * (n_in - 1) / (out_w - 1)
        x = x + lo * (n_in - 1)
        outside = (x < 0) | (x > n_in - 1)
    elif ctm == "pytorch_half_pixel":
        x = np.full_like(y, -0.5) if out_w == 1 else (y + 0.5) / scale - 0.5
    elif ctm == "half_pixel":
        x = (y + 0.5) / scale - 0.5
    elif ctm == "half_pixel_symmetric":
        offset = n_in / 2 * (1 - n_out / out_w)
        x = offset + (y + 0.5) / scale - 0.5
    else:
        raise ValueError(f"unknown coordinate_transformation_mode {ctm!r}")
    return x, outside


def _coefficients(mode: str, ratio: np.ndarray, scale: float, antialias: int,
                  cubic_a: float, nearest_mode: str) -> np.ndarray:
    """[outputs, taps] interpolation weights, as onnx.reference defines them per mode."""
    if mode == "nearest":
        integer = ratio == 1.0
        if nearest_mode == "round_prefer_floor":
            up = ratio > 0.5
        elif nearest_mode == "round_prefer_ceil":
            up = ratio >= 0.5
        elif nearest_mode == "floor":
            up = np.zeros_like(integer)
        elif nearest_mode == "ceil":
            up = np.ones_like(integer)
        else:
            raise ValueError(f"unknown nearest_mode {nearest_mode!r}")
        up = (up | integer).astype(np.float64)
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


def taps(n_in: int, axis: Axis, mode: str = "nearest",
         coordinate_transformation_mode: str = "half_pixel",
         nearest_mode: str = "round_prefer_floor", antialias: int = 0,
         cubic_coeff_a: float = -0.75, exclude_outside: int = 0) -> Taps:
    """The taps and weights of every output position along ``axis``, for an input of
    ``n_in`` elements along it (``n_in`` and ``axis.size`` both positive); the other
    parameters are the Resize node's attributes of those names. The taps of a position
    are the ones nearest its source coordinate, ties to the smaller index, as
    onnx.reference picks its neighbours; those past either end are clamped to it (and
    weigh nothing with ``exclude_outside``)."""
    y = np.arange(axis.size, dtype=np.float64)
    x_ori, outside = _coordinates(coordinate_transformation_mode, y, axis.scale, n_in,
                                  axis.size, axis.roi)
    base = np.floor(x_ori)
    ratio = np.where(x_ori == base, 1.0, x_ori - base)
    coeffs = _coefficients(mode, ratio, axis.scale, antialias, cubic_coeff_a, nearest_mode)
    width = coeffs.shape[-1]
    pad = (width + 1) // 2
    xp = x_ori + pad
    p = np.floor(xp)
    frac = xp - p
    if width % 2 == 0:
        offset = np.where(frac == 0, -(width // 2), -(width // 2) + 1)
    else:
        offset = np.where(frac <= 0.5, -((width - 1) // 2), -((width - 1) // 2) + 1)
    idx = (p.astype(np.int64) + offset)[:, None] + np.arange(width)[None, :] - pad
    if exclude_outside:
        coeffs = np.where((idx < 0) | (idx >= n_in), 0.0, coeffs)
        total = coeffs.sum(-1, keepdims=True)
        coeffs = coeffs / np.where(total == 0, 1.0, total)
    return Taps(np.clip(idx, 0, n_in - 1), coeffs, outside)
