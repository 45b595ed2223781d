"""Shared fixtures: real plugin packages, pip-installed into temporary folders.

``example_site`` holds the third-party example plugin; the whole test process imports from
it (so in-process sessions see ``example-numpy``). ``broken_site`` adds the deliberately
broken plugins; only subprocesses see it, through PYTHONPATH, so discovery meets them
through real distributions and entry points. ``isolation_site`` holds the plugins that take
their process down or change it at import or in probe (tests/test_isolation.py), likewise.
"""

from __future__ import annotations

import importlib
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "backplane-example-plugin"
BROKEN = [ROOT / "tests" / "plugins" / name for name in ("broken_import", "hanging_probe", "faulty")]
#: Probe timeout of child processes, which the hanging plugin waits out: long enough for
#: the onnxruntime and opencl probes' own child processes (0.9 s on an idle 2-core VM,
#: more under load), short enough that the tests that meet the hanging plugin stay quick.
PROBE_TIMEOUT_S = "2"


def pip_install(packages: list[Path], target: Path, work: Path) -> Path:
    """pip-install source folders into ``target`` (built from copies, leaving no build files)."""
    copies = []
    for package in packages:
        copy = work / package.name
        shutil.copytree(package, copy, ignore=shutil.ignore_patterns("build", "*.egg-info"))
        copies.append(str(copy))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                    "--no-build-isolation", "--no-index", "--target", str(target), *copies],
                   check=True, capture_output=True, text=True)
    return target


@pytest.fixture(scope="session")
def example_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder where the example plugin is installed."""
    work = tmp_path_factory.mktemp("example-src")
    return pip_install([EXAMPLE], tmp_path_factory.mktemp("example-site"), work)


@pytest.fixture(scope="session")
def broken_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the example plugin and every deliberately broken plugin installed."""
    work = tmp_path_factory.mktemp("broken-src")
    return pip_install([EXAMPLE, *BROKEN], tmp_path_factory.mktemp("broken-site"), work)


@pytest.fixture(scope="session")
def isolation_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the example plugin and the plugins that crash, exit, hang, exhaust
    memory or change process state at import or in probe (tests/plugins/isolation)."""
    work = tmp_path_factory.mktemp("isolation-src")
    return pip_install([EXAMPLE, ROOT / "tests" / "plugins" / "isolation"],
                       tmp_path_factory.mktemp("isolation-site"), work)


@pytest.fixture(scope="session")
def duplicate_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a package that declares the name ``example-numpy`` a second time."""
    work = tmp_path_factory.mktemp("duplicate-src")
    return pip_install([ROOT / "tests" / "plugins" / "duplicate_name"],
                       tmp_path_factory.mktemp("duplicate-site"), work)


@pytest.fixture(scope="session", autouse=True)
def private_data_dir(tmp_path_factory: pytest.TempPathFactory):
    """One per-user data folder for the whole run, in this process and its children, so
    that stored calibration, conformance results and the cost model's learned corrections
    neither leak in from the user's folder nor out of one test into the user's; and
    ``BACKPLANE_TUNE=off``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BACKPLANE_DATA_DIR", str(tmp_path_factory.mktemp("backplane-data")))
        # Measured selection off unless a test asks for it: most tests assert the plan the
        # cost model makes, which a background measurement would replace at any moment
        # (tests/test_selection.py runs it, in this process and in children).
        mp.setenv("BACKPLANE_TUNE", "off")
        yield


@pytest.fixture(scope="session", autouse=True)
def example_plugin_on_path(example_site: Path, private_data_dir):
    """Make the installed example plugin visible to this process, then rediscover."""
    import backplane

    sys.path.insert(0, str(example_site))
    importlib.invalidate_caches()
    backplane.registry(refresh=True)
    yield
    sys.path.remove(str(example_site))


#: The real CPU backends shipped with backplane. Tests that describe planning over the
#: example and test plugins leave them out (fixture ``without_cpu_backends``), so that the
#: placements are the ones the test describes whatever this machine has installed.
CPU_BACKENDS = "openvino-cpu,onnxruntime,opencl"
#: BACKPLANE_* variables children inherit (set only by ``without_cpu_backends``).
_INHERITED: tuple[str, ...] = ()


@pytest.fixture(scope="module")
def without_cpu_backends():
    """Discovery without the real CPU backends, in this process and in child processes."""
    import backplane

    global _INHERITED
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BACKPLANE_DISABLE_PLUGINS", CPU_BACKENDS)
        _INHERITED = ("BACKPLANE_DISABLE_PLUGINS",)
        backplane.registry(refresh=True)
        try:
            yield
        finally:
            _INHERITED = ()
    backplane.registry(refresh=True)


def free_port() -> int:
    """A TCP port free on the loopback interface now (for a server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(site: Path | str | None = None, **extra: str) -> dict[str, str]:
    """The environment for a child process: no inherited BACKPLANE_* settings (but those
    a fixture set on purpose).

    ``site`` becomes PYTHONPATH (several folders joined with ``os.pathsep``, first wins).
    """
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("BACKPLANE_") or k in _INHERITED
           or k in ("BACKPLANE_DATA_DIR", "BACKPLANE_TUNE")}
    env["BACKPLANE_PROBE_TIMEOUT_S"] = PROBE_TIMEOUT_S
    if site is not None:
        env["PYTHONPATH"] = str(site)
    env.update(extra)
    return env


def run_cli(*args: str, site: Path | str | None = None, timeout: float = 120, **env: str
            ) -> subprocess.CompletedProcess:
    """Run ``python -m backplane ARGS`` in a child process."""
    return subprocess.run([sys.executable, "-m", "backplane", *args], capture_output=True,
                          text=True, env=clean_env(site, **env), timeout=timeout)


def run_python(code: str, site: Path | str | None = None, timeout: float = 120, **env: str
               ) -> subprocess.CompletedProcess:
    """Run a Python snippet in a child process."""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=clean_env(site, **env), timeout=timeout)
