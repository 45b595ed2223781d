"""Cases of the contractions: MatMul, Gemm and MatMulInteger."""

from __future__ import annotations

import functools

import numpy as np

from backplane.conformance.cases.build import SIZES, T, Builder, CaseGenerator, shape_label, weight
from backplane.conformance.cases.values import special_data


def _matmul(b: Builder, dtypes: list[str]) -> None:
    main = dtypes[0]
    pairs = [("rank-2", (3, 4), (4, 5), ()), ("rank-1-vector-matrix", (4,), (4, 5), ()),
             ("rank-2-matrix-vector", (3, 4), (4,), ()), ("rank-1-dot", (4,), (4,), ()),
             ("rank-3-batched", (2, 3, 4), (2, 4, 5), ()),
             ("broadcast-rank-3-by-rank-2", (2, 3, 4), (4, 5), ("broadcast",)),
             ("broadcast-rank-4", (2, 1, 3, 4), (1, 3, 4, 5), ("broadcast",)),
             ("broadcast-rank-5", (2, 1, 2, 3, 4), (3, 1, 4, 5), ("broadcast",)),
             ("empty-m-0", (0, 4), (4, 5), ()), ("empty-k-0", (3, 0), (0, 5), ())]
    for label, sa, sb, tags in pairs:
        b.add(main, f"{label}-{shape_label(sa)}@{shape_label(sb)}", [T(sa), T(sb)], tags=tags)
    for n in SIZES:
        b.add(main, f"size-{n}-k", [T((3, n)), T((n, 5))], tags=[f"size-{n}"])
    b.add(main, "large-512x512@512x512", [T((512, 512)), T((512, 512))], tags=["large"])
    # NaN and infinities propagate through every sum they enter; inf - inf is NaN. No huge
    # values: a sum of one and other terms may overflow in float32 and not in float64.
    b.add(main, "special-values", [T((4, 8), special_data(["huge"])), T((8, 5))],
          tags=["special-values"])
    for dt in dtypes[1:]:
        b.add(dt, "rank-2-3x4@4x5", [T((3, 4)), T((4, 5))])
        b.add(dt, "broadcast-rank-4", [T((2, 1, 3, 4)), T((1, 3, 4, 5))], tags=["broadcast"])


def _gemm(b: Builder, dtypes: list[str]) -> None:
    main = dtypes[0]

    def add(label, a, bb, c, attrs=None, tags=(), dt=main):
        b.add(dt, label, [T(a), weight(bb), weight(c) if c is not None else None], attrs, tags=tags)

    add("rank-2-3x4x5", (3, 4), (4, 5), (5,), tags=["broadcast"])
    add("attr-transA", (4, 3), (4, 5), (5,), {"transA": 1}, ["attr", "broadcast"])
    add("attr-transB", (3, 4), (5, 4), (5,), {"transB": 1}, ["attr", "broadcast"])
    add("attr-transA-transB", (4, 3), (5, 4), (3, 5), {"transA": 1, "transB": 1}, ["attr"])
    add("attr-alpha-beta", (3, 4), (4, 5), (3, 5), {"alpha": 0.5, "beta": 2.0}, ["attr"])
    add("attr-alpha-no-c", (3, 4), (4, 5), None, {"alpha": -1.5}, ["attr"])
    add("c-scalar", (3, 4), (4, 5), (), tags=["broadcast"])
    add("c-column-3x1", (3, 4), (4, 5), (3, 1), tags=["broadcast"])
    add("c-row-1x5", (3, 4), (4, 5), (1, 5), tags=["broadcast"])
    add("c-full-3x5", (3, 4), (4, 5), (3, 5))
    add("no-c", (3, 4), (4, 5), None)
    add("empty-m-0", (0, 4), (4, 5), (5,), tags=["broadcast"])
    for n in SIZES:
        add(f"size-{n}-k", (3, n), (n, 5), (5,), tags=[f"size-{n}", "broadcast"])
    add("large-512x512x512", (512, 512), (512, 512), (512,), tags=["large", "broadcast"])
    b.add(main, "special-values", [T((4, 8), special_data(["huge"])), weight((8, 5)), weight((5,))],
          tags=["special-values", "broadcast"])
    for dt in dtypes[1:]:
        add("rank-2-3x4x5", (3, 4), (4, 5), (5,), tags=["broadcast"], dt=dt)
        add("attr-transB", (3, 4), (5, 4), (3, 5), {"transB": 1}, ["attr"], dt=dt)


def _matmul_integer_rows(arrays: list) -> list:
    a, b, za, zb = (np.asarray(x, np.int64) for x in arrays)
    return [np.matmul(a - za[:, None], b - zb)]


def _matmul_integer(b: Builder, dtypes: list[str]) -> None:
    zp = functools.partial(weight, kind="low")
    for a_dt in dtypes:
        for b_dt in dtypes:
            b.add(a_dt, f"rank-2-{b_dt}-3x4@4x5",
                  [T((3, 4), "full"), T((4, 5), "full", b_dt)])
    main = dtypes[0]
    cases = [("rank-1-vector-matrix", (4,), (4, 5), None, None, ()),
             ("rank-3-batched", (2, 3, 4), (2, 4, 5), None, None, ()),
             ("broadcast-rank-4", (2, 1, 3, 4), (1, 3, 4, 5), None, None, ("broadcast",)),
             ("broadcast-rank-5", (2, 1, 2, 3, 4), (3, 1, 4, 5), None, None, ("broadcast",)),
             ("zero-points-scalar", (3, 4), (4, 5), (), (), ("attr",)),
             ("zero-points-per-row-column", (3, 4), (4, 5), (3,), (5,), ("attr",)),
             ("empty-m-0", (0, 4), (4, 5), None, None, ())]
    for label, sa, sb, za, zb, tags in cases:
        ins = [T(sa, "full"), T(sb, "full", "uint8")]
        expect = None
        if za is not None:
            ins += [zp(za), zp(zb, dtype="uint8")]
        if za == (3,):  # onnx.reference (1.23) broadcasts a per-row zero point along columns
            expect = _matmul_integer_rows
        b.add(main, label, ins, tags=tags, expect=expect)
    for n in SIZES:
        b.add(main, f"size-{n}-k", [T((3, n), "full"), T((n, 5), "full", "uint8")],
              tags=[f"size-{n}"])
    b.add(main, "large-512x512@512x512", [T((512, 512), "full"), T((512, 512), "full", "uint8")],
          tags=["large"])


#: The case generator of each op of this family.
GENERATORS: dict[str, CaseGenerator] = {
    "MatMul": _matmul,
    "Gemm": _gemm,
    "MatMulInteger": _matmul_integer,
}
