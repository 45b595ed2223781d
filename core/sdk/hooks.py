"""The plugin manager: pluggy carrying the ``backplane_*`` hooks of :mod:`.hookspecs`.

Hooks are called through pluggy's own machinery, ``plugin_manager().hook.backplane_NAME``.
It holds every object named by an entry point of the group ``backplane.hooks`` (the
hardware database's and the conformance suite's own implementations among them) and every
loaded backend that implements hooks (registered by the registry). A broken implementation
is its plugin's fault only: it is logged and skipped, the others' results are kept.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any

import pluggy

from backplane.sdk import hookspecs
from backplane.sdk.env import debug

log = logging.getLogger("backplane")

#: The entry-point group of hook implementations that are not backends.
HOOK_GROUP = "backplane.hooks"


class _PluginManager(pluggy.PluginManager):
    """pluggy's PluginManager, with every implementation guarded as it is registered.

    Hooks are called through pluggy (``pm.hook.backplane_NAME(...)``), which stops a whole
    call at the first implementation that raises. Here each plain implementation is wrapped
    when registered: one that raises is logged as a warning (traceback under
    ``BACKPLANE_DEBUG``) and counts as having returned None, so the others still run and keep
    their results, and the application goes on. Wrappers (``wrapper=True`` or
    ``hookwrapper=True``) are left as pluggy runs them: they wrap the call, errors included.
    (A historic spec would replay its calls inside ``super().register``, before the guard:
    see hookspecs for why none is historic.)
    """

    def register(self, plugin: Any, name: str | None = None) -> str | None:
        """Register ``plugin`` as pluggy does, then guard its implementations."""
        plugin_name = super().register(plugin, name)
        if plugin_name is not None:
            for caller in self.get_hookcallers(plugin) or ():
                for impl in caller.get_hookimpls():
                    if impl.plugin is plugin and not (impl.wrapper or impl.hookwrapper):
                        impl.function = _guarded(caller.name, impl.plugin_name, impl.function)
        return plugin_name


def _guarded(hook: str, plugin_name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """``function``, reporting what it raises and returning None instead."""

    @functools.wraps(function)
    def guarded(*args: Any) -> Any:
        try:
            return function(*args)
        except Exception as exc:  # a broken hook implementation is its plugin's fault only
            log.warning("backplane: %s hook of '%s' raised %s: %s", hook, plugin_name,
                        type(exc).__name__, exc, exc_info=exc if debug() else None)
            return None

    return guarded


_pm: pluggy.PluginManager | None = None
_pm_lock = threading.Lock()


def plugin_manager() -> pluggy.PluginManager:
    """The pluggy PluginManager carrying the ``backplane_*`` hooks (:mod:`backplane.sdk.hookspecs`).

    It holds every loaded backend that implements hooks, and every object named by an
    entry point in the group ``backplane.hooks`` (loaded with the same isolation as
    backends: one that fails to import is logged and skipped). Call hooks through it,
    ``plugin_manager().hook.backplane_NAME(arg=...)``: an implementation that raises is
    logged and skipped, the others' results are kept.
    """
    global _pm
    with _pm_lock:
        if _pm is None:
            from stevedore import ExtensionManager

            pm = _PluginManager(hookspecs.PROJECT)
            pm.add_hookspecs(hookspecs)

            def on_failure(_m: Any, ep: Any, exc: BaseException) -> None:
                log.warning("backplane: hook plugin '%s' (%s) failed to load: %s: %s",
                            ep.name, ep.value, type(exc).__name__, exc,
                            exc_info=exc if debug() else None)

            for ext in ExtensionManager(HOOK_GROUP, on_load_failure_callback=on_failure):
                register_hooks(pm, ext.plugin, ext.name)
            _pm = pm
        return _pm


def register_hooks(pm: pluggy.PluginManager, obj: Any, name: str) -> None:
    """Register ``obj``'s hook implementations (a malformed one is logged, not raised)."""
    try:
        if not pm.is_registered(obj):
            pm.register(obj, name=name)
    except Exception as exc:  # a malformed hook implementation is the plugin's fault only
        log.warning("backplane: hooks of '%s' rejected: %s", name, exc)
