"""The executor: compiles a plan's partitions and runs them in dependency order.

This is where core wraps every backend call: compile and run errors become CompileError /
ExecutionError carrying the backend, device and vendor message; executables that are not
thread-safe are serialised; outputs are checked against the graph's inferred types; host
inputs are handed to backends read-only, so a faulty backend cannot corrupt the caller's
arrays.

Values cross from one partition to the next as they are when the consumer's executable
declares ``dlpack`` and the value implements ``__dlpack__`` (a device tensor stays on its
device); otherwise through the host, zero-copy where DLPack allows it. Each value is dropped
after the last partition that reads it, and every run measures the peak bytes of the values
it holds, beside the peak predicted from the graph's inferred shapes.

The liveness and memory accounting (:mod:`backplane.liveness`) is the kernel runner's too
(:class:`~backplane.kerneltable.KernelExecutable`), which applies it node by node.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from .contract import CompileOptions, Device, Executable
from .errors import BackendError, CompileError, ExecutionError
from .liveness import NUMPY_DTYPES, MemoryStats, PeakMeter, free_after, predicted_peak
from .load import busy

if TYPE_CHECKING:  # pragma: no cover
    from .graph import Graph, ValueInfo
    from .planner import Partition, Plan
    from .registry import Registry


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

    Attributes:
        memory: peak bytes of the values passed between partitions (a property).
        transfers: how many values crossed from one partition to another, per kind
            (a property): ``dlpack`` (handed over as the producer's device object) or
            ``host`` (through a host numpy array).
    """

    def __init__(self, graph: "Graph", plan: "Plan", reg: "Registry", options: CompileOptions,
                 devices: dict[str, Device], *,
                 on_partition_run: "Callable[[Partition, float], None] | None" = None):
        self.graph = graph
        self.plan = plan
        self.on_partition_run = on_partition_run
        parts = list(plan.partitions)
        exes = [_compile(graph, part, reg, options, devices) for part in parts]
        self._outputs = [o.name for o in graph.outputs]
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
            outputs = tuple(_expected(graph.values.get(name), name) for name in part.outputs)
            gone = tuple((name, name in self._producer) for name in frees[i])
            lock = nullcontext() if getattr(exe, "thread_safe", False) else threading.Lock()
            self._steps.append((part, exe, lock, dlpack[i], inputs, outputs, gone))
        self._meter = PeakMeter(predicted_peak([p.outputs for p in parts], frees,
                                               graph.values))
        self._counts_lock = threading.Lock()
        self._counts = {"dlpack": 0, "host": 0}

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
                value = values[name]
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
                value = _checked(np, part, dlpack, expected, out)
                values[expected[0]] = value
                live += getattr(value, "nbytes", 0)
            if live > peak:
                peak = live
            for name, produced in gone:
                value = values.pop(name)
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
            value = values[name]
            if type(value) is not ndarray:
                value = self._to_host(np, name, value)
            # Never hand out an array the caller or a later request could share.
            shared = name in feeds or name in self.graph.initializers
            result[name] = value.copy() if shared or not value.flags.writeable else value
        return result

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
             devices: dict[str, Device]) -> Executable:
    """Compile one partition at its own precision, wrapping the backend's errors."""
    device = devices[part.device]
    backend = reg.backends[part.backend]
    if part.precision != options.precision:
        options = dataclasses.replace(options, precision=part.precision)
    try:
        sub = _fused(graph.subgraph(part.node_indices, f"{graph.name}-p{part.index}"),
                     backend, part)
        exe = backend.compile(sub, device, options)
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


def _expected(vi: "ValueInfo | None", name: str) -> tuple[str, Any, "ValueInfo | None"]:
    """(name, numpy dtype or None, inferred type or None): what an output is checked by."""
    if vi is None or vi.dtype not in NUMPY_DTYPES:
        return name, None, vi
    import numpy as np

    return name, np.dtype(vi.dtype), vi


def _checked(np: Any, part: "Partition", dlpack: bool, expected: tuple, out: dict) -> Any:
    """One output of a partition, as a host array (kept as the device object when the
    executable declares ``dlpack``), checked against the graph's inferred type."""
    name, dtype, vi = expected
    try:
        value = out[name]
    except KeyError:
        raise ExecutionError(f"backend '{part.backend}' on '{part.device}' returned no output "
                             f"'{name}'", backend=part.backend, device=part.device) from None
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
            wrong = f"shape {got}, expected {vi.describe()}"
    if wrong:
        raise ExecutionError(f"backend '{part.backend}' on '{part.device}' returned output "
                             f"'{name}' with {wrong}", backend=part.backend,
                             device=part.device)
    return value


def _fused(sub: "Graph", backend: Any, part: "Partition") -> "Graph":
    """The partition's subgraph with the fused ops its backend declares (and admits)."""
    declared = getattr(backend.capabilities, "ops", {})
    if not any(key.startswith("backplane::") for key in declared):
        return sub
    from .ops.fusion import fuse

    fused = fuse(sub, lambda key: key in declared)
    if fused is sub or not all(backend.capabilities.check(n) for n in fused.nodes):
        return sub
    part.fused = next((n.split(": ", 1)[1] for n in fused.notes
                       if n.startswith("fused into backplane ops: ")), "")
    return fused


def _single_op(graph: "Graph", part: "Partition") -> str | None:
    return graph.nodes[part.node_indices[0]].op_type if len(part.node_indices) == 1 else None
