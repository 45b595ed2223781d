"""Special values: how a special-values case is judged, and the words for what differed.

A case tagged ``special-values`` feeds NaN, +-inf, +-0.0, denormals and huge values. Its
outputs are compared in two parts. The *special* elements (where the oracle or the backend
has NaN or an infinity, where an element-wise op read a special value, and, for a case with
``signed_zero``, where the oracle has a zero) must agree exactly: NaN where the oracle has
NaN, the same infinity, the same sign of zero where the case says so, ordinary numbers
within tolerance. The *ordinary* elements are compared as in any case.

A backend wrong on ordinary elements fails the case. One right on them and wrong only on
special elements gets the verdict ``special-values``, with each difference in words
(``Relu(NaN) = 0, expected NaN``): it counts as passed for qualification, and the reports,
the stored results and the plans say what differs.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any
from backplane.conformance import compare, field_of, is_float_dtype

#: The verdict of a case right on ordinary values and wrong on special ones.
STATUS = "special-values"
#: The tag of special-values cases.
TAG = "special-values"
#: At most this many differences are put in words per case; the rest are counted.
MAX_PER_CASE = 6
#: Ops whose output element i depends on input element i alone (inputs broadcast): a
#: difference is named by the input values that produced it.
ELEMENTWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Exp", "Log", "Erf", "Abs", "Neg", "Relu",
    "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Gelu", "Clip", "Cast",
    "Where", "Max", "Min", "Equal", "Less", "Greater", "Elu", "Softplus", "IsNaN", "IsInf",
    "QuantizeLinear"})


def node_inputs(case: Any) -> list[tuple[Any, bool]]:
    """A one-node case's input arrays in the node's order, each with whether it is a
    constant (an initializer); ``(None, False)`` where an input is omitted."""
    from onnx import numpy_helper

    consts = {t.name: numpy_helper.to_array(t) for t in case.model.graph.initializer}
    out = []
    for name in case.model.graph.node[0].input:
        if name in consts:
            out.append((consts[name], True))
        else:
            out.append((case.inputs.get(name) if name else None, False))
    return out


def judge(op: str, inputs: Sequence[tuple[Any, bool]], actual: Any, expected: Any,
          rtol: float, atol: float, signed_zero: bool = False) -> tuple[Any, list[str]]:
    """One output of a special-values case: (the comparison of its ordinary elements, as
    :func:`backplane.conformance.compare` makes it, and the differences at its special
    elements in words). An empty list: the special elements agree."""
    import numpy as np


    a, e = np.asarray(actual), np.asarray(expected)
    if a.shape != e.shape or a.dtype != e.dtype or e.size == 0:
        return compare(a, e, rtol, atol), []
    special = _special_positions(op, inputs, a, e, signed_zero)
    ordinary = compare(a[~special], e[~special], rtol, atol)
    wrong = special & ~_agree(a, e, rtol, atol, signed_zero)
    return ordinary, describe(op, inputs, a, e, wrong) if wrong.any() else []


def _floats(x: Any) -> Any:
    """``x`` as float64 if it holds floats (numpy's or ml_dtypes'), else None."""
    import numpy as np


    x = np.asarray(x)
    return x.astype(np.float64) if is_float_dtype(x.dtype) else None


def _special_values(x: Any) -> Any:
    """Where ``x`` (a float array) holds a special value: NaN, an infinity, a zero, a
    denormal, or a value of at least a quarter of the type's largest."""
    import ml_dtypes
    import numpy as np

    info = ml_dtypes.finfo(np.asarray(x).dtype)
    f = np.abs(np.asarray(x).astype(np.float64))
    with np.errstate(invalid="ignore"):
        return ~np.isfinite(f) | (f < float(info.smallest_normal)) | (f >= float(info.max) / 4)


def _broadcast_inputs(op: str, inputs: Sequence[tuple[Any, bool]], shape: tuple) -> list | None:
    """The inputs broadcast to the output's shape, for an element-wise op; else None."""
    import numpy as np

    if op not in ELEMENTWISE:
        return None
    out = []
    for value, _ in inputs:
        if value is None:
            out.append(None)
            continue
        try:
            out.append(np.broadcast_to(np.asarray(value), shape))
        except ValueError:  # per-axis parameters: not element by element after all
            return None
    return out


def _special_positions(op: str, inputs: Sequence[tuple[Any, bool]], a: Any, e: Any,
                       signed_zero: bool) -> Any:
    import numpy as np

    mask = np.zeros(e.shape, bool)
    af, ef = _floats(a), _floats(e)
    if ef is not None:
        mask |= ~np.isfinite(af) | ~np.isfinite(ef)
        if signed_zero:
            mask |= ef == 0
    for x in _broadcast_inputs(op, inputs, e.shape) or []:
        if x is not None and _floats(x) is not None:
            mask |= _special_values(x)
    return mask


def _agree(a: Any, e: Any, rtol: float, atol: float, signed_zero: bool) -> Any:
    """Element-wise: NaN where NaN, the same infinity, ordinary numbers within tolerance,
    and with ``signed_zero`` the same sign of zero; other types exactly equal."""
    import numpy as np

    af, ef = _floats(a), _floats(e)
    if ef is None:
        return np.asarray(a == e)
    with np.errstate(invalid="ignore", over="ignore"):
        ok = (np.isnan(af) & np.isnan(ef)) | (af == ef) | (
            np.isfinite(af) & np.isfinite(ef) & (np.abs(af - ef) <= atol + rtol * np.abs(ef)))
    if signed_zero:
        ok &= ~((af == 0) & (ef == 0) & (np.signbit(af) != np.signbit(ef)))
    return ok


def label(value: Any) -> str:
    """A value in words: ``NaN``, ``inf``, ``-inf``, ``-0``, ``0``, ``true``, or the number
    to four significant digits."""
    import numpy as np

    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    v = float(value)
    if np.isnan(v):
        return "NaN"
    if np.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v == 0:
        return "-0" if np.signbit(v) else "0"
    return f"{v:.4g}"


def _input_label(value: Any, by_value: bool) -> str:
    """An input element in words: by its value if it is special or ``by_value``, else
    ``x`` (an ordinary element of random data)."""
    if by_value or _floats(value) is None or bool(_special_values(value)):
        return label(value)
    return "x"


def _by_value(value: Any, const: bool) -> bool:
    """Whether an input's ordinary elements are named by value: a constant, or an input of
    a few distinct values (the pairs cases, integer exponents), not random data."""
    import numpy as np

    return const or np.unique(np.asarray(value).astype(np.float64)).size <= 12


def describe(op: str, inputs: Sequence[tuple[Any, bool]], a: Any, e: Any, wrong: Any
             ) -> list[str]:
    """The differences at the positions ``wrong``, in words, most frequent first: for an
    element-wise op ``Relu(NaN) = 0, expected NaN``; else ``MaxPool: finite values (e.g.
    1.27) where the oracle has NaN (2 of 18 outputs)``."""
    import numpy as np

    spread = _broadcast_inputs(op, inputs, e.shape)
    named = [x is not None and _by_value(x, c) for x, c in inputs]
    groups: dict[str, list] = {}  # text -> [count, first actual value]
    for pos in map(tuple, np.argwhere(wrong)):
        if spread is not None:
            args = ", ".join(_input_label(x[pos], n) for x, n in zip(spread, named)
                             if x is not None)
            text = f"{op}({args}) = {label(a[pos])}, expected {label(e[pos])}"
        else:
            text = f"{op}: {_kind(a[pos])} where the oracle has {_kind(e[pos])}"
        groups.setdefault(text, [0, a[pos]])[0] += 1
    ranked = []
    for text, (n, sample) in sorted(groups.items(), key=lambda item: -item[1][0]):
        if spread is None:  # how many, and an example of the ordinary values
            if _kind(sample) == "finite values":
                text = text.replace("finite values", f"finite values (e.g. {label(sample)})", 1)
            text += f" ({n} of {e.size} outputs)"
        ranked.append(text)
    extra = len(ranked) - MAX_PER_CASE
    return ranked[:MAX_PER_CASE] + ([f"and {extra} more"] if extra > 0 else [])


def _kind(value: Any) -> str:
    """A value's class for ops that are not element-wise: NaN, inf, -inf, -0, 0 or finite."""
    text = label(value)
    return text if text in ("NaN", "inf", "-inf", "-0", "0", "true", "false") \
        else "finite values"


def summarize(cases: Sequence[Any]) -> dict[str, list[str]]:
    """Per op, every difference the cases with the ``special-values`` verdict recorded
    (each once, in order of first appearance, without a case's counts and example values);
    case results as objects or dicts."""
    import re


    out: dict[str, list[str]] = {}
    for c in cases:
        if field_of(c, "status") != STATUS:
            continue
        seen = out.setdefault(field_of(c, "op"), [])
        for text in field_of(c, "deviations") or []:
            text = re.sub(r" \(e\.g\. [^)]*\)| \(\d+ of \d+ outputs\)", "", text)
            if text not in seen and not text.startswith("and "):
                seen.append(text)
    return dict(sorted(out.items()))


def union(first: dict[str, list[str]], second: dict[str, list[str]]) -> dict[str, list[str]]:
    """Two runs' differences together (op -> each difference once): which ones a run meets
    depends on where its random NaN and infinities fall (a max that keeps its first
    operand drops a NaN only when it is not first), so runs of one version add up."""
    out = {op: list(texts) for op, texts in first.items()}
    for op, texts in second.items():
        out.setdefault(op, []).extend(t for t in texts if t not in out[op])
    return dict(sorted(out.items()))


# --------------------------------------------------------------------------- the shipped record

#: The measured special-value behaviour of the built-in backends, shipped with the package.
SHIPPED = "special_values.toml"


def shipped() -> dict[str, dict[str, Any]]:
    """The shipped record, by backend: ``device``, ``kind``, ``versions`` (text) and ``ops``
    (op -> differences in words); empty when it is missing or unreadable."""
    return dict(_shipped())


@functools.lru_cache(maxsize=1)
def _shipped() -> tuple:
    import sys
    from importlib import resources

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        text = resources.files(__package__).joinpath(SHIPPED).read_text("utf-8")
        table = tomllib.loads(text).get("backend", {})
    except (OSError, ValueError):
        return ()
    return tuple((name, entry) for name, entry in table.items() if isinstance(entry, dict)
                 and isinstance(entry.get("ops", {}), dict))


#: The runtime package whose version a built-in backend's special values depend on.
RUNTIME_OF = {"onnxruntime": "onnxruntime", "openvino-cpu": "openvino", "torch-cpu": "torch",
              "opencl": "pyopencl", "reference": "onnx"}


def render_shipped(results: dict[str, Any], runtimes: dict[str, str] | None = None) -> str:
    """The shipped record (TOML) from docs/data/conformance-results.json's per-backend
    results: every backend with a stored run, its differences per op (none: an empty
    table, measured and as the oracle). ``runtimes``: the installed runtime versions, by
    package, where the reports do not name them."""
    import json

    q = json.dumps  # a JSON string is a TOML basic string
    lines = ["# The special-value behaviour of the built-in backends, measured: how each differs",
             "# from the oracle on NaN, infinities and the sign of zero (the conformance verdict",
             "# special-values). Written by `backplane conformance ops --report REPORT.json` from",
             "# docs/data/conformance-results.json: do not edit. Read by",
             "# backplane.conformance.store.special_value_deviations when no run on the device",
             "# itself is stored."]
    for name, r in sorted(results.items()):
        if "special_values" not in r:
            continue  # a run from before the verdict: nothing known
        named = dict(r.get("versions") or {})
        runtime = RUNTIME_OF.get(name)
        if runtime and runtime not in named and (runtimes or {}).get(runtime, "-") != "-":
            named[runtime] = runtimes[runtime]
        versions = ", ".join(f"{k} {v}" for k, v in sorted(named.items())
                             if k not in ("python", "backplane", "numpy", "onnx")
                             or k == runtime)
        lines += ["", f"[backend.{q(name)}]", f"device = {q(str(r.get('device')))}",
                  f"kind = {q(str(r.get('kind') or 'cpu'))}", f"versions = {q(versions)}",
                  f"seed = {int(r.get('seed') or 0)}", "", f"[backend.{q(name)}.ops]"]
        lines += [f"{q(op)} = [{', '.join(q(t) for t in texts)}]"
                  for op, texts in sorted(r["special_values"].items())]
    return "\n".join(lines) + "\n"
