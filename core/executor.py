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

The liveness and memory helpers here are shared with the kernel runner
(:class:`~backplane.kerneltable.KernelExecutable`), which applies them node by node.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .contract import CompileOptions, Device, Executable
from .errors import BackendError, CompileError, ExecutionError
from .load import busy

if TYPE_CHECKING:  # pragma: no cover
    from .graph import Graph, ValueInfo
    from .planner import Partition, Plan
    from .registry import Registry


# ---------------------------------------------------------------------- memory accounting

@dataclass(frozen=True)
class MemoryStats:
    """Peak bytes of the values a runner holds at once, predicted and measured.

    The values counted are those the runner's steps produce (intermediates and outputs),
    from the moment they are produced until their last reader has run; inputs and
    constants are not counted (the caller and the model own them).

    Attributes:
        predicted_peak_bytes: the peak predicted at construction from the graph's inferred
            static shapes and dtypes (an unknown dimension counts as 1).
        peak_bytes: the measured peak of the last run to finish (0 before the first run).
        max_peak_bytes: the largest measured peak over every run so far.
        runs: how many runs have been measured.
    """

    predicted_peak_bytes: int
    peak_bytes: int
    max_peak_bytes: int
    runs: int


class PeakMeter:
    """A thread-safe record of per-run peaks.

    Each run counts its own live bytes in local variables and calls :meth:`record` once,
    at its end, so concurrent runs never share a running total.
    """

    def __init__(self, predicted_peak_bytes: int = 0):
        self.predicted_peak_bytes = predicted_peak_bytes
        self._lock = threading.Lock()
        self._last = self._max = self._runs = 0

    def record(self, peak_bytes: int) -> None:
        """Record the measured peak of one finished run."""
        with self._lock:
            self._last = peak_bytes
            if peak_bytes > self._max:
                self._max = peak_bytes
            self._runs += 1

    @property
    def last(self) -> int:
        """The measured peak of the last run to finish."""
        return self._last

    def stats(self) -> MemoryStats:
        """A consistent snapshot of the record."""
        with self._lock:
            return MemoryStats(self.predicted_peak_bytes, self._last, self._max, self._runs)


def free_after(reads: Sequence[Iterable[str]], produced: Sequence[Iterable[str]],
               keep: Iterable[str]) -> list[list[str]]:
    """For each step, the values to drop once it has run.

    A value is dropped after the last step that reads it, or right after the step that
    produces it when no step reads it; values in ``keep`` (outputs, constants) never are.
    """
    last: dict[str, int] = {}
    for i, names in enumerate(produced):
        for name in names:
            if name:
                last.setdefault(name, i)
    for i, names in enumerate(reads):
        for name in names:
            if name:
                last[name] = max(i, last.get(name, i))
    kept = set(keep)
    frees: list[list[str]] = [[] for _ in reads]
    for name, i in last.items():
        if name not in kept:
            frees[i].append(name)
    return frees


def predicted_peak(produced: Sequence[Iterable[str]], frees: Sequence[Iterable[str]],
                   values: "dict[str, ValueInfo]") -> int:
    """The peak of :func:`free_after`'s liveness with each value at its static size."""
    made = {name for names in produced for name in names if name}
    live = peak = 0
    for out, gone in zip(produced, frees):
        live += sum(static_nbytes(values.get(name)) for name in out if name)
        peak = max(peak, live)
        live -= sum(static_nbytes(values.get(name)) for name in gone if name in made)
    return peak


#: The ONNX element types numpy represents as they are.
NUMPY_DTYPES = {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8",
                "uint16", "uint32", "uint64", "bool", "complex64", "complex128"}


#: Bits per element of the ONNX types numpy does not know.
_BITS = {"bfloat16": 16, "float8e4m3fn": 8, "float8e4m3fnuz": 8, "float8e5m2": 8,
         "float8e5m2fnuz": 8, "uint4": 4, "int4": 4, "float4e2m1": 4, "string": 64}


def static_nbytes(vi: "ValueInfo | None") -> int:
    """Bytes of a value from its inferred type: unknown dimensions (and an unknown rank)
    count as 1 element; a value without a known type counts as 0."""
    if vi is None:
        return 0
    bits = _BITS.get(vi.dtype)
    if bits is None:
        if vi.dtype not in NUMPY_DTYPES:
            return 0
        import numpy as np

        bits = np.dtype(vi.dtype).itemsize * 8
    elements = math.prod(d if isinstance(d, int) else 1 for d in (vi.shape or ()))
    return (elements * bits + 7) // 8


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
        return np.asarray(value.cpu().numpy())
    if callable(getattr(value, "get", None)) and hasattr(value, "shape"):
        return np.asarray(value.get())
    return np.asarray(value)


def _compile(graph: "Graph", part: "Partition", reg: "Registry", options: CompileOptions,
             devices: dict[str, Device]) -> Executable:
    """Compile one partition at its own precision, wrapping the backend's errors."""
    device = devices[part.device]
    backend = reg.backends[part.backend]
    # The scheduler may give a partition its own precision; older plans have none.
    precision = getattr(part, "precision", None) or options.precision
    if precision != options.precision:
        options = dataclasses.replace(options, precision=precision)
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
