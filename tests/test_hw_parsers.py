"""The hardware parsers read what real tools printed on real machines.

Every input here is a recorded output from ``tests/data/hwprobe`` (SOURCES.md says where
each came from), a truncated copy of one, or plain garbage. The expected values are the ones
the recording shows: a test that fails means the parser misreads a real machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from backplane.sdk import hostfacts

DATA = Path(__file__).resolve().parent / "data" / "hwprobe"
GARBAGE = ["", "\n\n  \n", "hello world", "Segmentation fault (core dumped)", "\x00\xff\x10"]


def recorded(name: str) -> str:
    return (DATA / name).read_text()


# -- /proc/cpuinfo ---------------------------------------------------------------------------


def test_dev_vm_cpuinfo_gives_vendor_family_model_and_stepping():
    info = hostfacts.parse_cpuinfo(recorded("cpuinfo_x86_64_epyc_devvm.txt"))
    assert (info["arch"], info["vendor_id"], info["model_name"]) == ("x86_64", "AuthenticAMD",
                                                                     "AMD EPYC")
    assert (info["family"], info["model"], info["stepping"]) == (23, 1, 2)


def test_dev_vm_cpuinfo_counts_logical_cpus_cores_and_sockets():
    info = hostfacts.parse_cpuinfo(recorded("cpuinfo_x86_64_epyc_devvm.txt"))
    assert (info["logical_cpus"], info["physical_cores"], info["sockets"]) == (2, 2, 1)
    assert info["mhz"] == 1996.249


def test_x86_flags_come_back_sorted_and_complete():
    info = hostfacts.parse_cpuinfo(recorded("cpuinfo_x86_64_epyc_devvm.txt"))
    assert info["flags"] == sorted(info["flags"])
    assert {"avx2", "fma", "sha_ni", "clzero"} <= set(info["flags"])
    assert len(info["flags"]) == 85


def test_sapphire_rapids_cpuinfo_shows_the_amx_flags():
    info = hostfacts.parse_cpuinfo(recorded("cpuinfo_x86_64_xeon_8480plus_sapphirerapids.txt"))
    assert info["model_name"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert (info["vendor_id"], info["family"], info["model"], info["stepping"]) == (
        "GenuineIntel", 6, 143, 6)
    assert {"amx_bf16", "amx_tile", "amx_int8", "avx512_fp16", "avx512_bf16"} <= set(
        info["flags"])


def test_cpuinfo_padded_with_spaces_instead_of_tabs_parses_the_same():
    # The Sapphire Rapids sample was pasted with spaces ("processor       : 2").
    info = hostfacts.parse_cpuinfo(recorded("cpuinfo_x86_64_xeon_8480plus_sapphirerapids.txt"))
    assert (info["logical_cpus"], info["physical_cores"], info["sockets"]) == (1, 1, 1)
    assert info["mhz"] == 2000.0


def test_graviton2_cpuinfo_names_the_neoverse_n1_core():
    info = hostfacts.parse_cpuinfo(recorded("cpuinfo_aarch64_graviton2_t4g_small.txt"))
    assert (info["arch"], info["vendor_id"], info["model_name"]) == ("aarch64", "ARM",
                                                                     "Neoverse-N1")
    assert (info["cpu_implementer"], info["cpu_part"]) == (0x41, 0xD0C)
    assert (info["logical_cpus"], info["parts"]) == (2, ["Neoverse-N1"])


def test_aarch64_cpuinfo_has_no_x86_only_fields():
    info = hostfacts.parse_cpuinfo(recorded("cpuinfo_aarch64_graviton2_t4g_small.txt"))
    assert info["family"] is info["model"] is info["stepping"] is None
    assert info["physical_cores"] is info["sockets"] is info["mhz"] is None


def test_graviton3_cpuinfo_names_neoverse_v1_and_lists_its_sve_features():
    info = hostfacts.parse_cpuinfo(recorded("cpuinfo_aarch64_graviton3_neoverse_v1.txt"))
    assert (info["model_name"], info["cpu_part"]) == ("Neoverse-V1", 0xD40)
    assert {"sve", "bf16", "i8mm", "asimddp"} <= set(info["flags"])
    assert info["flags"] == sorted(info["flags"])


def test_raspberry_pi_5_cpuinfo_is_four_cortex_a76_cores_despite_the_board_lines():
    info = hostfacts.parse_cpuinfo(recorded("cpuinfo_aarch64_raspberrypi5_bcm2712.txt"))
    assert (info["model_name"], info["logical_cpus"], info["parts"]) == (
        "Cortex-A76", 4, ["Cortex-A76"])
    assert "Model" not in info["flags"]


def test_big_little_cpuinfo_lists_both_core_types_and_names_the_big_one():
    info = hostfacts.parse_cpuinfo(recorded("cpuinfo_aarch64_agilex5_a55_a76.txt"))
    assert info["parts"] == ["Cortex-A55", "Cortex-A76"]
    assert (info["model_name"], info["cpu_part"], info["logical_cpus"]) == ("Cortex-A76",
                                                                            0xD0B, 4)


def test_truncated_cpuinfo_keeps_what_the_first_blocks_say():
    text = recorded("cpuinfo_x86_64_epyc_devvm.txt")
    cut = text[: text.index("processor\t: 1") + 60]
    info = hostfacts.parse_cpuinfo(cut)
    full = hostfacts.parse_cpuinfo(text)
    assert info["logical_cpus"] == 2
    assert (info["model_name"], info["flags"]) == (full["model_name"], full["flags"])


@pytest.mark.parametrize("text", GARBAGE)
def test_blank_or_garbage_cpuinfo_gives_an_empty_dict(text):
    assert hostfacts.parse_cpuinfo(text) == {}


# -- sysfs caches -----------------------------------------------------------------------------


def test_cache_sysfs_reads_the_dev_vm_cache_sizes(tmp_path):
    for line in recorded("cache_sysfs_cpu0_devvm.txt").splitlines():
        path, value = line.split(": ")
        (tmp_path / path).parent.mkdir(exist_ok=True)
        (tmp_path / path).write_text(value + "\n")
    assert hostfacts.parse_cache_sysfs(tmp_path) == {"l1d_kib": 32, "l1i_kib": 64,
                                                  "l2_kib": 512, "l3_kib": 8192}


def test_missing_cache_folder_gives_every_size_as_none(tmp_path):
    assert hostfacts.parse_cache_sysfs(tmp_path / "absent") == dict.fromkeys(
        ("l1d_kib", "l1i_kib", "l2_kib", "l3_kib"))


# -- nvidia-smi --------------------------------------------------------------------------------


def test_nvidia_pci_device_id_splits_into_device_and_vendor():
    [gpu] = hostfacts.parse_nvidia_smi_csv(recorded("nvidia_smi_h100nvl_name_device_id.csv"),
                                           fields=["name", "pci.device_id"])
    assert (gpu["name"], gpu["pci_device_id"], gpu["pci_vendor_id"]) == (
        "NVIDIA H100 NVL", "0x2321", "0x10de")


def test_nvidia_rows_without_header_are_read_in_the_given_field_order():
    gpus = hostfacts.parse_nvidia_smi_csv(
        recorded("nvidia_smi_quadro_rtx6000_name_mem_driver_devid.csv"),
        fields=["name", "memory.total", "driver_version", "pci.device_id"])
    assert [(g["name"], g["memory_mib"], g["driver_version"], g["pci_device_id"])
            for g in gpus] == [("Quadro RTX 6000", 24576, "570.211.01", "0x1e30")] * 2


def test_nvidia_header_row_maps_columns_by_name_in_any_order():
    gpus = hostfacts.parse_nvidia_smi_csv(recorded("nvidia_smi_titanv_rtx5880_header.csv"))
    assert [(g["index"], g["name"], g["compute_capability"], g["driver_version"])
            for g in gpus] == [(0, "NVIDIA TITAN V", "7.0", "570.86.15"),
                               (1, "NVIDIA RTX 5880 Ada Generation", "8.9", "570.86.15")]


def test_nvidia_header_takes_precedence_over_the_given_fields():
    gpus = hostfacts.parse_nvidia_smi_csv(recorded("nvidia_smi_titanv_rtx5880_header.csv"),
                                          fields=list(hostfacts.NVIDIA_SMI_QUERY))
    assert [g["compute_capability"] for g in gpus] == ["7.0", "8.9"]


def test_nvidia_h100_header_output_gives_bus_ids_and_skips_the_elision_line():
    gpus = hostfacts.parse_nvidia_smi_csv(recorded("nvidia_smi_h100_header_name_busid_vbios.csv"))
    assert [(g["name"], g["pci_bus_id"]) for g in gpus] == [
        ("NVIDIA H100 80GB HBM3", "00000000:04:00.0"),
        ("NVIDIA H100 80GB HBM3", "00000000:8B:00.0")]


def test_nvidia_not_available_values_become_none():
    [gpu] = hostfacts.parse_nvidia_smi_csv(recorded("nvidia_smi_gb10_header_memory_na.csv"))
    assert (gpu["index"], gpu["name"], gpu["memory_mib"]) == (0, "NVIDIA GB10", None)


def test_nvidia_fields_not_queried_are_none():
    [gpu] = hostfacts.parse_nvidia_smi_csv(recorded("nvidia_smi_v100_pg500_name_mem_devid.csv"),
                                           fields=["name", "memory.total", "pci.device_id"])
    assert (gpu["memory_mib"], gpu["pci_device_id"]) == (32768, "0x1df0")
    assert gpu["compute_capability"] is gpu["max_sm_clock_mhz"] is gpu["index"] is None


def test_truncated_nvidia_output_gives_the_complete_rows():
    text = recorded("nvidia_smi_quadro_rtx6000_name_mem_driver_devid.csv")
    cut = text[: text.index("\n") + 20]
    gpus = hostfacts.parse_nvidia_smi_csv(
        cut, fields=["name", "memory.total", "driver_version", "pci.device_id"])
    assert [g["name"] for g in gpus] == ["Quadro RTX 6000"]


def test_probe_query_names_every_field_the_contract_returns():
    assert hostfacts.NVIDIA_SMI_QUERY == ("index", "name", "pci.bus_id", "pci.device_id",
                                          "memory.total", "compute_cap", "driver_version",
                                          "clocks.max.sm")


@pytest.mark.parametrize("text", GARBAGE + ["NVIDIA-SMI has failed because it couldn't "
                                            "communicate with the NVIDIA driver."])
def test_blank_garbage_or_error_nvidia_output_gives_no_gpus(text):
    assert hostfacts.parse_nvidia_smi_csv(text) == []


# -- KFD topology ------------------------------------------------------------------------------


def test_kfd_gfx_target_version_of_an_mi300x_is_gfx942():
    text = recorded("kfd_properties_mi300x_gfx_target_version_line.txt")
    props = hostfacts.parse_kfd_properties(text)
    assert (props["gfx_target_version"], props["gfx_target"]) == (90402, "gfx942")


@pytest.mark.parametrize("version, target", [(90010, "gfx90a"), (110000, "gfx1100"),
                                             (100300, "gfx1030"), (110501, "gfx1151")])
def test_kfd_gfx_target_version_is_major_minor_step_with_hex_digits(version, target):
    # The targets rocm-smi and amd-smi print for these cards in the recordings (MI250X,
    # RX 7900 XT, Strix Halo) and RDNA2's gfx1030.
    assert hostfacts.parse_kfd_properties(f"gfx_target_version {version}\n")["gfx_target"] == target


def test_kfd_apu_node_is_a_gpu_with_hex_pci_ids_and_every_key_as_int():
    props = hostfacts.parse_kfd_properties(recorded("kfd_properties_raven_ridge_apu_node.txt"))
    assert props["is_gpu"] is True
    assert (props["pci_vendor_id"], props["pci_device_id"]) == ("0x1002", "0x15dd")
    assert (props["simd_count"], props["cpu_cores_count"], props["max_engine_clk_fcompute"]) == (
        44, 8, 1250)


def test_kfd_node_from_an_old_kernel_has_no_gfx_target():
    props = hostfacts.parse_kfd_properties(recorded("kfd_properties_raven_ridge_apu_node.txt"))
    assert "gfx_target" not in props


def test_kfd_node_with_zero_pci_ids_gets_no_hex_ids_but_keeps_odd_keys():
    props = hostfacts.parse_kfd_properties(recorded("kfd_properties_fiji_uninitialised_node.txt"))
    assert "pci_vendor_id" not in props and "pci_device_id" not in props
    assert (props["vendor_id"], props["lds_Wsize_in_kb"], props["is_gpu"]) == (0, 64, True)


@pytest.mark.parametrize("text", GARBAGE)
def test_blank_or_garbage_kfd_properties_give_an_empty_dict(text):
    assert hostfacts.parse_kfd_properties(text) == {}


# -- amd-smi -----------------------------------------------------------------------------------


def test_amd_smi_json_list_form_gives_the_strix_halo_gpu():
    [gpu] = hostfacts.parse_amd_smi_static_json(recorded("amd_smi_static_json_strix_halo.json"))
    assert gpu == {"index": 0, "market_name": "Strix Halo [Radeon Graphics / Radeon 8050S "
                   "Graphics / Radeon 8060S Graphics]", "pci_vendor_id": "0x1002",
                   "pci_device_id": "0x1586", "gfx_target": "gfx1151", "vram_mib": 32768,
                   "compute_units": 40, "bus_id": "0000:c4:00.0"}


def test_amd_smi_json_truncated_after_warnings_gives_what_it_holds():
    [gpu] = hostfacts.parse_amd_smi_static_json(
        recorded("amd_smi_static_json_rx7800xt_truncated.txt"))
    assert (gpu["market_name"], gpu["pci_device_id"], gpu["gfx_target"]) == (
        "AMD Radeon RX 7800 XT", "0x747e", "gfx1101")
    assert (gpu["compute_units"], gpu["bus_id"], gpu["vram_mib"]) == (60, "0000:03:00.0", None)


def test_amd_smi_json_cut_inside_the_asic_block_keeps_the_fields_before_the_cut():
    text = recorded("amd_smi_static_json_strix_halo.json")
    cut = text[: text.index('"num_compute_units"')]
    [gpu] = hostfacts.parse_amd_smi_static_json(cut)
    assert (gpu["pci_device_id"], gpu["compute_units"], gpu["gfx_target"]) == ("0x1586", None,
                                                                               None)


def test_amd_smi_text_gives_the_mi350x_asic_and_bus():
    [gpu] = hostfacts.parse_amd_smi_static_text(recorded("amd_smi_static_mi350x.txt"))
    assert gpu == {"index": 0, "market_name": "AMD Instinct MI350X", "pci_vendor_id": "0x1002",
                   "pci_device_id": "0x75a0", "gfx_target": "gfx950", "vram_mib": None,
                   "compute_units": 128, "bus_id": "0000:05:00.0"}


def test_amd_smi_text_asic_only_gives_the_mi308x_target():
    [gpu] = hostfacts.parse_amd_smi_static_text(recorded("amd_smi_static_asic_mi308x.txt"))
    assert (gpu["market_name"], gpu["gfx_target"], gpu["compute_units"]) == ("MI308X", "gfx942",
                                                                              20)


def test_amd_smi_text_truncated_apu_output_gives_na_fields_as_none():
    [gpu] = hostfacts.parse_amd_smi_static_text(recorded("amd_smi_static_phoenix3_truncated.txt"))
    assert (gpu["market_name"], gpu["pci_device_id"], gpu["bus_id"]) == ("Phoenix3", "0x1900",
                                                                         "0000:65:00.0")
    assert gpu["gfx_target"] is gpu["compute_units"] is None


@pytest.mark.parametrize("text", GARBAGE + ["{", "[1, 2, 3]", '{"cpu_data": []}'])
def test_blank_or_garbage_amd_smi_json_gives_no_gpus(text):
    assert hostfacts.parse_amd_smi_static_json(text) == []


@pytest.mark.parametrize("text", GARBAGE)
def test_blank_or_garbage_amd_smi_text_gives_no_gpus(text):
    assert hostfacts.parse_amd_smi_static_text(text) == []


# -- rocm-smi ----------------------------------------------------------------------------------


def test_rocm_smi_text_gives_the_product_fields():
    [gpu] = hostfacts.parse_rocm_smi(recorded("rocm_smi_showproductname_fiji_r9_fury_x.txt"))
    assert gpu == {"index": 0, "card_series": "Fiji [Radeon R9 FURY / NANO Series]",
                   "card_model": "Radeon R9 FURY X",
                   "card_vendor": "Advanced Micro Devices, Inc. [AMD/ATI]",
                   "card_sku": "C88001", "gfx_target": None}


def test_rocm_smi_text_with_tabs_from_rocm_4_parses():
    [gpu] = hostfacts.parse_rocm_smi(recorded("rocm_smi_showproductname_mi100_rocm4.txt"))
    assert (gpu["card_series"], gpu["card_model"], gpu["card_sku"]) == ("0x738c", "0xc34",
                                                                        "D34314")


def test_rocm_smi_csv_gives_one_gpu_per_card():
    gpus = hostfacts.parse_rocm_smi(recorded("rocm_smi_showproductname_csv_mi100x2.csv"))
    assert [(g["index"], g["card_series"], g["card_model"]) for g in gpus] == [
        (i, "Arcturus GL-XL [AMD Instinct MI100]", "0x0c34") for i in (0, 1)]


def test_rocm_smi_json_normalises_the_decimal_stepping_gfx_version():
    # rocm-smi printed "gfx9010" for this MI250X; the KFD and the compiler call it gfx90a.
    [gpu] = hostfacts.parse_rocm_smi(recorded("rocm_smi_showproductname_json_mi250x.json"))
    assert (gpu["card_series"], gpu["card_sku"], gpu["gfx_target"]) == (
        "AMD INSTINCT MI200 (MCM) OAM LC MBA HPE C2", "D65201", "gfx90a")


def test_rocm_smi_csv_and_json_of_the_same_card_agree_on_name_and_target():
    from_csv = hostfacts.parse_rocm_smi(
        recorded("rocm_smi_productname_use_meminfo_csv_rx7900xt.csv"))
    from_json = hostfacts.parse_rocm_smi(
        recorded("rocm_smi_productname_use_meminfo_json_rx7900xt.json"))
    assert [(g["card_series"], g["card_model"], g["gfx_target"]) for g in from_csv] == \
        [(g["card_series"], g["card_model"], g["gfx_target"]) for g in from_json] == \
        [("Radeon RX 7900 XT", "0x744c", "gfx1100")]


def test_truncated_rocm_smi_csv_gives_the_complete_rows():
    text = recorded("rocm_smi_showproductname_csv_mi100x2.csv")
    cut = text[: text.index("card1") + 30]
    assert [g["index"] for g in hostfacts.parse_rocm_smi(cut)] == [0]


@pytest.mark.parametrize("text", GARBAGE + ["WARNING: No JSON data to report", "{}"])
def test_blank_or_garbage_rocm_smi_output_gives_no_gpus(text):
    assert hostfacts.parse_rocm_smi(text) == []
