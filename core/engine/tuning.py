"""``tune=True``: measure the best few candidate plans on sample inputs, keep the fastest.

The candidates are the cost model's plan, the fixed-order plan and, for each device, the
plan that puts every node it admits there (the reference backend taking the rest); they
are compiled, run round-robin on the session's sample inputs, and the one with the lowest
median wins. The winner's placements (node -> device, precision) are cached in
``<cache root>/tune/<key>.json``, the key hashing the model, the sample input shapes and
dtypes, every device's hardware fingerprint, every backend's version, backplane's version,
and the session's policy, precision and constraints: a change in any of them is a new key,
so a stale winner is never reused. A cached winner whose paths are no longer candidates is
re-planned by cost and says so.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import TYPE_CHECKING, Any

from backplane import __version__
from backplane.engine import costmodel
from backplane.sdk.cache import ArtifactCache, cache_key, model_bytes
from backplane.sdk.errors import BackendError, UnsupportedError

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable

    from backplane.engine.executor import CompiledPlan
    from backplane.engine.plan import Plan
    from backplane.engine.planner import Planner

    Samples = Callable[[], dict[str, Any]]

#: At most this many distinct candidate plans are measured.
MAX_CANDIDATES = 6
#: Timed rounds over all candidates (each round runs every candidate once).
ROUNDS = 7
CACHE_SCHEMA = 1


def key(planner: "Planner", samples: "Samples") -> str:
    """The tuning-cache key of a session's planner (see the module docstring)."""
    feeds = samples()
    shapes = sorted((k, str(v.dtype), tuple(v.shape)) for k, v in feeds.items())
    devices = sorted((d.id, d.name, costmodel.profile(d).fingerprint or "")
                     for d in planner.devices)
    versions = sorted((d.backend, str(planner.registry.backends[d.backend].version))
                      for d in planner.devices)
    c = planner.constraints
    return cache_key("tune", CACHE_SCHEMA, __version__, model_bytes(planner.graph.model),
                     repr(shapes), repr(devices), repr(versions), planner.policy,
                     planner.precision, planner.explicit, c.device_class, sorted(c.exclude),
                     c.memory_headroom, sorted(planner.excluded))


def pins_of(plan: "Plan") -> dict[str, tuple[str, str]]:
    """node -> (device id, precision) of a plan."""
    return {p.node: (p.device, p.precision) for p in plan.placements}


def tuned(planner: "Planner", samples: "Samples") -> "CompiledPlan":
    """The tuned, compiled plan of a session's planner: from the cache, or measured now on
    ``samples()``."""
    k = key(planner, samples)
    winners = ArtifactCache("tune", planner.options, suffix=".json")
    cached = winners.get_json(k, _valid)
    if cached is not None:
        plan = planner.schedule(pins={n: tuple(v) for n, v in cached["pins"].items()})
        if pins_of(plan) == {n: tuple(v) for n, v in cached["pins"].items()}:
            plan.tuned = (f"from the tuning cache ({k[:12]}): measured "
                          f"{cached['best_s'] * 1e3:.3g} ms on {cached['measured_at']}")
            return planner.compile(plan)
    compiled, notes = [], []
    for plan in candidates(planner):
        try:
            compiled.append(planner.compile(plan))
        except BackendError as exc:
            notes.append(f"a candidate failed to compile: {exc}")
    if not compiled:
        return planner.compile(planner.schedule())
    times = measure(compiled, samples())
    best = min(range(len(compiled)), key=times.__getitem__)
    winner = compiled[best]
    summary = ", ".join(f"{_describe(c.plan)} {t * 1e3:.3g} ms"
                        for c, t in zip(compiled, times))
    winner.plan.tuned = (f"measured {len(compiled)} candidate plan(s) on sample inputs, "
                         f"median of {ROUNDS}: {summary}; kept the fastest"
                         + "".join(f"; {n}" for n in notes))
    winners.put(k, json.dumps({
        "schema": CACHE_SCHEMA, "pins": pins_of(winner.plan), "best_s": times[best],
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "candidates": [{"plan": _describe(c.plan), "median_s": t}
                       for c, t in zip(compiled, times)]}, indent=1).encode())
    return winner


def candidates(planner: "Planner") -> list["Plan"]:
    """Distinct candidate plans, the cost model's first."""
    plans = [planner.schedule()]
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


def measure(compiled: list["CompiledPlan"], feeds: dict[str, Any]) -> list[float]:
    """Median seconds per run of each compiled plan, measured round-robin."""
    for c in compiled:
        c.run(feeds)  # warm up
    samples: list[list[float]] = [[] for _ in compiled]
    for _ in range(ROUNDS):
        for i, c in enumerate(compiled):
            t0 = time.perf_counter()
            c.run(feeds)
            samples[i].append(time.perf_counter() - t0)
    return [statistics.median(s) for s in samples]


def _describe(plan: "Plan") -> str:
    return "+".join(f"{p.device}@{p.precision}" for p in plan.partitions)


def _valid(data: dict[str, Any]) -> bool:
    """Whether a tuning-cache file holds a winner in this schema (pins, time, date)."""
    return (data.get("schema") == CACHE_SCHEMA and isinstance(data.get("pins"), dict)
            and all(isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) for x in v)
                    for v in data["pins"].values())
            and isinstance(data.get("best_s"), (int, float))
            and isinstance(data.get("measured_at"), str))
