"""The conformance suite's foundations: tolerances as data, and comparison with the oracle.

The oracle is the reference backend (onnx.reference). Tolerances live in
``tolerances.toml`` beside this file.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from typing import Any


def _toml() -> Any:
    """The TOML parser (tomllib, or tomli before Python 3.11)."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    return tomllib


def __getattr__(name: str) -> Any:
    # ``from backplane.conformance import tomllib``: the parser loads on first use only.
    if name == "tomllib":
        return _toml()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.lru_cache(maxsize=None)
def _table() -> dict[str, Any]:
    # The TOML parser loads with the first tolerance asked: discovery imports this package
    # (its hook module, conformance/hooks.py) and must stay light.
    from importlib import resources

    text = resources.files(__name__).joinpath("tolerances.toml").read_text("utf-8")
    table = _toml().loads(text)
    for key, entry in table.items():
        if key == "override":
            continue
        if set(entry) != {"rtol", "atol"} or any(
                not isinstance(v, (int, float)) or v < 0 for v in entry.values()):
            raise ValueError(f"tolerances.toml [{key}] must hold non-negative rtol and atol")
    for i, o in enumerate(table.get("override", [])):
        if not {"rtol", "atol", "reason"} <= set(o) or not (o.get("op") or o.get("backend")) \
                or not str(o["reason"]).strip():
            raise ValueError(f"tolerances.toml [[override]] {i + 1} needs rtol, atol, a "
                             "non-empty reason, and an op or a backend")
    return table


def tolerance(dtype: str, op: str | None = None, backend: str | None = None
              ) -> tuple[float, float]:
    """(rtol, atol) for outputs of ``dtype``; integers and booleans compare exactly.

    An ``[[override]]`` in ``tolerances.toml`` matching the op (and dtype, and backend, where
    it names them) replaces the per-dtype default; the most specific one wins.
    """
    found = tolerance_with_reason(dtype, op, backend)
    return found[0], found[1]


def tolerance_with_reason(dtype: str, op: str | None = None, backend: str | None = None
                          ) -> tuple[float, float, str]:
    """(rtol, atol, reason): the reason is '' for the per-dtype default."""
    table = _table()
    best, score = None, -1
    for o in table.get("override", []):
        if (o.get("op") not in (None, op) or o.get("dtype") not in (None, dtype)
                or o.get("backend") not in (None, backend)):
            continue
        specificity = sum(k in o for k in ("op", "dtype", "backend"))
        if specificity > score:
            best, score = o, specificity
    if best is not None:
        return float(best["rtol"]), float(best["atol"]), str(best["reason"])
    entry = table.get(dtype, table["exact"])
    return float(entry["rtol"]), float(entry["atol"]), ""


def field_of(case: Any, key: str) -> Any:
    """A case result's field, from a result or its dict (None where an older report has
    no such field)."""
    return case.get(key) if isinstance(case, dict) else getattr(case, key, None)


def is_float_dtype(dtype: Any) -> bool:
    """Whether ``dtype`` is a float type: numpy floats and complex, and the ml_dtypes floats
    (bfloat16, float8) that numpy reports as kind 'V'."""
    import numpy as np

    if dtype.kind in "fc":
        return True
    try:
        return dtype.kind == "V" and bool(np.isfinite(np.zeros(1, dtype)).all())
    except TypeError:
        return False


@dataclass(frozen=True)
class Comparison:
    """How an output compares with the reference."""

    ok: bool
    max_abs_error: float
    max_rel_error: float
    rtol: float
    atol: float
    detail: str = ""


def compare(actual: Any, expected: Any, rtol: float | None = None, atol: float | None = None
            ) -> Comparison:
    """Compare an output with the reference output.

    Shape and dtype must be exactly equal. Values pass when ``|actual - expected| <= atol +
    rtol * |expected|`` element-wise, with NaN matching NaN and an infinity matching the
    same infinity. The tolerance is that of the dtype unless ``rtol``/``atol`` are given.
    """
    import numpy as np

    expected = np.asarray(expected)
    actual = np.asarray(actual)
    default_rtol, default_atol = tolerance(str(expected.dtype))
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol
    if expected.dtype.kind in "OU" and actual.dtype.kind in "OU":
        # ONNX strings: numpy holds them as object or fixed-width unicode arrays alike.
        expected, actual = expected.astype(object), actual.astype(object)
    if actual.shape != expected.shape or actual.dtype != expected.dtype:
        return Comparison(False, float("inf"), float("inf"), rtol, atol,
                          f"got {actual.dtype}{list(actual.shape)}, "
                          f"expected {expected.dtype}{list(expected.shape)}")
    if expected.size == 0:
        return Comparison(True, 0.0, 0.0, rtol, atol)
    if not is_float_dtype(expected.dtype):
        # Integers, booleans, strings: exactly equal, unless an override grants integers an
        # atol (a quantizer off by one step at a rounding tie, with its reason).
        numeric = expected.dtype.kind in "iu"
        diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64)) \
            if expected.dtype.kind in "iub" else np.zeros(1)
        slack = atol if numeric else 0.0
        wrong = int(np.count_nonzero(diff > slack)) if numeric \
            else int(np.count_nonzero(actual != expected))
        return Comparison(wrong == 0, float(diff.max()), float(diff.max()), 0.0, slack,
                          f"{wrong} of {expected.size} elements differ" if wrong else "")
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    same = (a == e) | (np.isnan(a) & np.isnan(e))  # equal infinities, or both NaN
    nan_mismatch = bool(np.any(np.isnan(a) != np.isnan(e)))
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.where(same, 0.0, np.abs(a - e))
        diff = np.where(np.isnan(diff), np.inf, diff)
        max_abs = float(diff.max())
        # Relative to |expected|, floored at atol so near-zero references do not explode it.
        floor = atol if atol > 0 else np.finfo(np.float64).tiny
        scale = np.maximum(np.abs(np.where(np.isfinite(e), e, 0.0)), floor)
        max_rel = float((diff / scale).max())
        outside = int(np.count_nonzero(~(diff <= atol + rtol * np.abs(
            np.where(np.isfinite(e), e, 0.0)))))
    if nan_mismatch:
        detail = "NaN where the reference has none (or the reverse)"
    else:
        detail = f"{outside} of {expected.size} elements outside tolerance" if outside else ""
    return Comparison(not nan_mismatch and outside == 0, max_abs, max_rel, rtol, atol, detail)
