"""Kernel backends: one kernel per op, registered with its constraints, and a default compile.

A kernel is a plain callable ``fn(*inputs, **attributes) -> output | tuple[outputs]``.
Optional inputs that the node leaves empty arrive as ``None``; attributes the node does
not set are absent, so the kernel's own defaults (ONNX's defaults) apply.

The table's constraints are the backend's capabilities: the planner, the conformance
suite and the default compile all read the same data.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .contract import AttributeRule, Capabilities, CompileOptions, Device, Executable, OpSupport, op_key
from .errors import CompileError, ExecutionError

if TYPE_CHECKING:  # pragma: no cover
    from .graph import Graph


@dataclass(frozen=True)
class Kernel:
    """One registered kernel: the op it implements, the callable, and its constraints."""

    key: str
    fn: Callable[..., Any]
    support: OpSupport


class KernelTable:
    """The kernels of one backend, by op.

    Args:
        precisions: compute precisions the kernels run at.
        thread_safe: whether kernels may be called from several threads at once.
    """

    def __init__(self, precisions: frozenset[str] = frozenset({"fp32"}),
                 thread_safe: bool = False):
        self._kernels: dict[str, Kernel] = {}
        self.precisions = precisions
        self.thread_safe = thread_safe

    def register(self, op: str, *, domain: str = "", dtypes: Any = None,
                 dynamic_shapes: bool = True, max_rank: int | None = None,
                 min_rank: int = 0, layout: str = "strided",
                 attributes: Mapping[str, AttributeRule] | None = None
                 ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator registering ``fn`` as the kernel of ``op`` with its constraints.

        The keyword arguments are the fields of :class:`~backplane.core.contract.OpSupport`.
        """
        support = OpSupport(dtypes=frozenset(dtypes) if dtypes is not None else None,
                            dynamic_shapes=dynamic_shapes, max_rank=max_rank,
                            min_rank=min_rank, layout=layout,
                            attributes=dict(attributes or {}))

        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            self._kernels[op_key(op, domain)] = Kernel(op_key(op, domain), fn, support)
            return fn

        return decorate

    def __contains__(self, key: str) -> bool:
        return key in self._kernels

    def __len__(self) -> int:
        return len(self._kernels)

    def capabilities(self) -> Capabilities:
        """The table as capability data."""
        return Capabilities(ops={k: v.support for k, v in self._kernels.items()},
                            precisions=self.precisions)

    def compile(self, graph: "Graph", device: Device, options: CompileOptions,
                upload: Callable[[Any], Any] | None = None,
                download: Callable[[Any], Any] | None = None) -> "KernelExecutable":
        """The default compile: check every node against the table, plan buffer lifetimes.

        ``upload`` moves a host array to the device, ``download`` brings a device value
        back; both default to leaving host numpy arrays as they are.
        """
        return KernelExecutable(graph, self, device, upload, download)


class KernelExecutable(Executable):
    """Runs a graph node by node with a backend's kernels.

    Each value is dropped after its last reader, so peak memory follows the graph's
    liveness rather than its size. Constants are uploaded once, at compile time.
    """

    def __init__(self, graph: "Graph", table: KernelTable, device: Device,
                 upload: Callable[[Any], Any] | None, download: Callable[[Any], Any] | None):
        from onnx import numpy_helper

        caps = table.capabilities()
        self.device = device
        self._upload = upload or (lambda a: a)
        self._download = download or _to_host
        self._steps = []
        for node in graph.nodes:
            verdict = caps.check(node)
            if not verdict:
                raise CompileError(
                    f"backend '{device.backend}' cannot compile node '{node.name}': "
                    f"{verdict.detail}", backend=device.backend, device=device.id,
                    op=node.op_type)
            kernel = table._kernels[op_key(node.op_type, node.domain)]
            self._steps.append((node, kernel.fn, kernel.support.layout == "contiguous"))
        self._consts = {t.name: self._upload(numpy_helper.to_array(t))
                        for t in graph.model.graph.initializer}
        self._outputs = [o.name for o in graph.outputs]
        keep = set(self._outputs) | set(self._consts)
        last_read: dict[str, int] = {}
        for i, (node, _, _) in enumerate(self._steps):
            for name in node.inputs:
                if name:
                    last_read[name] = i
        self._free_after: list[list[str]] = [[] for _ in self._steps]
        for name, i in last_read.items():
            if name not in keep:
                self._free_after[i].append(name)
        self.thread_safe = table.thread_safe  # type: ignore[misc]

    def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Run every node in order; return the graph's outputs on the host."""
        values: dict[str, Any] = dict(self._consts)
        values.update((k, self._upload(v)) for k, v in inputs.items())
        for i, (node, fn, contiguous) in enumerate(self._steps):
            args = [values[name] if name else None for name in node.inputs]
            if contiguous:
                args = [_dense(a) for a in args]
            try:
                result = fn(*args, **node.attributes)
            except Exception as exc:
                raise ExecutionError.wrap(exc, backend=self.device.backend,
                                          device=self.device.id, op=node.op_type) from exc
            results = result if isinstance(result, (tuple, list)) else (result,)
            for name, value in zip(node.outputs, results):
                if name:
                    values[name] = value
            for name in self._free_after[i]:
                values.pop(name, None)
        # A kernel may hand back a constant as it is (Identity): outputs must not alias one.
        const_ids = {id(v) for v in self._consts.values()}
        return {name: self._download(values[name].copy() if id(values[name]) in const_ids
                                     else values[name]) for name in self._outputs}


def _dense(value: Any) -> Any:
    """A row-major dense version of a host array view; other values as they are."""
    flags = getattr(value, "flags", None)
    if flags is None or getattr(flags, "c_contiguous", True):
        return value
    import numpy as np

    return np.ascontiguousarray(value)


def _to_host(value: Any) -> Any:
    import numpy as np

    return np.asarray(value)
