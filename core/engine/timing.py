"""Measured partition times of a session's current plan, fed back to the cost model."""

from __future__ import annotations

import statistics
import threading
from collections import deque
from typing import TYPE_CHECKING

from backplane.engine import costmodel

if TYPE_CHECKING:  # pragma: no cover
    from backplane.engine.plan import Partition, Plan


class Timing:
    """Measured partition times of the current plan, fed back to the cost model.

    Every run's partition times are kept (the last :data:`WINDOW` per partition); each
    partition's median, and one observation for the cost model, are refreshed every
    :data:`EVERY` runs so that the hot path pays one append.
    """

    WINDOW, EVERY = 32, 8

    def __init__(self) -> None:
        self._plan: Plan | None = None
        self._times: list[deque[float]] = []
        self._counts: list[int] = []
        self._lock = threading.Lock()

    def reset(self, plan: Plan) -> None:
        with self._lock:
            self._plan = plan
            self._times = [deque(maxlen=self.WINDOW) for _ in plan.partitions]
            self._counts = [0] * len(plan.partitions)

    def record(self, part: Partition, seconds: float) -> None:
        times, counts = self._times, self._counts
        if part.index >= len(times) or self._plan is None:
            return
        window = times[part.index]
        window.append(seconds)
        # a count of its own: the window stops growing at WINDOW, the runs do not
        n = counts[part.index] = counts[part.index] + 1
        if n % self.EVERY and n != 1:
            return
        plan = self._plan
        if plan.partitions[part.index] is not part:
            return  # a run of a plan that was replaced meanwhile
        part.measured_s = statistics.median(window)
        # The window's median, not this run: one slow run (a page fault, another process
        # waking) should not teach the cost model that a backend is slow.
        costmodel.observe_partition(plan, part, part.measured_s)
