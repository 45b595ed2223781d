"""The backend contract: what a plugin is, what it declares, and what it must implement.

A backend is one object per plugin, found through the entry-point group
``backplane.backends``. It says what it is (``name``, ``api_version``, ``capabilities``
as data), how it finds devices (``probe``), and how it compiles a graph (``compile``),
either directly (graph compilers) or through a :class:`~backplane.sdk.kerneltable.KernelTable`
(kernel backends get a default compile that runs the graph node by node).

Nothing here imports numpy, onnx or any vendor runtime: capabilities are readable, and
plugins are listed, without paying for them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # pragma: no cover
    from backplane.model.graph import Graph, Node
    from backplane.sdk.kerneltable import KernelTable

#: The contract version this backplane implements.
API_VERSION = 2
#: The oldest contract version a plugin may be written for and still load. Versions from
#: here to ``API_VERSION - 1`` load with a deprecation warning naming what to change
#: (:data:`API_CHANGES`); older ones are refused. The policy: docs/api-stability.md.
MIN_API_VERSION = 1
#: What changed in each contract version, as what a plugin written for the version before
#: must do to move to it. The registry adapts a plugin of an older version inside the
#: window to these rules, and its deprecation warning quotes them.
API_CHANGES: dict[int, tuple[str, ...]] = {
    2: ("probe() must give every Device a kind among 'cpu', 'gpu', 'npu', 'accelerator' "
        "(API 1 kinds are lower-cased, and any other kind reads as 'accelerator')",
        "Capabilities.precisions must name only backplane.PRECISIONS "
        "(API 1 precisions outside them are ignored)",
        "probe() with no device here raises DeviceUnavailable('why') instead of returning "
        "an empty list (API 1's empty list reads as 'probe found no device')"),
}



def changes_since(version: int) -> list[str]:
    """What a plugin written for API ``version`` must change to reach ``API_VERSION``."""
    return [c for v in range(version + 1, API_VERSION + 1) for c in API_CHANGES.get(v, ())]


#: Device classes a backend may report.
DEVICE_KINDS = ("cpu", "gpu", "npu", "accelerator")
#: Compute precisions a backend may declare.
PRECISIONS = ("fp64", "fp32", "tf32", "fp16", "bf16", "fp8", "int8", "int4")
#: Scheduling policies a session may ask for: least time per request (the default), most
#: requests per second, least energy; and, for comparison, the first admitting device in
#: priority order (``fixed-order``, as ONNX Runtime assigns nodes to execution providers).
POLICIES = ("latency", "throughput", "efficiency", "fixed-order")


@dataclass(frozen=True)
class Device:
    """One device of one backend. ``id`` is stable: ``BACKEND:INDEX``.

    A backend's ``probe`` returns these with ``backend`` and ``index`` unset; the registry
    stamps them, in the order ``probe`` returned them (which must be deterministic).
    """

    name: str
    kind: str = "cpu"
    vendor: str = ""
    memory_bytes: int | None = None
    properties: Mapping[str, Any] = field(default_factory=dict)
    backend: str = ""
    index: int = -1

    @property
    def id(self) -> str:
        """The stable device id, ``BACKEND:INDEX``."""
        return f"{self.backend}:{self.index}"

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as printed by ``backplane devices --json``."""
        d = asdict(self)
        d["properties"] = dict(self.properties)
        return {"id": self.id, **d}


@dataclass(frozen=True)
class AttributeRule:
    """A limit on one attribute of an op: allowed values, or a numeric range (inclusive)."""

    allowed: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None

    def admits(self, value: Any) -> bool:
        """Whether ``value`` (a scalar or a list of scalars) is within the rule."""
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if self.allowed is not None and v not in self.allowed:
                return False
            if self.min is not None and v < self.min:
                return False
            if self.max is not None and v > self.max:
                return False
        return True


#: Memory layouts a kernel may declare (see :attr:`OpSupport.layout`).
LAYOUTS = frozenset({"strided", "contiguous"})


@dataclass(frozen=True)
class OpSupport:
    """What a backend can do with one op.

    Attributes:
        dtypes: element types admitted for the op's primary type, the type of its first
            input (or first output for ops without inputs); ``None`` admits any.
        dynamic_shapes: whether inputs may have dimensions unknown until run time.
        max_rank: the largest rank admitted for any input, or ``None``.
        min_rank: the smallest rank admitted for any input (1 refuses scalars).
        layout: the memory layout the kernel reads: ``strided`` takes any view (a
            transposed or sliced array as it is), ``contiguous`` needs dense row-major
            buffers; the default compile hands such a kernel contiguous copies of views.
        attributes: limits per attribute name; attributes not named are unconstrained.
        versions: the versions of the op's schema admitted (each version's ``since``
            opset, as :attr:`backplane.model.graph.Node.version` names it), each with the dtypes
            admitted at that version (``None``: ``dtypes``); ``None`` admits every version.
            A graph compiler derives them from its runtime (ONNX Runtime registers kernels
            per version range and type); a kernel declares the versions whose semantics
            it implements.
        constant_inputs: the positions of inputs that must be constants of the graph
            (initializers), not values computed at run time (OpenVINO's Tile computes
            garbage from repeats it is fed).
        input_dtypes: dtypes admitted per input position beyond the first (``None``: what
            the schema admits): a variant with another operand type the backend lacks
            (ONNX Runtime's Pow with a uint64 exponent).
        absent_outputs: optional outputs a node must not ask for: one the backend computes
            wrong (Attention's ``qk_matmul_output``).
        absent_inputs: optional inputs a node must not give: one the backend ignores
            (OpenVINO drops LSTM's peepholes ``P``).
        scalar_inputs: the positions of inputs that, where given, must hold one element,
            as shape inference or the initializer shows it: a per-tensor quantization
            parameter where the backend refuses per-channel ones (ONNX Runtime's
            ConvInteger).
    """

    dtypes: frozenset[str] | None = None
    dynamic_shapes: bool = True
    max_rank: int | None = None
    min_rank: int = 0
    layout: str = "strided"
    attributes: Mapping[str, AttributeRule] = field(default_factory=dict)
    versions: Mapping[int, frozenset[str] | None] | None = None
    constant_inputs: frozenset[int] = frozenset()
    input_dtypes: Mapping[int, frozenset[str]] | None = None
    absent_outputs: frozenset[int] = frozenset()
    absent_inputs: frozenset[int] = frozenset()
    scalar_inputs: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"OpSupport.layout must be one of {sorted(LAYOUTS)}, "
                             f"not {self.layout!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return {
            "dtypes": sorted(self.dtypes) if self.dtypes is not None else None,
            "dynamic_shapes": self.dynamic_shapes,
            "max_rank": self.max_rank,
            "min_rank": self.min_rank,
            "layout": self.layout,
            "attributes": {k: asdict(v) for k, v in self.attributes.items()},
            "constant_inputs": sorted(self.constant_inputs),
            "input_dtypes": None if self.input_dtypes is None else {
                str(k): sorted(v) for k, v in sorted(self.input_dtypes.items())},
            "absent_outputs": sorted(self.absent_outputs),
            "absent_inputs": sorted(self.absent_inputs),
            "scalar_inputs": sorted(self.scalar_inputs),
            "versions": None if self.versions is None else {
                str(v): sorted(d) if d is not None else None
                for v, d in sorted(self.versions.items())},
        }


class LazyOps(Mapping):
    """An op table (``{op key: OpSupport}``) computed on its first read, for
    :attr:`Capabilities.ops` of backends that derive their capabilities by running their
    runtime (graph compilers: see :mod:`backplane.ops.trials`).

    Loading a plugin builds its Capabilities and the registry checks them, so the table
    cannot be computed then without importing the vendor runtime into every process that
    only lists plugins. ``compute`` is called once, on the first ``[]``, ``iter``, ``len``
    or ``in``, under a lock (concurrent first readers wait for the one computation); its
    result is kept. An exception from ``compute`` reaches the reader and the next read
    tries again.
    """

    def __init__(self, compute: Callable[[], Mapping[str, OpSupport]],
                 refusals: Callable[[], Mapping[str, Mapping[str, str]]] | None = None):
        self._compute = compute
        self._refusals = refusals
        self._refused: Mapping[str, Mapping[str, str]] | None = None
        self._ops: Mapping[str, OpSupport] | None = None
        self._lock = threading.Lock()

    def refusal(self, key: str, version: int = 0, dtype: str | None = None) -> str | None:
        """Why the runtime's own ``key`` (at ``version`` in ``dtype``, or at any) was left
        out of the table, where ``refusals`` says (``{op key: {"version/dtype": why}}``:
        the derivation's failed ONNX node tests); None otherwise."""
        if self._refusals is None:
            return None
        if self._refused is None:
            try:
                self._refused = {k: {vd: why for vd, why in per.items()
                                     if str(why).startswith("test_")}
                                 for k, per in self._refusals().items()}
            except Exception:  # a message's extra, never a reason to fail a check
                self._refused = {}
        per = self._refused.get(key) or {}
        found = per.get(f"{version}/{dtype}") if version else next(iter(per.values()), None)
        return None if found is None else " ".join(str(found).split())[:240]

    def _table(self) -> Mapping[str, OpSupport]:
        if self._ops is None:
            with self._lock:
                if self._ops is None:
                    self._ops = self._compute()
        return self._ops

    @property
    def computed(self) -> bool:
        """Whether the table has been computed (reading this does not compute it)."""
        return self._ops is not None

    def __getitem__(self, key: str) -> OpSupport:
        return self._table()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())


@dataclass(frozen=True)
class Verdict:
    """A capability answer: ``ok``, or a reason ``code`` with a human ``detail``."""

    ok: bool
    code: str = ""
    detail: str = ""

    def __bool__(self) -> bool:
        return self.ok


ADMITTED = Verdict(True)


#: The ONNX domains (default and ``ai.onnx.ml``), which the reference backend runs whole.
ONNX_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")


def op_key(op_type: str, domain: str = "") -> str:
    """The key of an op in capability tables: ``Add``, or ``backplane::FusedConvRelu``."""
    return op_type if domain in ("", "ai.onnx") else f"{domain}::{op_type}"


@dataclass(frozen=True)
class Capabilities:
    """What a backend can run, declared as data.

    Attributes:
        ops: support per op key (see :func:`op_key`).
        any_op: admit every op of the ONNX domains (the default domain and
            ``ai.onnx.ml``: the reference backend).
        precisions: the compute precisions the backend can run at.
        value_dtypes: the element types the backend can hold at all, as any input or
            output of any node (``None``: any); a node with a value of another type is
            refused whatever its op (OpenVINO's CPU plugin computes float64 in float32,
            ONNX Runtime's Python API cannot exchange 2-bit types).

    A node with subgraphs (If, Loop, Scan) is admitted only with every node of its
    subgraphs: it runs whole, where its bodies run.
    """

    ops: Mapping[str, OpSupport] = field(default_factory=dict)
    any_op: bool = False
    precisions: frozenset[str] = frozenset({"fp32"})
    value_dtypes: frozenset[str] | None = None

    def check(self, node: "Node") -> Verdict:
        """Whether this backend admits ``node``. Answers; never raises."""
        verdict = self._check_one(node)
        if not verdict or not node.body:
            return verdict
        for inner in node.body:
            found = self._check_one(inner)
            if not found:
                return Verdict(False, found.code, f"{node.op_type} runs whole with its "
                               f"subgraphs, and their node '{inner.name or inner.op_type}' "
                               f"is refused: {found.detail}")
        return verdict

    def _check_one(self, node: "Node") -> Verdict:
        key = op_key(node.op_type, node.domain)
        if self.value_dtypes is not None:
            for vi in (*node.input_types, *node.output_types):
                if vi is not None and vi.dtype not in self.value_dtypes \
                        and not vi.dtype.startswith(("seq(", "optional(", "map(")):
                    return Verdict(False, "capability:dtype",
                                   f"the backend holds no {vi.dtype} values ('{vi.name}')")
        support = self.ops.get(key)
        if support is None:
            if self.any_op and node.domain in ONNX_DOMAINS:
                return ADMITTED
            why = self._left_out(key)
            return Verdict(False, "capability:op", f"op {key} is not implemented" if why is None
                           else f"op {key} is left out: the runtime runs it, and fails ONNX's "
                           f"node test {why}")
        primary = node.primary_dtype
        dtypes = support.dtypes
        if support.versions is not None and node.version:
            if node.version not in support.versions:
                return Verdict(False, "capability:version",
                               f"{key} is implemented at versions "
                               f"{', '.join(map(str, sorted(support.versions)))}, the node is "
                               f"{key}-{node.version} (opset {node.opset})")
            dtypes = support.versions[node.version] or dtypes
        # (a value that is not a tensor, a sequence say, has no dtype here to refute)
        if dtypes is not None and primary is not None and primary not in dtypes:
            why = self._left_out(key, node.version, primary)
            return Verdict(False, "capability:dtype",
                           f"{key} admits {sorted(dtypes)}, the node has {primary}"
                           + (f" ({primary} left out: it fails ONNX's node test {why})"
                              if why else ""))
        shapes = [s for s in node.input_shapes if s is not None]
        # A present input whose rank is unknown is as dynamic as a symbolic dimension.
        unknown_rank = any(name and (vi is None or vi.shape is None)
                           for name, vi in zip(node.inputs, node.input_types))
        if not support.dynamic_shapes and (unknown_rank or any(
                d is None or isinstance(d, str) for s in shapes for d in s)):
            return Verdict(False, "capability:dynamic-shape",
                           f"{key} needs static shapes, an input has a dynamic dimension"
                           + (" or an unknown rank" if unknown_rank else ""))
        if support.max_rank is not None and any(len(s) > support.max_rank for s in shapes):
            return Verdict(False, "capability:rank",
                           f"{key} admits rank <= {support.max_rank}")
        if support.min_rank and any(len(s) < support.min_rank for s in shapes):
            return Verdict(False, "capability:rank",
                           f"{key} admits rank >= {support.min_rank}")
        for k, allowed in sorted((support.input_dtypes or {}).items()):
            vi = node.input_types[k] if k < len(node.input_types) else None
            if vi is not None and vi.dtype not in allowed:
                return Verdict(False, "capability:dtype",
                               f"{key} admits {sorted(allowed)} at input {k}, the node has "
                               f"{vi.dtype}")
        for k in sorted(support.absent_outputs):
            if k < len(node.outputs) and node.outputs[k]:
                return Verdict(False, "capability:output",
                               f"{key} computes its optional output {k} wrong here; the node "
                               "asks for it")
        for k in sorted(support.absent_inputs):
            if k < len(node.inputs) and node.inputs[k]:
                return Verdict(False, "capability:input",
                               f"{key} ignores its optional input {k} ('{node.inputs[k]}') "
                               "here; the node gives it")
        for k in sorted(support.constant_inputs):
            if k < len(node.inputs) and node.inputs[k] and k not in node.constant_inputs:
                return Verdict(False, "capability:constant-input",
                               f"{key} needs input {k} ('{node.inputs[k]}') to be a constant "
                               "of the graph, not a value computed at run time")
        for k in sorted(support.scalar_inputs):
            if k < len(node.inputs) and node.inputs[k]:
                shape = node.input_shapes[k] if k < len(node.input_shapes) else None
                if shape is None or any(d != 1 for d in shape):
                    return Verdict(False, "capability:shape",
                                   f"{key} takes one element at input {k} "
                                   f"('{node.inputs[k]}'), the node has "
                                   f"{'an unknown shape' if shape is None else list(shape)}")
        for attr, rule in support.attributes.items():
            if attr in node.attributes and not rule.admits(node.attributes[attr]):
                return Verdict(False, "capability:attribute",
                               f"{key} attribute {attr}={node.attributes[attr]!r} is outside {rule}")
        return ADMITTED

    def _left_out(self, key: str, version: int = 0, dtype: str | None = None) -> str | None:
        """The node test that left the runtime's op out, where ``ops`` says
        (:meth:`LazyOps.refusal`); only on a refusal's way, never for an admitted node."""
        refusal = getattr(self.ops, "refusal", None)
        return refusal(key, version, dtype) if refusal is not None else None

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as the conformance suite and ``--json`` listings read it."""
        return {
            "any_op": self.any_op,
            "value_dtypes": sorted(self.value_dtypes) if self.value_dtypes is not None else None,
            "precisions": sorted(self.precisions),
            "ops": {k: v.to_dict() for k, v in sorted(self.ops.items())},
        }


@dataclass(frozen=True)
class CompileOptions:
    """What the session asks of a compile.

    Attributes:
        precision: the compute precision the plan was made for (``fp32`` by default).
        policy: ``latency``, ``throughput`` or ``efficiency``; graph compilers map it onto
            their own hints (streams, performance mode).
        cache_dir: where the backend may cache compiled artefacts, or ``None``.
        extra: backend-specific options given by the application, keyed by backend name.
        dims: the sizes of symbolic dimensions the session was planned for (its ``dims=``
            or its sample inputs' sizes), for backends that need static shapes (NPUs,
            TensorRT profiles); the graph a backend gets keeps its symbols.
    """

    precision: str = "fp32"
    policy: str = "latency"
    cache_dir: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    dims: Mapping[str, int] = field(default_factory=dict)


class Executable:
    """A compiled (sub)graph on one device.

    ``run`` takes a dict of host numpy arrays (the subgraph's inputs) and returns a dict of
    host numpy arrays (its outputs). If ``thread_safe`` is False, backplane serialises calls
    to ``run``; set it True only when concurrent calls are safe.
    """

    thread_safe: ClassVar[bool] = False
    dlpack: ClassVar[bool] = False
    """Whether ``run`` also accepts, as inputs, objects implementing ``__dlpack__`` (device
    tensors of another partition, handed over as they are) and may return such objects;
    backplane moves them to the host wherever a consumer does not declare this."""
    path: str = ""
    """How the backend compiled this partition, in words, when it has several ways to
    (``"TensorRT 10.3 engine, fp16, from the engine cache"``, or the kernel path and why the
    graph paths were passed over); the plan shows it for the partition."""

    def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Run once. Must not keep references to ``inputs`` after returning."""
        raise NotImplementedError


class Backend:
    """Base class of backend plugins. Subclass it; set the class attributes; implement the hooks.

    Class attributes:
        name: the backend's name, equal to its entry-point name (``openvino-cpu``).
        api_version: the contract version the plugin was written for.
        version: the plugin's own version, used to scope known failures and caches.
        priority: place in the order of the ``fixed-order`` policy (higher first), and
            the tie-break between equal costs; the reference backend is last.
        capabilities: what it can run, as data; kernel backends get it from ``kernels``.
        kernels: a :class:`KernelTable` for kernel backends, else ``None``.
        cost_hints: what the cost model assumes until ``backplane hwdb calibrate`` has
            measured the backend on a device: ``launch_us`` (one call into a partition),
            ``node_us`` (per node inside it), ``compute_efficiency`` and
            ``memory_efficiency`` (fractions of the device's peak rate and bandwidth the
            backend reaches on large ops). Missing keys take
            :data:`backplane.engine.costmodel.DEFAULT_HINTS`.
        max_partition_nodes: the most nodes one ``compile`` is handed, for a graph
            compiler whose compile time grows faster than the graph: the scheduler cuts
            longer runs of nodes on it into partitions of at most this many, so compiling
            stays linear in the model's size. ``None``: no limit.
    """

    name: ClassVar[str] = ""
    api_version: ClassVar[int] = 0
    version: ClassVar[str] = "0"
    priority: ClassVar[int] = 0
    kernels: ClassVar["KernelTable | None"] = None
    cost_hints: ClassVar[Mapping[str, float]] = {}
    max_partition_nodes: ClassVar[int | None] = None

    @property
    def capabilities(self) -> Capabilities:
        """Capabilities as data; derived from ``kernels`` unless a subclass declares them."""
        if self.kernels is not None:
            return self.kernels.capabilities()
        return Capabilities()

    def probe(self) -> list[Device]:
        """List this backend's usable devices. Cheap and bounded in time.

        A device is listed only if its runtime is ready. Raise
        :class:`~backplane.sdk.errors.DeviceUnavailable` with the reason when the backend is
        healthy but has no device on this machine.
        """
        raise NotImplementedError

    def compile(self, graph: "Graph", device: Device, options: CompileOptions) -> Executable:
        """Compile ``graph`` for ``device``. The default runs it with ``kernels``."""
        if self.kernels is None:
            raise NotImplementedError(
                f"backend {self.name!r} declares no kernels and does not implement compile")
        return self.kernels.compile(graph, device, options)
