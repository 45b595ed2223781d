"""The hardware layer's hook implementations (entry point ``hwdb`` of the group
``backplane.hooks``): backend plugins match their devices to hwdb entries through them,
never by importing this layer.

Loaded with every plugin manager, at discovery too: the hwdb (pydantic, the TOML files) is
imported only when a device is matched.
"""

from __future__ import annotations

import logging
from typing import Any

from backplane.sdk.hookspecs import hookimpl

log = logging.getLogger("backplane")


@hookimpl
def backplane_hwdb_match(kind: str, name: str, vendor: str, source: str,
                         facts: dict[str, Any]) -> tuple[str, str] | None:
    """The best hwdb entry for the device and its rule (:func:`backplane.hardware.match.match`),
    or None when none matches or the database cannot be read."""
    try:
        # on use only: discovery loads this module, and must stay light
        from backplane.hardware.db import load
        from backplane.hardware.match import match
        from backplane.hardware.probe import Hardware

        found = match(Hardware(kind, name, vendor, source, dict(facts)),
                      [x.entry for x in load()])
    except Exception as exc:  # the database is optional to listing devices: no entry, quietly
        log.debug("backplane: no hwdb match for %s %r: %s: %s", kind, name,
                  type(exc).__name__, exc)
        return None
    if found.entry_id is None:
        return None
    return found.entry_id, found.rule or ""
