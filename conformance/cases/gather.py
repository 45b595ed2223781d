"""Cases of Gather: indices of either sign into an axis of data of each rank."""

from __future__ import annotations

from collections.abc import Callable

from backplane.conformance.cases.build import LARGE, SIZES, T, CaseGenerator, const
from backplane.conformance.cases.movement import data_movement


def _indices(n: int, negative: bool = True) -> Callable:
    """Gather indices into an axis of size ``n``, negative ones included."""
    return lambda rng, shape, dtype: rng.integers(-n if negative else 0, n, shape)


def _gather_variants() -> list[tuple]:
    def g(shape, idx_shape, axis=0, ind="int64", negative=True):
        n = shape[axis]
        return [T(shape), T(idx_shape, _indices(n, negative), ind)], {"axis": axis}

    v = []
    for label, (ins, attrs), tags in [
            ("rank-2-axis-0", g((5, 4), (2, 3)), []),
            ("rank-1", g((7,), (3,)), []),
            ("rank-3-axis-1", g((2, 5, 4), (3,), 1), ["attr"]),
            ("rank-4-axis-neg1", g((2, 3, 4, 5), (2, 2), -1), ["attr"]),
            ("rank-5-axis-2", g((2, 1, 4, 2, 3), (3,), 2), ["attr"]),
            ("attr-scalar-index", g((5, 4), (), 0), ["attr"]),
            ("attr-int32-indices", g((5, 4), (3,), 1, "int32"), ["attr"]),
            ("empty-indices", g((5, 4), (0,)), []),
            ("empty-data-rows", g((0, 4), (2,), 1), [])]:
        v.append((label, ins, attrs, tags))
    for n in SIZES:
        ins, attrs = g((n, 3), (5,))
        v.append((f"size-{n}", ins, attrs, [f"size-{n}"]))
    ins, attrs = g(LARGE, (512,))
    v.append(("large-1024x1024", ins, attrs, ["large"]))
    return v


#: The case generator of each op of this family.
GENERATORS: dict[str, CaseGenerator] = {
    "Gather": data_movement(_gather_variants, ([T((4, 8)), const([3, -1, 0, 2])], {"axis": 1})),
}
