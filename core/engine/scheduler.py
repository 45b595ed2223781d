"""The scheduler: which device, backend and precision runs each node, chosen by cost.

Planning a graph, in order:

1. Candidates. For every node, every device x precision whose backend admits the node
   (capabilities: op, dtype, shapes, attributes), whose stored conformance results do not
   mark that op x dtype as failed on that device, whose memory holds the node, and that
   the session's constraints allow. Every other device keeps a reason code. The reference
   backend is the last resort: a candidate only where nothing else admits the node.
2. Costs. :mod:`backplane.engine.costmodel` prices each candidate (roofline x backend efficiency
   x live load), each partition launch, and each copy between memory domains.
3. Assignment. Dynamic programming over the topological order minimises the policy's
   objective with launches and copies counted, so a node joins its neighbours' partition
   unless running elsewhere pays for the break; a pass over whole partitions then moves
   any that lower the exact total (copies of a value to one domain counted once). The
   ``throughput`` policy then keeps, of that plan, the one-device plans and the two-stage
   pipelines over every pair of paths, the one whose busiest device is least busy per
   request; ``efficiency`` minimises energy (time x power).
4. A selection delegate (the session's ``delegate=`` callable, or the
   ``backplane_select_device`` hook) sees each node's candidates with their costs, the
   default first, and may pin another; the assignment is then redone around the pins.
5. Partitions: nodes are regrouped by a topological order that keeps each device's nodes
   together, and every maximal run on one device x precision becomes one subgraph, the
   largest a graph compiler is handed, cut into even pieces where it is longer than the
   backend's ``max_partition_nodes``.

Every step takes time linear in the graph (the topological order's heap: n log n), so that
planning and compiling a model of 10,000 nodes takes seconds (docs/scheduler.md); only
memory fitting, which redoes the assignment once per node it moves, may take more.

The ``fixed-order`` policy replaces 2-3 by the first admitting device in priority order
(the explicit list's order when the caller named devices), as ONNX Runtime assigns nodes
to its execution providers; it exists to be compared against, and for explicit lists.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from backplane.engine import convert as conversion
from backplane import ops
from backplane.ops.costs import nbytes
from backplane.sdk.contract import Device, Verdict, op_key
from backplane.sdk.errors import UnsupportedError
from backplane.engine.plan import FALLBACK_BACKEND, Candidate, Partition, Placement, Plan, Rejection
from backplane.engine.registry import plugin_manager

if TYPE_CHECKING:  # pragma: no cover
    from backplane.sdk.contract import Backend
    from backplane.engine.costmodel import CostModel
    from backplane.model.graph import Graph, Node

#: Lower precisions ``precision="auto"`` may choose, cheapest first.
AUTO_PRECISIONS = ("int8", "fp16", "bf16")
#: Ops graph compilers fuse into the kernel producing their input.
EPILOGUE_OPS = frozenset({
    "Add", "Sub", "Mul", "Div", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid",
    "HardSwish", "Gelu", "Erf", "Exp", "Sqrt", "Pow", "Neg", "Abs", "Clip", "Where", "Cast",
    "BatchNormalization"})
#: Share of a device's memory kept free by default.
DEFAULT_HEADROOM = 0.1
#: What backplane itself adds to a run (input checks, the executor's bookkeeping), as
#: measured by benchmarks/bench_cpu_backends.py: about 5 us per call.
CALL_OVERHEAD_S = 5e-6
LAST_RESORT = ("not-chosen:last-resort",
               "admits the node; the reference backend runs only what no other admits")
#: Whole-partition moves tried after the assignment, at most.
MAX_MOVES = 200
#: How much slower the nodes in one memory domain are predicted to run when partitions of
#: two or more runtimes share it: their worker threads contend for the same cores and
#: caches (on 2 cores, a ResNet split between OpenVINO and ONNX Runtime ran 4x slower than
#: on either alone). A plan mixes runtimes in a domain only where that is predicted to pay
#: even so, or where no one runtime admits every node.
RUNTIME_INTERFERENCE = 1.0


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
class _Option:
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

    def __post_init__(self) -> None:
        self.key = (self.device_id, self.precision)


@dataclass
class _NodeCandidates:
    options: list[_Option] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    left_required: bool = False


def plan_model(model: Any, devices: Any = "auto", *, policy: str = "latency",
               precision: str = "fp32", constraints: Constraints | None = None) -> Plan:
    """Plan a model (a path, bytes, ModelProto or loaded Graph) without compiling it."""
    from backplane.model.graph import Graph
    from backplane.model.intake import load_model
    from backplane.engine.registry import registry

    graph = model if isinstance(model, Graph) else load_model(model)
    reg = registry()
    explicit, found = reg.resolve_devices(devices)
    return schedule(graph, found, reg.backends, policy=policy, precision=precision,
                    explicit=explicit, constraints=constraints)


def schedule(graph: "Graph", devices: list[Device], backends: "Mapping[str, Backend]", *,
             policy: str = "latency", precision: str = "fp32", explicit: bool = False,
             excluded: Mapping[str, str] | None = None,
             banned: Mapping[tuple[str, str], Any] | None = None,
             constraints: Constraints | None = None, strict: bool = False,
             refused: Mapping[tuple[str, str], str] | None = None,
             delegate: Callable[..., Any] | None = None,
             pins: Mapping[str, tuple[str, str]] | None = None) -> Plan:
    """Place every node of ``graph`` on one of ``devices``.

    Args:
        devices: in rank order (priority, or the caller's explicit order).
        policy: ``latency``, ``throughput``, ``efficiency`` or ``fixed-order``; explicit
            device lists are placed in their order whatever the policy.
        precision: ``fp32`` (and the other fixed precisions) or ``auto``.
        excluded: device id -> why it may not be used (a failed compile or run).
        banned: (device id, precision) -> why that path may not be used: a text (it missed
            the accuracy budget: ``precision:budget``), or ``(code, text)`` (it failed to
            compile there: ``excluded``).
        constraints: required / excluded device classes and memory headroom.
        refused: (device id, node name) -> why that device may not run that node (its
            compile refused the node, and only it: ``excluded:node``).
        strict: with a required device class, refuse nodes that would leave it.
        delegate: ``delegate(node, candidates) -> Candidate | None``.
        pins: node name -> (device id, precision), fixed in advance (a tuned plan).

    Raises:
        UnsupportedError: a node no allowed device admits, naming each device's reason; or,
            when strict, the nodes that would leave the required device class.
    """
    from backplane.engine import costmodel

    constraints = constraints or Constraints()
    excluded, banned = dict(excluded or {}), dict(banned or {})
    model_key = costmodel.graph_key(graph)
    model = costmodel.for_devices(devices, dict(backends), model_key)
    ctx = _Context(graph, devices, backends, model, precision, constraints, excluded, banned,
                   dict(refused or {}))
    cands = [ctx.candidates(node, explicit) for node in graph.nodes]
    _check_required(graph, cands, constraints, strict)
    fixed = explicit or policy == "fixed-order"
    objective = "energy" if policy == "efficiency" else "time"
    events: list[str] = []
    pinned = _pin_options(graph, cands, pins or {}, events)
    choice = (_fixed_choice(cands, pinned) if fixed
              else ctx.assign(cands, pinned, objective, policy))
    overrides = _delegate(graph, cands, choice, delegate, events)
    if overrides:
        pinned.update(overrides)
        choice = (_fixed_choice(cands, pinned) if fixed
                  else ctx.assign(cands, pinned, objective, policy))
    choice = ctx.fit_memory(cands, choice, pinned, objective, policy, fixed, events)
    placements = ctx.placements(cands, choice, fixed, explicit, overrides, pins or {})
    parts, back = ctx.partitions(cands, choice, events)
    plan = Plan(graph.name, policy, precision, explicit,
                [d.id for d in devices if d.id not in excluded], placements, parts,
                events, list(graph.notes))
    plan.predicted_s = CALL_OVERHEAD_S + sum(p.predicted_s for p in parts) + back
    plan.predicted_energy_j = sum(p.predicted_energy_j for p in parts)
    plan.load = {d.id: model.slowdown[d.id][1] for d in devices if d.id not in excluded}
    plan.versions = {d.backend: str(backends[d.backend].version) for d in devices}
    plan.fingerprints = {d.id: model.profiles[d.id].fingerprint for d in devices}
    plan.corrections = dict(model.correction)
    plan.model_key = model_key
    plan.cost_basis = {d.id: f"{'; '.join(model.profiles[d.id].basis)}; backend: "
                             f"{model.rates[d.id].source}"
                       for d in devices if d.id not in excluded}
    plan.notes += _special_values(plan)
    return plan


def _special_values(plan: Plan) -> list[str]:
    """Notes on the backends of ``plan`` that differ from the oracle on NaN, infinity or
    the sign of zero for ops they run (recorded by conformance runs; never raises)."""
    try:
        from backplane.conformance.store import special_value_note
    except ImportError:
        return []
    return special_value_note(plan)


def _check_required(graph: "Graph", cands: list[_NodeCandidates], constraints: Constraints,
                    strict: bool) -> None:
    left = [graph.nodes[i] for i, c in enumerate(cands) if c.left_required]
    if left and strict:
        names = ", ".join(f"'{n.name}' ({n.op_type})" for n in left[:10])
        more = f" and {len(left) - 10} more" if len(left) > 10 else ""
        raise UnsupportedError(
            f"strict: {len(left)} node(s) would leave the required device class "
            f"'{constraints.device_class}': {names}{more}; no {constraints.device_class} device admits "
            "them. Drop strict=True to let them fall back, or require another class.")


def _pin_options(graph: "Graph", cands: list[_NodeCandidates],
                 pins: Mapping[str, tuple[str, str]], events: list[str]) -> dict[int, int]:
    """Node index -> option index for the pinned nodes whose pin is still a candidate."""
    out: dict[int, int] = {}
    for i, node in enumerate(graph.nodes):
        want = pins.get(node.name)
        if want is None:
            continue
        k = next((k for k, o in enumerate(cands[i].options) if o.key == tuple(want)), None)
        if k is None:
            events.append(f"pinned path {want[0]} at {want[1]} for node '{node.name}' is no "
                          "longer a candidate; planned by cost instead")
        else:
            out[i] = k
    return out


def _fixed_choice(cands: list[_NodeCandidates], pinned: Mapping[int, int]) -> list[int]:
    """The first candidate in rank order (fp32 before lower precisions), or the pin."""
    return [pinned.get(i, 0) for i in range(len(cands))]


def _delegate(graph: "Graph", cands: list[_NodeCandidates], choice: list[int],
              delegate: Callable[..., Any] | None, events: list[str]) -> dict[int, int]:
    """Ask the session's delegate, else the hook, about every node; the overrides."""
    overrides: dict[int, int] = {}
    for i, node in enumerate(graph.nodes):
        options = cands[i].options
        offered = [_candidate(options[choice[i]], True)] + [
            _candidate(o, False) for k, o in enumerate(options) if k != choice[i]]
        try:
            picked = (delegate(node, list(offered)) if delegate is not None else
                      plugin_manager().hook.backplane_select_device(
                          node=node, candidates=list(offered)))
        except Exception as exc:  # a broken delegate never breaks planning
            events.append(f"selection delegate raised {type(exc).__name__}: {exc} for node "
                          f"'{node.name}'; the default was kept")
            continue
        if picked is None or picked == offered[0]:
            continue
        if picked not in offered:
            events.append(f"selection delegate returned {picked!r} for node '{node.name}', "
                          "which is not one of its candidates; ignored")
            continue
        overrides[i] = next(k for k, o in enumerate(options)
                            if (o.device_id, o.precision) == (picked.device.id, picked.precision))
    return overrides


def _candidate(o: _Option, default: bool) -> Candidate:
    return Candidate(o.device, o.rank, o.precision, o.seconds, o.energy, default)


class _Context:
    """Everything one planning pass reads, and the steps that use it."""

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
        self._failed = {d.id: _failed_variants(backends[d.backend], model.profiles[d.id], d.id)
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

    def candidates(self, node: "Node", explicit: bool) -> _NodeCandidates:
        """Every path that may run ``node``, priced, and every device's reason if not."""
        out = _NodeCandidates()
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
                if constant and compiler:
                    seconds = self.model.folded_time(device_id)
                else:
                    seconds = self.model.node_time(node, device_id, precision, cost,
                                                   quantized, fused=epilogue and compiler)
                out.options.append(_Option(device, device_id, domain, precision, rank, seconds,
                                           self.model.energy(seconds, device_id)))

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
            raise UnsupportedError(_no_device_message(node, out.rejected, explicit))
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
    def _last_resort(out: _NodeCandidates) -> None:
        """The reference backend runs a node only when nothing else admits it."""
        fast = [o for o in out.options if o.device.backend != FALLBACK_BACKEND]
        if not fast or len(fast) == len(out.options):
            return
        for o in out.options:
            if o.device.backend == FALLBACK_BACKEND:
                out.rejected.append(Rejection(o.device_id, *LAST_RESORT))
        out.options = fast

    def _required(self, out: _NodeCandidates) -> None:
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

    # -- assignment ------------------------------------------------------------------------

    def _price(self, o: _Option, objective: str) -> float:
        return o.energy if objective == "energy" else o.seconds

    def _launch(self, o: _Option, objective: str) -> float:
        t = self._launch_s[o.device_id]
        return self.model.energy(t, o.device_id) if objective == "energy" else t

    def _io(self, nbytes: int, o: _Option, objective: str) -> float:
        """A call into ``o``'s runtime copying ``nbytes`` in or out."""
        t = self.model.io_time(o.device_id, nbytes)
        return self.model.energy(t, o.device_id) if objective == "energy" else t

    def _move(self, nbytes: int, src: _Option | None, dst: _Option | None,
              objective: str) -> float:
        """Copying a value between the paths (None: the caller, on the host)."""
        if (src.domain if src else "host") == (dst.domain if dst else "host"):
            return 0.0
        t = self.model.transfer_time(nbytes, src.device_id if src else None,
                                     dst.device_id if dst else None)
        if objective == "energy":
            side = dst if dst is not None else src
            return self.model.energy(t, side.device_id) if side is not None else t
        return t

    def assign(self, cands: list[_NodeCandidates], pinned: Mapping[int, int],
               objective: str, policy: str) -> list[int]:
        """The option index of every node: DP, whole-partition moves, then the cheapest of
        that and the one-path plans by the exact total (which prices runtime interference,
        which the DP does not see); for ``throughput``, the least bottlenecked of those and
        the two-stage pipelines."""
        choice = self._dp(cands, pinned, objective)
        choice = self._improve(cands, choice, pinned, objective)
        keys = sorted({o.key for c in cands for o in c.options})
        if self._mixes_runtimes(cands, choice):
            plans = [choice] + [self._single(cands, choice, pinned, key) for key in keys]
            choice = min(plans, key=lambda ch: self.total(cands, ch, objective))
        if policy == "throughput":
            plans = [choice] + [self._single(cands, choice, pinned, key) for key in keys]
            plans += [self._pipeline(cands, choice, pinned, a, b)
                      for a in keys for b in keys if a != b]
            choice = min(plans, key=lambda ch: (self._bottleneck(cands, ch),
                                                 self.total(cands, ch, objective)))
        return choice

    @staticmethod
    def _mixes_runtimes(cands: list[_NodeCandidates], choice: list[int]) -> bool:
        """Whether two runtimes share a memory domain in an assignment."""
        seen: dict[str, str] = {}
        for i, k in enumerate(choice):
            o = cands[i].options[k]
            if seen.setdefault(o.domain, o.device.backend) != o.device.backend:
                return True
        return False

    def _pipeline(self, cands: list[_NodeCandidates], base: list[int],
                  pinned: Mapping[int, int], a: tuple[str, str], b: tuple[str, str]
                  ) -> list[int]:
        """A two-stage pipeline: the nodes before a split on path ``a``, the rest on
        ``b`` (where they admit it), split where the two stages are most even, so that
        consecutive requests keep both devices busy."""
        n = len(cands)

        def index(i: int, key: tuple[str, str]) -> int | None:
            if i in pinned:
                return None
            return next((k for k, o in enumerate(cands[i].options) if o.key == key), None)

        on_a = [index(i, a) for i in range(n)]
        on_b = [index(i, b) for i in range(n)]
        time_a = [cands[i].options[k].seconds if k is not None else 0.0
                  for i, k in enumerate(on_a)]
        time_b = [cands[i].options[k].seconds if k is not None else 0.0
                  for i, k in enumerate(on_b)]
        head, tail = 0.0, sum(time_b)
        best_split, best = 0, tail
        for split in range(1, n + 1):
            head += time_a[split - 1]
            tail -= time_b[split - 1]
            if max(head, tail) < best:
                best_split, best = split, max(head, tail)
        out = list(base)
        for i in range(n):
            k = on_a[i] if i < best_split else on_b[i]
            if k is not None:
                out[i] = k
        return out

    def _dp(self, cands: list[_NodeCandidates], pinned: Mapping[int, int],
            objective: str) -> list[int]:
        """Least cost over the topological order, the state being the current node's path:
        a step to another path pays its launch, the I/O of its inputs and their copies;
        inputs from further back are free where their node admits the same path, and
        otherwise priced from their node's likeliest path."""
        nodes = self.graph.nodes
        n = len(nodes)
        if n == 0:
            return []
        best: list[list[float]] = []
        back: list[list[int]] = []
        # A value from further back is free where its node could be on the same path
        # (the exact total, and the moves after, check that), else it comes from the
        # path its node most likely takes.
        assumed: list[_Option] = []
        keys_of = [{o.key for o in c.options} for c in cands]
        for i, node in enumerate(nodes):
            options = cands[i].options
            allowed = [pinned[i]] if i in pinned else range(len(options))
            reads = self.reads(node)
            row = [math.inf] * len(options)
            brow = [0] * len(options)
            outs = [v for v in node.outputs if v in self.outputs]
            for k in allowed:
                o = options[k]
                own = self._price(o, objective) + sum(
                    self._move(self.nbytes(v), o, None, objective)
                    + self._io(self.nbytes(v), o, objective) for v in outs)
                far = 0.0  # inputs from nodes before the previous one, or from the caller
                near = []
                for v in reads:
                    p = self.producer.get(v)
                    if p is None:
                        far += self._move(self.nbytes(v), None, o, objective) + \
                            self._io(self.nbytes(v), o, objective)
                    elif p == i - 1:
                        near.append(v)
                    elif o.key not in keys_of[p]:
                        far += self._move(self.nbytes(v), assumed[p], o, objective) + \
                            self._io(self.nbytes(v), o, objective)
                launch = self._launch(o, objective)
                if i == 0:
                    row[k] = own + far + launch
                    continue
                prev_options = cands[i - 1].options
                for j, prev in enumerate(prev_options):
                    if best[i - 1][j] == math.inf:
                        continue
                    step = best[i - 1][j] + own + far
                    if prev.key != o.key:
                        step += launch + sum(self._io(self.nbytes(v), o, objective)
                                             for v in near)
                        if prev.domain != o.domain:
                            step += sum(self._move(self.nbytes(v), prev, o, objective)
                                        for v in near)
                    if step < row[k]:
                        row[k], brow[k] = step, j
            best.append(row)
            back.append(brow)
            assumed.append(options[min(range(len(options)), key=row.__getitem__)])
        k = min(range(len(best[-1])), key=best[-1].__getitem__)
        choice = [0] * n
        for i in range(n - 1, -1, -1):
            choice[i] = k
            k = back[i][k]
        return choice

    def total(self, cands: list[_NodeCandidates], choice: list[int], objective: str) -> float:
        """The exact objective of an assignment: nodes, one launch per partition, and one
        copy per value per destination domain."""
        nodes = self.graph.nodes
        total = 0.0
        moved: set[tuple[str, str]] = set()
        prev_key = None
        runtimes: dict[str, set[str]] = {}
        work: dict[str, float] = {}
        for i, node in enumerate(nodes):
            o = cands[i].options[choice[i]]
            price = self._price(o, objective)
            total += price
            runtimes.setdefault(o.domain, set()).add(o.device.backend)
            work[o.domain] = work.get(o.domain, 0.0) + price
            if o.key != prev_key:
                total += self._launch(o, objective)
                prev_key = o.key
            for v in self.reads(node):
                p = self.producer.get(v)
                src = cands[p].options[choice[p]] if p is not None else None
                if (src.domain if src else "host") != o.domain and (v, o.domain) not in moved:
                    moved.add((v, o.domain))
                    total += self._move(self.nbytes(v), src, o, objective)
                if (src is None or src.key != o.key) and (v, o.key) not in moved:
                    moved.add((v, o.key))
                    total += self._io(self.nbytes(v), o, objective)
            total += sum(self._move(self.nbytes(v), o, None, objective)
                         + self._io(self.nbytes(v), o, objective)
                         for v in node.outputs if v in self.outputs)
        return total + sum(RUNTIME_INTERFERENCE * work[d] for d, r in runtimes.items()
                           if len(r) > 1)

    def _improve(self, cands: list[_NodeCandidates], choice: list[int],
                 pinned: Mapping[int, int], objective: str) -> list[int]:
        """Move whole partitions to another path where that lowers the exact total (one
        partition on one path: the DP has priced every one-path plan already)."""
        if len(_runs(cands, choice)) < 2:
            return choice
        current = self.total(cands, choice, objective)
        tries = 0
        improved = True
        while improved and tries < MAX_MOVES:
            improved = False
            for run in _runs(cands, choice):
                if any(i in pinned for i in run):
                    continue
                keys = set.intersection(*({o.key for o in cands[i].options} for i in run))
                for key in keys - {cands[run[0]].options[choice[run[0]]].key}:
                    tries += 1
                    trial = list(choice)
                    for i in run:
                        trial[i] = next(k for k, o in enumerate(cands[i].options)
                                        if o.key == key)
                    cost = self.total(cands, trial, objective)
                    if cost < current - 1e-12:
                        choice, current, improved = trial, cost, True
                        break
                if improved or tries >= MAX_MOVES:
                    break
        return choice

    def _single(self, cands: list[_NodeCandidates], base: list[int],
                pinned: Mapping[int, int], key: tuple[str, str]) -> list[int]:
        """``base`` with every node that admits the path ``key`` moved onto it."""
        out = list(base)
        for i, c in enumerate(cands):
            if i in pinned:
                continue
            k = next((k for k, o in enumerate(c.options) if o.key == key), None)
            if k is not None:
                out[i] = k
        return out

    def _bottleneck(self, cands: list[_NodeCandidates], choice: list[int]) -> float:
        """Busy seconds of the busiest device per request (throughput's objective)."""
        busy: dict[str, float] = {}
        prev_key = None
        for i, k in enumerate(choice):
            o = cands[i].options[k]
            busy[o.device_id] = busy.get(o.device_id, 0.0) + o.seconds + (
                self.model.launch_time(o.device_id) if o.key != prev_key else 0.0)
            prev_key = o.key
        return max(busy.values(), default=0.0)

    def fit_memory(self, cands: list[_NodeCandidates], choice: list[int],
                   pinned: dict[int, int], objective: str, policy: str, fixed: bool,
                   events: list[str]) -> list[int]:
        """Move the heaviest nodes off any device whose weights would not fit."""
        for _ in range(len(self.graph.nodes)):
            over = self._over_capacity(cands, choice)
            if over is None:
                return choice
            device_id, weights, capacity = over
            on_device = [i for i, k in enumerate(choice)
                         if cands[i].options[k].device_id == device_id
                         and len(cands[i].options) > 1]
            if not on_device:
                raise UnsupportedError(
                    f"the model's weights on {device_id} ({weights / 2**20:.0f} MiB) exceed "
                    f"its memory less headroom ({capacity / 2**20:.0f} MiB), and no other "
                    "device admits those nodes; lower memory_headroom or add a device")
            heaviest = max(on_device, key=lambda i: self._weights(self.graph.nodes[i]))
            detail = (f"the weights planned on {device_id} ({weights / 2**20:.0f} MiB) "
                      f"exceed its memory less headroom ({capacity / 2**20:.0f} MiB)")
            keep = [o for o in cands[heaviest].options if o.device_id != device_id]
            cands[heaviest].rejected += [Rejection(device_id, "memory", detail)]
            cands[heaviest].options = keep
            pinned.pop(heaviest, None)
            events.append(f"node '{self.graph.nodes[heaviest].name}' moved off {device_id}: "
                          f"{detail}")
            choice = (_fixed_choice(cands, pinned) if fixed
                      else self.assign(cands, pinned, objective, policy))
        return choice

    def _weights(self, node: "Node") -> int:
        return sum(self.nbytes(v) for v in node.inputs if v in self.graph.initializers)

    def _over_capacity(self, cands: list[_NodeCandidates], choice: list[int]
                       ) -> tuple[str, int, float] | None:
        per_device: dict[str, int] = {}
        for i, k in enumerate(choice):
            device = cands[i].options[k].device_id
            per_device[device] = per_device.get(device, 0) + self._weights(self.graph.nodes[i])
        for device_id, weights in per_device.items():
            capacity = self.model.profiles[device_id].memory_bytes
            if capacity and weights > capacity * (1 - self.constraints.memory_headroom):
                return device_id, weights, capacity * (1 - self.constraints.memory_headroom)
        return None

    # -- the plan --------------------------------------------------------------------------

    def placements(self, cands: list[_NodeCandidates], choice: list[int], fixed: bool,
                   explicit: bool, overrides: Mapping[int, int], pins: Mapping[str, Any]
                   ) -> list[Placement]:
        """Each node's placement, its reason, and a rejection for every other device."""
        out = []
        for i, node in enumerate(self.graph.nodes):
            c = cands[i]
            o = c.options[choice[i]]
            rejected = list(c.rejected)
            for k, other in enumerate(c.options):
                if k == choice[i]:
                    continue
                if i in overrides:
                    code, detail = "not-chosen:delegate", "the selection delegate chose another"
                elif fixed:
                    code, detail = "not-chosen:rank", (f"admits the node; ranked "
                                                       f"{other.rank + 1} of {len(self.devices)}")
                else:
                    code, detail = "not-chosen:cost", (
                        f"predicted {_us(other.seconds)} at {other.precision} here against "
                        f"{_us(o.seconds)} chosen, before launches, copies and runtime "
                        "interference")
                rejected.append(Rejection(other.device_id, code, detail))
            fallback = o.device.backend == FALLBACK_BACKEND and not any(
                opt.device.backend != FALLBACK_BACKEND for opt in c.options) and not explicit
            if i in overrides:
                reason = "chosen by the selection delegate"
            elif node.name in pins:
                reason = "the tuned plan's choice, measured on sample inputs"
            elif fallback:
                reason = "no faster backend admits this node; the reference backend runs it"
            elif fixed:
                reason = "first admitting device in the fixed order"
            else:
                reason = "lowest predicted cost with launches and copies counted"
            if c.left_required:
                reason += (f"; no {self.constraints.device_class} device admits it, so it falls "
                           "back")
            opset = self.converted.get((o.device_id, node.name))
            if opset:
                reason += (f"; no allowed backend runs {node.op_type}-{node.version} as it "
                           f"is, so it runs converted from opset {node.opset} to {opset}, "
                           "checked against the original on sample inputs")
            out.append(Placement(node.name, node.op_type, o.device_id, o.device.backend,
                                 reason, fallback, rejected, o.precision, o.seconds))
        return out

    def partitions(self, cands: list[_NodeCandidates], choice: list[int],
                   events: list[str] | None = None) -> tuple[list[Partition], float]:
        """The partitions of an assignment, and the seconds to return outputs to the host.

        Nodes are ordered topologically preferring, at each step, a ready node on the
        current path, so independent branches on one device end up in one partition; a run
        longer than its backend's ``max_partition_nodes`` is cut into even pieces (an event
        says so).
        """
        graph = self.graph
        n = len(graph.nodes)
        chosen = [cands[i].options[choice[i]] for i in range(n)]
        runtimes: dict[str, set[str]] = {}
        for o in chosen:
            runtimes.setdefault(o.domain, set()).add(o.device.backend)
        contended = {d for d, r in runtimes.items() if len(r) > 1}
        deps = [{self.producer[v] for v in graph.node_reads(i) if v in self.producer} - {i}
                for i in range(n)]
        consumers: list[list[int]] = [[] for _ in range(n)]
        for i, d in enumerate(deps):
            for p in d:
                consumers[p].append(i)
        waiting = [len(d) for d in deps]
        ready_by_key: dict[tuple[str, str], list[int]] = {}
        ready: list[int] = []
        for i in range(n):
            if not waiting[i]:
                heapq.heappush(ready, i)
                heapq.heappush(ready_by_key.setdefault(chosen[i].key, []), i)
        done = [False] * n
        groups: list[list[int]] = []
        key = None
        while ready:
            same = ready_by_key.get(key) if key is not None else None
            while same and done[same[0]]:
                heapq.heappop(same)
            if same:
                i = heapq.heappop(same)
            else:
                i = heapq.heappop(ready)
                while done[i]:
                    i = heapq.heappop(ready)
            done[i] = True
            if groups and chosen[i].key == key:
                groups[-1].append(i)
            else:
                groups.append([i])
                key = chosen[i].key
            for c in consumers[i]:
                waiting[c] -= 1
                if not waiting[c]:
                    heapq.heappush(ready, c)
                    heapq.heappush(ready_by_key.setdefault(chosen[c].key, []), c)
            while ready and done[ready[0]]:
                heapq.heappop(ready)
        groups = self._capped(groups, chosen, events if events is not None else [])
        where = [0] * n
        for g, idx in enumerate(groups):
            for i in idx:
                where[i] = g
        readers: dict[str, set[int]] = {}
        for i in range(n):
            for v in graph.node_reads(i):
                readers.setdefault(v, set()).add(where[i])
        parts = []
        for g, idx in enumerate(groups):
            idx = sorted(idx)
            o = chosen[idx[0]]
            produced: set[str] = set()
            inputs: list[str] = []
            listed: set[str] = set()
            for i in idx:
                for v in sorted(graph.node_reads(i)):
                    if v not in produced and v not in listed and v not in graph.initializers:
                        listed.add(v)
                        inputs.append(v)
                produced.update(x for x in graph.nodes[i].outputs if x)
            outputs = [x for i in idx for x in graph.nodes[i].outputs
                       if x and (x in self.outputs or readers.get(x, set()) - {g})]
            sources = {v: chosen[self.producer[v]].device if v in self.producer else None
                       for v in inputs}
            crossing = [v for v in inputs if (self.model.domain(sources[v].id)
                                              if sources[v] else "host")
                        != self.model.domain(o.device_id)]
            transfer = sum(self.model.transfer_time(self.nbytes(v),
                                                    sources[v].id if sources[v] else None,
                                                    o.device_id) for v in crossing)
            launch = self.model.launch_time(o.device_id) + self.model.io_time(
                o.device_id, sum(self.nbytes(v) for v in inputs + outputs))
            slowdown = 1 + RUNTIME_INTERFERENCE if o.domain in contended else 1
            seconds = launch + slowdown * sum(chosen[i].seconds for i in idx) + transfer
            parts.append(Partition(
                g, o.device_id, o.device.backend, [graph.nodes[i].name for i in idx], idx,
                inputs, outputs,
                transfers_in=[v for v in inputs if v in self.producer
                              and chosen[self.producer[v]].device_id != o.device_id],
                precision=o.precision, predicted_s=seconds,
                predicted_energy_j=self.model.energy(seconds, o.device_id),
                transfer_s=transfer,
                opset=max((self.converted.get((o.device_id, graph.nodes[i].name), 0)
                           for i in idx), default=0)))
        back = sum(self.model.transfer_time(self.nbytes(v), chosen[self.producer[v]].device_id,
                                            None)
                   for v in self.outputs if v in self.producer)
        return parts, back


    def _capped(self, groups: list[list[int]], chosen: list[_Option], events: list[str]
                ) -> list[list[int]]:
        """``groups`` with each longer than its backend's ``max_partition_nodes`` cut, in
        its own (topological) order, into the fewest pieces of at most that many nodes, of
        even size (a node with subgraphs counts its bodies' nodes too)."""
        out: list[list[int]] = []
        for idx in groups:
            backend = chosen[idx[0]].device.backend
            cap = getattr(self.backends[backend], "max_partition_nodes", None)
            sizes = [1 + len(self.graph.nodes[i].body) for i in idx]
            total = sum(sizes)
            if not cap or total <= cap:
                out.append(idx)
                continue
            k = -(-total // cap)
            pieces: list[list[int]] = [[]]
            weight = done = 0
            for i, size in zip(idx, sizes):
                # a new piece at each k-th of the run, or where this one would pass the cap
                if pieces[-1] and (weight + size > cap or done * k >= len(pieces) * total):
                    pieces.append([])
                    weight = 0
                pieces[-1].append(i)
                weight += size
                done += size
            out.extend(pieces)
            events.append(f"{total} nodes in a row on {chosen[idx[0]].device_id} cut into "
                          f"{len(pieces)} partitions of at most {cap} nodes: {backend}'s "
                          "compile time grows faster than the graph it is handed")
        return out


def _runs(cands: list[_NodeCandidates], choice: list[int]) -> list[list[int]]:
    """Maximal runs of consecutive nodes on one path."""
    runs: list[list[int]] = []
    prev = None
    for i, k in enumerate(choice):
        key = cands[i].options[k].key
        if runs and key == prev:
            runs[-1].append(i)
        else:
            runs.append([i])
        prev = key
    return runs


def _failed_variants(backend: "Backend", prof: Any, device_id: str) -> set[tuple[str, str]]:
    """Op x dtype variants the stored conformance run marks failed on this device."""
    try:
        from backplane.conformance.store import failed_variants, store_key
    except ImportError:
        return set()
    try:
        return failed_variants(backend.name, store_key(device_id, prof.fingerprint),
                               str(backend.version))
    except Exception:  # an unreadable store is no result, never a planning failure
        return set()


def _no_device_message(node: Any, rejected: list[Rejection], explicit: bool) -> str:
    reasons = "; ".join(f"{r.device}: {r.detail}" for r in rejected) or "no device at all"
    hint = (" Add a device that supports it to devices=, or include 'reference' as a last "
            "resort." if explicit else " Install a backend that supports it.")
    return f"no allowed device can run node '{node.name}' ({node.op_type}): {reasons}.{hint}"


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:.1f} µs" if seconds < 1e-3 else f"{seconds * 1e3:.2f} ms"


__all__ = ["AUTO_PRECISIONS", "Constraints", "plan_model", "schedule"]
