"""Packaging: the wheel carries code and data, runs on its own, and import stays light."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT, clean_env, run_python

#: Data files added to a copy of the tree, one per package-data rule, to prove each rule ships.
DATA_PROBES = {
    "hwdb/test-vendor/test-sku.toml": "id = 'test-vendor/test-sku'\n",
    "kernels/opencl/probe.cl": "__kernel void probe(__global float *x) { x[0] = 1.0f; }\n",
    "kernels/cuda/probe.cu": "extern \"C\" __global__ void probe(float *x) { x[0] = 1.0f; }\n",
    "kernels/neon/probe.c": "void probe(float *x) { x[0] = 1.0f; }\n",
}
HEAVY_MODULES = ("numpy", "onnx", "onnxruntime", "openvino", "torch", "pyopencl", "tensorrt",
                 "cupy", "google.protobuf")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src") / "backplane"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache"))
    for rel, text in DATA_PROBES.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text(text)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir",
                    str(out), str(src)], check=True, capture_output=True, text=True)
    (found,) = out.glob("backplane_hal-*.whl")
    return found


@pytest.mark.slow
def test_wheel_holds_every_package_its_data_and_the_entry_points(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ("backplane/__init__.py", "backplane/engine/session.py",
                     "backplane/plugins/reference/__init__.py", "backplane/hwdb/__init__.py",
                     "backplane/kernels/__init__.py", "backplane/conformance/__init__.py",
                     "backplane/conformance/tolerances.toml", "backplane/hardware/schema.py",
                     "backplane/hwdb/schema.json", "backplane/hwdb/nvidia/h100-sxm5-80gb.toml",
                     "backplane/hwdb/generic/x86-64-avx2.toml"):
        assert expected in names
    for rel in DATA_PROBES:
        assert "backplane/" + rel in names, f"package data rule misses {rel}"
    # every package of the source tree, so that one left out of pyproject's list fails here
    from tests import architecture

    for name, module in architecture.modules().items():
        if module.is_package:
            path = name.replace(".", "/") + "/__init__.py"
            assert path in names, f"{name} is not in the wheel: add it to pyproject's packages"
    assert not any(n.startswith(("tests/", "examples/", "core/")) for n in names)
    dist_info = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    entry_points = zipfile.ZipFile(wheel).read(dist_info).decode()
    assert "[backplane.backends]" in entry_points
    assert "reference = backplane.plugins.reference:ReferenceBackend" in entry_points
    assert "backplane = backplane.cli:main" in entry_points


@pytest.mark.slow
def test_installed_wheel_runs_on_its_own(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    "--target", str(target), str(wheel)], check=True, capture_output=True)
    code = ("import backplane, json; from backplane.kernels import source; "
            "print(json.dumps([backplane.__file__, source('opencl/probe.cl'), "
            "[d.id for d in backplane.devices()]]))")
    result = run_python(code, site=target)
    assert result.returncode == 0, result.stderr
    file, kernel, devices = json.loads(result.stdout)
    assert file.startswith(str(target))
    assert kernel == DATA_PROBES["kernels/opencl/probe.cl"]
    # The wheel's own backends: the reference last, and the CPU backends whose runtimes
    # this environment has (the wheel was installed without dependencies).
    assert devices[-1] == "reference:0"
    assert {d.split(":")[0] for d in devices} <= {"reference", "openvino-cpu", "onnxruntime",
                                                  "opencl"}
    demo = subprocess.run([sys.executable, "-m", "backplane", "demo", "--json", "--repeats", "1"],
                          capture_output=True, text=True, env=clean_env(target), timeout=300)
    assert demo.returncode == 0, demo.stderr
    assert json.loads(demo.stdout)["ok"] is True


def test_import_and_discovery_import_no_heavy_runtime():
    code = (f"import sys, json, backplane; backplane.registry(); backplane.devices(); "
            f"print(json.dumps(sorted(m for m in sys.modules if m in {HEAVY_MODULES!r})))")
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_ci_runs_exactly_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    section = readme.split("## On a fresh machine", 1)[1].split("\n## ", 1)[0]
    commands = [block.split("\n", 1)[1].strip() for block in section.split("```sh")[1:]]
    commands = [c.split("```", 1)[0].strip() for c in commands]
    assert len(commands) == 2, "the README keeps exactly two set-up commands"
    demo, tests = commands
    assert "backplane demo" in demo
    assert tests in ci.splitlines(), ".ci/run must run the README's test command verbatim"
