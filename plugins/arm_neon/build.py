"""Building the NEON kernels: natively into a shared library, or cross-compiled into the
emulation harness. Both are cached under ``cache_dir("arm-neon")``, keyed by every source's
bytes, the compiler's identity and the flags, so a changed source is rebuilt and an
unchanged one is reused; a failed build is a ``CompileError`` carrying the compiler's words.

Sources: ``kernels/neon/*.c`` and ``*.h``. ``harness.c`` is the emulation harness's main;
every other ``.c`` file holds kernels, declared by lines starting ``BP_KERNEL(name)``. A file
``x.VARIANT.c`` is compiled with that variant's ``-march`` and suffix (see ``features``).
The build writes ``bp_table.c``, the name -> function table the harness dispatches on.
"""

from __future__ import annotations

import atexit
import fcntl
import functools
import json
import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from backplane.sdk.cache import cache_dir, cache_key, write_atomic
from backplane.sdk.errors import CompileError

from .features import MARCH, VARIANTS

#: Bumped when the way the kernels are built changes (flags, table, layout).
BUILD_VERSION = 1
BACKEND = "arm-neon"
COMMON_FLAGS = ("-std=gnu11", "-O2", "-Wall", "-Werror=implicit-function-declaration",
                "-fno-math-errno")
HARNESS = "harness.c"
KERNEL_LINE = re.compile(r"^BP_KERNEL\((\w+)\)", re.MULTILINE)
COMPILE_TIMEOUT_S = 300


def source_dir() -> Path:
    """The folder of the shipped kernel sources (package data of ``backplane.kernels``)."""
    from importlib import resources

    return Path(str(resources.files("backplane.kernels").joinpath("neon")))


@dataclass(frozen=True)
class Source:
    """One kernel source: its path, variant, and the kernels it defines."""

    path: Path
    variant: str
    kernels: tuple[str, ...]

    def symbol(self, kernel: str) -> str:
        """The C symbol of ``kernel`` as this source defines it."""
        return f"bp_{kernel}" + ("" if self.variant == "base" else f"__{self.variant}")


def scan(folder: Path) -> list[Source]:
    """The kernel sources of ``folder``, sorted by name."""
    found = []
    for path in sorted(folder.glob("*.c")):
        if path.name == HARNESS:
            continue
        parts = path.name.split(".")
        variant = parts[-2] if len(parts) == 3 else "base"
        if variant not in VARIANTS:
            raise CompileError(f"kernel source {path.name}: unknown variant '{variant}' "
                               f"(known: {', '.join(VARIANTS)})", backend=BACKEND)
        found.append(Source(path, variant, tuple(KERNEL_LINE.findall(path.read_text()))))
    return found


def index(sources: list[Source]) -> dict[str, dict[str, str]]:
    """Kernel name -> {variant: symbol}."""
    out: dict[str, dict[str, str]] = {}
    for s in sources:
        for k in s.kernels:
            out.setdefault(k, {})[s.variant] = s.symbol(k)
    return out


def table_source(sources: list[Source]) -> str:
    """``bp_table.c``: every kernel symbol by name, for the harness."""
    symbols = sorted({s.symbol(k) for s in sources for k in s.kernels})
    lines = ["#include <stdint.h>",
             "typedef int32_t (*bp_fn)(void *const *, const int64_t *, const double *);",
             "struct bp_entry { const char *name; bp_fn fn; };"]
    lines += [f"int32_t {s}(void *const *, const int64_t *, const double *);" for s in symbols]
    lines.append("const struct bp_entry bp_table[] = {")
    lines += [f'    {{"{s}", {s}}},' for s in symbols]
    lines += ["    {0, 0}", "};", f"const int bp_table_size = {len(symbols)};", ""]
    return "\n".join(lines)


@functools.lru_cache(maxsize=None)
def compiler_identity(cc: str) -> str:
    """``cc --version``'s first line and its target, or a CompileError."""
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
        machine = subprocess.run([cc, "-dumpmachine"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CompileError(f"the C compiler '{cc}' cannot be run: {exc}",
                           backend=BACKEND) from exc
    first = (version.stdout.strip().splitlines() or ["?"])[0]
    return f"{first} ({machine.stdout.strip()})"


@dataclass(frozen=True)
class Built:
    """A build's result: the artefact, whether this call built it, the sources in it, and
    the variant sources the compiler could not build (file name -> its message)."""

    path: Path
    built: bool
    sources: tuple[Source, ...]
    compiler: str
    left_out: tuple[tuple[str, str], ...] = ()


def build(kind: str, cc: str, folder: Path | None = None, options: object = None) -> Built:
    """The shared library (``kind="library"``, compiled with ``cc`` for this host) or the
    static emulation harness (``kind="harness"``, ``cc`` being the cross compiler), from the
    sources in ``folder`` (default: the shipped ones), cached.

    A base source that does not compile is a CompileError. A variant source that does not
    (a compiler too old for ``+i8mm``) is left out, with the compiler's words in
    ``left_out``: its kernels run as the next variant down."""
    folder = folder or source_dir()
    sources = scan(folder)
    identity = compiler_identity(cc)
    files = sorted(p for p in folder.iterdir() if p.suffix in (".c", ".h"))
    key = cache_key(BUILD_VERSION, kind, identity, COMMON_FLAGS, sorted(MARCH.items()),
                    *[(p.name, p.read_bytes()) for p in files])
    name = "libbpneon.so" if kind == "library" else "bp-neon-harness"
    root = cache_dir(BACKEND, options)
    if root is None:  # caching off: a private folder for this process
        out = Path(tempfile.mkdtemp(prefix="backplane-neon-")) / name
        atexit.register(shutil.rmtree, out.parent, ignore_errors=True)
        left_out = _compile(kind, cc, folder, sources, out)
        return _built(out, True, sources, identity, left_out)
    out = root / f"{kind}-{key}" / name
    record = out.with_name("left-out.json")
    if out.is_file() and record.is_file():
        return _built(out, False, sources, identity, _read_record(record))
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / ".lock", "w") as lock:  # one build at a time per key
        fcntl.flock(lock, fcntl.LOCK_EX)
        if out.is_file() and record.is_file():
            return _built(out, False, sources, identity, _read_record(record))
        left_out = _compile(kind, cc, folder, sources, out)
        write_atomic(record, json.dumps(left_out, indent=1, sort_keys=True).encode())
    return _built(out, True, sources, identity, left_out)


def _built(out: Path, built: bool, sources: list[Source], identity: str,
           left_out: dict[str, str]) -> Built:
    kept = tuple(s for s in sources if s.path.name not in left_out)
    return Built(out, built, kept, identity, tuple(sorted(left_out.items())))


def _read_record(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _compile(kind: str, cc: str, folder: Path, sources: list[Source], out: Path
             ) -> dict[str, str]:
    """Build ``out``; returns the variant sources left out, with the compiler's words."""
    left_out: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="backplane-neon-build-") as tmp:
        work = Path(tmp)
        pic = ("-fPIC",) if kind == "library" else ()

        def obj(s: Source) -> Path | None:
            o = work / (s.path.name[:-2].replace(".", "_") + ".o")
            suffix = "" if s.variant == "base" else f"__{s.variant}"
            try:
                _run([cc, *COMMON_FLAGS, *pic, f"-march={MARCH[s.variant]}",
                      f"-DBP_VARIANT_SUFFIX={suffix}", "-I", str(folder), "-c", str(s.path),
                      "-o", str(o)], s.path.name)
            except CompileError as exc:
                if s.variant == "base":
                    raise
                left_out[s.path.name] = exc.vendor_message or str(exc)
                return None
            return o

        with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
            built = list(pool.map(obj, sources))
        kept = [s for s, o in zip(sources, built) if o is not None]
        objects = [str(o) for o in built if o is not None]
        staged = work / out.name
        if kind == "library":
            _run([cc, "-shared", "-o", str(staged), *objects, "-lm"], "linking")
        else:
            table = work / "bp_table.c"
            table.write_text(table_source(kept))
            _run([cc, *COMMON_FLAGS, "-static", f"-march={MARCH['base']}", "-I", str(folder),
                  str(folder / HARNESS), str(table), *objects, "-lm", "-o", str(staged)],
                 "linking the harness")
        tmp_out = out.with_name(f".{out.name}.{os.getpid()}")
        shutil.copyfile(staged, tmp_out)
        os.chmod(tmp_out, 0o755)
        os.replace(tmp_out, out)
    return left_out


def _run(cmd: list[str], what: str) -> None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S,
                              env={**os.environ, "LC_ALL": "C"})  # plain ASCII messages
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise CompileError(f"building the NEON kernels ({what}) failed: {exc}",
                           backend=BACKEND, vendor_message=str(exc)) from exc
    if done.returncode != 0:
        words = (done.stderr or done.stdout).strip()
        if len(words) > 4000:
            words = words[:4000] + " ..."
        raise CompileError(f"building the NEON kernels ({what}) failed with exit code "
                           f"{done.returncode}: {' '.join(cmd[:2])} ...:\n{words}",
                           backend=BACKEND, vendor_message=words)
