"""Cases of the element-wise ops (unary, binary, Pow, Clip, Where), and the special-values
cases of the ops outside the core set."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from backplane.conformance.cases.build import (LARGE, RANK_SHAPES, SIZES, T, Builder, CaseGenerator,
                                               const, shape_label)
from backplane.conformance.cases.values import (PAIRS_SHAPE, UNSIGNED, is_float, pairs_data,
                                                special_data)


def _unary(kind: str = "normal", exclude: Iterable[str] | None = (),
           variants: Sequence[tuple[str, dict, Callable[[str], list]]] = (),
           extra: Callable[[str], list] = lambda dtype: []) -> Callable:
    """An element-wise op of one data input; ``extra`` gives its other inputs per dtype;
    ``exclude`` names the special values whose result is not pinned down (None: no
    special-value case)."""
    def gen(b: Builder, dtypes: list[str]) -> None:
        main = dtypes[0]
        for rank, shape in RANK_SHAPES.items():
            b.add(main, f"rank-{rank}-{shape_label(shape)}", [T(shape, kind), *extra(main)])
        b.add(main, "empty-2x0x3", [T((2, 0, 3), kind), *extra(main)])
        for n in SIZES:
            b.add(main, f"size-{n}", [T((2, n), kind), *extra(main)], tags=[f"size-{n}"])
        b.add(main, "large-1024x1024", [T(LARGE, kind), *extra(main)], tags=["large"])
        for label, attrs, more in variants:
            b.add(main, f"attr-{label}", [T((3, 4), kind), *more(main)], attrs, tags=["attr"])
        for dt in dtypes:
            if dt != main:
                b.add(dt, "rank-2-3x4", [T((3, 4), kind), *extra(dt)])
            if exclude is not None and is_float(dt):
                b.add(dt, "special-values", [T((4, 8), special_data(exclude)), *extra(dt)],
                      tags=["special-values"])
    return gen


_BROADCASTS = [((3, 1, 4), (4,)), ((2, 3, 4), (3, 1)), ((), (3, 4)), ((1, 4), (3, 1)),
               ((2, 1, 3, 1, 4), (3, 5, 1))]


def _binary(kinds: tuple[str, str], special: bool = True) -> Callable:
    """An element-wise op of two inputs with numpy broadcasting."""
    kx, ky = kinds

    def gen(b: Builder, dtypes: list[str]) -> None:
        main = dtypes[0]
        for rank, shape in RANK_SHAPES.items():
            b.add(main, f"rank-{rank}-{shape_label(shape)}", [T(shape, kx), T(shape, ky)])
        for sx, sy in _BROADCASTS:
            b.add(main, f"broadcast-{shape_label(sx)}+{shape_label(sy)}", [T(sx, kx), T(sy, ky)],
                  tags=["broadcast"])
        b.add(main, "empty-0x4", [T((0, 4), kx), T((0, 4), ky)])
        b.add(main, "broadcast-empty-2x0x3+3", [T((2, 0, 3), kx), T((3,), ky)],
              tags=["broadcast"])
        for n in SIZES:
            b.add(main, f"size-{n}", [T((2, n), kx), T((2, n), ky)], tags=[f"size-{n}"])
        b.add(main, "large-1024x1024", [T(LARGE, kx), T(LARGE, ky)], tags=["large"])
        for dt in dtypes:
            if dt != main:
                b.add(dt, "rank-2-3x4", [T((3, 4), kx), T((3, 4), ky)])
                b.add(dt, "broadcast-3x1x4+4", [T((3, 1, 4), kx), T((4,), ky)],
                      tags=["broadcast"])
            if special and is_float(dt):
                b.add(dt, "special-values", [T((4, 8), special_data()), T((4, 8), ky)],
                      tags=["special-values"])
        _special_pairs(b)
    return gen


def _special_pairs(b: Builder, dtype: str = "float32") -> None:
    """The ``special-values-pairs`` case of a binary op: every pair of special values."""
    b.add(dtype, "special-values-pairs", [T(PAIRS_SHAPE, pairs_data(True)),
                                          T(PAIRS_SHAPE, pairs_data(False))],
          tags=["special-values"])


def _small_integers(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Integer-valued exponents from -2 to 3: a power of a negative base stays real."""
    return rng.integers(-2, 4, shape)


def _pow(b: Builder, dtypes: list[str]) -> None:
    _binary(("base", "exponent"), special=False)(b, dtypes)
    # IEEE 754's pow: pow(x, 0) is 1 even for NaN, pow(1, y) is 1 even for NaN, a negative
    # base to an integer power is real; onnx.reference computes it with numpy's C pow.
    b.add("float32", "special-values", [T((4, 8), special_data()), T((4, 8), _small_integers)],
          tags=["special-values"])
    # The exponent has its own type parameter (T1).
    b.add("float32", "attr-exponent-int64", [T((3, 4), "base"), T((3, 4), "exponent", "int64")],
          tags=["attr"])
    b.add("float16", "attr-exponent-float32",
          [T((3, 4), "base"), T((3, 4), "normal", "float32")], tags=["attr"])
    b.add("int32", "attr-exponent-int64", [T((3, 4), "base"), T((3, 4), "exponent", "int64")],
          tags=["attr"])


def _clip_bounds(dtype: str) -> list[T]:
    lo, hi = (-0.5, 0.5) if is_float(dtype) else ((3, 9) if dtype in UNSIGNED else (-3, 3))
    return [const(lo, None), const(hi, None)]


_CLIP_VARIANTS = [
    ("min-only", {}, lambda dt: [_clip_bounds(dt)[0]]),
    ("max-only", {}, lambda dt: [None, _clip_bounds(dt)[1]]),
    ("no-bounds", {}, lambda dt: []),
]


def _clip(b: Builder, dtypes: list[str]) -> None:
    _unary(variants=_CLIP_VARIANTS, extra=_clip_bounds)(b, dtypes)
    # Without bounds Clip is the identity: infinities stay infinite, NaN stays NaN.
    b.add("float32", "special-values-no-bounds", [T((4, 8), special_data())],
          tags=["special-values"])


def _where(b: Builder, dtypes: list[str]) -> None:
    cond = functools.partial(T, kind="normal", dtype="bool")
    main = dtypes[0]
    for rank, shape in RANK_SHAPES.items():
        b.add(main, f"rank-{rank}-{shape_label(shape)}", [cond(shape), T(shape), T(shape)])
    for sc, sx, sy in [((3, 1), (1, 4), (3, 4)), ((), (3, 4), ()), ((2, 1, 4), (3, 1), (4,)),
                       ((2, 1, 3, 1, 1), (1, 4, 1, 2, 1), (5,))]:
        b.add(main, f"broadcast-{shape_label(sc)}+{shape_label(sx)}+{shape_label(sy)}",
              [cond(sc), T(sx), T(sy)], tags=["broadcast"])
    b.add(main, "empty-0x4", [cond((0, 4)), T((0, 4)), T((0, 4))])
    for n in SIZES:
        b.add(main, f"size-{n}", [cond((2, n)), T((2, n)), T((2, n))], tags=[f"size-{n}"])
    b.add(main, "large-1024x1024", [cond(LARGE), T(LARGE), T(LARGE)], tags=["large"])
    for dt in dtypes:
        if dt != main:
            b.add(dt, "broadcast-3x1+1x4+3x4", [cond((3, 1)), T((1, 4)), T((3, 4))],
                  tags=["broadcast"])
        if is_float(dt):
            b.add(dt, "special-values", [cond((4, 8)), T((4, 8), special_data()),
                                         T((4, 8), special_data())], tags=["special-values"])


#: The case generator of each op of this family.
GENERATORS: dict[str, CaseGenerator] = {
    "Add": _binary(("normal", "normal")),
    "Sub": _binary(("high", "low")),
    "Mul": _binary(("normal", "normal")),
    "Div": _binary(("dividend", "nonzero")),
    "Pow": _pow,
    "Sqrt": _unary("positive"),
    "Exp": _unary(),
    "Log": _unary("positive"),
    "Erf": _unary(),
    "Abs": _unary(),
    "Neg": _unary(),
    # NaN propagates through max and min as through every IEEE 754 operation (numpy's
    # maximum, the oracle's, does; IEEE 754-2019 maximum does): Relu(NaN) is NaN.
    "Relu": _unary(),
    "LeakyRelu": _unary(variants=[("alpha-0.2", {"alpha": 0.2}, lambda dt: [])]),
    "Sigmoid": _unary(),
    "Tanh": _unary(),
    "HardSigmoid": _unary(variants=[
        ("alpha-0.5-beta-0.3", {"alpha": 0.5, "beta": 0.3}, lambda dt: [])]),
    # inf * 0 inside the formula: the limits at +-inf are not what a formula computes.
    "HardSwish": _unary(exclude=["inf", "-inf"]),
    "Gelu": _unary(exclude=["inf", "-inf"], variants=[
        ("approximate-tanh", {"approximate": "tanh"}, lambda dt: []),
        ("approximate-none", {"approximate": "none"}, lambda dt: [])]),
    "Clip": _clip,
    "Where": _where,
}


def _special_only(exclude: Iterable[str] = (), axes: bool = False) -> Callable:
    """The one special-values case of an op outside the core set (float32)."""
    def gen(b: Builder, dtypes: list[str]) -> None:
        b.add("float32", "special-values", [T((4, 8), special_data(exclude))]
              + ([const([1])] if axes else []), tags=["special-values"])
    return gen


#: Ops outside the core set whose results on NaN, infinities and zeros ONNX defines (by
#: IEEE 754: NaN propagates through max and min and compares false): each has special-values
#: cases only, in the mandatory tier, so a backend that declares one is checked on them.
SPECIAL_ONLY: dict[str, Callable[[Builder, list[str]], None]] = {
    **{op: lambda b, dtypes: _special_pairs(b) for op in ("Max", "Min", "Equal", "Less",
                                                          "Greater")},
    "ReduceMin": _special_only(axes=True),
    "Elu": _special_only(),
    # log(exp(x) + 1) of a huge x overflows in the oracle's float64 too; the limit is x.
    "Softplus": _special_only(["huge"]),
    "IsNaN": _special_only(),
    "IsInf": _special_only(),
}
