"""Checking a corpus model: run directly on each runtime, then through backplane, and compared."""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from backplane.conformance.corpus_materialize import materialize
from backplane.conformance.corpus_recipe import Entry, entry, sample_inputs
from backplane.sdk.errors import BackplaneError
import backplane as bp

#: The backends a pinned run names, with the runtime each wraps (its direct run is the
#: pinned run's own reference).
PINNED = {"openvino-cpu": "openvino", "onnxruntime": "onnxruntime"}


@dataclass
class Record:
    """What :func:`check` found for one model. ``problems`` is empty when it passed."""

    name: str
    family: str
    origin: str
    opset: int
    expect: str
    rtol: float
    direct: dict[str, str] = field(default_factory=dict)
    """Per runtime called directly (onnxruntime, openvino): "ok" or its error."""
    auto: str = ""
    """"ok", or the error of the devices="auto" session."""
    auto_devices: list[str] = field(default_factory=list)
    fallback_ops: dict[str, int] = field(default_factory=dict)
    """Ops of the nodes the automatic plan put on the reference backend, with counts."""
    refused: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per device of the automatic plan: why it refused nodes (capability codes), counted."""
    pinned: dict[str, str] = field(default_factory=dict)
    """Per backend: "ok", "skipped: <why>" or the error of the pinned session."""
    rel_error: dict[str, float] = field(default_factory=dict)
    """Worst relative error of the outputs: "direct:openvino" and "auto" against ORT direct,
    "pinned:<backend>" against its own runtime direct (keys of direct:onnxruntime too);
    where one of those is over the budget, "oracle:<key>" is that path's distance from the
    float64 oracle and "oracle:direct:<runtime>" the runtime's own."""
    latency_s: dict[str, float] = field(default_factory=dict)
    """Median seconds per run (``check(..., runs=N)``), keyed as ``rel_error``."""
    materialize_s: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Whether every check held."""
        return not self.problems

    @property
    def outcome(self) -> str:
        """"pass", or "gap: " and the problems: the form of the recipe's ``expect``."""
        return "pass" if self.passed else "gap: " + "; ".join(self.problems)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (with ``outcome``), for JSON reports."""
        return {**asdict(self), "outcome": self.outcome}


def check(name: str | Entry, *, runs: int = 0, warmup: int = 3) -> Record:
    """Run the model on ONNX Runtime and OpenVINO directly, then through backplane with
    ``devices="auto"`` and pinned to ``openvino-cpu`` and to ``onnxruntime`` (each where
    its runtime reads the model directly). It passes when the automatic plan puts no node
    on the reference backend and is within the entry's ``rtol`` (relative to each output's
    largest magnitude) of ORT direct, and each pinned run is within it of its own runtime
    direct. A float run over the budget still agrees when it is no farther from the float64
    oracle (:func:`backplane.conformance.oracle.expected`) than the runtime it is compared
    with: the budget is then finer than that runtime's own float32 rounding on this model.
    With ``runs``, each path is timed: the median of ``runs`` calls after ``warmup``.
    """
    e = entry(name)
    rec = Record(e.name, e.family, e.origin, e.opset, e.expect, e.rtol)
    t0 = time.perf_counter()
    path = materialize(e)
    rec.materialize_s = time.perf_counter() - t0
    feeds = sample_inputs(e)
    results: dict[str, dict[str, np.ndarray]] = {}
    for runtime, make in (("onnxruntime", _ort_direct), ("openvino", _openvino_direct)):
        try:
            fn = make(path)
            results[runtime] = fn(feeds)
            rec.direct[runtime] = "ok"
            _time(rec, f"direct:{runtime}", fn, feeds, runs, warmup)
        except Exception as exc:  # noqa: BLE001 - a runtime's own failure is a finding
            rec.direct[runtime] = f"{type(exc).__name__}: {_short(exc)}"
    ref = results.get("onnxruntime")
    if ref is None:
        rec.problems.append("onnxruntime cannot run it directly: " + rec.direct["onnxruntime"])
    elif "openvino" in results:
        rec.rel_error["direct:openvino"] = _rel_error(results["openvino"], ref)
    truth = _Oracle(path, feeds)
    _through_backplane(rec, e, None, path, feeds, (ref, "onnxruntime", truth), runs, warmup)
    for backend, runtime in PINNED.items():
        if runtime in results:
            _through_backplane(rec, e, backend, path, feeds,
                               (results[runtime], runtime, truth), runs, warmup)
        else:
            rec.pinned[backend] = f"skipped: {runtime} cannot read it directly"
    return rec


class _Oracle:
    """The float64 oracle's outputs for a model's sample inputs, evaluated on first use
    (only where a run is over its budget: onnx.reference is slow on big models)."""

    _UNSET: Any = object()

    def __init__(self, path: Path, feeds: dict[str, np.ndarray]):
        self.path, self.feeds = path, feeds
        self._out: Any = self._UNSET

    def outputs(self) -> dict[str, np.ndarray] | None:
        """The outputs, or None where the oracle cannot evaluate the model in float64."""
        if self._out is self._UNSET:
            # on use only: the suite's modules load when a run asks for them
            import onnx

            from backplane.conformance.oracle import FLOAT64, expected_with_mode

            try:
                out, mode = expected_with_mode(onnx.load(str(self.path)), self.feeds)
                self._out = out if mode == FLOAT64 else None
            except Exception:  # noqa: BLE001 - no arbitration then: the budget stands
                self._out = None
        return self._out


def _arbitrated(rec: Record, label: str, out: dict[str, np.ndarray], compared: tuple
                ) -> bool:
    """Whether ``out``, over the budget against the runtime's answer, is no farther from
    the float64 oracle than that runtime's answer is (recorded in ``rec.rel_error``)."""
    ref, runtime, truth = compared
    exact = truth.outputs()
    if exact is None:
        return False
    mine = rec.rel_error[f"oracle:{label}"] = _rel_error(out, exact)
    theirs = rec.rel_error[f"oracle:direct:{runtime}"] = _rel_error(ref, exact)
    return mine <= max(rec.rtol, theirs)


def _through_backplane(rec: Record, e: Entry, backend: str | None, path: Path,
                       feeds: dict[str, np.ndarray], compared: tuple,
                       runs: int, warmup: int) -> None:
    """One Session: ``devices="auto"`` (backend None) or pinned to ``backend``;
    ``compared`` is (the runtime's outputs or None, that runtime, the :class:`_Oracle`)."""
    ref = compared[0]

    what = f"pinned to {backend}" if backend else "auto"
    try:
        session = bp.Session(str(path), devices=[backend] if backend else "auto")
        out = session.run(feeds)
        status = "ok"
    except Exception as exc:  # noqa: BLE001 - recorded; a non-backplane error is a finding too
        status = _error(exc)
        rec.problems.append(f"{what}: {status}")
    if backend:
        rec.pinned[backend] = status
    else:
        rec.auto = status
    if status != "ok":
        return
    if not backend:
        placements = session.plan.placements
        rec.auto_devices = sorted({p.device for p in placements})
        rec.fallback_ops = dict(Counter(p.op for p in placements if p.fallback))
        if rec.fallback_ops:
            rec.problems.append("auto: on reference: " + ", ".join(
                f"{op} x{n}" for op, n in sorted(rec.fallback_ops.items())))
        for p in placements:  # what each device refused, for whoever widens its coverage
            for r in p.rejected:
                if r.code.startswith("capability"):
                    refused = rec.refused.setdefault(r.device, {})
                    refused[r.detail] = refused.get(r.detail, 0) + 1
    label = f"pinned:{backend}" if backend else "auto"
    if ref is not None:
        err = rec.rel_error[label] = _rel_error(out, ref)
        if not err <= e.rtol and not (math.isfinite(err) and _arbitrated(rec, label, out,
                                                                           compared)):
            rec.problems.append(f"{what}: relative error {err:.3g} > {e.rtol:g} against "
                                + (f"{PINNED[backend]} called directly" if backend else "ORT"))
    _time(rec, label, session.run, feeds, runs, warmup)


def _ort_direct(path: Path) -> Any:
    import onnxruntime as ort  # deferred: a vendor runtime

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: exporters' wrong declared shapes warn per run
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return lambda feeds: dict(zip(names, sess.run(names, feeds)))


def _openvino_direct(path: Path) -> Any:
    import openvino as ov  # deferred: a vendor runtime
    import openvino.properties.hint as hints

    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(path)), "CPU", {
        hints.inference_precision: ov.Type.f32,
        hints.performance_mode: hints.PerformanceMode.LATENCY})
    request = compiled.create_infer_request()
    names = [o.get_any_name() for o in compiled.outputs]

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        request.infer(feeds)
        return {n: np.array(request.get_output_tensor(i).data) for i, n in enumerate(names)}
    return run


def _rel_error(out: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> float:
    """The largest, over the reference's outputs, of max|a-b| / max|b| (max|a-b| where b is
    all zeros); integer and boolean outputs must be equal (else inf), as must shapes."""
    worst = 0.0
    for i, (name, b) in enumerate(ref.items()):
        a = out.get(name, list(out.values())[i] if i < len(out) else None)  # else by position
        a, b = (None if a is None else np.asarray(a)), np.asarray(b)
        if a is None or a.shape != b.shape:
            return float("inf")
        if not np.issubdtype(b.dtype, np.floating):  # integers and booleans: equal, or inf
            worst = worst if np.array_equal(a, b) else float("inf")
            continue
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        finite = np.isfinite(a64) & np.isfinite(b64)  # non-finite values must agree exactly
        if not np.array_equal(a64[~finite], b64[~finite], equal_nan=True):
            return float("inf")
        diff = float(np.max(np.abs(a64 - b64)[finite], initial=0.0))
        scale = float(np.max(np.abs(b64)[finite], initial=0.0))
        worst = max(worst, diff / scale if scale > 0 else diff)
    return worst


def _time(rec: Record, label: str, fn: Any, feeds: dict[str, np.ndarray], runs: int,
          warmup: int) -> None:
    if runs <= 0:
        return
    for _ in range(warmup):
        fn(feeds)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn(feeds)
        times.append(time.perf_counter() - t)
    rec.latency_s[label] = statistics.median(times)


def _error(exc: BaseException) -> str:
    """The error in one line; one that is no BackplaneError is marked: it escaped backplane."""
    unexpected = "" if isinstance(exc, BackplaneError) else f"unexpected {type(exc).__module__}."
    return f"{unexpected}{type(exc).__name__}: {_short(exc)}"


def _short(exc: BaseException, limit: int = 400) -> str:
    """One line; a long message keeps its head and its tail (where runtimes put the cause)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else f"{text[:limit // 2]} ... {text[-limit // 2:]}"
