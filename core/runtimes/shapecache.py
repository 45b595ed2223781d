"""Compiled forms of one graph kept per input-shape signature (a bounded LRU).

Graph compilers that compile for static shapes (OpenVINO, NPUs) compile each input-shape
signature a run brings once, and keep the most recent few.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Hashable
from typing import Any


class ShapeCache:
    """Compiled forms by input-shape signature, at most ``size`` of them, the least recently
    used dropped first. Thread-safe: a compile holds the lock, so concurrent runs of a new
    signature compile it once."""

    def __init__(self, size: int):
        self.size = size
        self._lock = threading.Lock()
        self._entries: collections.OrderedDict[Hashable, Any] = collections.OrderedDict()

    def get(self, signature: Hashable, compile: Callable[[Any], Any]) -> Any:
        """The entry for ``signature``: kept, or ``compile(signature)`` now (then kept; an
        exception keeps nothing)."""
        with self._lock:
            entry = self._entries.get(signature)
            if entry is not None:
                self._entries.move_to_end(signature)
                return entry
            entry = compile(signature)
            self._entries[signature] = entry
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
            return entry

    def __len__(self) -> int:
        return len(self._entries)
