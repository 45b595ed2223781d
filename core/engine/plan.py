"""The plan: which device runs which node, at which precision, and why, as data that
explains itself.

:mod:`backplane.engine.scheduler` makes plans; this module is their data. Every node has a
placement (device, backend, precision, predicted time, reason) and keeps, for every device
that does not run it, a reason code:

==========================  =============================================================
``capability:op``           no kernel: the backend does not implement the op
``capability:dtype``        the op is implemented, not for this element type
``capability:version``      the op is implemented, not at the node's version (opset)
``capability:dynamic-shape`` the backend needs static shapes
``capability:rank``         rank outside the backend's limits
``capability:attribute``    an attribute value outside the backend's limits
``capability:constant-input`` an input the backend needs constant is computed at run time
``capability:output``       the node asks for an optional output the backend gets wrong
``capability:input``        the node gives an optional input the backend ignores
``capability:shape``        an input that must hold one element may hold several
``precision``               the backend cannot compute at the session's precision
``precision:budget``        a lower-precision path missed the accuracy budget (measured)
``conformance:failed``      this op x dtype failed the stored conformance run there
``memory``                  the node, or the weights planned there, do not fit
``constraint:excluded``     excluded by the session (class, backend or device)
``constraint:device-class`` the session requires another device class
``excluded``                failed to compile or run in this session
``excluded:node``           its compile refused this node in this session
``not-chosen:cost``         admits the node; another path is predicted cheaper
``not-chosen:rank``         admits the node; ranked lower in a fixed order
``not-chosen:last-resort``  the reference backend runs only what no other admits
``not-chosen:delegate``     the selection delegate chose another
==========================  =============================================================

Consecutive nodes on one device x precision form a partition, compiled and run as one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from backplane.sdk.contract import Device
from backplane.sdk.text import MESSAGE_LIMIT, shown

FALLBACK_BACKEND = "reference"
#: Nodes the summary of :meth:`Plan.explain` names, costliest first.
COSTLIEST = 10
#: Partitions the default :meth:`Plan.explain` lists (the costliest, in plan order).
PARTITIONS_SHOWN = 20
#: Notes, events, and names of a list (data in from other devices, fallback ops) the
#: default :meth:`Plan.explain` lists.
LISTED = 10
#: Characters per line of the default :meth:`Plan.explain` (verbose: MESSAGE_LIMIT).
LINE_LIMIT = 500


@dataclass(frozen=True)
class Candidate:
    """A path that admits a node, as offered to a selection delegate.

    Attributes:
        device: the device (its backend is ``device.backend``).
        rank: its place in the device order (priority, or the caller's list).
        precision: the precision it would compute at.
        predicted_s: predicted seconds of the node alone there, without launch or copies.
        energy_j: predicted joules of the same.
        default: whether this is the scheduler's choice.
    """

    device: Device
    rank: int
    precision: str = "fp32"
    predicted_s: float = 0.0
    energy_j: float = 0.0
    default: bool = False

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
    precision: str = "fp32"
    predicted_s: float = 0.0


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
    precision: str = "fp32"
    predicted_s: float = 0.0
    """Launch, nodes and copies in, predicted."""
    predicted_by_family: dict[str, float] = field(default_factory=dict)
    """Predicted seconds of its nodes per op family (``matmul``, ``conv`` ...: the cost
    model's families) before anything learned from past runs, with ``fixed`` (launch,
    copies into the runtime, per-node overheads) and ``transfer`` (copies from other
    memory domains, where any): what a measured run of it teaches the cost model
    (:func:`backplane.engine.costmodel.observe_partition`)."""
    predicted_energy_j: float = 0.0
    transfer_s: float = 0.0
    """The predicted share of ``predicted_s`` spent copying inputs from other domains."""
    measured_s: float | None = None
    """Median of this partition's recent runs in this session (None before a run)."""
    path: str = ""
    """How its backend compiled it, where a backend has several paths (set at compile:
    :attr:`backplane.Executable.path`)."""
    opset: int = 0
    """The default-domain opset the partition is converted to for its backend, which runs
    some of its nodes only at a newer version (:mod:`backplane.engine.convert`); 0: as the model is."""


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
    predicted_s: float = 0.0
    """Predicted seconds per run: every partition in order, and outputs back to the host."""
    predicted_energy_j: float = 0.0
    load: dict[str, str] = field(default_factory=dict)
    """Live load per device at planning time, in words."""
    cost_basis: dict[str, str] = field(default_factory=dict)
    """Where each device's figures came from (calibrated, datasheet, derived, defaults)."""
    precision_checks: list[dict[str, Any]] = field(default_factory=list)
    """For ``precision="auto"``: each lower-precision plan checked against the reference,
    with its measured error and whether it was kept."""
    predicted_peak_bytes: int = 0
    """Peak bytes of the values held between partitions, from the inferred shapes (set
    once the plan is compiled; ``Session.memory`` has the measured peaks)."""
    tuned: str = ""
    """How measured selection chose this plan, in words (measured, or from the database)."""
    selection: dict[str, Any] = field(default_factory=dict)
    """How this plan was chosen: ``how`` is ``predicted`` (the cost model separated the
    candidates, or tuning was off), ``measured`` (the candidates were timed on this
    machine), ``database`` (a winner measured before) or ``single`` (one candidate);
    ``winner`` the plan in words; ``alternatives`` each candidate with its predicted and
    measured seconds per run (:mod:`backplane.engine.tuning`)."""
    versions: dict[str, str] = field(default_factory=dict)
    """Version of each backend planned over."""
    fingerprints: dict[str, str | None] = field(default_factory=dict)
    """Hardware fingerprint of each device planned over (None where unmatched)."""
    corrections: dict[str, float] = field(default_factory=dict)
    """The factor past runs of this model put on each device's predictions (1.0 until
    learned)."""
    model_key: str = ""
    """The key corrections for this model are learned under (its structure and sizes)."""

    @property
    def measured_s(self) -> float | None:
        """The sum of the partitions' measured medians, once every partition has run."""
        times = [p.measured_s for p in self.partitions]
        return None if not times or any(t is None for t in times) else sum(times)

    @property
    def uses_fallback(self) -> bool:
        """Whether any node runs on the reference backend as a last resort."""
        return any(p.fallback for p in self.placements)

    @property
    def devices_used(self) -> list[str]:
        """The ids of the devices the partitions run on, sorted (``devices`` is every
        device planned over)."""
        return sorted({p.device for p in self.partitions})

    def device_of(self, node: str) -> str:
        """The device id a node runs on."""
        return next(p.device for p in self.placements if p.node == node)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as printed by ``backplane plan --json``."""
        return asdict(self)

    def costliest(self, n: int = COSTLIEST) -> list[Placement]:
        """The ``n`` placements of highest predicted time, costliest first (in plan order
        among equals): the nodes :meth:`explain`'s summary names."""
        return sorted(self.placements, key=lambda p: -p.predicted_s)[:n]

    def explain(self, verbose: bool = False) -> str:
        """A readable account of the plan, starting with a summary.

        The summary: nodes, partitions and devices, predicted time and energy, the
        :data:`COSTLIEST` costliest nodes; then notes, fallbacks, tuning, cost bases and
        precision checks. Then each partition (device, precision, predicted and measured
        time, data in from other devices, fusion, conversion, how it was compiled), and
        the events.

        By default the account is bounded whatever the model's size: the
        :data:`PARTITIONS_SHOWN` costliest partitions, the first :data:`LISTED` notes,
        events and names of each list, lines of at most :data:`LINE_LIMIT` characters.
        ``verbose=True`` lists everything, and under each partition every node's
        placement and, for every device that does not run it, the reason code.

        Names from the model are shown escaped and cut short (:func:`backplane.sdk.text.shown`);
        :meth:`to_dict` has them as they are.
        """
        listed = None if verbose else LISTED
        lines = [f"plan for '{shown(self.model)}': policy={self.policy}, "
                 f"precision={self.precision}, "
                 f"devices={'explicit' if self.explicit else 'auto'} "
                 f"[{', '.join(self.devices)}]",
                 self._summary(), *self._costliest_lines()]
        lines += _capped([f"note: {n}" for n in self.notes], listed, "notes")
        slow = sorted({p.op for p in self.placements if p.fallback})
        if slow:
            count = sum(p.fallback for p in self.placements)
            lines.append(f"fallback: {count} node(s) run on the reference backend because no "
                         f"faster backend admits their op: {_listed(slow, listed)}")
        lines += self._selection_lines()
        for device, basis in self.cost_basis.items():
            lines.append(f"costs of {device}: {basis}; load: {self.load.get(device, '?')}")
        for check in self.precision_checks:
            lines.append(f"precision check: {check['paths']}: max relative error "
                         f"{check['max_rel_error']:.3g} against budget {check['budget']:.3g}"
                         f" -> {'kept' if check['kept'] else 'rejected'}")
        lines += self._partition_lines(verbose)
        lines += _capped([f"event: {e}" for e in self.events], listed, "events")
        if not verbose:
            lines.append("each node's placement, and why other devices do not run it: "
                         "explain(verbose=True), backplane plan --verbose")
        limit = MESSAGE_LIMIT if verbose else LINE_LIMIT
        return "\n".join(shown(line, limit) for line in lines)

    def _selection_lines(self) -> list[str]:
        """How the plan was chosen, and every candidate measured beside it."""
        sel = self.selection
        if not sel:
            return [f"tuned: {self.tuned}"] if self.tuned else []
        lines = [f"selection: {sel['how']}: {sel.get('why') or self.tuned}"]
        for alt in sel.get("alternatives", [])[:LISTED]:
            measured = alt.get("median_s")
            lines.append(f"  candidate {alt.get('plan')}: predicted "
                         f"{_time(alt.get('predicted_s') or 0.0)}, measured "
                         f"{_time(measured) if measured is not None else '-'}"
                         + (f" ({alt['note']})" if alt.get("note") else "")
                         + ("  <- kept" if alt.get("plan") == sel.get("winner") else ""))
        return lines

    def _summary(self) -> str:
        """Nodes, partitions, devices, predicted time: the explanation's second line."""
        per_device: dict[str, int] = {}
        for part in self.partitions:
            per_device[part.device] = per_device.get(part.device, 0) + len(part.nodes)
        where = ", ".join(f"{d} ({_count(n, 'node')})" for d, n in per_device.items())
        return (f"{_count(len(self.placements), 'node')} in "
                f"{_count(len(self.partitions), 'partition')} on "
                f"{_count(len(per_device), 'device')}: {where}; "
                f"predicted {_time(self.predicted_s)} per run, "
                f"{self.predicted_energy_j * 1e3:.3g} mJ"
                + (f", peak {self.predicted_peak_bytes / 2**20:.3g} MiB between partitions"
                   if self.predicted_peak_bytes else "")
                + (f"; measured {_time(self.measured_s)}" if self.measured_s else ""))

    def _costliest_lines(self) -> list[str]:
        """The costliest nodes by predicted time, with their share of the nodes' total."""
        top = self.costliest()
        if not top:
            return []
        total = sum(p.predicted_s for p in self.placements)
        share = (f"; {sum(p.predicted_s for p in top) / total:.0%} of the nodes' predicted "
                 "time" if total > 0 and len(top) < len(self.placements) else "")
        which = (f"{len(top)} of {len(self.placements)}" if len(top) < len(self.placements)
                 else f"all {len(top)}")
        part_of = {name: part.index for part in self.partitions for name in part.nodes}
        lines = [f"costliest nodes by predicted time ({which}{share}):"]
        for p in top:
            lines.append(f"  {shown(p.node)} ({shown(p.op)}) on {p.device}, partition "
                         f"{part_of.get(p.node, '?')}: {_time(p.predicted_s)}"
                         + ("  [reference fallback]" if p.fallback else ""))
        return lines

    def _partition_lines(self, verbose: bool) -> list[str]:
        """Each partition (by default the costliest, in plan order), with every node's
        placement when ``verbose``."""
        listed = None if verbose else LISTED
        parts = self.partitions
        if not verbose and len(parts) > PARTITIONS_SHOWN:
            kept = sorted(parts, key=lambda part: -part.predicted_s)[:PARTITIONS_SHOWN]
            parts = sorted(kept, key=lambda part: part.index)
        by_name = {p.node: p for p in self.placements} if verbose else {}
        lines = []
        for part in parts:
            lines.append(f"partition {part.index} on {part.device} at {part.precision} "
                         f"({_count(len(part.nodes), 'node')}), "
                         f"predicted {_time(part.predicted_s)}"
                         + (f", measured {_time(part.measured_s)}"
                            if part.measured_s is not None else "")
                         + (f", data in from other devices: {_listed(part.transfers_in, listed)}"
                            if part.transfers_in else "")
                         + (f", fused for {part.backend}: {part.fused}" if part.fused else ""))
            if part.opset:
                lines.append(f"  converted to opset {part.opset} for {part.backend}")
            if part.path:
                lines.append(f"  compiled as: {part.path}")
            for name in part.nodes if verbose else ():
                p = by_name[name]
                flag = "  [reference fallback]" if p.fallback else ""
                lines.append(f"  {shown(p.node)} ({shown(p.op)}) -> {p.device} "
                             f"{_time(p.predicted_s)}: {p.reason}{flag}")
                for r in p.rejected:
                    lines.append(f"      not {r.device}: {r.code}: {r.detail}")
        kept_indices = {part.index for part in parts}
        left = [part for part in self.partitions if part.index not in kept_indices]
        if left:
            lines.append(f"... {_count(len(left), 'other partition')}, predicted "
                         f"{_time(sum(part.predicted_s for part in left))} together: "
                         "explain(verbose=True) lists every one")
        return lines


def _count(n: int, noun: str) -> str:
    """``1 node``, ``3 nodes``."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _listed(names: list[str], most: int | None) -> str:
    """Names shown and joined, the first ``most`` of them (all with None) and how many
    more."""
    kept = names if most is None else names[:most]
    more = len(names) - len(kept)
    return ", ".join(shown(n) for n in kept) + (f" and {more} more" if more else "")


def _capped(lines: list[str], most: int | None, what: str) -> list[str]:
    """The first ``most`` lines (all with None), and a line saying where the rest are."""
    if most is None or len(lines) <= most:
        return lines
    return lines[:most] + [f"... {len(lines) - most} more {what}: explain(verbose=True), "
                           f"plan.{what}"]


def _time(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds * 1e6:.1f} µs" if seconds < 1e-3 else f"{seconds * 1e3:.3g} ms"
