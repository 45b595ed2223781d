"""NVRTC through ctypes: the kernels in ``kernels/cuda`` compiled at run time, cached on disk.

NVRTC compiles CUDA C++ without a GPU or a driver, so a machine without one (CI) can
check that every kernel compiles. The library is looked for, in order, in

1. the ``nvidia-cuda-nvrtc-cu12`` / ``nvidia-cuda-nvrtc`` wheels (pip; torch's CUDA builds
   depend on them), found through their installed file lists;
2. ``CUDA_HOME`` / ``CUDA_PATH`` (``lib64``, ``lib``, ``bin``), the toolkit's own copy;
3. the dynamic loader's search path (``ctypes.util.find_library("nvrtc")``).

:func:`compile_source` builds a cubin for the device's architecture (``"9.0"`` gives
``--gpu-architecture=sm_90``), or PTX for the newest virtual architecture NVRTC knows when
the GPU is newer than NVRTC (the driver then compiles the PTX). Results are cached under
``backplane.sdk.cache.cache_dir("cuda")``, keyed by the source and every header it includes,
the target, the NVRTC version and the options; each binary has a JSON sidecar with its
SHA-256, so a truncated or altered file is compiled again rather than loaded. A compile
error is a :class:`backplane.CompileError` carrying NVRTC's log.

No CUDA header is needed: the sources include only their own ``*.cuh`` files (passed to
NVRTC from memory, the same bytes the cache key hashes).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import os
import re
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backplane.sdk.cache import cache_dir, cache_key, write_atomic
from backplane.sdk.errors import CompileError

#: The backend name errors carry.
BACKEND = "cuda-tensorrt"
#: The cache folder's name under the cache root.
CACHE_NAME = "cuda"
#: Bumped when the cache's layout or the way options are built changes.
CACHE_FORMAT = 1
#: The options every compile gets (the sources are C++17).
BASE_OPTIONS = ("--std=c++17",)
#: The wheels that carry libnvrtc, newest CUDA first.
WHEELS = ("nvidia-cuda-nvrtc", "nvidia-cuda-nvrtc-cu13", "nvidia-cuda-nvrtc-cu12")

_INCLUDE = re.compile(r'^\s*#\s*include\s*[<"]([^">]+)[">]', re.MULTILINE)
_LIB_NAME = re.compile(r"(^|/)(lib)?nvrtc(64_[0-9_]+)?(\.so(\.[0-9.]+)?|\.dll|\.dylib)$")


class NvrtcNotFound(RuntimeError):
    """No usable NVRTC library: the message says where it was looked for."""


# --------------------------------------------------------------------------- finding NVRTC


def _wheel_candidates() -> list[Path]:
    from importlib import metadata

    found = []
    for name in WHEELS:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for f in dist.files or ():
            text = str(f).replace("\\", "/")
            if _LIB_NAME.search(text) and "builtins" not in text and ".alt." not in text:
                found.append(Path(str(dist.locate_file(f))))
    return found


def _toolkit_candidates() -> list[Path]:
    found = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(var, "").strip()
        if not root:
            continue
        for sub in ("lib64", "lib", "bin", "lib/x64"):
            folder = Path(root) / sub
            if folder.is_dir():
                found += sorted(p for p in folder.iterdir() if _LIB_NAME.search(p.name)
                                and "builtins" not in p.name and ".alt." not in p.name)
    return found


def candidates() -> list[str]:
    """Every NVRTC library path (or loader name) to try, in the order they are tried."""
    paths = [str(p) for p in _wheel_candidates() + _toolkit_candidates()]
    loader = ctypes.util.find_library("nvrtc")
    if loader:
        paths.append(loader)
    if sys.platform.startswith("linux"):
        paths += ["libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12"]
    return list(dict.fromkeys(paths))


class Nvrtc:
    """One loaded NVRTC library: its path, version and supported architectures."""

    def __init__(self, path: str):
        self.path = path
        self.lib = ctypes.CDLL(path)
        lib = self.lib
        c_int_p = ctypes.POINTER(ctypes.c_int)
        lib.nvrtcVersion.argtypes = [c_int_p, c_int_p]
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        lib.nvrtcGetErrorString.argtypes = [ctypes.c_int]
        lib.nvrtcCreateProgram.argtypes = [
            ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int,
            ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_char_p)]
        lib.nvrtcDestroyProgram.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
        lib.nvrtcCompileProgram.argtypes = [ctypes.c_void_p, ctypes.c_int,
                                            ctypes.POINTER(ctypes.c_char_p)]
        size_p = ctypes.POINTER(ctypes.c_size_t)
        for name in ("nvrtcGetProgramLogSize", "nvrtcGetPTXSize", "nvrtcGetCUBINSize"):
            getattr(lib, name).argtypes = [ctypes.c_void_p, size_p]
        for name in ("nvrtcGetProgramLog", "nvrtcGetPTX", "nvrtcGetCUBIN"):
            getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._check(lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
        self.version: tuple[int, int] = (major.value, minor.value)
        self.archs: tuple[int, ...] = self._archs()

    def _archs(self) -> tuple[int, ...]:
        lib = self.lib
        try:
            count = ctypes.c_int()
            self._check(lib.nvrtcGetNumSupportedArchs(ctypes.byref(count)), "archs")
            table = (ctypes.c_int * count.value)()
            self._check(lib.nvrtcGetSupportedArchs(table), "archs")
            return tuple(sorted(table))
        except AttributeError:  # NVRTC before 11.2 cannot say; assume its era's range
            return (35, 37, 50, 52, 53, 60, 61, 62, 70, 72, 75, 80)

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"{what}: {self.lib.nvrtcGetErrorString(status).decode()}")

    def compile(self, source: bytes, name: str, headers: dict[str, bytes],
                options: list[str]) -> tuple[int, bytes, str, bool]:
        """(status, binary, log, cubin?) of one compile; status 0 is success."""
        lib = self.lib
        prog = ctypes.c_void_p()
        names = list(headers)
        header_src = (ctypes.c_char_p * max(1, len(names)))(*[headers[n] for n in names])
        header_names = (ctypes.c_char_p * max(1, len(names)))(*[n.encode() for n in names])
        self._check(lib.nvrtcCreateProgram(ctypes.byref(prog), source, name.encode(),
                                           len(names), header_src, header_names),
                    "nvrtcCreateProgram")
        try:
            opts = (ctypes.c_char_p * max(1, len(options)))(*[o.encode() for o in options])
            status = lib.nvrtcCompileProgram(prog, len(options), opts)
            size = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            log_buf = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetProgramLog(prog, log_buf)
            log = log_buf.value.decode("utf-8", "replace").strip()
            if status != 0:
                return status, b"", log, False
            cubin = any(o.startswith("--gpu-architecture=sm_") for o in options)
            get_size, get = ((lib.nvrtcGetCUBINSize, lib.nvrtcGetCUBIN) if cubin
                             else (lib.nvrtcGetPTXSize, lib.nvrtcGetPTX))
            self._check(get_size(prog, ctypes.byref(size)), "binary size")
            data = ctypes.create_string_buffer(size.value)
            self._check(get(prog, data), "binary")
            binary = data.raw[:size.value]
            if not cubin:
                binary = binary.rstrip(b"\0")
            return 0, binary, log, cubin
        finally:
            lib.nvrtcDestroyProgram(ctypes.byref(prog))


_LOCK = threading.Lock()
_LOADED: Nvrtc | None = None
_FAILURE: str | None = None


def load() -> Nvrtc:
    """The NVRTC library, loaded once per process.

    Raises:
        NvrtcNotFound: no candidate loads; the message lists what was tried.
    """
    global _LOADED, _FAILURE
    with _LOCK:
        if _LOADED is not None:
            return _LOADED
        if _FAILURE is not None:
            raise NvrtcNotFound(_FAILURE)
        tried = []
        for path in candidates():
            try:
                _LOADED = Nvrtc(path)
                return _LOADED
            except (OSError, RuntimeError, AttributeError) as exc:
                tried.append(f"{path} ({type(exc).__name__}: {str(exc).splitlines()[0]})"
                             if "/" in path or os.sep in path else path)
        _FAILURE = ("NVRTC not found: install the pip package nvidia-cuda-nvrtc-cu12, or set "
                    "CUDA_HOME to a CUDA toolkit; tried " + (", ".join(tried) or "nothing"))
        raise NvrtcNotFound(_FAILURE)


def version() -> tuple[int, int] | None:
    """NVRTC's (major, minor), or None when it cannot be loaded."""
    try:
        return load().version
    except NvrtcNotFound:
        return None


# --------------------------------------------------------------------------- compiling


def kernel_dir() -> Path:
    """The folder of the CUDA sources (``backplane/kernels/cuda``)."""
    from importlib import resources

    return Path(str(resources.files("backplane.kernels").joinpath("cuda")))


def source_names() -> list[str]:
    """The ``*.cu`` files of ``kernels/cuda``, sorted."""
    return sorted(p.name for p in kernel_dir().glob("*.cu"))


def read_sources(name: str, folder: Path | None = None) -> tuple[bytes, dict[str, bytes]]:
    """A source's bytes and those of every header it includes, transitively, that lives in
    the same folder (name -> bytes). Includes of other files are left to NVRTC."""
    folder = folder or kernel_dir()
    source = (folder / name).read_bytes()
    headers: dict[str, bytes] = {}
    pending = [source]
    while pending:
        text = pending.pop().decode("utf-8", "replace")
        for include in _INCLUDE.findall(text):
            path = folder / include
            if include not in headers and path.is_file():
                headers[include] = path.read_bytes()
                pending.append(headers[include])
    return source, dict(sorted(headers.items()))


def parse_arch(arch: str | tuple[int, int] | int) -> int:
    """A compute capability as NVRTC's number: ``"9.0"``, ``(9, 0)``, ``90``, ``"sm_90"``
    all give 90."""
    if isinstance(arch, tuple):
        return arch[0] * 10 + arch[1]
    if isinstance(arch, int):
        return arch
    text = arch.strip().lower().removeprefix("sm_").removeprefix("compute_")
    if "." in text:
        major, minor = text.split(".", 1)
        return int(major) * 10 + int(minor)
    return int(text)


def target(arch: str | tuple[int, int] | int, supported: tuple[int, ...],
           ptx: bool = False) -> tuple[str, str]:
    """(NVRTC option, kind) for a device of compute capability ``arch``.

    A cubin (``--gpu-architecture=sm_XX``, kind ``"cubin"``) when NVRTC knows the
    architecture; else, or with ``ptx``, PTX for the newest virtual architecture it knows
    that the device can run (``compute_XX``, kind ``"ptx"``), which the driver compiles
    when loading.

    Raises:
        ValueError: NVRTC knows no architecture this old.
    """
    cc = parse_arch(arch)
    if cc in supported and not ptx:
        return f"--gpu-architecture=sm_{cc}", "cubin"
    older = [a for a in supported if a <= cc]
    if not older:
        raise ValueError(f"NVRTC supports architectures {min(supported)} to {max(supported)}, "
                         f"not compute capability {cc // 10}.{cc % 10}")
    return f"--gpu-architecture=compute_{max(older)}", "ptx"


@dataclass
class Compiled:
    """One compiled kernel source."""

    name: str
    """The source file, ``"softmax.cu"``."""
    kind: str
    """``"cubin"`` or ``"ptx"``."""
    binary: bytes
    """The cubin, or the PTX text as bytes."""
    target: str
    """The architecture option it was compiled with."""
    nvrtc_version: tuple[int, int]
    key: str
    """The cache key."""
    path: Path | None = None
    """The cached file, None when caching is off or the write failed."""
    from_cache: bool = False
    log: str = ""
    """NVRTC's log (warnings), empty when clean."""
    options: tuple[str, ...] = field(default_factory=tuple)


def _read_cached(binary_path: Path, meta_path: Path) -> bytes | None:
    """The cached binary when its sidecar vouches for it, else None."""
    try:
        meta = json.loads(meta_path.read_text())
        data = binary_path.read_bytes()
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("sha256") != hashlib.sha256(data).hexdigest():
        return None
    return data


def compile_source(name: str, arch: str | tuple[int, int] | int, options: tuple[str, ...] = (),
                   *, folder: Path | None = None, use_cache: bool = True,
                   cache_options: object = None, ptx: bool = False) -> Compiled:
    """Compile ``kernels/cuda/NAME`` for compute capability ``arch``, through the cache.

    Args:
        name: a source file of ``folder`` (default ``kernels/cuda``), e.g. ``"matmul.cu"``.
        arch: the device's compute capability, ``"9.0"``, ``(9, 0)`` or ``90``.
        options: NVRTC options beyond :data:`BASE_OPTIONS` and the architecture.
        folder: where the source and its headers are.
        use_cache: False compiles and neither reads nor writes the cache.
        cache_options: a ``CompileOptions`` whose ``cache_dir`` chooses the cache root.
        ptx: PTX for ``compute_XX`` even when NVRTC could make a cubin (to read the
            kernels' parameter lists, or to leave the last step to the driver).

    Raises:
        NvrtcNotFound: NVRTC cannot be loaded.
        CompileError: NVRTC rejected the source (``vendor_message`` is its log).
    """
    nvrtc = load()
    source, headers = read_sources(name, folder)
    try:
        arch_option, kind = target(arch, nvrtc.archs, ptx)
    except ValueError as exc:
        raise CompileError(str(exc), backend=BACKEND) from exc
    all_options = (*BASE_OPTIONS, arch_option, *options)
    key = cache_key(CACHE_FORMAT, name, source, sorted(headers.items()), arch_option,
                    nvrtc.version, all_options)
    stem = f"{Path(name).stem}-{arch_option.rsplit('_', 1)[-1]}-{key}"
    folder_cache = cache_dir(CACHE_NAME, cache_options) if use_cache else None
    binary_path = folder_cache / f"{stem}.{kind}" if folder_cache else None
    meta_path = folder_cache / f"{stem}.json" if folder_cache else None
    common = dict(name=name, kind=kind, target=arch_option, nvrtc_version=nvrtc.version,
                  key=key, options=all_options)
    if binary_path is not None and meta_path is not None:
        data = _read_cached(binary_path, meta_path)
        if data is not None:
            return Compiled(binary=data, path=binary_path, from_cache=True, **common)
    status, binary, log, _ = nvrtc.compile(source, name, headers, list(all_options))
    if status != 0:
        nv = ".".join(map(str, nvrtc.version))
        raise CompileError(
            f"NVRTC {nv} could not compile kernels/cuda/{name} for {arch_option}:\n{log}",
            backend=BACKEND, vendor_message=log)
    path = None
    if binary_path is not None and meta_path is not None:
        meta = {"source": name, "kind": kind, "target": arch_option,
                "nvrtc_version": list(nvrtc.version), "options": list(all_options),
                "sha256": hashlib.sha256(binary).hexdigest(), "bytes": len(binary), "log": log}
        # The binary first, its sidecar second: a reader that sees the sidecar sees the binary.
        if write_atomic(binary_path, binary) and write_atomic(
                meta_path, json.dumps(meta, indent=1).encode()):
            path = binary_path
    return Compiled(binary=binary, path=path, log=log, **common)


def compile_all(arch: str | tuple[int, int] | int, workers: int | None = None,
                **kwargs: Any) -> list[Compiled]:
    """Every source of ``kernels/cuda`` compiled for ``arch`` (see :func:`compile_source`),
    ``workers`` at a time (default: one per CPU, at most one per source; NVRTC runs
    without the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    names = source_names()
    workers = workers or min(len(names), os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(pool.map(lambda name: compile_source(name, arch, **kwargs), names))


__all__ = ["BACKEND", "BASE_OPTIONS", "CACHE_NAME", "Compiled", "Nvrtc", "NvrtcNotFound",
           "candidates", "compile_all", "compile_source", "kernel_dir", "load", "parse_arch",
           "read_sources", "source_names", "target", "version"]
