"""The oracle audit: ONNX's node tests through the reference, ONNX Runtime and OpenVINO.

``python -m backplane.conformance.oracle_audit [--json] [-k PATTERN] [-j N] [--old-versions]``

Every node test of the installed onnx (default domain, ``ai.onnx.ml`` and the preview
domains; the function-expanded variants too), at the opset it was recorded at, no
conversion, is run by four runners, each case in a worker process with a timeout (a crash or
a hang of a runtime is recorded and the audit goes on):

- ``reference``: backplane's evaluator, onnx.reference with ``runtimes/onnxref/fixes.py``,
  in the model's own types (what the reference backend runs);
- ``oracle``: the conformance oracle (``oracle.expected``: the same evaluator in float64
  where the model admits it), on tensor-only cases;
- ``onnxruntime``: ONNX Runtime's CPU provider, called directly;
- ``openvino``: OpenVINO's CPU plugin, called directly (f32 inference precision, accuracy
  execution mode).

Each runner's outputs are compared with the recorded outputs as ONNX's backend test runner
compares them (same number of outputs, sequences element by element, an absent optional
only with an absent one, equal shapes and dtypes, ``rtol`` 1e-3 and ``atol`` 1e-7 with NaN
equal to NaN, bfloat16 within two of its ULPs), with two differences: integers and booleans
must be exactly equal, and float16 too is allowed two ULPs (rtol 1e-3 is one float16 ULP, so
two correct roundings of one value could fail it). The outputs of random ops (Bernoulli,
RandomNormal ..., Dropout in training) are compared in shape and dtype only. The runners are
compared with each other the same way.

The table lists every case where the reference or the oracle does not reproduce the recorded
outputs, and every case where both runtimes agree with each other against a reference that
agrees with the recorded outputs (some of ONNX's recorded outputs are computed with
onnx.reference itself, so that agreement alone proves little).

The node tests come from ``onnx/backend/test/data/node`` where the installed wheel ships it
(or ``--data DIR`` names a copy), else from the generators the data is made from
(``onnx.backend.test.case.node``, seeded, so a run is repeatable). ``--old-versions`` adds,
for each default-domain op version from opset 7 that no test is recorded at, up to two of
the op's tests moved to it: relabelled where the node is valid there as it is, else
converted by ``onnx.version_converter`` (whose adapters keep the semantics), so that the
recorded outputs still apply; their ids end in ``@opsetN`` (``oracle_audit_cases.py``).
The runners and the worker process are in ``oracle_audit_runners.py``.

Resolutions of what it finds: docs/conformance.md, "The oracle".
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Any

from backplane.conformance.onnx_suite_report import environment
from backplane.conformance.oracle_audit_cases import AuditCase, node_tests
from backplane.conformance.oracle_audit_runners import serve

__all__ = ["AuditCase", "CaseAudit", "Outcome", "agree", "audit", "counts", "main", "node_tests"]

RUNNERS = ("reference", "oracle", "onnxruntime", "openvino")
#: ONNX's backend test runner's tolerance for node tests.
RTOL, ATOL = 1e-3, 1e-7
DEFAULT_TIMEOUT_S = 60.0
#: Statuses of one runner on one case.
STATUSES = ("pass", "wrong", "error", "crash", "hang", "n/a")


@dataclass
class Outcome:
    """One runner's result on one case, compared with the recorded outputs."""

    status: str
    max_error: float | None = None
    detail: str = ""
    seconds: float = 0.0
    outputs: Any = field(default=None, repr=False)


@dataclass
class CaseAudit:
    """Every runner's outcome on one case, and who agrees with whom."""

    case: AuditCase
    outcomes: dict[str, Outcome]
    groups: list[list[str]]
    flagged: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (outputs left out)."""
        c = self.case
        return {"id": c.id, "op": c.op, "domain": c.domain, "version": c.version,
                "opset": c.opset, "origin": c.origin, "flagged": self.flagged,
                "agreement": self.groups,
                "results": {r: {"status": o.status, "max_error": o.max_error,
                                "detail": o.detail, "seconds": round(o.seconds, 4)}
                            for r, o in self.outcomes.items()}}


# --------------------------------------------------------------------------- comparing


def agree(got: Any, want: Any, rtol: float = RTOL, atol: float = ATOL, values: bool = True
          ) -> tuple[bool, float, str]:
    """Whether ``got`` reproduces ``want`` (see the module docstring): ``(ok, max error,
    what differs)``; the error is the largest absolute difference, inf for a mismatch of
    structure, shape or dtype. ``values=False`` compares the structure only."""
    import numpy as np

    inf = float("inf")
    if isinstance(want, dict) or isinstance(got, dict):
        if not (isinstance(want, dict) and isinstance(got, dict)) or set(want) != set(got):
            return False, inf, "maps differ in keys"
        results = [agree(got[k], want[k], rtol, atol, values) for k in want]
        return _combine(results)
    if want is None or got is None:
        ok = want is None and got is None
        return ok, 0.0 if ok else inf, "" if ok else "an absent optional on one side only"
    if isinstance(want, (list, tuple)) or isinstance(got, (list, tuple)):
        if not (isinstance(want, (list, tuple)) and isinstance(got, (list, tuple))):
            return False, inf, "a sequence against a tensor"
        if len(want) != len(got):
            return False, inf, f"{len(got)} elements, expected {len(want)}"
        return _combine([agree(g, w, rtol, atol, values) for g, w in zip(got, want)])
    got, want = np.asarray(got), np.asarray(want)
    if got.dtype.kind in "OUS" and want.dtype.kind in "OUS":
        got, want = got.astype(object), want.astype(object)
    if got.shape != want.shape:
        return False, inf, f"shape {list(got.shape)}, expected {list(want.shape)}"
    if got.dtype != want.dtype:
        return False, inf, f"dtype {got.dtype}, expected {want.dtype}"
    if want.size == 0 or not values:
        return True, 0.0, ""
    if want.dtype == object:
        wrong = int(np.count_nonzero(got != want))
        return wrong == 0, 0.0 if not wrong else inf, f"{wrong} strings differ" if wrong else ""
    if want.dtype.kind in "biu":
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        wrong = int(np.count_nonzero(got != want))
        return wrong == 0, float(diff.max()), \
            f"{wrong} of {want.size} elements differ" if wrong else ""
    if want.dtype.name == "bfloat16":
        rtol = max(rtol, 2.0 ** -6)  # two bfloat16 ULPs, as ONNX's runner allows
    elif want.dtype.name == "float16":
        rtol = max(rtol, 2.0 ** -9)  # two float16 ULPs (rtol 1e-3 is one, not two)
    a, e = got.astype(np.float64), want.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        same = (a == e) | (np.isnan(a) & np.isnan(e))
        diff = np.where(same, 0.0, np.abs(a - e))
        diff = np.where(np.isnan(diff), np.inf, diff)
        bad = int(np.count_nonzero(~(same | (diff <= atol + rtol * np.abs(e)))))
    return bad == 0, float(diff.max()), f"{bad} of {want.size} elements outside tolerance" \
        if bad else ""


def _combine(results: list[tuple[bool, float, str]]) -> tuple[bool, float, str]:
    ok = all(r[0] for r in results)
    return ok, max((r[1] for r in results), default=0.0), "; ".join(r[2] for r in results
                                                                     if r[2])


def _groups(case: AuditCase, outcomes: dict[str, Outcome]) -> list[list[str]]:
    """Who agrees with whom: the recorded outputs and each runner that produced outputs,
    joined wherever two agree."""
    ran = ["recorded"] + [r for r, o in outcomes.items() if o.status in ("pass", "wrong")]
    value = {"recorded": case.outputs, **{r: outcomes[r].outputs for r in ran[1:]}}
    parent = {name: name for name in ran}

    def root(n: str) -> str:
        while parent[n] != n:
            n = parent[n]
        return n

    for i, a in enumerate(ran):
        for b in ran[i + 1:]:
            if root(a) != root(b) and agree(value[b], value[a], values=not case.random)[0]:
                parent[root(b)] = root(a)
    groups: dict[str, list[str]] = {}
    for n in ran:
        groups.setdefault(root(n), []).append(n)
    return sorted(groups.values(), key=lambda g: ("recorded" not in g, -len(g)))


def _flag(outcomes: dict[str, Outcome], groups: list[list[str]]) -> str:
    """Why a case belongs in the table, or ''."""
    ref, ora = outcomes["reference"].status, outcomes["oracle"].status
    if ref != "pass" or ora not in ("pass", "n/a"):
        return "reference" if ref != "pass" else "oracle"
    runtimes = [r for r in ("onnxruntime", "openvino") if outcomes[r].status in ("pass",
                                                                                  "wrong")]
    if len(runtimes) == 2 and any(set(runtimes) <= set(g) and "reference" not in g
                                  for g in groups):
        return "runtimes-against-recorded"
    return ""


# --------------------------------------------------------------------------- the audit


def audit(cases: list[AuditCase], jobs: int = 2, timeout_s: float = DEFAULT_TIMEOUT_S,
          runners: tuple[str, ...] = RUNNERS, progress: Any = None) -> list[CaseAudit]:
    """Run every case through every runner in ``jobs`` worker processes; a worker that dies
    or does not answer in ``timeout_s`` is recorded (``crash``, ``hang``) and replaced."""
    tasks = [(i, r) for i, c in enumerate(cases) for r in runners
             if not (r == "oracle" and not c.tensors_only)]
    done: dict[tuple[int, str], Outcome] = {}
    ctx = multiprocessing.get_context("spawn")
    workers: list[dict[str, Any]] = []

    def start() -> dict[str, Any]:
        parent, child = ctx.Pipe()
        process = ctx.Process(target=serve, args=(child,), daemon=True)
        process.start()
        child.close()
        parent.recv()
        return {"process": process, "conn": parent, "task": None, "since": 0.0}

    def retire(w: dict[str, Any]) -> None:
        if w["process"].is_alive():
            w["process"].kill()
        w["process"].join(5)
        w["conn"].close()
        workers[workers.index(w)] = start()

    def record(key: tuple[int, str], outcome: Outcome) -> None:
        done[key] = outcome
        if progress:
            progress(len(done), len(tasks))

    pending = list(reversed(tasks))
    workers.extend(start() for _ in range(max(1, min(jobs, len(tasks)))))
    try:
        while pending or any(w["task"] for w in workers):
            for w in workers:
                if w["task"] is None and pending:
                    key = pending.pop()
                    c = cases[key[0]]
                    feeds = {vi: v for vi, v in zip(_input_names(c), c.inputs)}
                    w["task"], w["since"] = key, time.monotonic()
                    w["conn"].send(("run", key, key[1], c.model, feeds))
            busy = [w for w in workers if w["task"]]
            ready = wait([w["conn"] for w in busy], timeout=1.0)
            for w in busy:
                key = w["task"]
                if w["conn"] in ready:
                    try:
                        _, _, reply, seconds = w["conn"].recv()
                    except (EOFError, OSError):
                        w["process"].join(5)
                        record(key, Outcome("crash", detail=f"the worker died (exit code "
                                                             f"{w['process'].exitcode})"))
                        w["task"] = None
                        retire(w)
                        continue
                    w["task"] = None
                    record(key, _judge(cases[key[0]], reply, seconds))
                elif time.monotonic() - w["since"] > timeout_s:
                    record(key, Outcome("hang", detail=f"no answer in {timeout_s:g} s"))
                    w["task"] = None
                    retire(w)
    finally:
        for w in workers:
            try:
                w["conn"].send(("stop",))
            except OSError:
                pass
        for w in workers:
            w["process"].join(2)
            if w["process"].is_alive():
                w["process"].kill()
    out = []
    for i, c in enumerate(cases):
        outcomes = {r: done.get((i, r), Outcome("n/a")) for r in runners}
        groups = _groups(c, outcomes)
        out.append(CaseAudit(c, outcomes, groups, _flag(outcomes, groups)
                             if {"reference", "oracle"} <= set(runners) else ""))
    return out


def _input_names(case: AuditCase) -> list[str]:
    import onnx

    model = onnx.load_from_string(case.model)
    inits = {t.name for t in model.graph.initializer}
    return [vi.name for vi in model.graph.input if vi.name not in inits]


def _judge(case: AuditCase, reply: tuple[str, Any], seconds: float) -> Outcome:
    kind, value = reply
    if kind == "error":
        return Outcome("error", detail=value, seconds=seconds)
    ok, err, detail = agree(value, case.outputs, values=not case.random)
    if case.random:
        detail = "; ".join(filter(None, [detail, "random draws: values not compared"]))
    return Outcome("pass" if ok else "wrong", err, detail, seconds, value)


def counts(results: list[CaseAudit]) -> dict[str, dict[str, int]]:
    """Per runner: how many cases it passed, got wrong, failed to run (error, crash, hang)."""
    out = {r: {s: 0 for s in STATUSES} for r in results[0].outcomes} if results else {}
    for res in results:
        for r, o in res.outcomes.items():
            out[r][o.status] += 1
    return out


# --------------------------------------------------------------------------- the command


def _cell(o: Outcome) -> str:
    if o.status == "wrong":
        return f"WRONG {o.max_error:.2g}"
    return o.status.upper() if o.status in ("error", "crash", "hang") else o.status


def _table(results: list[CaseAudit]) -> list[str]:
    head = ("case", "op-version@opset", *results[0].outcomes, "agreement")
    rows = [(r.case.id, f"{r.case.op}-{r.case.version}@{r.case.opset}",
             *[_cell(o) for o in r.outcomes.values()],
             " | ".join("=".join(g) for g in r.groups)) for r in results]
    widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [line(head), line(["-" * w for w in widths]), *map(line, rows), ""]
    for r in results:
        details = [f"{name}: {' '.join(o.detail.split())[:200]}"
                   for name, o in r.outcomes.items() if o.detail and o.status != "pass"]
        if details:
            out.append(f"{r.case.id}: " + "; ".join(details))
    return out + [""]


def render(results: list[CaseAudit], env: dict[str, str], runtimes: bool = False) -> str:
    """The table of flagged cases (and with ``runtimes``, of the cases a runtime gets
    wrong where the reference does not), then the counts per runner, as text."""
    flagged = [r for r in results if r.flagged]
    out = [f"oracle audit, {env['date']}, {env['machine']} ({env['cores']} cores): onnx "
           f"{env['onnx']}, onnxruntime {env['onnxruntime']}, openvino {env['openvino']}",
           f"{len(results)} cases; {len(flagged)} where the reference or the oracle disagrees "
           "with the recorded outputs, or both runtimes with the reference", ""]
    if flagged:
        out += _table(flagged)
    wrong = [r for r in results if not r.flagged and any(
        r.outcomes[n].status == "wrong" for n in ("onnxruntime", "openvino") if n in r.outcomes)]
    if runtimes and wrong:
        out += [f"{len(wrong)} more where a runtime is wrong and the reference is not:", "",
                *_table(wrong)]
    out.append("counts per runner (cases): " + ", ".join(STATUSES))
    for runner, per in counts(results).items():
        out.append(f"  {runner:12s} " + "  ".join(f"{s} {n}" for s, n in per.items()))
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    """The command line; exit status 1 when some case is flagged."""
    parser = argparse.ArgumentParser(prog="python -m backplane.conformance.oracle_audit",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("-k", dest="pattern", help="cases whose id or op matches (globs or "
                        "substrings, | between alternatives)")
    parser.add_argument("-j", dest="jobs", type=int, default=os.cpu_count() or 1,
                        help="worker processes (default: one per core)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help="seconds one runner may take on one case")
    parser.add_argument("--old-versions", action="store_true",
                        help="add tests converted to the op versions none is recorded at")
    parser.add_argument("--data", help="a folder of node tests (onnx/backend/test/data/node)")
    parser.add_argument("--runtimes", action="store_true",
                        help="also list the cases a runtime gets wrong and the reference not")
    args = parser.parse_args(argv)
    cases = node_tests(args.pattern, args.data, args.old_versions)
    if not cases:
        print(f"no node test matches {args.pattern!r}", file=sys.stderr)
        return 2
    tick = None
    if sys.stderr.isatty() and not args.json:
        tick = lambda n, total: print(f"\r{n}/{total}", end="", file=sys.stderr)  # noqa: E731
    results = audit(cases, jobs=args.jobs, timeout_s=args.timeout, progress=tick)
    env = environment()
    if args.json:
        json.dump({"environment": env, "counts": counts(results),
                   "flagged": [r.case.id for r in results if r.flagged],
                   "cases": [r.to_dict() for r in results]}, sys.stdout, indent=1)
        print()
    else:
        print(("\n" if tick else "") + render(results, env, args.runtimes), end="")
    return 1 if any(r.flagged for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
