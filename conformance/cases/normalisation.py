"""Cases of the normalisations: BatchNormalization, LayerNormalization and Softmax."""

from __future__ import annotations

import numpy as np

from backplane.conformance.cases.build import (IMAGE, LARGE, RANK_SHAPES, SIZES, T, Builder,
                                               CaseGenerator, shape_label, weight)
from backplane.conformance.cases.values import special_data


def _batch_norm(b: Builder, dtypes: list[str]) -> None:
    main = dtypes[0]

    def add(label, x, attrs=None, tags=(), dt=main, params=None):
        c = x[1]
        p = params or dt
        b.add(dt, label, [T(x), weight((c,), dtype=p), weight((c,), dtype=p), weight((c,), dtype=p),
                          weight((c,), "positive", p)], attrs, tags=tags)

    for shape in [(3, 4), (2, 3, 5), (2, 3, 4, 5), (1, 2, 3, 4, 5)]:
        add(f"rank-{len(shape)}-{shape_label(shape)}", shape)
    add("attr-epsilon-1e-2", (2, 3, 4, 4), {"epsilon": 1e-2}, ["attr"])
    add("empty-batch-0", (0, 3, 4, 4))
    for n in SIZES:
        add(f"size-{n}-channels", (2, n, 3), tags=[f"size-{n}"])
    add("large-1x16x64x64", IMAGE, tags=["large"])
    c = 4
    b.add(main, "special-values", [T((2, c, 4), special_data(["huge"])), weight((c,)), weight((c,)),
                                   weight((c,)), weight((c,), "positive")], tags=["special-values"])
    for dt in dtypes[1:]:
        add("rank-4-2x3x4x5", (2, 3, 4, 5), dt=dt)
        add("attr-float32-statistics", (2, 3, 4, 5), tags=["attr"], dt=dt, params="float32")


def _layer_norm(b: Builder, dtypes: list[str]) -> None:
    main = dtypes[0]

    def add(label, x, axis=-1, attrs=None, tags=(), dt=main, bias=True, outputs=1):
        norm = x[axis % len(x):]
        ins = [T(x), weight(norm, "positive"), weight(norm) if bias else None]
        b.add(dt, label, ins if bias else ins[:2], {"axis": axis, **(attrs or {})}, tags=tags,
              outputs=outputs)

    for rank in range(1, 6):
        shape = RANK_SHAPES[rank]
        add(f"rank-{rank}-{shape_label(shape)}", shape)
    add("attr-axis-1-of-3", (2, 3, 4), 1, tags=["attr"])
    add("attr-axis-neg2", (2, 3, 4), -2, tags=["attr"])
    add("attr-axis-0", (3, 4), 0, tags=["attr"])
    add("attr-epsilon-1e-2", (3, 4), attrs={"epsilon": 1e-2}, tags=["attr"])
    add("attr-no-bias", (3, 4), bias=False, tags=["attr"])
    add("attr-mean-inv-std-outputs", (3, 4), tags=["attr"], outputs=3)
    add("empty-rows-0x4", (0, 4))
    for n in SIZES:
        add(f"size-{n}", (2, n), tags=[f"size-{n}"])
    add("large-1024x1024", LARGE, tags=["large"])
    # A NaN or an infinity in a row makes the whole row NaN (its mean and variance are).
    b.add(main, "special-values", [T((4, 8), special_data(["huge"])), weight((8,), "positive"),
                                   weight((8,))], {"axis": -1}, tags=["special-values"])
    for dt in dtypes[1:]:
        add("rank-3-2x3x4", (2, 3, 4), dt=dt)
        add("size-1025", (2, 1025), tags=["size-1025"], dt=dt)


def _masked(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Attention-mask logits: -inf at random places, never a whole row."""
    x = rng.standard_normal(shape)
    mask = rng.random(shape) < 0.4
    mask[..., 0] = False
    return np.where(mask, -np.inf, x)


def _softmax(b: Builder, dtypes: list[str]) -> None:
    main = dtypes[0]
    for rank in range(1, 6):
        shape = RANK_SHAPES[rank]
        b.add(main, f"rank-{rank}-{shape_label(shape)}", [T(shape)])
    for axis in (0, 1, -2):
        b.add(main, f"attr-axis-{axis}", [T((2, 3, 4))], {"axis": axis}, tags=["attr"])
    b.add(main, "large-logits", [T((3, 8), lambda rng, s, d: rng.standard_normal(s) * 30)])
    b.add(main, "special-values-masked", [T((3, 8), _masked)], tags=["special-values"])
    # exp(x - max(x)) / sum: a row with NaN or +inf is NaN throughout (inf - inf).
    b.add(main, "special-values", [T((4, 8), special_data())], tags=["special-values"])
    b.add(main, "empty-0x4", [T((0, 4))])
    for n in SIZES:
        b.add(main, f"size-{n}", [T((2, n))], tags=[f"size-{n}"])
    b.add(main, "large-1024x1024", [T(LARGE)], tags=["large"])
    for dt in dtypes[1:]:
        b.add(dt, "rank-2-3x4", [T((3, 4))])
        b.add(dt, "size-1025", [T((2, 1025))], tags=["size-1025"])


#: The case generator of each op of this family.
GENERATORS: dict[str, CaseGenerator] = {
    "BatchNormalization": _batch_norm,
    "LayerNormalization": _layer_norm,
    "Softmax": _softmax,
}
