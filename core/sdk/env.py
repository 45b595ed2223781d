"""What the environment says: debug mode, the plugin allow and deny lists, and the one
probe-time policy every probe and probe child follows.

``BACKPLANE_PROBE_TIMEOUT_S`` is the registry's deadline for each backend's ``probe``
(default 5 s). A probe that starts a child of its own gives it a share of that deadline
(:func:`probe_budget_s`: 90% by default, so the probe can still answer when its child
times out), within the cap that probe states.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("backplane")

#: Backends loaded whatever the allow and deny lists say (the last resort of planning).
ALWAYS_LOADED = ("reference",)
#: The registry's deadline for one backend's probe, unless BACKPLANE_PROBE_TIMEOUT_S says.
DEFAULT_PROBE_TIMEOUT_S = 5.0


def debug() -> bool:
    """Whether ``BACKPLANE_DEBUG`` asks for tracebacks with warnings."""
    return os.environ.get("BACKPLANE_DEBUG", "") not in ("", "0")


def env_list(name: str) -> list[str]:
    """The comma-separated names in environment variable ``name`` (empty when unset)."""
    return [x.strip() for x in os.environ.get(name, "").split(",") if x.strip()]


def plugin_enabled(name: str) -> bool:
    """Whether backend ``name`` may be loaded under ``BACKPLANE_PLUGINS`` and
    ``BACKPLANE_DISABLE_PLUGINS`` (read now; nothing is loaded)."""
    allow, deny = env_list("BACKPLANE_PLUGINS"), env_list("BACKPLANE_DISABLE_PLUGINS")
    if name in ALWAYS_LOADED:
        return True
    return (not allow or name in allow) and name not in deny


def env_seconds(name: str, default: float, *, none: bool = False) -> float | None:
    """A positive number of seconds from the environment variable ``name``, else
    ``default`` (a malformed value warns and uses it). With ``none``, ``0``, ``none`` or
    ``off`` mean no limit (None)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if none and raw.lower() in ("0", "none", "off"):
        return None
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        log.warning("backplane: %s=%r is not a positive number of seconds; using %g", name,
                    raw, default)
        return default
    return value


def probe_timeout_s() -> float:
    """The registry's deadline for each backend's probe (``BACKPLANE_PROBE_TIMEOUT_S``)."""
    return env_seconds("BACKPLANE_PROBE_TIMEOUT_S", DEFAULT_PROBE_TIMEOUT_S)  # type: ignore


def probe_budget_s(cap: float | None, share: float = 0.9, floor: float = 0.0) -> float:
    """Seconds a probe's own child (or one check in it) may take: ``share`` of the
    registry's deadline, at most ``cap`` (None: however long the deadline was set to), at
    least ``floor``."""
    budget = share * probe_timeout_s()
    if cap is not None:
        budget = min(cap, budget)
    return max(floor, budget)
