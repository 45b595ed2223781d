"""``backplane doctor``: every backend on every device with a tiny model, PASS or FAIL with the
reason, every other plugin with its state, and hints for what is missing.

The command runs in child processes (as a user runs it), on this machine's real backends and
on real installed test plugins that fail in each way: at probe, import, compile and run, with
wrong values, a segfault and a hang. Hints are a pure function, tested on injected facts.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
import time

import pytest

from backplane.cli.doctor import Diagnosis, Row
from backplane.cli.doctor_hints import Hint, derive_hints
from backplane.cli.doctor_trial import FAIL, PASS
from conftest import PROBE_TIMEOUT_S, pip_install, run_cli, run_python

#: Seconds a trial may take in the failure run: the hanging plugin costs this much.
TRIAL_TIMEOUT_S = 10
CPU_BACKENDS = ("reference", "openvino-cpu", "onnxruntime", "opencl")

#: Backends that fail on the doctor's tiny models in the ways tests/plugins/faulty does not
#: cover: wrong values, a segfault at run time, a compile that never returns.
DOCTOR_FAULTS = '''
"""Backends that crash, hang or compute wrong values on a Relu (test fixture)."""

import ctypes
import threading

import numpy as np

from backplane import API_VERSION, Backend, Capabilities, Device, Executable, OpSupport

RELU = Capabilities(ops={"Relu": OpSupport(dtypes=frozenset({"float32"}))})


class _Run(Executable):
    def __init__(self, fn):
        self._fn = fn

    def run(self, inputs):
        return self._fn(inputs)


class _Faulty(Backend):
    api_version = API_VERSION
    capabilities = RELU

    def probe(self):
        return [Device(name=f"{self.name} device")]


class WrongValues(_Faulty):
    name = "doctor-wrong-values"

    def compile(self, graph, device, options):
        return _Run(lambda feeds: {"y": np.maximum(feeds["x"], 0) + np.float32(0.01)})


class Segfaults(_Faulty):
    name = "doctor-segfaults"

    def compile(self, graph, device, options):
        return _Run(lambda feeds: ctypes.string_at(0))


class HangsInCompile(_Faulty):
    name = "doctor-hangs"

    def compile(self, graph, device, options):
        threading.Event().wait()
'''

PYPROJECT = '''
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "backplane-test-doctor-faults"
version = "0.1.0"

[project.entry-points."backplane.backends"]
doctor-wrong-values = "bp_doctor_faults:WrongValues"
doctor-segfaults = "bp_doctor_faults:Segfaults"
doctor-hangs = "bp_doctor_faults:HangsInCompile"

[tool.setuptools]
packages = ["bp_doctor_faults"]
'''


def rows_by_name(data: dict) -> dict[str, dict]:
    return {r["device"] or r["backend"]: r for r in data["rows"]}


#: Probes of real runtimes (OpenVINO's starts a process) may be slow on a loaded machine; the
#: runs on this machine's backends wait for them, so that they agree with each other.
SLOW_PROBES = {"BACKPLANE_PROBE_TIMEOUT_S": "30"}


@pytest.fixture(scope="module")
def plugin_states() -> dict[str, dict]:
    done = run_cli("plugins", "--json", **SLOW_PROBES)
    assert done.returncode == 0, done.stderr
    return {r["name"]: r for r in json.loads(done.stdout)}


@pytest.fixture(scope="module")
def doctor_text():
    return run_cli("doctor", **SLOW_PROBES)


@pytest.fixture(scope="module")
def doctor_json():
    done = run_cli("doctor", "--json", **SLOW_PROBES)
    return done, json.loads(done.stdout)


@pytest.fixture(scope="module")
def faults_site(tmp_path_factory, broken_site):
    """tests/plugins' broken and faulty plugins, and the doctor's crashing, hanging and
    wrong-valued ones, installed as real distributions."""
    src = tmp_path_factory.mktemp("doctor-src") / "doctor_faults"
    (src / "bp_doctor_faults").mkdir(parents=True)
    (src / "bp_doctor_faults" / "__init__.py").write_text(textwrap.dedent(DOCTOR_FAULTS))
    (src / "pyproject.toml").write_text(PYPROJECT)
    site = pip_install([src], tmp_path_factory.mktemp("doctor-site"),
                       tmp_path_factory.mktemp("doctor-work"))
    return f"{site}{os.pathsep}{broken_site}"


@pytest.fixture(scope="module")
def faulty_doctor(faults_site):
    t0 = time.monotonic()
    done = run_cli("doctor", "--json", "--timeout", str(TRIAL_TIMEOUT_S), "-j", "2",
                   site=faults_site, timeout=240)
    return done, json.loads(done.stdout), time.monotonic() - t0


# -- this machine ------------------------------------------------------------------------------

def test_every_ready_cpu_backend_passes_the_tiny_model(doctor_json, plugin_states):
    _, data = doctor_json
    rows = rows_by_name(data)
    ready = [b for b in CPU_BACKENDS if plugin_states.get(b, {}).get("state") == "ready"]
    assert "reference" in ready
    for backend in ready:
        for device in plugin_states[backend]["devices"]:
            row = rows[device]
            assert row["verdict"] == PASS, row
            assert row["model"] == "matmul-relu" and row["declared"] is True
            assert row["max_abs_error"] <= row["atol"] + row["rtol"]
            assert row["compile_ms"] > 0 and row["run_ms"] > 0 and row["seconds"] > 0


def test_the_exit_status_is_0_when_every_listed_device_passes(doctor_json, doctor_text):
    done, data = doctor_json
    assert data["ok"] is all(r["verdict"] == PASS for r in data["rows"]
                             if r["verdict"] in (PASS, FAIL))
    assert done.returncode == doctor_text.returncode == data["exit_code"] == (0 if data["ok"]
                                                                              else 1)


@pytest.mark.parametrize("backend, hardware", [("cuda-tensorrt", "NVIDIA"), ("rocm", "AMD")])
def test_gpu_backends_without_their_gpu_show_no_device_with_the_reason(
        doctor_json, plugin_states, backend, hardware):
    if plugin_states[backend]["state"] == "ready":
        pytest.skip(f"this machine has a device for {backend}")
    row = rows_by_name(doctor_json[1])[backend]
    assert row["verdict"] == {"no-device": "NO DEVICE", "failed": "FAILED"}[
        plugin_states[backend]["state"]]
    assert row["reason"] == plugin_states[backend]["reason"] and hardware in row["reason"]
    assert row["device"] is None and row["compile_ms"] is None


@pytest.fixture(scope="module")
def api_report(example_site) -> Diagnosis:
    from backplane.cli.doctor import diagnose

    return diagnose(timeout_s=60, jobs=2)


def test_the_text_form_shows_what_the_json_form_holds(api_report, capsys):
    from backplane.cli.doctor import print_report

    print_report(api_report)
    text = capsys.readouterr().out
    data = json.loads(json.dumps(api_report.to_dict()))
    lines = text.splitlines()
    for r in data["rows"]:  # each row's name and verdict on one table line
        name = r["device"] or r["backend"]
        assert any(f" {name} " in line and f" {r['verdict']} " in line for line in lines), name
        if r["reason"]:
            assert f"{r['backend']}{' on ' + r['device'] if r['device'] else ''}: " \
                   f"{r['verdict']}: {r['reason']}" in text
    for hint in data["hints"]:
        assert f"- {hint['text']}" in text
    trials = [r for r in data["rows"] if r["verdict"] in (PASS, FAIL)]
    passed = sum(r["verdict"] == PASS for r in trials)
    assert f"{passed} of {len(trials)} devices passed" in text
    assert data["rows"] == [r.to_dict() for r in api_report.rows]


def test_the_cli_prints_the_table_and_the_summary(doctor_text, doctor_json):
    _, data = doctor_json
    for r in data["rows"]:
        if r["verdict"] == PASS:  # (a row's reason may change between two runs; names do not)
            assert f" {r['device']} " in doctor_text.stdout
    assert "devices passed in" in doctor_text.stdout
    assert ("hints:" in doctor_text.stdout) is bool(data["hints"])


def test_the_data_api_reaches_plugins_on_the_applications_sys_path(api_report):
    # example-numpy is importable only through a folder this test process put on sys.path:
    # the trial processes must see it too.
    row = rows_by_name(api_report.to_dict())["example-numpy:0"]
    assert row["verdict"] == PASS, row


def test_import_backplane_does_not_import_the_doctor():
    done = run_python("import sys, backplane; print('backplane.cli.doctor' in sys.modules)")
    assert done.stdout.strip() == "False", done.stderr


# -- failing plugins ---------------------------------------------------------------------------

@pytest.mark.parametrize("name, verdict, stage, words", [
    ("failing-compile:0", FAIL, "compile", "vendor compiler crashed: internal error 0xdead"),
    ("failing-run:0", FAIL, "run", "MemoryError: device out of memory while running"),
    ("doctor-wrong-values:0", FAIL, "values", "wrong values: output 'y': max abs error"),
    ("doctor-segfaults:0", FAIL, "crash",
     "crash during run of 'relu': the trial process was killed by SIGSEGV (exit code -11)"),
    ("doctor-hangs:0", FAIL, "timeout",
     f"timeout: no answer within {TRIAL_TIMEOUT_S} s during compile of 'relu'"),
    ("raising-probe", "FAILED", None, "driver exploded: CUDA_ERROR_UNKNOWN (999)"),
    ("future-api", "FAILED", None, "written for backend API 99"),
    ("hanging-probe", "FAILED", None, f"probe did not return within {PROBE_TIMEOUT_S} s"),
    ("broken-import", "FAILED", None, "No module named 'vendor_runtime_that_is_not_installed'"),
    ("no-device", "NO DEVICE", None, "no accelerator found: /dev/accel0 does not exist"),
    ("injected-faults:0", PASS, None, ""),
    ("example-numpy:0", PASS, None, ""),
])
def test_each_failing_plugin_gets_its_verdict_and_reason(faulty_doctor, name, verdict, stage,
                                                         words):
    _, data, _ = faulty_doctor
    row = rows_by_name(data)[name]
    assert row["verdict"] == verdict, row
    assert row["stage"] == stage
    assert words in row["reason"]


def test_a_backend_gets_the_first_model_it_declares_and_a_crash_still_names_it(
        faulty_doctor):
    rows = rows_by_name(faulty_doctor[1])
    for name in ("failing-compile", "doctor-segfaults", "doctor-hangs"):  # declare Relu only
        assert rows[f"{name}:0"]["model"] == "relu" and rows[f"{name}:0"]["declared"] is True
    assert rows["injected-faults:0"]["model"] == "matmul-relu"
    wrong = rows["doctor-wrong-values:0"]
    assert wrong["max_abs_error"] == pytest.approx(0.01, rel=1e-3)


def test_a_crash_and_a_hang_cost_the_doctor_one_trial_timeout_and_exit_status_1(faulty_doctor):
    done, data, seconds = faulty_doctor
    assert done.returncode == 1 and data["exit_code"] == 1 and data["ok"] is False
    assert rows_by_name(data)["reference:0"]["verdict"] == PASS  # the others still ran
    assert seconds < 4 * TRIAL_TIMEOUT_S + 30, f"doctor took {seconds:.0f} s"


def test_failures_come_with_hints(faulty_doctor):
    hints = [h["text"] for h in faulty_doctor[1]["hints"]]
    assert any("failing-compile fails on failing-compile:0 (compile)" in h
               and "backplane conformance run --backend failing-compile" in h for h in hints)
    assert any("module 'vendor_runtime_that_is_not_installed' is missing" in h for h in hints)
    assert any("hanging-probe" in h and "probe hangs" in h for h in hints)


# -- hints, a pure function --------------------------------------------------------------------

def row(backend: str, verdict: str, reason: str = "", device: str | None = None, **kw) -> dict:
    return Row(backend, device, verdict, reason, **kw).to_dict()


NO_PACKAGES = {"packages": {p: False for p in ("torch", "cupy", "tensorrt", "openvino",
                                               "onnxruntime", "pyopencl")}}


def texts(hints: list[Hint]) -> str:
    return "\n".join(h.text for h in hints)


def test_an_nvidia_gpu_without_a_cuda_runtime_says_what_to_install():
    rows = [row("cuda-tensorrt", "NO DEVICE", "1 NVIDIA GPU(s) (NVIDIA L4) but no runtime "
                "package to run them")]
    hints = derive_hints(rows, [], {**NO_PACKAGES, "nvidia_gpu": "/dev/nvidiactl"})
    assert "an NVIDIA GPU is present (/dev/nvidiactl) but no CUDA runtime package: pip " \
           "install 'backplane-hal[cuda]'" in texts(hints)


def test_an_nvidia_gpu_with_torch_installed_gets_the_backends_reason():
    facts = {"packages": {"torch": True}, "nvidia_gpu": "/dev/nvidiactl"}
    hints = derive_hints([row("cuda-tensorrt", "NO DEVICE", "torch is a CPU build")], [], facts)
    assert "cuda-tensorrt lists no device: torch is a CPU build" in texts(hints)


def test_a_gpu_backend_without_its_gpu_gets_no_hint():
    rows = [row("cuda-tensorrt", "NO DEVICE", "no NVIDIA GPU"), row("rocm", "NO DEVICE", "no")]
    assert derive_hints(rows, ["no NVIDIA GPU: no /dev/nvidiactl and no nvidia-smi"],
                        {**NO_PACKAGES, "nvidia_gpu": None, "amd_gpu": None}) == []


def test_an_amd_gpu_without_rocm_runtime_points_at_the_rocm_page():
    hints = derive_hints([row("rocm", "NO DEVICE", "no ROCm runtime")], [],
                         {**NO_PACKAGES, "amd_gpu": "/dev/kfd"})
    assert "an AMD GPU is present (/dev/kfd) but rocm lists no device: no ROCm runtime " \
           "(docs/backends/rocm.md)" in texts(hints)


def test_opencl_without_a_platform_says_what_to_install():
    hints = derive_hints([], ["OpenCL has no platform: clGetPlatformIDs failed: "
                              "PLATFORM_NOT_FOUND_KHR"], NO_PACKAGES)
    assert "OpenCL has no platform: clGetPlatformIDs failed: PLATFORM_NOT_FOUND_KHR: pip " \
           "install 'backplane-hal[opencl]'" in texts(hints)
    hints = derive_hints([], ["no OpenCL probe: pyopencl is not installed"], NO_PACKAGES)
    assert "pyopencl is not installed: pip install 'backplane-hal[opencl]'" in texts(hints)


def test_an_npu_node_that_openvino_does_not_list_asks_for_the_npu_driver():
    facts = {**NO_PACKAGES, "accel_nodes": ["/dev/accel/accel0"]}
    hints = derive_hints([row("npu", "NO DEVICE", "no NPU is ready")],
                         ["an Intel NPU node exists but OpenVINO does not list it"], facts)
    text = texts(hints)
    assert "an NPU device node exists (/dev/accel/accel0) but OpenVINO does not list it: " \
           "install the NPU driver" in text
    assert "pip install 'backplane-hal[openvino]'" in text  # openvino itself is missing
    assert len([h for h in hints if h.about == "npu"]) == 1


def test_torch_cpu_off_is_an_information_unless_the_variable_is_set():
    rows = [row("torch-cpu", "NO DEVICE", "lists a device only when BACKPLANE_TORCH_CPU=1")]
    [hint] = derive_hints(rows, [], NO_PACKAGES)
    assert hint.level == "info" and "BACKPLANE_TORCH_CPU=1" in hint.text
    assert derive_hints(rows, [], {**NO_PACKAGES, "env": {"BACKPLANE_TORCH_CPU": "0"}}) == []


def test_a_cpu_backend_without_a_device_names_its_extra():
    [hint] = derive_hints([row("openvino-cpu", "NO DEVICE", "openvino is not installed")], [],
                          NO_PACKAGES)
    assert hint.text == ("openvino-cpu has no device: openvino is not installed "
                         "(pip install 'backplane-hal[openvino]')")


def test_an_arm_cpu_without_arm_neon_says_why_and_an_x86_one_does_not():
    rows = [row("arm-neon", "NO DEVICE", "the NEON kernels did not build: no C compiler")]
    assert "this is an ARM CPU but arm-neon lists no device: the NEON kernels did not build" \
        in texts(derive_hints(rows, [], {**NO_PACKAGES, "arch": "aarch64"}))
    assert derive_hints(rows, [], {**NO_PACKAGES, "arch": "x86_64"}) == []


def test_a_failed_trial_points_at_the_conformance_suite():
    rows = [row("acme", FAIL, "run error: boom", device="acme:0", stage="run")]
    [hint] = derive_hints(rows, [], NO_PACKAGES)
    assert "acme fails on acme:0 (run)" in hint.text
    assert "backplane conformance run --backend acme --device acme:0" in hint.text
    assert "BACKPLANE_DISABLE_PLUGINS=acme" in hint.text


def test_disabled_plugins_and_deprecated_ones_are_mentioned():
    rows = [row("opencl", "DISABLED", "listed in BACKPLANE_DISABLE_PLUGINS"),
            row("old", PASS, device="old:0")]
    hints = derive_hints(rows, [], NO_PACKAGES, {"old": "written for backend API 1, which is "
                                                        "deprecated"})
    assert [h.level for h in hints] == ["info", "action"]
    assert "opencl" in hints[0].text and "deprecated" in hints[1].text


def test_the_verdict_counts_only_devices_tried():
    report = Diagnosis([Row("a", "a:0", PASS), Row("b", None, "NO DEVICE", "none here")])
    assert report.ok and report.exit_code == 0
    report.rows.append(Row("c", "c:0", FAIL, "run error"))
    assert not report.ok and report.exit_code == 1
    assert Diagnosis([Row("b", None, "FAILED", "import")]).exit_code == 1  # nothing was tried


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
