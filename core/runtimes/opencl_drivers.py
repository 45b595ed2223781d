"""The OpenCL drivers that pip installed, shown to this process's ICD loader only.

pip installs some OpenCL drivers (Intel's CPU runtime, ``intel-opencl-rt``) where no ICD
loader looks. :func:`use_pip_installed_drivers` writes, into a private folder, the list of
them next to the system's; :func:`start_loader` makes the process's first OpenCL call with
that list in ``OCL_ICD_VENDORS`` and puts the environment back, so neither the application
nor its child processes see it. Used by every OpenCL path (the opencl backend, rocm's
OpenCL path) through :mod:`backplane.runtimes.opencl`.

Importing this module imports neither pyopencl nor numpy, and writes nothing.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path

log = logging.getLogger("backplane")

#: OpenCL drivers that pip installs where no ICD loader looks, as (distribution, library).
#: intel-opencl-rt (Intel's CPU runtime, in the ``opencl`` extra on Linux x86-64) puts
#: ``lib/libintelocl.so`` in the environment and an ``.icd`` file naming a conda placeholder
#: path. pocl-binary-distribution needs nothing: it installs into pyopencl's own ``.libs``,
#: which pyopencl's loader reads.
PIP_DRIVERS = (("intel-opencl-rt", "libintelocl.so"),)
#: Where the ICD loader looks for drivers when ``OCL_ICD_VENDORS`` is not set.
SYSTEM_VENDORS = Path("/etc/OpenCL/vendors")
#: Intel's CPU runtime names its code-generation targets after Intel cores and need not know
#: another vendor's CPU (2024.2 on a Zen 5 EPYC: "Unknown host CPU", then wrong values from
#: Sigmoid and BatchNormalization kernels). On such CPUs the plugin names the instruction
#: set in ``CL_CONFIG_CPU_TARGET_ARCH`` instead: the first whose /proc/cpuinfo flags are all
#: present.
INTEL_CPU_TARGETS = (("skx", frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq",
                                        "avx512vl"})),
                     ("core-avx2", frozenset({"avx2", "fma", "bmi2"})),
                     ("corei7-avx", frozenset({"avx"})),
                     ("corei7", frozenset({"sse4_2"})))

_vendors_folder: str | None = None
_driver_env: dict[str, str] = {}
_loader_lock = threading.Lock()
_loader_started = False


def use_pip_installed_drivers() -> dict[str, str]:
    """The environment this process's ICD loader must see to load the OpenCL drivers that
    pip installed: ``OCL_ICD_VENDORS`` (and ``CL_CONFIG_CPU_TARGET_ARCH`` for Intel's
    runtime on another vendor's CPU), or nothing when there is nothing to add.

    pyopencl's loader (ocl-icd) reads the drivers named in ``OCL_ICD_VENDORS`` (else in
    /etc/OpenCL/vendors) and in pyopencl's own ``.libs`` once, at the process's first
    OpenCL call. The folder holds a copy of every system ``.icd`` file (which the variable
    would otherwise hide) and one per driver of ``PIP_DRIVERS`` that is installed, naming
    its library by absolute path, in a private folder this process writes
    (:func:`_write_vendors`; nothing is read back from the cache). The environment is set
    only around that first call (:func:`start_loader`): the application and its child
    processes never see it. A user's own ``OCL_ICD_VENDORS`` is left alone: it decides
    which drivers load.
    """
    global _vendors_folder
    if _vendors_folder is not None or os.environ.get("OCL_ICD_VENDORS"):
        return dict(_driver_env)
    icds = {f"{dist}.icd": f"{library}\n" for dist, library in _pip_driver_libraries()}
    if not icds:
        return None
    if SYSTEM_VENDORS.is_dir():
        for f in sorted(SYSTEM_VENDORS.glob("*.icd")):
            try:
                icds.setdefault(f.name, f.read_text())
            except OSError:
                continue
    folder = _write_vendors(icds)
    _vendors_folder = str(folder)
    _driver_env["OCL_ICD_VENDORS"] = _vendors_folder
    target = _intel_cpu_target() if "intel-opencl-rt.icd" in icds else None
    if target and not os.environ.get("CL_CONFIG_CPU_TARGET_ARCH"):
        _driver_env["CL_CONFIG_CPU_TARGET_ARCH"] = target
    return dict(_driver_env)


def start_loader() -> None:
    """Make this process's first OpenCL call (which loads the drivers) with the
    environment of :func:`use_pip_installed_drivers` set, then put the environment back as
    it was. Called before every OpenCL path's first call; once per process. Registers the
    drivers first where nothing did yet (:func:`register_pip_drivers`)."""
    global _loader_started
    register_pip_drivers()
    with _loader_lock:
        if _loader_started:
            return
        _loader_started = True
        import pyopencl as cl  # defers the vendor runtime to the first OpenCL call

        saved = {k: os.environ.get(k) for k in _driver_env}
        os.environ.update(_driver_env)
        try:
            cl.get_platforms()
        except cl.Error:
            pass  # no platform: the caller's own call says so
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def _pip_driver_libraries() -> list[tuple[str, str]]:
    """(distribution, absolute library path) of each installed driver of ``PIP_DRIVERS``."""
    from importlib import metadata

    found = []
    for dist, name in PIP_DRIVERS:
        try:
            files = metadata.distribution(dist).files or []
        except metadata.PackageNotFoundError:
            continue
        for f in files:
            if f.name == name:
                path = Path(f.locate()).resolve()
                if path.is_file():
                    found.append((dist, str(path)))
                break
    return found


def _intel_cpu_target(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The ``INTEL_CPU_TARGETS`` name for this CPU when it is not an Intel one, else None."""
    vendor, flags = None, set()
    try:
        with cpuinfo.open() as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "vendor_id" and vendor is None:
                    vendor = value.strip()
                elif key == "flags":
                    flags = set(value.split())
                    break
    except OSError:
        return None
    if vendor in (None, "GenuineIntel"):
        return None
    return next((name for name, needed in INTEL_CPU_TARGETS if needed <= flags), None)


def _write_vendors(icds: dict[str, str]) -> Path:
    """A folder holding exactly ``icds`` (file name -> contents), written now by this
    process into a private temporary folder (0700, removed at exit). Never one found on
    disk: the ICD loader loads every library an ``.icd`` file there names, so a file
    planted in a shared folder would run its code in every backplane process."""
    folder = Path(tempfile.mkdtemp(prefix="backplane-opencl-icd-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    for name, text in icds.items():
        fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    return folder


_registered = False
_register_lock = threading.Lock()


def register_pip_drivers() -> None:
    """:func:`use_pip_installed_drivers` once per process, a failure logged rather than
    raised: a driver the loader will not see must not stop an import or a compile."""
    global _registered
    with _register_lock:
        if _registered:
            return
        _registered = True
    try:
        use_pip_installed_drivers()
    except Exception as exc:
        log.warning("backplane: opencl: pip-installed OpenCL drivers stay unregistered: %s: %s",
                    type(exc).__name__, exc)
        log.debug("backplane: opencl: driver registration traceback", exc_info=True)
