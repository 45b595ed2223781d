"""The scheduler: which device, backend and precision runs each node, chosen by cost.

Planning a graph, in order (one :class:`~backplane.engine.partitioning.PlanningPass`):

1. Candidates (:mod:`.candidates`): for every node, every device x precision that may run
   it, and every other device's reason.
2. Costs: :mod:`backplane.engine.costmodel` prices each candidate (roofline x backend
   efficiency x live load), each partition launch, and each copy between memory domains.
3. Assignment (:mod:`.assignment`): dynamic programming over the topological order, then
   whole-partition moves, by the policy's objective (time, energy, or the busiest device
   for ``throughput``); memory fitting moves nodes off a device that cannot hold them.
4. A selection delegate (the session's ``delegate=`` callable, or the
   ``backplane_select_device`` hook) sees each node's candidates with their costs, the
   default first, and may pin another; the assignment is then redone around the pins.
5. Partitions (:mod:`.partitioning`): every maximal run on one device x precision becomes
   one subgraph, cut where it is longer than the backend's ``max_partition_nodes``.

Every step takes time linear in the graph (the topological order's heap: n log n), so that
planning and compiling a model of 10,000 nodes takes seconds (docs/scheduler.md); only
memory fitting, which redoes the assignment once per node it moves, may take more.

The ``fixed-order`` policy replaces 2-3 by the first admitting device in priority order
(the explicit list's order when the caller named devices), as ONNX Runtime assigns nodes
to its execution providers; it exists to be compared against, and for explicit lists.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from backplane.engine import costmodel, qualification
from backplane.engine.assignment import fixed_choice
from backplane.engine.candidates import (AUTO_PRECISIONS, DEFAULT_HEADROOM, Constraints,
                                         NodeCandidates, Option)
from backplane.engine.partitioning import PlanningPass
from backplane.engine.plan import Candidate, Plan
from backplane.engine.registry import registry
from backplane.model.graph import Graph
from backplane.model.intake import load_model
from backplane.sdk.contract import Device
from backplane.sdk.errors import UnsupportedError
from backplane.sdk.hooks import plugin_manager

if TYPE_CHECKING:  # pragma: no cover
    from backplane.sdk.contract import Backend

#: What backplane itself adds to a run (input checks, the executor's bookkeeping), as
#: measured by benchmarks/bench_cpu_backends.py: about 5 us per call.
CALL_OVERHEAD_S = 5e-6


def plan_model(model: Any, devices: Any = "auto", *, policy: str = "latency",
               precision: str = "fp32", constraints: Constraints | None = None) -> Plan:
    """Plan a model (a path, bytes, ModelProto or loaded Graph) without compiling it."""
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
    constraints = constraints or Constraints()
    excluded, banned = dict(excluded or {}), dict(banned or {})
    model_key = costmodel.graph_key(graph)
    model = costmodel.for_devices(devices, dict(backends), model_key)
    ctx = PlanningPass(graph, devices, backends, model, precision, constraints, excluded, banned,
                   dict(refused or {}))
    cands = [ctx.candidates(node, explicit) for node in graph.nodes]
    _check_required(graph, cands, constraints, strict)
    fixed = explicit or policy == "fixed-order"
    objective = "energy" if policy == "efficiency" else "time"
    events: list[str] = []
    pinned = _pin_options(graph, cands, pins or {}, events)
    choice = (fixed_choice(cands, pinned) if fixed
              else ctx.assign(cands, pinned, objective, policy))
    overrides = _delegate(graph, cands, choice, delegate, events)
    if overrides:
        pinned.update(overrides)
        choice = (fixed_choice(cands, pinned) if fixed
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
    return qualification.special_value_note(plan)


def _check_required(graph: "Graph", cands: list[NodeCandidates], constraints: Constraints,
                    strict: bool) -> None:
    left = [graph.nodes[i] for i, c in enumerate(cands) if c.left_required]
    if left and strict:
        names = ", ".join(f"'{n.name}' ({n.op_type})" for n in left[:10])
        more = f" and {len(left) - 10} more" if len(left) > 10 else ""
        raise UnsupportedError(
            f"strict: {len(left)} node(s) would leave the required device class "
            f"'{constraints.device_class}': {names}{more}; no {constraints.device_class} device "
            "admits them. Drop strict=True to let them fall back, or require another class.")


def _pin_options(graph: "Graph", cands: list[NodeCandidates],
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


def _delegate(graph: "Graph", cands: list[NodeCandidates], choice: list[int],
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


def _candidate(o: Option, default: bool) -> Candidate:
    return Candidate(o.device, o.rank, o.precision, o.seconds, o.energy, default)


__all__ = ["AUTO_PRECISIONS", "DEFAULT_HEADROOM", "Constraints", "plan_model", "schedule"]
