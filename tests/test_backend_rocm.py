"""The rocm backend: it loads everywhere and says why it has no device; on recorded sysfs
trees it finds the right GPUs, gfx targets and hwdb entries; it picks a path (graph, torch,
OpenCL) and explains the choice; and its OpenCL path compiles and runs a graph for real.

No AMD GPU is reachable here. The sysfs trees are built in ``tmp_path`` from recorded KFD
``properties`` files and DRM files of real machines (``tests/data/hwprobe/SOURCES.md``); the
runtimes' availability is injected as data where a test needs a runtime this machine lacks.
The OpenCL path runs on this machine's OpenCL CPU device (PoCL), reached through the rocm
plugin's own compile code with a device built as ROCm's OpenCL GPU would be: it checks that
code path, not ROCm's OpenCL runtime.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import backplane as bp
from backplane import CompileOptions, Device
from backplane.sdk.errors import CompileError, DeviceUnavailable
from backplane.sdk import hostfacts
from backplane.plugins.rocm import RocmBackend, runtimes as rt, sysfs

DATA = Path(__file__).resolve().parent / "data" / "hwprobe"
SEED = int(os.environ.get("BACKPLANE_TEST_SEED", time.time_ns() % 2**31))
MI300X = {0: "kfd_properties_mi300x_host_cpu_node0.txt",
          2: "kfd_properties_mi300x_cpx_node2.txt", 3: "kfd_properties_mi300x_cpx_node3.txt"}
MI210 = {0: "kfd_properties_mi210_host_cpu_node0.txt", 2: "kfd_properties_mi210_node2.txt",
         3: "kfd_properties_mi210_node3.txt"}


def recorded(name: str) -> str:
    return (DATA / name).read_text()


def tree(root: Path, nodes: dict[int, str | None] | None = None, drm: dict | None = None,
         dev_kfd: bool = True, module_version: str | None = None) -> tuple[str, str]:
    """A sysfs and /dev tree under ``root``: KFD nodes from recorded properties files (or
    literal text), DRM device folders (``{"card1": {"uevent": text, ...}}``), /dev/kfd;
    returns the (sysfs, /dev) roots."""
    sys_root, dev_root = root / "sys", root / "dev"
    for n, name in (nodes or {}).items():
        folder = sys_root / sysfs.KFD_NODES / str(n)
        folder.mkdir(parents=True)
        if name is not None:
            (folder / "properties").write_text(recorded(name) if name.endswith(".txt") else name)
    for card, files in (drm or {}).items():
        folder = sys_root / sysfs.DRM / card / "device"
        folder.mkdir(parents=True)
        for fname, text in files.items():
            (folder / fname).write_text(text)
    dev_root.mkdir(parents=True, exist_ok=True)
    if dev_kfd:
        (dev_root / "kfd").write_text("")
    if module_version is not None:
        module = sys_root / sysfs.AMDGPU_MODULE
        module.mkdir(parents=True)
        (module / "version").write_text(module_version)
    return str(sys_root), str(dev_root)


def torch_ready(*buses: str, version: str = "2.5.1+rocm6.2") -> rt.Runtimes:
    """Runtimes where torch is a ROCm build listing HIP devices at ``buses``; the graph and
    OpenCL paths absent with the reasons this machine gives."""
    return rt.Runtimes(
        torch={"version": version, "rocm": "6.2", "hip": "6.2.41133",
               "devices": [{"index": i, "name": "AMD Instinct MI300X", "arch": "gfx942",
                            "pci_bus_id": b} for i, b in enumerate(buses)]},
        opencl={"error": "pyopencl lists no 'AMD Accelerated Parallel Processing' platform"},
        ort={"error": "onnxruntime 1.20.1 has no MIGraphX or ROCm execution provider "
                      "(it has CPUExecutionProvider)"})


def backend(roots: tuple[str, str], runtimes=None, **kw) -> RocmBackend:
    return RocmBackend(*roots, runtimes=runtimes, run_tool=lambda argv, timeout: None, **kw)


# ---------------------------------------------------------------------- this machine


@pytest.mark.skipif(Path("/sys/class/kfd/kfd/topology/nodes").is_dir(),
                    reason="this machine has a KFD topology")
def test_the_plugin_loads_here_and_has_no_device_because_there_is_no_amd_gpu():
    record = next(r for r in bp.plugin_records() if r.name == "rocm")
    assert record.state == "no-device", record.reason
    assert record.reason.startswith("no AMD GPU: no GPU node in the KFD topology")


def test_listing_the_plugin_and_its_capabilities_imports_no_runtime():
    code = ("import sys, backplane; r = backplane.registry(); b = r.backend('rocm'); "
            "b.capabilities.to_dict(); backplane.plugin_records(); "
            "print(sorted(m for m in ('torch', 'pyopencl', 'numpy', 'onnxruntime') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "BACKPLANE_PLUGINS": "rocm"})
    assert out.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.skipif(rt.torch_build()["rocm"] is not None, reason="torch here is a ROCm build")
def test_without_a_rocm_torch_the_capabilities_are_the_opencl_kernel_tables():
    from backplane.plugins import opencl

    caps = RocmBackend().capabilities
    assert set(caps.ops) == set(opencl.kernels.capabilities().ops)
    assert caps.precisions == opencl.kernels.precisions


def test_torch_build_reads_the_rocm_version_from_the_package_version(monkeypatch):
    from importlib import metadata

    monkeypatch.setattr(metadata, "version", lambda dist: "2.5.1+rocm6.2")
    assert rt.torch_build() == {"version": "2.5.1+rocm6.2", "rocm": "6.2"}
    monkeypatch.setattr(metadata, "version", lambda dist: "2.13.0+cpu")
    assert rt.torch_build()["rocm"] is None


def test_a_recorded_mi300x_without_any_runtime_is_no_device_saying_what_to_install(tmp_path):
    # This machine's real runtimes: torch without ROCm, no ROCm OpenCL platform, an
    # onnxruntime without the MIGraphX provider.
    b = RocmBackend(*tree(tmp_path, MI300X), run_tool=lambda argv, timeout: None)
    started = time.monotonic()
    with pytest.raises(DeviceUnavailable) as err:
        b.probe()
    assert time.monotonic() - started < rt.PROBE_BUDGET_S + 2
    reason = str(err.value)
    assert reason.startswith("2 AMD GPU(s) found (gfx942 at 0000:05:00.0, gfx942 at "
                             "0000:05:00.1), but no ROCm runtime this backend can use: ")
    for label in ("graph path: ", "torch path: ", "OpenCL path: ", "Install one of: torch "
                  "built for ROCm"):
        assert label in reason


# ---------------------------------------------------------------------- recorded trees


def test_a_recorded_mi300x_host_gives_its_cpx_partitions_as_gfx942_devices(tmp_path):
    roots = tree(tmp_path, MI300X, module_version=recorded(
        "amdgpu_module_version_dkms_5.0.19.20.6.txt"))
    # HIP reports a PCI slot without the function: both partitions are at 0000:05:00.
    devices = backend(roots, torch_ready("0000:05:00.0", "0000:05:00.0")).probe()
    assert [d.properties["kfd_node"] for d in devices] == [2, 3]
    first = devices[0].properties
    assert (first["gfx_target"], first["pci_vendor_id"], first["pci_device_id"]) == (
        "gfx942", "0x1002", "0x74a1")
    assert (first["pci_bus_id"], first["compute_units"], first["max_clock_mhz"]) == (
        "0000:05:00.0", 38, 2100)
    assert first["driver_version"] == "5.0.19.20.6"
    assert [d.properties["hip_index"] for d in devices] == [0, 1]
    assert first["ready_paths"] == ["torch"]


def test_a_recorded_mi300x_matches_the_hwdb_mi300x_entry_by_pci_id(tmp_path):
    found = torch_ready("0000:05:00.0", "0000:05:00.1")
    devices = backend(tree(tmp_path, MI300X), found).probe()
    assert {d.properties["hwdb"] for d in devices} == {"amd/instinct-mi300x"}
    assert devices[0].properties["hwdb_rule"].startswith("pci: ")


def test_a_recorded_mi210_host_gives_two_gfx90a_devices_matching_the_mi210_entry(tmp_path):
    found = torch_ready("0000:63:00.0", "0000:43:00.0")
    devices = backend(tree(tmp_path, MI210), found).probe()
    assert [(d.properties["gfx_target"], d.properties["compute_units"],
             d.properties["pci_bus_id"]) for d in devices] == [
        ("gfx90a", 104, "0000:63:00.0"), ("gfx90a", 104, "0000:43:00.0")]
    assert {d.properties["hwdb"] for d in devices} == {"amd/instinct-mi210"}


def test_an_mi308x_has_no_sku_entry_and_only_the_generic_gpu_matches(tmp_path):
    [device] = backend(tree(tmp_path, {0: MI300X[0], 2: "kfd_properties_mi308x_node2.txt"}),
                       torch_ready("0000:0a:00.0")).probe()
    assert device.properties["gfx_target"] == "gfx942"
    assert device.properties["hwdb"] == "generic/unknown-gpu"


def test_a_node_from_a_2018_kernel_is_a_gpu_without_a_gfx_target(tmp_path):
    nodes = {0: "kfd_properties_vega10_host_cpu_node0_2018.txt",
             1: "kfd_properties_vega10_node1_2018.txt"}
    [device] = backend(tree(tmp_path, nodes), torch_ready("0000:19:00.0")).probe()
    assert "gfx_target" not in device.properties
    assert device.name == "AMD GPU" and device.properties["pci_device_id"] == "0x6860"
    assert device.memory_bytes == 17163091968  # KFD's local_mem_size


def test_names_come_from_amd_smi_joined_by_pci_address(tmp_path):
    # amd-smi static --json as recorded on a Strix Halo, with the bus address of the first
    # recorded MI300X partition put in place of the APU's so that the join can be seen.
    text = recorded("amd_smi_static_json_strix_halo.json")
    [listed] = hostfacts.parse_amd_smi_static_json(text)
    text = text.replace(listed["bus_id"], "0000:05:00.0")
    b = RocmBackend(*tree(tmp_path, MI300X),
                    runtimes=torch_ready("0000:05:00.0", "0000:05:00.1"),
                    run_tool=lambda argv, timeout: text if argv[0] == "amd-smi" else None)
    first, second = b.probe()
    assert first.name == listed["market_name"]
    assert second.name == "AMD GPU gfx942"


def test_a_drm_card_of_another_device_at_the_render_minor_is_not_joined(tmp_path):
    drm = {"renderD128": {"uevent": recorded("drm_uevent_radeon_vii.txt")}}
    first, _ = backend(tree(tmp_path, MI210, drm=drm),
                       torch_ready("0000:63:00.0", "0000:43:00.0")).probe()
    assert "drm_driver" not in first.properties
    assert first.properties["drm_note"] == ("DRM renderD128 is PCI bus id 0000:0d:00.0, KFD "
                                           "node 2 is 0000:63:00.0: not joined")


def test_the_drm_card_of_the_same_device_gives_driver_and_vram(tmp_path):
    # The recorded 2018 Vega 10 node with its device_id and location_id lines replaced by
    # those of the recorded Radeon VII card (0x66af at 0000:0d:00.0), so that the two
    # recordings describe one device.
    node = recorded("kfd_properties_vega10_node1_2018.txt").replace(
        "device_id 26720", "device_id 26287").replace("location_id 6400", "location_id 3328")
    drm = {"renderD128": {"uevent": recorded("drm_uevent_radeon_vii.txt"),
                          "mem_info_vram_total": recorded(
                              "drm_mem_info_vram_total_nixos_8gib.txt")}}
    [device] = backend(tree(tmp_path, {1: node}, drm=drm), torch_ready("0000:0d:00.0")).probe()
    assert device.properties["drm_driver"] == "amdgpu"
    assert device.memory_bytes == 8573157376  # DRM's figure before KFD's


def test_device_records_are_plain_json(tmp_path):
    found = torch_ready("0000:05:00.0", "0000:05:00.1")
    devices = backend(tree(tmp_path, MI300X), found).probe()
    json.dumps([d.to_dict() for d in devices])


# ---------------------------------------------------------------------- no device, and why


def test_no_kfd_node_and_no_amd_card_is_no_amd_gpu(tmp_path):
    drm = {"card0": {"uevent": recorded("drm_uevent_kaby_lake_i915_hades_canyon_card0.txt")}}
    with pytest.raises(DeviceUnavailable, match=r"^no AMD GPU: "):
        backend(tree(tmp_path, {0: MI210[0]}, drm=drm)).probe()


def test_an_amd_card_without_a_kfd_node_says_the_driver_lacks_kfd(tmp_path):
    drm = {"card0": {"uevent": recorded("drm_uevent_kaby_lake_i915_hades_canyon_card0.txt")},
           "card1": {"uevent": recorded("drm_uevent_vega_m_hades_canyon_card1.txt")}}
    with pytest.raises(DeviceUnavailable) as err:
        backend(tree(tmp_path, drm=drm, dev_kfd=False)).probe()
    assert "an AMD GPU is present (card1 (0000:01:00.0, PCI 0x1002:0x694c, driver amdgpu))" \
        in str(err.value)
    assert "publishes no compute node in the KFD topology" in str(err.value)


def test_an_amd_card_driven_by_radeon_says_to_load_amdgpu(tmp_path):
    # The recorded Radeon VII uevent with its DRIVER line replaced: the card bound to radeon.
    uevent = recorded("drm_uevent_radeon_vii.txt").replace("DRIVER=amdgpu", "DRIVER=radeon")
    with pytest.raises(DeviceUnavailable, match="the amdgpu driver does not drive it"):
        backend(tree(tmp_path, drm={"card0": {"uevent": uevent}}, dev_kfd=False)).probe()


def test_kfd_gpus_without_dev_kfd_say_how_to_pass_it_into_a_container(tmp_path):
    with pytest.raises(DeviceUnavailable, match=r"--device=/dev/kfd --device=/dev/dri"):
        backend(tree(tmp_path, MI300X, dev_kfd=False)).probe()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may open any file")
def test_a_dev_kfd_this_user_cannot_open_says_which_groups_to_join(tmp_path):
    roots = tree(tmp_path, MI300X)
    os.chmod(Path(roots[1], "kfd"), 0)
    with pytest.raises(DeviceUnavailable, match=r"'render' and 'video' groups"):
        backend(roots).probe()


GARBLED = ["", "\x00\xff\xfe" * 50, "simd_count lots\ngfx_target_version x\n",
           "simd_count 4\nsimd_per_cu 0\nlocation_id -5\ndrm_render_minor 999999\n",
           "gfx_target_version 99999999999\nsimd_count 1\n"]


@pytest.mark.parametrize("text", GARBLED)
def test_garbled_kfd_files_never_raise_anything_but_device_unavailable(tmp_path, text):
    drm = {"renderD999999": {"uevent": "\x00garbage", "mem_info_vram_total": "lots"}}
    b = backend(tree(tmp_path, {0: MI210[0], 1: text, 2: None}, drm=drm), torch_ready())
    try:
        devices = b.probe()
    except DeviceUnavailable:
        return
    assert all(isinstance(d, Device) for d in devices)


def test_folders_where_sysfs_files_should_be_never_raise(tmp_path):
    roots = tree(tmp_path, {0: MI210[0]})
    (Path(roots[0]) / sysfs.KFD_NODES / "2" / "properties").mkdir(parents=True)
    (Path(roots[0]) / sysfs.DRM / "card0" / "device" / "uevent").mkdir(parents=True)
    (Path(roots[0]) / sysfs.AMDGPU_MODULE / "version").mkdir(parents=True)
    with pytest.raises(DeviceUnavailable, match="^no AMD GPU"):
        backend(roots).probe()


def test_runtime_detection_is_bounded_by_its_budget():
    started = time.monotonic()
    found = rt.detect(budget_s=0.05)
    assert time.monotonic() - started < 2.0
    for facts in (found.torch, found.opencl, found.ort):
        assert isinstance(facts, dict)


# ---------------------------------------------------------------------- path choice


GRAPH_READY = {"ready": True, "provider": "MIGraphXExecutionProvider", "device_id": 0,
               "onnxruntime": "1.20.1", "precisions": ["fp32"]}
TORCH_READY = {"ready": True, "hip_index": 0, "torch": "2.5.1+rocm6.2", "precisions": ["fp32"]}
OPENCL_READY = {"ready": True, "platform": rt.ROCM_OPENCL_PLATFORM, "platform_index": 1,
                "device_index": 0, "name": "gfx942:sramecc+:xnack-", "precisions": ["fp32"]}
NO_GRAPH = {"ready": False, "detail": "onnxruntime has no MIGraphX or ROCm provider"}
NO_TORCH = {"ready": False, "detail": "torch 2.13.0+cpu is not a ROCm build"}
NO_OPENCL = {"ready": False, "detail": "pyopencl lists no 'AMD Accelerated Parallel "
                                       "Processing' platform"}


def test_the_graph_path_comes_first_when_its_provider_is_ready():
    path, text = rt.choose_path({"migraphx": GRAPH_READY, "torch": TORCH_READY,
                                 "opencl": OPENCL_READY}, gfx="gfx942")
    assert path == "migraphx"
    assert text == ("onnxruntime 1.20.1 MIGraphXExecutionProvider on HIP device 0 (gfx942), "
                    "CPU fallback disabled")


def test_torch_is_taken_without_a_graph_provider_and_says_why():
    path, text = rt.choose_path({"migraphx": NO_GRAPH, "torch": TORCH_READY,
                                 "opencl": OPENCL_READY}, gfx="gfx942")
    assert (path, text) == ("torch", "torch 2.5.1+rocm6.2 on HIP device 0 (gfx942); graph path "
                                     "passed over: onnxruntime has no MIGraphX or ROCm provider")


def test_opencl_is_taken_last_and_names_both_paths_passed_over():
    path, text = rt.choose_path({"migraphx": NO_GRAPH, "torch": NO_TORCH,
                                 "opencl": OPENCL_READY})
    assert path == "opencl"
    assert text == ("OpenCL kernels on 'gfx942:sramecc+:xnack-' (AMD Accelerated Parallel "
                    "Processing, platform 1, device 0); graph path passed over: onnxruntime has "
                    "no MIGraphX or ROCm provider; torch path passed over: torch 2.13.0+cpu is "
                    "not a ROCm build")


def test_a_path_that_cannot_compute_the_plans_precision_is_passed_over():
    torch16 = {**TORCH_READY, "precisions": ["fp16", "fp32"]}
    path, text = rt.choose_path({"migraphx": GRAPH_READY, "torch": torch16,
                                 "opencl": OPENCL_READY}, precision="fp16")
    assert path == "torch"
    assert "graph path passed over: computes at fp32 only, the plan asks fp16" in text


def test_a_forced_path_is_taken_even_after_a_ready_one():
    path, text = rt.choose_path({"migraphx": GRAPH_READY, "torch": TORCH_READY,
                                 "opencl": OPENCL_READY}, forced="opencl")
    assert path == "opencl" and text.endswith("(forced by options rocm.path)")


def test_a_forced_path_that_is_not_ready_is_refused_with_its_reason():
    with pytest.raises(rt.PathUnavailable, match=r"the torch path was asked for .* cannot be "
                                                 r"taken: torch 2.13.0\+cpu is not a ROCm build"):
        rt.choose_path({"migraphx": GRAPH_READY, "torch": NO_TORCH}, forced="torch")


def test_an_unknown_forced_path_names_the_choices():
    with pytest.raises(rt.PathUnavailable, match="one of migraphx, torch, opencl, not 'hip'"):
        rt.choose_path({"torch": TORCH_READY}, forced="hip")


def test_no_ready_path_lists_every_reason():
    with pytest.raises(rt.PathUnavailable) as err:
        rt.choose_path({"migraphx": NO_GRAPH, "torch": NO_TORCH, "opencl": NO_OPENCL})
    assert str(err.value).count(" path: ") == 3


def test_device_paths_match_runtime_devices_by_pci_address():
    found = torch_ready("0000:43:00.0", "0000:63:00.0")
    paths = rt.device_paths({"pci_bus_id": "0000:63:00.0"}, 0, 0, found)
    assert paths["torch"]["hip_index"] == 1  # torch lists this GPU second
    assert not paths["migraphx"]["ready"] and not paths["opencl"]["ready"]


def test_partitions_at_one_pci_slot_take_the_runtimes_devices_at_that_slot_in_order():
    found = torch_ready("0000:05:00.0", "0000:05:00.0", "0000:15:00.0")
    second = rt.device_paths({"pci_bus_id": "0000:05:00.1"}, 1, 1, found, rank_at_slot=1)
    other = rt.device_paths({"pci_bus_id": "0000:15:00.0"}, 2, 2, found)
    assert (second["torch"]["hip_index"], other["torch"]["hip_index"]) == (1, 2)
    third = rt.device_paths({"pci_bus_id": "0000:05:00.2"}, 2, 2, found, rank_at_slot=2)
    assert third["torch"]["detail"] == "torch 2.5.1+rocm6.2 lists no HIP device at 0000:05:00"


def test_device_paths_fall_back_to_order_when_runtimes_give_no_address():
    found = rt.Runtimes(
        torch={"version": "2.5.1+rocm6.2", "devices": [{"index": 0}, {"index": 1}]},
        opencl={"platform": rt.ROCM_OPENCL_PLATFORM, "platform_index": 2, "devices": [
            {"device_index": 0, "name": "gfx90a:sramecc+:xnack-", "ready": True},
            {"device_index": 1, "name": "gfx90a:sramecc+:xnack-", "ready": False,
             "why": "clBuildProgram failed"}]},
        ort={"version": "1.20.1", "providers": {"MIGraphXExecutionProvider": [True, ""]}})
    first = rt.device_paths({}, 0, 0, found)
    second = rt.device_paths({}, 1, 1, found)
    assert first["torch"]["hip_index"] == 0 and second["torch"]["hip_index"] == 1
    assert first["opencl"]["ready"] and "clBuildProgram failed" in second["opencl"]["detail"]
    assert second["migraphx"]["device_id"] == 1


def test_a_rocm_torch_whose_device_check_timed_out_is_offered_in_kfd_order():
    found = rt.Runtimes(torch={"version": "2.5.1+rocm6.2", "rocm": "6.2", "devices": [],
                               "unverified": "HIP devices not checked: no answer within 4 s"})
    paths = rt.device_paths({"pci_bus_id": "0000:63:00.0"}, 1, 1, found)
    assert paths["torch"]["ready"] and paths["torch"]["hip_index"] == 1
    _, text = rt.choose_path(paths, gfx="gfx90a")
    assert text.startswith("torch 2.5.1+rocm6.2 on HIP device 1 (gfx90a) (HIP devices not "
                           "checked: no answer within 4 s); graph path passed over: ")


@pytest.mark.parametrize("env, order", [
    ({}, [0, 1, 2, 3]),
    ({"HIP_VISIBLE_DEVICES": "2,0"}, [1, None, 0, None]),
    ({"ROCR_VISIBLE_DEVICES": "1,2,3", "HIP_VISIBLE_DEVICES": "1"}, [None, None, 0, None]),
    ({"CUDA_VISIBLE_DEVICES": "3"}, [None, None, None, 0]),
    ({"HIP_VISIBLE_DEVICES": "GPU-21b6d61638a86f8c"}, [0, 1, 2, 3]),  # UUIDs: not applied
])
def test_hip_indexes_follow_the_visible_devices_variables(env, order):
    assert rt.hip_indexes(4, env) == order


def test_a_gpu_hidden_from_hip_is_not_listed(tmp_path):
    [device] = backend(tree(tmp_path, MI210), torch_ready("0000:63:00.0"),
                       environ={"HIP_VISIBLE_DEVICES": "0"}).probe()
    assert device.properties["pci_bus_id"] == "0000:63:00.0"


# ---------------------------------------------------------------------- compile


def _model():
    from onnx import TensorProto, helper, numpy_helper
    import numpy as np

    w = numpy_helper.from_array(np.random.default_rng(SEED).standard_normal(
        (8, 4)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "rocm-opencl", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])], initializer=[w])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


@pytest.fixture(scope="module")
def opencl_as_rocm():
    """A rocm Device whose OpenCL path points at this machine's first OpenCL device."""
    pytest.importorskip("pyopencl", reason="pyopencl is not installed")
    try:
        [cl_dev, *_] = bp.registry().resolve("opencl")
    except Exception as exc:
        pytest.skip(f"no OpenCL device here: {exc}")
    opencl = {"ready": True, "platform": cl_dev.properties["platform"],
              "platform_index": cl_dev.properties["platform_index"],
              "device_index": cl_dev.properties["device_index"], "name": cl_dev.name,
              "precisions": ["fp32"]}
    return Device(name="AMD GPU gfx942", kind="gpu", vendor="AMD", backend="rocm", index=0,
                  properties={"gfx_target": "gfx942", "paths": {
                      "migraphx": NO_GRAPH, "torch": NO_TORCH, "opencl": opencl}})


def _check_run(exe):
    import numpy as np
    from onnx import numpy_helper

    w = numpy_helper.to_array(_model().graph.initializer[0])
    x = np.random.default_rng(SEED + 1).standard_normal((3, 8)).astype(np.float32)
    got = exe.run({"x": x})["y"]
    np.testing.assert_allclose(got, np.maximum(x @ w, 0), rtol=1e-5, atol=1e-5,
                               err_msg=f"seed {SEED}")


def test_the_opencl_path_compiles_and_runs_a_graph_through_the_rocm_plugin(opencl_as_rocm):
    from backplane.model.intake import load_model

    exe = RocmBackend().compile(load_model(_model()), opencl_as_rocm, CompileOptions())
    name = opencl_as_rocm.properties["paths"]["opencl"]["name"]
    assert exe.path.startswith(f"OpenCL kernels on '{name}'")
    assert "torch path passed over: torch 2.13.0+cpu is not a ROCm build" in exe.path
    _check_run(exe)


def test_forcing_the_opencl_path_runs_it(opencl_as_rocm):
    from backplane.model.intake import load_model

    options = CompileOptions(extra={"rocm": {"path": "opencl"}})
    exe = RocmBackend().compile(load_model(_model()), opencl_as_rocm, options)
    assert exe.path.endswith("(forced by options rocm.path)")
    _check_run(exe)


def test_forcing_a_path_that_is_not_ready_is_a_compile_error(opencl_as_rocm):
    from backplane.model.intake import load_model

    options = CompileOptions(extra={"rocm": {"path": "torch"}})
    with pytest.raises(CompileError, match="not a ROCm build") as err:
        RocmBackend().compile(load_model(_model()), opencl_as_rocm, options)
    assert (err.value.backend, err.value.device) == ("rocm", "rocm:0")


def test_a_graph_path_that_fails_to_compile_hands_over_to_the_next_path(opencl_as_rocm):
    # This machine's onnxruntime has no MIGraphX provider: a session asked for it cannot be
    # made on it, so the compile goes on to the OpenCL path and says what happened.
    pytest.importorskip("onnxruntime")
    from backplane.model.intake import load_model

    paths = {**opencl_as_rocm.properties["paths"], "migraphx": GRAPH_READY}
    device = Device(name=opencl_as_rocm.name, kind="gpu", backend="rocm", index=0,
                    properties={**opencl_as_rocm.properties, "paths": paths})
    exe = RocmBackend().compile(load_model(_model()), device, CompileOptions())
    assert exe.path.startswith("OpenCL kernels on ")
    assert "graph path passed over: failed at compile: " in exe.path
    _check_run(exe)


def test_the_opencl_path_cannot_reach_a_device_that_is_gone_is_a_compile_error(opencl_as_rocm):
    from backplane.model.intake import load_model

    gone = {**opencl_as_rocm.properties["paths"]["opencl"], "platform_index": 99}
    device = Device(name="AMD GPU", kind="gpu", backend="rocm", index=0,
                    properties={"paths": {"opencl": gone}})
    with pytest.raises(CompileError, match="no path can compile here"):
        RocmBackend().compile(load_model(_model()), device, CompileOptions())


def test_the_torch_path_hands_the_graph_to_the_torch_op_table_on_cuda_n(opencl_as_rocm):
    # With this machine's CPU-only torch the table's upload to "cuda:0" fails inside
    # torch_ops.compile_on; the compile reports torch's own message and goes on to OpenCL.
    # (What runs on a real HIP device is not checked here.)
    if rt.torch_build()["version"] is None:
        pytest.skip("torch is not installed")
    if rt.torch_build()["rocm"] is not None or "+cu" in rt.torch_build()["version"]:
        pytest.skip("torch here has a GPU build")
    from backplane.model.intake import load_model

    paths = {**opencl_as_rocm.properties["paths"], "torch": TORCH_READY}
    device = Device(name=opencl_as_rocm.name, kind="gpu", backend="rocm", index=0,
                    properties={**opencl_as_rocm.properties, "paths": paths})
    exe = RocmBackend().compile(load_model(_model()), device, CompileOptions())
    assert exe.path.startswith("OpenCL kernels on ")
    assert "torch path passed over: failed at compile: " in exe.path
    assert "Torch not compiled with CUDA enabled" in exe.path


def test_the_graph_paths_run_errors_name_this_backend_and_its_device():
    # ORT's CPU provider stands in for MIGraphX: the path runs the ONNX Runtime adapter's
    # executable, whose errors name the backend it runs for (rocm), not onnxruntime.
    ort = pytest.importorskip("onnxruntime")
    import numpy as np

    from backplane.sdk.errors import ExecutionError
    from backplane.model.intake import load_model

    graph = {**GRAPH_READY, "provider": "CPUExecutionProvider", "onnxruntime": ort.__version__}
    device = Device(name="AMD GPU gfx942", kind="gpu", vendor="AMD", backend="rocm", index=0,
                    properties={"paths": {"migraphx": graph, "torch": NO_TORCH,
                                          "opencl": NO_OPENCL}})
    exe = RocmBackend().compile(load_model(_model()), device, CompileOptions())
    with pytest.raises(ExecutionError) as err:
        exe.run({"x": np.ones((2, 8), np.float32)})  # the graph declares 3 rows
    assert (err.value.backend, err.value.device) == ("rocm", "rocm:0")
    assert str(err.value).startswith("run failed in backend 'rocm' on device 'rocm:0': ")
