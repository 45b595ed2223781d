"""Cases of the windowed ops: the convolutions (Conv, ConvTranspose) and the pools."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from backplane.conformance.cases.build import (IMAGE, SIZES, T, Builder, CaseGenerator, shape_label,
                                               weight)
from backplane.conformance.cases.values import special_data
from backplane.conformance.oracle import np_pool


def _he(fan_in: int) -> Callable:
    return lambda rng, shape, dtype: rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)


def _conv(b: Builder, dtypes: list[str]) -> None:
    main = dtypes[0]

    def add(label, x, w, attrs=None, bias=False, tags=(), dt=main):
        fan_in = int(np.prod(w[1:]))
        ins = [T(x), weight(w, _he(fan_in))] + ([weight((w[0],))] if bias else [])
        b.add(dt, label, ins, attrs, tags=tags)

    add("rank-3-1d-k3", (1, 2, 9), (4, 2, 3))
    add("rank-4-2d-k3", (1, 2, 7, 7), (4, 2, 3, 3))
    add("rank-5-3d-k3", (1, 2, 5, 5, 5), (3, 2, 3, 3, 3))
    add("bias", (2, 2, 6, 6), (4, 2, 3, 3), bias=True)
    add("attr-kernel-1x1", (1, 4, 5, 5), (3, 4, 1, 1), tags=["attr"])
    add("attr-kernel-3x2", (1, 2, 6, 7), (3, 2, 3, 2), tags=["attr"])
    add("attr-strides-2-pads-1", (1, 2, 8, 8), (4, 2, 3, 3),
        {"strides": [2, 2], "pads": [1, 1, 1, 1]}, True, ["attr"])
    add("attr-strides-2x1", (1, 2, 7, 7), (4, 2, 3, 3), {"strides": [2, 1]}, tags=["attr"])
    add("attr-pads-asymmetric", (1, 2, 6, 6), (4, 2, 3, 3), {"pads": [0, 1, 2, 1]},
        tags=["attr"])
    add("attr-dilations-2", (1, 2, 9, 9), (4, 2, 3, 3), {"dilations": [2, 2]}, tags=["attr"])
    add("attr-group-2", (1, 4, 6, 6), (6, 2, 3, 3), {"group": 2, "pads": [1, 1, 1, 1]}, True,
        ["attr"])
    add("attr-depthwise", (1, 4, 6, 6), (4, 1, 3, 3), {"group": 4, "pads": [1, 1, 1, 1]}, True,
        ["attr"])
    add("attr-depthwise-multiplier-2", (1, 3, 6, 6), (6, 1, 3, 3), {"group": 3}, tags=["attr"])
    for pad in ("SAME_UPPER", "SAME_LOWER", "VALID"):
        add(f"attr-auto-pad-{pad.lower().replace('_', '-')}", (1, 2, 7, 7), (3, 2, 2, 2),
            {"auto_pad": pad, "strides": [2, 2]}, tags=["attr"])
    add("empty-batch-0", (0, 2, 5, 5), (3, 2, 3, 3))
    for n in SIZES:
        add(f"size-{n}-1d", (1, 2, n), (3, 2, 3), {"pads": [1, 1]}, tags=[f"size-{n}"])
    add("large-1x16x64x64", IMAGE, (16, 16, 3, 3), {"pads": [1, 1, 1, 1]}, True, ["large"])
    # A NaN or an infinity reaches exactly the outputs whose windows hold it.
    b.add(main, "special-values", [T((1, 2, 6, 6), special_data(["huge"])),
                                   weight((3, 2, 3, 3), _he(18))], {"pads": [1, 1, 1, 1]},
          tags=["special-values"])
    for dt in dtypes[1:]:
        add("rank-4-2d-k3", (1, 2, 7, 7), (4, 2, 3, 3), dt=dt)
        add("attr-depthwise", (1, 4, 6, 6), (4, 1, 3, 3), {"group": 4, "pads": [1, 1, 1, 1]},
            True, ["attr"], dt=dt)
        add("attr-strides-2-pads-1", (1, 2, 8, 8), (4, 2, 3, 3),
            {"strides": [2, 2], "pads": [1, 1, 1, 1]}, True, ["attr"], dt=dt)


def _conv_transpose(b: Builder, dtypes: list[str]) -> None:
    main = dtypes[0]

    def add(label, x, w, attrs=None, bias=False, tags=(), dt=main):
        fan_in = int(np.prod(w[1:]))
        bias_shape = (w[1] * attrs_group(attrs),)
        ins = [T(x), weight(w, _he(fan_in))] + ([weight(bias_shape)] if bias else [])
        b.add(dt, label, ins, attrs, tags=tags)

    def attrs_group(attrs):
        return (attrs or {}).get("group", 1)

    add("rank-3-1d-k3", (1, 2, 5), (2, 3, 3))
    add("rank-4-2d-k3", (1, 2, 4, 4), (2, 3, 3, 3))
    add("rank-5-3d-k3", (1, 2, 3, 3, 3), (2, 2, 3, 3, 3))
    add("bias", (2, 2, 4, 4), (2, 3, 3, 3), bias=True)
    add("attr-strides-2", (1, 2, 4, 4), (2, 3, 3, 3), {"strides": [2, 2]}, tags=["attr"])
    add("attr-strides-2-pads-1", (1, 2, 4, 4), (2, 3, 3, 3),
        {"strides": [2, 2], "pads": [1, 1, 1, 1]}, True, ["attr"])
    add("attr-pads-asymmetric", (1, 2, 5, 5), (2, 3, 3, 3), {"pads": [0, 1, 2, 1]},
        tags=["attr"])
    add("attr-output-padding", (1, 2, 4, 4), (2, 3, 3, 3),
        {"strides": [2, 2], "output_padding": [1, 0]}, tags=["attr"])
    add("attr-output-shape", (1, 2, 4, 4), (2, 3, 3, 3),
        {"strides": [2, 2], "output_shape": [10, 9]}, tags=["attr"])
    add("attr-dilations-2", (1, 2, 4, 4), (2, 3, 3, 3), {"dilations": [2, 2]}, tags=["attr"])
    add("attr-depthwise", (1, 4, 4, 4), (4, 1, 3, 3), {"group": 4}, tags=["attr"])
    add("attr-group-2-bias", (1, 4, 4, 4), (4, 3, 3, 3), {"group": 2, "strides": [2, 2]},
        True, ["attr"])
    for pad in ("SAME_UPPER", "SAME_LOWER", "VALID"):
        add(f"attr-auto-pad-{pad.lower().replace('_', '-')}", (1, 2, 4, 5), (2, 3, 3, 3),
            {"auto_pad": pad, "strides": [2, 2]}, tags=["attr"])
    add("empty-batch-0", (0, 2, 4, 4), (2, 3, 3, 3))
    for n in SIZES:
        add(f"size-{n}-1d", (1, 2, n), (2, 3, 3), {"pads": [1, 1]}, tags=[f"size-{n}"])
    add("large-1x16x64x64", IMAGE, (16, 16, 3, 3), {"pads": [1, 1, 1, 1]}, True, ["large"])
    b.add(main, "special-values", [T((1, 2, 4, 4), special_data(["huge"])),
                                   weight((2, 3, 3, 3), _he(18))], {"strides": [2, 2]},
          tags=["special-values"])
    for dt in dtypes[1:]:
        add("rank-4-2d-k3", (1, 2, 4, 4), (2, 3, 3, 3), dt=dt)
        add("attr-strides-2-pads-1", (1, 2, 4, 4), (2, 3, 3, 3),
            {"strides": [2, 2], "pads": [1, 1, 1, 1]}, True, ["attr"], dt=dt)


def _max_pool_expect(attrs: dict, outputs: int) -> Callable[[list], list]:
    """MaxPool by the numpy formula, where onnx.reference (1.23) is wrong: asymmetric pads
    and SAME_LOWER give it the wrong output shape, and its Indices count padding and ignore
    the storage order."""
    def expect(arrays: list) -> list:
        y, indices = np_pool("max", arrays[0], **attrs)
        return [y, indices][:outputs]
    return expect


def _nan_pool_expect(kind: str, attrs: dict) -> Callable[[list], list]:
    """A pool by the numpy formula where a window holding NaN gives NaN: onnx.reference
    (1.23) pads with NaN and leaves NaN out of every window, and the formula's max skips
    it too (NaN > x is false)."""
    def expect(arrays: list) -> list:
        y = np_pool(kind, arrays[0], **attrs)[0]
        touched = np_pool("max", np.isnan(arrays[0]).astype(np.float64), **attrs)[0] > 0
        return [np.where(touched, np.nan, y)]
    return expect


def _max_pool(b: Builder, dtypes: list[str]) -> None:
    _pool(b, dtypes, {"storage-order-1": {"kernel_shape": [2, 2], "storage_order": 1}},
          outputs_variant=True)


def _average_pool(b: Builder, dtypes: list[str]) -> None:
    _pool(b, dtypes, {
        "count-include-pad-0": {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]},
        "count-include-pad-1": {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1],
                                "count_include_pad": 1},
        "count-include-pad-1-asymmetric": {"kernel_shape": [3, 3], "pads": [0, 1, 2, 1],
                                           "count_include_pad": 1},
    })


def _pool(b: Builder, dtypes: list[str], extra: dict[str, dict], outputs_variant=False) -> None:
    main = dtypes[0]

    def add(label, x, attrs, tags=(), dt=main, outputs=1):
        wrong = (outputs == 2 or attrs.get("auto_pad") == "SAME_LOWER"
                 or "pads" in attrs and attrs["pads"][:len(x) - 2] != attrs["pads"][len(x) - 2:])
        expect = _max_pool_expect(attrs, outputs) if outputs_variant and wrong else None
        b.add(dt, label, [T(x)], attrs, tags=tags, outputs=outputs, expect=expect)

    add("rank-3-1d-k3", (1, 2, 9), {"kernel_shape": [3]})
    add("rank-4-2d-k2-s2", (1, 3, 6, 6), {"kernel_shape": [2, 2], "strides": [2, 2]})
    add("rank-5-3d-k2", (1, 2, 4, 4, 4), {"kernel_shape": [2, 2, 2]})
    add("attr-k3-s1-pads-1", (2, 2, 5, 5), {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]},
        ["attr"])
    add("attr-pads-asymmetric", (1, 2, 6, 6), {"kernel_shape": [3, 3], "pads": [0, 1, 2, 1]},
        ["attr"])
    add("attr-strides-2x1", (1, 2, 7, 7), {"kernel_shape": [3, 2], "strides": [2, 1]}, ["attr"])
    add("attr-dilations-2", (1, 2, 8, 8), {"kernel_shape": [2, 2], "dilations": [2, 2]},
        ["attr"])
    add("attr-ceil-mode", (1, 2, 7, 7), {"kernel_shape": [2, 2], "strides": [2, 2],
                                         "ceil_mode": 1}, ["attr"])
    add("attr-ceil-mode-pads", (1, 2, 6, 6), {"kernel_shape": [3, 3], "strides": [2, 2],
                                              "pads": [1, 1, 1, 1], "ceil_mode": 1}, ["attr"])
    for pad in ("SAME_UPPER", "SAME_LOWER", "VALID"):
        add(f"attr-auto-pad-{pad.lower().replace('_', '-')}", (1, 2, 7, 7),
            {"kernel_shape": [2, 2], "strides": [2, 2], "auto_pad": pad}, ["attr"])
    for label, attrs in extra.items():
        add(f"attr-{label}", (1, 2, 6, 6), attrs, ["attr"],
            outputs=2 if outputs_variant else 1)
    if outputs_variant:
        add("attr-indices-output", (1, 2, 6, 6), {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]},
            ["attr"], outputs=2)
    add("empty-batch-0", (0, 2, 5, 5), {"kernel_shape": [2, 2]})
    for n in SIZES:
        pad = 1 if n >= 3 else 0  # a window wholly in the padding has no average
        add(f"size-{n}-1d", (1, 2, n), {"kernel_shape": [min(3, n)], "pads": [pad, pad]},
            [f"size-{n}"])
    add("large-1x16x64x64", IMAGE, {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, ["large"])
    # A window holding NaN gives NaN, as a max or a sum of it does.
    window = {"kernel_shape": [2, 2], "strides": [2, 2]}
    b.add(main, "special-values", [T((1, 2, 6, 6), special_data())], window,
          tags=["special-values"], expect=_nan_pool_expect("max" if outputs_variant else "avg",
                                                           window))
    for dt in dtypes[1:]:
        add("rank-4-2d-k2-s2", (1, 3, 6, 6), {"kernel_shape": [2, 2], "strides": [2, 2]}, dt=dt)
        add("attr-k3-s1-pads-1", (2, 2, 5, 5),
            {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, ["attr"], dt=dt)
        add("attr-strides-2x1", (1, 2, 7, 7), {"kernel_shape": [3, 2], "strides": [2, 1]},
            ["attr"], dt=dt)


def _global_average_pool(b: Builder, dtypes: list[str]) -> None:
    main = dtypes[0]
    for shape in [(1, 3, 7), (2, 3, 4, 5), (1, 2, 3, 4, 5)]:
        b.add(main, f"rank-{len(shape)}-{shape_label(shape)}", [T(shape)])
    b.add(main, "empty-batch-0", [T((0, 3, 4, 4))])
    for n in SIZES:
        b.add(main, f"size-{n}", [T((1, 2, n))], tags=[f"size-{n}"])
    b.add(main, "large-1x16x64x64", [T(IMAGE)], tags=["large"])
    b.add(main, "special-values", [T((1, 4, 4, 4), special_data())], tags=["special-values"])
    for dt in dtypes[1:]:
        b.add(dt, "rank-4-2x3x4x5", [T((2, 3, 4, 5))])


#: The case generator of each op of this family.
GENERATORS: dict[str, CaseGenerator] = {
    "Conv": _conv,
    "ConvTranspose": _conv_transpose,
    "MaxPool": _max_pool,
    "AveragePool": _average_pool,
    "GlobalAveragePool": _global_average_pool,
}
