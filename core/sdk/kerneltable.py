"""Kernel backends: one kernel per op, registered with its constraints, and a default compile.

A kernel is a plain callable ``fn(*inputs, **attributes) -> output | tuple[outputs]``.
Optional inputs that the node leaves empty arrive as ``None``; attributes the node does
not set are absent, so the kernel's own defaults (ONNX's defaults) apply.

A kernel with one output may also name an ``out`` parameter (``def relu(x, out=None)``):
the default compile then hands it, when it has one, a free host buffer of exactly the
output's inferred shape and dtype, and the kernel may write its result there and return
it. Without a buffer ``out`` is not passed. A kernel's result belongs to the runner: it
must not be kept by the kernel, since its memory may be handed out again in the same run.

The table's constraints are the backend's capabilities: the planner, the conformance
suite and the default compile all read the same data.
"""

from __future__ import annotations

import dataclasses
import inspect
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from backplane.sdk.contract import (AttributeRule, Capabilities, CompileOptions, Device, Executable,
                                    LazyOps, OpSupport, op_key)
from backplane.sdk.errors import CompileError, ExecutionError
from backplane.model.liveness import (NUMPY_DTYPES, MemoryStats, PeakMeter, free_after,
                                      predicted_peak)

if TYPE_CHECKING:  # pragma: no cover
    from backplane.model.graph import Graph


@dataclass(frozen=True)
class Kernel:
    """One registered kernel: the op it implements, the callable, and its constraints."""

    key: str
    fn: Callable[..., Any]
    support: OpSupport


class LazyKernel:
    """A kernel whose implementation, function ``name`` of module ``module``, is imported on
    its first call: a plugin's table (its capabilities) stays data, readable without
    importing the runtime its kernels need. ``bound`` and ``fixed`` are passed before the
    node's inputs and attributes (one implementation serving several ops)."""

    def __init__(self, module: str, name: str, *bound: Any, **fixed: Any):
        self.module, self.name, self.bound, self.fixed = module, name, bound, fixed
        self.fn: Callable[..., Any] | None = None

    def __call__(self, *args: Any, **attrs: Any) -> Any:
        fn = self.fn
        if fn is None:  # the import lock serialises first calls; the result is the same
            import importlib

            fn = self.fn = getattr(importlib.import_module(self.module), self.name)
        return fn(*self.bound, *args, **self.fixed, **attrs)


#: The default-domain opset whose op versions a kernel implements unless it names its
#: versions: the one backplane's kernels were written for and the conformance cases are
#: generated at, and every other version of the same signature (they differ in the types
#: they admit only: Relu-6, Squeeze-13 and -23 ...). An older form (ReduceMean-13 with
#: ``axes`` as an attribute) is a version of its own, which a kernel declares by name.
KERNEL_OPSET = 21


def _identity(x: Any) -> Any:
    return x


#: The kernels every table has: ops that compute nothing. Constant never runs as a kernel:
#: the default compile turns it into a constant value.
_BUILTIN = {"Identity": Kernel("Identity", _identity, OpSupport()),
            "Constant": Kernel("Constant", _identity, OpSupport())}


class KernelTable:
    """The kernels of one backend, by op.

    Every table also runs Identity (its input handed on) and Constant (its value, uploaded
    once at compile time), unless it registers kernels of its own for them: ops that
    compute nothing never keep a node off a kernel backend.

    Args:
        precisions: compute precisions the kernels run at.
        thread_safe: whether kernels may be called from several threads at once.
    """

    def __init__(self, precisions: frozenset[str] = frozenset({"fp32"}),
                 thread_safe: bool = False):
        self._kernels: dict[str, Kernel] = {}
        self._versions: dict[str, tuple[int, ...] | None] = {}
        self._caps: Capabilities | None = None
        self.precisions = precisions
        self.thread_safe = thread_safe

    def register(self, op: str, *, domain: str = "", dtypes: Any = None,
                 dynamic_shapes: bool = True, max_rank: int | None = None,
                 min_rank: int = 0, layout: str = "strided",
                 attributes: Mapping[str, AttributeRule] | None = None,
                 versions: Iterable[int] | None = None
                 ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator registering ``fn`` as the kernel of ``op`` with its constraints.

        The keyword arguments are the fields of :class:`~backplane.core.contract.OpSupport`;
        ``versions`` names the versions of the op's schema (their ``since`` opsets) whose
        semantics the kernel implements, by default the one in force at :data:`KERNEL_OPSET`;
        the versions of the same signature are added (see :meth:`backplane.ops.OpDef.same_as`).
        """
        support = OpSupport(dtypes=frozenset(dtypes) if dtypes is not None else None,
                            dynamic_shapes=dynamic_shapes, max_rank=max_rank,
                            min_rank=min_rank, layout=layout,
                            attributes=dict(attributes or {}))

        def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
            key = op_key(op, domain)
            self._kernels[key] = Kernel(key, fn, support)
            self._versions[key] = tuple(versions) if versions is not None else None
            self._caps = None
            return fn

        return decorate

    def __contains__(self, key: str) -> bool:
        return key in self._kernels

    def get(self, key: str) -> Kernel | None:
        """The kernel registered for op key ``key`` (``MatMul``, ``backplane::Attention``)."""
        return self._kernels.get(key)

    def replace(self, key: str, fn: Callable[..., Any]) -> None:
        """Run ``fn`` for op key ``key`` instead of the registered kernel, under the same
        constraints (a backend's faster kernel for an op of a table it copied)."""
        old = self._kernels[key]
        self._kernels[key] = Kernel(key, fn, old.support)

    def copy(self, precisions: frozenset[str] | None = None,
             thread_safe: bool | None = None) -> "KernelTable":
        """A new table holding the same kernels, to which a backend may register more
        (or replace some): how one op table serves several backends (the torch op table
        under cuda-tensorrt and rocm, with each one's own kernels on top)."""
        table = KernelTable(self.precisions if precisions is None else precisions,
                            self.thread_safe if thread_safe is None else thread_safe)
        table._kernels.update(self._kernels)
        table._versions.update(self._versions)
        return table

    def __len__(self) -> int:
        return len(self._kernels)

    def capabilities(self) -> Capabilities:
        """The table as capability data; the versions of each op are read from the
        operator registry when the table is first read, not when kernels register."""
        caps = self._caps
        if caps is None:
            caps = self._caps = Capabilities(ops=LazyOps(self._support),
                                             precisions=self.precisions)
        return caps

    def _support(self) -> dict[str, OpSupport]:
        # on use only: discovery loads this module, and must stay light
        from backplane.model.dtypes import DTYPE_NAMES
        from backplane.ops.registry import find

        out: dict[str, OpSupport] = {}
        # The built-in kernels hold the element types the table's own kernels do: tensors
        # only (a sequence or an optional is no array the runner hands on).
        held = [k.support.dtypes for k in self._kernels.values()]
        tensors = (frozenset(DTYPE_NAMES.values()) if not held or None in held
                   else frozenset().union(*held))
        for key, kernel in list(self._kernels.items()) + [
                (k, v) for k, v in _BUILTIN.items() if k not in self._kernels]:
            support = kernel.support
            if kernel is _BUILTIN.get(key):
                support = dataclasses.replace(support, dtypes=tensors)
            name, _, domain = key.rpartition("::")[::-1] if "::" in key else (key, "", "")
            definition = find(name, domain)
            if definition is None or not definition.schemas:
                out[key] = support
                continue
            declared = self._versions.get(key) or {definition.version_at(KERNEL_OPSET)}
            versions = definition.same_as(frozenset(declared) - {0})
            out[key] = dataclasses.replace(support, versions={v: None for v in sorted(versions)})
        return out

    def kernel_of(self, key: str) -> Kernel | None:
        """The kernel that runs op key ``key``: a registered one, else a built-in one."""
        return self._kernels.get(key) or _BUILTIN.get(key)

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
    liveness rather than its size; :attr:`memory` reports the peak bytes of the values the
    kernels produced, predicted and measured. Constants are uploaded once, at compile time.

    A kernel that takes an ``out`` keyword is handed, when one is free, a host buffer of
    exactly the shape and dtype the graph infers for its (single) output, left behind by
    a value whose last reader has run: it may write its result there and return it. A
    buffer is reused only if it is a dense, writeable numpy array that owns its memory and
    that no live value, input or constant shares; graph outputs are never reused.
    """

    def __init__(self, graph: "Graph", table: KernelTable, device: Device,
                 upload: Callable[[Any], Any] | None, download: Callable[[Any], Any] | None):
        from onnx import numpy_helper

        caps = table.capabilities()
        self.device = device
        self._upload = upload or (lambda a: a)
        self._download = download or _to_host
        kernels, nodes = [], []
        _, mapped = graph.split_external()  # initializers kept in their files (over 2 GiB)
        self._consts = {t.name: self._upload(mapped[t.name] if t.name in mapped
                                             else numpy_helper.to_array(t))
                        for t in graph.model.graph.initializer}
        for node in graph.nodes:
            verdict = caps.check(node)
            if not verdict:
                raise CompileError(
                    f"backend '{device.backend}' cannot compile node '{node.name}': "
                    f"{verdict.detail}", backend=device.backend, device=device.id,
                    op=node.op_type)
            kernel = table.kernel_of(op_key(node.op_type, node.domain))
            if kernel is _BUILTIN["Constant"]:  # a value, uploaded once
                self._consts[node.outputs[0]] = self._upload(constant_value(node.attributes))
                continue
            kernels.append(kernel)
            nodes.append(node)
        self._outputs = [o.name for o in graph.outputs]
        produced = [node.outputs for node in nodes]
        frees = free_after([node.inputs for node in nodes], produced,
                           set(self._outputs) | set(self._consts))
        made = {name for names in produced for name in names if name}
        outs = [_out_spec(graph, node) if takes_out(k.fn) else None
                for node, k in zip(nodes, kernels)]
        self._symbols = _symbol_sources(graph, outs)
        outs = [spec if spec is None or all(not isinstance(d, str) or d in self._symbols
                                            for d in spec[0]) else None for spec in outs]
        self._steps = []
        for i, (node, kernel) in enumerate(zip(nodes, kernels)):
            later = [spec for spec in outs[i + 1:] if spec is not None]
            gone = tuple((name, name in made,
                          name in made and _may_fit(graph.values.get(name), later))
                         for name in frees[i])
            self._steps.append((node, kernel.fn, kernel.support.layout == "contiguous",
                                outs[i], gone))
        self._meter = PeakMeter(predicted_peak(produced, frees, graph.values))
        self.thread_safe = table.thread_safe  # type: ignore[misc]

    @property
    def memory(self) -> MemoryStats:
        """Peak bytes of the values the kernels produced: predicted, last run, max."""
        return self._meter.stats()

    @property
    def peak_bytes(self) -> int:
        """The measured peak of the last run to finish (0 before the first run)."""
        return self._meter.last

    def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Run every node in order; return the graph's outputs on the host."""
        import numpy as np

        values: dict[str, Any] = dict(self._consts)
        values.update((k, self._upload(v)) for k, v in inputs.items())
        dims = self._bind(inputs) if self._symbols else {}
        free: dict[tuple, list[Any]] = {}  # buffers left by dead values, by (shape, dtype)
        live = peak = 0
        for node, fn, contiguous, out, gone in self._steps:
            args = [values[name] if name else None for name in node.inputs]
            if contiguous:
                args = [_dense(a) for a in args]
            attributes = node.attributes
            if out is not None and free and dims is not None:
                shape = tuple(dims.get(d) if isinstance(d, str) else d for d in out[0])
                buffers = free.get((shape, out[1]))
                if buffers:
                    attributes = {**attributes, "out": buffers.pop()}
            try:
                result = fn(*args, **attributes)
            except Exception as exc:
                raise ExecutionError.wrap(exc, backend=self.device.backend,
                                          device=self.device.id, op=node.op_type) from exc
            results = result if isinstance(result, (tuple, list)) else (result,)
            for name, value in zip(node.outputs, results):
                if name:
                    values[name] = value
                    live += getattr(value, "nbytes", 0)
            if live > peak:
                peak = live
            for name, produced, reusable in gone:
                value = values.pop(name, None)
                if produced:
                    live -= getattr(value, "nbytes", 0)
                    if reusable and _owned_buffer(np, value, values, inputs):
                        free.setdefault((value.shape, value.dtype), []).append(value)
            value = None  # the last value dropped is freed now, not at the next step
        self._meter.record(peak)
        # A kernel may hand back a constant as it is (Identity): outputs must not alias one.
        const_ids = {id(v) for v in self._consts.values()}
        return {name: self._download(_copy(values[name]) if id(values[name]) in const_ids
                                     else values[name]) for name in self._outputs}

    def _bind(self, inputs: dict[str, Any]) -> dict[str, int] | None:
        """Sizes of the symbolic dimensions out= buffers need, read from the inputs; None
        when two inputs disagree (then no buffer is handed out this run)."""
        dims: dict[str, int] = {}
        for symbol, sources in self._symbols.items():
            for name, axis in sources:
                shape = getattr(inputs.get(name), "shape", None)
                if shape is None or len(shape) <= axis:
                    return None
                if dims.setdefault(symbol, int(shape[axis])) != shape[axis]:
                    return None
        return dims


_TAKES_OUT: "weakref.WeakKeyDictionary[Callable[..., Any], bool]" = weakref.WeakKeyDictionary()
_TAKES_OUT_LOCK = threading.Lock()


def constant_value(attributes: Mapping[str, Any]) -> Any:
    """The value of a Constant node, from whichever ``value*`` attribute it sets."""
    import numpy as np

    for name, dtype in (("value", None), ("value_float", np.float32),
                        ("value_floats", np.float32), ("value_int", np.int64),
                        ("value_ints", np.int64), ("value_string", object),
                        ("value_strings", object)):
        if name in attributes:
            return np.asarray(attributes[name], dtype=dtype)
    raise ValueError(f"a Constant node sets none of the value attributes: {sorted(attributes)}")


def takes_out(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` declares an ``out`` parameter that can be passed by keyword.

    Found once per function through ``inspect.signature`` (``**kwargs`` does not count:
    a kernel must name ``out`` to be handed buffers).
    """
    with _TAKES_OUT_LOCK:
        try:
            return _TAKES_OUT[fn]
        except (KeyError, TypeError):
            pass
    try:
        param = inspect.signature(fn).parameters.get("out")
    except (TypeError, ValueError):  # builtins without a signature
        param = None
    found = param is not None and param.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                 inspect.Parameter.KEYWORD_ONLY)
    with _TAKES_OUT_LOCK:
        try:
            _TAKES_OUT[fn] = found
        except TypeError:  # not weakly referenceable: found again at the next compile
            pass
    return found


def _out_spec(graph: "Graph", node: Any) -> tuple[tuple[Any, ...], Any] | None:
    """(shape with ints and symbols, numpy dtype) of a node's single output, when the
    graph infers both well enough to allocate it; else None."""
    if len(node.outputs) != 1 or not node.outputs[0]:
        return None
    vi = graph.values.get(node.outputs[0])
    if vi is None or vi.shape is None or vi.dtype not in NUMPY_DTYPES:
        return None
    if not all(isinstance(d, (int, str)) for d in vi.shape):
        return None
    import numpy as np

    return tuple(vi.shape), np.dtype(vi.dtype)


def _symbol_sources(graph: "Graph", specs: list[Any]) -> dict[str, list[tuple[str, int]]]:
    """For each symbolic dimension the specs use, the (input, axis) pairs that carry it."""
    wanted = {d for spec in specs if spec is not None for d in spec[0] if isinstance(d, str)}
    sources: dict[str, list[tuple[str, int]]] = {}
    for vi in graph.inputs:
        for axis, d in enumerate(vi.shape or ()):
            if d in wanted:
                sources.setdefault(d, []).append((vi.name, axis))
    return sources


def _may_fit(vi: Any, specs: list[tuple[tuple[Any, ...], Any]]) -> bool:
    """Whether a value of type ``vi`` could be the buffer of one of ``specs``: same dtype
    and rank, no two static dimensions different. Values that cannot are not kept."""
    if vi is None or vi.shape is None or vi.dtype not in NUMPY_DTYPES:
        return False
    for shape, dtype in specs:
        if dtype.name == vi.dtype and len(shape) == len(vi.shape) and not any(
                isinstance(a, int) and isinstance(b, int) and a != b
                for a, b in zip(shape, vi.shape)):
            return True
    return False


def _owned_buffer(np: Any, value: Any, values: dict[str, Any], inputs: dict[str, Any]) -> bool:
    """Whether ``value`` is a host buffer no one else can see: a dense, writeable numpy
    array owning its memory that shares it with no live value, constant or input."""
    if type(value) is not np.ndarray or value.base is not None:
        return False
    if not (value.flags.writeable and value.flags.c_contiguous):
        return False
    for other in (*values.values(), *inputs.values()):
        if isinstance(other, np.ndarray) and np.may_share_memory(value, other):
            return False
    return True


def _dense(value: Any) -> Any:
    """A row-major dense version of a host array view; other values as they are."""
    flags = getattr(value, "flags", None)
    if flags is None or getattr(flags, "c_contiguous", True):
        return value
    import numpy as np

    return np.ascontiguousarray(value)


def _copy(value: Any) -> Any:
    """A copy of a value: numpy's ``copy``, torch's ``clone``."""
    return value.clone() if callable(getattr(value, "clone", None)) else value.copy()


def _to_host(value: Any) -> Any:
    import numpy as np

    return np.asarray(value)
