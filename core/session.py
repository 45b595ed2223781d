"""Session: hand it a model, get outputs; it picks the hardware and says why.

::

    s = backplane.Session("model.onnx")            # devices="auto", policy="latency", fp32
    out = s.run({"x": x})
    print(s.plan.explain())

Devices are chosen automatically unless named: ``devices=[...]`` (device ids or backend
names), or else the environment's ``BACKPLANE_DEVICES``; the argument wins over the
environment. A named device that is unknown or
failed raises at once with the cause. A compile or run failure re-plans without the failed
device (unless ``strict=True``), records the event in ``plan.events`` and logs a warning; a
request is never lost and numerics never change silently.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from .contract import POLICIES, PRECISIONS, CompileOptions, Device
from .errors import BackendError, UnsupportedError
from .executor import CompiledPlan
from .graph import ValueInfo
from .intake import load_model, validate_inputs
from .planner import Plan, make_plan
from .registry import Registry, call_hook, devices_from_env, registry

log = logging.getLogger("backplane")


class Session:
    """A model, planned and compiled onto this machine's devices, ready to run.

    Args:
        model: a path to an ``.onnx`` file, its bytes, or an ``onnx.ModelProto``.
        devices: ``"auto"`` (every available device; ``BACKPLANE_DEVICES`` when set), or
            an ordered list of device ids (``openvino-cpu:0``) and backend names.
        policy: ``latency`` (default), ``throughput`` or ``efficiency``.
        precision: the compute precision the plan must keep; ``fp32`` by default.
        strict: fail instead of re-planning when a compile or run fails.
        base_dir: folder of external data for a model given as bytes or ModelProto.
        options: backend-specific options, keyed by backend name.

    ``run`` is safe to call from many threads at once.
    """

    def __init__(self, model: Any, devices: str | Iterable[Any] = "auto", *,
                 policy: str = "latency", precision: str = "fp32", strict: bool = False,
                 base_dir: Any = None, options: Mapping[str, Any] | None = None):
        if policy not in POLICIES:
            raise UnsupportedError(f"unknown policy '{policy}'; choose one of {', '.join(POLICIES)}")
        if precision == "auto":
            raise UnsupportedError("precision='auto' (lower precision within an accuracy "
                                   "budget) is not available in this version; use 'fp32'")
        if precision not in PRECISIONS:
            raise UnsupportedError(f"unknown precision '{precision}'; choose one of "
                                   f"{', '.join(PRECISIONS)}")
        self.graph = load_model(model, base_dir=base_dir)
        self.policy, self.precision, self.strict = policy, precision, strict
        self._registry = registry()
        self._explicit, self._devices = _resolve_devices(self._registry, devices)
        self._options = CompileOptions(precision=precision, policy=policy,
                                       extra=dict(options or {}))
        self._excluded: dict[str, str] = {}
        self._history: list[str] = []
        self._lock = threading.Lock()
        self._compiled = self._build()
        call_hook("backplane_session_created", session=self)

    @property
    def plan(self) -> Plan:
        """The current plan: what runs where, and why."""
        return self._compiled.plan

    @property
    def inputs(self) -> list[ValueInfo]:
        """The inputs ``run`` expects."""
        return list(self.graph.inputs)

    @property
    def outputs(self) -> list[ValueInfo]:
        """The outputs ``run`` returns."""
        return list(self.graph.outputs)

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Run the model once. Returns a dict of output name to numpy array.

        Raises:
            InputError: missing, extra, mis-typed or mis-shaped inputs.
            ExecutionError: a backend failed and the session is strict, or the error names
                no device to re-plan without.
            UnsupportedError: a backend failed and no remaining device can run the model;
                the message lists every device's reason, the failures included.
        """
        feeds = validate_inputs(self.graph, inputs)
        while True:
            compiled = self._compiled
            try:
                return compiled.run(feeds)
            except BackendError as exc:  # ExecutionError, or a plugin's own BackendError
                if self.strict or exc.device is None:
                    raise
                with self._lock:
                    if self._compiled is compiled:  # another thread may have re-planned
                        if exc.device in self._excluded:
                            raise  # not the named device's fault: re-planning cannot help
                        self._exclude(exc.device, str(exc))
                        self._compiled = self._build()

    def random_inputs(self, seed: int = 0, dims: Mapping[str, int] | None = None
                      ) -> dict[str, Any]:
        """Sample inputs matching the model: standard normal floats, small integers.

        Symbolic dimensions take their size from ``dims`` (default 1).
        """
        import numpy as np

        rng = np.random.default_rng(seed)
        out = {}
        for vi in self.graph.inputs:
            shape = [d if isinstance(d, int) else (dims or {}).get(str(d), 1)
                     for d in (vi.shape or ())]
            if vi.dtype.startswith("float"):
                out[vi.name] = rng.standard_normal(shape).astype(vi.dtype)
            elif vi.dtype == "bool":
                out[vi.name] = rng.integers(0, 2, shape).astype(bool)
            else:
                out[vi.name] = rng.integers(0, 4, shape).astype(vi.dtype)
        return out

    def _exclude(self, device: str, why: str) -> None:
        self._excluded[device] = why
        self._history.append(f"re-planned without {device}: {why}")
        log.warning("backplane: %s; re-planning without it", why)

    def _build(self) -> CompiledPlan:
        """Plan and compile, excluding each device whose compile fails, until one holds."""
        by_id = {d.id: d for d in self._devices}
        while True:
            plan = make_plan(self.graph, self._devices, self._registry.backends,
                             precision=self.precision, policy=self.policy,
                             explicit=self._explicit, excluded=dict(self._excluded))
            plan.events[:0] = self._history
            call_hook("backplane_plan_ready", plan=plan, graph=self.graph)
            try:
                return CompiledPlan(self.graph, plan, self._registry, self._options, by_id)
            except BackendError as exc:  # CompileError, or a plugin's own BackendError
                if self.strict or exc.device is None or exc.device in self._excluded:
                    raise
                self._exclude(exc.device, str(exc))


def _resolve_devices(reg: Registry, devices: Any) -> tuple[bool, list[Device]]:
    """(explicit, devices in rank order) for a Session's ``devices=`` argument."""
    if isinstance(devices, str) and devices == "auto":
        names = devices_from_env()
        if names is None:
            found = reg.devices()
            if not found:
                raise UnsupportedError("no device is available: every backend failed or has no "
                                       "device; run 'backplane plugins' to see why")
            return False, found
    elif isinstance(devices, (str, Device)):
        names = [devices]
    else:
        names = list(devices)
    chosen: list[Device] = []
    for name in names:
        for d in reg.resolve(name.id if isinstance(name, Device) else name):
            if d not in chosen:
                chosen.append(d)
    if not chosen:
        raise UnsupportedError("devices= names no device; pass device ids or backend names, "
                               "or 'auto'")
    return True, chosen

