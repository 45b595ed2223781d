"""Running the NEON kernels: in this process through ctypes on an AArch64 host, or in the
emulation harness under qemu-aarch64 elsewhere. Both offer ``call(kernel, inputs, outputs,
iv, fv)`` on host numpy arrays, and pick for each kernel the best variant the CPU's
features allow.

The emulated runtime keeps one harness process per CPU model and process, restarted after
it dies; every exchange is bounded in time, and a harness that is dead, stuck or speaks
nonsense is killed and reported as an ``ExecutionError`` (the next call starts a fresh
one). Calls into one harness are serialised; the native library is re-entrant.
"""

from __future__ import annotations

import collections
import logging
import os
import select
import shutil
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from backplane.sdk.errors import CompileError, ExecutionError

from . import build, features

log = logging.getLogger("backplane")
BACKEND = "arm-neon"
#: Seconds one kernel call may take under emulation before the harness is killed.
CALL_TIMEOUT_S = 300.0
#: Seconds the harness has to start and answer its first request.
START_TIMEOUT_S = 60.0
STATUS = {1: "invalid arguments", 2: "out of memory", 3: "unsupported case",
          -1: "unknown kernel", -2: "malformed request", -3: "the harness is out of memory"}
REQUEST, RESPONSE = 0x514E5042, 0x524E5042  # "BPNQ", "BPNR"
CROSS_CC = "aarch64-linux-gnu-gcc"
QEMU = "qemu-aarch64"


class Runtime:
    """The kernels of one CPU: features, the variant each kernel runs as, and calls."""

    kind = "?"

    def __init__(self, built: build.Built, cpu_features: frozenset[str], source: str):
        self.built = built
        self.features = cpu_features
        self.features_source = source
        self.index = build.index(list(built.sources))
        self.variants = features.variants_for(self.index, cpu_features)
        for name, words in built.left_out:
            log.warning("backplane: arm-neon: %s was not built (its kernels run as the next "
                        "variant down): %s", name, words.strip().splitlines()[-1:] or words)
        #: Calls per C symbol, for tests and ``describe()``: which variant really ran.
        self.counts: collections.Counter[str] = collections.Counter()
        self._counts_lock = threading.Lock()

    def _count(self, symbol: str) -> None:
        with self._counts_lock:
            self.counts[symbol] += 1

    def symbol(self, kernel: str) -> str:
        """The C symbol that runs ``kernel`` on this CPU."""
        variant = self.variants.get(kernel)
        if variant is None:
            raise ExecutionError(f"no NEON kernel '{kernel}' runs on this CPU (features: "
                                 f"{', '.join(sorted(self.features)) or 'none'})",
                                 backend=BACKEND)
        return self.index[kernel][variant]

    def call(self, kernel: str, inputs: list[Any], outputs: list[Any],
             iv: tuple[int, ...] | list[int] = (), fv: tuple[float, ...] | list[float] = ()
             ) -> None:
        """Run ``kernel`` on dense host arrays; ``outputs`` are written in place."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Plain data: features and the variant of every kernel."""
        return {"runtime": self.kind, "features": sorted(self.features),
                "features_from": self.features_source,
                "variants": dict(sorted(self.variants.items())),
                "artefact": str(self.built.path), "compiler": self.built.compiler,
                "left_out": dict(self.built.left_out)}

    def close(self) -> None:
        """Release what the runtime holds (a harness process)."""


def _check(symbol: str, status: int, where: str) -> None:
    if status != 0:
        where = f" {where}" if where else ""
        raise ExecutionError(f"NEON kernel {symbol}{where} returned {status} "
                             f"({STATUS.get(status, 'error')})", backend=BACKEND)


def _dense(a: Any) -> Any:
    if a is not None and not a.flags.c_contiguous:
        raise ValueError("NEON kernels take dense row-major arrays")
    return a


# --------------------------------------------------------------------------- native

class NativeRuntime(Runtime):
    """The kernels as a shared library of this AArch64 host, called through ctypes."""

    kind = "native"

    def __init__(self, cc: str, options: object = None):
        import ctypes

        built = build.build("library", cc, options=options)
        found, source = features.host_features()
        super().__init__(built, found, source)
        self._lib = ctypes.CDLL(str(built.path))
        self._fns: dict[str, Any] = {}

    def call(self, kernel, inputs, outputs, iv=(), fv=()):
        symbol = self.symbol(kernel)
        fn = self._fns.get(symbol)
        if fn is None:
            fn = self._fns[symbol] = c_function(self._lib, symbol)
        self._count(symbol)
        _check(symbol, call_c(fn, [*inputs, *outputs], iv, fv), "")


def c_function(lib: Any, symbol: str) -> Any:
    """A kernel of a loaded library as a ctypes function of the kernel ABI."""
    import ctypes as ct

    fn = getattr(lib, symbol)
    fn.restype = ct.c_int32
    fn.argtypes = [ct.c_void_p, ct.c_void_p, ct.c_void_p]
    return fn


def call_c(fn: Any, arrays: list[Any], iv: Any = (), fv: Any = ()) -> int:
    """Call a kernel of the ABI (bufs, iv, fv) on dense host arrays (None: NULL); the
    ctypes call releases the GIL, so threads run kernels at once."""
    import ctypes as ct

    arrays = [_dense(a) for a in arrays]
    ptrs = (ct.c_void_p * max(1, len(arrays)))(*[a.ctypes.data if a is not None else None
                                               for a in arrays])
    ints = (ct.c_int64 * max(1, len(iv)))(*[int(v) for v in iv])
    floats = (ct.c_double * max(1, len(fv)))(*[float(v) for v in fv])
    return int(fn(ptrs, ints, floats))


# --------------------------------------------------------------------------- emulated

class EmulatedRuntime(Runtime):
    """The kernels cross-compiled into the harness, run under ``qemu-aarch64 -cpu MODEL``."""

    kind = "emulated"

    def __init__(self, cpu: str = "max", options: object = None,
                 timeout_s: float = CALL_TIMEOUT_S, folder: Path | None = None):
        cc, qemu = shutil.which(CROSS_CC), shutil.which(QEMU)
        if cc is None or qemu is None:
            missing = [n for n, p in ((CROSS_CC, cc), (QEMU, qemu)) if p is None]
            raise CompileError(f"NEON emulation needs {' and '.join(missing)}: apt-get install "
                               f"gcc-aarch64-linux-gnu qemu-user", backend=BACKEND)
        built = build.build("harness", cc, folder, options=options)
        self.cpu, self.qemu, self.timeout_s = cpu, qemu, timeout_s
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._stderr: Any = None
        self.restarts = 0
        self.built = built
        self.kernel_seconds = 0.0
        hwcap = self._hello()
        super().__init__(built, features.from_hwcap(*hwcap),
                         f"AT_HWCAP/AT_HWCAP2 inside qemu-aarch64 -cpu {cpu}")

    # -- the process

    @property
    def pid(self) -> int | None:
        """The process id of the running harness (qemu), or None."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def _start(self) -> subprocess.Popen:
        if self._proc is not None:
            if self._proc.poll() is None:
                return self._proc
            # it died between calls (killed, out of memory): said once, then a fresh one
            raise _Broken("died after its last call")
        self._stderr = tempfile.TemporaryFile()
        # no core files (qemu writes one for a crashed guest where the limit allows), and
        # none in the caller's working directory either way
        self._proc = subprocess.Popen(
            ["/bin/sh", "-c", 'ulimit -c 0; exec "$0" -cpu "$1" "$2"', self.qemu, self.cpu,
             str(self.built.path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._stderr, bufsize=0, close_fds=True, cwd=tempfile.gettempdir())
        for f in (self._proc.stdin, self._proc.stdout):
            try:  # larger pipes: fewer round trips for megabyte tensors (Linux only)
                import fcntl

                fcntl.fcntl(f.fileno(), 1031, 1 << 20)  # F_SETPIPE_SZ
            except (OSError, ImportError):
                pass
            os.set_blocking(f.fileno(), False)
        return self._proc

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
            for f in (proc.stdin, proc.stdout):
                try:
                    f.close()
                except OSError:
                    pass
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def _why(self) -> str:
        proc = self._proc
        code = None
        if proc is not None:
            try:  # a harness that just crashed may not have been reaped yet
                code = proc.wait(0.5)
            except subprocess.TimeoutExpired:
                code = None
        words = ""
        if self._stderr is not None:
            try:
                self._stderr.seek(0)
                words = self._stderr.read()[-2000:].decode(errors="replace").strip()
            except (OSError, ValueError):
                pass
        state = f"exit code {code}" if code is not None else "still running"
        return f"the harness ({state})" + (f" said: {words}" if words else "")

    def close(self) -> None:
        with self._lock:
            self._kill()

    # -- the exchange

    def _exchange(self, name: str, inputs: list[Any], outputs: list[Any], iv, fv,
                  timeout_s: float) -> int:
        proc = self._start()
        deadline = time.monotonic() + timeout_s
        head = [struct.pack("<5I", REQUEST, len(name), len(inputs) + len(outputs), len(iv),
                            len(fv)), name.encode()]
        for arrays, flag in ((inputs, 1), (outputs, 2)):
            head += [struct.pack("<QI", a.nbytes, flag) if a is not None else
                     struct.pack("<QI", 0, 0) for a in arrays]
        head.append(struct.pack(f"<{len(iv)}q", *[int(v) for v in iv]))
        head.append(struct.pack(f"<{len(fv)}d", *[float(v) for v in fv]))
        out_fd, in_fd = proc.stdin.fileno(), proc.stdout.fileno()
        self._send(out_fd, memoryview(b"".join(head)), deadline)
        for a in inputs:
            if a is not None and a.nbytes:
                self._send(out_fd, memoryview(a.reshape(-1).view("u1")), deadline)
        reply = bytearray(16)
        self._recv(in_fd, memoryview(reply), deadline)
        magic, status, ns = struct.unpack("<IiQ", reply)
        if magic != RESPONSE:
            raise _Broken(f"answered with bad magic 0x{magic:08x}")
        if status != 0:
            return status
        for a in outputs:
            if a is not None and a.nbytes:
                self._recv(in_fd, memoryview(a.reshape(-1).view("u1")), deadline)
        self.kernel_seconds += ns / 1e9
        return 0

    def _send(self, fd: int, data: memoryview, deadline: float) -> None:
        while len(data):
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Broken("did not take its input in time")
            if not _wait(fd, select.POLLOUT, left):
                continue
            try:
                data = data[os.write(fd, data[: 1 << 20]):]
            except BlockingIOError:
                continue
            except (BrokenPipeError, OSError) as exc:
                raise _Broken(f"stopped reading ({exc})") from None

    def _recv(self, fd: int, buf: memoryview, deadline: float) -> None:
        while len(buf):
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Broken("did not answer in time")
            if not _wait(fd, select.POLLIN, left):
                continue
            try:
                got = os.readv(fd, [buf])
            except BlockingIOError:
                continue
            except OSError as exc:
                raise _Broken(f"cannot be read ({exc})") from None
            if got == 0:
                raise _Broken("closed its output")
            buf = buf[got:]

    def _guarded(self, name: str, inputs, outputs, iv, fv, timeout_s: float) -> int:
        with self._lock:
            try:
                return self._exchange(name, inputs, outputs, iv, fv, timeout_s)
            except _Broken as exc:
                why = self._why()
                self._kill()
                self.restarts += 1
                raise ExecutionError(
                    f"the NEON emulation harness (qemu-aarch64 -cpu {self.cpu}) {exc} while "
                    f"running {name}: {why}; it was stopped and the next call starts a new one",
                    backend=BACKEND) from None

    def _hello(self) -> tuple[int, int]:
        import numpy as np

        words = np.zeros(2, np.uint64)
        try:
            status = self._guarded("__hello", [], [words], (), (), START_TIMEOUT_S)
        except ExecutionError as exc:
            raise CompileError(f"the NEON emulation harness did not start: {exc}",
                               backend=BACKEND) from exc
        if status != 0:
            raise CompileError(f"the NEON emulation harness refused its first request "
                               f"({status})", backend=BACKEND)
        return int(words[0]), int(words[1])

    def call(self, kernel, inputs, outputs, iv=(), fv=()):
        symbol = self.symbol(kernel)
        inputs = [_dense(a) for a in inputs]
        outputs = [_dense(a) for a in outputs]
        self._count(symbol)
        _check(symbol, self._guarded(symbol, inputs, outputs, iv, fv, self.timeout_s),
               f"under qemu-aarch64 -cpu {self.cpu}")

    def describe(self):
        return {**super().describe(), "qemu_cpu": self.cpu, "qemu": self.qemu,
                "restarts": self.restarts}


def _wait(fd: int, event: int, seconds: float) -> bool:
    """Whether ``fd`` is ready (or closed) within ``seconds``; poll, not select, so that a
    process with many open files is no trouble."""
    poller = select.poll()
    poller.register(fd, event)
    return bool(poller.poll(max(1, int(seconds * 1000))))


class _Broken(Exception):
    """The harness did not hold up its end of the protocol."""


# --------------------------------------------------------------------------- per process

_runtimes: dict[tuple[str, str], Runtime] = {}
_lock = threading.Lock()


def runtime_for(kind: str, target: str, options: object = None) -> Runtime:
    """The process's runtime for ``("native", cc)`` or ``("emulated", cpu model)``, made
    (built, started) on first use."""
    key = (kind, target)
    with _lock:
        rt = _runtimes.get(key)
        if rt is None:
            rt = NativeRuntime(target, options) if kind == "native" else \
                EmulatedRuntime(target, options)
            _runtimes[key] = rt
        return rt
