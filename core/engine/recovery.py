"""What a session does when a run fails: tell the request's fault from the device's.

A run that fails on a device is run again on the plan the session would fall back to
(built once, and kept while the plan it replaces is current):

- it succeeds there: the device was at fault. The session keeps the fallback plan and
  tries the device again after a cool-down (``Session(cooldown_s=...)``, doubled at each
  further failure of the same device, at most :data:`MAX_COOLDOWN_S`); when nothing else
  changed meanwhile, the plan it left is taken back without a new compile;
- it fails there too: the request was at fault (or the model). It fails alone with a
  :class:`~backplane.sdk.errors.RequestError`, and no device is excluded;
- no other allowed device can run the model: nothing can tell, so the device stays and the
  request fails with the device's error;
- the device's outputs disagreed with the reference in the run-time check
  (:mod:`backplane.engine.runcheck`): it is excluded for the session's life.

Each case is an event in ``plan.events``; request failures are recorded one by one up to
:data:`REQUEST_EVENTS`, so that a stream of bad requests cannot grow a plan without bound.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from backplane.engine import qualification
from backplane.sdk.errors import BackendError, RequestError, UnsupportedError, VerificationError
from backplane.sdk.text import first_line

#: How long a device that failed at run time is planned without, at first; each further
#: failure of the same device doubles it, up to :data:`MAX_COOLDOWN_S`.
DEFAULT_COOLDOWN_S = 60.0
MAX_COOLDOWN_S = 3600.0
#: Request failures recorded one by one in ``plan.events``; later ones are counted.
REQUEST_EVENTS = 10

log = logging.getLogger("backplane")

if TYPE_CHECKING:  # pragma: no cover
    from backplane.engine.executor import CompiledPlan


class Recovery:
    """The run-failure handling of :class:`backplane.Session` (a part of it, kept apart).

    It reads and changes the session's plan state: ``_compiled``, ``planner`` (what is
    excluded, and the history), ``_timing`` and ``_lock``, and calls its ``_build``.
    """

    def _recovering(self) -> None:
        """Set up the state of the failure handling (called by the session's ``__init__``)."""
        self._cooling: dict[str, tuple[float, float]] = {}  # device: (until, cool-down s)
        self._alternate: tuple[Any, str, Any] | None = None  # (plan, without, fallback)
        self._strikes: dict[str, float] = {}  # device: its last cool-down
        self._before: dict[str, tuple[Any, Any, int]] = {}  # the plan a cool-down left
        self._request_failures = 0

    def _after_failure(self, compiled: "CompiledPlan", exc: BackendError,
                       feeds: Mapping[str, Any]) -> dict[str, Any] | None:
        """Tell a device's failure from the request's (see :meth:`run`): the request's
        outputs when the fallback plan answered it, None to run it again on the session's
        new plan; raises when the request is at fault or nothing can tell."""
        with self._lock:
            if self._compiled is not compiled:
                return None  # another thread re-planned meanwhile: run on its plan
            if exc.device in self.planner.excluded:
                raise exc  # not the named device's fault: re-planning cannot help
            why = str(exc)
            if isinstance(exc, VerificationError):  # wrong values: for the session's life
                self.planner.exclude(exc.device, why)
                self._replace(self._build())
                return None
            try:
                fallback = self._fallback(compiled, exc.device, why)
            except UnsupportedError:
                raise type(exc)(
                    f"{exc}. No other allowed device can run this model, so the request's "
                    f"fault cannot be told from the device's; {exc.device} stays in the plan",
                    backend=exc.backend, device=exc.device, op=exc.op,
                    vendor_message=exc.vendor_message, nodes=exc.nodes) from exc
            try:
                answer = fallback.run(feeds)
            except VerificationError as wrong:  # the fallback's fault: exclude it, try again
                self._timing.reset(compiled.plan)
                self.planner.exclude(wrong.device, str(wrong))
                self._alternate = None
                return None
            except BackendError as again:
                self._timing.reset(compiled.plan)
                self._request_failed(compiled, exc, again)
            self._cool(compiled, exc.device, why, fallback)
            return answer

    def _fallback(self, compiled: "CompiledPlan", device: str, why: str) -> "CompiledPlan":
        """The plan without ``device`` that ``compiled`` falls back to (built once)."""
        kept = self._alternate
        if kept is not None and kept[0] is compiled and kept[1] == device:
            return kept[2]
        self.planner.excluded[device] = why
        try:
            fallback = self._build()
        finally:
            del self.planner.excluded[device]  # until the fallback shows it is the device's fault
        self._alternate = (compiled, device, fallback)
        return fallback

    def _cool(self, compiled: "CompiledPlan", device: str, why: str,
              fallback: "CompiledPlan") -> None:
        """Plan without ``device`` for its cool-down: the fallback answered the request."""
        key = self.planner.state()
        seconds = self._strikes.get(device)
        seconds = min(MAX_COOLDOWN_S, 2 * seconds) if seconds else self.cooldown_s
        self._strikes[device] = seconds
        self._before[device] = (compiled, key, len(self.planner.history))
        event = (f"re-planned without {device} for {seconds:g} s (device failure: the plan "
                 f"without it ran the same request): {why}")
        self.planner.excluded[device] = why
        self._cooling[device] = (time.monotonic() + seconds, seconds)
        fallback.plan.events.insert(len(self.planner.history), event)
        self.planner.history.append(event)
        self._alternate = None
        self._replace(fallback)
        log.warning("backplane: %s; re-planning without it for %g s", why, seconds)

    def _return_cooled(self) -> None:
        """Plan again with every device whose cool-down has passed."""
        now = time.monotonic()
        pending = list(self._cooling.values())  # (another thread may empty it meanwhile)
        if not pending or min(until for until, _ in pending) > now:
            return
        with self._lock:
            due = [d for d, (until, _) in self._cooling.items() if until <= now]
            for device in due:
                seconds = self._cooling.pop(device)[1]
                why = self.planner.excluded.pop(device, "")
                self.planner.history.append(f"retried {device} after its {seconds:g} s cool-down "
                                     f"(it had failed: {first_line(why)})")
            if not due:
                return
            kept = self._before.pop(due[0], None) if len(due) == 1 else None
            if kept is not None and kept[1] == self.planner.state():  # as it was: no new compile
                compiled, _, n = kept
                compiled.plan.events[:n] = self.planner.history
                self._timing.reset(compiled.plan)
                self._replace(compiled)
            else:
                self._replace(self._build())
            self._alternate = None

    def _request_failed(self, compiled: "CompiledPlan", exc: BackendError,
                        again: BackendError) -> None:
        """Raise the RequestError of a request that failed on ``exc.device`` and again on
        the fallback plan; record it in the plan's events (the first few)."""
        elsewhere = again.device or f"backend '{again.backend}'"
        event = (f"request failure, no device excluded: the request failed on {exc.device} "
                 f"and again on {elsewhere} (the plan without it): {first_line(exc)}")
        self._request_failures += 1
        if self._request_failures <= REQUEST_EVENTS:
            self.planner.history.append(event)
            compiled.plan.events.append(event)
        elif self._request_failures == REQUEST_EVENTS + 1:
            more = (f"more than {REQUEST_EVENTS} requests failed on their inputs; later "
                    "ones are not recorded")
            self.planner.history.append(more)
            compiled.plan.events.append(more)
        raise RequestError(
            f"the request failed on {exc.device} and again on {elsewhere}, the plan the "
            f"session falls back to, so its inputs (or the model) are at fault, not a "
            f"device; no device was excluded. Check the inputs against session.inputs. "
            f"{exc.device}: {exc} | {elsewhere}: {again}", backend=exc.backend,
            device=exc.device, op=exc.op, vendor_message=exc.vendor_message) from exc

    def _replace(self, compiled: "CompiledPlan") -> None:
        """Make ``compiled`` the session's plan; its events say where the move changes what
        NaN, infinity or a signed zero give (for the ops that moved)."""
        before = self._compiled.plan
        self._compiled = compiled
        for line in qualification.special_value_change(before, compiled.plan):
            if line not in compiled.plan.events:
                compiled.plan.events.append(line)
