"""Plugin isolation: a third-party backend plugin is imported and probed in a child process
before this process imports it.

A plugin that segfaults, calls ``os._exit`` or ``sys.exit``, hangs or exhausts memory while
being imported, constructed or probed takes only that child down; the registry records it as
failed with what it did and where (``crashed with SIGSEGV while importing``) and never imports
it. One that changes process state (signal handlers, environment variables, the recursion
limit, warnings filters, builtins, excepthooks, the root logger, the working folder) is still
loaded, and the changes are listed on its record (``side_effects``); one that replaces or
removes numpy's or backplane's own functions is refused, because the reference backend and
the conformance oracle compute with numpy and would silently change for every backend.

Which plugins: each entry point of ``backplane.backends`` whose module lies outside the
``backplane`` package, which is every plugin backplane-hal does not ship (the built-in ones run
backplane's own code, in this process). ``BACKPLANE_ISOLATE``: ``all`` checks the built-in
ones too, ``0`` none (:func:`mode`). Not on Windows (no ``fork``-style descriptors and rlimits).

Each plugin gets a child of its own (several run at once). The child caps its data memory
(:data:`MEMORY_LIMIT_BYTES`, ``RLIMIT_DATA``: ``RLIMIT_AS`` would also count the address space
GPU drivers reserve and fail their initialisation), snapshots process state, then announces
and runs each step: import, construction, probe (skipped where the api_version is outside the
supported window, as the registry would). Each step may take ``BACKPLANE_PROBE_TIMEOUT_S``
from its announcement. A Python exception is survivable: the verdict is ``ok`` and the
registry imports the plugin and records the exception as before.

Verdicts are cached as JSON (``cache_dir("plugin-checks")/verdicts-KEY.json``), KEY hashing
every entry point of the group with its distribution, version and install location, the
Python version and the backend API version, so an application pays for a check once per set
of installed plugins. A file is used only after its structure, every field's type and its key
are checked: a corrupt or altered file is ignored and the checks are redone. A timeout is
reused only under the same timeout. ``backplane plugins --recheck`` (:func:`clear`) forgets
every verdict.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backplane.sdk.contract import API_VERSION, MIN_API_VERSION

if TYPE_CHECKING:  # pragma: no cover
    from backplane.sdk.cache import ArtifactCache

# json, signal, subprocess and the cache helpers (hashlib, tempfile) are imported where a
# check or a verdict file is needed: ``import backplane`` and a discovery without
# third-party plugins pay for none of them.

log = logging.getLogger("backplane")

SCHEMA = "backplane-plugin-checks/1"
FOLDER = "plugin-checks"
#: Data memory (heap, anonymous writable mappings) one check may use.
MEMORY_LIMIT_BYTES = 4 * 2**30
#: Seconds a check child may take to start (Python, backplane, numpy) before its first step.
START_TIMEOUT_S = 60.0
OK, FAILED, UNCHECKED = "ok", "failed", "unchecked"
#: Where the child was, in the words of a reason.
WHERE = {"start": "while starting", "import": "while importing",
         "construct": "while constructing the backend", "probe": "in probe()"}
NOT_IMPORTED = " (seen in a check process; never imported into this one)"
#: Modules whose functions a plugin may not replace (the oracle and backplane itself).
GUARDED = ("numpy", "backplane")
_LIMITS = {"reason": 2000, "detail": 8000, "side_effect": 300, "side_effects": 64}
_KEEP_FILES = 16

#: What this process did: checks run in children, verdicts read from the cache.
stats = {"checked": 0, "cached": 0}
_memo: dict[str, dict[str, Verdict]] = {}


@dataclass(frozen=True)
class Target:
    """One entry point to check, with what its verdict depends on."""

    name: str
    value: str
    distribution: str | None = None
    version: str | None = None
    location: str | None = None
    """The distribution's metadata folder; with ``stamp`` (its mtime), a reinstall is new."""
    stamp: int = 0


@dataclass(frozen=True)
class Verdict:
    """What checking one plugin in a child found."""

    state: str
    """``ok`` (import it), ``failed`` (never import it), ``unchecked`` (no child could run)."""
    entry_point: str = ""
    reason: str = ""
    side_effects: tuple[str, ...] = ()
    timeout_s: float | None = None
    """The step timeout a timeout verdict was reached under (None for any other verdict)."""
    detail: str = ""
    """The child's last output (a crash's faulthandler traceback): shown under debug."""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as cached."""
        return {**asdict(self), "side_effects": list(self.side_effects)}

    @classmethod
    def from_dict(cls, data: Any) -> Verdict | None:
        """A cached verdict, or None unless every field is there with its type and bounds."""
        def text(value: Any, limit: int) -> bool:
            return isinstance(value, str) and len(value) <= limit

        def number(value: Any) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0

        if not isinstance(data, dict) or set(data) != set(cls.__dataclass_fields__):
            return None
        effects, timeout = data["side_effects"], data["timeout_s"]
        if (data["state"] not in (OK, FAILED) or not text(data["entry_point"], 1000)
                or not text(data["reason"], _LIMITS["reason"])
                or not text(data["detail"], _LIMITS["detail"])
                or not isinstance(effects, list) or len(effects) > _LIMITS["side_effects"]
                or not all(text(e, _LIMITS["side_effect"]) for e in effects)
                or not (timeout is None or number(timeout) and timeout > 0)
                or not number(data["seconds"])
                or (data["state"] == FAILED) != bool(data["reason"])):
            return None
        return cls(**{**data, "side_effects": tuple(effects)})


def mode() -> str:
    """``third-party`` (default), ``all`` or ``off``, from ``BACKPLANE_ISOLATE``."""
    raw = os.environ.get("BACKPLANE_ISOLATE", "").strip().lower()
    if os.name != "posix" or raw in ("0", "off", "no", "false"):
        return "off"
    if raw == "all":
        return "all"
    if raw not in ("", "1", "on", "yes", "true", "third-party"):
        log.warning("backplane: BACKPLANE_ISOLATE=%r is not 0, 1 or all; third-party plugins "
                    "are checked", raw)
    return "third-party"


def built_in(value: str) -> bool:
    """Whether entry point ``module:attr`` runs backplane's own code (a built-in plugin)."""
    return value.split(":", 1)[0].strip().startswith("backplane.")


def verdicts(targets: list[Target], installed: list[Target],
             timeout_s: float) -> dict[str, Verdict]:
    """The verdict of each target, by name: cached, else checked in children (and cached).

    ``installed`` is every entry point of the group (it makes the cache key); ``timeout_s``
    bounds each step of a check.
    """
    import json

    # on use only: import backplane loads this module, and must not pay for the cache
    from backplane.sdk.cache import cache_key

    # (A built-in entry point's metadata is rewritten by every build of a source tree; its
    # version stands for it.)
    key = cache_key(SCHEMA, tuple(sys.version_info[:3]), sys.prefix, API_VERSION,
                    MEMORY_LIMIT_BYTES, sorted(
                        (t.name, t.value, t.distribution, t.version, t.location,
                         0 if built_in(t.value) else t.stamp) for t in installed))
    files = _verdict_files()
    path = files.path(key)
    known = {**_memo.get(key, {}), **(_read(path, key) if path else {})}

    def stale(t: Target) -> bool:
        v = known.get(t.name)
        return v is None or v.entry_point != t.value or (
            v.timeout_s is not None and v.timeout_s != timeout_s)

    fresh: dict[str, Verdict] = {}
    if any(stale(t) for t in targets):
        with files.lock(key):
            known.update(_read(path, key) if path else {})  # another process may have checked
            todo = [t for t in targets if stale(t)]
            fresh = run_checks(todo, timeout_s) if todo else {}
            known.update(fresh)
            if path and fresh:
                keep = {n: v.to_dict() for n, v in known.items() if v.state != UNCHECKED}
                data = {"schema": SCHEMA, "key": key, "verdicts": keep}
                files.put(key, json.dumps(data, indent=1, sort_keys=True).encode())
        for name, v in sorted(fresh.items()):
            if v.state == OK and v.side_effects:
                log.warning("backplane: backend plugin '%s' changes process state when "
                            "imported (it is loaded): %s", name, "; ".join(v.side_effects))
    stats["cached"] += sum(1 for t in targets if t.name not in fresh)
    _memo[key] = {n: v for n, v in known.items() if v.state != UNCHECKED}
    return {t.name: known[t.name] for t in targets}


def _read(path: Path, key: str) -> dict[str, Verdict]:
    """The verdicts of a cache file; {} for a missing, oversized, corrupt or altered one
    (its content hash, recorded when it was written, is checked first)."""
    try:
        if path.stat().st_size > 2**20:
            return {}
    except OSError:
        return {}
    # on use only: import backplane loads this module, and must not pay for the cache
    from backplane.sdk.cache import read_json

    data = read_json(path)
    if not isinstance(data, dict) or set(data) != {"schema", "key", "verdicts"} or \
            data["schema"] != SCHEMA or data["key"] != key or \
            not isinstance(data["verdicts"], dict):
        return {}
    found = {name: Verdict.from_dict(v) for name, v in data["verdicts"].items()}
    if not all(isinstance(n, str) and v is not None for n, v in found.items()):
        return {}  # one altered entry discredits the file
    return found  # type: ignore[return-value]


def clear() -> int:
    """Forget every cached verdict (in this process and on disk); the number of files removed."""
    _memo.clear()
    return _verdict_files().clear()


def _verdict_files() -> "ArtifactCache":
    """``cache_dir(FOLDER)/verdicts-KEY.json``, the newest :data:`_KEEP_FILES` kept (the
    pruning pattern counts each file's lock too)."""
    # on use only: import backplane loads this module, and must not pay for the cache
    from backplane.sdk.cache import ArtifactCache

    return ArtifactCache(FOLDER, prefix="verdicts-", suffix=".json", keep=2 * _KEEP_FILES,
                         pattern="verdicts-*")


# -- running checks ------------------------------------------------------------------------

def child_env(**extra: str) -> dict[str, str]:
    """This environment for a child that must import what this process imports: its
    ``sys.path`` as PYTHONPATH (an application may have added folders), plus ``extra``."""
    path = os.pathsep.join(os.path.abspath(p) if p else os.getcwd() for p in sys.path)
    return {**os.environ, "PYTHONPATH": path, **extra}


def kill_group(popen: Any) -> None:
    """Kill a child started with ``start_new_session`` and whatever it started."""
    import signal

    try:
        os.killpg(popen.pid, signal.SIGKILL)
    except (AttributeError, ProcessLookupError, PermissionError):
        popen.kill()


class _Check:
    """One running check child and what it has said so far."""

    def __init__(self, target: Target, timeout_s: float) -> None:
        import subprocess
        import tempfile

        self.target, self.timeout_s = target, timeout_s
        self.step, self.since, self.t0 = "start", time.monotonic(), time.monotonic()
        self.said: dict[str, Any] = {}
        self.buffer = b""
        self.output = tempfile.TemporaryFile()
        self.fd, write = os.pipe()
        code = "from backplane.engine.isolation import _child_main; _child_main()"
        try:
            self.popen = subprocess.Popen(
                [sys.executable, "-c", code, str(write), target.name, target.value],
                stdin=subprocess.DEVNULL, stdout=self.output, stderr=subprocess.STDOUT,
                pass_fds=(write,), start_new_session=True, env=child_env(BACKPLANE_ISOLATE="0"))
        except BaseException:
            os.close(self.fd)
            self.output.close()
            raise
        finally:
            os.close(write)

    @property
    def deadline(self) -> float:
        return self.since + (START_TIMEOUT_S if self.step == "start" else self.timeout_s)

    def read(self) -> bool:
        """Take what the child wrote; False once it has ended (its last word said, or its
        end of the pipe closed: a process the plugin forked may hold it open)."""
        import json

        chunk = os.read(self.fd, 65536)
        self.buffer += chunk
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict):
                if message.get("step") in WHERE:
                    self.step, self.since = message["step"], time.monotonic()
                self.said.update(message)
        return bool(chunk) and "end" not in self.said

    def finish(self, timed_out: bool = False) -> Verdict:
        """The verdict, once the child has ended (or was killed for ``timed_out``)."""
        import subprocess

        if timed_out:
            kill_group(self.popen)
        try:
            code = self.popen.wait(timeout=5 if timed_out else max(1.0, self.deadline
                                                                   - time.monotonic()))
        except subprocess.TimeoutExpired:  # it closed its pipe but lives on past the deadline
            kill_group(self.popen)
            code, timed_out = self.popen.wait(), True
        os.close(self.fd)
        self.output.seek(0, os.SEEK_END)
        self.output.seek(max(0, self.output.tell() - _LIMITS["detail"]))
        detail = self.output.read().decode("utf-8", "replace")[-_LIMITS["detail"]:]
        self.output.close()
        reason, timeout = _reason(self.step, self.said, code, timed_out, self.timeout_s)
        state = OK if reason is None else UNCHECKED if self.step == "start" else FAILED
        if state == UNCHECKED:
            last = [line for line in detail.splitlines() if line.strip()][-1:]
            reason = (f"could not be checked in a separate process: it {reason}"
                      f"{f' ({last[0].strip()[:300]})' if last else ''}; "
                      "BACKPLANE_ISOLATE=0 loads it unchecked")
        elif state == FAILED:
            reason += NOT_IMPORTED
        effects = tuple(str(e)[:_LIMITS["side_effect"]] for e in
                        (self.said.get("side_effects") or ())[:_LIMITS["side_effects"]])
        return Verdict(state, self.target.value, (reason or "")[:_LIMITS["reason"]], effects,
                       timeout if state == FAILED else None, detail if reason else "",
                       round(time.monotonic() - self.t0, 3))


def _reason(step: str, said: dict[str, Any], code: int, timed_out: bool,
            timeout_s: float) -> tuple[str | None, float | None]:
    """Why the check failed (None: it passed), and the timeout a timeout verdict used."""
    import signal

    where = WHERE[step]
    if timed_out and step == "start":
        return f"did not start within {START_TIMEOUT_S:g} s", None
    if timed_out:
        what = {"import": f"did not finish importing within {timeout_s:g} s",
                "construct": f"its constructor did not return within {timeout_s:g} s",
                "probe": f"probe did not return within {timeout_s:g} s"}[step]
        return f"{what} (BACKPLANE_PROBE_TIMEOUT_S)", timeout_s
    if "exit" in said:
        return f"called {said.get('how', 'exit')}({said['exit']!r}) {where}", None
    if said.get("oom"):
        return (f"ran out of memory {where} (a check may use "
                f"{MEMORY_LIMIT_BYTES / 2**30:g} GiB)"), None
    if "end" in said and code == 0:
        refused = said.get("refused") or []
        if refused:
            more = f" and {len(refused) - 5} more" if len(refused) > 5 else ""
            return (f"replaces {', '.join(map(str, refused[:5]))}{more}: a plugin may not "
                    "change numpy (the reference backend and the oracle compute with it) or "
                    "backplane for every backend"), None
        return None, None
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        if name == "SIGKILL":
            return (f"was killed by SIGKILL {where} (the kernel's out-of-memory killer "
                    "sends it)"), None
        return f"crashed with {name} {where}", None
    return f"exited with status {code} {where} without returning", None


def run_checks(targets: list[Target], timeout_s: float) -> dict[str, Verdict]:
    """Check each target in a child of its own, a few at once; the verdicts by name."""
    import selectors

    # on use only: import backplane loads this module, and must stay light
    from backplane.sdk.hostfacts import usable_cores

    pending, running, done = list(targets), {}, {}
    slots = max(2, usable_cores() + 1)
    with selectors.DefaultSelector() as selector:
        while pending or running:
            while pending and len(running) < slots:
                target = pending.pop(0)
                try:
                    check = _Check(target, timeout_s)
                except OSError as exc:
                    done[target.name] = Verdict(UNCHECKED, target.value, (
                        f"could not be checked in a separate process ({exc}); "
                        "BACKPLANE_ISOLATE=0 loads it unchecked"))
                    continue
                stats["checked"] += 1
                running[check.fd] = check
                selector.register(check.fd, selectors.EVENT_READ, check)
            wait = min(c.deadline for c in running.values()) - time.monotonic()
            for key, _ in selector.select(max(0.0, wait)):
                if not key.data.read():
                    selector.unregister(key.fd)
                    done[key.data.target.name] = running.pop(key.fd).finish()
            for fd, check in list(running.items()):
                if time.monotonic() >= check.deadline:
                    selector.unregister(fd)
                    done[check.target.name] = running.pop(fd).finish(timed_out=True)
    return done


# -- the child -----------------------------------------------------------------------------

def _child_main() -> None:
    """Import, construct and probe one entry point; say each step and the outcome on a pipe."""
    import faulthandler
    import importlib
    import importlib.metadata
    import json

    fd, name, value = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    pipe = os.fdopen(fd, "w", buffering=1)
    me, real_exit = os.getpid(), os._exit

    def say(**message: Any) -> None:
        pipe.write(json.dumps(message, default=str) + "\n")
        pipe.flush()

    def reporting_exit(status: int) -> None:  # os._exit, telling the parent first
        if os.getpid() == me:  # (not in a child the plugin forked)
            try:
                say(exit=status, how="os._exit")
            except (OSError, ValueError):
                pass
        real_exit(status)

    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_DATA)  # (a lower one stays)
        limit = min(x for x in (soft, hard, MEMORY_LIMIT_BYTES) if x != resource.RLIM_INFINITY)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    except (ImportError, ValueError, OSError):
        pass
    faulthandler.enable()
    try:
        importlib.import_module("numpy")  # so that what the plugin does to it shows
    except ImportError:
        pass
    os._exit = reporting_exit
    before = snapshot()
    outcome: dict[str, Any] = {}
    try:
        say(step="import")
        plugin = importlib.metadata.EntryPoint(name, value, "backplane.backends").load()
        say(step="construct")
        backend = plugin() if isinstance(plugin, type) else plugin
        api = getattr(backend, "api_version", None)
        if isinstance(api, int) and MIN_API_VERSION <= api <= API_VERSION and callable(
                getattr(backend, "probe", None)):
            say(step="probe")
            backend.probe()
    except SystemExit as exc:
        outcome = {"exit": exc.code, "how": "sys.exit"}
    except MemoryError:
        outcome = {"oom": True}
    except BaseException as exc:  # survivable: the registry meets it again and records it
        outcome = {"raised": f"{type(exc).__name__}: {exc}"[:500]}
    refused, effects = changes(before, snapshot())
    say(**outcome, refused=refused, side_effects=effects, end=True)
    pipe.close()
    real_exit(0)  # no atexit handlers or threads of the plugin's


def snapshot() -> dict[str, Any]:
    """The process state a plugin should leave alone (references, compared by identity)."""
    import signal
    import threading
    import warnings

    modules = {n: dict(vars(m)) for n, m in list(sys.modules.items())
               if m is not None and (n == "builtins" or n.split(".")[0] in GUARDED)}
    handlers = {}
    for sig in signal.valid_signals():
        try:
            handlers[sig] = signal.getsignal(sig)
        except (ValueError, OSError):
            pass
    root = logging.getLogger()
    return {"modules": modules, "signals": handlers, "environ": dict(os.environ),
            "recursion": sys.getrecursionlimit(), "warnings": list(warnings.filters),
            "hooks": {"replaces sys.excepthook": sys.excepthook,
                      "replaces sys.displayhook": sys.displayhook,
                      "replaces threading.excepthook": threading.excepthook,
                      "sets a trace function (sys.settrace)": sys.gettrace(),
                      "sets a profile function (sys.setprofile)": sys.getprofile()},
            "logging": (list(root.handlers), root.level), "cwd": os.getcwd()}


def changes(before: dict[str, Any], after: dict[str, Any]) -> tuple[list[str], list[str]]:
    """What changed between two snapshots: (refused: numpy's or backplane's functions
    replaced or removed, by dotted name; side effects, in words)."""
    import signal

    refused, effects = [], []
    for module, old in before["modules"].items():
        if module not in after["modules"]:  # dropped from sys.modules: not a patch
            continue
        new = after["modules"][module]
        touched = [a for a, v in old.items()
                   if not a.startswith("__") and callable(v) and new.get(a) is not v]
        if module == "builtins":
            effects += [f"replaces builtins.{a}" for a in touched]
            continue
        refused += [f"{module}.{a}" for a in touched]
        if module.split(".")[0] == "numpy":  # (new submodules are imports, not patches)
            effects += [f"adds {module}.{a}" for a, v in new.items() if a not in old
                        and not a.startswith("__") and not isinstance(v, type(sys))]
    what = {signal.SIG_IGN: "ignores", signal.SIG_DFL: "restores the default action of"}
    effects += [f"{what.get(handler, 'installs a handler for')} {signal.Signals(sig).name}"
                for sig, handler in after["signals"].items()
                if before["signals"].get(sig, handler) != handler]
    old_env, new_env = before["environ"], after["environ"]
    for var in sorted(set(old_env) | set(new_env)):
        if old_env.get(var) != new_env.get(var):
            verb = "sets" if var not in old_env else "unsets" if var not in new_env else "changes"
            effects.append(f"{verb} environment variable {var}")
    if after["recursion"] != before["recursion"]:
        effects.append(f"sets the recursion limit to {after['recursion']} (was "
                       f"{before['recursion']})")
    added = [f for f in after["warnings"] if f not in before["warnings"]]
    effects += [f"adds a warnings filter ({f[0]}, {getattr(f[2], '__name__', f[2])})"
                for f in added]
    if any(f not in after["warnings"] for f in before["warnings"]):
        effects.append("removes warnings filters")
    elif not added and after["warnings"] != before["warnings"]:
        effects.append("reorders the warnings filters")
    effects += [words for words, fn in after["hooks"].items() if before["hooks"][words] is not fn]
    if after["logging"][0] != before["logging"][0]:
        effects.append("changes the root logger's handlers")
    if after["logging"][1] != before["logging"][1]:
        effects.append("sets the root logger's level to "
                       f"{logging.getLevelName(after['logging'][1])}")
    if after["cwd"] != before["cwd"]:
        effects.append(f"changes the working folder to {after['cwd']}")
    return sorted(set(refused)), effects
