"""The NVIDIA driver as the CUDA driver API sees it: GPUs by CUDA ordinal, through ctypes.

``libcuda.so.1`` comes with the NVIDIA driver itself, not with any Python package, so this
answers "is there a working driver and which GPUs does it give this process" in a few
milliseconds without importing torch or any other runtime. The ordinals are those torch,
CuPy and TensorRT use in this process (they honour ``CUDA_VISIBLE_DEVICES`` and
``CUDA_DEVICE_ORDER`` the same way), and each GPU carries its PCI bus id, which is how it is
matched to NVML's records and to the probed hardware.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

#: cuDeviceGetAttribute codes (cuda.h, CUdevice_attribute).
ATTR_MULTIPROCESSOR_COUNT = 16
ATTR_COMPUTE_CAPABILITY_MAJOR = 75
ATTR_COMPUTE_CAPABILITY_MINOR = 76
#: Library names tried in order.
LIBRARIES = ("libcuda.so.1", "libcuda.so", "nvcuda.dll")

_lock = threading.Lock()
_found: "tuple[list[dict[str, Any]], str | None] | None" = None


def cuda_version_text(version: int) -> str:
    """``12040`` (cuDriverGetVersion, NVML's CUDA driver version) as ``"12.4"``."""
    return f"{version // 1000}.{(version % 1000) // 10}"


def gpus(refresh: bool = False) -> "tuple[list[dict[str, Any]], str | None]":
    """``([gpu, ...], None)``, or ``([], why not)``; found once per process.

    Each GPU: ``ordinal``, ``name``, ``compute_capability`` ("9.0"), ``multiprocessors``,
    ``memory_bytes``, ``pci_bus_id`` (lower case, "0000:3b:00.0"), ``cuda_driver_version``
    (the newest CUDA the driver supports, "12.4"). Never raises.
    """
    global _found
    with _lock:
        if _found is None or refresh:
            try:
                _found = _query(_load())
            except _NoDriver as exc:
                _found = [], str(exc)
            except Exception as exc:  # a driver answering nonsense must not break probing
                _found = [], f"querying the CUDA driver failed: {type(exc).__name__}: {exc}"
        return _found


class _NoDriver(Exception):
    pass


def _load() -> Any:
    errors = []
    for name in LIBRARIES:
        try:
            return ctypes.CDLL(name)
        except OSError as exc:
            errors.append(str(exc))
    if all("No such file" in e or "cannot open" in e for e in errors):
        raise _NoDriver("no NVIDIA driver: libcuda.so.1 cannot be loaded (not found)")
    raise _NoDriver("no NVIDIA driver: libcuda.so.1 cannot be loaded (" + errors[0] + ")")


def _query(lib: Any) -> "tuple[list[dict[str, Any]], str | None]":
    """The GPUs ``lib`` (a loaded libcuda, or any object with its functions) reports."""
    rc = lib.cuInit(0)
    if rc != 0:
        return [], f"the NVIDIA driver did not initialise: cuInit returned {error_name(lib, rc)}"
    version = ctypes.c_int(0)
    _check(lib, lib.cuDriverGetVersion(ctypes.byref(version)), "cuDriverGetVersion")
    count = ctypes.c_int(0)
    _check(lib, lib.cuDeviceGetCount(ctypes.byref(count)), "cuDeviceGetCount")
    if count.value == 0:
        return [], "the NVIDIA driver reports no GPU to this process (CUDA_VISIBLE_DEVICES?)"
    out = []
    for ordinal in range(count.value):
        dev = ctypes.c_int(0)
        _check(lib, lib.cuDeviceGet(ctypes.byref(dev), ordinal), "cuDeviceGet")
        name = ctypes.create_string_buffer(256)
        _check(lib, lib.cuDeviceGetName(name, 256, dev), "cuDeviceGetName")
        attrs = {}
        for code in (ATTR_MULTIPROCESSOR_COUNT, ATTR_COMPUTE_CAPABILITY_MAJOR,
                     ATTR_COMPUTE_CAPABILITY_MINOR):
            value = ctypes.c_int(0)
            _check(lib, lib.cuDeviceGetAttribute(ctypes.byref(value), code, dev),
                   "cuDeviceGetAttribute")
            attrs[code] = value.value
        memory = ctypes.c_size_t(0)
        total_mem = getattr(lib, "cuDeviceTotalMem_v2", None) or lib.cuDeviceTotalMem
        _check(lib, total_mem(ctypes.byref(memory), dev), "cuDeviceTotalMem")
        bus = ctypes.create_string_buffer(64)
        _check(lib, lib.cuDeviceGetPCIBusId(bus, 64, dev), "cuDeviceGetPCIBusId")
        out.append({
            "ordinal": ordinal, "name": name.value.decode(errors="replace").strip(),
            "compute_capability": f"{attrs[ATTR_COMPUTE_CAPABILITY_MAJOR]}."
                                  f"{attrs[ATTR_COMPUTE_CAPABILITY_MINOR]}",
            "multiprocessors": attrs[ATTR_MULTIPROCESSOR_COUNT],
            "memory_bytes": int(memory.value),
            "pci_bus_id": normal_bus_id(bus.value.decode(errors="replace")),
            "cuda_driver_version": cuda_version_text(version.value)})
    return out, None


def normal_bus_id(bus: str) -> str:
    """A PCI bus id in one spelling: NVML writes ``00000000:3B:00.0``, the driver API
    ``0000:3B:00.0``; both become ``0000:3b:00.0``."""
    bus = bus.strip().lower()
    domain, sep, rest = bus.partition(":")
    if sep and len(domain) > 4:
        domain = domain[-4:]
    return f"{domain}{sep}{rest}" if sep else bus


def error_name(lib: Any, rc: int) -> str:
    """``CUDA_ERROR_NO_DEVICE (100)`` for a CUresult."""
    text = ctypes.c_char_p()
    try:
        if lib.cuGetErrorName(rc, ctypes.byref(text)) == 0 and text.value:
            return f"{text.value.decode()} ({rc})"
    except Exception:
        pass
    return f"CUresult {rc}"


def _check(lib: Any, rc: int, call: str) -> None:
    if rc != 0:
        raise RuntimeError(f"{call} returned {error_name(lib, rc)}")
