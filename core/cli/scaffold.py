"""``backplane new-plugin``: a new backend plugin package, ready to install and check.

:func:`new_plugin` writes ``backplane-NAME/`` holding everything a third-party backend ships:

- ``pyproject.toml``: the distribution ``backplane-NAME``, its entry points (the backend in
  ``backplane.backends``, its hooks module in ``backplane.hooks``), its package data, and a
  pytest configuration that runs the conformance suite on the backend;
- ``backplane_NAME/backend.py``: a kernel backend (name, the backend API it was generated
  for as a literal, its version and priority, a ``KernelTable`` whose registrations are its
  capabilities, a probe that lists the host CPU);
- ``backplane_NAME/hooks.py``: the ``backplane_hwdb_entries`` hook contributing the entry in
  ``backplane_NAME/hwdb/``;
- ``backplane_NAME/known_failures.toml``: empty, its format explained;
- ``tests/``: the plugin's own tests, beside which pytest runs the conformance suite;
- ``README.md``: how to install it, run the api and mandatory tiers, and publish it.

Freshly generated, the package installs and passes the API tier
(``backplane conformance run --backend NAME --tier api``) and the mandatory tier. The kernels
is a numpy function standing in for a vendor runtime: Relu in float32, one kernel, the
smallest backend the API tier certifies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from string import Template
from typing import Any

from backplane.sdk.errors import BackplaneError
import backplane

#: A backend name: lowercase letters, digits and single hyphens, starting with a letter.
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
MAX_NAME_LENGTH = 40


class ScaffoldError(BackplaneError):
    """A plugin package cannot be generated: a bad name, or its folder already exists."""


@dataclass(frozen=True)
class Scaffold:
    """A generated plugin package: where it is, what it holds, and what to run next."""

    name: str
    distribution: str
    package: str
    backend_class: str
    api_version: int
    root: Path
    files: list[tuple[str, str]] = field(default_factory=list)
    """``(path relative to root, what it holds)`` for every file written."""

    def next_commands(self) -> list[str]:
        """The commands that install the package and check it, from the current folder."""
        where = _shown(self.root)
        return [f"pip install -e {where}",
                "backplane plugins",
                f"backplane conformance run --backend {self.name} --tier api",
                f"cd {where} && pytest"]

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as ``backplane new-plugin --json`` prints it."""
        return {"name": self.name, "distribution": self.distribution, "package": self.package,
                "backend_class": self.backend_class, "api_version": self.api_version,
                "root": str(self.root),
                "files": [{"path": p, "holds": what} for p, what in self.files],
                "next": self.next_commands()}

    def summary(self) -> str:
        """What was created and the next commands, as the CLI prints them."""
        width = max(len(p) for p, _ in self.files) + 2
        lines = [f"created {_shown(self.root)}/ for backend '{self.name}' "
                 f"(backend API {self.api_version}):"]
        lines += [f"  {p:<{width}}{what}" for p, what in self.files]
        lines += ["next:"] + [f"  {c}" for c in self.next_commands()]
        return "\n".join(lines)


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it is below it, else absolute."""
    try:
        return str(path.relative_to(Path.cwd())) or "."
    except ValueError:
        return str(path)


def check_name(name: str) -> None:
    """Raise ScaffoldError unless ``name`` is a valid, unused backend name."""
    if not NAME_PATTERN.match(name) or len(name) > MAX_NAME_LENGTH:
        suggestion = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
        hint = f" (for example '{suggestion}')" if (
            NAME_PATTERN.match(suggestion) and len(suggestion) <= MAX_NAME_LENGTH) else ""
        raise ScaffoldError(
            f"'{name}' is not a valid backend name: use lowercase letters, digits and single "
            f"hyphens, starting with a letter, at most {MAX_NAME_LENGTH} characters{hint}")
    taken = _installed_backends().get(name)
    # A package generated before (and installed) may be generated again, over itself.
    if taken is not None and re.sub(r"[-_.]+", "-", taken).lower() != f"backplane-{name}":
        raise ScaffoldError(
            f"a backend named '{name}' is already installed (from {taken}); two plugins "
            f"cannot share a name, since backplane loads only the first: choose another name")


def _installed_backends() -> dict[str, str]:
    """Installed backend names and the distribution providing each (no plugin imported)."""
    from importlib.metadata import distributions

    found: dict[str, str] = {}
    for dist in distributions():
        for ep in dist.entry_points:
            if ep.group == "backplane.backends":
                found.setdefault(ep.name, dist.metadata["Name"] or "?")
    return found


def _python_names(name: str) -> tuple[str, str]:
    """The import name of the package and the backend class: ``backplane_my_chip``,
    ``MyChipBackend`` for ``my-chip``."""
    return ("backplane_" + name.replace("-", "_"),
            "".join(part.capitalize() for part in name.split("-")) + "Backend")


def render(name: str) -> dict[str, tuple[str, str]]:
    """The files of the package for backend ``name``: ``{relative path: (text, what it
    holds)}``. The backend API version is written as a literal: the one this backplane
    implements now, so that the plugin keeps saying what it was written for."""
    package, cls = _python_names(name)
    values = {"name": name, "package": package, "cls": cls,
              "api_version": str(backplane.API_VERSION),
              "backplane_version": backplane.__version__}

    def fill(template: str) -> str:
        return Template(template).substitute(values)

    return {
        "pyproject.toml": (fill(PYPROJECT), "the distribution, entry points, pytest settings"),
        "README.md": (fill(README), "how to install, check and publish it"),
        f"{package}/__init__.py": (fill(INIT), "the package (imports nothing)"),
        f"{package}/backend.py": (fill(BACKEND), "the backend: what it is, probe, kernels"),
        f"{package}/hooks.py": (fill(HOOKS), "the hook contributing the hwdb entry"),
        f"{package}/hwdb/{name}/host-cpu.toml": (fill(HWDB_ENTRY), "the hwdb entry"),
        f"{package}/known_failures.toml": (fill(KNOWN_FAILURES), "known failures (none yet)"),
        "tests/test_backend.py": (fill(TESTS), "its own tests, run beside the conformance suite"),
    }


def new_plugin(name: str, directory: str | Path = ".", *, force: bool = False) -> Scaffold:
    """Write the package ``backplane-NAME/`` into ``directory`` (created if missing).

    An existing ``backplane-NAME`` is refused unless ``force``, which writes the files over
    it (files the scaffold does not write are left as they are).
    """
    check_name(name)
    root = (Path(directory) / f"backplane-{name}").resolve()
    if root.exists() and not root.is_dir():
        raise ScaffoldError(f"{root} exists and is not a folder; remove it or choose "
                            f"another --dir")
    if root.exists() and not force:
        raise ScaffoldError(f"{root} already exists; choose another --dir, remove it, or "
                            f"pass --force to write the generated files over it")
    files = render(name)
    try:
        for rel, (text, _) in files.items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ScaffoldError(f"cannot write the package at {root}: {exc.strerror or exc}"
                            ) from None

    package, cls = _python_names(name)
    return Scaffold(name=name, distribution=f"backplane-{name}", package=package,
                    backend_class=cls, api_version=backplane.API_VERSION, root=root,
                    files=[(rel, what) for rel, (_, what) in files.items()])


# -- templates ($name, $package, $cls, $api_version, $backplane_version) ------------------------

PYPROJECT = '''\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "backplane-$name"
version = "0.1.0"
description = "A backplane backend plugin: $name"
readme = "README.md"
requires-python = ">=3.10"
# Generated with backplane-hal $backplane_version, for backend API $api_version.
dependencies = ["backplane-hal>=$backplane_version", "numpy>=1.24"]

# How backplane finds the backend: an entry point in the group backplane.backends, named
# after the backend (the two names must be equal), naming the Backend subclass.
[project.entry-points."backplane.backends"]
$name = "$package.backend:$cls"

# How backplane finds the plugin's hooks (its hwdb entries): an entry point in the group
# backplane.hooks naming the module that implements them. backplane loads it whenever it
# calls hooks, also in processes that never load the backend (backplane hwdb list).
[project.entry-points."backplane.hooks"]
$name = "$package.hooks"

# The data files the package ships are listed here, and only these (the hwdb/ folders are
# data, not Python packages).
[tool.setuptools]
packages = ["$package"]
include-package-data = false

[tool.setuptools.package-data]
$package = ["known_failures.toml", "hwdb/*/*.toml"]

# `pytest` runs the plugin's own tests and backplane's conformance suite on this backend
# (the `backplane` pytest plugin comes with backplane-hal): the API tier by default,
# `pytest --backplane-tier mandatory` for the core op set too.
[tool.pytest.ini_options]
testpaths = ["tests"]
addopts = "-p no:cacheprovider --backplane-backend $name --backplane-tier api"
'''

README = '''\
# backplane-$name

A backend plugin for backplane, the hardware abstraction layer for ML inference:
the backend `$name`, generated by `backplane new-plugin $name` for backend API $api_version.
It runs one kernel, Relu in float32, with numpy on the host CPU; add kernels (or a
`compile` for a graph compiler) with your runtime's (backplane's docs/writing-a-backend.md walks through every part).

| file | holds |
| --- | --- |
| `$package/backend.py` | the backend: name, API version, version, priority, kernels (its capabilities), probe |
| `$package/hooks.py` | the `backplane_hwdb_entries` hook, contributing the hwdb entries below |
| `$package/hwdb/$name/host-cpu.toml` | the hwdb entry of the hardware it runs on |
| `$package/known_failures.toml` | conformance cases known to fail, with the reason (none yet) |
| `tests/` | the plugin's own tests; pytest runs the conformance suite beside them |
| `pyproject.toml` | the entry points that make backplane find the backend and its hooks |

## Install

    pip install -e .
    backplane plugins          # $name: ready, with its device $name:0
    backplane devices          # $name:0 among this machine's devices

## Check it against backplane's conformance suite

    backplane conformance run --backend $name --tier api              # the plugin contract
    backplane conformance run --backend $name --tier mandatory -j 4   # + the core op set
    pytest                                  # own tests + the API tier
    pytest --backplane-tier mandatory       # own tests + the mandatory tier

The mandatory tier checks every declared op against the oracle; cases of ops the backend
does not declare are reported as unsupported and do not fail it. A case that fails for a
reason you accept for now goes into `$package/known_failures.toml`, with the reason.

## Publish

Set the version in `pyproject.toml` and in `$package/backend.py` (known failures are scoped to
it), then build and upload:

    python -m build
    twine upload dist/*

Users install it with `pip install backplane-$name`; backplane finds it through its entry point.
'''

INIT = '''\
"""backplane-$name: a backplane backend plugin.

backend.py holds the backend (entry point group backplane.backends), hooks.py the hooks
(group backplane.hooks). This module imports neither, so each loads on its own.
"""
'''

BACKEND = '''\
"""$name: a backplane backend, generated by `backplane new-plugin` for backend API $api_version.

In the order every backplane plugin follows: what it is (name, versions, capabilities as
data), how it finds devices (probe), how it compiles (here backplane's default compile,
which runs the graph node by node with the kernels), and its kernels. numpy stands in for
a vendor runtime: replace the kernels with calls into yours.
"""

from __future__ import annotations

import importlib.util
import platform
from pathlib import Path

from backplane import Backend, Device, DeviceUnavailable, KernelTable

HERE = Path(__file__).resolve().parent
FLOAT32 = ("float32",)

# The kernel table is the backend's capabilities: each registration says which op, element
# types and limits the kernel admits, and backplane's planner and conformance suite read
# that data. thread_safe: the kernels keep no state, so runs may overlap.
kernels = KernelTable(precisions=frozenset({"fp32"}), thread_safe=True)


class $cls(Backend):
    """$name: float32 Relu on the host CPU."""

    name = "$name"  # equal to the entry-point name in pyproject.toml
    api_version = $api_version  # the backend API this plugin is written for
    version = "0.1.0"  # the plugin's own version; keep it equal to pyproject.toml's
    priority = 10  # place in the fixed device order, higher first
    kernels = kernels  # a kernel backend: the default compile runs these
    known_failures = str(HERE / "known_failures.toml")

    def probe(self) -> list[Device]:
        """The host CPU, if the runtime is installed. Cheap, and without side effects."""
        if importlib.util.find_spec("numpy") is None:
            raise DeviceUnavailable("numpy, the runtime of $name, is not installed "
                                    "(pip install numpy)")
        return [Device(name=f"{_cpu_name()} ($name)", kind="cpu")]


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "host CPU"


# -- kernels -----------------------------------------------------------------------------------
# One kernel per op, registered with what it admits. A kernel imports its runtime when it
# runs, so that listing plugins stays cheap. Add more with @kernels.register(op, dtypes=...,
# max_rank=..., attributes=...); the conformance suite checks each op you declare.

@kernels.register("Relu", dtypes=FLOAT32)
def relu(x):
    import numpy as np

    return np.maximum(x, x.dtype.type(0))
'''

HOOKS = '''\
"""$name's hooks: what the plugin adds to backplane besides its backend.

Named by the entry point in the group backplane.hooks, so backplane calls these whenever it
needs them (loading the hwdb, for one) without importing the backend.
"""

from __future__ import annotations

from pathlib import Path

from backplane import hookimpl

HWDB = Path(__file__).resolve().parent / "hwdb"


@hookimpl
def backplane_hwdb_entries() -> list[str]:
    """The hwdb entries of the hardware $name runs on: hwdb/<vendor>/<sku>.toml files."""
    return [str(p) for p in sorted(HWDB.glob("*/*.toml"))]
'''

HWDB_ENTRY = '''\
# The hwdb entry of the hardware $name runs on, contributed to backplane's hardware
# database by the backplane_hwdb_entries hook in hooks.py. An entry's id is its path below
# hwdb/ (<vendor>/<sku>); the schema is printed by `backplane hwdb schema`, and
# `backplane hwdb validate hwdb/` checks a file against it.
#
# The generated backend runs on the host CPU, so this entry describes any CPU: a generic
# entry (its peak rates derived from the probed core count and clock) matching with a low
# confidence, so that every SKU or generic entry shipped with backplane that recognises
# the CPU wins over it. For your own chip write a SKU entry instead: datasheet figures
# in [dense], [memory], [power] ..., every table naming one of the [[sources]] it comes
# from, and a match rule that recognises the device (pci vendor and device ids for a card,
# a name pattern for an NPU driver). backplane's docs/hwdb.md describes every field.
schema = 1
id = "$name/host-cpu"
name = "Any CPU ($name fallback entry)"
vendor = "$name"
kind = "cpu"
generic = true
dtypes = ["fp64", "fp32"]

# One 128-bit SIMD unit per core (SSE2 on x86-64, NEON on AArch64: 4 fp32 or 2 fp64 lanes,
# an add and a multiply per cycle): the floor any core of those architectures reaches.
[cpu]
fp64_flops_per_cycle = 4
fp32_flops_per_cycle = 8
source = "intel-opt-manual"

[derive]
note = "usable cores x probed clock x the FLOPs per cycle of one 128-bit SIMD unit"

[[sources]]
id = "intel-opt-manual"
title = "Intel 64 and IA-32 Architectures Optimization Reference Manual (SSE2 throughput)"
url = "https://www.intel.com/content/www/us/en/developer/articles/technical/intel64-and-ia32-architectures-optimization.html"

[[match]]
rule = "cpu"
confidence = 0.1
note = "any CPU; backplane's own entries (confidence 0.3 and up) win where they match"
'''

KNOWN_FAILURES = '''\
# Known failures of $name: conformance cases that fail for a reason you know and accept
# for now. A case an entry covers is reported as skipped, with the reason, instead of failed;
# `backplane conformance run --also-run-known-failures` runs such cases anyway and reports
# the ones that now pass (xpass), so that their entries can go.
#
# One [[known_failure]] table per entry; op and reason are required, the rest narrow it:
#
# [[known_failure]]
# op = "MatMul"               # the op (or "model:<name>" for a model of the zoo)
# dtype = "float32"           # only cases of this element type
# case = "MatMul/float32/*"   # a glob on the case id (ids are in a run's report)
# plugin_version = "<0.2"     # a version specifier on this plugin's version
# device = "EPYC"             # a regular expression searched in the device name
# reason = "what fails, why, and the issue that tracks it"
'''

TESTS = '''\
"""$name's own tests. pytest runs backplane's conformance suite beside them: see
[tool.pytest.ini_options] in pyproject.toml (--backplane-backend $name)."""

from __future__ import annotations

import numpy as np

from backplane.hardware.db import validate_paths
from $package.backend import $cls, relu
from $package.hooks import HWDB


def test_probe_lists_the_host_cpu():
    [device] = $cls().probe()
    assert device.kind == "cpu" and device.name


def test_relu_keeps_positive_values_and_zeroes_the_rest():
    seed = int(np.random.SeedSequence().entropy % 2**32)
    x = np.random.default_rng(seed).standard_normal((3, 5)).astype(np.float32)
    y = relu(x)
    assert y.dtype == np.float32, f"seed {seed}"
    np.testing.assert_array_equal(y, np.where(x > 0, x, 0), err_msg=f"seed {seed}")


def test_the_hwdb_entries_are_valid():
    read, problems = validate_paths([HWDB])
    assert read >= 1 and not problems, "\\n".join(map(str, problems))
'''
