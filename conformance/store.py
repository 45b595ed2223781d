"""Stored conformance results, for planning: which op x dtype variants passed where.

Every ``backplane conformance run`` stores a summary of its report in the per-user data
folder (``<data dir>/conformance/<backend>/<device fingerprint>.json``), keyed by backend,
plugin version and device. The scheduler asks :func:`variant_status` or
:func:`failed_variants` and leaves failed variants off that device.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from .runner import PASSING


def _folder() -> Path:
    from backplane.hardware.db import data_dir

    return data_dir() / "conformance"


def _path(backend: str, fingerprint: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", backend)
    return _folder() / safe / f"{re.sub(r'[^A-Za-z0-9._-]', '_', fingerprint)}.json"


def save(report: Any) -> Path:
    """Store a report's per-variant outcome (the worst status per op x dtype)."""
    variants: dict[str, str] = {}
    for c in report.to_dict()["cases"]:
        key = f"{c['op']}|{c['dtype']}"
        ok = c["status"] in PASSING
        if key not in variants or (not ok and variants[key] == "passed"):
            variants[key] = "passed" if ok else "failed"
    data = {"backend": report.backend["name"], "version": report.backend.get("version"),
            "device": report.device, "started": report.started, "tier": report.tier,
            "variants": variants}
    path = _path(report.backend["name"], report.device.get("fingerprint") or report.device["id"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)
    return path


def _load(backend: str, fingerprint: str) -> dict[str, Any] | None:
    try:
        return json.loads(_path(backend, fingerprint).read_text())
    except (OSError, ValueError):
        return None


def variant_status(backend: str, fingerprint: str, op: str, dtype: str,
                   version: str | None = None) -> str | None:
    """"passed", "failed", or None when no stored run covered that variant (or the stored
    run was of another plugin version, when ``version`` is given)."""
    data = _load(backend, fingerprint)
    if data is None or (version is not None and data.get("version") != version):
        return None
    return data["variants"].get(f"{op}|{dtype}")


def failed_variants(backend: str, fingerprint: str, version: str | None = None
                    ) -> set[tuple[str, str]]:
    """Every (op, dtype) that failed in the stored run of a backend on a device."""
    data = _load(backend, fingerprint)
    if data is None or (version is not None and data.get("version") != version):
        return set()
    return {tuple(k.split("|", 1)) for k, v in data["variants"].items() if v == "failed"}
