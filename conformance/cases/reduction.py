"""Cases of the reductions: ReduceMean, ReduceSum and ReduceMax."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from backplane.conformance.cases.build import LARGE, SIZES, T, Builder, CaseGenerator, const
from backplane.conformance.cases.values import is_float, multiples_of, special_data


def _reduce(op: str) -> Callable:
    def gen(b: Builder, dtypes: list[str]) -> None:
        main = dtypes[0]

        def add(label, shape, axes, attrs=None, tags=(), dt=main):
            kind = "normal"
            if op == "ReduceMean" and not is_float(dt):
                reduced = [shape[a] for a in (axes if axes else range(len(shape)))] or [1]
                kind = multiples_of(int(np.prod(reduced)))
            ins = [T(shape, kind)] + ([] if axes is None else [const(axes)])
            b.add(dt, label, ins, attrs, tags=tags)

        add("rank-0-all", (), None)
        add("rank-1-axes-0", (7,), [0])
        add("rank-2-axes-1", (3, 4), [1])
        add("attr-rank-2-axes-1-keepdims-0", (3, 4), [1], {"keepdims": 0}, ["attr"])
        add("attr-rank-2-all-keepdims-0", (3, 4), None, {"keepdims": 0}, ["attr"])
        add("attr-rank-3-axes-0-2", (2, 3, 4), [0, 2], tags=["attr"])
        add("attr-rank-3-axes-neg2", (2, 3, 4), [-2], tags=["attr"])
        add("attr-rank-4-axes-1-neg1", (2, 3, 4, 5), [1, -1], tags=["attr"])
        add("rank-5-axes-2-3", (2, 1, 3, 2, 4), [2, 3])
        add("attr-noop-with-empty-axes", (3, 4), [], {"noop_with_empty_axes": 1}, ["attr"])
        add("empty-0x4-axes-1", (0, 4), [1])
        if op != "ReduceMean":  # the mean of nothing is undefined
            # The max of nothing is -inf, the identity of max: a special value.
            add("empty-reduced-3x0-axes-1", (3, 0), [1],
                tags=["special-values"] if op == "ReduceMax" else ())
        for n in SIZES:
            add(f"size-{n}", (2, n), [1], tags=[f"size-{n}"])
        add("large-1024x1024", LARGE, [1], tags=["large"])
        # NaN propagates through a max as through a sum (numpy's max, the oracle's, does).
        for dt in (d for d in dtypes if is_float(d)):
            b.add(dt, "special-values", [T((4, 8), special_data()), const([1])],
                  tags=["special-values"])
        for dt in dtypes[1:]:
            add("rank-2-axes-1", (3, 4), [1], dt=dt)
            add("attr-rank-3-axes-0-2-keepdims-0", (2, 3, 4), [0, 2], {"keepdims": 0}, ["attr"],
                dt=dt)
    return gen


#: The case generator of each op of this family.
GENERATORS: dict[str, CaseGenerator] = {
    "ReduceMean": _reduce("ReduceMean"),
    "ReduceSum": _reduce("ReduceSum"),
    "ReduceMax": _reduce("ReduceMax"),
}
