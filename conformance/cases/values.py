"""Random input data of the generated cases: ordinary values of a kind, and special values."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from onnx import helper

from backplane.model.graph import DTYPE_CODES

#: The unsigned integer types among the generated ones: their data starts at zero.
UNSIGNED = {"uint8"}
_INT_RANGES = {  # inclusive ranges for integer data, small enough that no op overflows int8
    "normal": (-8, 8), "positive": (1, 8), "nonzero": (1, 8), "nonneg": (0, 15),
    "dividend": (0, 15), "high": (8, 15), "low": (0, 7), "base": (0, 4), "exponent": (0, 3),
}


def np_dtype(dtype: str) -> np.dtype:
    """The numpy dtype of a dtype name (``backplane.model.graph.DTYPE_NAMES``)."""
    return np.dtype(helper.tensor_dtype_to_np_dtype(DTYPE_CODES[dtype]))


def is_float(dtype: str) -> bool:
    """Whether a dtype name is a floating-point type."""
    return dtype in ("float32", "float16", "bfloat16", "float64")


def random_values(rng: np.random.Generator, dtype: str, shape: tuple[int, ...], kind: Any
                  ) -> np.ndarray:
    """Random data of one kind: ``normal`` (standard normal / small integers), ``positive``
    (Sqrt, Log, Pow bases), ``nonzero`` (divisors) ... or a callable ``(rng, shape, dtype)``."""
    return np.asarray(_raw_values(rng, dtype, shape, kind))  # rank 0: an array, not a scalar


def _raw_values(rng: np.random.Generator, dtype: str, shape: tuple[int, ...], kind: Any) -> Any:
    dt = np_dtype(dtype)
    if callable(kind):
        return np.asarray(kind(rng, shape, dtype)).astype(dt)
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if is_float(dtype):
        if kind in ("positive", "base"):
            v = rng.uniform(0.5, 2.0, shape)
        elif kind == "nonzero":
            v = rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape)
        elif kind == "nonneg":
            v = np.abs(rng.standard_normal(shape))
        else:
            v = rng.standard_normal(shape)
        return v.astype(dt)
    if kind == "full":  # the whole range of 8-bit types; +-2**20 for wider ones
        info = np.iinfo(dt)
        lo, hi = max(int(info.min), -2 ** 20), min(int(info.max), 2 ** 20)
        return rng.integers(lo, hi + 1, shape).astype(dt)
    lo, hi = _INT_RANGES.get(kind, _INT_RANGES["normal"])
    if dtype in UNSIGNED:
        lo, hi = max(lo, 0), max(hi, 15 if kind == "normal" else hi)
    return rng.integers(lo, hi + 1, shape).astype(dt)


_SPECIALS = ("nan", "inf", "-inf", "-0", "0", "denormal", "-denormal", "huge")


def _special_table(dtype: str) -> dict[str, float]:
    """The value of each special kind in ``dtype``; ``huge`` is a quarter of the largest
    finite value, so that one operation with an ordinary number stays finite."""
    import ml_dtypes

    info = ml_dtypes.finfo(np_dtype(dtype))
    return {"nan": np.nan, "inf": np.inf, "-inf": -np.inf, "-0": -0.0, "0": 0.0,
            "denormal": float(info.smallest_normal) / 4,
            "-denormal": -float(info.smallest_normal) / 4, "huge": float(info.max) / 4}


def special_data(exclude: Iterable[str] = ()) -> Callable:
    """Normal data with NaN, +-inf, +-0.0, denormals and huge values at random places."""
    chosen = [s for s in _SPECIALS if s not in set(exclude)]

    def make(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        dt = np_dtype(dtype)
        table = _special_table(dtype)
        out = rng.standard_normal(shape).astype(dt)
        flat = out.reshape(-1)
        where = rng.permutation(flat.size)[:len(chosen)]
        flat[where] = np.array([table[s] for s in chosen[:len(where)]]).astype(dt)
        return out
    return make


#: The values of the pairs cases: every special kind and two ordinary numbers.
_PAIR_VALUES = ("nan", "inf", "-inf", "-0", "0", "denormal", "-denormal", "huge", 1.5, -2.0)


def pairs_data(first: bool) -> Callable:
    """One side of every pair of :data:`_PAIR_VALUES` (10 x 10 elements): the first operand
    repeats each value, the second cycles through them, so that NaN meets NaN, inf meets
    -inf, and zero meets zero of both signs."""
    def make(rng: np.random.Generator, shape: tuple[int, ...], dtype: str) -> np.ndarray:
        table = _special_table(dtype)
        values = np.array([table[v] if isinstance(v, str) else v for v in _PAIR_VALUES])
        n = len(values)
        grid = np.repeat(values, n) if first else np.tile(values, n)
        return grid.reshape(shape)
    return make


#: The shape of a pairs case's operands.
PAIRS_SHAPE = (len(_PAIR_VALUES), len(_PAIR_VALUES))
#: Ops whose special-values cases check the sign of zero: the ones IEEE 754 and ONNX pin it
#: down for (Abs, Neg) and those that only move or select data.
SIGNED_ZERO_OPS = frozenset({"Abs", "Neg", "Where", "Cast", "Reshape", "Transpose", "Concat",
                             "Slice", "Gather", "Squeeze", "Unsqueeze", "Flatten", "Expand",
                             "Pad"})


def multiples_of(group: int) -> Callable:
    """Integers that are multiples of ``group``: an integer mean over ``group`` values is exact."""
    return lambda rng, shape, dtype: rng.integers(-8, 9, shape) * group
