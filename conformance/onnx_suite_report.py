"""Judging and reporting a run of ONNX's backend test suite (:mod:`.onnx_suite`).

- the outcomes: :class:`Outcome` (one column on one case) and :class:`CaseResult`;
- :func:`compare`: outputs against the suite's expected outputs, as ONNX's runner judges;
- :func:`cause_of`: why a column could not run a case (:data:`CAUSES`);
- :func:`counts`, :func:`failures` (wrong first, then by cause) and :func:`targets` (the
  cases some runtime passes directly but the automatic plan does not, and the cases where
  the automatic plan is wrong), :func:`to_dict` and :func:`render`;
- the gaps file (:func:`read_gaps`, :func:`write_gaps`): the known ``missed`` cases of the
  CI sample, one id a line, with the cause as a comment.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import onnx

AUTO = "auto"
ORT_DIRECT = "onnxruntime-direct"
OV_DIRECT = "openvino-direct"
DIRECT = (ORT_DIRECT, OV_DIRECT)
#: ONNX's default tolerance for the backend tests (``onnx.backend.test.loader``).
RTOL, ATOL = 1e-3, 1e-7

#: Case names shown per failure group in the text report.
SHOWN = 4
#: The command that regenerates the gaps file (said in the file and in the test's message).
GAPS_COMMAND = ("backplane conformance onnx-suite --sample --no-pinned --write-gaps "
                "conformance/onnx_suite_gaps.txt")


@dataclass
class Outcome:
    """One column's result on one case."""

    status: str  # "pass", "wrong" or "error"
    cause: str | None = None
    detail: str = ""
    seconds: float = 0.0
    max_abs_error: float | None = None
    backends: list[str] = field(default_factory=list)
    """The backends a backplane plan ran on (auto and pinned columns)."""
    unavailable: list[str] = field(default_factory=list)
    """Backends the run expected that had no device in the worker (their probe failed)."""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        d = {"status": self.status, "cause": self.cause, "detail": self.detail,
             "seconds": round(self.seconds, 4), "max_abs_error": self.max_abs_error}
        if self.backends:
            d["backends"] = self.backends
        if self.unavailable:
            d["unavailable"] = self.unavailable
        return d


@dataclass
class CaseResult:
    """Every column's outcome on one case."""

    id: str
    set: str
    op: str
    outcomes: dict[str, Outcome]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"id": self.id, "set": self.set, "op": self.op,
                "results": {c: o.to_dict() for c, o in self.outcomes.items()}}


class _Missing:
    """An output the runner left out of its answer (compared, it is never right)."""

    def __repr__(self) -> str:
        return "<missing>"


MISSING = _Missing()


# --------------------------------------------------------------------------- comparing

def compare(got: list[Any], want: list[Any], rtol: float = RTOL, atol: float = ATOL,
            values: bool = True) -> tuple[bool, float | None, str]:
    """Whether ``got`` reproduces ``want`` as ONNX's runner judges (:mod:`.onnx_suite`):
    ``(ok, largest absolute difference or None, what differs)``. With ``values`` False
    only the structure, shapes and dtypes are compared."""
    if len(got) != len(want):
        return False, None, f"{len(got)} outputs, expected {len(want)}"
    results = [_compare_one(g, w, rtol if values else None, atol, f"output {i}")
               for i, (g, w) in enumerate(zip(got, want))]
    errors = [r[1] for r in results if r[1] is not None]
    return (all(r[0] for r in results), max(errors) if errors else None,
            "; ".join(r[2] for r in results if r[2]))


def _compare_one(got: Any, want: Any, rtol: float | None, atol: float, where: str
                 ) -> tuple[bool, float | None, str]:
    if isinstance(got, _Missing):
        return False, None, f"{where} missing"
    if want is None or got is None:
        ok = want is None and got is None
        return ok, None, "" if ok else f"{where}: an absent optional on one side only"
    if isinstance(want, dict) or isinstance(got, dict):
        if not (isinstance(want, dict) and isinstance(got, dict)) or set(want) != set(got):
            return False, None, f"{where}: maps differ"
        return _combine([_compare_one(got[k], want[k], rtol, atol, f"{where}[{k!r}]")
                         for k in want])
    if isinstance(want, (list, tuple)) or isinstance(got, (list, tuple)):
        if not (isinstance(want, (list, tuple)) and isinstance(got, (list, tuple))):
            return False, None, f"{where}: a sequence against a tensor"
        if len(want) != len(got):
            return False, None, f"{where}: {len(got)} elements, expected {len(want)}"
        return _combine([_compare_one(g, w, rtol, atol, f"{where}[{j}]")
                         for j, (g, w) in enumerate(zip(got, want))])
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape:
        return False, None, f"{where}: shape {list(got.shape)}, expected {list(want.shape)}"
    if want.dtype == object:  # strings: exactly, as the runner's assert_array_equal
        bad = int(np.count_nonzero(got.astype(object) != want))
        return bad == 0, None, f"{where}: {bad} strings differ" if bad else ""
    if got.dtype != want.dtype:
        return False, None, f"{where}: dtype {got.dtype}, expected {want.dtype}"
    if want.size == 0 or rtol is None:  # nothing to compare, or values not to compare
        return True, None, ""
    if want.dtype.name == "bfloat16":
        rtol = max(rtol, 2.0 ** -6)  # two bfloat16 ULPs, as ONNX's runner allows
    a, e = got.astype(np.float64), want.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        close = np.isclose(a, e, rtol=rtol, atol=atol, equal_nan=True)
        same = (a == e) | (np.isnan(a) & np.isnan(e))
        diff = np.where(same, 0.0, np.abs(a - e))
    bad = int(np.count_nonzero(~close))
    worst = float(np.max(np.where(np.isnan(diff), np.inf, diff)))
    return bad == 0, worst, (f"{where}: {bad} of {want.size} elements differ, max abs "
                             f"difference {worst:.3g} (rtol {rtol:g}, atol {atol:g})"
                             if bad else "")


def _combine(results: list[tuple[bool, float | None, str]]
             ) -> tuple[bool, float | None, str]:
    errors = [r[1] for r in results if r[1] is not None]
    return (all(r[0] for r in results), max(errors) if errors else None,
            "; ".join(r[2] for r in results if r[2]))


# --------------------------------------------------------------------------- causes

#: Why a column could not run a case, in the order reports list them.
CAUSES: dict[str, str] = {
    "crash": "the worker process died while running the case (a segfault, an abort)",
    "timeout": "no answer within the per-case timeout; the worker was killed",
    "no device": "the pinned backend has no ready device in the worker",
    "opset refused": "an opset or IR version newer than the runtime reads",
    "domain refused": "an operator domain the runtime does not read",
    "op not supported": "no implementation of a node's op at its version, dtypes or "
                        "attributes: no device admits the node, no kernel, no conversion",
    "shape inference": "shape or type inference failed on the model",
    "model rejected": "the model was refused as invalid (the checker, an unreadable graph)",
    "value type": "the runtime's Python API cannot take or give a value of this type "
                  "(bfloat16, float8 or 4-bit arrays, sequences, optionals)",
    "input validation": "the inputs were refused as inconsistent with the model",
    "compile error": "compiling failed for another reason (a conversion or a kernel "
                     "refused the node's configuration at build time)",
    "execution error": "the compiled model failed while running",
    "internal error": "a plain Python exception (KeyError, TypeError ...) escaped "
                      "backplane: a bug, whatever the model",
}

#: Plain Python exceptions: escaping backplane, they are its bugs ("internal error").
_PYTHON_ERRORS = frozenset({"AttributeError", "IndexError", "KeyError", "TypeError",
                            "ValueError", "AssertionError", "NameError", "ZeroDivisionError",
                            "UnboundLocalError", "NotImplementedError", "RecursionError"})
#: (cause, pattern) tried in order on a runtime's ``Type: message``.
_PATTERNS = [(cause, re.compile(pattern)) for cause, pattern in [
    ("opset refused", r"[Oo]pset \d+ is (under development|newer)|max supported IR version|"
                      r"Unsupported model IR version|opset version \d+ is not supported"),
    ("domain refused", r"[Dd]omain '[^']*' is not (supported|registered)|No opset import for "
                       r"domain|[Uu]nrecognized domain|[Uu]nknown domain"),
    ("shape inference", r"ShapeInferenceError|TypeInferenceError|shape inference failed"),
    ("value type", r"can't be converted to MLDataType|No corresponding Numpy type|"
                   r"could not broadcast input array|data type '[^']+' not understood|"
                   r"[Uu]nsupported OrtValue type"),
    ("op not supported", r"NOT_IMPLEMENTED|Could not find an implementation|Failed to find "
                         r"kernel|is not a registered function/op|No conversion rule|"
                         r"not supported|[Uu]nsupported|not implemented"),
    ("input validation", r"INVALID_ARGUMENT|Unexpected input data type|Invalid rank|Got "
                         r"invalid dimensions|[Ii]nput .*(not found|is missing)"),
    ("model rejected", r"INVALID_GRAPH|INVALID_PROTOBUF|checker"),
]]
_STAGE_CAUSE = {"load": "compile error", "compile": "compile error", "run": "execution error"}


def cause_of(column: str, stage: str | None, error_type: str, message: str) -> str:
    """The cause (a key of :data:`CAUSES`) of an exception raised in ``column`` at
    ``stage`` (``load``: the model read and compiled, ``compile``, ``run``).

    backplane's errors (``backplane.sdk.errors``) say their cause by type, the message telling
    apart the cases of one type; a runtime's are matched on their message, falling back on
    the stage they were raised at."""
    text = f"{error_type}: {message}"
    if column == AUTO or column.startswith("pinned:"):
        if error_type in ("DeviceNotFoundError", "PluginLoadError"):
            return "no device"
        if error_type in _PYTHON_ERRORS:
            return "internal error"
        if error_type == "InputError":
            return "input validation"
        if error_type == "UnsupportedError":
            # No device left for a node: a device that admitted it and then failed says
            # more than those that never admitted it.
            if "run failed in backend" in message:
                return "execution error"
            if "compile failed in backend" in message:
                return "compile error"
            return "op not supported"
        if error_type == "ModelError":
            found = _match(text)
            return found if found in ("opset refused", "domain refused", "shape inference") \
                else "model rejected"
        if error_type == "CompileError":
            return "compile error"
        if error_type == "ExecutionError":
            return "execution error"
    return _match(text) or _STAGE_CAUSE.get(stage or "", "execution error")


def _match(text: str) -> str | None:
    return next((cause for cause, pattern in _PATTERNS if pattern.search(text)), None)


# --------------------------------------------------------------------------- what a run found

def counts(results: list[CaseResult]) -> dict[str, dict[str, Any]]:
    """``{column: {"pass": n, "wrong": n, "error": n, "causes": {cause: n}}}``."""
    out: dict[str, dict[str, Any]] = {}
    for r in results:
        for col, o in r.outcomes.items():
            c = out.setdefault(col, {"pass": 0, "wrong": 0, "error": 0, "causes": {}})
            c[o.status] += 1
            if o.cause:
                c["causes"][o.cause] = c["causes"].get(o.cause, 0) + 1
    for c in out.values():
        c["causes"] = {k: c["causes"][k] for k in _ordered(c["causes"])}
    return out


def by_set(results: list[CaseResult]) -> dict[str, dict[str, int]]:
    """``{set: {"cases": n, column: passes, ...}}``."""
    out: dict[str, dict[str, int]] = {}
    for r in results:
        row = out.setdefault(r.set, {"cases": 0})
        row["cases"] += 1
        for col, o in r.outcomes.items():
            row[col] = row.get(col, 0) + (o.status == "pass")
    return out


def _ordered(causes: Any) -> list[str]:
    order = list(CAUSES)
    return sorted(causes, key=lambda k: (order.index(k) if k in order else len(order), k))


def failures(results: list[CaseResult], column: str) -> list[dict[str, Any]]:
    """The cases ``column`` did not pass, in groups: ``wrong`` first, then each cause;
    each ``{"outcome", "count", "cases"}`` (case ids in order)."""
    groups: dict[str, list[str]] = {}
    for r in results:
        o = r.outcomes.get(column)
        if o is not None and o.status != "pass":
            groups.setdefault("wrong" if o.status == "wrong" else o.cause or "?", []).append(r.id)
    keys = (["wrong"] if "wrong" in groups else []) + _ordered(k for k in groups if k != "wrong")
    return [{"outcome": k, "count": len(groups[k]), "cases": groups[k]} for k in keys]


#: Cases whose recorded output no float32 computation is bound to reproduce, by case id:
#: (the backends whose answer differs, the runtime column that gives that same answer when
#: called directly, why). Auto's answer there is reported as ``ill_conditioned``, not as
#: wrong, only while it comes from those backends alone and the runtime called directly
#: differs from the record too; any other wrong answer there is wrong.
ILL_CONDITIONED = {
    "light/test_squeezenet": (
        ("openvino-cpu",), OV_DIRECT,
        "with the suite's input (arange(n)/n) the 1000 logits into the last Softmax are "
        "all 9.48e9, where float32 values are 1024 apart; ONNX Runtime's GlobalAveragePool "
        "rounds every channel alike and the record is the uniform 0.001, OpenVINO's "
        "rounds some channels 3 units in the last place higher (a relative 3e-10), and "
        "exp(-3072) puts all the mass on those: both are float32 results of the same "
        "model, and every intermediate value agrees within 1e-9 relative"),
}


def targets(results: list[CaseResult]) -> dict[str, list[dict[str, Any]]]:
    """``missed``: cases a runtime passes directly and auto does not (with auto's outcome
    and the runtimes that pass); ``auto_wrong``: cases where auto's answer is wrong;
    ``ill_conditioned``: the wrong answers :data:`ILL_CONDITIONED` explains."""
    missed, wrong, ill = [], [], []
    for r in results:
        auto = r.outcomes.get(AUTO)
        if auto is None:
            continue
        passing = [c for c in DIRECT if c in r.outcomes and r.outcomes[c].status == "pass"]
        if auto.status == "wrong" and _explained(r, auto):
            ill.append({"id": r.id, "backends": auto.backends, "detail": auto.detail,
                        "why": ILL_CONDITIONED[r.id][2]})
            continue
        if auto.status != "pass" and passing:
            missed.append({"id": r.id, "auto": auto.cause or auto.status, "passed_by": passing,
                           "detail": auto.detail})
        if auto.status == "wrong":
            wrong.append({"id": r.id, "backends": auto.backends, "detail": auto.detail})
    return {"missed": missed, "auto_wrong": wrong, "ill_conditioned": ill}


def _explained(r: CaseResult, auto: Outcome) -> bool:
    """Whether auto's wrong answer is the one :data:`ILL_CONDITIONED` records for the case."""
    known = ILL_CONDITIONED.get(r.id)
    if known is None or not auto.backends or not set(auto.backends) <= set(known[0]):
        return False
    direct = r.outcomes.get(known[1])
    return direct is not None and direct.status == "wrong"


def environment() -> dict[str, str]:
    """The date, machine and versions a run used."""
    versions = {"onnx": onnx.__version__, "numpy": np.__version__,
                "python": platform.python_version()}
    for name in ("onnxruntime", "openvino", "backplane"):
        try:
            if name == "backplane":
                versions[name] = version("backplane-hal")
            else:
                # OpenVINO's version carries its build ("2026.4.1-22982-..."): keep the release.
                versions[name] = __import__(name).__version__.split("-")[0]
        except Exception as exc:  # a missing runtime shows as errors in its column
            versions[name] = f"unavailable ({type(exc).__name__})"
    return {"date": datetime.date.today().isoformat(), "machine": _cpu_name(),
            "cores": str(os.cpu_count()), **versions}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def to_dict(results: list[CaseResult], columns: list[str], env: dict[str, str],
            seconds: float) -> dict[str, Any]:
    """The JSON form of a run: environment, columns, counts, failures, targets and every
    per-case result."""
    return {"environment": env, "seconds": round(seconds, 1), "cases": len(results),
            "columns": columns, "counts": counts(results), "by_set": by_set(results),
            "failures": {c: failures(results, c) for c in columns},
            "targets": targets(results), "warnings": warnings(results),
            "results": [r.to_dict() for r in results]}


def warnings(results: list[CaseResult]) -> list[str]:
    """What makes a run less than it should be: backplane outcomes from a worker where an
    expected backend had no device (its probe failed there, as on a busy machine)."""
    hit: dict[str, int] = {}
    for r in results:
        for o in r.outcomes.values():
            for b in o.unavailable:
                hit[b] = hit.get(b, 0) + 1
    return [f"{n} backplane outcomes come from a worker where backend '{b}' had no device "
            "(its probe failed there): run again on a quieter machine"
            for b, n in sorted(hit.items())]


def render(data: dict[str, Any], shown: int = SHOWN) -> str:
    """The text report of :func:`to_dict`'s data."""
    env, columns, cnt = data["environment"], data["columns"], data["counts"]
    total = data["cases"]
    out = [f"ONNX backend test suite, {env['date']}, {env['machine']} ({env['cores']} cores):"
           f" onnx {env['onnx']}, onnxruntime {env['onnxruntime']}, openvino "
           f"{env['openvino']}; {total} cases in {data['seconds']:g} s", ""]
    width = max(len(c) for c in columns)
    out.append(f"{'column':{width}}  {'pass':>5}  {'wrong':>5}  {'error':>5}  of {total}")
    for c in columns:
        n = cnt.get(c, {"pass": 0, "wrong": 0, "error": 0})
        out.append(f"{c:{width}}  {n['pass']:5d}  {n['wrong']:5d}  {n['error']:5d}  "
                   f"({100 * n['pass'] / max(total, 1):.1f}% pass)")
    sets = data.get("by_set", {})
    if len(sets) > 1:
        out += ["", f"{'passes per set':17s} {'cases':>5}  " + "  ".join(columns)]
        for name, row in sets.items():
            out.append(f"{name:17s} {row['cases']:5d}  " + "  ".join(
                f"{row.get(c, 0):>{len(c)}d}" for c in columns))
    for c in columns:
        groups = data["failures"][c]
        if not groups:
            continue
        out += ["", f"{c}: did not pass"]
        for g in groups:
            names = ", ".join(x.removeprefix("node/") for x in g["cases"][:shown])
            more = f", ... (+{g['count'] - shown})" if g["count"] > shown else ""
            out.append(f"  {g['outcome']:17s} {g['count']:5d}  {names}{more}")
    t = data["targets"]
    if AUTO in columns:
        out += ["", f"targets: {len(t['missed'])} cases a runtime passes directly and auto "
                    f"does not; {len(t['auto_wrong'])} where auto is wrong"]
        for m in t["missed"]:
            out.append(f"  missed  {m['id']}: auto {m['auto']}; passed by "
                       f"{', '.join(m['passed_by'])}")
        for w in t["auto_wrong"]:
            out.append(f"  WRONG   {w['id']} (on {', '.join(w['backends']) or '?'}): "
                       f"{w['detail'][:160]}")
        for w in t.get("ill_conditioned", []):
            out.append(f"  ill-conditioned  {w['id']} (on {', '.join(w['backends'])}, as "
                       f"called directly): {w['detail'][:120]}; see docs/onnx-suite.md")
    out += [f"warning: {w}" for w in data.get("warnings", [])]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- the gaps file

def read_gaps(path: str | Path) -> dict[str, str]:
    """``{case id: comment}`` from a gaps file: one case id a line, ``# cause`` after it;
    blank lines and lines starting with ``#`` are ignored."""
    gaps: dict[str, str] = {}
    for n, line in enumerate(Path(path).read_text("utf-8").splitlines(), 1):
        text, _, comment = line.partition("#")
        case = text.strip()
        if not case:
            continue
        if " " in case or "/" not in case:
            raise ValueError(f"{path}:{n}: expected a case id (SET/NAME) and an optional "
                             f"'# comment', got {line!r}")
        if case in gaps:
            raise ValueError(f"{path}:{n}: {case} is listed twice")
        gaps[case] = comment.strip()
    return gaps


def write_gaps(path: str | Path, results: list[CaseResult], env: dict[str, str]) -> int:
    """Write the ``missed`` cases of ``results`` to ``path``; return how many."""
    missed = targets(results)["missed"]
    lines = ["# Cases of the CI sample of ONNX's backend test suite that a runtime passes",
             "# directly and backplane's automatic plan does not: known gaps, each with its",
             "# cause today. tests/test_onnx_suite.py fails when one of them passes (delete",
             "# its line) and when a case not listed here becomes a gap. Regenerate with",
             f"#   {GAPS_COMMAND}",
             f"# Written {env['date']}: onnx {env['onnx']}, onnxruntime {env['onnxruntime']}, "
             f"openvino {env['openvino']}.", ""]
    lines += [f"{m['id']}  # {m['auto']}: {_first_line(m['detail'])}" for m in missed]
    Path(path).write_text("\n".join(lines) + "\n", "utf-8")
    return len(missed)


def _first_line(text: str, width: int = 100) -> str:
    line = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return line if len(line) <= width else line[:width - 3] + "..."
