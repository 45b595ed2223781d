"""Measured selection in a session: compile the candidates, time them, keep the fastest.

A session whose cost model cannot separate its best candidate plans
(:func:`backplane.engine.tuning.separation`) hands them to a :class:`Selection`. With a
fast start (the default), the session answers requests at once on the plan that was
ready first (the cost model's, or a winner from the database) while the selection, in a
thread of its own, compiles the other candidates, checks each one's outputs against the
first plan's on the sample inputs, times them all (:func:`backplane.engine.tuning.measure`,
each on its own, between requests), stores the winner in the database and, when it is not
the first plan, asks the session to switch (:meth:`Session._switch`): later requests run
on the winner, requests already running finish on the plan they started on, none is lost
or run twice. ``plan.events`` records the switch; ``plan.selection`` the measurements.

A candidate is kept only within the session's precision contract: under an fp32 contract
its outputs must agree with the first plan's within :data:`FP32_AGREEMENT` (relative to
each output's largest magnitude; a model that quantizes, within one quantization step,
as the run-time check allows: runtimes round a tie either way); under
``precision="auto"``, a candidate with a lower-precision partition must keep the accuracy
budget against the reference, as the first plan did (:mod:`backplane.engine.accuracy`).

Under ``policy="throughput"``, the winner is also timed against requests spread over it
and the runner-up at once (:class:`Spread`, as OpenVINO's CUMULATIVE_THROUGHPUT spreads
over devices), with :data:`SPREAD_THREADS` requests in flight; the spread is kept only
where it answers more requests per second than the winner alone by :data:`SPREAD_GAIN`.

:class:`Selecting` is the session's side, mixed into ``Session``: it prepares the selection
after the first plan, switches to the winner under the session's lock, prices and selects
again at the first request's sizes, and waits for all of it (``wait_selected``).
"""

from __future__ import annotations

import atexit
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from backplane.engine import costmodel, tuning
from backplane.engine.accuracy import max_rel_error, reference_outputs
from backplane.engine.runcheck import QUANTIZED_TOLERANCE, QUANTIZING
from backplane.model.inputs import dims_of
from backplane.model.intake import with_dims
from backplane.sdk.errors import BackendError
from backplane.sdk.hooks import plugin_manager

if TYPE_CHECKING:  # pragma: no cover
    from backplane.engine.executor import CompiledPlan
    from backplane.engine.plan import Plan
    from backplane.engine.planner import Planner

log = logging.getLogger("backplane")

#: Largest relative difference between two fp32 plans' outputs (two runtimes round apart).
FP32_AGREEMENT = 1e-3
#: Requests in flight while a spread is timed, seconds of each timing, and the gain a
#: spread must show over the winner alone to be kept.
SPREAD_THREADS, SPREAD_S, SPREAD_GAIN = 4, 0.4, 1.05


#: Seconds the interpreter's exit waits for background selections to stop (a compile in
#: progress cannot be interrupted; a runtime's thread killed inside native code aborts the
#: process).
EXIT_WAIT_S = 60.0

_threads: list[threading.Thread] = []
_exiting = threading.Event()


def background(target: Callable[[], None], name: str) -> threading.Thread:
    """Run ``target`` in a daemon thread that the interpreter's exit stops and waits for
    (see :data:`EXIT_WAIT_S`): selections check :func:`exiting` between steps."""
    if not _threads:
        atexit.register(_stop_all)
    _threads[:] = [t for t in _threads if t.is_alive()]
    thread = threading.Thread(target=target, daemon=True, name=name)
    _threads.append(thread)
    thread.start()
    return thread


def exiting() -> bool:
    """Whether the interpreter is exiting (background work should stop)."""
    return _exiting.is_set()


def _stop_all() -> None:
    _exiting.set()
    deadline = time.monotonic() + EXIT_WAIT_S
    for thread in list(_threads):
        thread.join(max(0.0, deadline - time.monotonic()))


class OutsideContract(Exception):
    """A candidate whose outputs break the session's precision contract."""


class Gate:
    """The requests a session is answering, as the measuring thread sees them: a request
    calls :meth:`begin` and :meth:`end`; :meth:`quiet` is a mark while none is in flight
    (the number of requests begun), None otherwise. ``list.append`` and ``pop`` are
    atomic, so the hot path takes no lock."""

    def __init__(self) -> None:
        self._flight: list[None] = []
        self._begun = itertools.count(1)
        self.begun = 0

    def begin(self) -> None:
        self._flight.append(None)
        self.begun = next(self._begun)

    def end(self) -> None:
        self._flight.pop()

    def quiet(self) -> int | None:
        mark = self.begun
        return None if self._flight else mark


class Selection:
    """The measured selection of one session's plan (see the module docstring).

    ``first`` is the compiled plan the session starts on, ``plans`` the other candidates;
    ``install(first, winner, event)`` switches the session to ``winner`` and returns
    whether it did (a session that re-planned meanwhile keeps its own plan)."""

    def __init__(self, planner: "Planner", first: "CompiledPlan", plans: list["Plan"],
                 feeds: Mapping[str, Any], *, key: str, budget: float, why: str,
                 install: Callable[["CompiledPlan", "CompiledPlan", str], bool],
                 gate: Gate | None = None, budget_error: float | None = None):
        self.planner, self.first, self.plans = planner, first, plans
        self.feeds, self.key, self.budget, self.why = dict(feeds), key, budget, why
        self.install, self.gate, self.budget_error = install, gate, budget_error
        self.done = threading.Event()
        self.closed = False
        self.winner: CompiledPlan | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Select in a thread of its own (the session answers requests meanwhile)."""
        self._thread = background(self._background, "backplane-selection")

    def wait(self, timeout: float | None = None) -> bool:
        """Whether the selection is over, waiting up to ``timeout`` seconds for it."""
        return self.done.wait(timeout)

    def close(self) -> None:
        """Stop measuring soon; the session keeps the plan it has."""
        self.closed = True

    @property
    def stopping(self) -> bool:
        return self.closed or _exiting.is_set()

    def _background(self) -> None:
        try:
            self.run()
        except Exception as exc:  # a selection that fails leaves the session as it was
            log.warning("backplane: measured selection stopped: %s", exc)
            self.first.plan.events.append(f"measured selection stopped: {exc}")
        finally:
            self.done.set()

    def run(self) -> "CompiledPlan":
        """Compile, check and time the candidates; keep the winner (and switch to it)."""
        compiled = [self.first]
        notes: dict[int, str] = {}
        for plan in self.plans:
            if self.stopping:
                break
            try:
                candidate = self.planner.compile(plan)
                self._check(candidate)
            except (BackendError, OutsideContract) as exc:
                notes[id(plan)] = f"left out: {exc}"
                continue
            compiled.append(candidate)
        quiet = self.gate.quiet if self.gate is not None else None
        found = tuning.measure(compiled, self.feeds, self.budget, quiet=quiet,
                               stop=lambda: self.stopping)
        best = found.best()
        for i, c in enumerate(compiled):  # every candidate timed teaches the cost model
            median = found.median(i)
            if median is not None and len(c.plan.partitions) == 1:
                costmodel.observe_partition(c.plan, c.plan.partitions[0], median)
        winner = compiled[best] if best is not None else self.first
        alternatives = self._alternatives(compiled, found, notes)
        rounds = min((len(r) for r in found.rounds if r), default=0)
        winner.plan.selection = {
            "how": "measured", "winner": tuning.describe(winner.plan), "key": self.key[:12],
            "why": (f"{self.why}; measured {len(compiled)} candidate plan(s) on sample "
                    f"inputs, {rounds} round(s) or more each in {found.seconds:.3g} s "
                    f"({found.stopped or 'done'}); kept the fastest"),
            "alternatives": alternatives}
        median = found.median(best) if best is not None else None
        winner.plan.tuned = winner.plan.selection["why"]
        if median is not None:
            tuning.remember(self.planner, self.key, winner.plan, median, alternatives)
        spread = self._spread(winner, compiled, found) if best is not None else None
        self.winner = spread or winner
        if self.winner is not self.first and not self.stopping:
            event = (f"switched from {tuning.describe(self.first.plan)} to "
                     f"{tuning.describe(winner.plan)}"
                     + (" spread with its runner-up" if spread else "")
                     + f": measured {_ms(found.median(0))} against {_ms(median)} per run")
            if not self.install(self.first, self.winner, event):
                self.winner = self.first
        return self.winner

    def _check(self, candidate: "CompiledPlan") -> None:
        """Raise unless ``candidate`` keeps the session's precision contract (module
        docstring)."""
        lower = [p for p in candidate.plan.partitions if p.precision != "fp32"]
        if lower and self.budget_error is not None:
            want, against = reference_outputs(self.planner, dict(self.feeds))
            limit = self.budget_error
        else:
            want, against = self.first.run(dict(self.feeds)), "the first plan"
            limit = FP32_AGREEMENT if self.budget_error is None else self.budget_error
            if any(n.op_type in QUANTIZING for n in self.planner.graph.nodes):
                limit = max(limit, QUANTIZED_TOLERANCE)  # runtimes round a tie apart
        error = max_rel_error(candidate.run(dict(self.feeds)), want)
        if not error <= limit:
            raise OutsideContract(f"its outputs are {error:.3g} from {against}'s on the sample "
                               f"inputs (relative to their largest magnitude), over "
                               f"{limit:.3g}")

    def _alternatives(self, compiled: list["CompiledPlan"], found: tuning.Timings,
                      notes: dict[int, str]) -> list[dict[str, Any]]:
        out = []
        for i, c in enumerate(compiled):
            out.append({"plan": tuning.describe(c.plan), "predicted_s": c.plan.predicted_s,
                        "median_s": found.median(i),
                        **({"note": f"failed: {found.failed[i]}"} if i in found.failed
                           else {})})
        for plan in self.plans:
            if id(plan) in notes:
                out.append({"plan": tuning.describe(plan), "predicted_s": plan.predicted_s,
                            "median_s": None, "note": notes[id(plan)]})
        return out

    def _spread(self, winner: "CompiledPlan", compiled: list["CompiledPlan"],
                found: tuning.Timings) -> "Spread | None":
        """Under the throughput policy: the winner spread with the runner-up on another
        device, where that answers more requests per second (module docstring)."""
        if self.planner.policy != "throughput" or self.stopping:
            return None
        others = sorted((found.median(i), i) for i, c in enumerate(compiled)
                        if c is not winner and found.median(i) is not None
                        and set(c.plan.devices_used) != set(winner.plan.devices_used))
        if not others:
            return None
        spread = Spread([winner, compiled[others[0][1]]])
        alone, both = throughput(winner, self.feeds), throughput(spread, self.feeds)
        verdict = both > alone * SPREAD_GAIN
        winner.plan.selection["spread"] = {
            "with": tuning.describe(compiled[others[0][1]].plan),
            "alone_per_s": alone, "spread_per_s": both, "kept": verdict}
        winner.plan.notes.append(
            f"throughput: {alone:.4g} requests/s on the winner alone, {both:.4g} spread "
            f"with {tuning.describe(compiled[others[0][1]].plan)} "
            f"({SPREAD_THREADS} in flight): {'spread' if verdict else 'kept alone'}")
        return spread if verdict else None


class Spread:
    """Requests spread over several compiled plans at once, each to the one with the
    fewest in flight; it looks like one compiled plan (the first one's plan and memory)."""

    def __init__(self, members: list["CompiledPlan"]):
        self.members = members
        self.plan = members[0].plan
        self.memory = members[0].memory
        self._flight = [0] * len(members)
        self._lock = threading.Lock()

    def run(self, feeds: Mapping[str, Any]) -> dict[str, Any]:
        with self._lock:
            i = min(range(len(self.members)), key=self._flight.__getitem__)
            self._flight[i] += 1
        try:
            return self.members[i].run(feeds)
        finally:
            with self._lock:
                self._flight[i] -= 1


def throughput(runner: Any, feeds: Mapping[str, Any], threads: int = SPREAD_THREADS,
               seconds: float = SPREAD_S) -> float:
    """Requests per second ``runner.run`` answers with ``threads`` callers for about
    ``seconds``."""
    count = [0] * threads
    until = time.perf_counter() + seconds

    def caller(i: int) -> None:
        while time.perf_counter() < until:
            runner.run(dict(feeds))
            count[i] += 1

    start = time.perf_counter()
    workers = [threading.Thread(target=caller, args=(i,), daemon=True) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return sum(count) / (time.perf_counter() - start)


def _ms(seconds: float | None) -> str:
    return "?" if seconds is None else f"{seconds * 1e3:.3g} ms"


class Selecting:
    """The measured selection of a :class:`~backplane.engine.session.Session`, mixed into
    it: the candidates prepared after the first plan, the switch to a winner, re-pricing at
    the first request's sizes, and waiting for all of it."""

    def wait_selected(self, timeout: float | None = None) -> bool:
        """Wait for the measured selection running in the background (``fast_start``,
        or a re-pricing at the first request's sizes) to end, at most ``timeout``
        seconds; whether it has (True at once when none runs). ``plan.selection`` then
        says what was measured."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            selection, pending = self._selection, self._pending
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if pending is not None and not pending.wait(left):
                return False
            if selection is not None and not selection.wait(left):
                return False
            if selection is self._selection:
                return True

    def _reprice(self, feeds: Mapping[str, Any]) -> None:
        """Once, after the first request of a session given no sizes: where its sizes
        differ from those the plan was priced at, price and select again at them in the
        background (a dynamic-shape model is planned for the sizes it runs with)."""
        self._repriced = True
        dims = dims_of(self.graph, feeds)
        if not dims or all(self.planner.dims.get(k) == v for k, v in dims.items()):
            return
        copies = {k: v.copy() for k, v in feeds.items()}  # the caller may reuse its arrays
        self._pending = threading.Event()
        background(lambda: self._repricing(dims, copies), "backplane-reprice")

    def _repricing(self, dims: dict[str, int], feeds: dict[str, Any]) -> None:
        sizes = ", ".join(f"{k}={v}" for k, v in sorted(dims.items()))
        why = f"priced again at the sizes of the first request ({sizes})"
        try:
            selection = self._selection
            if selection is not None:
                selection.wait()
            planner = self.planner
            with self._lock:
                before = self._compiled
                priced = {**planner.dims, **dims}
                planner.planned_on = with_dims(self.graph, priced)
                planner.dims = priced
            fresh = planner.schedule()
            same = tuning.pins_of(before.plan)
            if tuning.pins_of(fresh) == same:  # the same placements, priced at these sizes
                before.plan.predicted_s = fresh.predicted_s
                for old, new in zip(before.plan.partitions, fresh.partitions):
                    old.predicted_s = new.predicted_s
                notes = before.plan.notes  # in place: a first run's check may add to it
                for note in [n for n in notes if n.startswith("priced for ")]:
                    notes.remove(note)
                notes.extend(n for n in fresh.notes if n.startswith("priced for "))
            if self._tune == "off":
                if tuning.pins_of(fresh) != same:
                    self._switch(before, planner.compile(fresh), f"{why}: re-planned")
                return
            k = tuning.key(planner, feeds)
            known = tuning.stored(planner, k)
            if known is not None:  # measured at these sizes before
                if tuning.pins_of(known) != same:
                    self._switch(before, planner.compile(known), f"{why}: {known.tuned}")
                return
            plans = tuning.candidates(planner, fresh)
            if self._tune == "auto":
                plans = tuning.close(plans, tuning.separation(planner))
            plans = [p for p in plans if tuning.pins_of(p) != same]
            if not plans:
                return
            self._selection = Selection(
                planner, before, plans, feeds, key=k,
                budget=self._tune_budget_s or tuning.DEFAULT_BUDGET_S, why=why,
                install=self._switch, gate=self._gate, budget_error=self.max_rel_error)
            self._selection.run()
        except Exception as exc:  # the session keeps the plan it has, and answers on it
            log.warning("backplane: %s: %s", why, exc)
        finally:
            if self._selection is not None:
                self._selection.done.set()
            self._pending.set()

    def _selecting(self, compiled: "CompiledPlan", k: str, feeds: dict[str, Any],
                   compile_s: float) -> "CompiledPlan":
        """The first plan, with the measured selection of the other candidates prepared
        (``self._selection``; started by the constructor under a fast start) or, without
        a fast start, run now: then the winner."""
        planner, first = self.planner, compiled.plan
        plans = tuning.candidates(planner, first)
        predicted = [{"plan": tuning.describe(p), "predicted_s": p.predicted_s,
                      "median_s": None} for p in plans]
        winner = tuning.describe(first)
        if len(plans) == 1:
            first.selection = {"how": "single", "winner": winner, "alternatives": [],
                               "why": "one candidate plan"}
            return compiled
        factor = tuning.separation(planner)
        if self._tune == "auto":
            plans = tuning.close(plans, factor)
            if len(plans) == 1:
                first.selection = {
                    "how": "predicted", "winner": winner, "alternatives": predicted,
                    "why": (f"the cost model separates the candidates by more than twice "
                            f"its measured error (x{factor:.3g})")}
                return compiled
            why = (f"the cost model could not separate {len(plans)} candidate plans "
                   f"(predicted within x{factor:.3g}, twice its measured error)")
        else:
            why = "tune='on'"
        budget = self._tune_budget_s or tuning.budget_s(compile_s)
        if self._fast_start:
            first.selection = {"how": "predicted", "winner": winner, "alternatives": predicted,
                               "why": f"{why}; measuring them in the background"}
            self._selection = Selection(planner, compiled, plans[1:], feeds, key=k,
                                        budget=budget, why=why, install=self._switch,
                                        gate=self._gate, budget_error=self.max_rel_error)
            return compiled
        selection = Selection(planner, compiled, plans[1:], feeds, key=k, budget=budget,
                              why=why, install=lambda *_: True,
                              budget_error=self.max_rel_error)
        return selection.run()

    def _switch(self, before: "CompiledPlan", winner: Any, event: str) -> bool:
        """Make the measured ``winner`` the session's plan, unless the session re-planned
        since ``before`` (then its own plan stays); whether it did."""
        with self._lock:
            if self._compiled is not before:
                return False
            winner.plan.predicted_peak_bytes = winner.memory.predicted_peak_bytes
            winner.plan.events.append(event)
            self.planner.history.append(event)
            self._timing.reset(winner.plan)
            self._replace(winner)
        log.info("backplane: %s", event)
        plugin_manager().hook.backplane_plan_ready(plan=winner.plan, graph=self.graph)
        return True
