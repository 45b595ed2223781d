"""The arm-neon backend: NEON kernels in C, checked on this x86 machine under qemu-aarch64.

The kernels are cross-compiled with gcc-aarch64-linux-gnu into the emulation harness and
run under qemu-aarch64 user-mode emulation, so what is checked is the real NEON code: the
mandatory tier as a hardware team would run it, the variants chosen from the emulated CPU's
features (and the same results from the base ones), the build cache, a harness that dies or
hangs, and the feature parsing of recorded aarch64 /proc/cpuinfo files. Tests that need the
cross compiler or qemu are skipped with the reason where they are missing.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from onnx import TensorProto, helper

from backplane import CompileOptions, Device
from backplane.conformance.cases import MANDATORY_OPS
from backplane.sdk.errors import CompileError, ExecutionError
from backplane.model.intake import load_model
from conftest import ROOT, run_cli, run_python

HAVE_TOOLS = bool(shutil.which("aarch64-linux-gnu-gcc") and shutil.which("qemu-aarch64"))
needs_emulation = pytest.mark.skipif(
    not HAVE_TOOLS, reason="NEON emulation needs gcc-aarch64-linux-gnu and qemu-user "
                           "(apt-get install gcc-aarch64-linux-gnu qemu-user)")
SEED = int(os.environ.get("BACKPLANE_TEST_SEED", time.time_ns() % 2**31))
#: Core ops arm-neon must declare and pass under emulation (all of them today), so that a
#: lost kernel fails here instead of passing quietly as "unsupported".
CORE_OPS_DECLARED = 49
HWPROBE = ROOT / "tests" / "data" / "hwprobe"


@pytest.fixture(scope="session")
def neon_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One build cache for the whole run (the harness is built once, about 5 s)."""
    return tmp_path_factory.mktemp("neon-cache")


def _options(cache: Path) -> SimpleNamespace:
    return SimpleNamespace(cache_dir=str(cache))


@pytest.fixture(scope="session")
def runtimes(neon_cache: Path):
    """Harnesses under three emulated CPUs: every feature, none (Cortex-A57: ARMv8.0), and
    fp16 with the dot product but no i8mm (Cortex-A76)."""
    from backplane.plugins.arm_neon.runtime import EmulatedRuntime

    made = {cpu: EmulatedRuntime(cpu, _options(neon_cache))
            for cpu in ("max", "cortex-a57", "cortex-a76")}
    yield made
    for rt in made.values():
        rt.close()


def _emulated_device(cpu: str = "max") -> Device:
    return Device(name=f"{cpu} (emulated)", kind="cpu", backend="arm-neon", index=0,
                  properties={"runtime": "emulated", "qemu_cpu": cpu})


def _relu_graph():
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5])])
    return load_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))


# ---------------------------------------------------------------------- discovery

def test_importing_the_plugin_imports_no_numpy():
    done = run_python("import sys, backplane.plugins.arm_neon as n; len(n.kernels); "
                      "n.ArmNeonBackend().capabilities; print('numpy' in sys.modules)")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.skipif(sys.platform != "linux" or os.uname().machine in ("aarch64", "arm64"),
                    reason="on an ARM host the plugin lists the native CPU")
def test_without_the_variable_backplane_plugins_shows_no_device_and_how_to_emulate():
    done = run_cli("plugins", "--json", BACKPLANE_NEON_EMULATION="")
    assert done.returncode == 0, done.stderr
    record = next(r for r in json.loads(done.stdout) if r["name"] == "arm-neon")
    assert record["state"] == "no-device" and record["devices"] == []
    assert "not an ARM CPU" in record["reason"]
    assert "BACKPLANE_NEON_EMULATION=1" in record["reason"]
    assert "gcc-aarch64-linux-gnu and qemu-user" in record["reason"]


@pytest.mark.skipif(os.uname().machine in ("aarch64", "arm64"), reason="x86 hosts only")
def test_emulation_without_the_tools_names_the_packages_to_install(tmp_path):
    done = run_cli("plugins", "--json", BACKPLANE_NEON_EMULATION="1", PATH=str(tmp_path))
    assert done.returncode == 0, done.stderr
    record = next(r for r in json.loads(done.stdout) if r["name"] == "arm-neon")
    assert record["state"] == "no-device"
    assert "apt-get install gcc-aarch64-linux-gnu qemu-user" in record["reason"]


@needs_emulation
def test_an_unknown_qemu_cpu_model_is_refused_with_the_known_ones():
    done = run_cli("plugins", "--json", BACKPLANE_NEON_EMULATION="cortex-z9")
    record = next(r for r in json.loads(done.stdout) if r["name"] == "arm-neon")
    assert record["state"] == "no-device"
    assert "no CPU model 'cortex-z9'" in record["reason"] and "cortex-a57" in record["reason"]


@needs_emulation
def test_with_the_variable_the_emulated_cpu_is_listed_with_its_variants():
    done = run_cli("devices", "--json", BACKPLANE_NEON_EMULATION="cortex-a76")
    assert done.returncode == 0, done.stderr
    [device] = [d for d in json.loads(done.stdout) if d["id"] == "arm-neon:0"]
    assert "qemu-aarch64" in device["name"] and device["kind"] == "cpu"
    props = device["properties"]
    assert props["qemu_cpu"] == "cortex-a76" and "asimddp" in props["features"]
    assert props["variants"]["matmul_int8"] == "dotprod" and props["variants"]["gemm"] == "base"


def test_the_host_op_codes_are_the_c_headers():
    import re

    from backplane.plugins.arm_neon import build, ops

    header = (build.source_dir() / "bp_neon.h").read_text()
    in_c = {m.group(1): int(m.group(2)) for m in re.finditer(r"\bBP_(\w+) = (\d+)", header)}

    def c_name(name: str) -> str:
        return re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper()

    for table in (ops.UNARY, ops.BINARY):
        assert {c_name(k): v for k, v in table.items()} == {
            c_name(k): in_c[c_name(k)] for k in table}
    assert [in_c[f"ACT_{n}"] for n in ("NONE", "RELU", "CLIP", "GELU", "GELU_TANH")] == \
        [ops.ACT_NONE, ops.ACT_RELU, ops.ACT_CLIP, ops.ACT_GELU, ops.ACT_GELU_TANH]
    assert (in_c["F32"], in_c["F16"], in_c["BF16"]) == (ops.F32, ops.F16, ops.BF16)


# ---------------------------------------------------------------------- variants

def test_features_of_recorded_aarch64_cpus_pick_the_expected_variants():
    from backplane.plugins.arm_neon import build, features

    index = build.index(build.scan(build.source_dir()))
    expected = {  # file: (int8 MatMul variant, f16 element-wise variant)
        "cpuinfo_aarch64_graviton2_t4g_small.txt": ("dotprod", "fp16"),
        "cpuinfo_aarch64_graviton3_neoverse_v1.txt": ("i8mm", "fp16"),
        "cpuinfo_aarch64_raspberrypi5_bcm2712.txt": ("dotprod", "fp16"),
        "cpuinfo_aarch64_agilex5_a55_a76.txt": ("dotprod", "fp16"),
    }
    for name, (int8, half) in expected.items():
        found = features.from_cpuinfo((HWPROBE / name).read_text())
        assert {"asimd", "asimdhp", "asimddp"} <= found, name
        chosen = features.variants_for(index, found)
        got = (chosen["matmul_int8"], chosen["unary"], chosen["gemm"])
        assert got == (int8, half, "base"), name
    assert features.from_cpuinfo((HWPROBE / "cpuinfo_aarch64_graviton3_neoverse_v1.txt")
                                 .read_text()) >= {"sve", "i8mm", "bf16"}
    assert features.from_cpuinfo((HWPROBE / "cpuinfo_x86_64_epyc_devvm.txt").read_text()) == set()


def test_features_from_the_hardware_capability_words():
    from backplane.plugins.arm_neon import features

    # what qemu-aarch64 7.2 reports for -cpu cortex-a57: fp asimd evtstrm aes pmull sha1
    # sha2 crc32 cpuid, and no AT_HWCAP2 bits
    assert features.from_hwcap(0x8FB, 0) == {"fp", "asimd"}
    assert features.from_hwcap(1 << 1 | 1 << 10 | 1 << 20, 1 << 13) == {"asimd", "asimdhp",
                                                                        "asimddp", "i8mm"}
    assert features.choose(["base", "dotprod", "i8mm"], {"asimd", "asimddp"}) == "dotprod"
    assert features.choose(["dotprod"], {"asimd"}) is None


@needs_emulation
def test_each_emulated_cpu_runs_the_variants_its_features_allow(runtimes):
    from backplane.plugins.arm_neon import _emulated_device as device_for

    want = {"max": ("i8mm", "fp16"), "cortex-a57": ("base", "base"),
            "cortex-a76": ("dotprod", "fp16")}
    for cpu, (int8, half) in want.items():
        rt = runtimes[cpu]
        assert (rt.variants["matmul_int8"], rt.variants["unary"], rt.variants["binary"]) == \
            (int8, half, half), (cpu, rt.describe())
        # the probe's table of qemu's models agrees with what the harness reads in qemu
        assert device_for(cpu).properties["variants"] == rt.variants, cpu


@needs_emulation
def test_the_base_variants_give_the_bits_of_the_fp16_dotprod_and_i8mm_ones(runtimes):
    from backplane.plugins.arm_neon import ops

    rng = np.random.default_rng(SEED)
    a = rng.standard_normal((37, 53)).astype(np.float16)
    b = rng.standard_normal((53,)).astype(np.float16)
    int8_cases = []
    for ta in (np.int8, np.uint8):
        for tb in (np.int8, np.uint8):
            info_a, info_b = np.iinfo(ta), np.iinfo(tb)
            int8_cases.append((rng.integers(info_a.min, info_a.max + 1, (2, 19, 70)).astype(ta),
                               rng.integers(info_b.min, info_b.max + 1, (70, 13)).astype(tb),
                               rng.integers(0, 9, 19).astype(ta), np.array(5, tb)))
    results: dict[str, list] = {}
    for cpu, rt in runtimes.items():
        before = dict(rt.counts)
        got = [ops.binary(rt, op, a, b) for op in ("Add", "Sub", "Mul", "Div")]
        got += [ops.unary(rt, op, a) for op in ("Relu", "Abs", "Neg", "Sqrt", "Tanh")]
        got.append(ops.clip(rt, a, np.float16(-0.5), np.float16(0.75)))
        for x, w, za, zb in int8_cases:
            y = ops.matmul_integer(rt, x, w, za, zb)
            want = (x.astype(np.int64) - za[:, None]) @ (w.astype(np.int64) - zb)
            np.testing.assert_array_equal(y, want, err_msg=f"{cpu}, seed {SEED}")
            got.append(y)
        results[cpu] = got
        ran = {k: v - before.get(k, 0) for k, v in rt.counts.items() if v > before.get(k, 0)}
        int8, half = rt.variants["matmul_int8"], rt.variants["binary"]
        assert ran.get("bp_matmul_int8" + ("" if int8 == "base" else f"__{int8}")) == 4, ran
        assert ran.get("bp_binary" + ("" if half == "base" else f"__{half}")) == 4, ran
    for cpu in ("cortex-a57", "cortex-a76"):
        for i, (x, y) in enumerate(zip(results["max"], results[cpu])):
            np.testing.assert_array_equal(x, y, err_msg=f"result {i}: max vs {cpu}, seed {SEED}")
    np.testing.assert_allclose(results["max"][0], (a.astype(np.float32) + b).astype(np.float16))


# ---------------------------------------------------------------------- the build

def _small_sources(tmp_path: Path) -> Path:
    """A kernel folder with the element-wise kernels only (a quick build)."""
    from backplane.plugins.arm_neon import build

    folder = tmp_path / "neon"
    folder.mkdir()
    for name in ("bp_neon.h", "elementwise.h", "elementwise.c", "harness.c"):
        shutil.copy(build.source_dir() / name, folder / name)
    return folder


@needs_emulation
def test_the_build_is_cached_and_rebuilt_when_a_source_changes(tmp_path):
    from backplane.plugins.arm_neon import build

    folder, cc = _small_sources(tmp_path), shutil.which("aarch64-linux-gnu-gcc")
    options = _options(tmp_path / "cache")
    first = build.build("harness", cc, folder, options)
    again = build.build("harness", cc, folder, options)
    assert first.built and not again.built and again.path == first.path
    with open(folder / "elementwise.c", "a") as f:
        f.write("\n/* an edit */\n")
    changed = build.build("harness", cc, folder, options)
    assert changed.built and changed.path != first.path and changed.path.is_file()
    assert {k for s in changed.sources for k in s.kernels} == {"unary", "binary"}


@needs_emulation
def test_a_c_syntax_error_is_a_compile_error_with_the_compilers_words(tmp_path):
    from backplane.plugins.arm_neon import build

    folder = _small_sources(tmp_path)
    (folder / "broken.c").write_text('#include "bp_neon.h"\nBP_KERNEL(broken) { return 0 }\n')
    with pytest.raises(CompileError) as err:
        build.build("harness", shutil.which("aarch64-linux-gnu-gcc"), folder,
                    _options(tmp_path / "cache"))
    assert "broken.c" in str(err.value) and "error:" in str(err.value)
    assert "expected ';'" in err.value.vendor_message


@needs_emulation
def test_a_variant_the_compiler_cannot_build_is_left_out_and_the_next_one_runs(tmp_path):
    """As with a compiler too old for an extension: that variant is left out, not the
    build; its kernels run as the next variant down."""
    from backplane.plugins.arm_neon import build, features

    folder = _small_sources(tmp_path)
    (folder / "elementwise.fp16.c").write_text(
        '#include "elementwise.h"\nBP_KERNEL(unary) { return no_such_intrinsic(); }\n')
    done = build.build("harness", shutil.which("aarch64-linux-gnu-gcc"), folder,
                       _options(tmp_path / "cache"))
    assert [name for name, _ in done.left_out] == ["elementwise.fp16.c"]
    assert "no_such_intrinsic" in done.left_out[0][1]
    assert features.variants_for(build.index(list(done.sources)),
                                 features.QEMU_MODELS["max"])["unary"] == "base"


@needs_emulation
def test_the_native_library_build_links_every_kernel_as_a_shared_object(tmp_path):
    """What an AArch64 host builds (here with the cross compiler): -fPIC objects linked
    with -shared, every kernel and variant exported under its symbol."""
    from backplane.plugins.arm_neon import build

    folder, cc = _small_sources(tmp_path), shutil.which("aarch64-linux-gnu-gcc")
    (folder / "elementwise.fp16.c").write_bytes(
        (build.source_dir() / "elementwise.fp16.c").read_bytes())
    built = build.build("library", cc, folder, _options(tmp_path / "cache"))
    assert built.path.name == "libbpneon.so"
    assert built.path.read_bytes()[:4] == b"\x7fELF"
    assert int.from_bytes(built.path.read_bytes()[18:20], "little") == 183  # EM_AARCH64
    nm = shutil.which("aarch64-linux-gnu-nm")
    if nm:
        listed = subprocess.run([nm, "-D", "--defined-only", str(built.path)],
                                capture_output=True, text=True, check=True).stdout
        symbols = {line.split()[-1] for line in listed.splitlines() if line.strip()}
        assert {"bp_unary", "bp_binary", "bp_unary__fp16", "bp_binary__fp16"} <= symbols


def test_the_ctypes_call_of_the_native_runtime_passes_buffers_ints_and_floats(tmp_path):
    """The native runtime's calling convention, checked against a stub kernel built for
    this host (the NEON library itself loads only on AArch64)."""
    from backplane.plugins.arm_neon.runtime import _check, c_function, call_c

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler on this host")
    src = tmp_path / "stub.c"
    src.write_text("#include <stdint.h>\n"
                   "int32_t bp_stub(void *const *bufs, const int64_t *iv, const double *fv) {\n"
                   "    const float *x = bufs[0]; float *y = bufs[2];\n"
                   "    if (bufs[1] != 0) return 1;\n"
                   "    for (int64_t i = 0; i < iv[0]; i++) y[i] = x[i] * (float)fv[0] + iv[1];\n"
                   "    return 0;\n}\n")
    lib = tmp_path / "libstub.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", str(src), "-o", str(lib)], check=True)
    import ctypes

    fn = c_function(ctypes.CDLL(str(lib)), "bp_stub")
    x = np.arange(7, dtype=np.float32)
    y = np.zeros(7, np.float32)
    assert call_c(fn, [x, None, y], (7, 3), (0.5,)) == 0
    np.testing.assert_array_equal(y, x * 0.5 + 3)
    status = call_c(fn, [x, x, y], (7, 3), (0.5,))
    with pytest.raises(ExecutionError, match="bp_stub returned 1 \\(invalid arguments\\)"):
        _check("bp_stub", status, "")


# ---------------------------------------------------------------------- the harness

@needs_emulation
def test_a_killed_harness_is_an_execution_error_and_the_next_run_works(neon_cache):
    from backplane.plugins.arm_neon import ArmNeonBackend
    from backplane.plugins.arm_neon.runtime import runtime_for

    backend, device = ArmNeonBackend(), _emulated_device()
    exe = backend.compile(_relu_graph(), device, CompileOptions(cache_dir=str(neon_cache)))
    assert "qemu-aarch64 -cpu max" in exe.path and "unary fp16" in exe.path
    x = np.random.default_rng(SEED).standard_normal((3, 5)).astype(np.float32)
    np.testing.assert_array_equal(exe.run({"x": x})["y"], np.maximum(x, 0))
    rt = runtime_for("emulated", "max")
    os.kill(rt.pid, signal.SIGKILL)
    with pytest.raises(ExecutionError, match="harness .* (died|closed its output|stopped reading)"):
        exe.run({"x": x})
    np.testing.assert_array_equal(exe.run({"x": x})["y"], np.maximum(x, 0))


@needs_emulation
def test_a_stuck_harness_is_stopped_after_the_timeout(neon_cache):
    from backplane.plugins.arm_neon.runtime import EmulatedRuntime

    rt = EmulatedRuntime("max", _options(neon_cache), timeout_s=2.0)
    x = np.ones(1000, np.float32)
    y = np.empty_like(x)
    try:
        os.kill(rt.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        with pytest.raises(ExecutionError, match="did not answer in time"):
            rt.call("unary", [x], [y], (0, 0, x.size), (0.0, 0.0))
        assert time.monotonic() - t0 < 10
        rt.call("unary", [x], [y], (4, 0, x.size), (0.0, 0.0))  # Exp
        np.testing.assert_allclose(y, np.e, rtol=1e-6)
        assert rt.restarts == 1
    finally:
        rt.close()


@needs_emulation
def test_a_graph_path_is_passed_over_on_an_emulated_cpu_and_the_plan_says_why(neon_cache):
    from backplane.plugins.arm_neon import ArmNeonBackend

    options = CompileOptions(cache_dir=str(neon_cache), extra={"arm-neon": {"path": "openvino"}})
    exe = ArmNeonBackend().compile(_relu_graph(), _emulated_device(), options)
    assert exe.path.startswith("NEON kernels under qemu-aarch64")
    assert "openvino path was asked for but runs only on an AArch64 host" in exe.path
    with pytest.raises(CompileError, match="choose kernels, openvino, onnxruntime"):
        ArmNeonBackend().compile(_relu_graph(), _emulated_device(),
                                 CompileOptions(extra={"arm-neon": {"path": "tvm"}}))


def test_the_graph_path_hands_the_partition_to_the_named_backend():
    """The mechanics of the AArch64 graph path, run here with this host's onnxruntime (on
    an ARM host the same call reaches ORT's ARM build); a backend without a device is
    passed over with its reason."""
    import backplane as bp
    from backplane.plugins.arm_neon import _graph_path

    record = next((r for r in bp.plugin_records() if r.name == "onnxruntime"), None)
    if record is None or record.state != "ready":
        pytest.skip(f"onnxruntime: {record.reason if record else 'not installed'}")
    exe, why = _graph_path("onnxruntime", _relu_graph(), CompileOptions())
    assert why == "" and exe.path.startswith("onnxruntime: the partition compiled by onnxruntime")
    x = np.random.default_rng(SEED).standard_normal((3, 5)).astype(np.float32)
    np.testing.assert_array_equal(exe.run({"x": x})["y"], np.maximum(x, 0))


_SESSION = """
import json, sys
import numpy as np
import backplane as bp
sys.path.insert(0, {tests!r})
from models import relu_conv_relu, relu_conv_relu_numpy
x = np.random.default_rng({seed}).standard_normal((1, 2, 6, 6)).astype(np.float32)
s = bp.Session(relu_conv_relu({seed}), devices=["arm-neon"])
y = s.run({{"x": x}})["y"]
want = relu_conv_relu_numpy(x, {seed})
print(json.dumps({{"error": float(np.abs(y - want).max()), "scale": float(np.abs(want).max()),
                  "path": s.plan.partitions[0].path}}))
"""


@needs_emulation
def test_a_session_on_the_emulated_cpu_matches_numpy(neon_cache):
    done = run_python(_SESSION.format(tests=str(ROOT / "tests"), seed=SEED),
                      BACKPLANE_NEON_EMULATION="1", BACKPLANE_CACHE_DIR=str(neon_cache))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["error"] <= 1e-5 * max(1.0, result["scale"]), f"seed {SEED}: {result}"
    assert "variants: conv base, unary" in result["path"]


# ---------------------------------------------------------------------- conformance

@needs_emulation
@pytest.mark.slow
def test_the_mandatory_tier_passes_under_qemu(tmp_path, neon_cache):
    rep = tmp_path / "report"
    result = subprocess.run(
        [sys.executable, "-m", "backplane", "conformance", "run", "--backend", "arm-neon",
         "--tier", "mandatory", "-j", "2", "--report", str(rep)],
        capture_output=True, text=True, timeout=900,
        env={**os.environ, "BACKPLANE_NEON_EMULATION": "1",
             "BACKPLANE_DATA_DIR": str(tmp_path / "data"),
             "BACKPLANE_CACHE_DIR": str(neon_cache)})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    report = json.loads((rep / "report.json").read_text())
    assert "qemu-aarch64" in report["device"]["name"]
    coverage = report["coverage"]
    assert coverage["declared"] == coverage["passed"]
    assert len(coverage["passed"]) >= CORE_OPS_DECLARED, coverage
    assert set(coverage["passed"]) <= set(MANDATORY_OPS)
    statuses = {c["status"] for c in report["cases"]}
    assert statuses <= {"pass", "unsupported", "undeclared-pass", "skipped",
                        "special-values"}, statuses  # deviations on NaN/inf are listed
    outcome: dict[str, set[str]] = {}
    for c in report["cases"]:
        if c["op"] in ("FusedConvRelu", "FusedMatMulBiasGelu") or c["op"].startswith("model:"):
            outcome.setdefault(c["op"], set()).add(c["status"])
    assert {op for op, s in outcome.items() if s == {"pass"}} == set(outcome), outcome
    assert {"FusedConvRelu", "FusedMatMulBiasGelu", "model:resnet",
            "model:transformer-encoder", "model:qdq-mlp"} <= set(outcome)
