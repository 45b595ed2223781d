"""Fuzzing: mutated models and inputs through ``Session``, ``devices="auto"`` against the
reference backend, in supervised worker processes.

Case ``I`` of seed ``S`` is drawn from ``numpy.random.default_rng([S, I])`` alone: one of
the small seed models of :mod:`backplane.conformance.fuzz_seeds` (built with
``onnx.helper``, three from the zoo at small sizes), then 0 to 3 mutations, either ones
that mostly keep it valid (the whole model in float64, float16 or bfloat16, kindred ops
swapped, other plausible attribute values, changed constants, symbolic dimensions), to be
compared with the reference, or ones that break it (dimensions negative, zero, huge or
symbolic, dtypes, attributes changed or removed, nodes, inputs and outputs dropped,
duplicated or renamed, cycles, opset and IR versions, unknown ops and domains, raw data
of the wrong size, external data in and outside the model's folder) and, now and then, a
byte-level one (bits flipped, truncation); given to ``Session`` as bytes, a path or a
``ModelProto``. Inputs are drawn from the model's declared inputs, with a run-time mutation
in about a third of the cases (missing, extra or misspelt names, wrong dtypes, ranks or
sizes, special values, empty, strided, read-only, list or scalar inputs). So a case is
replayed from its two numbers (``python -m backplane.conformance.fuzz --seed S --case I``).

Each case is built and run inside a worker process that the parent hands cases one at a
time, several hundred per worker; the parent knows which case is in flight, so a worker
that dies (a signal, an abort) is a ``crash`` of that case and one that does not answer
within the timeout a ``hang`` of it, and a fresh worker takes the next case. Workers run
with ``BACKPLANE_LOAD=off`` and private data and cache folders, and, where the platform
allows, a data memory limit (``RLIMIT_DATA``, as plugin isolation caps it), so that a
model asking for terabytes meets a ``MemoryError`` rather than the machine's OOM killer.

A case fails (a *finding*) on:

- ``unexpected``: ``Session(...)`` or ``run`` raised anything but a ``BackplaneError``;
- ``crash`` / ``hang``: the worker died or did not answer;
- ``mismatch``: both sessions ran and an output differs from the reference's beyond the
  conformance tolerance (``tolerances.toml``: the output's dtype, the op that produced it
  and the backend that ran that op; at least the tolerance of the least precise float type
  the model computes in, and, in a model computing below float32, an atol of at least the
  rtol times the output's largest magnitude: see :func:`_compare`), or in dtype, shape or
  structure. The special-value rule, until the conformance data documents deviations:
  elements where the reference output is NaN or infinite are not compared, so two NaNs at
  one place agree; a NaN or infinity where the reference has a finite value is a mismatch;
- ``divergent``: one session raised a ``BackplaneError`` and the other ran: either a
  backend computed outputs from a model or inputs the reference refuses (OpenVINO returned
  garbage for a Reshape of the wrong element count), or the reference fails on what is
  valid;
- ``inputs-modified``: a run wrote into the caller's input arrays;
- ``harness``: the fuzzer itself failed on the case (to be fixed here).

Both sessions refusing, with whatever ``BackplaneError``, is what a broken model or request
should get; the report counts the outcomes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from backplane.conformance import compare, tolerance
from backplane.conformance.runner import WorkerPool
from backplane.conformance.worker import serve_tasks
from backplane.engine import costmodel
from backplane.sdk.errors import BackplaneError
import backplane

#: The campaign seed of CI (``BACKPLANE_FUZZ_SEED`` overrides it in the test).
DEFAULT_SEED = 20240618
DEFAULT_TIMEOUT_S = 60.0
WORKER_START_TIMEOUT_S = 120.0
#: The data memory a worker may use (bytes); None: no limit.
DEFAULT_MEMORY_LIMIT = 6 * 2**30
#: Share of the cases whose inputs get a run-time mutation.
FEED_MUTATION_RATE = 0.3


#: The kinds of finding (see the module docstring).
KINDS = ("unexpected", "crash", "hang", "mismatch", "divergent", "inputs-modified", "harness")


@dataclass
class Finding:
    """One failing case: what went wrong, and how to replay it."""

    index: int
    kind: str
    detail: str
    mutations: list[str] = field(default_factory=list)
    seed: int = DEFAULT_SEED

    def replay(self) -> str:
        """The command that replays this case in one process."""
        return f"python -m backplane.conformance.fuzz --seed {self.seed} --case {self.index}"


@dataclass
class FuzzReport:
    """The outcome of a campaign."""

    seed: int
    cases: int
    seconds: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)
    """How many cases ended how (``both ran``, ``both refused: ModelError``, ...)."""
    findings: list[Finding] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Findings by kind."""
        out = {k: 0 for k in KINDS}
        for f in self.findings:
            out[f.kind] = out.get(f.kind, 0) + 1
        return out

    def summary(self) -> str:
        """A few lines: the seed, the counts, each finding with its replay command."""
        lines = [f"fuzz: seed {self.seed}, {self.cases} cases in {self.seconds:.1f} s; "
                 + ", ".join(f"{v} {k}" for k, v in self.counts().items()),
                 "outcomes: " + ", ".join(f"{v} {k}" for k, v in sorted(
                     self.outcomes.items(), key=lambda kv: -kv[1]))]
        for f in self.findings:
            lines.append(f"- case {f.index} [{f.kind}] {'; '.join(f.mutations)}\n  "
                         f"{f.detail}\n  replay: {f.replay()}")
        return "\n".join(lines)


# ---- one case -----------------------------------------------------------------------------


@dataclass
class Case:
    """A mutated model, how it is given to Session, and the inputs' mutation."""

    index: int
    seed: int
    seed_model: str
    mutant: Any
    given_as: str
    """``bytes``, ``path`` or ``proto``."""
    mutate_feeds: bool

    @property
    def mutations(self) -> list[str]:
        """What was done to the seed model, in words."""
        return [f"seed model {self.seed_model}", *self.mutant.done, f"given as {self.given_as}"]


def make_case(seed: int, index: int) -> Case:
    """Case ``index`` of campaign ``seed``."""
    # on use only: the suite's modules load when a run asks for them
    import numpy as np

    from backplane.conformance.fuzz_mutations import mutate
    from backplane.conformance.fuzz_seeds import SEEDS

    rng = np.random.default_rng([seed, index])
    name = sorted(SEEDS)[int(rng.integers(len(SEEDS)))]
    mutant = mutate(name, rng)
    if mutant.files or rng.random() < 0.15:
        given_as = "path"
    elif mutant.data is None and rng.random() < 0.2:
        given_as = "proto"
    else:
        given_as = "bytes"
    return Case(index, seed, name, mutant, given_as, bool(rng.random() < FEED_MUTATION_RATE))


def run_case(seed: int, index: int) -> dict[str, Any]:
    """Build and run case ``index`` of ``seed`` in a temporary folder: both sessions, their
    runs, the comparison. Returns plain data: ``mutations``, ``outcome``, ``findings``
    (``[kind, detail]`` pairs) and ``seconds``."""
    import numpy as np

    started = time.perf_counter()
    case = make_case(seed, index)
    root = Path(tempfile.mkdtemp(prefix="bp-fuzz-"))
    try:
        model = _materialize(case, root)
        sessions, errors = {}, {}
        for label, devices in (("reference", ["reference"]), ("auto", "auto")):
            sessions[label], errors[label] = _attempt(_session, model, devices, root)
        found: list[list[str]] = []
        loaded = sessions["reference"] or sessions["auto"]
        outputs: dict[str, Any] = {}
        if loaded is not None:
            rng = np.random.default_rng([seed, index, 1])
            # on use only: the suite's modules load when a run asks for them
            from backplane.conformance.fuzz_seeds import draw_feeds, mutate_feeds

            feeds: Any = draw_feeds(loaded.inputs, rng)
            if case.mutate_feeds:
                feeds, what = mutate_feeds(feeds, rng)
                case.mutant.done.append(f"run with {what}")
            before = _snapshot(feeds)
            for label, s in sessions.items():
                if s is not None:
                    outputs[label], errors[label] = _attempt(s.run, feeds)
                    if not _unchanged(before, feeds):
                        found.append(["inputs-modified", f"the {label} run wrote into its "
                                      "input arrays"])
                        before = _snapshot(feeds)
        for label, err in errors.items():
            if err is not None and err["unexpected"]:
                found.append(["unexpected", f"{label}: {err['text']}"])
        raised = [k for k, err in errors.items() if err is not None]
        if len(raised) == 1 and not errors[raised[0]]["unexpected"]:
            other = "auto" if raised == ["reference"] else "reference"
            found.append(["divergent", f"{raised[0]} raised {errors[raised[0]]['text']}; "
                                       f"{other} ran"])
        if all(errors[k] is None for k in ("reference", "auto")) and outputs:
            found.extend(["mismatch", p] for p in _compare(
                outputs["auto"], outputs["reference"], sessions["auto"]))
        return {"mutations": case.mutations, "outcome": _outcome(errors), "findings": found,
                "seconds": time.perf_counter() - started}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _materialize(case: Case, root: Path) -> Any:
    """Write the case's files under ``root`` and return what Session is given."""
    m = case.mutant
    (root / "model").mkdir(parents=True, exist_ok=True)
    for rel, data in m.files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for rel, target in m.links.items():
        try:
            os.symlink(target, root / rel)
        except OSError:
            pass
    if case.given_as == "path":
        path = root / "model" / "model.onnx"
        path.write_bytes(m.to_bytes())
        return path
    return m.model if case.given_as == "proto" else m.to_bytes()


def _session(model: Any, devices: Any, root: Path) -> Any:
    base_dir = None if isinstance(model, Path) else root / "model"
    return backplane.Session(model, devices=devices, base_dir=base_dir)


def _attempt(fn: Callable[..., Any], *args: Any) -> tuple[Any, dict[str, Any] | None]:
    """(fn(*args), None), or (None, what it raised: ``type``, ``unexpected``, ``text``)."""
    try:
        return fn(*args), None
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # a finding when it is not a BackplaneError: name it fully
        unexpected = not isinstance(exc, BackplaneError)
        text = f"{type(exc).__name__}: {exc}"
        if unexpected:
            text += "\n" + "".join(traceback.format_exception(exc)[-8:])
        return None, {"type": type(exc).__name__, "unexpected": unexpected,
                      "text": text[:4000]}


def _outcome(errors: dict[str, Any]) -> str:
    ref, auto = errors["reference"], errors["auto"]
    if ref is None and auto is None:
        return "both ran"
    if ref is not None and auto is not None:
        same = ref["type"] if ref["type"] == auto["type"] else f"{ref['type']}/{auto['type']}"
        return f"both refused: {same}"
    return f"divergent: {'auto' if auto else 'reference'} raised {(auto or ref)['type']}"


def _snapshot(feeds: Any) -> dict[Any, Any]:
    import numpy as np

    items = feeds.items() if isinstance(feeds, dict) else enumerate(feeds)
    return {k: v.copy() for k, v in items if isinstance(v, np.ndarray) and v.dtype != object}


def _unchanged(before: dict[Any, Any], feeds: Any) -> bool:
    import numpy as np

    items = dict(feeds.items() if isinstance(feeds, dict) else enumerate(feeds))
    return all(np.array_equal(v, items[k], equal_nan=v.dtype.kind in "fc")
               for k, v in before.items())


#: Float types less precise than float32: rounding errors of a model computing in one are
#: judged against the magnitude of each output (see :func:`_compare`).
REDUCED = frozenset({"float16", "bfloat16", "float8e4m3fn", "float8e4m3fnuz", "float8e5m2",
                     "float8e5m2fnuz"})
#: Ops whose output jumps where the input crosses a step: one rounding of difference
#: upstream moves an element by a whole step (a quantization step, the divisor of Mod).
STEPS = frozenset({"QuantizeLinear", "DynamicQuantizeLinear", "Mod", "Floor", "Ceil", "Round",
                   "Sign", "ArgMax", "ArgMin", "TopK", "Hardmax", "Greater", "Less", "Equal",
                   "GreaterOrEqual", "LessOrEqual", "Cast", "NonZero", "Unique"})


def _compare(actual: dict[str, Any], expected: dict[str, Any], session: Any) -> list[str]:
    """Problems of ``actual`` (auto) against ``expected`` (reference) under the conformance
    tolerances, each at least that of the least precise float type the model computes in.
    Elements where the reference is not finite are skipped.

    A model computing in a type below float32 rounds every intermediate value to a few
    bits, at other places on each backend; a final Add of two values of magnitude 3 that
    nearly cancel leaves an output of 0.2 with an error of a few units in the last place
    of 3. So there the atol is at least the rtol times the output's largest magnitude (the
    measure of ``Session(precision="auto")``'s budget). And where such a model has an op
    of :data:`STEPS` (a QuantizeLinear, a Mod), one rounding moves an element by a whole
    step: its outputs are compared in dtype, shape and the places of NaN only."""
    import numpy as np


    if set(actual) != set(expected):
        return [f"outputs {sorted(actual)}, the reference's {sorted(expected)}"]
    graph = session.graph
    op_of = {o: n.op_type for n in graph.nodes for o in n.outputs}
    backend_of = {o: p.backend for p in session.plan.partitions for o in p.outputs}
    floats = {vi.dtype for vi in graph.values.values()
              if vi.dtype.startswith(("float", "bfloat"))}
    rtol, atol = (max([tolerance(d)[k] for d in floats] + [0.0]) for k in (0, 1))
    stepped = bool(floats & REDUCED) and any(n.op_type in STEPS for n in graph.nodes)
    problems: list[str] = []
    for name, want in expected.items():
        op, backend = op_of.get(name), backend_of.get(name)
        floor = (rtol, atol)
        if stepped:
            floor = (rtol, math.inf)
        elif floats & REDUCED:
            floor = (rtol, max(atol, rtol * _magnitude(np, want)))
        problems.extend(f"output '{name}' ({op} on {backend}): {p}"
                        for p in compare_value(actual[name], want, op, backend, floor))
    return problems


def _magnitude(np: Any, value: Any) -> float:
    """The largest finite magnitude in an output (0 for none, and for non-floats)."""
    if isinstance(value, (list, tuple)):
        return max([_magnitude(np, v) for v in value] + [0.0])
    try:
        a = np.asarray(value).astype(np.float64)
    except (TypeError, ValueError):
        return 0.0
    a = a[np.isfinite(a)]
    return float(np.abs(a).max()) if a.size else 0.0


def compare_value(got: Any, want: Any, op: str | None = None, backend: str | None = None,
                  floor: tuple[float, float] = (0.0, 0.0)) -> list[str]:
    """Problems of an output against the reference's (arrays, sequences, None), under the
    conformance tolerance of its dtype, the op that made it and the backend that ran it
    (at least ``floor``, rtol and atol). Elements where the reference is NaN or infinite
    are skipped; a non-finite value where the reference is finite is a problem."""
    import numpy as np


    if isinstance(want, (list, tuple)) or isinstance(got, (list, tuple)):
        if not isinstance(got, (list, tuple)) or not isinstance(want, (list, tuple)) \
                or len(got) != len(want):
            return [f"got {_kind(got)}, the reference {_kind(want)}"]
        return [f"[{k}] {p}" for k, (g, e) in enumerate(zip(got, want))
                for p in compare_value(g, e, op, backend, floor)]
    if want is None or got is None:
        return [] if want is None and got is None else [
            f"got {_kind(got)}, the reference {_kind(want)}"]
    got, want = np.asarray(got), np.asarray(want)
    if got.shape != want.shape or got.dtype != want.dtype:
        return [f"got {_kind(got)}, the reference {_kind(want)}"]
    if want.dtype.kind in "fcV":  # V: ml_dtypes' bfloat16 and float8 types
        try:
            finite = np.isfinite(want if want.dtype.kind != "V" else want.astype(np.float64))
        except (TypeError, ValueError):
            finite = np.ones(want.shape, bool)
        got, want = got[finite], want[finite]
    rtol, atol = tolerance(str(want.dtype), op, backend)
    c = compare(got, want, max(rtol, floor[0]), max(atol, floor[1]))
    if c.ok:
        return []
    return [f"max abs error {c.max_abs_error:.3g}, max rel error {c.max_rel_error:.3g} "
            f"(rtol {c.rtol:g}, atol {c.atol:g}); {c.detail}"]


def _kind(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return f"a sequence of {len(value)}"
    return "None" if value is None else f"{getattr(value, 'dtype', type(value).__name__)}" \
        f"{list(getattr(value, 'shape', ()))}"


# ---- the worker ---------------------------------------------------------------------------


def _worker(conn: Any, env: dict[str, str], memory_limit: int | None,
            execute: Callable[[int, int], dict[str, Any]]) -> None:
    """A worker process: set up, say ready, then answer ``("case", seed, index)`` with
    ``("done", index, execute(seed, index))`` until told to stop."""
    os.environ.update(env)
    if memory_limit:
        try:
            import resource

            resource.setrlimit(resource.RLIMIT_DATA, (memory_limit, memory_limit))
        except (ImportError, ValueError, OSError):
            pass
    _quiet_and_memoryless()

    conn.send(("ready", None))
    serve_tasks(conn, "case", lambda message: ("done", message[2],
                                              _answer(execute, message[1], message[2])))


def _answer(execute: Callable[[int, int], dict[str, Any]], seed: int, index: int
            ) -> dict[str, Any]:
    """``execute(seed, index)``; where the fuzzer itself fails, a ``harness`` finding with
    its traceback (so that it is not taken for a crash of the case)."""
    try:
        return execute(seed, index)
    except Exception as exc:
        text = "".join(traceback.format_exception(exc)[-8:])
        return {"mutations": [], "outcome": "harness", "seconds": 0.0,
                "findings": [["harness", f"the fuzzer failed on this case: {text}"[:4000]]]}


def _quiet_and_memoryless() -> None:
    """No warnings or log lines (refusals are the point), and no cost-model learning from
    one case to the next: a case plans as in a fresh process, so that its replay does."""
    import logging
    import warnings


    warnings.simplefilter("ignore")
    logging.getLogger("backplane").setLevel(logging.CRITICAL)
    costmodel.observe = lambda *args, **kwargs: None


class _Workers(WorkerPool):
    """The conformance runner's pool of worker processes (started, replaced after a crash
    or a hang, stopped), serving fuzz cases; a worker's ``case`` is the index in flight."""

    def __init__(self, jobs: int, env: dict[str, str], memory_limit: int | None,
                 execute: Callable[[int, int], dict[str, Any]]):  # noqa: D107
        import multiprocessing

        self._ctx = multiprocessing.get_context("spawn")
        self._target, self._args = _worker, (env, memory_limit, execute)
        self.workers = [self._start() for _ in range(max(1, jobs))]


def private_env(scratch: Path) -> dict[str, str]:
    """The environment of a fuzz run: no live load in the plans, and compiled artefacts
    and learned costs in ``scratch`` (the user's folders stay untouched, and a replay
    plans as the campaign did)."""
    return {"BACKPLANE_LOAD": "off", "BACKPLANE_CACHE_DIR": str(scratch / "cache"),
            "BACKPLANE_DATA_DIR": str(scratch / "data")}


def _exit_text(code: int | None) -> str:
    import signal

    if code is not None and code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def run_campaign(seed: int = DEFAULT_SEED, cases: int | list[int] = 300, *, jobs: int = 2,
                 timeout_s: float = DEFAULT_TIMEOUT_S,
                 memory_limit: int | None = DEFAULT_MEMORY_LIMIT,
                 execute: Callable[[int, int], dict[str, Any]] = run_case,
                 progress: Callable[[int, dict[str, Any]], None] | None = None) -> FuzzReport:
    """Run cases ``0 .. cases - 1`` (or the indices listed) of campaign ``seed`` in ``jobs``
    worker processes and return the :class:`FuzzReport`.

    ``execute(seed, index)`` runs one case in a worker (a module-level function, since
    workers are spawned); it returns :func:`run_case`'s dict. ``progress(index, result)``
    is called as each case ends.
    """
    from multiprocessing.connection import wait

    indices = list(range(cases)) if isinstance(cases, int) else list(cases)
    report = FuzzReport(seed, len(indices))
    started = time.monotonic()
    scratch = Path(tempfile.mkdtemp(prefix="bp-fuzz-campaign-"))
    env = private_env(scratch)

    def record(index: int, result: dict[str, Any]) -> None:
        report.outcomes[result["outcome"]] = report.outcomes.get(result["outcome"], 0) + 1
        for kind, detail in result["findings"]:
            report.findings.append(Finding(index, kind, detail, result["mutations"], seed))
        if progress:
            progress(index, result)

    def lost(index: int, kind: str, detail: str) -> None:
        try:
            mutations = make_case(seed, index).mutations
        except Exception as exc:  # the report must still name the case
            mutations = [f"(the case cannot be rebuilt: {exc})"]
        record(index, {"outcome": kind, "findings": [[kind, detail]], "mutations": mutations})

    pending = list(reversed(indices))
    pool = _Workers(min(jobs, max(1, len(indices))), env, memory_limit, execute)
    try:
        while pending or any(w.case is not None for w in pool.workers):
            for w in pool.workers:
                if w.case is None and pending:
                    w.case, w.started = pending.pop(), time.monotonic()
                    w.conn.send(("case", seed, w.case))
            busy = [w for w in pool.workers if w.case is not None]
            ready = wait([w.conn for w in busy], timeout=1.0)
            now = time.monotonic()
            for w in busy:
                index = w.case
                if w.conn in ready:
                    w.case = None
                    try:
                        _, _, result = w.conn.recv()
                    except (EOFError, OSError):
                        w.process.join(5)
                        lost(index, "crash", f"the worker died ({_exit_text(w.process.exitcode)}) "
                                             "while running this case")
                        pool.replace(w)
                        continue
                    record(index, result)
                elif now - w.started > timeout_s:
                    w.case = None
                    lost(index, "hang", f"no answer within {timeout_s:g} s; the worker was killed")
                    pool.replace(w)
    finally:
        pool.close()
        shutil.rmtree(scratch, ignore_errors=True)
    report.findings.sort(key=lambda f: f.index)
    report.seconds = time.monotonic() - started
    return report


# ---- command line -------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """``python -m backplane.conformance.fuzz``: a campaign, or one case replayed."""
    parser = argparse.ArgumentParser(
        prog="python -m backplane.conformance.fuzz",
        description="Mutated models and inputs through Session (auto) against the reference "
                    "backend, each case in a supervised worker process.")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--cases", type=int, default=3000, help="how many cases (from 0)")
    parser.add_argument("--start", type=int, default=0, help="the first case's index")
    parser.add_argument("-j", "--jobs", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help="seconds a case may take before it is a hang")
    parser.add_argument("--case", type=int, help="replay this one case in this process, "
                        "with full tracebacks")
    parser.add_argument("--save", metavar="FILE", help="with --case: write its model bytes")
    parser.add_argument("--json", metavar="FILE", help="write the report as JSON")
    args = parser.parse_args(argv)
    if args.case is not None:
        case = make_case(args.seed, args.case)
        if args.save:
            Path(args.save).write_bytes(case.mutant.to_bytes())
        scratch = Path(tempfile.mkdtemp(prefix="bp-fuzz-replay-"))
        os.environ.update(private_env(scratch))
        _quiet_and_memoryless()
        try:
            result = run_case(args.seed, args.case)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        print(json.dumps(result, indent=2, default=str))
        return 1 if result["findings"] else 0
    done = [0]

    def progress(index: int, result: dict[str, Any]) -> None:
        done[0] += 1
        if result["findings"]:
            print(f"case {index}: {result['findings'][0][0]}", file=sys.stderr, flush=True)
        if done[0] % 500 == 0:
            print(f"{done[0]} cases", file=sys.stderr, flush=True)

    report = run_campaign(args.seed, list(range(args.start, args.start + args.cases)),
                          jobs=args.jobs, timeout_s=args.timeout, progress=progress)
    print(report.summary())
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(report) | {"counts": report.counts()},
                                              indent=2), "utf-8")
    return 1 if report.findings else 0


if __name__ == "__main__":
    sys.exit(main())
