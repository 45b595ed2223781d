"""Ray Serve: backplane sessions as replicas across the machines of a Ray cluster.

::

    from ray import serve
    from backplane.serving.ray import deployment

    app = deployment("model.onnx", devices=["cuda-tensorrt"], num_replicas=4,
                     max_batch_size=8)
    handle = serve.run(app)                                   # a DeploymentHandle
    out = handle.infer.remote({"x": x}).result()              # numpy in, numpy out
    # HTTP through Serve's proxy: POST / {"inputs": {"x": [[...]]}} -> {"outputs": {...}}

Each replica builds a :class:`~backplane.Session` on the devices of its node and a
:class:`~backplane.engine.batcher.Batcher` over it; the batching parameters go to that Batcher
(Ray's ``@serve.batch`` is not used: two batchers in a row would each wait for the other's
batch-mates). Serve hands a replica at most ``max_ongoing_requests`` requests at once, so
that bound must be at least ``max_batch_size`` or batches never fill (Ray issue 43288);
:func:`deployment` sets it to ``2 * max_batch_size`` (one batch running, the next forming).

Placement. :func:`node_resources` is what a node advertises (``ray start --resources
"$(python -m backplane.serving.ray resources)"``): ``{"backplane/BACKEND": devices}`` for
every backend with devices there. :func:`ray_resources` is what a replica asks for, from
the devices it is to run on: ``num_gpus`` for NVIDIA and AMD GPUs (Ray then shows the
replica only the GPUs it assigned), one ``backplane/BACKEND`` per accelerator device, and
a sliver of ``backplane/BACKEND`` for CPU devices (a label: many replicas share a CPU,
which Ray counts in ``num_cpus``). So replicas land only on nodes that have those devices.

Errors reach the caller as backplane errors: through a handle the exception raised is an
instance of the replica's (:class:`~backplane.InputError` for a request's own wrong inputs,
:class:`~backplane.OverloadError`, :class:`~backplane.DeadlineError` ...) and the replica
keeps serving; over HTTP they are status codes (400, 503 with ``Retry-After``, 504, 500)
with ``{"error": message, "type": class name}``.

Needs the ``ray`` extra: ``pip install 'backplane-hal[ray]'``.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from typing import Any

from backplane.engine.batcher import Batcher
from backplane.engine.registry import devices as found_here, registry
from backplane.engine.session import Session
from backplane.sdk.contract import Device
from backplane.sdk.errors import BackplaneError, DeviceNotFoundError, InputError, UnsupportedError
from backplane.serving.protocol import error_status

log = logging.getLogger("backplane")

INSTALL_HINT = "pip install 'backplane-hal[ray]'"
#: The prefix of the custom Ray resources backplane's nodes advertise.
PREFIX = "backplane/"
#: What a replica asks of ``backplane/BACKEND`` for a CPU device: a label, not a share
#: (Ray counts CPUs in ``num_cpus``); a node advertises 1 per device, so 1000 replicas fit.
CPU_LABEL = 0.001
#: Vendors whose GPUs Ray counts as ``GPU`` (CUDA and ROCm).
RAY_GPU_VENDORS = ("nvidia", "amd", "advanced micro devices")
#: BatchRecords a replica keeps for :meth:`BackplaneReplica.stats`.
RECENT_BATCHES = 64


# -- resources ----------------------------------------------------------------------------

def _devices(devices: Any, *, one_per_backend: bool = False) -> list[Any]:
    """``devices`` as a list of Device objects, dicts (``backplane devices --json``) or
    strings this machine cannot resolve (a driver without the node's GPUs). With
    ``one_per_backend``, a backend name stands for one device of it (its first here)."""
    if devices is None or (isinstance(devices, str) and devices == "auto"):
        return list(found_here())
    items = [devices] if isinstance(devices, (str, Device, Mapping)) else list(devices)
    out: list[Any] = []
    for item in items:
        if isinstance(item, str):
            try:
                found = registry().resolve(item)
            except DeviceNotFoundError:
                found = [item]  # named for a node elsewhere: its backend is all we know
            out += found[:1] if one_per_backend and ":" not in item else found
        else:
            out.append(item)
    return out


def _field(device: Any, key: str) -> Any:
    return device.get(key) if isinstance(device, Mapping) else getattr(device, key, None)


def _backend_of(device: Any) -> str:
    if isinstance(device, str):
        return device.partition(":")[0]
    return _field(device, "backend") or str(_field(device, "id") or "").partition(":")[0]


def _is_ray_gpu(device: Any) -> bool:
    if isinstance(device, str) or _field(device, "kind") != "gpu":
        return False
    vendor = str(_field(device, "vendor") or "").lower()
    return any(v in vendor for v in RAY_GPU_VENDORS)


def node_resources(devices: Any = None) -> dict[str, float]:
    """The custom Ray resources this node has, for ``ray start --resources`` or
    ``ray.init(resources=...)``: ``{"backplane/BACKEND": number of its devices here}`` for
    every backend with a device (``devices``: default every device backplane finds).
    GPUs themselves are Ray's own ``GPU`` resource, which Ray detects."""
    counts = Counter(_backend_of(d) for d in _devices(devices))
    return {f"{PREFIX}{b}": float(n) for b, n in sorted(counts.items()) if b}


def ray_resources(devices: Any = "auto", *, num_cpus: float = 1.0,
                  custom: bool = True) -> dict[str, Any]:
    """What a replica that runs on ``devices`` asks Ray for, as ``ray_actor_options``:
    ``num_cpus``, ``num_gpus`` (one per NVIDIA or AMD GPU among them) and, with ``custom``,
    ``resources`` = ``{"backplane/BACKEND": amount}`` (1 per accelerator device,
    :data:`CPU_LABEL` for a CPU device, also for a backend named here without devices).

    ``devices``: device ids or backend names (resolved on this machine where it can; a
    backend name asks for one device of that backend), :class:`~backplane.Device` objects
    or their dicts, or ``"auto"``, which asks for no device resource at all: the replica
    then runs on whatever its node has."""
    options: dict[str, Any] = {"num_cpus": num_cpus}
    if isinstance(devices, str) and devices == "auto":
        return options
    wanted: dict[str, float] = {}
    gpus = 0
    for d in _devices(devices, one_per_backend=True):
        backend = _backend_of(d)
        if isinstance(d, str) or _field(d, "kind") == "cpu":
            wanted[backend] = max(wanted.get(backend, 0.0), CPU_LABEL)
            continue
        wanted[backend] = wanted.get(backend, 0.0) + 1.0
        gpus += _is_ray_gpu(d)
    if gpus:
        options["num_gpus"] = float(gpus)
    if custom and wanted:
        options["resources"] = {f"{PREFIX}{b}": v for b, v in sorted(wanted.items())}
    return options


def _replica_devices(devices: Any) -> Any:
    """The ``devices=`` a replica's Session gets. Ray shows a replica only the GPUs it
    assigned, as its backend's first devices whatever their index on the node, so a GPU
    named by id becomes its backend's name; everything else stays as given."""
    if isinstance(devices, str) and devices == "auto":
        return "auto"
    items = [devices] if isinstance(devices, (str, Device, Mapping)) else list(devices)
    out: list[str] = []
    for item in items:
        spec = item if isinstance(item, str) else str(_field(item, "id"))
        if ":" in spec and any(_is_ray_gpu(d) for d in _devices(item)):
            spec = _backend_of(spec)
        if spec not in out:
            out.append(spec)
    return out


# -- the replica --------------------------------------------------------------------------

class BackplaneReplica:
    """One Ray Serve replica: a Session and a Batcher over it.

    Called over HTTP (``__call__``: JSON ``{"inputs": {name: nested list}}`` in,
    ``{"outputs": {name: nested list}}`` out) or through a DeploymentHandle (:meth:`infer`:
    a dict of numpy arrays in and out). :meth:`stats` says how requests were batched.
    """

    def __init__(self, model: Any, devices: Any = "auto",
                 batching: Mapping[str, Any] | None = None,
                 session_options: Mapping[str, Any] | None = None):
        self.session = Session(model, devices=devices, **dict(session_options or {}))
        self._lock = threading.Lock()
        self._totals: Counter = Counter()
        self._sizes: Counter = Counter()
        self._recent: deque = deque(maxlen=RECENT_BATCHES)
        self.batcher = Batcher(self.session, observer=self._observe, **dict(batching or {}))
        self._dtypes = {vi.name: vi.dtype for vi in self.session.inputs}

    def _observe(self, record: Any) -> None:
        with self._lock:
            self._totals.update(batches=1, requests=record.requests, rows=record.rows,
                                padded=record.padded, failed=record.failed)
            self._sizes[record.requests] += 1
            self._recent.append(record)

    async def infer(self, inputs: Mapping[str, Any], timeout_s: float | None = None
                    ) -> dict[str, Any]:
        """Run one request (a dict of numpy arrays) in a batch with others; its outputs,
        or its error (InputError for its own wrong inputs; its batch-mates still run)."""
        if not isinstance(inputs, Mapping):
            raise InputError(f"inputs are a dict of input name to array, not "
                             f"{type(inputs).__name__}; the model's inputs: "
                             f"{', '.join(self._dtypes)}")
        return await self.batcher.run(inputs, timeout_s=timeout_s)

    async def __call__(self, request: Any) -> Any:
        """HTTP: ``{"inputs": {name: nested list}}`` -> ``{"outputs": {...}}``; errors as
        ``{"error", "type"}`` with 400 (the request's fault), 503 (+ ``Retry-After``),
        504 (deadline) or 500."""
        from starlette.responses import Response

        try:
            try:
                body = await request.json()
            except ValueError as exc:
                raise InputError(f"the request body is not JSON: {exc}") from None
            inputs = body.get("inputs") if isinstance(body, dict) else None
            if not isinstance(inputs, dict):
                raise InputError('the request body is {"inputs": {name: nested list}}; '
                                 f"the model's inputs: {', '.join(self._dtypes)}")
            timeout_s = body.get("timeout_s")
            outputs = await self.infer(self._arrays(inputs), timeout_s=timeout_s)
            status, data, headers = 200, {"outputs": {k: _plain(v) for k, v in
                                                      outputs.items()}}, {}
        except BackplaneError as exc:
            status, headers = error_status(exc)
            data = {"error": str(exc), "type": type(exc).__name__}
        return Response(json.dumps(data), status_code=status, headers=headers,
                        media_type="application/json")

    def _arrays(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        import numpy as np

        out = {}
        for name, value in inputs.items():
            dtype = self._dtypes.get(name)
            try:
                out[name] = np.asarray(value, dtype=np.dtype(dtype) if dtype else None)
            except TypeError:  # a dtype numpy does not name (bfloat16, string): as given
                out[name] = np.asarray(value)
            except ValueError as exc:  # ragged lists, text where numbers belong
                raise InputError(f"input '{name}' is no {dtype} array: {exc}") from None
        return out

    def stats(self) -> dict[str, Any]:
        """How requests were batched so far: totals (``batches``, ``requests``, ``rows``,
        ``padded``, ``failed``), ``requests_per_batch`` (size: batches), the last batches
        (``recent``, as BatchRecord fields), the Batcher's ``config`` and the devices of
        the plan."""
        import dataclasses

        with self._lock:
            return {**{k: self._totals.get(k, 0) for k in
                       ("batches", "requests", "rows", "padded", "failed")},
                    "requests_per_batch": dict(sorted(self._sizes.items())),
                    "recent": [dataclasses.asdict(r) for r in self._recent],
                    "config": self.batcher.config(),
                    "queued": self.batcher.queued, "in_flight": self.batcher.in_flight,
                    "devices": self.session.plan.devices_used}

    def plan(self) -> dict[str, Any]:
        """The session's plan as plain data (what runs where, and why)."""
        return self.session.plan.to_dict()

    def __del__(self) -> None:
        # Serve calls this on a graceful shutdown: answer what was accepted, then stop.
        batcher = getattr(self, "batcher", None)
        if batcher is not None:
            batcher.close(drain=True, timeout_s=30)


def _plain(value: Any) -> Any:
    tolist = getattr(value, "tolist", None)
    return tolist() if callable(tolist) else value


# -- the deployment -----------------------------------------------------------------------

def deployment(model: Any, *, name: str | None = None, devices: Any = "auto",
               num_replicas: int | str = 1, max_batch_size: int = 8,
               max_delay_ms: float = 0.0, preferred_batch_sizes: Iterable[int] | None = None,
               max_queue_size: int | None = None, timeout_s: float | None = None,
               max_ongoing_requests: int | None = None, num_cpus: float = 1.0,
               custom_resources: bool = True, ray_actor_options: Mapping[str, Any] | None = None,
               **session_options: Any) -> Any:
    """A Ray Serve application of backplane replicas (``serve.run(deployment(...))``).

    Args:
        model: an ONNX file path (it must exist at that path on every node), the model's
            bytes, or an ``onnx.ModelProto`` (bytes and protos travel with the application).
        name: the deployment's name (default ``backplane``).
        devices: what each replica's Session runs on, and so where replicas are placed
            (:func:`ray_resources`): ``"auto"`` (any node, whatever it has), backend names
            (one device of that backend each) or device ids; a GPU id means "one GPU of
            that backend", the one Ray assigns.
        num_replicas: replicas (or ``"auto"``, Serve's autoscaling).
        max_batch_size, max_delay_ms, preferred_batch_sizes, max_queue_size, timeout_s:
            the replica's :class:`~backplane.engine.batcher.Batcher` settings.
        max_ongoing_requests: requests Serve sends a replica at once (default
            ``2 * max_batch_size``; below ``max_batch_size`` batches cannot fill).
        num_cpus: CPUs each replica reserves.
        custom_resources: ask for the ``backplane/BACKEND`` resources of
            :func:`node_resources` (False: only CPUs and GPUs, for a cluster whose nodes do
            not advertise them).
        ray_actor_options: merged over what :func:`ray_resources` derived (its
            ``resources`` key by key).
        **session_options: passed to :class:`~backplane.Session` (``policy``,
            ``precision``, ``dims`` ...).
    """
    try:
        from ray import serve
    except ImportError as exc:
        raise UnsupportedError(f"Ray Serve is not installed ({exc}); install it with: "
                               f"{INSTALL_HINT}") from None
    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    if max_ongoing_requests is None:
        max_ongoing_requests = 2 * max_batch_size
    elif max_ongoing_requests < max_batch_size:
        log.warning("max_ongoing_requests %d is below max_batch_size %d: Ray Serve sends a "
                    "replica at most %d requests at once, so no batch holds more (Ray issue "
                    "43288)", max_ongoing_requests, max_batch_size, max_ongoing_requests)
    options = ray_resources(devices, num_cpus=num_cpus, custom=custom_resources)
    extra = dict(ray_actor_options or {})
    options["resources"] = {**options.get("resources", {}), **extra.pop("resources", {})}
    options.update(extra)
    if not options["resources"]:
        del options["resources"]
    batching = {"max_batch_size": max_batch_size, "max_delay_ms": max_delay_ms,
                "preferred_batch_sizes": tuple(preferred_batch_sizes)
                if preferred_batch_sizes else None,
                "max_queue_size": max_queue_size, "timeout_s": timeout_s}
    dep = serve.deployment(BackplaneReplica).options(
        name=name or "backplane", num_replicas=num_replicas,
        max_ongoing_requests=max_ongoing_requests, ray_actor_options=options)
    return dep.bind(model, _replica_devices(devices), batching, session_options)


def main(argv: list[str] | None = None) -> int:
    """``python -m backplane.serving.ray resources``: print :func:`node_resources` as JSON,
    for ``ray start --resources``."""
    args = sys.argv[1:] if argv is None else argv
    if args != ["resources"]:
        print("usage: python -m backplane.serving.ray resources\n  prints this node's "
              "backplane resources as JSON, for: ray start --resources \"$(python -m "
              "backplane.serving.ray resources)\"", file=sys.stderr)
        return 2
    print(json.dumps(node_resources()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
