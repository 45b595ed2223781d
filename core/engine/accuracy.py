"""Precision as a contract: a lower-precision plan is kept only if it measurably keeps the
accuracy budget.

With ``precision="auto"`` the scheduler may place partitions at fp16, bf16 or int8 where
that is predicted faster. Before such a plan is used, it runs on the session's sample
inputs beside the reference backend (the oracle, at fp32); the error of every output is
measured as ``max |y - y_ref| / max |y_ref|`` (relative to the output's largest magnitude,
so that values near zero do not dominate). Over ``max_rel_error``, every lower-precision
path of that plan is banned with the measured error as its reason (``precision:budget`` in
``explain()``) and the model is planned again, until a plan keeps the budget or is all
fp32, which needs no check. Every check is recorded in ``plan.precision_checks``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from backplane.engine.executor import CompiledPlan
from backplane.engine.plan import FALLBACK_BACKEND
from backplane.engine.scheduler import schedule
from backplane.sdk.errors import BackplaneError

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable

    from backplane.engine.planner import Planner


def max_rel_error(got: dict[str, Any], want: dict[str, Any]) -> float:
    """The largest error of any output relative to that output's largest magnitude
    (``inf`` where shapes differ or a NaN appears on one side only)."""
    import numpy as np

    worst = 0.0
    for name, ref in want.items():
        a = np.asarray(got[name], dtype=np.float64)
        b = np.asarray(ref, dtype=np.float64)
        if a.shape != b.shape or not np.array_equal(np.isnan(a), np.isnan(b)):
            return float("inf")
        if not b.size:
            continue
        finite = ~np.isnan(b)
        scale = float(np.max(np.abs(b[finite]), initial=0.0)) or 1.0
        worst = max(worst, float(np.max(np.abs(a[finite] - b[finite]), initial=0.0)) / scale)
    return worst


def reference_outputs(planner: "Planner", feeds: dict[str, Any]
                      ) -> tuple[dict[str, Any], str]:
    """The oracle's outputs for ``feeds``, and what the oracle was."""
    reg = planner.registry
    oracle = [d for d in reg.devices() if d.backend == FALLBACK_BACKEND]
    if oracle:
        try:
            plan = schedule(planner.graph, oracle, reg.backends, precision="fp32",
                            explicit=True)
            compiled = CompiledPlan(planner.graph, plan, reg, planner.options,
                                    {d.id: d for d in oracle})
            return compiled.run(feeds), "the reference backend"
        except BackplaneError:
            pass  # an op the oracle lacks: fall back to this session's fp32 plan
    compiled = planner.compile(planner.schedule(precision="fp32"))
    return compiled.run(feeds), "this session's fp32 plan (the reference backend cannot run it)"


def checked(planner: "Planner", compiled: CompiledPlan,
            samples: "Callable[[], dict[str, Any]]", budget: float | None) -> CompiledPlan:
    """``compiled``, or the plan that replaced it, once its accuracy was measured on
    ``samples()`` against ``budget`` (the largest relative error allowed)."""
    checks: list[dict[str, Any]] = []
    want: tuple[dict[str, Any], str] | None = None
    budget = float(budget or 0.0)
    while True:
        lower = sorted({(p.device, p.precision) for p in compiled.plan.partitions
                        if p.precision != "fp32"})
        if not lower:
            compiled.plan.precision_checks = checks
            return compiled
        feeds = samples()
        if want is None:
            want = reference_outputs(planner, feeds)
        error = max_rel_error(compiled.run(feeds), want[0])
        paths = ", ".join(f"{d} at {p}" for d, p in lower)
        kept = error <= budget
        checks.append({"paths": paths, "max_rel_error": error, "budget": budget,
                       "kept": kept, "against": want[1]})
        if kept:
            compiled.plan.precision_checks = checks
            return compiled
        for key in lower:
            planner.banned[key] = (f"the plan computing {paths} measured max relative error "
                                    f"{error:.3g} against {want[1]} on sample inputs, over "
                                    f"the budget {budget:.3g}")
        compiled = planner.compile(planner.schedule())
