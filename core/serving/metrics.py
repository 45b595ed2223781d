"""The server's Prometheus metrics, in a registry of its own (not prometheus-client's
global one, so that two servers in one process, or a test, never share counts).

=============================================  =========  ===============================
metric                                         type       labels
=============================================  =========  ===============================
backplane_inference_requests_total             counter    model, version, outcome
backplane_request_duration_seconds             histogram  model, version
backplane_queue_duration_seconds               histogram  model, version
backplane_batch_size                           histogram  model, version
backplane_batch_padding_rows_total             counter    model, version
backplane_batch_run_duration_seconds           histogram  model, version
backplane_requests_queued                      gauge      model, version
backplane_requests_in_flight                   gauge      device
backplane_device_partitions_in_flight          gauge      device
backplane_device_load_factor                   gauge      device
backplane_plan_events_total                    counter    model, version, kind
=============================================  =========  ===============================

``outcome`` is one of :data:`OUTCOMES`. Request durations are those of answered requests
(success), from the body read to the response built; queue times, batch sizes (requests
per batch) and run times come from the batcher's :class:`~backplane.engine.batcher.BatchRecord`.
``requests_in_flight`` counts the requests running now on each device of their model's
current plan (a request on a two-device plan counts on both); ``partitions_in_flight``
is the executor's own count of partitions running on the device (:mod:`backplane.hardware.liveload`).

Device utilisation: ``device_load_factor`` is the live load the scheduler itself reads
(:func:`backplane.hardware.liveload.slowdown`: 1 = idle; CPU load of other processes through psutil,
GPU utilisation through NVML where the device carries a PCI bus id, plus this process's
partitions in flight). No backend reports a utilisation of its own, so there is no
separate per-runtime utilisation metric.

``plan_events_total`` counts what each model's session adds to ``plan.events`` while it
serves (the events present at load are the plan's starting point, not counted), by kind
(:func:`event_kind`): a device failure the session fell back from, a device excluded, a
precision banned, nodes moved off a device, a device retried after its cool-down, a
request failure that blamed no device, or other.
"""

from __future__ import annotations

import re
import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from backplane.engine.registry import devices
from backplane.hardware import liveload as load

#: The outcomes of an inference request.
OUTCOMES = ("success", "bad_request", "overload", "deadline", "error")
#: Seconds: from half a millisecond to ten seconds.
TIME_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
                10.0)
#: Requests per batch.
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
#: Plan event kinds, by how the event's text begins (the first that matches; the texts
#: are those of :mod:`backplane.engine.recovery` and :class:`backplane.Session`).
EVENT_KINDS = (
    ("device_failure", re.compile(r"re-planned without \S+ for .*\(device failure")),
    ("precision_banned", re.compile(r"re-planned without \S+ at [\w-]+: ")),
    ("device_excluded", re.compile(r"re-planned without \S+: ")),
    ("nodes_moved", re.compile(r"re-planned node\(s\) ")),
    ("device_retried", re.compile(r"retried \S+ after ")),
    ("request_failure", re.compile(r"request failure")),
)


def event_kind(event: str) -> str:
    """The kind of one ``plan.events`` line (see :mod:`backplane.engine.recovery`), or ``other``."""
    return next((kind for kind, pattern in EVENT_KINDS if pattern.match(event)), "other")


class Metrics:
    """The metrics of one server: feed it, then :meth:`exposition` for ``GET /metrics``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        model = ["model", "version"]
        r = self.registry
        self.requests = Counter("backplane_inference_requests", "Inference requests answered, "
                                "by outcome", [*model, "outcome"], registry=r)
        self.latency = Histogram("backplane_request_duration_seconds", "Time to answer a "
                                 "successful inference request", model, buckets=TIME_BUCKETS,
                                 registry=r)
        self.queue = Histogram("backplane_queue_duration_seconds", "Time a request waited in "
                               "the batcher's queue", model, buckets=TIME_BUCKETS, registry=r)
        self.batch_size = Histogram("backplane_batch_size", "Requests per batch run", model,
                                    buckets=SIZE_BUCKETS, registry=r)
        self.padding = Counter("backplane_batch_padding_rows", "Rows added to batches to reach "
                               "a preferred batch size", model, registry=r)
        self.batch_run = Histogram("backplane_batch_run_duration_seconds", "Time the session "
                                   "took to run one batch", model, buckets=TIME_BUCKETS,
                                   registry=r)
        self.queued = Gauge("backplane_requests_queued", "Requests waiting in the batcher's "
                            "queue now", model, registry=r)
        self.in_flight = Gauge("backplane_requests_in_flight", "Requests running now, on each "
                               "device of their model's plan", ["device"], registry=r)
        self.partitions = Gauge("backplane_device_partitions_in_flight", "Partitions this "
                                "process runs on the device now", ["device"], registry=r)
        self.load = Gauge("backplane_device_load_factor", "Live load the scheduler reads for "
                          "the device (1 = idle)", ["device"], registry=r)
        self.events = Counter("backplane_plan_events", "Re-plans, fallbacks and request "
                              "failures a session recorded while serving", [*model, "kind"],
                              registry=r)
        self._seen: dict[tuple[str, str], Tally] = {}
        self._lock = threading.Lock()
        self._models: list[Any] = []

    # -- feeding --------------------------------------------------------------------

    def observer(self, name: str, version: str) -> Callable[[Any], None]:
        """The Batcher observer of one model version: batch sizes, queue and run times."""
        queue = self.queue.labels(name, version)
        size = self.batch_size.labels(name, version)
        padding = self.padding.labels(name, version)
        run = self.batch_run.labels(name, version)

        def observe(record: Any) -> None:
            for seconds in record.queue_s:
                queue.observe(seconds)
            if record.requests:
                size.observe(record.requests)
                run.observe(record.run_s)
            if record.padded:
                padding.inc(record.padded)

        return observe

    def watch(self, models: Iterable[Any]) -> None:
        """Follow these served models (:class:`~backplane.serving.repository.ServedModel`):
        their queues, devices and plan events, read at each :meth:`exposition`. Each
        model's outcomes start at zero so that a scrape lists them all."""
        for m in models:
            self._models.append(m)
            self._seen[(m.name, m.version)] = Tally(m.session.plan.events)
            for outcome in OUTCOMES:
                self.requests.labels(m.name, m.version, outcome)

    def request(self, name: str, version: str, outcome: str, seconds: float | None = None
                ) -> None:
        """Count one answered inference request (and its duration, when it succeeded)."""
        self.requests.labels(name, version, outcome).inc()
        if outcome == "success" and seconds is not None:
            self.latency.labels(name, version).observe(seconds)

    def refresh(self) -> None:
        """Read the live figures: queues, requests and partitions in flight per device,
        load, and the plan events added since the last reading."""
        per_device: Tally = Tally()
        with self._lock:
            for m in self._models:
                self.queued.labels(m.name, m.version).set(m.batcher.queued)
                running = m.batcher.in_flight
                for device in m.devices():
                    per_device[device] += running
                self._count_events(m)
        for d in devices():
            self.in_flight.labels(d.id).set(per_device.get(d.id, 0))
            self.partitions.labels(d.id).set(load.inflight(d.id))
            self.load.labels(d.id).set(load.slowdown(d)[0])

    def _count_events(self, m: Any) -> None:
        """Count the events ``m``'s plan holds beyond those seen (a new plan carries the
        session's history over, so events are matched as a multiset, not by position)."""
        seen = self._seen[(m.name, m.version)]
        now = Tally(m.session.plan.events)
        for event, n in now.items():
            extra = n - seen.get(event, 0)
            if extra > 0:
                self.events.labels(m.name, m.version, event_kind(event)).inc(extra)
                seen[event] = n

    def exposition(self) -> tuple[bytes, str]:
        """(body, content type) of a scrape, after :meth:`refresh`."""
        self.refresh()
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
