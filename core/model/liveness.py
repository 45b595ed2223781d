"""Liveness and peak memory: when each value of a run can be dropped, and how many bytes
the live values took at most, predicted from inferred shapes and measured per run.

Shared by the plan executor (values passed between partitions) and the kernel runner
(values passed between nodes).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from backplane.model.graph import ValueInfo


@dataclass(frozen=True)
class MemoryStats:
    """Peak bytes of the values a runner holds at once, predicted and measured.

    The values counted are those the runner's steps produce (intermediates and outputs),
    from the moment they are produced until their last reader has run; inputs and
    constants are not counted (the caller and the model own them).

    Attributes:
        predicted_peak_bytes: the peak predicted at construction from the graph's inferred
            static shapes and dtypes (an unknown dimension counts as 1).
        peak_bytes: the measured peak of the last run to finish (0 before the first run).
        max_peak_bytes: the largest measured peak over every run so far.
        runs: how many runs have been measured.
    """

    predicted_peak_bytes: int
    peak_bytes: int
    max_peak_bytes: int
    runs: int


class PeakMeter:
    """A thread-safe record of per-run peaks.

    Each run counts its own live bytes in local variables and calls :meth:`record` once,
    at its end, so concurrent runs never share a running total.
    """

    def __init__(self, predicted_peak_bytes: int = 0):
        self.predicted_peak_bytes = predicted_peak_bytes
        self._lock = threading.Lock()
        self._last = self._max = self._runs = 0

    def record(self, peak_bytes: int) -> None:
        """Record the measured peak of one finished run."""
        with self._lock:
            self._last = peak_bytes
            if peak_bytes > self._max:
                self._max = peak_bytes
            self._runs += 1

    @property
    def last(self) -> int:
        """The measured peak of the last run to finish."""
        return self._last

    def stats(self) -> MemoryStats:
        """A consistent snapshot of the record."""
        with self._lock:
            return MemoryStats(self.predicted_peak_bytes, self._last, self._max, self._runs)


def free_after(reads: Sequence[Iterable[str]], produced: Sequence[Iterable[str]],
               keep: Iterable[str]) -> list[list[str]]:
    """For each step, the values to drop once it has run.

    A value is dropped after the last step that reads it, or right after the step that
    produces it when no step reads it; values in ``keep`` (outputs, constants) never are.
    """
    last: dict[str, int] = {}
    for i, names in enumerate(produced):
        for name in names:
            if name:
                last.setdefault(name, i)
    for i, names in enumerate(reads):
        for name in names:
            if name:
                last[name] = max(i, last.get(name, i))
    kept = set(keep)
    frees: list[list[str]] = [[] for _ in reads]
    for name, i in last.items():
        if name not in kept:
            frees[i].append(name)
    return frees


def predicted_peak(produced: Sequence[Iterable[str]], frees: Sequence[Iterable[str]],
                   values: "dict[str, ValueInfo]") -> int:
    """The peak of :func:`free_after`'s liveness with each value at its inferred size
    (unknown dimensions count as 1, values of unknown type as 0 bytes)."""
    # on use only: discovery loads this module, and must stay light
    from backplane.ops.costs import nbytes

    made = {name for names in produced for name in names if name}
    live = peak = 0
    for out, gone in zip(produced, frees):
        live += sum(nbytes(values.get(name)) for name in out if name)
        peak = max(peak, live)
        live -= sum(nbytes(values.get(name)) for name in gone if name in made)
    return peak


#: The ONNX element types numpy represents as they are.
NUMPY_DTYPES = {"float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8",
                "uint16", "uint32", "uint64", "bool", "complex64", "complex128"}
