"""Planning, step 1: every path that may run each node, priced, and why not the others.

A path is a device at a precision whose backend admits the node (capabilities: op, dtype,
shapes, attributes), whose stored conformance results do not mark that op x dtype failed
on that device, whose memory holds the node, and that the session's constraints allow.
Every other device keeps a reason code. The reference backend is the last resort: a
candidate only where nothing else admits the node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from backplane import ops
from backplane.engine import convert as conversion, qualification
from backplane.engine.plan import FALLBACK_BACKEND, Rejection
from backplane.ops.costs import nbytes
from backplane.sdk.contract import Device, Verdict, op_key
from backplane.sdk.errors import UnsupportedError

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Mapping

    from backplane.engine.costmodel import CostModel
    from backplane.model.graph import Graph, Node
    from backplane.sdk.contract import Backend

#: Lower precisions ``precision="auto"`` may choose, cheapest first.
AUTO_PRECISIONS = ("int8", "fp16", "bf16")
#: Ops graph compilers fuse into the kernel producing their input.
EPILOGUE_OPS = frozenset({
    "Add", "Sub", "Mul", "Div", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid",
    "HardSwish", "Gelu", "Erf", "Exp", "Sqrt", "Pow", "Neg", "Abs", "Clip", "Where", "Cast",
    "BatchNormalization"})
#: Share of a device's memory kept free by default.
DEFAULT_HEADROOM = 0.1
LAST_RESORT = ("not-chosen:last-resort",
               "admits the node; the reference backend runs only what no other admits")


@dataclass(frozen=True)
class Constraints:
    """What a plan must respect besides capabilities.

    Attributes:
        device_class: a device class (``cpu``, ``gpu``, ``npu``, ``accelerator``) every node
            should run on; nodes no such device admits fall back elsewhere, unless the
            session is strict (``device_class="npu"`` is "prefer the NPU").
        exclude: device classes, backend names or device ids never to use.
        memory_headroom: the share of each device's memory a plan leaves free.
    """

    device_class: str | None = None
    exclude: frozenset[str] = frozenset()
    memory_headroom: float = DEFAULT_HEADROOM

    def excludes(self, device: Device) -> bool:
        """Whether ``device`` is excluded by class, backend or id."""
        return bool(self.exclude & {device.kind, device.backend, device.id})


@dataclass
class Option:
    """One candidate of one node: a device at a precision, with its price."""

    device: Device
    device_id: str
    domain: str
    precision: str
    rank: int
    seconds: float = 0.0
    energy: float = 0.0
    key: tuple[str, str] = ("", "")
    """(device id, precision): nodes on one path share partitions."""
    parts: tuple[str, float, float] = ("other", 0.0, 0.0)
    """Its op family, and its seconds of work and of per-node overhead before anything
    learned (:meth:`backplane.engine.costmodel.CostModel.node_parts`)."""

    def __post_init__(self) -> None:
        self.key = (self.device_id, self.precision)


@dataclass
class NodeCandidates:
    """A node's options (rank order) and every other device's reason."""
    options: list[Option] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    left_required: bool = False


class Candidates:
    """What one planning pass reads, and its first step: every node's candidates.

    The pass is one object, :class:`backplane.engine.partitioning.PlanningPass`, built up
    in three modules: candidates (here), assignment and partitioning."""

    def __init__(self, graph: "Graph", devices: list[Device],
                 backends: "Mapping[str, Backend]", model: "CostModel", precision: str,
                 constraints: Constraints, excluded: dict[str, str],
                 banned: dict[tuple[str, str], Any], refused: dict[tuple[str, str], str]):
        self.graph, self.devices, self.backends, self.model = graph, devices, backends, model
        self.precision, self.constraints = precision, constraints
        self.excluded, self.banned, self.refused = excluded, banned, refused
        self.producer = {o: i for i, n in enumerate(graph.nodes) for o in n.outputs if o}
        self.outputs = {o.name for o in graph.outputs}
        self.dequantized = {o for n in graph.nodes if n.op_type == "DequantizeLinear"
                            for o in n.outputs}
        self._failed = {d.id: failed_variants(backends[d.backend], model.profiles[d.id], d.id)
                        for d in devices}
        self._ranked = [(rank, d, d.id, model.domain(d.id), backends[d.backend].kernels is None)
                        for rank, d in enumerate(devices)]
        self._caps = {d.backend: backends[d.backend].capabilities for d in devices}
        self._precisions = {name: self._allowed(caps) for name, caps in self._caps.items()}
        self._launch_s = {d.id: model.launch_time(d.id) for d in devices}
        self._bytes: dict[str, int] = {}
        #: (device id, node name) -> the opset the node is converted to for that device.
        self.converted: dict[tuple[str, str], int] = {}

    # -- values ----------------------------------------------------------------------------

    def nbytes(self, value: str) -> int:
        """Bytes of a value from its inferred type (unknown dimensions count as 1)."""
        found = self._bytes.get(value)
        if found is None:
            found = self._bytes[value] = nbytes(self.graph.values.get(value))
        return found

    def reads(self, node: "Node") -> list[str]:
        """The non-constant values a node reads."""
        return [v for v in node.inputs if v and v not in self.graph.initializers]

    # -- candidates ------------------------------------------------------------------------

    def _allowed(self, caps: Any) -> list[str]:
        """The precisions a backend may compute this session's nodes at, fp32 first."""
        declared = caps.precisions
        if self.precision != "auto":
            return [self.precision] if self.precision in declared else []
        return [p for p in ("fp32",) + AUTO_PRECISIONS if p in declared]

    def candidates(self, node: "Node", explicit: bool) -> NodeCandidates:
        """Every path that may run ``node``, priced, and every device's reason if not."""
        out = NodeCandidates()
        cost = ops.cost(node)
        quantized = any(v in self.dequantized for v in node.inputs)
        # Every input a constant (weights being dequantized, reshaped, transposed): graph
        # compilers fold the node away when they compile.
        constant = all(v in self.graph.initializers for v in node.inputs if v)
        # An element-wise op or normalisation on another node's output: graph compilers
        # fuse it into that node's kernel (an epilogue), so it moves no data of its own.
        epilogue = node.op_type in EPILOGUE_OPS and bool(node.inputs) and \
            node.inputs[0] in self.producer
        footprint = 0
        for v in node.inputs + node.outputs:
            if v:
                footprint += self.nbytes(v)
        def consider(rank: int, device: Device, device_id: str, domain: str, compiler: bool,
                     convert: bool) -> None:
            verdict = self._verdict(device, device_id, node, footprint, convert)
            if not verdict:
                out.rejected.append(Rejection(device_id, verdict.code, verdict.detail))
                return
            if not explicit and device.backend == FALLBACK_BACKEND and out.options:
                out.rejected.append(Rejection(device_id, *LAST_RESORT))
                return
            for precision in self._precisions[device.backend]:
                why = self.banned.get((device_id, precision))
                if why:  # the detail, or (code, detail) for a path that failed to compile
                    code, why = why if isinstance(why, tuple) else ("precision:budget", why)
                    out.rejected.append(Rejection(device_id, code, why))
                    continue
                parts = self.model.node_parts(node, device_id, precision, cost, quantized,
                                              fused=epilogue and compiler,
                                              folded=constant and compiler)
                seconds = self.model.learned_time(device_id, *parts)
                out.options.append(Option(device, device_id, domain, precision, rank, seconds,
                                           self.model.energy(seconds, device_id),
                                           parts=parts))

        for ranked in self._ranked:
            consider(*ranked, convert=False)
        if not any(o.device.backend != FALLBACK_BACKEND for o in out.options):
            # No backend runs the node as it is: a kernel backend that declares a newer
            # version of its op may run it converted (backplane.engine.convert), checked on sample
            # inputs first. A graph compiler always gets the model at its own opset.
            kernel_devices = {r[2] for r in self._ranked if not r[4]}
            older = {r.device for r in out.rejected
                     if r.code == "capability:version" and r.device in kernel_devices}
            if older:
                out.rejected = [r for r in out.rejected if r.device not in older]
                for ranked in self._ranked:
                    if ranked[2] in older:
                        consider(*ranked, convert=True)
                out.options.sort(key=lambda o: o.rank)
        if not out.options:
            raise UnsupportedError(no_device_message(node, out.rejected, explicit))
        if not explicit:
            self._last_resort(out)
        self._required(out)
        return out

    def _verdict(self, device: Device, device_id: str, node: "Node", footprint: int,
                 convert: bool = False) -> Verdict:
        if device_id in self.excluded:
            return Verdict(False, "excluded", self.excluded[device_id])
        if (device_id, node.name) in self.refused:
            return Verdict(False, "excluded:node", self.refused[(device_id, node.name)])
        if self.constraints.exclude and self.constraints.excludes(device):
            return Verdict(False, "constraint:excluded",
                           f"excluded by the session ({device.kind}, {device.backend})")
        caps = self._caps[device.backend]
        if not self._precisions[device.backend]:
            return Verdict(False, "precision",
                           f"computes at {sorted(caps.precisions)}, the session requires "
                           f"{self.precision}")
        verdict = caps.check(node)
        if not verdict and convert and verdict.code == "capability:version":
            target, verdict = conversion.admit(node, self.graph, caps, device.backend)
            if verdict:
                self.converted[(device_id, node.name)] = target
        if not verdict:
            return verdict
        dtype = node.primary_dtype or ""
        failed = self._failed[device_id]
        if (op_key(node.op_type, node.domain), dtype) in failed or \
                (node.op_type, dtype) in failed:
            return Verdict(False, "conformance:failed",
                           f"{node.op_type} {dtype} failed the stored conformance run of "
                           f"{device.backend} on this device ('backplane conformance run' "
                           "again after a fix)")
        capacity = self.model.profiles[device_id].memory_bytes
        if capacity and footprint > capacity * (1 - self.constraints.memory_headroom):
            return Verdict(False, "memory",
                           f"the node needs {footprint / 2**20:.0f} MiB, the device has "
                           f"{capacity / 2**20:.0f} MiB less "
                           f"{self.constraints.memory_headroom:.0%} headroom")
        return verdict

    @staticmethod
    def _last_resort(out: NodeCandidates) -> None:
        """The reference backend runs a node only when nothing else admits it."""
        fast = [o for o in out.options if o.device.backend != FALLBACK_BACKEND]
        if not fast or len(fast) == len(out.options):
            return
        for o in out.options:
            if o.device.backend == FALLBACK_BACKEND:
                out.rejected.append(Rejection(o.device_id, *LAST_RESORT))
        out.options = fast

    def _required(self, out: NodeCandidates) -> None:
        kind = self.constraints.device_class
        if kind is None:
            return
        keep = [o for o in out.options if o.device.kind == kind]
        if not keep:
            out.left_required = True
            return
        for o in out.options:
            if o.device.kind != kind:
                out.rejected.append(Rejection(
                    o.device_id, "constraint:device-class",
                    f"admits the node; the session requires a {kind} device"))
        out.options = keep


def failed_variants(backend: "Backend", prof: Any, device_id: str) -> set[tuple[str, str]]:
    """Op x dtype variants the stored conformance run marks failed on this device."""
    return qualification.failed_variants(backend.name, device_id, prof.fingerprint,
                                         str(backend.version))


def no_device_message(node: Any, rejected: list[Rejection], explicit: bool) -> str:
    reasons = "; ".join(f"{r.device}: {r.detail}" for r in rejected) or "no device at all"
    hint = (" Add a device that supports it to devices=, or include 'reference' as a last "
            "resort." if explicit else " Install a backend that supports it.")
    return f"no allowed device can run node '{node.name}' ({node.op_type}): {reasons}.{hint}"
