"""The parsers the rocm backend adds read what real AMD machines wrote.

Inputs are recorded files from ``tests/data/hwprobe`` (SOURCES.md says where each came from):
KFD topology nodes captured on MI210, MI300X (CPX partitions), MI308X and Vega 10 hosts,
DRM ``uevent`` files of amdgpu and i915 cards, and amdgpu's ``mem_info_vram_total``. A DRM
device folder is rebuilt in ``tmp_path`` from the recorded files, as the kernel lays it out.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from backplane.sdk import hostfacts

DATA = Path(__file__).resolve().parent / "data" / "hwprobe"
GARBAGE = ["", "\n\n  \n", "hello world", "Segmentation fault (core dumped)", "\x00\xff\x10",
           "=\n==\nA=B=C\n"]


def recorded(name: str) -> str:
    return (DATA / name).read_text()


# -- KFD topology nodes of recent kernels ------------------------------------------------------


def test_an_mi300x_cpx_partition_node_is_a_gfx942_gpu_of_device_74a1():
    props = hostfacts.parse_kfd_properties(recorded("kfd_properties_mi300x_cpx_node2.txt"))
    assert props["is_gpu"] and props["gfx_target"] == "gfx942"
    assert (props["pci_vendor_id"], props["pci_device_id"]) == ("0x1002", "0x74a1")
    assert props["simd_count"] // props["simd_per_cu"] == 38  # one of eight CPX partitions
    assert (props["num_xcc"], props["max_engine_clk_fcompute"]) == (1, 2100)


def test_an_mi210_node_is_gfx90a_with_104_compute_units():
    props = hostfacts.parse_kfd_properties(recorded("kfd_properties_mi210_node2.txt"))
    assert (props["gfx_target"], props["pci_device_id"]) == ("gfx90a", "0x740f")
    assert props["simd_count"] // props["simd_per_cu"] == 104
    assert props["hive_id"] == 12609507387757274807  # 64-bit values stay exact ints


def test_an_mi308x_node_is_gfx942_of_device_74a2():
    props = hostfacts.parse_kfd_properties(recorded("kfd_properties_mi308x_node2.txt"))
    assert (props["gfx_target"], props["pci_device_id"]) == ("gfx942", "0x74a2")


@pytest.mark.parametrize("name", ["kfd_properties_mi300x_host_cpu_node0.txt",
                                  "kfd_properties_mi210_host_cpu_node0.txt",
                                  "kfd_properties_vega10_host_cpu_node0_2018.txt"])
def test_cpu_nodes_are_not_gpus_and_have_no_gfx_target(name):
    props = hostfacts.parse_kfd_properties(recorded(name))
    assert props["is_gpu"] is False and props["cpu_cores_count"] > 0
    assert "gfx_target" not in props and "pci_device_id" not in props


def test_a_2018_node_has_no_gfx_target_version_but_its_pci_ids():
    props = hostfacts.parse_kfd_properties(recorded("kfd_properties_vega10_node1_2018.txt"))
    assert props["is_gpu"] and "gfx_target" not in props
    assert props["pci_device_id"] == "0x6860" and props["local_mem_size"] == 17163091968


# -- KFD node -> PCI address -------------------------------------------------------------------


@pytest.mark.parametrize("name, bus_id", [
    ("kfd_properties_mi210_node2.txt", "0000:63:00.0"),    # location_id 25344
    ("kfd_properties_mi210_node3.txt", "0000:43:00.0"),    # location_id 17152
    ("kfd_properties_mi300x_cpx_node2.txt", "0000:05:00.0"),
    ("kfd_properties_mi300x_cpx_node3.txt", "0000:05:00.1"),  # the next partition: devfn + 1
    ("kfd_properties_vega10_node1_2018.txt", "0000:19:00.0"),  # no domain line: domain 0
])
def test_a_gpu_node_location_id_is_its_pci_address(name, bus_id):
    assert hostfacts.kfd_pci_bus_id(hostfacts.parse_kfd_properties(recorded(name))) == bus_id


def test_a_cpu_node_has_no_pci_address():
    props = hostfacts.parse_kfd_properties(recorded("kfd_properties_mi210_host_cpu_node0.txt"))
    assert hostfacts.kfd_pci_bus_id(props) is None


@pytest.mark.parametrize("text", GARBAGE + ["location_id 99999999\nsimd_count 4\n"])
def test_garbage_kfd_properties_have_no_pci_address(text):
    assert hostfacts.kfd_pci_bus_id(hostfacts.parse_kfd_properties(text)) is None


# -- DRM uevent --------------------------------------------------------------------------------


def test_radeon_vii_uevent_gives_driver_ids_and_address():
    info = hostfacts.parse_drm_uevent(recorded("drm_uevent_radeon_vii.txt"))
    assert info == {"driver": "amdgpu", "pci_class": "30000", "pci_vendor_id": "0x1002",
                    "pci_device_id": "0x66af", "pci_subsystem_vendor_id": "0x1002",
                    "pci_subsystem_device_id": "0x081e", "pci_bus_id": "0000:0d:00.0"}


def test_an_intel_card_uevent_names_its_driver_and_vendor():
    info = hostfacts.parse_drm_uevent(recorded("drm_uevent_kaby_lake_i915_hades_canyon_card0.txt"))
    assert (info["driver"], info["pci_vendor_id"], info["pci_device_id"]) == (
        "i915", "0x8086", "0x591b")


def test_an_amd_gpu_on_an_intel_board_keeps_the_boards_subsystem_vendor():
    info = hostfacts.parse_drm_uevent(recorded("drm_uevent_vega_m_hades_canyon_card1.txt"))
    assert (info["pci_vendor_id"], info["pci_device_id"]) == ("0x1002", "0x694c")
    assert (info["pci_subsystem_vendor_id"], info["pci_bus_id"]) == ("0x8086", "0000:01:00.0")


def test_a_uevent_cut_after_the_driver_line_gives_none_for_the_rest():
    text = recorded("drm_uevent_radeon_vii.txt").splitlines()[0]
    info = hostfacts.parse_drm_uevent(text)
    assert info["driver"] == "amdgpu" and info["pci_device_id"] is None


@pytest.mark.parametrize("text", GARBAGE[:5])
def test_garbage_uevent_gives_an_empty_dict(text):
    assert hostfacts.parse_drm_uevent(text) == {}


# -- DRM device folder -------------------------------------------------------------------------


def test_drm_device_folder_gives_uevent_fields_and_vram(tmp_path):
    (tmp_path / "uevent").write_text(recorded("drm_uevent_radeon_vii.txt"))
    (tmp_path / "mem_info_vram_total").write_text(
        recorded("drm_mem_info_vram_total_nixos_8gib.txt"))
    info = hostfacts.parse_drm_device(tmp_path)
    assert info["pci_device_id"] == "0x66af" and info["vram_bytes"] == 8573157376
    assert "unique_id" not in info and "product_name" not in info


def test_drm_device_folder_without_uevent_reads_the_vendor_and_device_files(tmp_path):
    # The ids as the kernel prints them in .../device/vendor and .../device/device, taken from
    # the recorded uevent's PCI_ID.
    vendor, device = recorded("drm_uevent_radeon_vii.txt").split("PCI_ID=")[1][:9].split(":")
    (tmp_path / "vendor").write_text(f"0x{vendor.lower()}\n")
    (tmp_path / "device").write_text(f"0x{device.lower()}\n")
    info = hostfacts.parse_drm_device(tmp_path)
    assert (info["pci_vendor_id"], info["pci_device_id"]) == ("0x1002", "0x66af")
    assert "driver" not in info


def test_missing_or_garbled_drm_device_folder_gives_an_empty_dict(tmp_path):
    assert hostfacts.parse_drm_device(tmp_path / "absent") == {}
    (tmp_path / "uevent").mkdir()  # a folder where a file should be
    (tmp_path / "mem_info_vram_total").write_bytes(b"\x00\xff")
    (tmp_path / "device").write_text("garbage")
    assert hostfacts.parse_drm_device(tmp_path) == {}
