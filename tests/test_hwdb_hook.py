"""Plugins match their devices to hwdb entries through the ``backplane_hwdb_match`` hook.

The hardware layer implements it (entry point ``hwdb`` of the group ``backplane.hooks``), so
a plugin never imports that layer. A device is matched as the hardware probe would match it;
an hwdb that cannot be read, or no implementation at all, gives no entry, never an error.
"""

from __future__ import annotations

import logging

import pytest

from backplane.hardware import db, hooks
from backplane.plugins import cuda_tensorrt as cuda
from backplane.plugins.rocm import sysfs
from backplane.sdk.hooks import plugin_manager, register_hooks

H100 = {"ordinal": 0, "name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
        "multiprocessors": 132, "memory_bytes": 85520809984, "pci_bus_id": "0000:3b:00.0",
        "cuda_driver_version": "12.4"}
#: The kernel path installed, the others not: enough for describe() to list the GPU.
PATHS = {"tensorrt": "the tensorrt package is not installed",
         "onnxruntime": "onnxruntime-gpu is not installed", "kernels": ""}
MI300X = {"gfx_target": "gfx942", "pci_vendor_id": "0x1002", "pci_device_id": "0x74a1",
          "compute_units": 304, "vram_bytes": 206141652992}


def match(**device):
    return plugin_manager().hook.backplane_hwdb_match(**device)


def test_the_hardware_layer_implements_the_hook_through_its_entry_point():
    assert plugin_manager().get_plugin("hwdb") is hooks


def test_a_device_is_matched_to_its_hwdb_entry_through_the_hook():
    entry, rule = match(kind="gpu", name=H100["name"], vendor="nvidia", source="test",
                        facts={"compute_capability": "9.0", "memory_gib": 79.6})
    assert entry.startswith("nvidia/h100") and rule.startswith("cuda: "), (entry, rule)
    entry, rule = match(kind="gpu", name="AMD Instinct MI300X", vendor="amd", source="test",
                        facts={k: MI300X[k] for k in ("gfx_target", "pci_vendor_id",
                                                      "pci_device_id")})
    assert entry == "amd/instinct-mi300x" and rule.startswith("pci: "), (entry, rule)


def test_the_plugins_take_their_entries_from_the_hook():
    [device] = cuda.describe([H100], None, PATHS)
    assert device["properties"]["hwdb_entry"].startswith("nvidia/h100")
    entry, rule = sysfs.hwdb_match("AMD Instinct MI300X", MI300X)
    assert entry == "amd/instinct-mi300x" and rule.startswith("pci: ")


def test_an_unreadable_hwdb_gives_no_entry_not_an_error(monkeypatch, caplog):
    def unreadable(refresh: bool = False):
        raise db.HwdbError("the hwdb cannot be read")

    monkeypatch.setattr(db, "load", unreadable)
    with caplog.at_level(logging.WARNING, logger="backplane"):
        assert match(kind="gpu", name=H100["name"], vendor="nvidia", source="test",
                     facts={"compute_capability": "9.0"}) is None
        [device] = cuda.describe([H100], None, PATHS)
        assert device["properties"]["hwdb_entry"] is None
        assert sysfs.hwdb_match("AMD Instinct MI300X", MI300X) == (None, None)
    assert not caplog.records, [r.getMessage() for r in caplog.records]


@pytest.fixture
def without_hwdb_hooks():
    """The plugin manager without the hardware layer's implementation (put back after)."""
    pm = plugin_manager()
    implementation = pm.unregister(name="hwdb")
    assert implementation is hooks
    yield
    register_hooks(pm, implementation, "hwdb")


def test_without_an_implementation_a_device_has_no_entry(without_hwdb_hooks):
    assert match(kind="gpu", name=H100["name"], vendor="nvidia", source="test",
                 facts={"compute_capability": "9.0"}) is None
    [device] = cuda.describe([H100], None, PATHS)
    assert device["name"] == H100["name"] and device["properties"]["hwdb_entry"] is None
    assert sysfs.hwdb_match("AMD Instinct MI300X", MI300X) == (None, None)
