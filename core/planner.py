"""The plan: which device runs which node, and why, as data that explains itself.

This planner ranks devices in a fixed order (the explicit list when the caller gave one,
else backend priority) and gives each node to the first device that admits it, after a
selection-delegate hook has had its say. Consecutive nodes on one device are merged into
a partition. Every candidate that was not chosen keeps a reason code, so ``explain()``
can say why each node runs where it does. The cost-based scheduler replaces the ranking;
the Plan stays the same data.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from .contract import Device, Verdict
from .errors import UnsupportedError
from .registry import call_hook

if TYPE_CHECKING:  # pragma: no cover
    from .contract import Backend
    from .graph import Graph

FALLBACK_BACKEND = "reference"


@dataclass(frozen=True)
class Candidate:
    """A device that admits a node, as offered to the selection delegate."""

    device: Device
    rank: int

    @property
    def device_id(self) -> str:
        """The device's id."""
        return self.device.id


@dataclass(frozen=True)
class Rejection:
    """A device that does not run a node, with a reason code (``capability:dtype`` ...)."""

    device: str
    code: str
    detail: str


@dataclass
class Placement:
    """Where one node runs and why."""

    node: str
    op: str
    device: str
    backend: str
    reason: str
    fallback: bool = False
    rejected: list[Rejection] = field(default_factory=list)


@dataclass
class Partition:
    """A run of consecutive nodes on one device, compiled and run as one subgraph."""

    index: int
    device: str
    backend: str
    nodes: list[str]
    node_indices: list[int]
    inputs: list[str]
    outputs: list[str]
    transfers_in: list[str] = field(default_factory=list)
    fused: str = ""
    """What the fusion pass rewrote for this partition's backend (``"1 x FusedConvRelu"``)."""


@dataclass
class Plan:
    """A complete placement of a graph, with its events (re-plans, fallbacks)."""

    model: str
    policy: str
    precision: str
    explicit: bool
    devices: list[str]
    placements: list[Placement]
    partitions: list[Partition]
    events: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def uses_fallback(self) -> bool:
        """Whether any node runs on the reference backend as a last resort."""
        return any(p.fallback for p in self.placements)

    def device_of(self, node: str) -> str:
        """The device id a node runs on."""
        return next(p.device for p in self.placements if p.node == node)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as printed by ``backplane plan --json``."""
        return asdict(self)

    def explain(self) -> str:
        """A readable account of the plan: partitions, placements, rejections, events."""
        lines = [f"plan for '{self.model}': policy={self.policy}, precision={self.precision}, "
                 f"devices={'explicit' if self.explicit else 'auto'} "
                 f"[{', '.join(self.devices)}]"]
        lines += [f"note: {n}" for n in self.notes]
        for part in self.partitions:
            lines.append(f"partition {part.index} on {part.device} ({len(part.nodes)} node"
                         f"{'s' if len(part.nodes) != 1 else ''})"
                         + (f", data in from other devices: {', '.join(part.transfers_in)}"
                            if part.transfers_in else "")
                         + (f", fused for {part.backend}: {part.fused}" if part.fused else ""))
            for name in part.nodes:
                p = next(pl for pl in self.placements if pl.node == name)
                flag = "  [reference fallback]" if p.fallback else ""
                lines.append(f"  {p.node} ({p.op}) -> {p.device}: {p.reason}{flag}")
                for r in p.rejected:
                    lines.append(f"      not {r.device}: {r.code}: {r.detail}")
        lines += [f"event: {e}" for e in self.events]
        return "\n".join(lines)


def make_plan(graph: "Graph", devices: list[Device], backends: "dict[str, Backend]", *,
              precision: str, policy: str, explicit: bool,
              excluded: dict[str, str] | None = None) -> Plan:
    """Place every node of ``graph`` on one of ``devices`` (already in rank order).

    ``excluded`` maps device ids to the reason they may not be used (a failed compile or
    run); they stay in every node's rejections with the code ``excluded``.

    Raises:
        UnsupportedError: a node that no allowed device admits, naming each device's reason.
    """
    excluded = excluded or {}
    events: list[str] = []
    placements: list[Placement] = []
    for node in graph.nodes:
        admitted: list[Candidate] = []
        rejected: list[Rejection] = []
        for rank, device in enumerate(devices):
            verdict = _admits(backends[device.backend], device, node, precision, excluded)
            if verdict:
                admitted.append(Candidate(device, rank))
            else:
                rejected.append(Rejection(device.id, verdict.code, verdict.detail))
        if not admitted:
            raise UnsupportedError(_no_device_message(node, rejected, explicit))
        chosen, reason = admitted[0], ("first admitting device in the fixed order"
                                       if explicit else "highest-priority admitting backend")
        delegate = call_hook("backplane_select_device", firstresult=True, node=node,
                             candidates=list(admitted))
        if delegate is not None:
            if delegate in admitted:
                chosen, reason = delegate, "chosen by the selection delegate hook"
            else:
                events.append(f"selection delegate returned {delegate!r} for node "
                              f"'{node.name}', which is not one of its candidates; ignored")
        rejected += [Rejection(c.device_id, "not-chosen:rank",
                               f"admits the node; ranked {c.rank + 1} of {len(devices)}")
                     for c in admitted if c is not chosen]
        fallback = not explicit and all(c.device.backend == FALLBACK_BACKEND for c in admitted)
        if fallback:
            reason = "no faster backend admits this node; the reference backend runs it"
        placements.append(Placement(node.name, node.op_type, chosen.device_id,
                                    chosen.device.backend, reason, fallback, rejected))
    return Plan(graph.name, policy, precision, explicit,
                [d.id for d in devices if d.id not in excluded], placements,
                _partitions(graph, placements), events, list(graph.notes))


def _admits(backend: "Backend", device: Device, node: Any, precision: str,
            excluded: dict[str, str]) -> Verdict:
    if device.id in excluded:
        return Verdict(False, "excluded", excluded[device.id])
    caps = backend.capabilities
    if precision not in caps.precisions:
        return Verdict(False, "precision", f"computes at {sorted(caps.precisions)}, "
                                           f"the session requires {precision}")
    return caps.check(node)


def _no_device_message(node: Any, rejected: list[Rejection], explicit: bool) -> str:
    reasons = "; ".join(f"{r.device}: {r.detail}" for r in rejected) or "no device at all"
    hint = (" Add a device that supports it to devices=, or include 'reference' as a last "
            "resort." if explicit else " Install a backend that supports it.")
    return f"no allowed device can run node '{node.name}' ({node.op_type}): {reasons}.{hint}"


def _partitions(graph: "Graph", placements: list[Placement]) -> list[Partition]:
    groups: list[list[int]] = []
    for i, p in enumerate(placements):
        if groups and placements[groups[-1][-1]].device == p.device:
            groups[-1].append(i)
        else:
            groups.append([i])
    producer = {o: placements[i].device for i, n in enumerate(graph.nodes) for o in n.outputs}
    parts = []
    for k, idx in enumerate(groups):
        device = placements[idx[0]].device
        inputs, outputs = graph.boundary(idx)
        parts.append(Partition(
            k, device, placements[idx[0]].backend, [graph.nodes[i].name for i in idx], idx,
            inputs, outputs,
            transfers_in=[v for v in inputs if v in producer and producer[v] != device]))
    return parts
