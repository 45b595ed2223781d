"""The executor: compiles a plan's partitions and runs them in dependency order.

This is where core wraps every backend call: compile and run errors become CompileError /
ExecutionError carrying the backend, device and vendor message; executables that are not
thread-safe are serialised; outputs are checked against the graph's inferred types (a shape
only the model's declaration gives is warned about once, not failed: see
``Graph.unconfirmed_outputs``); host
inputs are handed to backends read-only, so a faulty backend cannot corrupt the caller's
arrays.

Values cross from one partition to the next as they are when the consumer's executable
declares ``dlpack`` and the value implements ``__dlpack__`` (a device tensor stays on its
device); otherwise through the host, zero-copy where DLPack allows it. Each value is dropped
after the last partition that reads it, and every run measures the peak bytes of the values
it holds, beside the peak predicted from the graph's inferred shapes.

The liveness and memory accounting (:mod:`backplane.model.liveness`) is the kernel runner's too
(:class:`~backplane.sdk.kerneltable.KernelExecutable`), which applies it node by node.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from backplane.engine.convert import convert_graph
from backplane.hardware.liveload import busy
from backplane.model.graph import is_tensor
from backplane.model.liveness import (NUMPY_DTYPES, MemoryStats, PeakMeter, free_after,
                                      predicted_peak)
from backplane.ops.fusion import fuse
from backplane.sdk.contract import CompileOptions, Device, Executable
from backplane.sdk.errors import BackendError, CompileError, ExecutionError

log = logging.getLogger("backplane")

if TYPE_CHECKING:  # pragma: no cover
    from backplane.model.graph import Graph, ValueInfo
    from backplane.engine.plan import Partition, Plan
    from backplane.engine.registry import Registry
    from backplane.engine.runcheck import Verifier


# ---------------------------------------------------------------------- the plan runner

class CompiledPlan:
    """A plan with one compiled executable per partition.

    Args:
        graph: the whole model.
        plan: the plan; only its ``partitions`` are read.
        reg: the registry whose ``backends`` compile the partitions.
        options: the session's compile options; each partition is compiled at its own
            ``precision`` when the plan sets one.
        devices: the devices by id.
        on_partition_run: called after each successful partition run with the partition
            and the seconds its executable's ``run`` took (a scheduler's measurements).
        verifier: checks the first run of the partitions in ``verify`` against the
            reference backend (:class:`backplane.engine.runcheck.Verifier`).
        verify: the indices of the partitions whose first run is checked.
        compile_timeout_s: the longest one partition's compile may take (None: no limit);
            past it the compile is abandoned and a CompileError names the device.

    Attributes:
        memory: peak bytes of the values passed between partitions (a property).
        transfers: how many values crossed from one partition to another, per kind
            (a property): ``dlpack`` (handed over as the producer's device object) or
            ``host`` (through a host numpy array).
    """

    def __init__(self, graph: "Graph", plan: "Plan", reg: "Registry", options: CompileOptions,
                 devices: dict[str, Device], *,
                 on_partition_run: "Callable[[Partition, float], None] | None" = None,
                 verifier: "Verifier | None" = None, verify: frozenset[int] = frozenset(),
                 compile_timeout_s: float | None = None):
        self.graph = graph
        self.plan = plan
        self.on_partition_run = on_partition_run
        self._verifier = verifier
        self._unverified = verify if verifier is not None else frozenset()
        parts = list(plan.partitions)
        exes = [_compile(graph, part, reg, options, devices, compile_timeout_s)
                for part in parts]
        self._outputs = [o.name for o in graph.outputs]
        self._non_tensor = frozenset(n for n, vi in graph.values.items() if not is_tensor(vi))
        self._producer = {name: part for part in parts for name in part.outputs}
        frees = free_after([p.inputs for p in parts], [p.outputs for p in parts],
                           self._outputs)
        dlpack = [bool(getattr(exe, "dlpack", False)) for exe in exes]
        readers: dict[str, list[int]] = {}
        for i, part in enumerate(parts):
            for name in part.inputs:
                readers.setdefault(name, []).append(i)
        self._steps = []
        for i, (part, exe) in enumerate(zip(parts, exes)):
            # (name, produced by another partition, a later reader takes device values)
            inputs = tuple((name, name in self._producer,
                            any(dlpack[j] for j in readers[name] if j > i))
                           for name in part.inputs)
            outputs = tuple(_expected(graph, name) for name in part.outputs)
            gone = tuple((name, name in self._producer) for name in frees[i])
            lock = nullcontext() if getattr(exe, "thread_safe", False) else threading.Lock()
            self._steps.append((part, exe, lock, dlpack[i], inputs, outputs, gone))
        self._meter = PeakMeter(predicted_peak([p.outputs for p in parts], frees,
                                               graph.values))
        self._counts_lock = threading.Lock()
        self._counts = {"dlpack": 0, "host": 0}
        self._constants: dict[str, Any] = {}  # outputs no node computes (see _constant)

    @property
    def memory(self) -> MemoryStats:
        """Peak bytes of the values passed between partitions: predicted, last run, max."""
        return self._meter.stats()

    @property
    def transfers(self) -> dict[str, int]:
        """Values handed from one partition to another so far, by kind (a snapshot)."""
        with self._counts_lock:
            return dict(self._counts)

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """Run every partition in order; return the graph's outputs as fresh host arrays."""
        import numpy as np

        ndarray = np.ndarray
        values: dict[str, Any] = dict(feeds)
        live = peak = by_dlpack = by_host = 0
        for part, exe, lock, dlpack, inputs, outputs, gone in self._steps:
            args = {}
            for name, produced, keep_device in inputs:
                if name not in values:  # an optional input left out: the op sees it absent
                    continue
                value = values[name]
                if name in self._non_tensor:  # a sequence, optional or map, as it is
                    args[name] = value
                    continue
                if type(value) is not ndarray:
                    if dlpack and hasattr(value, "__dlpack__"):
                        args[name] = value
                        by_dlpack += 1
                        continue
                    value = self._to_host(np, name, value)
                    if not keep_device:
                        values[name] = value  # later readers take the host copy too
                # Read-only views: a partition cannot write into its producer's outputs.
                view = value.view()
                view.flags.writeable = False
                args[name] = view
                by_host += produced
            try:
                with busy(part.device), lock:
                    start = time.perf_counter()
                    out = exe.run(args)
                    elapsed = time.perf_counter() - start
            except BackendError:
                raise
            except Exception as exc:
                raise ExecutionError.wrap(exc, backend=part.backend, device=part.device,
                                          op=_single_op(self.graph, part)) from exc
            if not isinstance(out, dict):
                raise ExecutionError(
                    f"backend '{part.backend}' on '{part.device}' returned a "
                    f"{type(out).__name__} from run, not a dict of outputs; its Executable.run "
                    f"must return {{output name: array}}",
                    backend=part.backend, device=part.device)
            for expected in outputs:
                value = _checked(np, part, dlpack, expected, out, self.graph)
                values[expected[0]] = value
                live += getattr(value, "nbytes", 0)
            if self._unverified and part.index in self._unverified:
                self._verify(part, args, values)
            if live > peak:
                peak = live
            for name, produced in gone:
                value = values.pop(name, None)
                if produced:
                    live -= getattr(value, "nbytes", 0)
            value = view = args = out = None  # dropped values go now, not at the next step
            if self.on_partition_run is not None:
                self.on_partition_run(part, elapsed)
        self._meter.record(peak)
        if by_dlpack or by_host:
            with self._counts_lock:
                self._counts["dlpack"] += by_dlpack
                self._counts["host"] += by_host
        result = {}
        for name in self._outputs:
            value = values[name] if name in values else self._constant(name)
            if name in self._non_tensor:
                result[name] = _fresh(np, value)
                continue
            if type(value) is not ndarray:
                value = self._to_host(np, name, value)
            # Never hand out an array the caller or a later request could share.
            shared = name in feeds or name in self.graph.initializers
            result[name] = value.copy() if shared or not value.flags.writeable else value
        return result

    def _verify(self, part: "Partition", args: dict[str, Any], values: dict[str, Any]) -> None:
        """Check this first run of ``part`` against the reference (raises
        VerificationError on a mismatch); it is not checked again once it agrees."""
        notes: list[str] = []
        self._verifier.check(part, args, {n: values[n] for n in part.outputs if n in values},
                             notes)
        with self._counts_lock:
            self._unverified = self._unverified - {part.index}
            if not any(n.startswith(f"partition {part.index} on ") for n in notes):
                notes.append(f"partition {part.index} on {part.device} agreed with the "
                             "reference backend on its first run (run-time verification)")
            self.plan.notes.extend(n for n in notes if n not in self.plan.notes)

    def _constant(self, name: str) -> Any:
        """An output no node computes and the run was not given: an initializer the model
        lists as an output (and, IR < 4, perhaps as an overridable input), as stored; read
        once (the run hands out a copy)."""
        value = self._constants.get(name)
        if value is None:
            from onnx import numpy_helper

            t = next((t for t in self.graph.model.graph.initializer if t.name == name), None)
            if t is None:
                raise ExecutionError(f"output '{name}' was computed by no partition and is no "
                                     "initializer", backend="backplane")
            value = numpy_helper.to_array(t, base_dir=str(self.graph.external_dir or ""))
            self._constants[name] = value
        return value

    def _to_host(self, np: Any, name: str, value: Any) -> Any:
        """``value`` as a host numpy array, or an ExecutionError naming its producer."""
        try:
            return to_host(np, value)
        except Exception as exc:
            part = self._producer.get(name)
            backend, device = (part.backend, part.device) if part else ("unknown", None)
            raise ExecutionError(
                f"backend '{backend}' on '{device}' produced '{name}' as a "
                f"{type(value).__name__} that cannot be moved to the host "
                f"({type(exc).__name__}: {exc}); its Executable must return numpy arrays, "
                f"or objects implementing __dlpack__ with dlpack=True",
                backend=backend, device=device, vendor_message=str(exc)) from exc


def _fresh(np: Any, value: Any) -> Any:
    """A sequence, optional or map output as the caller's own: lists of host arrays,
    copied; None for an empty optional."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return [_fresh(np, v) for v in value]
    if isinstance(value, dict):
        return {k: _fresh(np, v) for k, v in value.items()}
    return np.array(to_host(np, value), copy=True)


def to_host(np: Any, value: Any) -> Any:
    """A host numpy array of ``value``: numpy arrays as they are, DLPack objects through
    ``np.from_dlpack`` (zero-copy for CPU tensors), device tensors through their own copy
    to the host (``.cpu().numpy()`` for torch, ``.get()`` for CuPy), anything else through
    ``np.asarray``."""
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "__dlpack__"):
        try:
            return np.from_dlpack(value)
        except (BufferError, RuntimeError, TypeError, ValueError):
            pass  # a device numpy cannot read: the tensor's own copy to the host below
    if callable(getattr(value, "cpu", None)):
        if str(getattr(value, "dtype", "")) == "torch.bfloat16":  # numpy has no bfloat16
            import ml_dtypes
            import torch  # (loaded already: the value is a torch tensor)

            return value.cpu().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return np.asarray(value.cpu().numpy())
    if callable(getattr(value, "get", None)) and hasattr(value, "shape"):
        return np.asarray(value.get())
    return np.asarray(value)


def _compile(graph: "Graph", part: "Partition", reg: "Registry", options: CompileOptions,
             devices: dict[str, Device], timeout_s: float | None = None) -> Executable:
    """Compile one partition at its own precision, wrapping the backend's errors."""
    device = devices[part.device]
    backend = reg.backends[part.backend]
    if part.precision != options.precision:
        options = dataclasses.replace(options, precision=part.precision)
    try:
        sub = graph.subgraph(part.node_indices, f"{graph.name}-p{part.index}")
        if part.opset:  # nodes this backend runs only at a newer version of their op
            sub = convert_graph(sub, part.opset)
        sub = _fused(sub, backend, part)
        exe = _within(timeout_s, part, backend.compile, sub, device, options)
    except BackendError:
        raise
    except Exception as exc:
        raise CompileError.wrap(exc, backend=part.backend, device=part.device,
                                op=_single_op(graph, part)) from exc
    if not isinstance(exe, Executable) and not callable(getattr(exe, "run", None)):
        raise CompileError(f"backend '{part.backend}' compile returned a "
                           f"{type(exe).__name__}, not an Executable",
                           backend=part.backend, device=part.device)
    part.path = str(getattr(exe, "path", "") or "")
    return exe


def _within(timeout_s: float | None, part: "Partition", compile: Callable[..., Any],
            *args: Any) -> Any:
    """``compile(*args)``, given up after ``timeout_s`` seconds with a CompileError.

    The compile runs on a daemon thread so that the caller can stop waiting; a vendor
    compile cannot be interrupted, so an abandoned one finishes (or not) in the background
    and its result is dropped."""
    if not timeout_s:
        return compile(*args)
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["exe"] = compile(*args)
        except BaseException as exc:  # handed to the waiting thread
            box["exc"] = exc

    thread = threading.Thread(target=work, name=f"backplane-compile-{part.device}",
                              daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise CompileError(
            f"compile of partition {part.index} ({len(part.nodes)} node(s)) on "
            f"'{part.device}' did not finish within {timeout_s:g} s; the device is passed "
            "over. Allow more with Session(compile_timeout_s=...) or "
            "BACKPLANE_COMPILE_TIMEOUT_S", backend=part.backend, device=part.device)
    if "exc" in box:
        raise box["exc"]
    return box["exe"]


def _expected(graph: "Graph", name: str) -> tuple[str, Any, "ValueInfo | None", bool]:
    """(name, numpy dtype or None, inferred type or None, whether its shape is only the
    model's declaration): what an output is checked by."""
    vi = graph.values.get(name)
    declared_only = name in graph.unconfirmed_outputs
    if vi is None or vi.dtype not in NUMPY_DTYPES:
        return name, None, vi, declared_only
    import numpy as np

    return name, np.dtype(vi.dtype), vi, declared_only


def _checked(np: Any, part: "Partition", dlpack: bool, expected: tuple, out: dict,
             graph: "Graph") -> Any:
    """One output of a partition, as a host array (kept as the device object when the
    executable declares ``dlpack``), checked against the graph's inferred type.

    A shape that contradicts what shape inference found is the backend's fault (an
    ExecutionError: the session plans without it). A shape that contradicts only the
    model's declaration is trusted: exporters declare outputs wrongly, and every backend
    would fail alike; it is one warning per output and graph, and a note in its notes."""
    name, dtype, vi, declared_only = expected
    try:
        value = out[name]
    except KeyError:
        raise ExecutionError(f"backend '{part.backend}' on '{part.device}' returned no output "
                             f"'{name}'", backend=part.backend, device=part.device) from None
    if not is_tensor(vi) and vi is not None:  # a sequence (a list), an optional (None) ...
        kind = vi.dtype.split("(")[0]
        if (kind == "seq" and not isinstance(value, (list, tuple))) or (
                kind == "map" and not isinstance(value, dict)):
            raise ExecutionError(f"backend '{part.backend}' on '{part.device}' returned "
                                 f"output '{name}' as a {type(value).__name__}, expected a "
                                 f"{vi.dtype}", backend=part.backend, device=part.device)
        return value
    if type(value) is np.ndarray or not (dlpack and hasattr(value, "__dlpack__")):
        value = np.asarray(value)
        wrong_dtype = dtype is not None and value.dtype != dtype
    else:  # torch.float32, cupy's float32: the element type's name is the last word
        wrong_dtype = dtype is not None and str(value.dtype).rpartition(".")[2] != vi.dtype
    if vi is None:
        return value
    wrong = None
    if wrong_dtype:
        wrong = f"dtype {value.dtype}, expected {vi.dtype}"
    elif vi.shape is not None:
        got = tuple(value.shape)
        if len(vi.shape) != len(got) or any(isinstance(d, int) and d != g
                                            for d, g in zip(vi.shape, got)):
            if declared_only:
                _warn_declared(graph, name, got)
                return value
            wrong = f"shape {got}, expected {vi.describe()}"
    if wrong:
        raise ExecutionError(f"backend '{part.backend}' on '{part.device}' returned output "
                             f"'{name}' with {wrong}", backend=part.backend,
                             device=part.device)
    return value


def _warn_declared(graph: "Graph", name: str, got: tuple[int, ...]) -> None:
    """Warn, once per graph, that output ``name`` is not the shape the model declares."""
    head = f"output '{name}' is declared "
    if any(n.startswith(head) for n in graph.notes):
        return
    declared = graph.unconfirmed_outputs[name].describe()
    note = (f"{head}{declared}, the backends produce shape {got}; the produced shape is "
            "used (the model's declaration is wrong)")
    graph.notes.append(note)
    log.warning("backplane: %s: %s", graph.name, note)


def _fused(sub: "Graph", backend: Any, part: "Partition") -> "Graph":
    """The partition's subgraph with the fused ops its backend declares (and admits)."""
    declared = getattr(backend.capabilities, "ops", {})
    if not any(key.startswith("backplane::") for key in declared):
        return sub

    fused = fuse(sub, lambda key: key in declared)
    if fused is sub or not all(backend.capabilities.check(n) for n in fused.nodes):
        return sub
    part.fused = next((n.split(": ", 1)[1] for n in fused.notes
                       if n.startswith("fused into backplane ops: ")), "")
    return fused


def _single_op(graph: "Graph", part: "Partition") -> str | None:
    return graph.nodes[part.node_indices[0]].op_type if len(part.node_indices) == 1 else None
