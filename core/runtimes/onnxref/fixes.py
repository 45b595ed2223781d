"""Kernels that onnx.reference (1.23) gets wrong or lacks, replaced for the reference backend
and the conformance oracle alike, at every op version from opset 7 on.

Each replacement keeps onnx.reference's own kernel wherever that one is right and takes over
only where it is not (for the op versions, or the inputs, named below); every case is pinned
by a test in tests/test_reference_fixes.py against an independent formula or ONNX's recorded
node-test outputs, and ``python -m backplane.conformance.oracle_audit`` compares the result
with ONNX's recorded outputs, ONNX Runtime and OpenVINO (docs/conformance.md, "The oracle").
Note the root of several old-version defects: onnx.reference keys its kernels by op name and
fills a node's unset attributes with the defaults of the op's newest schema.

Here (``fixes.py``):

- Erf: ``np.vectorize(erf, otypes=["f"])`` rounds every result to float32, even in float64.
- MaxPool: asymmetric pads and SAME_LOWER give the wrong output shape; the ``Indices``
  output counts padding and ignores ``storage_order``; 1-D windows with pads fail; integer
  inputs are padded with NaN and fail.
- GlobalAveragePool: an empty batch divides by zero.
- Flatten: an empty input fails to reshape.
- Pad: negative pads (cropping) are refused; Pad-2's ``value`` attribute is honoured.
- MatMulInteger: a per-row ``a_zero_point`` is broadcast along columns.
- LayerNormalization: computes in the input's type, where ``stash_type=1`` asks for float32
  (a float16 or bfloat16 row of 1025 elements loses whole units).
- Softmax, reductions, pooling, MatMul, Gemm, Conv ... on float16 or bfloat16 accumulate in
  that type (a bfloat16 Softmax over 1025 elements is off by a third); they are run in
  float32 and rounded once, as every hardware backend accumulates.
- ConvTranspose: wrong for ``group > 1`` unless every group has one output channel, adds the
  first group's bias to every group, and fails on an empty batch. With ``output_shape`` the
  larger half of the total padding goes first (NOTSET, SAME_LOWER), by floor division, so a
  negative total adds its zeros at the end (the spec, ONNX's recorded test, ONNX Runtime and
  OpenVINO agree).
- DequantizeLinear: has no kernel for opsets 13 to 18 (only 19 and later); opset 21's
  kernel, a superset of the older semantics, runs every opset backplane accepts.

Old op versions (``legacy.py``):

- BatchNormalization 7 and 9 (opsets 7-13): test mode (one output) whatever ``momentum``
  says; onnx.reference ran 9 in training mode whenever momentum was set (its defaults
  always set it: 3.6% error per layer on a real detector) and 7 as version 6. Five outputs
  are training mode; version 7's ``spatial=0`` is honoured.
- Softmax, LogSoftmax, Hardmax 1 and 11: coerced to 2-D at ``axis``, default 1 (onnx.reference
  ran version 13's single axis, default -1).
- Upsample 7 and 9, Resize 10: nearest and linear at any scale (onnx.reference refused the
  attribute form, linear and fractional scales, and misread Resize-10's inputs); Resize-11's
  ``tf_half_pixel_for_nn``.
- RoiAlign 10: ``output_half_pixel`` pixel mapping (onnx.reference used 16's ``half_pixel``).
- GridSample 16: modes ``bilinear`` and ``bicubic`` (onnx.reference knew 20's names only).
- OneHot: a rank-1 ``depth`` and non-integer ``indices`` and ``depth`` (refused).
- Missing: Scatter (9, 11), GlobalLpPool, MaxRoiPool, ai.onnx.ml CategoryMapper.

Control flow (``control.py``): Loop scan outputs stacked on a new axis (were concatenated),
zero-trip loops, absent ``cond``; Scan at every version (8 was missing; reverse directions
and non-zero axes were refused); Optional holds its value (was wrapped in a list).

Recurrent ops (``recurrent.py``): RNN, GRU and LSTM with ``sequence_lens``, ``clip``,
``activations`` (with alpha and beta) or LSTM's ``input_forget``, all of which onnx.reference
ignores.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from backplane.ops import window_pads

_erf = np.frompyfunc(math.erf, 1, 1)


@functools.lru_cache(maxsize=None)
def fixed_ops() -> tuple[type, ...]:
    """The replacement kernels, as ``new_ops`` for ``onnx.reference.ReferenceEvaluator``."""
    from onnx.reference.op_run import OpRun
    from onnx.reference.ops.op_dequantize_linear import DequantizeLinear_21
    from onnx.reference.ops.op_flatten import Flatten as _Flatten
    from onnx.reference.ops.op_layer_normalization import _layer_normalization
    from onnx.reference.ops.op_max_pool import MaxPool as _MaxPool
    from onnx.reference.ops.op_pad import Pad_18

    class Erf(OpRun):
        op_domain = ""

        def _run(self, x: np.ndarray) -> tuple[np.ndarray]:
            if x.size == 0:
                return (x.copy(),)
            return (np.asarray(_erf(x), np.float64).astype(x.dtype),)

    class MaxPool(_MaxPool):
        op_domain = ""

        def _run(self, x: np.ndarray, auto_pad: Any = None, ceil_mode: Any = None,
                 dilations: Any = None, kernel_shape: Any = None, pads: Any = None,
                 storage_order: Any = None, strides: Any = None) -> tuple:
            nsp = x.ndim - 2
            want_indices = len(self.onnx_node.output) > 1 and bool(self.onnx_node.output[1])
            asymmetric = pads is not None and list(pads[:nsp]) != list(pads[nsp:])
            # (onnx.reference's skips NaN, and raises on a window of NaN only: found by fuzzing)
            if not (want_indices or asymmetric or auto_pad == "SAME_LOWER" or nsp == 1
                    or x.dtype.kind not in "f" or x.size == 0 or np.isnan(x).any()):
                return super()._run(x, auto_pad=auto_pad, ceil_mode=ceil_mode,
                                    dilations=dilations, kernel_shape=kernel_shape, pads=pads,
                                    storage_order=storage_order, strides=strides)
            y, indices = max_pool(x, list(kernel_shape), strides=strides, pads=pads,
                                  dilations=dilations, ceil_mode=ceil_mode or 0,
                                  auto_pad=auto_pad or "NOTSET",
                                  storage_order=storage_order or 0)
            return (y, indices) if want_indices else (y,)

    class GlobalAveragePool(OpRun):
        op_domain = ""

        def _run(self, x: np.ndarray) -> tuple[np.ndarray]:
            axes = tuple(range(2, x.ndim))
            with np.errstate(invalid="ignore"):
                return (np.mean(x, axis=axes, keepdims=True).astype(x.dtype),)

    class Flatten(_Flatten):
        op_domain = ""

        def _run(self, x: np.ndarray, axis: Any = None) -> tuple[np.ndarray]:
            axis = int(self.axis if axis is None else axis)
            axis = axis + x.ndim if axis < 0 else axis
            shape = (math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))
            return (x.reshape(shape),)

    class Pad(Pad_18):
        op_domain = ""

        def _run(self, data: np.ndarray, pads: Any = None, constant_value: Any = None,
                 axes: Any = None, mode: Any = None, value: Any = None) -> tuple[np.ndarray]:
            # Pad-2 takes pads and value as attributes, Pad-11 and later as inputs.
            pads = np.asarray(pads, np.int64)
            if constant_value is None and value is not None:
                constant_value = np.array(value, data.dtype)
            if pads.size and pads.min() < 0:
                data, pads = _crop(data, pads, axes)
            return super()._run(data, pads, constant_value, axes, mode=mode)

    class MatMulInteger(OpRun):
        op_domain = ""

        def _run(self, a: np.ndarray, b: np.ndarray, a_zero_point: Any = None,
                 b_zero_point: Any = None) -> tuple[np.ndarray]:
            a64, b64 = a.astype(np.int64), b.astype(np.int64)
            if a_zero_point is not None:
                za = np.asarray(a_zero_point, np.int64)
                if za.ndim == 1 and a.ndim >= 2:  # per row of A
                    za = za.reshape(-1, 1)
                a64 = a64 - za
            if b_zero_point is not None:
                b64 = b64 - np.asarray(b_zero_point, np.int64)  # per column of B
            return (np.matmul(a64, b64).astype(np.int32),)

    class LayerNormalization(OpRun):
        op_domain = ""

        def _run(self, x: np.ndarray, scale: np.ndarray, bias: Any = None, axis: Any = None,
                 epsilon: Any = None, stash_type: Any = None, **unchecked: Any) -> tuple:
            # (The schema allows attributes it does not define; they mean nothing here, as
            # in ONNX Runtime: found by fuzzing, a TypeError before.)
            stash = np.float32 if stash_type in (None, 1) else None
            if stash is None:
                raise NotImplementedError(f"LayerNormalization with stash_type={stash_type}")
            # Stage one in float32, or in float64 for a float64 input (the oracle's).
            work = np.float64 if x.dtype == np.float64 else stash
            y, mean, inv = _layer_normalization(
                x.astype(work), scale.astype(work), None if bias is None else bias.astype(work),
                axis=-1 if axis is None else axis, epsilon=1e-5 if epsilon is None else epsilon)
            return y.astype(x.dtype), mean.astype(stash), inv.astype(stash)

    class ConvTranspose(OpRun):
        op_domain = ""

        def _run(self, x: np.ndarray, w: np.ndarray, b: Any = None, auto_pad: Any = None,
                 dilations: Any = None, group: Any = None, kernel_shape: Any = None,
                 output_padding: Any = None, output_shape: Any = None, pads: Any = None,
                 strides: Any = None) -> tuple[np.ndarray]:
            return (conv_transpose(x, w, b, auto_pad=auto_pad or "NOTSET",
                                   dilations=dilations, group=group or 1,
                                   output_padding=output_padding, output_shape=output_shape,
                                   pads=pads, strides=strides),)

    class DequantizeLinear(DequantizeLinear_21):
        op_domain = ""

        def _run(  # type: ignore[override]
                self, x, x_scale, x_zero_point=None, axis=None, block_size=None,
                output_dtype=None):  # noqa: ARG002 - opset 23's attribute, outside 13..21
            return super()._run(x, x_scale, x_zero_point, axis=axis, block_size=block_size)

    # on use only: onnx.reference loads when the reference runs
    from . import control, legacy, recurrent

    return (Erf, MaxPool, GlobalAveragePool, Flatten, Pad, MatMulInteger, LayerNormalization,
            ConvTranspose, DequantizeLinear, *legacy.KERNELS, *control.KERNELS,
            *recurrent.KERNELS)


@functools.lru_cache(maxsize=None)
def evaluator_class() -> type:
    """``ReferenceEvaluator`` with ``fixed_ops`` installed.

    A subclass, not a ``new_ops=`` argument per call: function bodies (Gelu's, the fused
    ops' decompositions) are evaluated by ``type(evaluator)(body)``, which must see the
    fixes too.
    """
    from onnx.reference import ReferenceEvaluator

    class FixedReferenceEvaluator(ReferenceEvaluator):
        def __init__(self, proto: Any, *args: Any, new_ops: list | None = None,
                     **kwargs: Any):
            super().__init__(proto, *args, new_ops=[*(new_ops or []), *fixed_ops()], **kwargs)
            for node in getattr(self, "rt_nodes_", ()):
                if getattr(node, "op_type", None) in ACCUMULATING and \
                        getattr(node, "domain", "") in ("", "ai.onnx"):
                    _accumulate_in_float32(node)

    return FixedReferenceEvaluator


#: Ops that sum many terms: run in float32 when their inputs are float16 or bfloat16.
ACCUMULATING = frozenset({
    "Softmax", "LogSoftmax", "ReduceSum", "ReduceMean", "ReduceSumSquare", "ReduceL1",
    "ReduceL2", "ReduceLogSumExp", "GlobalAveragePool", "AveragePool", "MatMul", "Gemm",
    "Conv", "ConvTranspose", "BatchNormalization", "InstanceNormalization"})


def _low_precision(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.dtype.name in ("float16", "bfloat16")


def _accumulate_in_float32(node: Any) -> None:
    """Wrap one evaluator node: low-precision float inputs in, float32 inside, rounded once."""
    run = node._run

    def widened(*args: Any, **kwargs: Any) -> Any:
        low = [a for a in args if _low_precision(a)]
        if not low:
            return run(*args, **kwargs)
        dtype = low[0].dtype
        outputs = run(*[a.astype(np.float32) if _low_precision(a) else a for a in args],
                      **kwargs)
        return tuple(o.astype(dtype) if isinstance(o, np.ndarray) and o.dtype == np.float32
                     else o for o in outputs)

    node._run = widened


def _crop(data: np.ndarray, pads: np.ndarray, axes: Any) -> tuple[np.ndarray, np.ndarray]:
    """Apply the negative pads by slicing; return the data and the remaining (>= 0) pads."""
    rank = data.ndim
    axes = list(range(rank)) if axes is None else [int(a) % rank for a in np.ravel(axes)]
    n = len(axes)
    index = [slice(None)] * rank
    for i, axis in enumerate(axes):
        begin, end = int(pads[i]), int(pads[n + i])
        index[axis] = slice(max(0, -begin), data.shape[axis] - max(0, -end))
    return data[tuple(index)], np.maximum(pads, 0)


def max_pool(x: np.ndarray, kernel: list[int], *, strides: Any = None, pads: Any = None,
             dilations: Any = None, ceil_mode: int = 0, auto_pad: str = "NOTSET",
             storage_order: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """ONNX MaxPool over N-D windows in the input's own type, and its ``Indices``.

    An index is the flat position of the chosen element in the unpadded input tensor
    (row-major; column-major within each image when ``storage_order`` is 1). Padding never
    wins, whatever the type: only elements inside the input are candidates.
    """
    nsp = x.ndim - 2
    spatial = list(x.shape[2:])
    strides = [int(s) for s in strides] if strides is not None else [1] * nsp
    dilations = [int(d) for d in dilations] if dilations is not None else [1] * nsp
    p = window_pads(spatial, kernel, strides, dilations, pads, auto_pad)
    out_sp = []
    for i in range(nsp):
        span = spatial[i] + p[i] + p[nsp + i] - ((kernel[i] - 1) * dilations[i] + 1)
        o = (-(-span // strides[i]) if ceil_mode else span // strides[i]) + 1
        if ceil_mode and (o - 1) * strides[i] >= spatial[i] + p[i]:
            o -= 1  # the last window may not start in the end padding
        out_sp.append(max(o, 0))
    extra = [max(0, (out_sp[i] - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1
                 - (spatial[i] + p[i] + p[nsp + i])) for i in range(nsp)]
    widths = [(p[i], p[nsp + i] + extra[i]) for i in range(nsp)]
    fill = -np.inf if x.dtype.kind == "f" else np.iinfo(x.dtype).min
    padded = np.pad(x, [(0, 0), (0, 0)] + widths, constant_values=fill)
    flat = np.arange(math.prod(spatial), dtype=np.int64)
    flat = (flat.reshape(spatial[::-1]).transpose(list(range(nsp))[::-1]) if storage_order
            else flat.reshape(spatial))
    position = np.pad(flat, widths, constant_values=-1)
    y = np.full(x.shape[:2] + tuple(out_sp), fill, x.dtype)
    where = np.full(y.shape, -1, np.int64)
    for off in np.ndindex(*kernel):
        window = tuple(slice(off[i] * dilations[i],
                             off[i] * dilations[i] + strides[i] * (out_sp[i] - 1) + 1,
                             strides[i]) for i in range(nsp))
        patch = padded[(slice(None), slice(None)) + window]
        inside = position[window] >= 0
        better = inside & ((patch > y) | (where < 0))
        if x.dtype.kind == "f":  # NaN wins, as in a plain max
            better |= inside & np.isnan(patch) & ~np.isnan(y)
        y = np.where(better, patch, y)
        where = np.where(better, position[window], where)
    base = (np.arange(x.shape[0] * x.shape[1], dtype=np.int64) * math.prod(spatial)
            ).reshape(x.shape[:2] + (1,) * nsp)
    return y, where + base


def conv_transpose(x: np.ndarray, w: np.ndarray, b: Any = None, *, auto_pad: str = "NOTSET",
                   dilations: Any = None, group: int = 1, output_padding: Any = None,
                   output_shape: Any = None, pads: Any = None, strides: Any = None
                   ) -> np.ndarray:
    """ONNX ConvTranspose (N-D, grouped), accumulated in float64, in the input's type.

    Scatters every input element times the kernel into an uncropped output, then crops the
    pads: the specification's own definition, group by group.
    """
    nsp = x.ndim - 2
    kernel = list(w.shape[2:])
    strides = [int(s) for s in strides] if strides is not None else [1] * nsp
    dilations = [int(d) for d in dilations] if dilations is not None else [1] * nsp
    output_padding = ([int(v) for v in output_padding] if output_padding is not None
                      else [0] * nsp)
    spatial = list(x.shape[2:])
    full = [strides[i] * (spatial[i] - 1) + output_padding[i] + (kernel[i] - 1) * dilations[i]
            + 1 for i in range(nsp)]
    if output_shape is not None:
        out_sp = [int(v) for v in output_shape][-nsp:]
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out_sp = [spatial[i] * strides[i] for i in range(nsp)]
    else:
        out_sp = None
    if out_sp is not None:
        # The spec: SAME_UPPER puts the smaller half of the total padding first, NOTSET
        # and SAME_LOWER the larger; with floor division, so that a negative total (an
        # output larger than the full one) adds its zeros at the end.
        begins = []
        for i in range(nsp):
            total = full[i] - out_sp[i]
            begins.append(total // 2 if auto_pad == "SAME_UPPER" else total - total // 2)
    else:
        p = [int(v) for v in pads] if pads is not None and auto_pad != "VALID" else [0] * (2 * nsp)
        begins = p[:nsp]
        out_sp = [full[i] - p[i] - p[nsp + i] for i in range(nsp)]
    n, c = x.shape[:2]
    m = w.shape[1] * group
    cg, mg = c // group, w.shape[1]
    acc = np.zeros((n, m, *full))
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    for off in np.ndindex(*kernel):
        window = tuple(slice(off[i] * dilations[i],
                             off[i] * dilations[i] + strides[i] * (spatial[i] - 1) + 1,
                             strides[i]) for i in range(nsp))
        for g in range(group):
            contrib = np.einsum("nc...,cm->nm...", x64[:, g * cg:(g + 1) * cg],
                                w64[(slice(g * cg, (g + 1) * cg), slice(None)) + off])
            acc[(slice(None), slice(g * mg, (g + 1) * mg)) + window] += contrib
    # Crop the begin pads; an output larger than the uncropped one is zero-extended.
    out = np.zeros((n, m, *out_sp))
    src, dst = [], []
    for i in range(nsp):
        lo, hi = begins[i], begins[i] + out_sp[i]
        s_lo, s_hi = max(lo, 0), min(hi, full[i])
        src.append(slice(s_lo, max(s_hi, s_lo)))
        dst.append(slice(s_lo - lo, s_lo - lo + max(s_hi - s_lo, 0)))
    out[(slice(None), slice(None)) + tuple(dst)] = acc[(slice(None), slice(None)) + tuple(src)]
    if b is not None:
        out += np.asarray(b, np.float64).reshape((1, m) + (1,) * nsp)
    return out.astype(x.dtype)
