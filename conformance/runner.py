"""The conformance runner: every case of a tier, on one backend and device, in worker processes.

Cases are handed one at a time to ``-j N`` worker processes (``worker.py``). A worker that
dies while running a case (a segfault, an abort) is recorded as a ``crash`` of that case, one
that does not answer within the per-case timeout as a ``hang``; either way a fresh worker
takes its place and the run goes on. Results are compared in this process with the oracle's
expected values (computed in the worker before the backend ran), with the tolerance of the
output's dtype or a per-op override.

Statuses: ``pass``, ``special-values`` (right on ordinary values, different from the oracle
on NaN, infinities or the sign of zero: counts as passed, and says what differed; see
``specials.py``), ``fail`` (wrong values, shape or dtype), ``error`` (the backend raised),
``crash``, ``hang``, ``unsupported`` (the backend does not declare the op and it did not
work), ``undeclared-pass`` (it does not declare the op, yet the case passed), ``skipped``
(a known failure), ``xpass`` (a known failure that now passes, with
``also_run_known_failures``), ``invalid`` (the suite's own case is broken).
"""

from __future__ import annotations

import fnmatch
import multiprocessing
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any

from backplane.conformance import compare, specials, tolerance_with_reason, worker
from backplane.sdk.errors import ConformanceError


#: Statuses that count as success for the tier verdict. ``unsupported`` is among them: a
#: backend answers for what it declares (a declared op that fails is a ``fail`` or an
#: ``error``); the report's coverage says how much of the core op set that is.
#: ``special-values`` is too: the op is right on ordinary values, and the reports list
#: what it does differently with NaN, infinities and zeros.
PASSING = frozenset({"pass", "special-values", "undeclared-pass", "unsupported", "skipped",
                     "xpass"})
#: Statuses of cases the backend declared (its capabilities admitted every node).
DECLARED = frozenset({"pass", "special-values", "fail", "error", "crash", "hang", "skipped",
                      "xpass"})
DEFAULT_TIMEOUT_S = 120.0
WORKER_START_TIMEOUT_S = 120.0


@dataclass
class CaseResult:
    """The outcome of one case."""

    id: str
    op: str
    dtype: str
    tier: str
    tags: list[str]
    status: str
    seconds: float = 0.0
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    rtol: float | None = None
    atol: float | None = None
    oracle_mode: str | None = None
    error: str | None = None
    reason: str | None = None
    tolerance_reason: str | None = None
    """Why this case's tolerance differs from its dtype's default, where it does."""
    deviations: list[str] | None = None
    """A special-values case: how the outputs differ from the oracle's on special values,
    in words (``Relu(NaN) = 0, expected NaN``)."""


@dataclass
class Worker:
    """One worker process of a :class:`WorkerPool`: its pipe, and the case in flight there."""

    process: Any
    conn: Any
    case: Any = None
    started: float = 0.0


class WorkerPool:
    """N worker processes, restarted after a crash or a hang.

    Subclasses serve other work: they set ``_ctx``, ``_target`` (the worker's entry point)
    and ``_args`` before starting their workers with ``_start``."""

    def __init__(self, jobs: int, backend: str, device: str):
        self._ctx = multiprocessing.get_context("spawn")
        self._target, self._args = worker.main, (backend, device)
        self.workers = [self._start() for _ in range(max(1, jobs))]

    def _start(self) -> Worker:
        parent, child = self._ctx.Pipe()
        process = self._ctx.Process(target=self._target, args=(child, *self._args), daemon=True)
        process.start()
        child.close()
        if not parent.poll(WORKER_START_TIMEOUT_S):
            process.kill()
            raise ConformanceError("a conformance worker did not start within "
                                   f"{WORKER_START_TIMEOUT_S:g} s")
        try:
            _, error = parent.recv()
        except EOFError:
            raise ConformanceError(f"a conformance worker died while starting (exit code "
                                   f"{process.exitcode})") from None
        if error:
            process.kill()
            raise ConformanceError(f"a conformance worker could not load the backend: {error}")
        return Worker(process, parent)

    def replace(self, w: Worker) -> None:
        """Stop ``w`` (killed if it is still running) and start a fresh worker in its place."""
        if w.process.is_alive():
            w.process.kill()
        w.process.join(5)
        w.conn.close()
        self.workers[self.workers.index(w)] = self._start()

    def close(self) -> None:
        """Ask every worker to stop; kill any still running two seconds later."""
        for w in self.workers:
            try:
                w.conn.send(("stop",))
            except (OSError, BrokenPipeError):
                pass
        for w in self.workers:
            w.process.join(2)
            if w.process.is_alive():
                w.process.kill()


def run_cases(cases: list[Any], backend: str, device: str, *, jobs: int = 1,
              timeout_s: float = DEFAULT_TIMEOUT_S, known: Callable[[Any], Any] | None = None,
              also_run_known_failures: bool = False, tolerance_backend: str | None = None,
              progress: Callable[[CaseResult], None] | None = None) -> list[CaseResult]:
    """Run cases on one device and return one result per case, in the cases' order."""
    results: dict[str, CaseResult] = {}
    todo = []
    for case in cases:
        k = known(case) if known else None
        if k is not None and not also_run_known_failures:
            results[case.id] = _result(case, "skipped", reason=k.reason)
            if progress:
                progress(results[case.id])
        else:
            todo.append((case, k))
    pending = list(reversed(todo))
    pool = WorkerPool(min(jobs, max(1, len(todo))), backend, device) if todo else None

    def finish(case: Any, k: Any, status: str, **kw: Any) -> None:
        if k is not None:
            status = "xpass" if status == "pass" else "skipped"
            kw.setdefault("reason", k.reason)
        results[case.id] = _result(case, status, **kw)
        if progress:
            progress(results[case.id])

    try:
        while pool is not None and (pending or any(w.case for w in pool.workers)):
            for w in pool.workers:
                if w.case is None and pending:
                    case, k = pending.pop()
                    w.case, w.started = (case, k), time.monotonic()
                    w.conn.send(("case", case.id, case.model.SerializeToString(),
                                 case.inputs, case.expected is None))
            busy = [w for w in pool.workers if w.case]
            ready = wait([w.conn for w in busy], timeout=1.0)
            now = time.monotonic()
            for w in busy:
                case, k = w.case
                if w.conn in ready:
                    try:
                        _, _, res = w.conn.recv()
                    except (EOFError, OSError):
                        w.process.join(5)
                        finish(case, k, "crash", seconds=now - w.started,
                               error=f"the worker process died (exit code "
                                     f"{w.process.exitcode}) while running this case")
                        w.case = None
                        pool.replace(w)
                        continue
                    w.case = None
                    status, kw = _judge(case, res, compare, tolerance_with_reason,
                                        tolerance_backend)
                    finish(case, k, status, **kw)
                elif now - w.started > timeout_s:
                    finish(case, k, "hang", seconds=now - w.started,
                           error=f"no answer within {timeout_s:g} s; the worker was killed")
                    w.case = None
                    pool.replace(w)
    finally:
        if pool is not None:
            pool.close()
    return [results[c.id] for c in cases]


def _result(case: Any, status: str, **kw: Any) -> CaseResult:
    return CaseResult(case.id, case.op, case.dtype, case.tier, list(case.tags), status, **kw)


def _judge(case: Any, res: dict[str, Any], compare: Any, tolerance_with_reason: Any,
           backend: str | None) -> tuple[str, dict[str, Any]]:
    base = {"seconds": res["seconds"], "oracle_mode": res.get("oracle_mode")}
    if res["error_type"] == "InvalidCase":
        return "invalid", {**base, "error": res["error"]}
    declared = res.get("declared", True)
    if res["error_type"] is not None:
        return ("error" if declared else "unsupported"), {**base, "error": res["error"]}
    expected = case.expected if case.expected is not None else res["expected"]
    outputs = res["outputs"] or {}
    worst = (0.0, 0.0, None, None)
    problems, reasons, deviations = [], set(), []
    special = specials.TAG in case.tags
    inputs = specials.node_inputs(case) if special else []
    for name, want in expected.items():
        if name not in outputs:
            problems.append(f"output '{name}' missing")
            continue
        rtol, atol, why = tolerance_with_reason(str(want.dtype), case.tolerance_key, backend)
        recorded = getattr(case, "recorded_tolerance", None)
        if recorded is not None and (recorded[0] > rtol or recorded[1] > atol):
            rtol, atol = max(rtol, recorded[0]), max(atol, recorded[1])
            why = "; ".join(filter(None, [why, "ONNX's stated tolerance for this node test's "
                                          "recorded outputs"]))
        reasons.add(why)
        if special:
            c, words = specials.judge(case.op, inputs, outputs[name], want, rtol, atol,
                                      getattr(case, "signed_zero", False))
            deviations += [f"{name}: {w}" for w in words] if len(expected) > 1 else words
        else:
            c = compare(outputs[name], want, rtol, atol)
        worst = (max(worst[0], c.max_abs_error), max(worst[1], c.max_rel_error), c.rtol, c.atol)
        if not c.ok:
            problems.append(f"output '{name}': max abs error {c.max_abs_error:.3g}, max rel "
                            f"error {c.max_rel_error:.3g} (rtol {c.rtol:g}, atol {c.atol:g})"
                            + (f"; {c.detail}" if c.detail else ""))
    kw = {**base, "max_abs_error": worst[0], "max_rel_error": worst[1], "rtol": worst[2],
          "atol": worst[3], "tolerance_reason": "; ".join(sorted(r for r in reasons if r)) or None}
    if problems:
        return ("fail" if declared else "unsupported"), {**kw, "error": "; ".join(problems)}
    if deviations:
        return (specials.STATUS if declared else "unsupported"), {**kw, "deviations": deviations}
    return ("pass" if declared else "undeclared-pass"), kw


def select(cases: Iterable[Any], pattern: str | None) -> list[Any]:
    """Cases whose id matches ``-k PATTERN``: globs or substrings, alternatives split by ``|``."""
    if not pattern:
        return list(cases)
    globs = [p if any(ch in p for ch in "*?[") else f"*{p}*" for p in pattern.split("|") if p]
    return [c for c in cases if any(fnmatch.fnmatchcase(c.id, g) for g in globs)]
