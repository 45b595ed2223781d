"""Cases of the type conversions: Cast, QuantizeLinear and DequantizeLinear."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from onnx import TensorProto

from backplane.conformance.cases.build import (LARGE, RANK_SHAPES, SIZES, T, Builder, CaseGenerator,
                                               const)
from backplane.conformance.cases.values import is_float, special_data
from backplane.model.graph import DTYPE_CODES


_CAST_RANGE = {"int8": (-100, 100), "uint8": (0, 200), "int32": (-1000, 1000),
               "int64": (-1000, 1000), "float16": (-1000, 1000), "bfloat16": (-1000, 1000),
               "float32": (-1000, 1000), "bool": (0, 1)}


def _cast_values(src: str, dst: str) -> Callable:
    """Data that every target type represents: in range, with zeros for bool targets."""
    lo = max(_CAST_RANGE[src][0], _CAST_RANGE[dst][0])
    hi = min(_CAST_RANGE[src][1], _CAST_RANGE[dst][1])

    def make(rng, shape, dtype):
        if src == "bool":
            return rng.random(shape) < 0.5
        if is_float(src):
            v = rng.uniform(lo, hi, shape) if dst != "bool" else rng.standard_normal(shape)
        else:
            v = rng.integers(lo, hi + 1, shape)
        if dst == "bool":
            v = np.where(rng.random(shape) < 0.3, 0, v)
        return v
    return make


def _cast(b: Builder, dtypes: list[str]) -> None:
    def add(src, dst, label=None, shape=(3, 4), kind=None, tags=()):
        label = label or f"to-{dst}"
        b.add(src, label, [T(shape, kind or _cast_values(src, dst))],
              {"to": DTYPE_CODES[dst]}, tags=["attr", *tags])

    for dst in dtypes:
        add("float32", dst)
    for src in dtypes[1:]:
        for dst in ("float32", "float16", "int64", "bool"):
            if dst != src:
                add(src, dst)
    add("int8", "uint8")
    add("uint8", "int8")
    add("int64", "int32")
    add("float16", "bfloat16")
    for rank in (0, 1, 3, 4, 5):
        add("float32", "float16", f"rank-{rank}-to-float16", RANK_SHAPES[rank])
    add("float32", "float16", "empty-to-float16", (2, 0, 3))
    for n in SIZES:
        add("float32", "float16", f"size-{n}-to-float16", (2, n), tags=[f"size-{n}"])
    add("float32", "float16", "large-to-float16", LARGE, tags=["large"])
    for src, dst in [("float32", "float16"), ("float32", "bfloat16"), ("float16", "float32"),
                     ("bfloat16", "float32"), ("float16", "bfloat16")]:
        add(src, dst, f"special-values-to-{dst}", (4, 8), special_data(), ["special-values"])


def _quantize(b: Builder, dtypes: list[str]) -> None:
    main = dtypes[0]
    # Power-of-two scales: x / scale is exact, so only the rounding rule decides the result.

    def add(label, x, scale, zp=None, zp_dtype="uint8", attrs=None, tags=(), dt=main,
            kind="normal"):
        sdt = dt
        ins = [T(x, kind), const(scale, sdt)]
        if zp is not None:
            ins.append(const(zp, zp_dtype))
        b.add(dt, label, ins, attrs, tags=tags)

    add("rank-2-per-tensor-uint8", (3, 4), 1 / 32, 128)
    add("attr-per-tensor-int8", (3, 4), 1 / 32, -3, "int8", tags=["attr"])
    add("attr-no-zero-point", (3, 4), 1 / 32, tags=["attr"])
    add("attr-output-dtype-int8", (3, 4), 1 / 32, attrs={"output_dtype": TensorProto.INT8},
        tags=["attr"])
    add("attr-per-axis-1", (2, 3, 4), [1 / 16, 1 / 32, 1 / 64], [120, 128, 130],
        tags=["attr"])
    add("attr-per-axis-0", (2, 3, 4), [1 / 16, 1 / 32], [100, 128], attrs={"axis": 0},
        tags=["attr"])
    add("attr-per-axis-neg1", (2, 3, 4), [1 / 16, 1 / 32, 1 / 64, 1 / 8], [0, 10, 20, 30],
        "int8", {"axis": -1}, ["attr"])
    add("attr-blocked-axis-1", (3, 4), [[1 / 16, 1 / 32]] * 3, [[120, 130]] * 3,
        attrs={"axis": 1, "block_size": 2}, tags=["attr"])
    add("attr-saturation", (3, 4), 1 / 256, 0, "int8", tags=["attr"])
    ties = lambda rng, s, d: rng.permutation(np.arange(-4.5, 5.5, 1.0)).reshape(s)  # noqa: E731
    add("attr-ties-to-even", (2, 5), 1.0, 0, "int8", tags=["attr"], kind=ties)
    # round(x / scale) + zero point, not round(x / scale + zero point): the two differ at
    # every tie where the zero point is odd.
    add("attr-ties-to-even-odd-zero-point", (2, 5), 1.0, 3, "int8", tags=["attr"], kind=ties)
    for rank in (0, 1, 3, 4, 5):
        add(f"rank-{rank}-per-tensor-uint8", RANK_SHAPES[rank], 1 / 32, 128)
    add("empty-0x4", (0, 4), 1 / 32, 128)
    for n in SIZES:
        add(f"size-{n}", (2, n), 1 / 32, 128, tags=[f"size-{n}"])
    add("large-1024x1024", LARGE, 1 / 32, 128, tags=["large"])
    # Saturation: +-inf and huge values go to the ends of the range; NaN is undefined.
    # onnx.reference (1.23) casts before it saturates (inf becomes 0): the formula instead.
    b.add(main, "special-values", [T((4, 8), special_data(["nan"])), const(1 / 32, main),
                                   const(128, "uint8")], tags=["special-values"],
          expect=lambda arrays: [np.clip(np.rint(arrays[0].astype(np.float64) / arrays[1])
                                         + 128, 0, 255)])
    for dt in dtypes[1:]:
        if dt == "int32":  # integer input: the scale is an int32 too at opset 21
            add("rank-2-per-tensor-uint8", (3, 4), 2, 128, dt=dt)
            continue
        add("rank-2-per-tensor-uint8", (3, 4), 1 / 32, 128, dt=dt)
        add("attr-per-axis-1", (2, 3, 4), [1 / 16, 1 / 32, 1 / 64], [120, 128, 130],
            tags=["attr"], dt=dt)


def _dequantize(b: Builder, dtypes: list[str]) -> None:
    main = dtypes[0]

    def add(label, x, scale, zp=None, attrs=None, tags=(), dt=main, sdt="float32"):
        ins = [T(x, "full"), const(scale, sdt)]
        if zp is not None:
            ins.append(const(zp, dt))
        b.add(dt, label, ins, attrs, tags=tags)

    add("rank-2-per-tensor", (3, 4), 0.05, 3)
    add("attr-no-zero-point", (3, 4), 0.05, tags=["attr"])
    add("attr-per-axis-1", (2, 3, 4), [0.1, 0.05, 0.02], [1, 0, 2], tags=["attr"])
    add("attr-per-axis-0", (2, 3, 4), [0.1, 0.05], [1, 2], {"axis": 0}, ["attr"])
    add("attr-per-axis-neg1", (2, 3, 4), [0.1, 0.05, 0.02, 0.2], [0, 1, 2, 3], {"axis": -1},
        ["attr"])
    add("attr-blocked-axis-1", (3, 4), [[0.1, 0.05]] * 3, [[1, 2]] * 3,
        {"axis": 1, "block_size": 2}, ["attr"])
    add("attr-scale-float16", (3, 4), 0.05, 3, tags=["attr"], sdt="float16")
    add("attr-scale-bfloat16", (3, 4), 0.05, 3, tags=["attr"], sdt="bfloat16")
    for rank in (0, 1, 3, 4, 5):
        add(f"rank-{rank}-per-tensor", RANK_SHAPES[rank], 0.05, 3)
    add("empty-0x4", (0, 4), 0.05, 3)
    for n in SIZES:
        add(f"size-{n}", (2, n), 0.05, 3, tags=[f"size-{n}"])
    add("large-1024x1024", LARGE, 0.05, 3, tags=["large"])
    for dt in dtypes[1:]:
        # int32 data (accumulators) carry no zero point.
        add("rank-2-per-tensor", (3, 4), 0.05, None if dt == "int32" else 3, dt=dt)
        add("attr-per-axis-1", (2, 3, 4), [0.1, 0.05, 0.02],
            None if dt == "int32" else [1, 0, 2], tags=["attr"], dt=dt)


#: The case generator of each op of this family.
GENERATORS: dict[str, CaseGenerator] = {
    "Cast": _cast,
    "QuantizeLinear": _quantize,
    "DequantizeLinear": _dequantize,
}
