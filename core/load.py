"""Live load: how busy each device is right now, as a slowdown factor for the cost model.

Three sources, each cheap and each optional:

- backplane's own in-flight work: the executor wraps every partition run in
  :func:`busy`, so the scheduler knows how many partitions this process is running on
  each device at the moment it plans;
- CPU load through psutil (the one-minute load average over the usable cores, less this
  process's own in-flight work, which is counted above);
- NVIDIA GPU utilisation through NVML (nvidia-ml-py), for devices that carry a PCI bus id.

A factor of 1.0 means idle; 2.0 means the device is shared with as much work again, so a
node there is predicted to take twice as long. Readings are cached for
:data:`READING_TTL_S` so that planning many sessions does not query the system each time.
"""

from __future__ import annotations

import threading
import time
from typing import Any

#: How long one system reading (psutil, NVML) is reused.
READING_TTL_S = 1.0
#: The largest slowdown load may predict (a saturated device is not infinitely slow).
MAX_SLOWDOWN = 8.0

_lock = threading.Lock()
_inflight: dict[str, int] = {}
_cache: dict[str, tuple[float, float]] = {}


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


def slowdown(device: Any, cores: int | None = None) -> tuple[float, str]:
    """(factor >= 1, what it is made of) for one device, from every source available."""
    own = inflight(device.id)
    parts = []
    other = 0.0
    if device.kind == "cpu":
        cpu = _cached("cpu", _cpu_load)
        if cpu is not None:
            usable = max(1, cores or _usable_cores())
            # The load average counts this process's running threads too; those are known.
            other = max(0.0, cpu - own / usable)
            parts.append(f"cpu load {cpu:.2f}")
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


def _usable_cores() -> int:
    from .hardware.probe import usable_cores

    return usable_cores()


def _cpu_load() -> float | None:
    """The one-minute load average per usable core, through psutil (None without it)."""
    try:
        import psutil
    except ImportError:
        return None
    return psutil.getloadavg()[0] / max(1, _usable_cores())


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
