"""The opencl backend: discovery without pyopencl, the pip-installed drivers made visible,
devices that cannot build kernels left out with the driver's reason, devices and limits
read from the device, the program binary cache across processes, the buffer pool, threads,
special values, and the model zoo end to end through a Session pinned to the OpenCL device.

Skipped, with the reason, where pyopencl is not installed or no OpenCL 1.2+ device exists.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

cl = pytest.importorskip("pyopencl", reason="pyopencl is not installed")

import backplane as bp  # noqa: E402
from backplane import CompileOptions  # noqa: E402
from backplane.sdk.errors import DeviceUnavailable, ExecutionError  # noqa: E402
from backplane.model.intake import load_model  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402

SEED = int(os.environ.get("BACKPLANE_TEST_SEED", time.time_ns() % 2**31))
#: Whole-model tolerance: float32 sums over up to a few hundred terms (the suite's MatMul
#: and Gemm float32 override, conformance/tolerances.toml).
RTOL, ATOL = 1e-4, 1e-4


def _opencl_device():
    try:
        backend = bp.registry().backend("opencl")
        backend.probe()
    except (DeviceUnavailable, Exception) as exc:  # no platform, no ICD, no device
        pytest.skip(f"no OpenCL device: {exc}")
    return backend, bp.registry().resolve("opencl:0")[0]


@pytest.fixture(scope="module")
def opencl():
    """(backend, device 0, its runtime state)."""
    backend, device = _opencl_device()
    from backplane.runtimes import opencl as runtime

    return backend, device, runtime.state_for(device)


def rng(offset: int = 0) -> np.random.Generator:
    return np.random.default_rng(SEED + offset)


def one_node(op: str, ins: dict, outs: dict, inits: list | None = None, **attrs):
    graph = helper.make_graph(
        [helper.make_node(op, list(ins) + [i.name for i in inits or []], list(outs), **attrs)],
        f"test-{op}", [helper.make_tensor_value_info(n, t, s) for n, (t, s) in ins.items()],
        [helper.make_tensor_value_info(n, t, s) for n, (t, s) in outs.items()],
        initializer=inits or [])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def run_model(opencl, model, feeds):
    backend, device, _ = opencl
    return backend.compile(load_model(model), device, CompileOptions()).run(feeds)


# ---------------------------------------------------------------------- discovery, devices

def test_listing_plugins_imports_neither_pyopencl_nor_numpy():
    code = ("import sys, backplane; r = backplane.registry(); b = r.backend('opencl'); "
            "caps = b.capabilities.to_dict(); "
            "print(sorted(m for m in ('pyopencl', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "BACKPLANE_PLUGINS": "opencl"})
    assert out.stdout.strip().splitlines()[-1] == "[]"


def _installed(distribution: str) -> bool:
    from importlib import metadata

    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


def _plugin_record(env: dict) -> dict:
    """The opencl plugin's record from ``backplane plugins --json``, run with ``env``."""
    out = subprocess.run([sys.executable, "-m", "backplane", "plugins", "--json"],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "BACKPLANE_PLUGINS": "opencl", **env})
    return next(r for r in json.loads(out.stdout) if r["name"] == "opencl")


@pytest.mark.skipif(not _installed("pocl-binary-distribution"),
                    reason="pocl-binary-distribution is not installed")
def test_a_device_whose_driver_cannot_build_the_probe_kernel_is_no_device_with_its_reason(
        tmp_path):
    # An empty vendors folder leaves the drivers in pyopencl's own folder: PoCL, which
    # here rejects every build because of an option its build flags add.
    record = _plugin_record({"OCL_ICD_VENDORS": str(tmp_path),
                             "POCL_EXTRA_BUILD_FLAGS": "-cl-no-such-option"})
    assert record["state"] == "no-device" and record["devices"] == []
    assert "(Portable Computing Language)" in record["reason"]
    assert "Invalid build option: -cl-no-such-option" in record["reason"]


def test_the_host_cpu_is_listed_once_whatever_drivers_offer_it(opencl):
    backend, _, _ = opencl
    cpus = [d for d in backend.probe() if d.kind == "cpu"]
    assert len(cpus) <= 1, [(d.name, d.properties["platform"]) for d in cpus]


def test_every_listed_device_builds_with_the_drivers_of_a_fresh_process(tmp_path):
    code = textwrap.dedent("""
        import json, backplane as bp
        from backplane.runtimes import opencl as runtime
        for d in bp.registry().devices():
            if d.backend == "opencl":
                runtime.state_for(d)  # builds a kernel program on the device
                print(json.dumps([d.name, d.properties["platform"]]))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "BACKPLANE_PLUGINS": "opencl",
                              "BACKPLANE_CACHE_DIR": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    if not out.stdout.strip():
        pytest.skip(f"no OpenCL device: {_plugin_record({})['reason']}")


@pytest.mark.skipif(not _installed("intel-opencl-rt"), reason="intel-opencl-rt is not installed")
def test_pip_installed_drivers_are_registered_next_to_the_system_ones(tmp_path):
    folder, files, _ = _vendors_folder_seen_by_a_child(tmp_path)
    assert not folder.is_relative_to(tmp_path)  # written privately, not kept in the cache
    library = Path(files["intel-opencl-rt.icd"].strip())
    assert library.is_absolute() and library.is_file() and library.name == "libintelocl.so"
    system = Path("/etc/OpenCL/vendors")
    for icd in (system.glob("*.icd") if system.is_dir() else ()):
        assert files[icd.name] == icd.read_text()


def _vendors_folder_seen_by_a_child(cache: Path) -> tuple[Path, dict[str, str], int]:
    """OCL_ICD_VENDORS in a child that imports the plugin with ``cache`` as its cache, the
    files in it and its mode, read before the child exits (and removes it)."""
    code = ("import json, os, backplane.plugins.opencl; "
            "from backplane.runtimes import opencl_drivers as p; "
            "d = p.use_pip_installed_drivers()['OCL_ICD_VENDORS']; "
            "print(json.dumps([d, {n: open(os.path.join(d, n)).read() for n in os.listdir(d)}, "
            "os.stat(d).st_mode & 0o777]))")
    env = {k: v for k, v in os.environ.items() if k != "OCL_ICD_VENDORS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**env, "BACKPLANE_CACHE_DIR": str(cache)})
    folder, files, mode = json.loads(out.stdout.strip().splitlines()[-1])
    return Path(folder), files, mode


@pytest.mark.skipif(not _installed("intel-opencl-rt"), reason="intel-opencl-rt is not installed")
def test_an_icd_file_planted_in_the_cache_is_never_read(tmp_path):
    """The ICD loader loads every library an .icd file in OCL_ICD_VENDORS names: the folder
    is written by the process, private, and holds exactly the drivers backplane chose,
    whatever a cache folder (here, the one an earlier version reused) holds."""
    from backplane.sdk.cache import cache_key
    from backplane.runtimes import opencl_drivers

    icds = {f"{d}.icd": f"{lib}\n" for d, lib in opencl_drivers._pip_driver_libraries()}
    system = opencl_drivers.SYSTEM_VENDORS
    for f in sorted(system.glob("*.icd")) if system.is_dir() else ():
        icds.setdefault(f.name, f.read_text())
    planted = tmp_path / "opencl" / f"icd-vendors-{cache_key(sorted(icds.items()))}"
    planted.mkdir(parents=True)
    for name in icds:
        (planted / name).write_text(f"{tmp_path}/not-a-driver.so\n")
    (planted / "planted.icd").write_text(f"{tmp_path}/planted.so\n")
    folder, files, mode = _vendors_folder_seen_by_a_child(tmp_path)
    assert folder != planted and not folder.is_relative_to(tmp_path)
    assert files == icds and mode == 0o700


def test_the_driver_environment_is_seen_by_the_icd_loader_only():
    """OCL_ICD_VENDORS is set around the plugin's first OpenCL call and nowhere else: the
    application's environment, and its child processes', stay as they were."""
    code = textwrap.dedent("""
        import os, json, backplane as bp
        from backplane.runtimes import opencl_drivers
        devices = [d for d in bp.registry().devices() if d.backend == 'opencl']
        if devices:
            from backplane.runtimes import opencl as runtime
            runtime.state_for(devices[0])  # the first OpenCL call of this process
        print(json.dumps([bool(opencl_drivers.use_pip_installed_drivers()), len(devices),
                          os.environ.get('OCL_ICD_VENDORS'),
                          os.environ.get('CL_CONFIG_CPU_TARGET_ARCH')]))
    """)
    env = {k: v for k, v in os.environ.items()
           if k not in ("OCL_ICD_VENDORS", "CL_CONFIG_CPU_TARGET_ARCH")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**env, "BACKPLANE_PLUGINS": "opencl"})
    assert out.returncode == 0, out.stderr[-2000:]
    added, listed, vendors, target = json.loads(out.stdout.strip().splitlines()[-1])
    if not added:
        pytest.skip("no pip-installed OpenCL driver: the plugin changes nothing to scope")
    assert (vendors, target) == (None, None) and listed >= 0


def test_a_users_own_ocl_icd_vendors_is_left_alone(tmp_path):
    code = ("import os, backplane.plugins.opencl; "
            "print(os.environ['OCL_ICD_VENDORS'], os.environ.get('CL_CONFIG_CPU_TARGET_ARCH'))")
    env = {k: v for k, v in os.environ.items() if k != "CL_CONFIG_CPU_TARGET_ARCH"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**env, "OCL_ICD_VENDORS": str(tmp_path)})
    assert out.stdout.split() == [str(tmp_path), "None"]


@pytest.mark.parametrize("vendor, flags, target", [
    ("AuthenticAMD", "fpu sse4_2 avx avx2 fma bmi2 avx512f avx512cd avx512bw avx512dq avx512vl",
     "skx"),
    ("AuthenticAMD", "fpu sse4_2 avx avx2 fma bmi2", "core-avx2"),
    ("HygonGenuine", "fpu sse4_2 avx", "corei7-avx"),
    ("AuthenticAMD", "fpu sse2", None),
    ("GenuineIntel", "fpu sse4_2 avx avx2 fma bmi2 avx512f avx512cd avx512bw avx512dq avx512vl",
     None),
])
def test_intels_cpu_runtime_is_told_the_instruction_set_of_a_cpu_it_may_not_know(
        tmp_path, vendor, flags, target):
    from backplane.runtimes.opencl_drivers import _intel_cpu_target

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nvendor_id\t: {vendor}\ncpu family\t: 26\n"
                       f"flags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert _intel_cpu_target(cpuinfo) == target


def test_devices_carry_platform_driver_and_limits_from_the_device(opencl):
    _, device, _ = opencl
    [cl_dev] = [d for p in cl.get_platforms() for d in p.get_devices()
                if d.name.strip() == device.name][:1]
    props = device.properties
    assert device.id == "opencl:0" and device.kind in ("cpu", "gpu", "accelerator")
    assert props["max_work_group_size"] == cl_dev.max_work_group_size
    assert props["local_memory_bytes"] == cl_dev.local_mem_size
    assert props["compute_units"] == cl_dev.max_compute_units
    assert props["driver_version"] == cl_dev.driver_version.strip()
    assert props["opencl_version"].startswith("OpenCL ")
    assert props["fp16"] == ("cl_khr_fp16" in cl_dev.extensions)


def test_launch_and_tile_sizes_come_from_the_device_limits(opencl):
    _, _, st = opencl
    assert st.max_work_group == st.device.max_work_group_size
    assert st.local_mem == st.device.local_mem_size
    assert st.local_1d <= st.max_work_group and st.local_1d % st.wg_multiple == 0
    tm, tn, tk, wgx, wgy = st.gemm_tiles()
    assert wgx * wgy <= st.max_work_group
    assert 4 * tk * (wgy * tm + wgx * tn) <= st.local_mem
    rows, width, group, _ = st.cpu_gemm_blocks()
    # the widest width, up to the device's own, whose GEMM program the driver builds
    assert width <= st.vector_width and width in (4, 8, 16) and group <= st.max_work_group


def test_float16_is_declared_nowhere_a_kernel_computes():
    caps = bp.registry().backend("opencl").capabilities
    computing = [k for k, s in caps.ops.items() if s.dtypes and "float16" in s.dtypes]
    # Only kernels that move element bits (no arithmetic) admit float16.
    assert set(computing) <= {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity",
                              "Constant",
                              "Shape", "Transpose", "Expand", "Slice", "Concat", "Gather",
                              "Pad"}


# ---------------------------------------------------------------------- caches, memory

def test_a_fresh_process_loads_program_binaries_from_the_disk_cache(tmp_path):
    _opencl_device()
    code = textwrap.dedent("""
        import json, numpy as np, backplane as bp
        from backplane.conformance.zoo import mlp
        s = bp.Session(mlp().model, devices=["opencl"])
        s.run({"x": np.ones((2, 64), np.float32)})
        from backplane.runtimes import opencl
        [st] = opencl._states.values()
        print(json.dumps(st.stats))
    """)
    env = {**os.environ, "BACKPLANE_CACHE_DIR": str(tmp_path)}
    first, second = (json.loads(subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        env=env).stdout.strip().splitlines()[-1]) for _ in range(2))
    assert first["builds"] > 0 and first["disk_hits"] == 0
    assert second["builds"] == 0 and second["disk_hits"] == first["builds"]
    assert len(list((tmp_path / "opencl").glob("*.bin"))) == first["builds"]


def test_the_buffer_pool_reuses_device_memory_across_runs(opencl):
    from backplane.conformance.zoo import resnet

    backend, device, st = opencl
    exe = backend.compile(load_model(resnet().model), device, CompileOptions())
    x = rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32)
    for _ in range(2):
        exe.run({"x": x})
    managed, blocks = st.pool.managed_bytes, st.pool.active_blocks + st.pool.held_blocks
    for _ in range(8):
        exe.run({"x": x})
    assert st.pool.managed_bytes == managed
    assert st.pool.active_blocks + st.pool.held_blocks == blocks


# ---------------------------------------------------------------------- values, errors

def test_relu_max_and_clip_keep_nan_inf_and_negative_zero(opencl):
    x = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, -1.5, 2.5, 1e-40], np.float32)
    f = TensorProto.FLOAT
    relu = run_model(opencl, one_node("Relu", {"x": (f, [8])}, {"y": (f, [8])}), {"x": x})["y"]
    assert np.isnan(relu[0]) and relu[1] == np.inf and relu[2] == 0 and relu[6] == 2.5
    assert np.signbit(relu[3])  # max(-0.0, 0) keeps the input, as `x < 0 ? 0 : x`
    bounds = [helper.make_tensor("lo", f, [], [-1.0]), helper.make_tensor("hi", f, [], [1.0])]
    clip = run_model(opencl, one_node("Clip", {"x": (f, [8])}, {"y": (f, [8])}, bounds),
                     {"x": x})["y"]
    assert np.isnan(clip[0]) and clip[1] == 1 and clip[2] == -1 and np.signbit(clip[3])
    red = run_model(opencl, one_node("ReduceMax", {"x": (f, [8])}, {"y": (f, [])},
                                     keepdims=0), {"x": x})["y"]
    assert np.isnan(red)


@pytest.mark.parametrize("shape", [(), (0, 3), (1,), (7,), (127,), (1025,)])
def test_empty_rank_0_and_odd_sizes_run(opencl, shape):
    f = TensorProto.FLOAT
    x = rng(2).standard_normal(shape).astype(np.float32)
    model = one_node("Sigmoid", {"x": (f, list(shape))}, {"y": (f, list(shape))})
    y = run_model(opencl, model, {"x": x})["y"]
    assert y.shape == shape and y.dtype == np.float32
    np.testing.assert_allclose(y, 1 / (1 + np.exp(-x.astype(np.float64))), rtol=1e-5,
                               atol=1e-6, err_msg=f"seed {SEED}")


def test_an_out_of_range_gather_index_is_an_execution_error(opencl):
    f, i = TensorProto.FLOAT, TensorProto.INT64
    model = one_node("Gather", {"x": (f, [4, 3]), "i": (i, [2])}, {"y": (f, [2, 3])})
    with pytest.raises(ExecutionError, match="out of range"):
        run_model(opencl, model, {"x": np.ones((4, 3), np.float32),
                                  "i": np.array([1, 9], np.int64)})


def test_concurrent_runs_agree_with_single_threaded_ones(opencl):
    from backplane.conformance.zoo import mlp

    backend, device, _ = opencl
    exe = backend.compile(load_model(mlp().model), device, CompileOptions())
    assert exe.thread_safe
    xs = [rng(10 + k).standard_normal((8, 64)).astype(np.float32) for k in range(6)]
    want = [exe.run({"x": x})["y"] for x in xs]
    errors = []

    def worker(k):
        for _ in range(4):
            if not np.array_equal(exe.run({"x": xs[k]})["y"], want[k]):
                errors.append(k)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors


def test_fused_kernels_agree_with_their_unfused_sequence(opencl):
    from backplane.runtimes import opencl_ops as ops

    _, _, st = opencl
    r = rng(3)
    x = r.standard_normal((1, 8, 12, 12)).astype(np.float32)
    w = (r.standard_normal((8, 8, 3, 3)) * 0.2).astype(np.float32)
    b = r.standard_normal(8).astype(np.float32)
    dx, dw, db = st.upload(x), st.upload(w), st.upload(b)
    fused = st.download(ops.fused_conv_relu(dx, dw, db, pads=[1, 1, 1, 1]))
    plain = st.download(ops.unary("Relu", ops.conv(dx, dw, db, pads=[1, 1, 1, 1])))
    np.testing.assert_allclose(fused, plain, rtol=1e-5, atol=1e-6, err_msg=f"seed {SEED}")
    a = r.standard_normal((5, 33)).astype(np.float32)
    m = r.standard_normal((33, 17)).astype(np.float32)
    bias = r.standard_normal(17).astype(np.float32)
    da, dm, dbias = st.upload(a), st.upload(m), st.upload(bias)
    fused = st.download(ops.fused_matmul_bias_gelu(da, dm, dbias, "tanh"))
    plain = st.download(ops.gelu(ops.binary("Add", ops.matmul(da, dm), dbias), "tanh"))
    np.testing.assert_allclose(fused, plain, rtol=1e-5, atol=1e-6, err_msg=f"seed {SEED}")


# ---------------------------------------------------------------------- the model zoo

def _zoo():
    from backplane.conformance.zoo import models

    return [(m.name, m.model, m.input_shapes) for m in models()]


@pytest.mark.parametrize("name, model, shapes", _zoo(), ids=[n for n, _, _ in _zoo()])
def test_every_zoo_model_runs_wholly_on_opencl_and_matches_the_oracle(opencl, name, model,
                                                                      shapes):
    from backplane.conformance.oracle import expected

    session = bp.Session(model, devices=["opencl"])
    # A session pinned to opencl has no reference fallback: every node runs on opencl:0.
    assert {p.device for p in session.plan.placements} == {"opencl:0"}
    for k, feeds_shapes in enumerate(shapes):
        feeds = {n: rng(100 + k).standard_normal(s).astype(np.float32)
                 for n, s in feeds_shapes.items()}
        got = session.run(feeds)
        want = expected(model, feeds)
        for out, value in want.items():
            np.testing.assert_allclose(got[out], value, rtol=RTOL, atol=ATOL,
                                       err_msg=f"{name} at {feeds_shapes}, seed {SEED}")


def test_the_tiled_local_memory_gemm_of_gpus_agrees_with_numpy(opencl, monkeypatch):
    """The GPU path (matmul.cl) runs on any device; checked here on whatever this one is."""
    from backplane.runtimes import opencl_ops as ops

    _, _, st = opencl
    monkeypatch.setattr(st, "is_cpu", False)
    r = rng(4)
    a = r.standard_normal((2, 37, 70)).astype(np.float32)
    b = r.standard_normal((70, 45)).astype(np.float32)
    got = st.download(ops.matmul(st.upload(a), st.upload(b)))
    np.testing.assert_allclose(got, a @ b, rtol=1e-4, atol=1e-4, err_msg=f"seed {SEED}")
    x = r.standard_normal((1, 3, 9, 9)).astype(np.float32)
    w = r.standard_normal((5, 3, 3, 3)).astype(np.float32)
    got = st.download(ops.fused_conv_relu(st.upload(x), st.upload(w), pads=[1, 1, 1, 1]))
    monkeypatch.setattr(st, "is_cpu", True)
    cpu = st.download(ops.fused_conv_relu(st.upload(x), st.upload(w), pads=[1, 1, 1, 1]))
    np.testing.assert_allclose(got, cpu, rtol=1e-4, atol=1e-4, err_msg=f"seed {SEED}")
