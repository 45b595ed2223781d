"""Calibration results: the measured ceilings of each device, in a per-user overlay.

The overlay, ``<data dir>/calibration.json``, is keyed by the device's fingerprint, the
backend and the versions of the backend and its runtime, so a driver or library upgrade is
measured anew instead of trusted. Queries return measured figures beside the datasheet
ones. The measuring itself runs backends, so it is the engine's
(:mod:`backplane.engine.calibration`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from backplane.sdk.cache import write_atomic

OVERLAY_SCHEMA = 1


@dataclass
class Measurement:
    """One measured figure of one device through one backend."""

    key: str
    value: float
    detail: str


@dataclass
class DeviceCalibration:
    """Everything measured on one device, and where it was stored."""

    device: str
    backend: str
    fingerprint: str
    hardware: str
    entry: str | None
    versions: dict[str, str]
    measured_at: str
    measurements: list[Measurement] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    datasheet: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as ``backplane hwdb calibrate --json`` prints it."""
        return {"device": self.device, "backend": self.backend,
                "fingerprint": self.fingerprint, "hardware": self.hardware,
                "entry": self.entry, "versions": self.versions, "measured_at": self.measured_at,
                "measured": {m.key: {"value": m.value, "detail": m.detail}
                             for m in self.measurements},
                "datasheet_or_derived": self.datasheet, "skipped": self.skipped}


def overlay_path() -> Path:
    """Where measured figures are stored."""
    # on use only: the hwdb loads pydantic and its TOML files when asked
    from backplane.hardware.db import data_dir

    return data_dir() / "calibration.json"


def read_overlay() -> list[dict[str, Any]]:
    """Every stored calibration record (an unreadable overlay, or one in a data folder
    that is not private to this user, reads as empty)."""
    # on use only: the hwdb loads pydantic and its TOML files when asked
    from backplane.hardware.db import private_data_dir

    if private_data_dir() is None:
        return []
    path = overlay_path()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(data, dict) or data.get("schema") != OVERLAY_SCHEMA:
        return []
    return [r for r in data.get("records", []) if isinstance(r, dict)]


def _write_overlay(records: list[dict[str, Any]]) -> None:
    # on use only: the hwdb loads pydantic and its TOML files when asked
    from backplane.hardware.db import private_data_dir

    if private_data_dir(create=True) is None:
        raise OSError(f"the data folder {overlay_path().parent} is not private to this user "
                      "(see the warning); the calibration is not stored")
    path = overlay_path()
    data = json.dumps({"schema": OVERLAY_SCHEMA, "records": records}, indent=1).encode()
    # a unique temporary file (0600, mkstemp's), renamed: a concurrent reader sees the old or
    # the new file, and two writers never share a temporary name
    if not write_atomic(path, data):
        raise OSError(f"the calibration overlay {path} cannot be written")


def store(result: DeviceCalibration) -> None:
    """Add a calibration to the overlay, replacing the record with the same key."""
    record = result.to_dict()
    key = (record["fingerprint"], record["backend"], json.dumps(record["versions"], sort_keys=True))
    kept = [r for r in read_overlay()
            if (r.get("fingerprint"), r.get("backend"),
                json.dumps(r.get("versions"), sort_keys=True)) != key]
    _write_overlay(kept + [record])


def measured_for(fingerprint: str | None = None, entry: str | None = None
                 ) -> dict[str, dict[str, Any]]:
    """The best measured value of each figure for a device fingerprint or an entry id.

    Returns ``{figure: {"value", "backend", "measured_at", "detail"}}``; the highest value
    wins for rates and bandwidth, the lowest for launch overhead.
    """
    best: dict[str, dict[str, Any]] = {}
    for r in read_overlay():
        if (fingerprint and r.get("fingerprint") != fingerprint) or \
                (entry and r.get("entry") != entry):
            continue
        for key, m in (r.get("measured") or {}).items():
            value = m.get("value")
            if not isinstance(value, (int, float)):
                continue
            lower_is_better = key.endswith("_us")
            old = best.get(key)
            if old is None or (value < old["value"] if lower_is_better else value > old["value"]):
                best[key] = {"value": value, "backend": r.get("backend"),
                             "measured_at": r.get("measured_at"), "detail": m.get("detail")}
    return best


def measured_for_entry(entry_id: str) -> dict[str, dict[str, Any]]:
    """The best measured figures of every device matched to ``entry_id``."""
    return measured_for(entry=entry_id)
