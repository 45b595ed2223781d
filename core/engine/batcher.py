"""Dynamic batching over a Session: requests that arrive close together run as one batch.

::

    b = backplane.Batcher(session, max_batch_size=8)
    out = b.infer({"x": x})                 # from any thread
    out = await b.run({"x": x})             # from asyncio
    b.close()                               # answers every accepted request, then stops

How a batch forms. Requests wait in one bounded queue. A worker takes the oldest request
and waits at most ``max_delay_ms`` from its arrival for batch-mates: requests whose inputs
agree in everything but the first (batch) dimension. It runs as soon as the batch is full
or the delay is over; the batch's arrays are concatenated along the first dimension, run
once and split back. Only a few batch sizes ever reach the session:
``preferred_batch_sizes``, by default the powers of two up to ``max_batch_size`` and
``max_batch_size`` itself. A batch takes the waiting requests that fill the largest of
those sizes they can (the rest wait for the next batch, which forms as soon as this one
is running); one that still falls between two sizes (requests of several rows) is padded
up, the last request's rows repeated and their outputs dropped. Each size is run once at
construction (``warmup``), so no request pays a first-seen-size compile: graph compilers
that compile per shape (OpenVINO, TensorRT, NPUs) keep a handful of shapes, and a few sizes
fit where every size from 1 to 32 would not (``preferred_batch_sizes=range(1, 33)`` asks
for exactly that).

When a model is batched. No input's or output's first dimension may be fixed (exporters
name the outputs' as they like, so the names need not agree). Then it is checked by
running: two different random requests, alone and then concatenated, must give the same
rows (within the run-time check's tolerance, :func:`backplane.engine.runcheck.compare`).
Otherwise requests run one by one and :attr:`Batcher.why` says why.

What a request can get back. Its outputs; or its own error, never a batch-mate's: it is
checked alone before it is queued (:class:`InputError`), and a batch that fails is run
again request by request, so that only the request at fault fails. A full queue answers at
once with :class:`OverloadError` (``retry_after_s`` says when to try again); a request
whose deadline (``timeout_s``) passes while it waits is answered with
:class:`DeadlineError` and never run. Every accepted request is answered exactly once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from backplane.engine.runcheck import QUANTIZED_TOLERANCE, compare
from backplane.model.inputs import dims_of, validate_inputs
from backplane.sdk.errors import (BackplaneError, DeadlineError, InputError, OverloadError,
                                  UnsupportedError)
from backplane.sdk.text import first_line, shown

if TYPE_CHECKING:  # pragma: no cover
    from backplane.engine.session import Session

log = logging.getLogger("backplane")

#: Requests the queue holds, unless ``max_queue_size`` is set: this many batches' worth,
#: and at least :data:`MIN_QUEUE` (a queue sized for batches of 1 would refuse a burst of 8).
QUEUE_BATCHES = 4
MIN_QUEUE = 128
#: The shortest wait an OverloadError suggests, in seconds.
MIN_RETRY_S = 0.05


@dataclass(frozen=True)
class BatchRecord:
    """What one batch run was; given to the ``observer`` after each.

    Attributes:
        requests: the requests it answered.
        rows: the rows the session ran, padding included.
        padded: the rows added to reach a preferred size.
        queue_s: each request's time in the queue, in seconds.
        run_s: the session's run time, in seconds (the retries one by one included).
        failed: the requests answered with an error.
        devices: the device ids of the plan that ran it.
    """

    requests: int
    rows: int
    padded: int
    queue_s: tuple[float, ...]
    run_s: float
    failed: int
    devices: tuple[str, ...]


class _Request:
    __slots__ = ("feeds", "rows", "key", "future", "arrived", "deadline")

    def __init__(self, feeds: dict[str, Any] | Mapping[str, Any], rows: int, key: Any,
                 deadline: float | None):
        self.feeds, self.rows, self.key = feeds, rows, key
        self.future: concurrent.futures.Future = concurrent.futures.Future()
        self.arrived = time.monotonic()
        self.deadline = deadline


class Batcher:
    """Dynamic batching over a :class:`~backplane.Session` (see the module's description).

    Args:
        session: the session every batch runs on (its ``run`` is thread-safe).
        max_batch_size: the most rows one batch holds; 1 runs requests one by one.
        max_delay_ms: the longest a request waits for batch-mates (default 0, as in Triton:
            no wait; batches still form from what queues while the previous batch runs,
            and a request alone pays no delay).
        preferred_batch_sizes: the only batch sizes run (a batch is padded up to the
            smallest that holds it; default: the powers of two below ``max_batch_size``);
            ``max_batch_size`` is always one of them.
        max_queue_size: the most requests waiting at once (default ``4 * max_batch_size``,
            at least 128); one more is refused with :class:`OverloadError`.
        timeout_s: the default deadline of a request, in seconds from its arrival (None:
            none); a request still queued at its deadline gets :class:`DeadlineError`.
        warmup: run each batch size that can form once, now, so that none compiles later,
            and check that the model's rows are independent (``False``: neither; the
            declared shapes decide). The rows are random inputs at the sizes of the
            session's ``dims``; give a request (a dict of arrays) instead to warm its other
            dimensions (an image's sides, a sequence's length).
        observer: called with a :class:`BatchRecord` after every batch, from a worker
            thread; its errors are logged and ignored.
        workers: the batches run at once (each on its own thread).
    """

    def __init__(self, session: "Session", *, max_batch_size: int = 8,
                 max_delay_ms: float = 0.0,
                 preferred_batch_sizes: Iterable[int] | None = None,
                 max_queue_size: int | None = None, timeout_s: float | None = None,
                 warmup: bool | Mapping[str, Any] = True,
                 observer: Callable[[BatchRecord], Any] | None = None, workers: int = 1):
        _positive_int("max_batch_size", max_batch_size)
        _positive_int("workers", workers)
        if not isinstance(max_delay_ms, (int, float)) or not 0 <= max_delay_ms < math.inf:
            raise UnsupportedError(f"max_delay_ms is a number of milliseconds >= 0, not "
                                   f"{max_delay_ms!r}")
        if not _deadline_ok(timeout_s):
            raise UnsupportedError(f"timeout_s is a positive number of seconds or None, not "
                                   f"{timeout_s!r}")
        if max_queue_size is None:
            max_queue_size = max(MIN_QUEUE, QUEUE_BATCHES * max_batch_size)
        _positive_int("max_queue_size", max_queue_size)
        preferred = sorted(set(preferred_batch_sizes or ()))
        for size in preferred:
            _positive_int("each of preferred_batch_sizes", size)
            if size > max_batch_size:
                raise UnsupportedError(f"preferred batch size {size} is over max_batch_size "
                                       f"{max_batch_size}; raise max_batch_size or drop it")
        self.session = session
        self.max_batch_size, self.max_delay_ms = max_batch_size, float(max_delay_ms)
        self.preferred_batch_sizes = tuple(preferred)
        self.max_queue_size, self.timeout_s = max_queue_size, timeout_s
        self.observer, self.workers = observer, workers
        self._symbols, self.why = _batch_dimension(session)
        self.batching = self._symbols is not None and max_batch_size > 1
        if self._symbols is not None and max_batch_size == 1:
            self.why = "max_batch_size is 1: requests run one by one"
        if not preferred:
            preferred = [1 << k for k in range(max_batch_size.bit_length())]
        self.sizes: tuple[int, ...] = ((1,) if not self.batching else
                                       tuple(sorted(set(preferred) | {max_batch_size})))
        if self.batching and warmup is not False:
            self._warm_up(warmup if isinstance(warmup, Mapping) else None)
        self._queue: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._queued = self._running = 0
        self._run_s_per_batch = 0.0  # a moving average, for retry_after_s
        self._threads = [threading.Thread(target=self._work, name=f"backplane-batcher-{i}",
                                          daemon=True) for i in range(workers)]
        for t in self._threads:
            t.start()

    # -- the caller's side ------------------------------------------------------------

    def submit(self, inputs: Mapping[str, Any], *, timeout_s: float | None = None
               ) -> concurrent.futures.Future:
        """Queue one request. Returns a future of its outputs (a dict of arrays), or of
        its error: InputError (its inputs are wrong), OverloadError (the queue is full, or
        the batcher is closing), DeadlineError, or the session's error. Never raises."""
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        try:
            request = self._request(inputs, timeout_s)
        except BackplaneError as exc:
            return _failed(exc)
        with self._cond:
            if self._closing:
                return _failed(OverloadError(
                    "the batcher is closing and accepts no more requests; send it to "
                    "another replica", retry_after_s=None))
            if self._queued >= self.max_queue_size:
                wait = max(MIN_RETRY_S, self._run_s_per_batch
                           * math.ceil(self._queued / self.max_batch_size) / self.workers)
                return _failed(OverloadError(
                    f"the queue is full ({self._queued} requests waiting, max_queue_size "
                    f"{self.max_queue_size}); retry in {wait:.2g} s or raise max_queue_size",
                    retry_after_s=wait))
            self._queue.append(request)
            self._queued += 1
            self._cond.notify()
        return request.future

    def infer(self, inputs: Mapping[str, Any], *, timeout_s: float | None = None
              ) -> dict[str, Any]:
        """Run one request and wait for its outputs; raises its error."""
        return self.submit(inputs, timeout_s=timeout_s).result()

    async def run(self, inputs: Mapping[str, Any], *, timeout_s: float | None = None
                  ) -> dict[str, Any]:
        """``await`` one request's outputs from asyncio; raises its error."""
        return await asyncio.wrap_future(self.submit(inputs, timeout_s=timeout_s))

    @property
    def queued(self) -> int:
        """Requests waiting now."""
        return self._queued

    @property
    def in_flight(self) -> int:
        """Requests running now."""
        return self._running

    def config(self) -> dict[str, Any]:
        """The settings, as plain data."""
        return {"max_batch_size": self.max_batch_size, "max_delay_ms": self.max_delay_ms,
                "preferred_batch_sizes": list(self.preferred_batch_sizes),
                "max_queue_size": self.max_queue_size, "timeout_s": self.timeout_s,
                "workers": self.workers, "batching": self.batching, "why": self.why,
                "sizes": list(self.sizes)}

    def close(self, *, drain: bool = True, timeout_s: float | None = None) -> None:
        """Accept no more requests. With ``drain`` every queued request is run and
        answered first; without, each is answered with OverloadError, unrun. Waits for the
        workers at most ``timeout_s`` seconds (None: until they finish)."""
        with self._cond:
            self._closing = True
            dropped = [] if drain else list(self._queue)
            if not drain:
                self._queue.clear()
                self._queued = 0
            self._cond.notify_all()
        for r in dropped:
            if r.future.set_running_or_notify_cancel():
                r.future.set_exception(OverloadError(
                    "the batcher closed before this request ran; send it again elsewhere",
                    retry_after_s=None))
        end = None if timeout_s is None else time.monotonic() + timeout_s
        for t in self._threads:
            t.join(None if end is None else max(0.0, end - time.monotonic()))

    def __enter__(self) -> "Batcher":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _request(self, inputs: Mapping[str, Any], timeout_s: float | None) -> _Request:
        if not _deadline_ok(timeout_s):
            raise InputError(f"timeout_s is a positive number of seconds or None, not "
                             f"{timeout_s!r}")
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        graph = self.session.graph
        if isinstance(inputs, Mapping) and set(inputs) - {vi.name for vi in graph.inputs}:
            # Names that are no input: misspelt (the session says so), or initializers the
            # request overrides, which the session runs on their own model: never batched.
            return _Request(inputs, 0, None, deadline)
        feeds = validate_inputs(graph, inputs)
        if not self.batching:
            return _Request(feeds, 0, None, deadline)
        rows = {a.shape[0] if a.ndim else None for a in feeds.values()}
        if len(rows) != 1 or None in rows or 0 in rows:
            return _Request(feeds, 0, None, deadline)  # alone: the session says what is wrong
        key = tuple((n, str(a.dtype), a.shape[1:]) for n, a in sorted(feeds.items()))
        return _Request(feeds, rows.pop(), key, deadline)

    # -- the worker's side ------------------------------------------------------------

    def _work(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            if batch:
                self._run(batch)

    def _next_batch(self) -> list[_Request] | None:
        """The next requests to run together, oldest first; None once closed and empty."""
        delay = self.max_delay_ms / 1000
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            first = self._queue[0]
            if first.key is not None and first.rows < self.max_batch_size:
                while not self._closing:
                    left = first.arrived + delay - time.monotonic()
                    if left <= 0 or first not in self._queue or self._rows_like(first) \
                            >= self.max_batch_size:
                        break
                    self._cond.wait(left)
                if not self._queue:
                    return [] if not self._closing else None
                first = self._queue[0]  # another worker may have taken it meanwhile
            batch, rows = [first], first.rows
            if first.key is not None:
                for r in list(self._queue)[1:]:
                    if r.key == first.key and rows + r.rows <= self.max_batch_size:
                        batch.append(r)
                        rows += r.rows
            sizes_under = [s for s in self.sizes if s <= rows]
            while len(batch) > 1 and sizes_under and rows > sizes_under[-1]:
                rows -= batch.pop().rows  # the newest wait for the next batch
            for r in batch:
                self._queue.remove(r)
            self._queued -= len(batch)
            # A request its caller cancelled while queued (an asyncio task cancelled, a
            # client gone) is dropped; the rest can no longer be cancelled.
            batch = [r for r in batch if r.future.set_running_or_notify_cancel()]
            self._running += len(batch)
        return batch

    def _rows_like(self, first: _Request) -> int:
        return sum(r.rows for r in self._queue if r.key == first.key)

    def _run(self, batch: list[_Request]) -> None:
        now = time.monotonic()
        live = []
        for r in batch:
            if r.deadline is not None and now > r.deadline:
                r.future.set_exception(DeadlineError(
                    f"the request waited {now - r.arrived:.3g} s in the queue, past its "
                    f"deadline of {r.deadline - r.arrived:.3g} s; it was not run. Raise "
                    f"timeout_s, or send fewer requests at once"))
            else:
                live.append(r)
        queue_s = tuple(now - r.arrived for r in live)
        started = time.perf_counter()
        rows = padded = failed = 0
        try:
            if len(live) == 1 and (live[0].key is None or live[0].rows in self.sizes):
                rows = live[0].rows or 1
                failed = _answer(live[0], self.session.run, live[0].feeds)
            elif live:
                rows, padded, failed = self._run_together(live)
        finally:
            for r in live:  # every accepted request is answered, whatever happened above
                if not r.future.done():
                    failed += 1
                    r.future.set_exception(BackplaneError(
                        "the batcher failed to run this request; see the log"))
            run_s = time.perf_counter() - started
            with self._cond:
                self._running -= len(batch)
                self._run_s_per_batch = (run_s if not self._run_s_per_batch
                                         else 0.8 * self._run_s_per_batch + 0.2 * run_s)
        if self.observer is not None:
            self._observe(BatchRecord(len(live), rows, padded, queue_s, run_s,
                                      failed + len(batch) - len(live), self._devices()))

    def _run_together(self, batch: list[_Request]) -> tuple[int, int, int]:
        """Run ``batch`` as one: (rows run, rows padded, requests failed)."""
        rows = sum(r.rows for r in batch)
        size = next((s for s in self.sizes if s >= rows), rows)
        names = list(batch[0].feeds)
        feeds = {n: np.concatenate([r.feeds[n] for r in batch]
                                   + ([batch[-1].feeds[n][-1:]] * (size - rows)), axis=0)
                 for n in names}
        try:
            out = self.session.run(feeds)
            for name, value in out.items():
                if getattr(value, "ndim", 0) == 0 or value.shape[0] != size:
                    raise BackplaneError(f"output '{shown(name)}' has shape "
                                         f"{getattr(value, 'shape', None)}, not {size} rows")
        except Exception as exc:  # noqa: BLE001 - any failure is retried one by one
            # One request may be at fault: run each alone, so that only it fails.
            log.debug("backplane: a batch of %d failed (%s); running its requests one by one",
                      len(batch), first_line(str(exc)))
            return size, size - rows, sum(_answer(r, self.session.run, r.feeds)
                                          for r in batch)
        start = 0
        for r in batch:
            r.future.set_result({n: v[start:start + r.rows] for n, v in out.items()})
            start += r.rows
        return size, size - rows, 0

    def _devices(self) -> tuple[str, ...]:
        try:
            return tuple(self.session.plan.devices_used)
        except Exception:  # noqa: BLE001 - a record never fails a batch
            return ()

    def _observe(self, record: BatchRecord) -> None:
        try:
            self.observer(record)
        except Exception:  # noqa: BLE001 - a broken observer never breaks batching
            log.warning("backplane: the batcher's observer failed", exc_info=True)

    def _warm_up(self, like: Mapping[str, Any] | None) -> None:
        """Check that rows are independent (else batching goes off), then run each size,
        on random rows of the sizes of ``like`` (a request) or of the session's ``dims``."""
        try:
            dims = dims_of(self.session.graph, validate_inputs(self.session.graph, like)) \
                if like is not None else {}
            dims.update(dict.fromkeys(self._symbols or (), 1))
            one = [self.session.random_inputs(seed, dims) for seed in (0, 1)]
            alone = [self.session.run(x) for x in one]
            both = self.session.run({n: np.concatenate([one[0][n], one[1][n]])
                                     for n in one[0]})
            floor = QUANTIZED_TOLERANCE if self.session.precision != "fp32" else 0.0
            for name, value in both.items():
                if getattr(value, "ndim", 0) == 0 or value.shape[0] != 2:
                    raise _NotBatched(f"output '{shown(name)}' has "
                                      f"{getattr(value, 'shape', None)} for 2 rows in")
                for i in (0, 1):
                    wrong, _ = compare(np, value[i:i + 1], alone[i][name], floor)
                    if wrong:
                        raise _NotBatched(f"row {i} of output '{shown(name)}' run in a batch "
                                          f"of 2 differs from the same request alone: {wrong}")
            for size in self.sizes:
                self.session.run({n: np.concatenate([one[i % 2][n] for i in range(size)])
                                  for n in one[0]})
        except _NotBatched as exc:
            self._off(f"its rows are not independent: {exc}")
        except BackplaneError as exc:
            self._off(f"the batching check on random inputs failed: {first_line(str(exc))}")

    def _off(self, why: str) -> None:
        log.warning("backplane: batching is off for this model: %s", why)
        self.batching, self.sizes, self.why = False, (1,), why


class _NotBatched(Exception):
    pass


def _batch_dimension(session: "Session") -> tuple[frozenset[str] | None, str]:
    """(the inputs' symbols of their first dimension, or None when nothing can be batched;
    why). Outputs need only a first dimension that is not fixed: exporters name it as they
    like (``Addlast_hidden_state_dim_0``), and the check by running decides."""
    symbols = set()
    for kind, values in (("input", session.inputs), ("output", session.outputs)):
        for vi in values:
            if vi.dtype.startswith(("optional(", "seq(", "map(")) or not vi.shape:
                return None, (f"{kind} '{shown(vi.name)}' has no first dimension to batch "
                              f"along ({vi.describe()}): requests run one by one")
            if isinstance(vi.shape[0], int):
                return None, (f"{kind} '{shown(vi.name)}' has a fixed first dimension "
                              f"({vi.describe()}): requests run one by one")
            if kind == "input" and isinstance(vi.shape[0], str):
                symbols.add(vi.shape[0])
    named = ", ".join(f"'{shown(s)}'" for s in sorted(symbols)) or "unnamed"
    return frozenset(symbols), (f"every input and output has a first dimension that is not "
                                f"fixed ({named}): batched")


def _answer(request: _Request, run: Callable[[Any], Any], feeds: Any) -> int:
    """Run one request and answer it; 1 when it failed."""
    try:
        request.future.set_result(run(feeds))
        return 0
    except BaseException as exc:  # noqa: BLE001 - the request's error is its answer
        request.future.set_exception(exc)
        return 1


def _failed(exc: BaseException) -> concurrent.futures.Future:
    future: concurrent.futures.Future = concurrent.futures.Future()
    future.set_exception(exc)
    return future


def _deadline_ok(timeout_s: Any) -> bool:
    """Whether ``timeout_s`` is a deadline: None, or a positive finite number of seconds."""
    return timeout_s is None or (isinstance(timeout_s, (int, float))
                                 and 0 < timeout_s < math.inf)


def _positive_int(what: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UnsupportedError(f"{what} is a positive whole number, not {value!r}")
