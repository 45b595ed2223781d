"""The planner a session owns: what it plans with, and the paths it has learned to avoid.

A :class:`Planner` holds the graph, the devices, the compile options, the constraints and
the paths taken out so far (devices excluded, device x precision paths banned, nodes a
device refused), and turns them into plans (:meth:`Planner.schedule`) and compiled plans
(:meth:`Planner.compile`). The session, the accuracy check (:mod:`.accuracy`) and tuning
(:mod:`.tuning`) all plan through it, so what one learns (a failed compile, a precision
over budget) the next plan knows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from backplane.engine.executor import CompiledPlan
from backplane.engine.runcheck import unqualified
from backplane.engine.scheduler import Constraints, schedule

if TYPE_CHECKING:  # pragma: no cover
    from backplane.engine.plan import Partition, Plan
    from backplane.engine.registry import Registry
    from backplane.engine.runcheck import Verifier
    from backplane.model.graph import Graph
    from backplane.sdk.contract import CompileOptions, Device

log = logging.getLogger("backplane")


@dataclass
class Planner:
    """Plans and compiles one model for one session.

    ``graph`` is what compiles and runs; ``planned_on`` is the same graph with the sizes
    the plan is priced for. ``excluded`` (device -> why), ``banned`` ((device, precision)
    -> why) and ``refused`` ((device, node) -> why) grow as compiles, runs and accuracy
    checks fail; ``history`` says each change in words, and every plan's events start
    with it.
    """

    graph: "Graph"
    planned_on: "Graph"
    registry: "Registry"
    devices: list["Device"]
    explicit: bool
    options: "CompileOptions"
    policy: str
    precision: str
    constraints: Constraints
    strict: bool = False
    delegate: Callable[..., Any] | None = None
    dims: Mapping[str, int] = field(default_factory=dict)
    verifier: "Verifier | None" = None
    verify: str = "off"
    compile_timeout_s: float | None = None
    on_partition_run: Callable[["Partition", float], None] | None = None
    excluded: dict[str, str] = field(default_factory=dict)
    banned: dict[tuple[str, str], Any] = field(default_factory=dict)
    refused: dict[tuple[str, str], str] = field(default_factory=dict)
    history: list[str] = field(default_factory=list)

    def schedule(self, pins: Mapping[str, tuple[str, str]] | None = None, *,
                 policy: str | None = None, devices: list["Device"] | None = None,
                 explicit: bool | None = None, precision: str | None = None) -> "Plan":
        """A plan under what is known now; the arguments override the session's choice
        for this one plan (tuning's candidates, the fp32 plan of an accuracy check)."""
        plan = schedule(self.planned_on, devices or self.devices, self.registry.backends,
                        policy=policy or self.policy, precision=precision or self.precision,
                        explicit=self.explicit if explicit is None else explicit,
                        excluded=dict(self.excluded), banned=dict(self.banned),
                        refused=dict(self.refused), constraints=self.constraints,
                        strict=self.strict, delegate=self.delegate, pins=pins)
        plan.events[:0] = self.history
        if self.dims:
            plan.notes.append("priced for " + ", ".join(f"{k}={v}" for k, v in
                                                        sorted(self.dims.items())))
        return plan

    def compile(self, plan: "Plan") -> CompiledPlan:
        """``plan`` compiled on its devices (raises the backend's error where one fails)."""
        by_id = {d.id: d for d in self.devices}
        return CompiledPlan(self.graph, plan, self.registry, self.options, by_id,
                            on_partition_run=self.on_partition_run, verifier=self.verifier,
                            verify=unqualified(self.graph, plan, self.verify),
                            compile_timeout_s=self.compile_timeout_s)

    def exclude(self, device: str, why: str) -> None:
        """Plan without ``device``."""
        self.excluded[device] = why
        self.history.append(f"re-planned without {device}: {why}")
        log.warning("backplane: %s; re-planning without it", why)

    def ban(self, device: str, precision: str, why: str) -> None:
        """Plan no more of ``device`` at ``precision`` (a compile that failed there: an NPU
        refusing int8 without calibration data keeps its fp16 path)."""
        self.banned[(device, precision)] = ("excluded", f"compile failed at {precision}: {why}")
        self.history.append(f"re-planned without {device} at {precision}: {why}")
        log.warning("backplane: %s; re-planning without %s at %s", why, device, precision)

    def refuse(self, device: str, nodes: list[str], why: str) -> None:
        """Plan ``nodes`` elsewhere than ``device``, whose compile refused them."""
        for n in nodes:
            self.refused[(device, n)] = why
        names = ", ".join(f"'{n}'" for n in nodes[:5]) + (" ..." if len(nodes) > 5 else "")
        self.history.append(f"re-planned node(s) {names} off {device}: {why}")
        log.warning("backplane: %s; re-planning node(s) %s elsewhere", why, names)

    def state(self) -> tuple[frozenset, frozenset, frozenset]:
        """What a plan depends on besides the model: the devices excluded, the precisions
        banned and the nodes refused."""
        return (frozenset(self.excluded), frozenset(self.banned), frozenset(self.refused))
