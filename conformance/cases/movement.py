"""Cases of the data-movement ops: reshapes, transposes, concatenation, slices, pads."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from backplane.conformance.cases.build import (LARGE, RANK_SHAPES, SIZES, T, Builder, CaseGenerator,
                                               const, shape_label)
from backplane.conformance.cases.values import is_float, special_data


def data_movement(variants: Callable[[], list[tuple]], special: tuple | None) -> Callable:
    """A data-movement op: ``variants()`` lists (label, inputs, attrs, tags[, expect]) for
    the main dtype (inputs: a list of T, the data first); ``special`` is (inputs, attrs) for the
    special-value case, its data given as ``T(shape)``; other dtypes get the first variant."""
    def gen(b: Builder, dtypes: list[str]) -> None:
        main = dtypes[0]
        items = variants()
        for label, ins, attrs, tags, *expect in items:
            b.add(main, label, ins, attrs, tags=tags, expect=expect[0] if expect else None)
        label, ins, attrs, tags = items[0][:4]
        for dt in dtypes[1:]:
            b.add(dt, label, ins, attrs, tags=tags)
        if special:
            sins, sattrs = special
            for dt in (d for d in dtypes if is_float(d)):
                data = T(sins[0].shape, special_data())
                b.add(dt, "special-values", [data, *sins[1:]], sattrs, tags=["special-values"])
    return gen


def _sizes_and_large(make: Callable[[tuple], tuple]) -> list[tuple]:
    """Size and large variants: ``make(shape) -> (inputs, attrs)`` for a 2-D data shape."""
    out = []
    for n in SIZES:
        ins, attrs = make((2, n))
        out.append((f"size-{n}", ins, attrs, [f"size-{n}"]))
    ins, attrs = make(LARGE)
    out.append(("large-1024x1024", ins, attrs, ["large"]))
    return out


def _reshape_variants() -> list[tuple]:
    v = [("rank-2-3x4-to-4x3", [T((3, 4)), const([4, 3])], None, [])]
    for label, shape, target, attrs in [
            ("rank-0-to-1", (), [1], None), ("rank-1-12-to-3x4", (12,), [3, 4], None),
            ("rank-2-3x4-to-minus1", (3, 4), [-1], None),
            ("rank-3-copy-dim-0", (2, 3, 4), [0, -1], None),
            ("rank-4-to-6x-1x5", (2, 3, 4, 5), [6, -1, 5], None),
            ("rank-5-to-2x3x8", (2, 1, 3, 2, 4), [2, 3, 8], None),
            ("attr-to-rank-0", (1,), [], None),
            ("attr-allowzero-empty", (2, 0, 3), [3, 0], {"allowzero": 1}),
            ("empty-copy-zero-dim", (2, 0, 3), [0, 0], None)]:
        v.append((label, [T(shape), const(target)], attrs, ["attr"] if attrs else []))
    v += _sizes_and_large(lambda s: ([T(s), const([s[1], s[0]])], None))
    return v


def _transpose_variants() -> list[tuple]:
    v = []
    for rank, perm in [(2, [1, 0]), (0, None), (1, [0]), (3, [2, 0, 1]), (4, [0, 2, 3, 1]),
                       (5, [4, 1, 3, 0, 2])]:
        shape = RANK_SHAPES[rank]
        v.append((f"rank-{rank}-{shape_label(shape)}", [T(shape)],
                  None if perm is None else {"perm": perm}, []))
    v.append(("attr-default-perm-reverses", [T((2, 3, 4))], None, ["attr"]))
    v.append(("attr-identity-perm", [T((2, 3, 4))], {"perm": [0, 1, 2]}, ["attr"]))
    v.append(("empty-0x3x4", [T((0, 3, 4))], {"perm": [2, 0, 1]}, []))
    v += _sizes_and_large(lambda s: ([T(s)], {"perm": [1, 0]}))
    return v


def _concat_variants() -> list[tuple]:
    v = [("rank-2-axis-1", [T((3, 4)), T((3, 2))], {"axis": 1}, [])]
    for label, shapes, axis in [
            ("rank-1-axis-0", [(3,), (4,)], 0), ("rank-2-axis-0", [(3, 4), (2, 4)], 0),
            ("rank-3-axis-neg1", [(2, 3, 4), (2, 3, 1)], -1),
            ("rank-4-three-inputs-axis-1", [(1, 2, 3, 3), (1, 4, 3, 3), (1, 1, 3, 3)], 1),
            ("rank-5-axis-2", [(2, 1, 3, 2, 4), (2, 1, 1, 2, 4)], 2),
            ("attr-single-input", [(3, 4)], 0), ("empty-input-axis-1", [(3, 0), (3, 4)], 1)]:
        v.append((label, [T(s) for s in shapes], {"axis": axis},
                  ["attr"] if label.startswith("attr") else []))
    v += _sizes_and_large(lambda s: ([T(s), T(s)], {"axis": 0}))
    return v


_I64_MAX, _I64_MIN = np.iinfo(np.int64).max, np.iinfo(np.int64).min


def _slice_variants() -> list[tuple]:
    def sl(shape, starts, ends, axes=None, steps=None, ind="int64"):
        ins = [T(shape), const(starts, ind), const(ends, ind)]
        if axes is not None or steps is not None:
            ins.append(const(axes, ind) if axes is not None else None)
        if steps is not None:
            ins.append(const(steps, ind))
        return ins

    v = [("rank-2-axes-0-1", sl((5, 6), [1, 0], [4, 6], [0, 1]), None, [])]
    for label, ins in [
            ("rank-1", sl((10,), [2], [8])),
            ("rank-3-axis-1", sl((2, 5, 4), [1], [4], [1])),
            ("rank-4-two-axes", sl((2, 3, 6, 6), [1, 2], [3, 5], [2, 3])),
            ("rank-5-steps-2", sl((2, 1, 5, 3, 6), [0, 1], [5, 6], [2, 4], [2, 2])),
            ("attr-negative-starts-ends", sl((5, 6), [-3], [-1], [1])),
            ("attr-negative-axis", sl((5, 6), [1], [5], [-1])),
            ("attr-step-2", sl((10,), [1], [9], [0], [2])),
            ("attr-step-minus-1-reverse", sl((5, 6), [-1], [_I64_MIN], [1], [-1])),
            ("attr-step-minus-2", sl((10,), [8], [1], [0], [-2])),
            ("attr-axes-omitted", sl((5, 6), [1, 2], [3, 5])),
            ("attr-clamped-out-of-range", sl((5, 6), [-100, 2], [_I64_MAX, 1000], [0, 1])),
            ("attr-int32-indices", sl((5, 6), [1], [4], [0], [1], ind="int32")),
            ("empty-result", sl((5, 6), [3], [3], [1])),
            ("empty-input", sl((0, 6), [1], [4], [1]))]:
        v.append((label, ins, None, ["attr"] if label.startswith("attr") else []))
    v += _sizes_and_large(lambda s: (sl(s, [0, 0], [s[0], s[1]], [0, 1], [1, 2]), None))
    return v

def _squeeze_variants() -> list[tuple]:
    v = [("rank-4-axes-0-2", [T((1, 3, 1, 4)), const([0, 2])], None, [])]
    for label, shape, axes in [
            ("rank-0-no-axes", (), None),
            ("rank-1-to-scalar", (1,), None), ("rank-2-axes-0", (1, 4), [0]),
            ("rank-3-axes-1", (3, 1, 4), [1]), ("rank-5-axes-1-3", (2, 1, 3, 1, 4), [1, 3]),
            ("attr-negative-axis", (3, 1, 4), [-2]), ("attr-no-axes", (1, 3, 1, 4), None),
            ("empty-0x1x4", (0, 1, 4), [1])]:
        ins = [T(shape)] + ([const(axes)] if axes is not None else [])
        v.append((label, ins, None, ["attr"] if label.startswith("attr") else []))
    for n in SIZES:
        v.append((f"size-{n}", [T((1, n)), const([0])], None, [f"size-{n}"]))
    v.append(("large-1x1024x1024", [T((1, *LARGE)), const([0])], None, ["large"]))
    return v


def _unsqueeze_variants() -> list[tuple]:
    v = [("rank-2-axes-0", [T((3, 4)), const([0])], None, [])]
    for label, shape, axes in [
            ("rank-0-axes-0", (), [0]), ("rank-1-axes-1", (7,), [1]),
            ("rank-3-axes-0-3", (2, 3, 4), [0, 3]), ("rank-4-axes-neg1", (2, 3, 4, 5), [-1]),
            ("rank-5-axes-2", (2, 1, 3, 2, 4), [2]), ("attr-negative-axes", (3, 4), [-1, -3]),
            ("empty-0x4", (0, 4), [1])]:
        v.append((label, [T(shape), const(axes)], None,
                  ["attr"] if label.startswith("attr") else []))
    v += _sizes_and_large(lambda s: ([T(s), const([1])], None))
    return v


def _flatten_variants() -> list[tuple]:
    v = [("rank-4-axis-1", [T((2, 3, 4, 5))], None, [])]
    for label, shape, axis in [
            ("rank-0-axis-0", (), 0),
            ("rank-1-axis-0", (7,), 0), ("rank-2-axis-1", (3, 4), 1),
            ("rank-3-axis-2", (2, 3, 4), 2), ("rank-5-axis-3", (2, 1, 3, 2, 4), 3),
            ("attr-axis-0", (2, 3, 4), 0), ("attr-axis-neg1", (2, 3, 4), -1),
            ("attr-axis-rank", (2, 3, 4), 3), ("empty-0x3x4", (0, 3, 4), 1)]:
        v.append((label, [T(shape)], {"axis": axis},
                  ["attr"] if label.startswith("attr") else []))
    v += _sizes_and_large(lambda s: ([T(s)], {"axis": 1}))
    return v


def _expand_variants() -> list[tuple]:
    v = [("broadcast-3x1-to-2x3x4", [T((3, 1)), const([2, 3, 4])], None, ["broadcast"])]
    for label, shape, target in [
            ("broadcast-scalar-to-2x3", (), [2, 3]), ("broadcast-1-to-5", (1,), [5]),
            ("broadcast-two-way-4-by-3x1", (4,), [3, 1]),
            ("broadcast-smaller-shape", (3, 1, 4), [1, 1]),
            ("broadcast-rank-4", (2, 1, 4, 1), [2, 3, 4, 5]),
            ("broadcast-rank-5", (2, 1, 3, 1, 4), [2, 2, 3, 2, 4]),
            ("broadcast-empty", (0, 1), [0, 4])]:
        v.append((label, [T(shape), const(target)], None, ["broadcast"]))
    for n in SIZES:
        v.append((f"size-{n}", [T((1, n)), const([3, n])], None, [f"size-{n}", "broadcast"]))
    v.append(("large-1x1024-to-1024x1024", [T((1, 1024)), const([1024, 1024])], None,
              ["large", "broadcast"]))
    return v


def _shape_variants() -> list[tuple]:
    v = [("rank-2-3x4", [T((3, 4))], None, [])]
    for rank in (0, 1, 3, 4, 5):
        shape = RANK_SHAPES[rank]
        v.append((f"rank-{rank}-{shape_label(shape)}", [T(shape)], None, []))
    for label, attrs in [("start-1", {"start": 1}), ("end-neg1", {"end": -1}),
                         ("start-neg2", {"start": -2}), ("start-1-end-2", {"start": 1, "end": 2}),
                         ("start-past-end", {"start": 3, "end": 1})]:
        v.append((f"attr-{label}", [T((2, 3, 4, 5))], attrs, ["attr"]))
    v.append(("empty-0x3", [T((0, 3))], None, []))
    v += _sizes_and_large(lambda s: ([T(s)], None))
    return v


def _pad_variants() -> list[tuple]:
    def p(shape, pads, mode=None, value=None, axes=None):
        ins = [T(shape), const(pads)]
        if value is not None or axes is not None:
            ins.append(const(value, None) if value is not None else None)
        if axes is not None:
            ins.append(const(axes))
        return ins, ({"mode": mode} if mode else None)

    v = []
    for label, (ins, attrs) in [
            ("rank-2-constant", p((3, 4), [1, 2, 0, 1])),
            ("rank-1-constant", p((7,), [2, 3])),
            ("rank-3-edge", p((2, 3, 4), [0, 1, 1, 0, 2, 1], "edge")),
            ("rank-4-reflect", p((1, 2, 4, 5), [0, 0, 1, 2, 0, 0, 2, 1], "reflect")),
            ("rank-5-constant", p((2, 1, 3, 2, 4), [0, 0, 1, 0, 1, 0, 0, 0, 1, 1])),
            ("attr-constant-value", p((3, 4), [1, 1, 1, 1], value=1)),
            ("attr-reflect", p((3, 4), [2, 1, 1, 3], "reflect")),
            ("attr-edge", p((3, 4), [2, 1, 1, 3], "edge")),
            ("attr-wrap", p((3, 4), [1, 2, 2, 1], "wrap")),
            ("attr-axes", p((2, 3, 4), [2, 3], axes=[1])),
            ("attr-negative-axes", p((2, 3, 4), [1, 1, 2, 2], "edge", axes=[-1, 0])),
            ("empty-input-constant", p((0, 4), [1, 0, 1, 0]))]:
        v.append((label, ins, attrs, ["attr"] if label.startswith("attr") else []))
    # onnx.reference (1.23) rejects negative pads; cropping is plain slicing.
    ins, attrs = p((4, 5), [-1, 0, 0, -2])
    v.append(("attr-negative-pads-crop", ins, attrs, ["attr"], lambda a: [a[0][1:, :3]]))
    v += _sizes_and_large(lambda s: p(s, [0, 1, 0, 1], "reflect" if s[1] > 1 else None))
    return v


#: The case generator of each op of this family.
GENERATORS: dict[str, CaseGenerator] = {
    "Reshape": data_movement(_reshape_variants, ([T((4, 8)), const([8, 4])], None)),
    "Transpose": data_movement(_transpose_variants, ([T((4, 8))], {"perm": [1, 0]})),
    "Concat": data_movement(_concat_variants, ([T((4, 8)), T((4, 8))], {"axis": 1})),
    "Slice": data_movement(_slice_variants, ([T((4, 8)), const([1]), const([7]), const([1]),
                                              const([2])], None)),
    "Squeeze": data_movement(_squeeze_variants, ([T((1, 4, 8)), const([0])], None)),
    "Unsqueeze": data_movement(_unsqueeze_variants, ([T((4, 8)), const([1])], None)),
    "Flatten": data_movement(_flatten_variants, ([T((2, 4, 8))], {"axis": 2})),
    "Expand": data_movement(_expand_variants, ([T((4, 1)), const([4, 8])], None)),
    "Shape": data_movement(_shape_variants, None),
    "Pad": data_movement(_pad_variants, ([T((4, 8)), const([1, 2, 2, 1])], {"mode": "edge"})),
}
