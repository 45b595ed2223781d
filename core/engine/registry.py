"""The plugin registry: finds backends by entry point, survives broken ones, names devices.

Discovery reads the entry points of the group ``backplane.backends`` (through stevedore),
drops what ``BACKPLANE_PLUGINS`` / ``BACKPLANE_DISABLE_PLUGINS`` exclude *before importing
anything*, then loads the rest one by one. A plugin that fails to import, to construct, or
declares an api_version outside the supported window is recorded with its reason,
distribution and version; discovery goes on. One written for an older API version inside
the window loads with a :class:`~backplane.sdk.errors.PluginDeprecationWarning` naming what to
change (:data:`~backplane.sdk.contract.API_CHANGES`), and is held to that version's rules.
A third-party plugin is first imported and probed in a child process
(:mod:`backplane.engine.isolation`): one that crashes, exits, hangs or exhausts memory there is
recorded as failed and never imported here. Probing runs each backend's ``probe`` in its own
daemon thread, bounded by ``BACKPLANE_PROBE_TIMEOUT_S``: a probe that raises or hangs marks
only its own backend as failed.

Device ids are ``BACKEND:INDEX`` in the order the backend's probe returned them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any

from backplane.engine import isolation
from backplane.sdk.contract import (API_VERSION, DEVICE_KINDS, MIN_API_VERSION, PRECISIONS, Backend,
                                    Capabilities, Device, changes_since)
from backplane.sdk.env import ALWAYS_LOADED, debug, env_list, probe_timeout_s
from backplane.sdk.errors import (DeviceNotFoundError, DeviceUnavailable, PluginDeprecationWarning,
                                  PluginLoadError, UnsupportedError, did_you_mean)
from backplane.sdk.hooks import plugin_manager, register_hooks

log = logging.getLogger("backplane")

GROUP = "backplane.backends"
#: The oracle and last resort; loaded whatever the allow and deny lists say.

# Plugin states.
READY = "ready"          # loaded, probed, has at least one device
NO_DEVICE = "no-device"  # loaded and healthy, but no device on this machine (reason says why)
FAILED = "failed"        # import, construction, api_version or probe failed (reason says why)
DISABLED = "disabled"    # excluded by BACKPLANE_PLUGINS or BACKPLANE_DISABLE_PLUGINS
LOADED = "loaded"        # loaded, not probed yet


@dataclass
class PluginRecord:
    """What discovery found out about one backend entry point."""

    name: str
    entry_point: str
    state: str
    reason: str = ""
    distribution: str | None = None
    distribution_version: str | None = None
    api_version: int | None = None
    plugin_version: str | None = None
    devices: list[str] = field(default_factory=list)
    probe_seconds: float | None = None
    deprecation: str = ""
    """For a plugin written for a deprecated API version: what to change (also warned)."""
    isolated: bool = False
    """Whether it was first imported and probed in a child process (a third-party plugin)."""
    side_effects: list[str] = field(default_factory=list)
    """What importing and probing it changed in the check process (it is loaded anyway)."""
    exception: BaseException | None = field(default=None, repr=False)
    traceback: str = field(default="", repr=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as printed by ``backplane plugins --json``."""
        d = dataclasses.asdict(self)
        d.pop("exception")
        d["error_type"] = type(self.exception).__name__ if self.exception else None
        if not debug():
            d.pop("traceback")
        return d


_dist_index: dict[tuple[str, str], isolation.Target] | None = None


def _installed() -> dict[tuple[str, str], isolation.Target]:
    """Every entry point of the group with its distribution, version and install location
    (the first distribution of a name on the path, as imports see it); read once per
    discovery, on demand."""
    global _dist_index
    if _dist_index is None:
        from importlib.metadata import entry_points

        index, about = {}, {}
        for ep in entry_points(group=GROUP):
            dist = ep.dist
            path = getattr(dist, "_path", None)  # (relative for a '' on sys.path)
            where = os.path.abspath(str(path)) if path else None
            if where not in about:  # (metadata is parsed anew on each read: once per dist)
                try:
                    stamp = os.stat(where).st_mtime_ns if where else 0
                except OSError:
                    stamp = 0
                meta = dist.metadata if dist is not None else {}
                about[where] = (meta.get("Name"), meta.get("Version"), where, stamp)
            index.setdefault((ep.name, ep.value), isolation.Target(ep.name, ep.value,
                                                                   *about[where]))
        _dist_index = index
    return _dist_index


def _distribution_of(name: str, value: str) -> tuple[str | None, str | None]:
    """The distribution (name, version) declaring an entry point."""
    target = _installed().get((name, value))
    return (target.distribution, target.version) if target else (None, None)


class Registry:
    """Every backend entry point, its state, and the devices of the healthy ones.

    Create one with :func:`registry`; it is shared by the process and thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.records: dict[str, PluginRecord] = {}
        self.backends: dict[str, Backend] = {}
        self._devices: dict[str, list[Device]] | None = None
        self.probe_timeout_s = probe_timeout_s()
        self._discover()

    # -- discovery -------------------------------------------------------------------------

    def _discover(self) -> None:
        from stevedore import NamedExtensionManager

        global _dist_index
        _dist_index = None  # (packages may have been installed since the last discovery)
        # A manager asked for no names imports nothing; it only lists the group.
        entry_points = NamedExtensionManager(
            GROUP, names=[], on_missing_entrypoints_callback=None).list_entry_points()
        allow, deny = env_list("BACKPLANE_PLUGINS"), env_list("BACKPLANE_DISABLE_PLUGINS")
        names = []
        for ep in entry_points:
            if ep.name in self.records:  # the same name declared twice: the first one wins
                dist, version = _distribution_of(ep.name, ep.value)
                log.warning("backplane: backend name '%s' is declared twice: '%s' is used, "
                            "'%s'%s is ignored; uninstall one of them", ep.name,
                            self.records[ep.name].entry_point, ep.value,
                            f" (from {dist} {version})" if dist else "")
                continue
            record = PluginRecord(ep.name, ep.value, LOADED)
            self.records[ep.name] = record
            if ep.name not in ALWAYS_LOADED and allow and ep.name not in allow:
                record.state, record.reason = DISABLED, "not listed in BACKPLANE_PLUGINS"
            elif ep.name not in ALWAYS_LOADED and ep.name in deny:
                record.state, record.reason = DISABLED, "listed in BACKPLANE_DISABLE_PLUGINS"
            else:
                names.append(ep.name)
        for wanted in allow:
            if wanted not in self.records:
                log.warning("backplane: BACKPLANE_PLUGINS names '%s', which no installed package "
                            "provides.%s", wanted, did_you_mean(wanted, self.records))
        names = self._screen(names)

        def on_failure(_manager: Any, ep: Any, exc: BaseException) -> None:
            self._fail(self.records[ep.name], f"import failed: {type(exc).__name__}: {exc}", exc)

        keep = {(n, self.records[n].entry_point) for n in names}

        class Chosen(NamedExtensionManager):
            """Imports only the entry points kept: of a name declared twice, the first (the
            other is ignored, so it is not imported either)."""

            def _load_one_plugin(self, ep: Any, *args: Any, **kwargs: Any) -> Any:
                if (ep.name, ep.value) not in keep:
                    return None
                return super()._load_one_plugin(ep, *args, **kwargs)

        manager = Chosen(GROUP, names=names, on_load_failure_callback=on_failure,
                         on_missing_entrypoints_callback=None)
        for ext in manager.extensions:
            self._accept(self.records[ext.name], ext.plugin)

    def _screen(self, names: list[str]) -> list[str]:
        """Check the plugins about to be imported in child processes first (every one not
        built in, or per ``BACKPLANE_ISOLATE``); the names still to import."""
        chosen = isolation.mode()
        if chosen == "off" or chosen == "third-party" and all(
                isolation.built_in(self.records[n].entry_point) for n in names):
            return names  # (nothing to check: no package metadata is read)
        installed = _installed()
        targets = [installed.get((n, self.records[n].entry_point)) or isolation.Target(
            n, self.records[n].entry_point) for n in names
            if chosen == "all" or not isolation.built_in(self.records[n].entry_point)]
        found = isolation.verdicts(targets, list(installed.values()), self.probe_timeout_s)
        for name, verdict in found.items():
            record = self.records[name]
            record.isolated, record.side_effects = True, list(verdict.side_effects)
            if verdict.state != isolation.OK:
                self._fail(record, verdict.reason, detail=verdict.detail)
        return [n for n in names if self.records[n].state != FAILED]

    def _accept(self, record: PluginRecord, plugin: Any) -> None:
        """Construct and validate one loaded plugin object."""
        try:
            backend = plugin() if isinstance(plugin, type) else plugin
        except Exception as exc:
            return self._fail(record, f"constructor raised {type(exc).__name__}: {exc}", exc)
        version = getattr(backend, "api_version", None)
        record.api_version = version if isinstance(version, int) else None
        record.plugin_version = str(getattr(backend, "version", "") or "") or None
        if not isinstance(version, int) or isinstance(version, bool):
            return self._fail(record, "declares no integer api_version; set the class "
                                      f"attribute api_version = {API_VERSION}")
        if not MIN_API_VERSION <= version <= API_VERSION:
            newer = version > API_VERSION
            return self._fail(
                record, f"written for backend API {version}; this backplane supports "
                f"{MIN_API_VERSION} to {API_VERSION}. "
                + ("Upgrade backplane-hal, or install a release of the plugin written for "
                   f"API {API_VERSION}." if newer else
                   f"Upgrade the plugin to a release written for API {API_VERSION}."))
        if version < API_VERSION:
            self._deprecated(record, version)
        if getattr(backend, "name", None) != record.name:
            return self._fail(record, f"declares name {getattr(backend, 'name', None)!r} but its "
                                      f"entry point is named {record.name!r}; they must match")
        if not callable(getattr(backend, "probe", None)):
            return self._fail(record, "has no probe() method")
        try:
            caps = backend.capabilities
        except Exception as exc:
            return self._fail(record, f"capabilities raised {type(exc).__name__}: {exc}", exc)
        if not isinstance(caps, Capabilities):
            return self._fail(record, f"capabilities is a {type(caps).__name__}, not "
                                      "backplane.Capabilities")
        unknown = sorted(set(caps.precisions) - set(PRECISIONS))
        if unknown and version >= 2:
            return self._fail(record, f"declares precisions {unknown}, which are not among "
                                      f"backplane.PRECISIONS {list(PRECISIONS)}")
        self.backends[record.name] = backend

    def _deprecated(self, record: PluginRecord, version: int) -> None:
        """Warn once that ``record``'s plugin is written for a deprecated API version."""
        changes = changes_since(version)
        record.distribution, record.distribution_version = _distribution_of(
            record.name, record.entry_point)
        dist = f" (from {record.distribution} {record.distribution_version})" \
            if record.distribution else ""
        record.deprecation = (
            f"backend plugin '{record.name}'{dist} is written for backend API {version}, which "
            f"is deprecated: backplane implements API {API_VERSION} and loads API {version} "
            f"plugins through an adapter until a release drops it (docs/api-stability.md). "
            f"To move to API {API_VERSION}: " + "; ".join(changes)
            + f"; then set api_version = {API_VERSION}.")
        warnings.warn(record.deprecation, PluginDeprecationWarning, stacklevel=2)

    def _fail(self, record: PluginRecord, reason: str, exc: BaseException | None = None,
              detail: str = "") -> None:
        record.state, record.reason, record.exception = FAILED, reason, exc
        record.traceback = "".join(traceback.format_exception(exc)) if exc else detail
        record.distribution, record.distribution_version = _distribution_of(
            record.name, record.entry_point)
        self.backends.pop(record.name, None)
        where = f" (from {record.distribution} {record.distribution_version})" \
            if record.distribution else ""
        log.warning("backplane: backend plugin '%s'%s is unavailable: %s%s",
                    record.name, where, reason,
                    f"\n{detail}" if detail and debug() else "",
                    exc_info=exc if debug() else None)

    # -- probing ---------------------------------------------------------------------------

    def _probe_all(self) -> dict[str, list[Device]]:
        with self._lock:
            if self._devices is not None:
                return self._devices
            results: dict[str, Any] = {}
            threads = {}
            for name, backend in list(self.backends.items()):
                t = threading.Thread(target=_probe_one, args=(backend, results, name),
                                     name=f"backplane-probe-{name}", daemon=True)
                threads[name] = (t, time.perf_counter())
                t.start()
            deadline = time.monotonic() + self.probe_timeout_s
            devices: dict[str, list[Device]] = {}
            for name, (t, started) in threads.items():
                t.join(max(0.0, deadline - time.monotonic()))
                record = self.records[name]
                outcome = results.get(name)
                if outcome is None:
                    self._fail(record, f"probe did not return within {self.probe_timeout_s:g} s "
                                       "(BACKPLANE_PROBE_TIMEOUT_S); the backend is skipped")
                    continue
                record.probe_seconds = round(outcome[2] - started, 6)
                self._record_probe(record, outcome[0], outcome[1], devices)
            self._devices = devices
            return devices

    def _record_probe(self, record: PluginRecord, found: Any, exc: BaseException | None,
                      devices: dict[str, list[Device]]) -> None:
        name = record.name
        if isinstance(exc, DeviceUnavailable):
            record.state, record.reason = NO_DEVICE, str(exc)
            return
        if exc is not None:
            return self._fail(record, f"probe raised {type(exc).__name__}: {exc}", exc)
        if not isinstance(found, list) or not all(isinstance(d, Device) for d in found):
            return self._fail(record, "probe must return a list of backplane.Device, got "
                                      f"{type(found).__name__}")
        api = record.api_version or API_VERSION
        if not found:
            record.state, record.reason = NO_DEVICE, "probe found no device" + (
                "" if api < 2 else " (and gave no reason: raise DeviceUnavailable('why'))")
            return
        odd = [d.kind for d in found if d.kind not in DEVICE_KINDS]
        if odd and api >= 2:
            return self._fail(record, f"probe returned devices of kind {sorted(set(odd))}; a "
                                      f"device's kind is one of {', '.join(DEVICE_KINDS)}")
        if odd:  # API 1: kinds were free text
            found = [d if d.kind in DEVICE_KINDS else dataclasses.replace(
                d, kind=d.kind.lower() if d.kind.lower() in DEVICE_KINDS else "accelerator")
                for d in found]
        stamped = [dataclasses.replace(d, backend=name, index=i) for i, d in enumerate(found)]
        devices[name] = stamped
        record.state, record.reason = READY, ""
        record.devices = [d.id for d in stamped]

    # -- queries ---------------------------------------------------------------------------

    def devices(self) -> list[Device]:
        """Every device of every healthy backend, best backends first (fixed order)."""
        found = self._probe_all()
        order = sorted(found, key=lambda n: (-getattr(self.backends[n], "priority", 0), n))
        return [d for name in order for d in found[name]]

    def plugins(self) -> list[PluginRecord]:
        """Every backend entry point with its final state (probing if not done yet)."""
        self._probe_all()
        for record in self.records.values():
            if record.distribution is None:
                record.distribution, record.distribution_version = _distribution_of(
                    record.name, record.entry_point)
        return sorted(self.records.values(), key=lambda r: r.name)

    def backend(self, name: str) -> Backend:
        """The loaded backend called ``name``; raises PluginLoadError with the cause if not."""
        if name in self.backends:
            return self.backends[name]
        record = self.records.get(name)
        if record is None:
            raise PluginLoadError(f"no backend named '{name}'; installed backends: "
                                  f"{', '.join(sorted(self.records)) or 'none'}."
                                  f"{did_you_mean(name, self.records)}")
        raise PluginLoadError(f"backend '{name}' is {record.state}: {record.reason}") \
            from record.exception

    def resolve_devices(self, devices: Any) -> tuple[bool, list[Device]]:
        """(explicit, devices in rank order) for a session's ``devices=`` argument: "auto"
        (``BACKPLANE_DEVICES`` when set, else every device), or device ids, backend names
        and Device objects, in the order given."""
        if isinstance(devices, str) and devices == "auto":
            names = devices_from_env()
            if names is None:
                found = self.devices()
                if not found:
                    raise UnsupportedError("no device is available: every backend failed or "
                                           "has no device; run 'backplane plugins' to see why")
                return False, found
        elif isinstance(devices, (str, Device)):
            names = [devices]
        else:
            names = list(devices)
        chosen: list[Device] = []
        for name in names:
            for d in self.resolve(name.id if isinstance(name, Device) else name):
                if d not in chosen:
                    chosen.append(d)
        if not chosen:
            raise UnsupportedError("devices= names no device; pass device ids or backend "
                                   "names, or 'auto'")
        return True, chosen

    def resolve(self, spec: str) -> list[Device]:
        """The devices a name denotes: ``BACKEND:INDEX`` is one device, ``BACKEND`` all of its.

        Raises DeviceNotFoundError naming the stored cause of a failed backend, the names
        that exist, and a did-you-mean.
        """
        found = self._probe_all()
        spec = str(spec).strip()
        backend, sep, index = spec.partition(":")
        known = sorted(self.records) + [d.id for ds in found.values() for d in ds]
        record = self.records.get(backend)
        if record is None:
            raise DeviceNotFoundError(
                f"unknown device or backend '{spec}'; known names: {', '.join(known) or 'none'}."
                f"{did_you_mean(spec, known)}")
        if record.state != READY:
            why = {FAILED: "failed", DISABLED: "is disabled", NO_DEVICE: "has no device here"}
            raise DeviceNotFoundError(
                f"device '{spec}' is not available: backend '{backend}' "
                f"{why.get(record.state, record.state)}: {record.reason}. "
                f"Available devices: {', '.join(d.id for d in self.devices()) or 'none'}."
            ) from record.exception
        devices = found[backend]
        if not sep:
            return list(devices)
        if not index.isdigit() or int(index) >= len(devices):
            raise DeviceNotFoundError(
                f"device '{spec}' does not exist; backend '{backend}' has "
                f"{', '.join(d.id for d in devices)}.{did_you_mean(spec, known)}")
        return [devices[int(index)]]


def _probe_one(backend: Backend, results: dict[str, Any], name: str) -> None:
    try:
        found = backend.probe()
        results[name] = (found, None, time.perf_counter())
    except BaseException as exc:  # a probe must never take the process down
        results[name] = (None, exc, time.perf_counter())


_registry: Registry | None = None
_registry_lock = threading.Lock()


def registry(refresh: bool = False) -> Registry:
    """The process's registry, discovered on first use (or again with ``refresh=True``)."""
    global _registry
    with _registry_lock:
        if _registry is not None and not refresh:
            return _registry
        old, _registry = _registry, Registry()
        new = _registry
    # Hooks run outside the lock: an implementation may itself ask for the registry.
    _notify_loaded(new, old)
    return new


def devices() -> list[Device]:
    """Every available device, as :meth:`Registry.devices`."""
    return registry().devices()


def plugin_records() -> list[PluginRecord]:
    """Every backend plugin with its state, as :meth:`Registry.plugins`.

    (Not called ``plugins``: that is the name of the built-in plugins' package.)
    """
    return registry().plugins()


def devices_from_env() -> list[str] | None:
    """``BACKPLANE_DEVICES`` as an ordered list, or None when unset."""
    names = env_list("BACKPLANE_DEVICES")
    return names or None


def _notify_loaded(reg: Registry, old: Registry | None = None) -> None:
    pm = plugin_manager()
    for backend in (old.backends.values() if old else ()):
        if pm.is_registered(backend):  # a refreshed registry replaces the old objects
            pm.unregister(backend)
    for name, backend in reg.backends.items():
        register_hooks(pm, backend, f"backend:{name}")
    for record in reg.records.values():
        pm.hook.backplane_plugin_loaded(record=record)
