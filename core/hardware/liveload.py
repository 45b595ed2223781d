"""Live load: how busy each device is right now, as a slowdown factor for the cost model.

Three sources, each cheap and each optional:

- backplane's own in-flight work: the executor wraps every partition run in
  :func:`busy`, so the scheduler knows how many partitions this process is running on
  each device at the moment it plans;
- CPU load through psutil: the share of the usable cores other processes kept busy since
  the last reading (this process's own work is counted above, not here);
- NVIDIA GPU utilisation through NVML (nvidia-ml-py), for devices that carry a PCI bus id.

A factor of 1.0 means idle; 2.0 means the device is shared with as much work again, so a
node there is predicted to take twice as long. Readings are cached for
:data:`READING_TTL_S` so that planning many sessions does not query the system each time.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any
from backplane.sdk.hostfacts import usable_cores

#: How long one system reading (psutil, NVML) is reused.
READING_TTL_S = 1.0
#: The largest slowdown load may predict (a saturated device is not infinitely slow).
MAX_SLOWDOWN = 8.0

_lock = threading.Lock()
_inflight: dict[str, int] = {}
_cache: dict[str, tuple[float, float]] = {}
_last_cpu: list[tuple[float, float, float]] = []
#: A CPU reading older than this is not a baseline: a fresh sample of SAMPLE_S is taken.
STALE_S, SAMPLE_S = 5.0, 0.02


class busy:  # noqa: N801 - used as a function: ``with busy(device_id):``
    """Count one unit of this process's work on ``device_id`` while the block runs.

    A class rather than a generator context manager: it wraps every partition run, and
    this costs a tenth of the time.
    """

    __slots__ = ("_device",)

    def __init__(self, device_id: str):
        self._device = device_id

    def __enter__(self) -> None:
        with _lock:
            _inflight[self._device] = _inflight.get(self._device, 0) + 1

    def __exit__(self, *exc: object) -> None:
        with _lock:
            _inflight[self._device] -= 1


def inflight(device_id: str) -> int:
    """How many partitions this process is running on ``device_id`` now."""
    return _inflight.get(device_id, 0)


def slowdown(device: Any) -> tuple[float, str]:
    """(factor >= 1, what it is made of) for one device, from every source available.

    ``BACKPLANE_LOAD=off`` reads no sensor (this process's own in-flight work still
    counts): plans then depend on the model and the machine only, for reproducible runs.
    """
    own = inflight(device.id)
    if os.environ.get("BACKPLANE_LOAD", "").strip().lower() == "off":
        return 1.0 + own, (f"{own} partition(s) of this process in flight; " if own else "") \
            + "sensors not read (BACKPLANE_LOAD=off)"
    parts = []
    other = 0.0
    if device.kind == "cpu":
        cpu = _cached("cpu", _cpu_load)
        if cpu is not None:
            other = cpu
            parts.append(f"other processes busy on {cpu:.0%} of the cores")
    else:
        bus = (device.properties or {}).get("pci_bus_id")
        if bus:
            util = _cached(f"nvml:{bus}", lambda: _nvml_utilisation(str(bus)))
            if util is not None:
                other = util
                parts.append(f"gpu utilisation {util:.0%}")
    if own:
        parts.append(f"{own} partition(s) of this process in flight")
    factor = min(MAX_SLOWDOWN, 1.0 + other + own)
    return factor, ", ".join(parts) or "idle"


def _cached(key: str, read: Any) -> float | None:
    now = time.monotonic()
    hit = _cache.get(key)
    if hit is not None and now - hit[0] < READING_TTL_S:
        return hit[1]
    try:
        value = read()
    except Exception:  # a missing sensor is no load reading, never an error
        value = None
    _cache[key] = (now, value)
    return value


def _cpu_load() -> float | None:
    """How many of the usable cores other processes kept busy lately (0 = none), through
    psutil: the machine's busy CPU time less this process's own, over the time since the
    last reading (a fresh :data:`SAMPLE_S` sample when that is missing or stale). Not the
    load average: it lags by a minute, and counts this process's own past work."""
    try:
        import psutil
    except ImportError:
        return None

    def reading() -> tuple[float, float, float]:
        t = psutil.cpu_times()
        busy = sum(getattr(t, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq",
                                                "steal"))
        own = psutil.Process().cpu_times()
        return time.monotonic(), busy, own.user + own.system

    now = reading()
    prev = _last_cpu[0] if _last_cpu else None
    if prev is None or now[0] - prev[0] > STALE_S:
        time.sleep(SAMPLE_S)
        prev, now = now, reading()
    _last_cpu[:] = [now]
    wall = max(now[0] - prev[0], 1e-3)
    others = max(0.0, (now[1] - prev[1]) - (now[2] - prev[2]))
    return others / (wall * max(1, usable_cores()))


def _nvml_utilisation(bus_id: str) -> float | None:
    """GPU utilisation (0..1) of the NVIDIA device at ``bus_id``, or None without NVML."""
    try:
        import pynvml
    except ImportError:
        return None
    pynvml.nvmlInit()
    try:
        handle = pynvml.nvmlDeviceGetHandleByPciBusId(bus_id.encode())
        return pynvml.nvmlDeviceGetUtilizationRates(handle).gpu / 100.0
    finally:
        pynvml.nvmlShutdown()


def reset() -> None:
    """Forget cached readings (tests)."""
    _cache.clear()
