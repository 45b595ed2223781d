"""ONNX's backend test suite as a peer test: backplane beside the runtimes called directly.

``backplane conformance onnx-suite [--backend B] [-j N] [--sample] [--json]``
(:mod:`.onnx_suite_report` judges and reports; docs/onnx-suite.md says how to read it)

The cases are those of ``onnx.backend.test`` that the installed onnx wheel ships, first data
set of each, with the suite's own expected outputs and tolerances:

- ``node``: the node tests, from ``onnx/backend/test/data/node`` where the wheel ships it,
  else from the generators the data is made from (``onnx.backend.test.case.node``, numpy
  seeded with 0, so a run is repeatable);
- ``simple``, ``pytorch-converted``, ``pytorch-operator``: ``model.onnx`` and
  ``test_data_set_0`` of each folder, with ``rtol``/``atol`` from its ``data.json``;
- ``light``: the CNNs of ``data/real`` whose weights ONNX ships in ``data/light``
  (``light_NAME.onnx``, expected outputs ``light_NAME_output_0.pb``); as ONNX's runner does,
  every float input is ``arange(n) / n`` in the input's shape (a free dimension is 1).

Each case runs in several columns, each in a worker process (:class:`Pool`, the conformance
runner's own; a crash or a hang of a runtime is recorded and the run goes on):

- ``auto``: ``backplane.Session(model).run(inputs)``, the automatic plan;
- ``pinned:B``: ``backplane.Session(model, devices=[B])``;
- ``onnxruntime-direct``: ``onnxruntime.InferenceSession``, CPU provider;
- ``openvino-direct``: ``Core().read_model``, ``compile_model("CPU")`` at f32 inference
  precision in accuracy mode.

Both direct runtimes use one thread, so ``-j`` workers do not oversubscribe the cores.
Outputs are compared as ONNX's runner compares them (``assert_similar_outputs``): the same
number of outputs, sequences element by element, equal shapes, equal dtypes, strings
exactly, numbers with ``assert_allclose`` (``rtol`` 1e-3 and ``atol`` 1e-7 unless the case
says otherwise, NaN equal to NaN), bfloat16 at two ULPs. Three departures: sequences must
also have equal lengths; an absent optional output matches only an absent one (the runner
raises on it); and where the model draws random numbers (Bernoulli, RandomNormal ...,
Dropout in training mode) only shapes and dtypes are compared, since the recorded values
are one draw that no runtime reproduces.

An outcome is ``pass``; ``wrong`` (it ran and the outputs differ: the worst outcome); or
``error`` with a cause (:data:`CAUSES`) derived from the exception's type and message.
"""

from __future__ import annotations

import fnmatch
import hashlib
import importlib.util
import json
import logging
import multiprocessing
import time
import warnings
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import (AttributeProto, MapProto, OptionalProto, SequenceProto, TensorProto, helper,
                  numpy_helper)

from backplane.conformance.onnx_suite_report import (ATOL, AUTO, CAUSES, DIRECT, MISSING,
                                                     ORT_DIRECT, OV_DIRECT, RTOL, CaseResult,
                                                     Outcome, cause_of, compare)
from backplane.conformance.runner import Worker, WorkerPool
from backplane.conformance.worker import serve_tasks
from backplane.engine.registry import registry
from backplane.engine.session import Session
from backplane.ops import RANDOM_OPS


SETS = ("node", "simple", "pytorch-converted", "pytorch-operator", "light")
#: Backends pinned when no ``--backend`` is named.
DEFAULT_PINNED = ("openvino-cpu", "onnxruntime")
DEFAULT_TIMEOUT_S = 120.0
#: Cases in the fixed sample the CI test runs (``--sample``).
SAMPLE_SIZE = 300
#: Seconds the warm-up (capability tables derived and cached) may take before the run.
WARM_TIMEOUT_S = 900.0
#: Tasks a worker runs before it is replaced: runtimes keep memory from every compile.
TASKS_PER_WORKER = 1000
#: Ops whose outputs are random draws (ONNX Runtime's own run of this suite skips their
#: tests for that reason).

__all__ = ["AUTO", "CAUSES", "DEFAULT_PINNED", "DIRECT", "ORT_DIRECT", "OV_DIRECT", "SETS",
           "SAMPLE_SIZE", "SuiteCase", "Outcome", "CaseResult", "columns_for", "load_cases",
           "sample", "run", "run_column", "judge", "compare", "cause_of", "read_value"]


@dataclass(eq=False)
class SuiteCase:
    """One test of the suite: a model, its inputs and its expected outputs (graph order).

    ``id`` is ``SET/NAME`` (``node/test_abs``); ``op`` the op a node test is for (its base
    test's op for an ``_expanded`` one), else the case's name."""

    id: str
    set: str
    op: str
    model: bytes = field(repr=False)
    inputs: list[tuple[str, Any]] = field(repr=False)
    outputs: list[Any] = field(repr=False)
    output_names: list[str] = field(repr=False)
    rtol: float = RTOL
    atol: float = ATOL
    values: bool = True
    """False where the model draws random numbers (:data:`RANDOM_OPS`, a Dropout given a
    training_mode input): the expected values are one draw no runtime reproduces, so only
    the structure, shapes and dtypes are compared."""


def columns_for(backend: str | None = None, pinned: bool = True) -> list[str]:
    """The columns of a run: ``auto``, ``pinned:B`` for the named backend (each of
    :data:`DEFAULT_PINNED` when none is named; none with ``pinned`` False), the direct
    runtimes."""
    chosen = [] if not pinned else [backend] if backend else list(DEFAULT_PINNED)
    return [AUTO, *(f"pinned:{b}" for b in chosen), *DIRECT]


# --------------------------------------------------------------------------- the cases

def load_cases(sets: tuple[str, ...] = SETS, pattern: str | None = None) -> list[SuiteCase]:
    """The suite's cases of ``sets`` whose id matches ``pattern`` (globs or substrings,
    ``|`` between alternatives), in a stable order."""
    unknown = set(sets) - set(SETS)
    if unknown:
        raise ValueError(f"unknown case sets {sorted(unknown)}; choose among {', '.join(SETS)}")
    data = Path(onnx.__file__).parent / "backend" / "test" / "data"
    cases: list[SuiteCase] = []
    for name in sets:
        if name == "node":
            cases += _node_cases(data / "node")
        elif name == "light":
            cases += _light_cases(data)
        else:
            cases += _folder_cases(data / name, name)
    return _select(cases, pattern)


def _select(cases: list[SuiteCase], pattern: str | None) -> list[SuiteCase]:
    if not pattern:
        return cases
    globs = [p if any(ch in p for ch in "*?[") else f"*{p}*" for p in pattern.split("|") if p]
    return [c for c in cases if any(fnmatch.fnmatchcase(c.id, g) for g in globs)]


def generated_node_tests() -> list[tuple[str, Any, list, list]]:
    """ONNX's node tests as ``(name, model, inputs, outputs)``, generated from
    ``onnx.backend.test.case.node`` with numpy seeded with 0 (repeatable), first data set."""
    # deferred: importing it generates every node test (seconds)
    from onnx.backend.test.case import node as node_tests

    state = np.random.get_state()
    np.random.seed(0)  # the generators draw their inputs from numpy's global generator
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            tests = node_tests.collect_testcases(None)
    finally:
        np.random.set_state(state)
    return [(t.name, t.model, [_plain(v) for v in t.data_sets[0][0]],
             [_plain(v) for v in t.data_sets[0][1]]) for t in tests]


def _node_cases(folder: Path) -> list[SuiteCase]:
    if folder.is_dir():
        raw = [(p.name, *_read_folder(p)[:3]) for p in sorted(folder.iterdir())
               if (p / "model.onnx").is_file()]
    else:
        raw = generated_node_tests()
    ops = {name: model.graph.node[0].op_type for name, model, _, _ in raw if model.graph.node}
    out = []
    for name, model, inputs, outputs in sorted(raw, key=lambda r: r[0]):
        op = ops.get(name.split("_expanded")[0], ops.get(name, "?"))
        out.append(_case(f"node/{name}", "node", op, model, inputs, outputs, RTOL, ATOL))
    return out


def _folder_cases(folder: Path, set_name: str) -> list[SuiteCase]:
    out = []
    for p in sorted(folder.iterdir()) if folder.is_dir() else []:
        if (p / "model.onnx").is_file():
            model, inputs, outputs, (rtol, atol) = _read_folder(p)
            out.append(_case(f"{set_name}/{p.name}", set_name, p.name.removeprefix("test_"),
                             model, inputs, outputs, rtol, atol))
    return out


def _light_cases(data: Path) -> list[SuiteCase]:
    out = []
    for p in sorted((data / "real").iterdir()) if (data / "real").is_dir() else []:
        info = json.loads((p / "data.json").read_text("utf-8"))
        url = info.get("url", "")
        if not url.startswith("onnx/backend/test/data/light/"):
            continue  # a model ONNX's runner downloads: not shipped, not run here
        path = data / "light" / Path(url).name
        model = onnx.load(str(path))
        inits = {t.name for t in model.graph.initializer}
        inputs = []
        for vi in model.graph.input:
            if vi.name in inits:
                continue
            # ONNX's runner (generate_dummy_data, random=False): arange(n) / n, float32.
            shape = tuple(d.dim_value if d.HasField("dim_value") else 1
                          for d in vi.type.tensor_type.shape.dim)
            n = int(np.prod(shape))
            inputs.append((np.arange(n).reshape(shape) / n).astype(np.float32))
        outputs = [read_value(path.with_name(f"{path.stem}_output_{i}.pb"), vi.type)
                   for i, vi in enumerate(model.graph.output)]
        out.append(_case(f"light/{p.name}", "light", info.get("model_name", p.name), model,
                         inputs, outputs, float(info.get("rtol", RTOL)),
                         float(info.get("atol", ATOL))))
    return out


def _read_folder(p: Path) -> tuple[Any, list[Any], list[Any], tuple[float, float]]:
    model = onnx.load(str(p / "model.onnx"))
    tol = (RTOL, ATOL)
    if (p / "data.json").is_file():
        info = json.loads((p / "data.json").read_text("utf-8"))
        tol = (float(info.get("rtol", RTOL)), float(info.get("atol", ATOL)))
    data = p / "test_data_set_0"
    # As ONNX's runner: input_i is read with the type of graph input i.
    inputs = [read_value(data / f"input_{i}.pb", model.graph.input[i].type)
              for i in range(len(list(data.glob("input_*.pb"))))]
    outputs = [read_value(data / f"output_{i}.pb", model.graph.output[i].type)
               for i in range(len(list(data.glob("output_*.pb"))))]
    return model, inputs, outputs, tol


def read_value(path: Path, type_proto: Any) -> Any:
    """A recorded value, parsed as the proto its graph type says it is."""
    kind = type_proto.WhichOneof("value")
    proto = {"sequence_type": SequenceProto, "optional_type": OptionalProto,
             "map_type": MapProto}.get(kind, TensorProto)()
    proto.ParseFromString(path.read_bytes())
    return _plain(proto)


def _plain(value: Any) -> Any:
    """Numpy arrays, lists, dicts and None for ONNX's tensors, sequences, maps, optionals
    (the generators also hand out TensorProtos and numpy scalars)."""
    if isinstance(value, TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, SequenceProto):
        return [_plain(v) for v in numpy_helper.to_list(value)]
    if isinstance(value, OptionalProto):
        return _plain(numpy_helper.to_optional(value))
    if isinstance(value, MapProto):
        return numpy_helper.to_dict(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, dict):
        return value
    return np.asarray(value)


def _case(case_id: str, set_name: str, op: str, model: Any, inputs: list[Any],
          outputs: list[Any], rtol: float, atol: float) -> SuiteCase:
    inits = {t.name for t in model.graph.initializer}
    names = [vi.name for vi in model.graph.input if vi.name not in inits]
    # Dropout with a training_mode input draws its mask (its recorded outputs are one draw).
    random = any(n.op_type in RANDOM_OPS or (n.op_type == "Dropout" and len(n.input) > 2
                                             and n.input[2]) for n in _nodes(model))
    return SuiteCase(case_id, set_name, op, model.SerializeToString(),
                     list(zip(names, inputs)), outputs,
                     [o.name for o in model.graph.output], rtol, atol, not random)


def _nodes(model: Any) -> list[Any]:
    """Every node of a model: its graph's, its subgraphs' and its local functions'."""
    todo = [*model.graph.node, *(n for f in model.functions for n in f.node)]
    out = []
    while todo:
        n = todo.pop()
        out.append(n)
        for a in n.attribute:
            if a.type == AttributeProto.GRAPH:
                todo.extend(a.g.node)
            elif a.type == AttributeProto.GRAPHS:
                todo.extend(x for g in a.graphs for x in g.node)
    return out


def sample(cases: list[SuiteCase], size: int) -> list[SuiteCase]:
    """A fixed, spread-out sample of ``size`` cases: each set gets a share in proportion to
    its size (at least three cases where it has them and ``size`` allows); within a set, one case of each op
    before a second of any, the cases picked by a hash of their id (so the sample does not
    shift when other cases come or go). Returned in the cases' order."""
    if size >= len(cases):
        return list(cases)
    key = lambda c: hashlib.sha1(c.id.encode()).hexdigest()  # noqa: E731
    by_set: dict[str, list[SuiteCase]] = {}
    for c in cases:
        by_set.setdefault(c.set, []).append(c)
    floor = min(3, size // len(by_set))
    quota = {s: min(len(cs), max(floor, round(size * len(cs) / len(cases))))
             for s, cs in by_set.items()}
    largest = max(quota, key=lambda s: len(by_set[s]))  # takes what rounding left over
    quota[largest] = min(len(by_set[largest]),
                         max(0, size - sum(q for s, q in quota.items() if s != largest)))
    chosen: set[str] = set()
    for s, members in by_set.items():
        seen: dict[str, int] = {}
        rank: dict[str, tuple[int, str]] = {}
        for c in sorted(members, key=key):  # the n-th case of its op ranks in round n
            rank[c.id] = (seen.get(c.op, 0), key(c))
            seen[c.op] = seen.get(c.op, 0) + 1
        chosen.update(sorted(rank, key=rank.__getitem__)[:quota[s]])
    return [c for c in cases if c.id in chosen]


# --------------------------------------------------------------------------- the worker

def _serve(conn: Any, expected: tuple[str, ...]) -> None:
    """A worker process: run ``("case", key, column, model, feeds, output_names)`` tasks,
    answering ``("done", key, result)`` (:func:`run_column`), until told to stop."""
    global _UNAVAILABLE
    _quiet()
    _UNAVAILABLE = sorted(set(expected) - set(_backends(expected)))
    try:  # the first session of a process loads the capability tables and cost profiles
        _tiny_session()
    except Exception:  # noqa: S110 - whatever fails here fails again, as data, in a case
        pass
    conn.send(("ready", None))
    serve_tasks(conn, "case", lambda message: ("done", message[1], run_column(*message[2:])))


def _quiet() -> None:
    """Keep the runtimes' logs out of the suite's output: their errors are its data."""
    warnings.simplefilter("ignore")
    logging.getLogger("backplane").setLevel(logging.ERROR)
    try:
        import onnxruntime  # deferred: a heavy vendor runtime, loaded in the worker only

        onnxruntime.set_default_logger_severity(4)
    except ImportError:
        pass


#: Backends the run expects that have no device in this worker (all its probes failed).
_UNAVAILABLE: list[str] = []


def _backends(expected: tuple[str, ...], attempts: int = 3) -> list[str]:
    """The backends with a device in this process's registry, discovered again (up to
    ``attempts`` times) while one of ``expected`` is missing: a probe that timed out on a
    busy machine must not take a backend out of every case this worker runs."""
    found: list[str] = []
    for attempt in range(attempts):
        found = sorted({d.backend for d in registry(refresh=attempt > 0).devices()})
        if set(expected) <= set(found):
            break
    return found


def run_column(column: str, model: bytes, feeds: list[tuple[str, Any]],
               output_names: list[str]) -> dict[str, Any]:
    """Run one case in one column, in this process: ``{"outputs", "stage", "error_type",
    "error", "seconds", "backends"}``; every exception becomes data."""
    result: dict[str, Any] = {"outputs": None, "stage": None, "error_type": None,
                              "error": None, "seconds": 0.0, "backends": [],
                              "unavailable": _UNAVAILABLE}
    stage = ["load"]
    t0 = time.perf_counter()
    try:
        with np.errstate(all="ignore"):
            if column == ORT_DIRECT:
                result["outputs"] = _run_ort(model, feeds, stage)
            elif column == OV_DIRECT:
                result["outputs"] = _run_ov(model, feeds, stage)
            else:
                devices = "auto" if column == AUTO else [column.split(":", 1)[1]]
                result["outputs"], result["backends"] = _run_session(
                    model, feeds, output_names, devices, stage)
    except Exception as exc:  # a runtime's refusal is a result, not the suite's failure
        result.update(stage=stage[0], error_type=type(exc).__name__,
                      error=str(exc).strip()[:2000])
    result["seconds"] = time.perf_counter() - t0
    return result


def _run_session(model: bytes, feeds: list[tuple[str, Any]], output_names: list[str],
                 devices: Any, stage: list[str]) -> tuple[list[Any], list[str]]:
    session = Session(model, devices=devices)
    stage[0] = "run"
    out = session.run({k: v for k, v in feeds if v is not None})
    backends = sorted({p.backend for p in session.plan.partitions})
    return [out.get(name, MISSING) for name in output_names], backends

def _run_ort(model: bytes, feeds: list[tuple[str, Any]], stage: list[str]) -> list[Any]:
    import onnxruntime as ort  # deferred: a heavy vendor runtime, loaded in the worker only

    options = ort.SessionOptions()
    options.log_severity_level = 4  # its errors are this suite's data, not its output
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    stage[0] = "run"
    return list(session.run(None, {k: v for k, v in feeds if v is not None}))


_OV_CORE: Any = None


def _run_ov(model: bytes, feeds: list[tuple[str, Any]], stage: list[str]) -> list[Any]:
    import openvino as ov  # deferred: a heavy vendor runtime, loaded in the worker only

    global _OV_CORE
    core = _OV_CORE = _OV_CORE or ov.Core()
    read = core.read_model(model)
    stage[0] = "compile"
    compiled = core.compile_model(read, "CPU", {
        "INFERENCE_PRECISION_HINT": "f32", "EXECUTION_MODE_HINT": "ACCURACY",
        "INFERENCE_NUM_THREADS": 1})
    stage[0] = "run"
    result = compiled.create_infer_request().infer([v for _, v in feeds if v is not None])
    return [np.array(result[out]) for out in compiled.outputs]


def _warm(conn: Any, pinned: tuple[str, ...]) -> None:
    """Build one automatic session, so that every backend's capability table is derived and
    cached once, before ``-j`` workers race to derive it each; answer the backends found."""
    _quiet()
    # The backends of the runtimes this suite also calls directly should be there too.
    wanted = {*pinned, *(b for b, module in (("onnxruntime", "onnxruntime"),
                                              ("openvino-cpu", "openvino"))
                         if importlib.util.find_spec(module))}
    found = _backends(tuple(sorted(wanted)))
    try:
        _tiny_session()
    finally:
        conn.send(found)


def _tiny_session() -> None:
    """An automatic session of a one-node model, built and run."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])],
                                                 "warm", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 13)])
    Session(model.SerializeToString()).run({"x": np.ones(2, np.float32)})


def warm(pinned: tuple[str, ...] = (), timeout_s: float = WARM_TIMEOUT_S) -> list[str]:
    """Run :func:`_warm` in a child process; return the backends it found (none when it
    failed: a failure shows up again in the cases)."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_warm, args=(child, tuple(pinned)), daemon=True)
    process.start()
    child.close()
    found: list[str] = []
    try:
        if parent.poll(timeout_s):
            found = parent.recv()
    except (EOFError, OSError):
        pass
    process.join(5)
    if process.is_alive():
        process.kill()
        process.join(5)
    return found


class Pool(WorkerPool):
    """The conformance runner's pool of worker processes (started, replaced after a crash
    or a hang, stopped), serving this suite's tasks. Each worker makes sure the
    ``expected`` backends have their devices before it says it is ready."""

    def __init__(self, jobs: int, expected: tuple[str, ...] = ()):  # noqa: D107
        self._ctx = multiprocessing.get_context("spawn")
        self._target, self._args = _serve, (tuple(expected),)
        self.workers = [self._start() for _ in range(max(1, jobs))]


# --------------------------------------------------------------------------- the run

def run(cases: list[SuiteCase], columns: list[str], *, jobs: int = 1,
        timeout_s: float = DEFAULT_TIMEOUT_S, progress: Any = None) -> list[CaseResult]:
    """Run every case in every column, each (case, column) in a worker process; return one
    result per case, in the cases' order. ``progress(done, total)`` is called per task."""
    tasks = [(i, col) for i, _ in enumerate(cases) for col in columns]
    done: dict[tuple[int, str], Outcome] = {}
    if not tasks:
        return []
    pinned = tuple(c.split(":", 1)[1] for c in columns if c.startswith("pinned:"))
    expected = warm(pinned)
    pool = Pool(min(jobs, len(tasks)), tuple(expected))

    def record(key: tuple[int, str], outcome: Outcome) -> None:
        done[key] = outcome
        if progress:
            progress(len(done), len(tasks))

    def release(w: Worker, restart: bool) -> None:
        w.case, w.served = None, getattr(w, "served", 0) + 1
        if restart or w.served >= TASKS_PER_WORKER:
            pool.replace(w)

    pending = list(reversed(tasks))
    try:
        while pending or any(w.case for w in pool.workers):
            for w in pool.workers:
                if w.case is None and pending:
                    key = pending.pop()
                    c = cases[key[0]]
                    w.case, w.started = key, time.monotonic()
                    w.conn.send(("case", key, key[1], c.model, c.inputs, c.output_names))
            busy = [w for w in pool.workers if w.case]
            ready = wait([w.conn for w in busy], timeout=1.0)
            for w in busy:
                key = w.case
                if w.conn in ready:
                    try:
                        _, _, res = w.conn.recv()
                    except (EOFError, OSError):
                        w.process.join(5)
                        record(key, Outcome("error", "crash", seconds=time.monotonic()
                                            - w.started, detail=f"the worker process died "
                                            f"(exit code {w.process.exitcode})"))
                        release(w, True)
                        continue
                    record(key, judge(cases[key[0]], key[1], res))
                    release(w, False)
                elif time.monotonic() - w.started > timeout_s:
                    record(key, Outcome("error", "timeout", seconds=timeout_s,
                                        detail=f"no answer within {timeout_s:g} s; the "
                                               "worker was killed"))
                    release(w, True)
    finally:
        pool.close()
    return [CaseResult(c.id, c.set, c.op, {col: done[(i, col)] for col in columns})
            for i, c in enumerate(cases)]


def judge(case: SuiteCase, column: str, res: dict[str, Any]) -> Outcome:
    """A worker's answer as an outcome: an error's cause, or the outputs compared."""
    # A backend whose probe failed in this worker (a busy machine) changes what backplane
    # could choose: said with the outcome.
    missing = res.get("unavailable") if column != ORT_DIRECT and column != OV_DIRECT else []
    if res["error_type"] is not None:
        return Outcome("error", cause_of(column, res["stage"], res["error_type"], res["error"]),
                       f"{res['error_type']}: {res['error']}", res["seconds"],
                       backends=res["backends"], unavailable=list(missing or []))
    ok, err, detail = compare(res["outputs"], case.outputs, case.rtol, case.atol, case.values)
    return Outcome("pass" if ok else "wrong", None, detail, res["seconds"], err,
                   res["backends"], list(missing or []))
