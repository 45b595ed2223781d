"""The conformance suite's foundations: tolerances as data, and comparison with the oracle.

The oracle is the reference backend (onnx.reference). Tolerances live in
``tolerances.toml`` beside this file.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from importlib import resources
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@functools.lru_cache(maxsize=None)
def _table() -> dict[str, dict[str, float]]:
    text = resources.files(__name__).joinpath("tolerances.toml").read_text("utf-8")
    table = tomllib.loads(text)
    for key, entry in table.items():
        if set(entry) != {"rtol", "atol"} or any(
                not isinstance(v, (int, float)) or v < 0 for v in entry.values()):
            raise ValueError(f"tolerances.toml [{key}] must hold non-negative rtol and atol")
    return table


def tolerance(dtype: str) -> tuple[float, float]:
    """(rtol, atol) for outputs of ``dtype``; integers and booleans compare exactly."""
    table = _table()
    entry = table.get(dtype, table["exact"])
    return float(entry["rtol"]), float(entry["atol"])


@dataclass(frozen=True)
class Comparison:
    """How an output compares with the reference."""

    ok: bool
    max_abs_error: float
    max_rel_error: float
    rtol: float
    atol: float
    detail: str = ""


def compare(actual: Any, expected: Any) -> Comparison:
    """Compare an output with the reference output, using the tolerance of its dtype."""
    import numpy as np

    expected = np.asarray(expected)
    actual = np.asarray(actual)
    rtol, atol = tolerance(str(expected.dtype))
    if actual.shape != expected.shape or actual.dtype != expected.dtype:
        return Comparison(False, float("inf"), float("inf"), rtol, atol,
                          f"got {actual.dtype}{list(actual.shape)}, "
                          f"expected {expected.dtype}{list(expected.shape)}")
    if expected.size == 0:
        return Comparison(True, 0.0, 0.0, rtol, atol)
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    nan_mismatch = bool(np.any(np.isnan(a) != np.isnan(e)))
    diff = np.abs(np.where(np.isnan(e), 0.0, a - e))
    max_abs = float(np.nanmax(diff))
    # Relative to |expected|, floored at atol so that near-zero references do not explode it.
    floor = atol if atol > 0 else np.finfo(np.float64).tiny
    max_rel = float(np.nanmax(diff / np.maximum(np.abs(np.nan_to_num(e)), floor)))
    ok = not nan_mismatch and bool(np.all(diff <= atol + rtol * np.abs(np.nan_to_num(e))))
    return Comparison(ok, max_abs, max_rel, rtol, atol, "NaN where the reference has none"
                      if nan_mismatch else "")
