"""Measured selection: which candidate plans to time, how to time them, and the database of
winners.

The cost model prices plans op by op; it cannot see what a graph compiler does to a whole
graph (fusion, layouts kept across layers), and its measured error says how far to trust
it. When the best candidate plans are closer than that error can separate, the session
measures them (:mod:`.selection`) and keeps the fastest. The winner is remembered in a
database of sealed JSON files, ``<cache root>/tune/<key>.json``, so that later sessions
reuse it without measuring.

The key (:func:`key`) hashes what decides which plan is fastest:

- the model's structure (:func:`structure_key`: ops, attributes, wiring, the types and
  shapes of its weights, the values of small integer tensors such as Reshape's shapes;
  not the weights' values, which change no plan's speed);
- the sample inputs' names, dtypes and shapes;
- every device's id, name and hardware fingerprint;
- every backend's version and backplane's version;
- the session's policy, precision, constraints and the devices taken out.

A change in any of them is another key: the entry is measured again, and the old one is
left for the session it belongs to. A stored winner whose placements are no longer a plan
the planner makes (a device gone, a node refused) is not used.

Candidates (:func:`candidates`): the cost model's plan, the fixed-order plan, and for each
device the plan that puts every node it admits there (the reference backend taking the
rest). Under ``tune="auto"`` only those predicted within :func:`separation` of the best
are measured; with ``tune="on"``, all of them.

Timing (:func:`measure`): each candidate warms up once, then runs in interleaved rounds,
one candidate at a time, in a fresh random order per round, each a burst of about
:data:`BURST_S` of calls after the process's threads have gone still (another runtime's
workers spin after a call) and one untimed call; it stops when every candidate's median
is stable (the median of all rounds within :data:`STABLE` of the median without the last
two), or when the winner is clear (its slowest quarter faster than every other's fastest
quarter), after at least :data:`MIN_ROUNDS` rounds, or when the time budget runs out
(:func:`budget_s`: the larger of :data:`DEFAULT_BUDGET_S` and :data:`COMPILE_SHARE` of the
first compile).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from backplane import __version__
from backplane.engine import costmodel
from backplane.sdk.cache import ArtifactCache, cache_key
from backplane.sdk.env import env_list
from backplane.sdk.errors import BackendError, UnsupportedError

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable, Mapping

    from backplane.engine.executor import CompiledPlan
    from backplane.engine.plan import Plan
    from backplane.engine.planner import Planner

#: ``tune``: measure when the cost model cannot separate the best candidates (``auto``),
#: always (``on``), never (``off``).
TUNE_MODES = ("auto", "on", "off")
#: At most this many distinct candidate plans are measured.
MAX_CANDIDATES = 6
#: Measuring stops once this many seconds have passed, or COMPILE_SHARE of the first
#: compile when that is longer.
DEFAULT_BUDGET_S, COMPILE_SHARE = 2.0, 0.2
#: Rounds before a stop for stability or a clear winner; the most rounds.
MIN_ROUNDS, MAX_ROUNDS = 8, 400
#: One candidate's calls in a row per round: about this many seconds of them.
BURST_S, BURST_MAX = 0.005, 100
#: Before each burst the process must have used under SETTLE_SHARE of a core over a window
#: of SETTLE_WINDOW_S (waiting at most SETTLE_MAX_S): a runtime's worker threads spin for
#: tens of milliseconds after a call (ONNX Runtime's), which would slow the next candidate.
SETTLE_WINDOW_S, SETTLE_SHARE, SETTLE_MAX_S = 0.005, 0.2, 0.2
#: A median is stable once the last two rounds move it less than this share.
STABLE = 0.02
#: The cost model's error (log of measured over predicted, as a standard deviation) before
#: enough models were observed on this machine to measure it: 1.24 was measured over the 56
#: models of benchmarks/bench_scheduler.py (c, calibrated, nothing learned; 2026-12-06), so
#: candidates within x12 are measured; and the least it is taken as, however well the cost
#: model has learned (x2.7).
DEFAULT_SIGMA, MIN_SIGMA = 1.24, 0.5
#: Observed models needed before their errors stand for the cost model's.
MIN_MODELS = 3
CACHE_SCHEMA = 2


def mode(tune: Any) -> str:
    """``tune`` as one of :data:`TUNE_MODES`: True is ``on``, False ``off``, None the
    environment's ``BACKPLANE_TUNE`` (default ``auto``)."""
    if tune is None:
        chosen = env_list("BACKPLANE_TUNE")
        tune = chosen[0] if chosen else "auto"
    if tune is True:
        return "on"
    if tune is False:
        return "off"
    if tune not in TUNE_MODES:
        raise UnsupportedError(f"unknown tune mode {tune!r}; choose one of "
                               f"{', '.join(TUNE_MODES)} (or True, False)")
    return tune


def budget_s(first_compile_s: float) -> float:
    """Seconds of measuring: DEFAULT_BUDGET_S, or COMPILE_SHARE of the first compile when
    that is longer."""
    return max(DEFAULT_BUDGET_S, COMPILE_SHARE * first_compile_s)


def structure_key(model: Any) -> str:
    """A key of an ONNX model's structure, weights' values left out (see the module
    docstring): two exports of one architecture with other weights share it."""
    from onnx import AttributeProto  # on use only: onnx loads in a second

    h = hashlib.sha256()

    def tensor(t: Any) -> None:
        h.update(f"T{t.name}:{t.data_type}:{list(t.dims)};".encode())
        if t.data_type in (6, 7) and math.prod(t.dims) <= 64:  # int32/int64: shapes, axes
            h.update(t.SerializeToString(deterministic=True))

    def walk(graph: Any) -> None:
        for t in graph.initializer:
            tensor(t)
        for vi in [*graph.input, *graph.output]:
            h.update(vi.SerializeToString(deterministic=True))
        for node in graph.node:
            h.update(f"N{node.domain}:{node.op_type}:{list(node.input)}:"
                     f"{list(node.output)};".encode())
            for a in node.attribute:
                h.update(f"A{a.name}:{a.type};".encode())
                if a.type == AttributeProto.GRAPH:
                    walk(a.g)
                elif a.type == AttributeProto.GRAPHS:
                    for g in a.graphs:
                        walk(g)
                elif a.type == AttributeProto.TENSOR:
                    tensor(a.t)
                elif a.type != AttributeProto.TENSORS:
                    h.update(a.SerializeToString(deterministic=True))

    for o in model.opset_import:
        h.update(f"O{o.domain}:{o.version};".encode())
    walk(model.graph)
    return h.hexdigest()[:32]


def key(planner: "Planner", feeds: "Mapping[str, Any]") -> str:
    """The database key of a session's planner on ``feeds`` (see the module docstring)."""
    shapes = sorted((k, str(v.dtype), tuple(v.shape)) for k, v in feeds.items())
    devices = sorted((d.id, d.name, costmodel.profile(d).fingerprint or "")
                     for d in planner.devices)
    versions = sorted((d.backend, str(planner.registry.backends[d.backend].version))
                      for d in planner.devices)
    c = planner.constraints
    return cache_key("tune", CACHE_SCHEMA, __version__, structure_key(planner.graph.model),
                     repr(shapes), repr(devices), repr(versions), planner.policy,
                     planner.precision, planner.explicit, c.device_class, sorted(c.exclude),
                     c.memory_headroom, sorted(planner.excluded))


def pins_of(plan: "Plan") -> dict[str, tuple[str, str]]:
    """node -> (device id, precision) of a plan."""
    return {p.node: (p.device, p.precision) for p in plan.placements}


def describe(plan: "Plan") -> str:
    """A plan in a few words: its partitions' devices and precisions."""
    seen: list[str] = []
    for p in plan.partitions:
        name = f"{p.device}@{p.precision}"
        if not seen or seen[-1] != name:
            seen.append(name)
    return "+".join(seen)


# -- the database ------------------------------------------------------------------------------


def database(planner: "Planner") -> ArtifactCache:
    """The winners' database of a session's planner."""
    return ArtifactCache("tune", planner.options, suffix=".json")


def stored(planner: "Planner", k: str) -> "Plan | None":
    """The stored winner under ``k`` as a plan, or None (absent, invalid, or no longer a
    plan the planner makes). The plan's ``selection`` says where it came from."""
    entry = database(planner).get_json(k, _valid)
    if entry is None:
        return None
    pins = {n: (v[0], v[1]) for n, v in entry["pins"].items()}
    try:
        plan = planner.schedule(pins=pins)
    except UnsupportedError:
        return None
    if pins_of(plan) != pins:
        return None
    plan.selection = {"how": "database", "winner": describe(plan), "key": k[:12],
                      "measured_at": entry["measured_at"],
                      "alternatives": entry.get("candidates", [])}
    plan.tuned = (f"from the tuning database ({k[:12]}): measured "
                  f"{entry['best_s'] * 1e3:.3g} ms on {entry['measured_at']}")
    return plan


def remember(planner: "Planner", k: str, winner: "Plan", best_s: float,
             alternatives: list[dict[str, Any]]) -> bool:
    """Store ``winner`` under ``k``; whether it was written."""
    return database(planner).put(k, json.dumps({
        "schema": CACHE_SCHEMA, "pins": pins_of(winner), "best_s": best_s,
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "candidates": alternatives}, indent=1).encode())


def _valid(data: dict[str, Any]) -> bool:
    """Whether a database file holds a winner in this schema (pins, time, date)."""
    return (data.get("schema") == CACHE_SCHEMA and isinstance(data.get("pins"), dict)
            and all(isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) for x in v)
                    for v in data["pins"].values())
            and isinstance(data.get("best_s"), (int, float))
            and isinstance(data.get("measured_at"), str)
            and isinstance(data.get("candidates", []), list))


# -- candidates ----------------------------------------------------------------------------------


def separation(planner: "Planner") -> float:
    """The factor of predicted time below which two plans cannot be told apart: twice the
    cost model's error measured on this machine's devices (:func:`costmodel.error_sigma`),
    as a factor."""
    fingerprints = {costmodel.profile(d).fingerprint for d in planner.devices}
    measured = getattr(costmodel, "error_sigma", None)
    sigma = measured(fingerprints, MIN_MODELS) if measured is not None else None
    sigma = DEFAULT_SIGMA if sigma is None else max(MIN_SIGMA, sigma)
    return math.exp(2 * sigma)


def candidates(planner: "Planner", first: "Plan | None" = None) -> list["Plan"]:
    """Distinct candidate plans, ``first`` (default: the cost model's plan) first."""
    plans = [first or planner.schedule()]
    if not planner.explicit:
        plans.append(planner.schedule(policy="fixed-order"))
        # on use only: keeps this module's own import light
        from backplane.engine.plan import FALLBACK_BACKEND

        refs = [d for d in planner.devices if d.backend == FALLBACK_BACKEND]
        for device in planner.devices:
            if device.backend == FALLBACK_BACKEND or device.id in planner.excluded:
                continue
            try:
                plans.append(planner.schedule(devices=[device] + refs, explicit=True))
            except UnsupportedError:
                continue  # this device alone cannot run the model
    seen, out = set(), []
    for plan in plans:
        sig = tuple(sorted(pins_of(plan).items()))
        if sig not in seen:
            seen.add(sig)
            out.append(plan)
    return out[:MAX_CANDIDATES]


def close(plans: list["Plan"], factor: float) -> list["Plan"]:
    """The plans predicted within ``factor`` of the best of them (the first kept first)."""
    best = min(p.predicted_s for p in plans)
    return [p for i, p in enumerate(plans) if i == 0 or p.predicted_s <= best * factor]


# -- timing ----------------------------------------------------------------------------------------


@dataclass
class Timings:
    """What :func:`measure` found: per candidate, seconds per call of each round."""

    rounds: list[list[float]]
    stopped: str = ""
    seconds: float = 0.0
    failed: dict[int, str] = field(default_factory=dict)
    """Candidates whose run failed (index -> why); they are out."""

    def median(self, i: int) -> float | None:
        return statistics.median(self.rounds[i]) if self.rounds[i] else None

    def best(self) -> int | None:
        medians = [(m, i) for i in range(len(self.rounds))
                   if i not in self.failed and (m := self.median(i)) is not None]
        return min(medians)[1] if medians else None


def measure(compiled: list["CompiledPlan"], feeds: "Mapping[str, Any]", budget: float, *,
            quiet: "Callable[[], int | None] | None" = None,
            stop: "Callable[[], bool] | None" = None, seed: int = 0) -> Timings:
    """Seconds per call of each compiled plan on ``feeds`` (see the module docstring).

    ``quiet()`` (when given) says whether the session is answering no request: it returns
    a mark, or None while a request is in flight. A burst is kept only if the same mark
    holds before and after it, so that the candidates are timed each on its own; after
    half the budget, bursts are kept whatever it says (a session that never rests still
    gets a choice). ``stop()`` ends the measuring early (the session was closed)."""
    start = time.perf_counter()
    found = Timings([[] for _ in compiled])
    live = list(range(len(compiled)))
    for i in list(live):
        try:
            compiled[i].run(dict(feeds))  # warm up (a first run may compile for the sizes)
        except BackendError as exc:
            found.failed[i] = str(exc)
            live.remove(i)
    order = random.Random(seed)
    while live:
        elapsed = time.perf_counter() - start
        if elapsed > budget:
            found.stopped = f"the budget of {budget:.3g} s ran out"
            break
        if stop is not None and stop():
            found.stopped = "the session closed"
            break
        n = min(len(found.rounds[i]) for i in live)
        if n >= MAX_ROUNDS:
            found.stopped = f"{MAX_ROUNDS} rounds"
            break
        if n >= MIN_ROUNDS:
            why = _settled([found.rounds[i] for i in live])
            if why:
                found.stopped = why
                break
        strict = quiet is not None and elapsed < budget / 2
        for i in order.sample(live, len(live)):
            mark = quiet() if quiet is not None else 0
            if strict and mark is None:
                time.sleep(0.001)
                continue
            try:
                per_call = _burst(compiled[i], feeds)
            except BackendError as exc:
                found.failed[i] = str(exc)
                live.remove(i)
                continue
            if not strict or quiet() == mark:
                found.rounds[i].append(per_call)
    found.seconds = time.perf_counter() - start
    return found


def _settle() -> None:
    """Wait until this process's threads are still (see SETTLE_SHARE)."""
    until = time.perf_counter() + SETTLE_MAX_S
    while time.perf_counter() < until:
        cpu = time.process_time()
        time.sleep(SETTLE_WINDOW_S)
        if time.process_time() - cpu < SETTLE_SHARE * SETTLE_WINDOW_S:
            return


def _burst(compiled: "CompiledPlan", feeds: "Mapping[str, Any]") -> float:
    """Seconds per call over a burst of about BURST_S of calls, once the process is still
    and one untimed call has brought this candidate's data back into the caches."""
    _settle()
    compiled.run(dict(feeds))
    calls, start = 0, time.perf_counter()
    while True:
        compiled.run(dict(feeds))
        calls += 1
        elapsed = time.perf_counter() - start
        if elapsed >= BURST_S or calls >= BURST_MAX:
            return elapsed / calls


def _settled(rounds: list[list[float]]) -> str:
    """Why measuring may stop now ("" while it may not)."""
    if len(rounds) == 1:
        return "one candidate left"
    medians = [statistics.median(r) for r in rounds]
    best = min(range(len(rounds)), key=medians.__getitem__)
    q = [statistics.quantiles(r, n=4) for r in rounds]
    if all(q[best][2] < q[i][0] for i in range(len(rounds)) if i != best):
        return "the winner was clear"
    if all(abs(statistics.median(r[:-2]) - m) <= STABLE * m for r, m in zip(rounds, medians)):
        return "every median was stable"
    return ""
