"""ONNX Runtime, as the onnxruntime, cuda-tensorrt, rocm and npu backends use it.

Session options from a policy (:func:`session_options`), a session on one provider with CPU
fallback off (:func:`open_session`), the executable over it (:class:`ORTExecutable`), ORT's
messages read for the op and nodes they name, and which providers run here
(:func:`probe_providers`: readiness checks in a child process). Every error names the
backend and device the caller passes.

Importing this module imports neither onnxruntime nor numpy.
"""

from __future__ import annotations

import ctypes
import json
import re
import threading
import warnings
from collections.abc import Mapping
from typing import Any

from backplane.sdk.child import run_child
from backplane.sdk.contract import Device, Executable
from backplane.sdk.env import probe_budget_s
from backplane.sdk.errors import CompileError, DeviceUnavailable, ExecutionError
from backplane.sdk.hostfacts import physical_cores

CPU = "CPUExecutionProvider"
#: Providers of ORT builds that are not compute devices (Azure calls a remote endpoint).
NOT_COMPUTE = frozenset({"AzureExecutionProvider"})
#: Seconds one provider's readiness check may take before it counts as not ready.
READINESS_TIMEOUT_S = 2.0
#: The session config entry that keeps ORT from running nodes on the CPU quietly.
FALLBACK_OFF = "session.disable_cpu_ep_fallback"


def runtime() -> Any:
    """The ``onnxruntime`` module."""
    import onnxruntime  # defers the vendor runtime to the first use

    return onnxruntime


# ---------------------------------------------------------------------- sessions

def session_options(ort: Any, policy: str, provider: str, extra: Mapping[str, Any]) -> Any:
    """ORT session options for a policy: latency runs one request on every physical core,
    throughput lets requests run side by side with one core each, efficiency uses fewer
    cores and never spins. ``extra`` (``options={"onnxruntime": {...}}``) may set
    ``intra_op_num_threads``, ``log_severity_level``, ``session_config`` entries and
    (read by the onnxruntime backend's ``compile``) ``provider_options``. A provider other
    than the CPU runs with CPU fallback disabled."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Fatal only: every ORT error reaches the caller as a backplane error carrying ORT's
    # message, so ORT's own copy on stderr would only repeat it.
    so.log_severity_level = int(extra.get("log_severity_level", 4))
    # ORT's QDQ transformers turn DequantizeLinear -> op -> QuantizeLinear into integer
    # kernels (QLinearMatMul ...) that round differently from the graph as written (one
    # quantization step off on the zoo's QDQ MLP): numerics must not change silently.
    # ``session_config={"session.disable_quant_qdq": "0"}`` opts back in.
    so.add_session_config_entry("session.disable_quant_qdq", "1")
    cores = physical_cores()
    if policy == "throughput":
        so.intra_op_num_threads = 1
    elif policy == "efficiency":
        so.intra_op_num_threads = max(1, cores // 2)
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    # latency: ORT's own default (0), one thread per physical core, pinned to the cores;
    # setting the same count explicitly leaves the threads unpinned: 1.4x slower on the CNN
    # of benchmarks/bench_cpu_backends.py on this 2-core machine (2026-11-23).
    if "intra_op_num_threads" in extra:
        so.intra_op_num_threads = int(extra["intra_op_num_threads"])
    if provider != CPU:
        so.add_session_config_entry(FALLBACK_OFF, "1")
    for key, value in dict(extra.get("session_config", {})).items():
        so.add_session_config_entry(str(key), str(value))
    return so


def open_session(model: Any, so: Any, provider: str, provider_options: Mapping[str, Any], *,
                 backend: str, device: str | None, graph: Any = None) -> Any:
    """An InferenceSession of ``model`` (ONNX bytes, or a path) on ``provider`` alone, for
    ``backend`` on ``device``.

    Raises a CompileError, naming the op and the nodes ORT's message names in ``graph``,
    when ORT refuses the model on the provider (with :func:`session_options` CPU fallback is
    disabled, so a node the provider does not take fails here), and when ORT placed the
    session on another provider (it drops an unusable one with only a warning).
    """
    ort = runtime()
    try:
        with warnings.catch_warnings():
            # ORT only warns when the provider is missing from its build; the check of the
            # providers it placed the session on below makes that a CompileError.
            warnings.simplefilter("ignore", UserWarning)
            session = ort.InferenceSession(model, so,
                                           providers=[(provider, dict(provider_options))])
    except Exception as exc:
        err = CompileError.wrap(
            exc, backend=backend, device=device, op=op_named(exc, graph),
            advice=f"ORT execution provider {provider}" + (
                " does not take every node it was given; CPU fallback is disabled so "
                "that no node runs elsewhere quietly" if provider != CPU else ""))
        err.nodes = nodes_named(exc, graph)
        raise err from exc
    placed = session.get_providers()
    if placed[0] != provider:
        raise CompileError(f"ORT session runs on {placed}, not {provider}", backend=backend,
                           device=device, located=True)
    return session


# ---------------------------------------------------------------------- the executable

class ORTExecutable(Executable):
    """An InferenceSession run for ``backend`` on ``device`` (its errors name them). ORT's
    ``run`` is thread-safe; ``thread_safe`` is set by the caller (the onnxruntime backend:
    for the throughput policy only, so latency and efficiency sessions serve one request at
    a time with their cores instead of oversubscribing them)."""

    def __init__(self, session: Any, graph: Any, device: Device, thread_safe: bool, *,
                 backend: str):
        self.thread_safe = thread_safe  # type: ignore[misc]  # per instance, by policy
        self._session = session
        self._graph = graph
        self._device = device
        self._backend = backend
        # ORT lists initializers that are also graph inputs (IR < 4) as inputs it may be
        # fed; backplane feeds only the partition's own inputs and keeps those constant.
        consts = getattr(graph, "initializers", frozenset())
        self._inputs = [(i.name, i.type) for i in session.get_inputs() if i.name not in consts]
        self._outputs = [o.name for o in session.get_outputs()]
        self._raw = any(v.type in _RAW_TYPES for v in [*session.get_inputs(),
                                                        *session.get_outputs()])

    def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Run once; outputs come back in exactly the dtypes the graph declares."""
        import numpy as np

        try:
            if self._raw:
                return self._run_ort_values(np, inputs)
            feeds = {name: _fed(np, inputs[name]) for name, _ in self._inputs if name in inputs}
            return dict(zip(self._outputs, self._session.run(self._outputs, feeds)))
        except Exception as exc:
            raise ExecutionError.wrap(exc, backend=self._backend, device=self._device.id,
                                      op=op_named(exc, self._graph)) from exc

    def _run_ort_values(self, np: Any, inputs: dict[str, Any]) -> dict[str, Any]:
        """Types ORT's Python API has no numpy type for (bfloat16, float8, int4): pass
        ml_dtypes arrays as raw OrtValues, and copy such outputs out of ORT's buffers."""
        import ml_dtypes

        ort = runtime()
        feeds = {}
        for name, type_str in self._inputs:
            if name not in inputs:  # an optional input left out, or one no node reads
                continue
            arr = np.asarray(inputs[name], order="C")
            raw = _RAW_TYPES.get(type_str)
            if raw is None:
                feeds[name] = ort.OrtValue.ortvalue_from_numpy(arr)
                continue
            if arr.dtype != np.dtype(getattr(ml_dtypes, raw[0])):
                raise TypeError(f"input {name!r} must be {raw[0]}, got {arr.dtype}")
            data = arr.view(f"u{arr.dtype.itemsize}").reshape(-1)
            if raw[0].endswith("int4"):  # two per byte, the first in the low nibble
                data = np.concatenate([data & 0xF, np.zeros(data.size % 2, data.dtype)])
                data = (data[0::2] | (data[1::2] << 4)).astype(np.uint8)
            value = ort.OrtValue.ortvalue_from_shape_and_type(list(arr.shape), raw[1])
            if data.nbytes:
                ctypes.memmove(value.data_ptr(), data.ctypes.data, data.nbytes)
            feeds[name] = value
        values = self._session.run_with_ort_values(self._outputs, feeds)
        out = {}
        for name, value in zip(self._outputs, values):
            raw = _RAW_TYPES.get(value.data_type())
            if raw is None:
                out[name] = value.numpy()
                continue
            host = np.empty(value.tensor_size_in_bytes(), np.uint8)
            if host.nbytes:
                ctypes.memmove(host.ctypes.data, value.data_ptr(), host.nbytes)
            shape = tuple(value.shape())
            if raw[0].endswith("int4"):  # two per byte, the first in the low nibble
                nibbles = np.stack([host & 0xF, host >> 4], axis=-1).reshape(-1)
                nibbles = nibbles[:int(np.prod(shape, dtype=np.int64))].astype(np.int8)
                if raw[0] == "int4":
                    nibbles = np.where(nibbles > 7, nibbles - 16, nibbles).astype(np.int8)
                out[name] = nibbles.astype(getattr(ml_dtypes, raw[0])).reshape(shape)
            else:
                out[name] = host.view(getattr(ml_dtypes, raw[0])).reshape(shape)
        return out


#: ONNX types that ORT's Python API cannot exchange with numpy: ml_dtypes name, ONNX code.
_RAW_TYPES = {
    "tensor(bfloat16)": ("bfloat16", 16), "tensor(float8e4m3fn)": ("float8_e4m3fn", 17),
    "tensor(float8e4m3fnuz)": ("float8_e4m3fnuz", 18), "tensor(float8e5m2)": ("float8_e5m2", 19),
    "tensor(float8e5m2fnuz)": ("float8_e5m2fnuz", 20), "tensor(uint4)": ("uint4", 21),
    "tensor(int4)": ("int4", 22),
}


def _fed(np: Any, value: Any) -> Any:
    """A feed as ORT's Python API takes it: a C-ordered array; a sequence as a list of
    them, an optional as None or its element, a map as a dict."""
    if value is None or isinstance(value, dict):
        return value
    if isinstance(value, (list, tuple)):
        return [_fed(np, v) for v in value]
    return np.asarray(value, order="C")


# ---------------------------------------------------------------------- ORT's messages

_OP_PATTERNS = (re.compile(r"implementation for (\w+)\(\d+\)"), re.compile(r"Op \((\w+)\)"),
                re.compile(r"running (\w+) node"), re.compile(r"node \w* ?\((\w+)\)"))


def nodes_named(exc: BaseException, graph: Any) -> tuple[str, ...]:
    """The nodes of ``graph`` an ORT message names ("... node with name 'x'")."""
    names = {n.name for n in getattr(graph, "nodes", [])}
    return tuple(n for n in re.findall(r"node with name '([^']+)'", str(exc)) if n in names)


def op_named(exc: BaseException, graph: Any) -> str | None:
    """The op an ORT message names, else the graph's only op, else None."""
    text = str(exc)
    for pattern in _OP_PATTERNS:
        found = pattern.search(text)
        if found:
            return found.group(1)
    ops = {n.op_type for n in getattr(graph, "nodes", [])}
    return ops.pop() if len(ops) == 1 else None


# ---------------------------------------------------------------------- readiness

_readiness: dict[str, tuple[bool, str]] = {}
_readiness_lock = threading.Lock()
_probed: tuple[str, list[str], dict[str, tuple[bool, str]]] | None = None


def probe_providers() -> tuple[str, list[str], dict[str, tuple[bool, str]]]:
    """``(ORT version, available providers, {compute provider: (ready, reason)})``, found
    once per process by a child process that runs :func:`provider_readiness` on each.

    The CPU provider is checked first and reported before the others start, so a provider
    that crashes the child costs only itself. Raises DeviceUnavailable when onnxruntime is
    not importable or the child gives no answer within 90% of the registry's probe
    deadline (:func:`backplane.sdk.env.probe_budget_s`).
    """
    global _probed
    with _readiness_lock:
        if _probed is not None:
            return _probed
    budget = _probe_budget()
    found = run_child("from backplane.runtimes.onnxruntime import _probe_child; _probe_child()",
                      timeout_s=budget, what="the probe process")
    lines = [x for x in found.lines if isinstance(x, dict)]
    if not lines or "error" in lines[0]:
        why = lines[0]["error"] if lines else found.reason
        raise DeviceUnavailable(f"onnxruntime is not usable here ({why}); "
                                "pip install 'backplane-hal[onnxruntime]'")
    head, rows = lines[0], lines[1:]
    checks = {r["provider"]: (bool(r["ready"]), str(r["reason"])) for r in rows}
    rc = found.returncode
    for p in head["compute"]:
        checks.setdefault(p, (False, "the readiness check " + (
            f"crashed the probe process (exit code {rc})" if rc else
            f"gave no answer: {found.reason or found.stderr.strip() or 'no output'}")))
    result = (head["onnxruntime"], head["available"], checks)
    with _readiness_lock:
        _probed = _probed or result
        return _probed


def _probe_budget() -> float:
    """Seconds the probe child may take: 90% of the registry's deadline for all probes
    (BACKPLANE_PROBE_TIMEOUT_S), however long it was set to."""
    return probe_budget_s(cap=None)


def _probe_child() -> None:
    """The child's side of :func:`probe_providers`: JSON lines on stdout."""
    def emit(row: dict[str, Any]) -> None:
        with _readiness_lock:
            print(json.dumps(row), flush=True)

    try:
        ort = runtime()
    except Exception as exc:
        return emit({"error": f"{type(exc).__name__}: {exc}"})
    available = list(ort.get_available_providers())
    compute = [p for p in available if p not in NOT_COMPUTE]
    emit({"onnxruntime": ort.__version__, "available": available, "compute": compute})

    # a longer probe deadline (a loaded machine) gives each check longer too
    each = probe_budget_s(cap=None, share=0.4, floor=READINESS_TIMEOUT_S)

    def check(p: str, timeout_s: float) -> None:
        ready, reason = provider_readiness(p, timeout_s=timeout_s)
        emit({"provider": p, "ready": ready, "reason": reason})

    if CPU in compute:  # built into every ORT: slow to answer is a loaded machine, not a
        check(CPU, _probe_budget())  # provider that cannot run, so it has the whole budget
    threads = [threading.Thread(target=check, args=(p, each), daemon=True)
               for p in compute if p != CPU]
    for t in threads:
        t.start()
    for t in threads:
        t.join(each + 0.5)


def provider_readiness(provider: str, timeout_s: float = READINESS_TIMEOUT_S) -> tuple[bool, str]:
    """Whether ``provider`` runs a one-node float32 Add by itself: ``(ready, reason)``.

    A provider other than the CPU is checked with CPU fallback disabled, so a provider that
    is built in but cannot run here (no driver, no GPU) fails instead of passing on the
    CPU. Bounded by ``timeout_s``; no file written, no environment changed; the answer is
    kept for the life of the process.
    """
    with _readiness_lock:
        if provider in _readiness:
            return _readiness[provider]
    box: list[tuple[bool, str]] = []
    worker = threading.Thread(target=lambda: box.append(_check_provider(provider)),
                              name=f"backplane-ort-ready-{provider}", daemon=True)
    worker.start()
    worker.join(timeout_s)
    answer = box[0] if box else (False, f"readiness check did not finish within {timeout_s:g} s")
    with _readiness_lock:
        _readiness.setdefault(provider, answer)
        return _readiness[provider]


def _check_provider(provider: str) -> tuple[bool, str]:
    try:
        import numpy as np
        from onnx import TensorProto, helper

        ort = runtime()
        if provider not in ort.get_available_providers():
            return False, (f"{provider} is not in this onnxruntime build (it has "
                           f"{', '.join(ort.get_available_providers())})")
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
        graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "ready", [x], [y])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                                  ir_version=7)
        so = ort.SessionOptions()
        so.log_severity_level = 4
        if provider != CPU:  # ORT refuses the setting for the CPU provider itself
            so.add_session_config_entry(FALLBACK_OFF, "1")
        session = ort.InferenceSession(model.SerializeToString(), so, providers=[provider])
        if session.get_providers()[0] != provider:
            return False, f"ORT placed the session on {session.get_providers()}, not {provider}"
        data = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
        [got] = session.run(None, {"x": data})
        if not np.array_equal(got, data + data):
            return False, f"{provider} computed a wrong Add: {got.tolist()}"
        return True, ""
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}".strip()
