"""The executor: compiles a plan's partitions and runs them in dependency order.

This is where core wraps every backend call: compile and run errors become CompileError /
ExecutionError carrying the backend, device and vendor message; executables that are not
thread-safe are serialised; outputs are checked against the graph's inferred types; inputs
are handed to backends read-only, so a faulty backend cannot corrupt the caller's arrays.
Tensors cross devices through the host.
"""

from __future__ import annotations

import threading
from contextlib import nullcontext
from typing import TYPE_CHECKING, Any

from .contract import CompileOptions, Device, Executable
from .errors import BackendError, CompileError, ExecutionError

if TYPE_CHECKING:  # pragma: no cover
    from .graph import Graph
    from .planner import Partition, Plan
    from .registry import Registry


class CompiledPlan:
    """A plan with one compiled executable per partition."""

    def __init__(self, graph: "Graph", plan: "Plan", reg: "Registry", options: CompileOptions,
                 devices: dict[str, Device]):
        self.graph = graph
        self.plan = plan
        self._steps: list[tuple[Partition, Executable, Any]] = []
        for part in plan.partitions:
            device = devices[part.device]
            backend = reg.backends[part.backend]
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
            lock = nullcontext() if getattr(exe, "thread_safe", False) else threading.Lock()
            self._steps.append((part, exe, lock))
        self._outputs = [o.name for o in graph.outputs]

    def run(self, feeds: dict[str, Any]) -> dict[str, Any]:
        """Run every partition in order; return the graph's outputs as fresh host arrays."""
        import numpy as np

        values: dict[str, Any] = dict(feeds)
        for part, exe, lock in self._steps:
            # Read-only views: a partition cannot write into its producer's outputs.
            args = {name: _readonly(np, values[name]) for name in part.inputs}
            try:
                with lock:
                    out = exe.run(args)
            except BackendError:
                raise
            except Exception as exc:
                raise ExecutionError.wrap(exc, backend=part.backend, device=part.device,
                                          op=_single_op(self.graph, part)) from exc
            for name in part.outputs:
                if not isinstance(out, dict) or name not in out:
                    raise ExecutionError(
                        f"backend '{part.backend}' on '{part.device}' returned no output "
                        f"'{name}'", backend=part.backend, device=part.device)
                values[name] = self._checked(np, part, name, out[name])
        result = {}
        for name in self._outputs:
            value = values[name]
            # Never hand out an array the caller or a later request could share.
            shared = name in feeds or name in self.graph.initializers
            result[name] = value.copy() if shared or not value.flags.writeable else value
        return result

    def _checked(self, np: Any, part: "Partition", name: str, value: Any) -> Any:
        arr = np.asarray(value)
        vi = self.graph.values.get(name)
        if vi is None:
            return arr
        wrong = None
        if vi.dtype in _NUMPY_DTYPES and arr.dtype != np.dtype(vi.dtype):
            wrong = f"dtype {arr.dtype}, expected {vi.dtype}"
        elif vi.shape is not None and (len(vi.shape) != arr.ndim or any(
                isinstance(d, int) and d != g for d, g in zip(vi.shape, arr.shape))):
            wrong = f"shape {tuple(arr.shape)}, expected {vi.describe()}"
        if wrong:
            raise ExecutionError(f"backend '{part.backend}' on '{part.device}' returned output "
                                 f"'{name}' with {wrong}", backend=part.backend,
                                 device=part.device)
        return arr


_NUMPY_DTYPES = {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8",
                 "uint16", "uint32", "uint64", "bool", "complex64", "complex128"}


def _readonly(np: Any, arr: Any) -> Any:
    view = arr.view()
    view.flags.writeable = False
    return view


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
