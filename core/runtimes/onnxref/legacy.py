"""Kernels for the op versions onnx.reference (1.23) gets wrong or lacks, and the ops it lacks.

onnx.reference keys its kernels by op name, and fills every attribute a node leaves unset
with the default of the op's *newest* schema; so a kernel written for one version runs every
other version too, with the newer defaults. Each class here takes over only the versions
(or the inputs) its docstring names and hands everything else to onnx.reference's own
kernel for the node's version (:class:`Replacement`). The list of what each one fixes, and
why, is in ``fixes.py``'s docstring; the tests are in tests/test_reference_fixes.py.

Imported only when the reference evaluator is built (it imports onnx.reference).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import onnx
from onnx import helper
from onnx.reference.op_run import OpRun
from onnx.reference.ops.op_grid_sample import GridSample as _GridSample
from onnx.reference.ops.op_one_hot import OneHot as _OneHot
from onnx.reference.ops.op_roi_align import RoiAlign as _RoiAlign


@functools.lru_cache(maxsize=None)
def _since(domain: str, op: str, opset: int) -> int:
    try:
        return onnx.defs.get_schema(op, opset, domain).since_version
    except Exception:  # an op this onnx does not define at that opset: no version
        return 0


def opset_of(node: Any, run_params: dict[str, Any]) -> int:
    """The opset the graph imports for ``node``'s domain."""
    domain = "" if node.domain == "ai.onnx" else node.domain
    opsets = run_params.get("opsets") or {}
    return int(opsets.get(domain) or opsets.get("ai.onnx" if domain == "" else domain) or 0)


def op_version(node: Any, run_params: dict[str, Any]) -> int:
    """The version of ``node``'s op (its schema's ``since_version``) at the graph's opset."""
    domain = "" if node.domain == "ai.onnx" else node.domain
    return _since(domain, node.op_type, opset_of(node, run_params))


class Replacement(OpRun):
    """onnx.reference's kernel for the node's version, except where :meth:`takes` says this
    class computes the op itself (:meth:`replacement`)."""

    op_domain = ""
    #: The op versions replaced; empty: every version.
    replaced: ClassVar[frozenset[int]] = frozenset()

    def __init__(self, onnx_node: Any, run_params: dict[str, Any]):
        super().__init__(onnx_node, run_params)
        self.version = op_version(onnx_node, run_params)
        self.original = None
        if not self.takes():
            import inspect

            from onnx.reference.ops import load_op

            self.original = load_op(self.op_domain, onnx_node.op_type,
                                    opset_of(onnx_node, run_params))(onnx_node, run_params)
            # The attributes its own _run takes (some read them from self instead).
            params = inspect.signature(self.original._run).parameters.values()
            self._takes_all = any(p.kind == p.VAR_KEYWORD for p in params)
            self._keywords = {p.name for p in params}

    def takes(self) -> bool:
        """Whether this node is computed here rather than by onnx.reference."""
        return not self.replaced or self.version in self.replaced

    def attr(self, name: str, default: Any = None) -> Any:
        """The node's own attribute ``name``, else ``default`` (not the newest schema's
        default, which onnx.reference would supply)."""
        for a in self.onnx_node.attribute:
            if a.name == name:
                value = helper.get_attribute_value(a)
                if isinstance(value, list):
                    return [v.decode() if isinstance(v, bytes) else v for v in value]
                return value.decode() if isinstance(value, bytes) else value
        return default

    def _run(self, *args: Any, **kwargs: Any) -> tuple:
        if self.original is not None:
            if not self._takes_all:
                kwargs = {k: v for k, v in kwargs.items() if k in self._keywords}
            return self.original._run(*args, **kwargs)
        return self.replacement(*args)

    def replacement(self, *args: Any) -> tuple:  # pragma: no cover - each subclass has one
        """The op, computed here."""
        raise NotImplementedError


# --------------------------------------------------------------------------- normalization


class BatchNormalization(Replacement):
    """Versions 7 and 9. onnx.reference runs version 7 as version 6 (training mode, and a
    tuple it cannot return) and version 9 in training mode whenever ``momentum`` is set,
    which its defaults always do. In these versions the mode is the number of outputs: one
    output is test mode (normalize with the given mean and variance); the five outputs of
    training mode normalize with the batch's own statistics and return the running mean
    and variance (``input * momentum + batch * (1 - momentum)``) and the batch's mean and
    variance (population variance). Version 7's ``spatial=0`` takes statistics per
    activation: parameters of shape (C, D1, ...)."""

    replaced = frozenset({7, 9})

    def replacement(self, x: np.ndarray, scale: np.ndarray, b: np.ndarray, mean: np.ndarray,
                    var: np.ndarray) -> tuple:
        eps, momentum = self.attr("epsilon", 1e-5), self.attr("momentum", 0.9)
        spatial = self.attr("spatial", 1) if self.version == 7 else 1
        outputs = list(self.onnx_node.output)
        shape = (1, -1) + (1,) * (x.ndim - 2) if spatial else (1, *scale.shape)
        p = [np.asarray(v, np.float64).reshape(shape) for v in (scale, b, mean, var)]
        x64 = x.astype(np.float64)
        if not any(outputs[1:]):  # test mode
            return (((x64 - p[2]) / np.sqrt(p[3] + eps) * p[0] + p[1]).astype(x.dtype),)
        axes = (0, *range(2, x.ndim)) if spatial else (0,)
        batch_mean, batch_var = x64.mean(axis=axes), x64.var(axis=axes)
        m, v = batch_mean.reshape(shape), batch_var.reshape(shape)
        y = (x64 - m) / np.sqrt(v + eps) * p[0] + p[1]
        running = [p[2] * momentum + m * (1 - momentum), p[3] * momentum + v * (1 - momentum)]
        values = [y, *(r.reshape(mean.shape) for r in running), batch_mean.reshape(mean.shape),
                  batch_var.reshape(mean.shape)]
        return tuple(v.astype(x.dtype) for v in values[:len(outputs)])


class _Coerced(Replacement):
    """Versions 1 and 11: the input is coerced to 2-D at ``axis`` (default 1), rows
    ``prod(shape[:axis])`` by columns ``prod(shape[axis:])``, and the op runs over each
    row; onnx.reference runs version 13's single-axis op with version 13's default axis -1."""

    replaced = frozenset({1, 11})
    rows: ClassVar[Callable[[np.ndarray], np.ndarray]]

    def replacement(self, x: np.ndarray) -> tuple:
        axis = self.attr("axis", 1)
        axis = axis + x.ndim if axis < 0 else axis
        flat = x.astype(np.float64).reshape(math.prod(x.shape[:axis]), -1)
        with np.errstate(all="ignore"):
            return (type(self).rows(flat).reshape(x.shape).astype(x.dtype),)


def _softmax(rows: np.ndarray) -> np.ndarray:
    e = np.exp(rows - rows.max(axis=1, keepdims=True)) if rows.size else rows
    return e / e.sum(axis=1, keepdims=True)


def _hardmax(rows: np.ndarray) -> np.ndarray:
    out = np.zeros_like(rows)
    if rows.size:
        out[np.arange(rows.shape[0]), rows.argmax(axis=1)] = 1
    return out


class Softmax(_Coerced):
    __doc__ = _Coerced.__doc__
    rows = staticmethod(_softmax)


class LogSoftmax(_Coerced):
    __doc__ = _Coerced.__doc__
    rows = staticmethod(lambda r: np.log(_softmax(r)))


class Hardmax(_Coerced):
    __doc__ = _Coerced.__doc__
    rows = staticmethod(_hardmax)


# --------------------------------------------------------------------------- resampling


def resample(x: np.ndarray, out_shape: list[int], scales: list[float], mode: str,
             coordinate: Callable[[np.ndarray, float], np.ndarray],
             nearest: Callable[[np.ndarray, float], np.ndarray]) -> np.ndarray:
    """``x`` resampled axis by axis to ``out_shape``: each output index ``i`` reads input
    position ``coordinate(i, scale)``, rounded by ``nearest(position, scale)`` in mode
    ``nearest``, interpolated between its neighbours (clamped to the edges) in ``linear``."""
    if mode not in ("nearest", "linear"):
        raise NotImplementedError(f"resampling mode {mode!r}")
    y = x if mode == "nearest" else x.astype(np.float64)  # nearest copies, in any type
    for axis, (n_in, n_out, scale) in enumerate(zip(x.shape, out_shape, scales)):
        if n_out == n_in and scale == 1:
            continue
        pos = coordinate(np.arange(n_out, dtype=np.float64), float(scale))
        if mode == "nearest":
            y = np.take(y, np.clip(nearest(pos, scale), 0, n_in - 1).astype(np.intp), axis)
            continue
        pos = np.clip(pos, 0, n_in - 1)
        lo = np.floor(pos).astype(np.intp)
        hi = np.minimum(lo + 1, n_in - 1)
        w = (pos - lo).reshape((-1,) + (1,) * (x.ndim - axis - 1))
        y = np.take(y, lo, axis) * (1 - w) + np.take(y, hi, axis) * w
    if mode == "nearest":
        return y
    return (np.rint(y) if x.dtype.kind in "iu" else y).astype(x.dtype)


#: Resize's ``nearest_mode`` roundings.
NEAREST = {"round_prefer_floor": lambda p, s: np.ceil(p - 0.5),
           "round_prefer_ceil": lambda p, s: np.floor(p + 0.5),
           "floor": lambda p, s: np.floor(p), "ceil": lambda p, s: np.ceil(p)}


def _legacy(x: np.ndarray, scales: Any, mode: str) -> tuple[np.ndarray]:
    """Upsample-7/9 and Resize-10: output size ``floor(size * scale)``, input position
    ``i / scale``; nearest rounds up when shrinking and down when growing. The spec says
    neither; ONNX Runtime and OpenVINO both do this."""
    scales = [float(s) for s in np.ravel(scales)]
    out = [int(math.floor(n * s)) for n, s in zip(x.shape, scales)]
    return (resample(x, out, scales, mode, lambda i, s: i / s,
                     lambda p, s: np.ceil(p) if s < 1 else np.floor(p)),)


class Upsample(Replacement):
    """Versions 7 (``scales`` attribute) and 9 (``scales`` input): onnx.reference refuses
    the attribute, and runs only integer scales in mode nearest (see ``_legacy``)."""

    def replacement(self, x: np.ndarray, scales: Any = None) -> tuple:
        return _legacy(x, self.attr("scales") if scales is None else scales,
                       self.attr("mode", "nearest"))


class Resize(Replacement):
    """Version 10 (inputs X and scales; onnx.reference reads them as X and roi and fails)
    as Upsample-9; version 11's ``tf_half_pixel_for_nn`` coordinates (position
    ``(i + 0.5) / scale``, removed in 13), which onnx.reference refuses."""

    replaced = frozenset({10, 11})

    def takes(self) -> bool:  # noqa: D102 - see the class
        return self.version == 10 or (self.version == 11 and self.attr(
            "coordinate_transformation_mode") == "tf_half_pixel_for_nn")

    def replacement(self, x: np.ndarray, roi: Any = None, scales: Any = None,
                    sizes: Any = None) -> tuple:
        if self.version == 10:
            return _legacy(x, roi, self.attr("mode", "nearest"))
        if sizes is not None and np.size(sizes):
            out = [int(v) for v in np.ravel(sizes)]
            factors = [o / n for o, n in zip(out, x.shape)]
        else:
            factors = [float(s) for s in np.ravel(scales)]
            out = [int(math.floor(n * s)) for n, s in zip(x.shape, factors)]
        return (resample(x, out, factors, self.attr("mode", "nearest"),
                         lambda i, s: (i + 0.5) / s,
                         NEAREST[self.attr("nearest_mode", "round_prefer_floor")]),)


class RoiAlign(_RoiAlign):
    """Version 10 has no ``coordinate_transformation_mode``: it maps pixels as version 16's
    ``output_half_pixel``; onnx.reference applies version 16's default, ``half_pixel``."""

    op_domain = ""

    def __init__(self, onnx_node: Any, run_params: dict[str, Any]):
        super().__init__(onnx_node, run_params)
        if op_version(onnx_node, run_params) < 16:
            self.coordinate_transformation_mode = "output_half_pixel"


class GridSample(_GridSample):
    """Version 16 names its modes ``bilinear`` and ``bicubic``; onnx.reference knows only
    version 20's ``linear`` and ``cubic``."""

    op_domain = ""

    def _run(self, X: Any, grid: Any, mode: Any = None, padding_mode: Any = None,
             align_corners: Any = None) -> Any:
        mode = {"bilinear": "linear", "bicubic": "cubic"}.get(mode, mode)
        return super()._run(X, grid, mode=mode, padding_mode=padding_mode,
                            align_corners=align_corners)


# --------------------------------------------------------------------------- other ops


class OneHot(_OneHot):
    """``depth`` may be a one-element rank-1 tensor of any numeric type, and ``indices``
    non-integers, both cast to int64; onnx.reference takes neither."""

    op_domain = ""

    def _run(self, indices: Any, depth: Any, values: Any, axis: Any = None) -> Any:
        depth = np.asarray(depth).reshape(-1)[0].astype(np.int64)
        return super()._run(np.asarray(indices).astype(np.int64), depth, values, axis=axis)


class Scatter(Replacement):
    """Versions 9 and 11 (deprecated in 11): ScatterElements without reduction; missing
    from onnx.reference."""

    def replacement(self, data: np.ndarray, indices: np.ndarray, updates: np.ndarray) -> tuple:
        axis = self.attr("axis", 0)
        axis = axis + data.ndim if axis < 0 else axis
        where = list(np.indices(indices.shape, sparse=True))
        where[axis] = np.where(indices < 0, indices + data.shape[axis], indices)
        out = data.copy()
        out[tuple(where)] = updates
        return (out,)


class GlobalLpPool(Replacement):
    """Versions 2 and 22: ``(sum |x|^p)^(1/p)`` over the spatial axes; missing from
    onnx.reference."""

    def replacement(self, x: np.ndarray) -> tuple:
        p = float(self.attr("p", 2))
        axes = tuple(range(2, x.ndim))
        total = np.sum(np.abs(x.astype(np.float64)) ** p, axis=axes, keepdims=True)
        return ((total ** (1 / p)).astype(x.dtype),)


class MaxRoiPool(Replacement):
    """Versions 1 and 22: Fast R-CNN's RoI pooling (each RoI's corners scaled by
    ``spatial_scale`` and rounded, split into ``pooled_shape`` bins, the maximum of each
    bin, 0 for an empty bin); missing from onnx.reference."""

    def replacement(self, x: np.ndarray, rois: np.ndarray) -> tuple:
        ph, pw = self.attr("pooled_shape")
        scale = float(self.attr("spatial_scale", 1.0))
        height, width = x.shape[2:]
        out = np.zeros((rois.shape[0], x.shape[1], ph, pw), x.dtype)
        for r, (b, *corners) in enumerate(np.asarray(rois, np.float64)):
            x1, y1, x2, y2 = (math.floor(abs(c * scale) + 0.5) * (1 if c >= 0 else -1)
                              for c in corners)
            bin_h, bin_w = max(y2 - y1 + 1, 1) / ph, max(x2 - x1 + 1, 1) / pw
            for i in range(ph):
                h0 = min(max(math.floor(i * bin_h) + y1, 0), height)
                h1 = min(max(math.ceil((i + 1) * bin_h) + y1, 0), height)
                for j in range(pw):
                    w0 = min(max(math.floor(j * bin_w) + x1, 0), width)
                    w1 = min(max(math.ceil((j + 1) * bin_w) + x1, 0), width)
                    if h1 > h0 and w1 > w0:
                        out[r, :, i, j] = x[int(b), :, h0:h1, w0:w1].max(axis=(1, 2))
        return (out,)


class CategoryMapper(Replacement):
    """ai.onnx.ml version 1: strings to int64 by ``cats_strings``/``cats_int64s``, or back;
    missing from onnx.reference."""

    op_domain = "ai.onnx.ml"

    def replacement(self, x: np.ndarray) -> tuple:
        strings = self.attr("cats_strings", [])
        ints = list(self.attr("cats_int64s", []))
        if x.dtype.kind in "iu":
            table = dict(zip(ints, strings))
            default = self.attr("default_string", "_Unused")
            return (np.array([table.get(int(v), default) for v in x.ravel()],
                             dtype=object).reshape(x.shape),)
        table = dict(zip(strings, ints))
        default = self.attr("default_int64", -1)
        return (np.array([table.get(str(v), default) for v in x.ravel()],
                         np.int64).reshape(x.shape),)


#: The classes of this module, for ``fixes.fixed_ops``.
KERNELS = (BatchNormalization, Softmax, LogSoftmax, Hardmax, Upsample, Resize, RoiAlign,
           GridSample, OneHot, Scatter, GlobalLpPool, MaxRoiPool, CategoryMapper)
