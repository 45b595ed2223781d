"""Stored conformance results, for planning: which op x dtype variants passed where.

Every ``backplane conformance run`` stores a summary of its report in the per-user data
folder (``<data dir>/conformance/<backend>/<device fingerprint>.json``), keyed by backend,
plugin version and device. The scheduler asks :func:`variant_status` or
:func:`failed_variants` and leaves failed variants off that device.

Special values: :func:`special_value_deviations` says how a backend differs from the oracle
on NaN, infinities and the sign of zero, for some ops, from the stored run on the device or
else from the record shipped with backplane (``special_values.toml``, measured on the
machine it names); :func:`special_value_note` puts that in words for a plan, and
:func:`special_value_change` for a re-plan that moves nodes to another backend. All three
are cheap (files read once, then on change) and never raise.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from backplane.conformance.runner import PASSING
from backplane.conformance import specials
from backplane.sdk.cache import write_atomic
from backplane.sdk.contract import DEVICE_KINDS


def _folder() -> Path:
    # on use only: the hwdb loads pydantic and its TOML files when asked
    from backplane.hardware.db import data_dir

    return data_dir() / "conformance"


def store_key(device_id: str, fingerprint: str | None) -> str:
    """The key a run of a device is stored under: its id and its hardware fingerprint
    (``Plan.fingerprints``), or the id alone where the hardware is not matched."""
    return f"{device_id}-{fingerprint}" if fingerprint else device_id


def _path(backend: str, fingerprint: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", backend)
    return _folder() / safe / f"{re.sub(r'[^A-Za-z0-9._-]', '_', fingerprint)}.json"


def save(report: Any) -> Path | None:
    """Store a report's per-variant outcome (the worst status per op x dtype); the file
    written, or None where the data folder is not private to this user or not writable."""
    variants: dict[str, str] = {}
    for c in report.to_dict()["cases"]:
        key = f"{c['op']}|{c['dtype']}"
        ok = c["status"] in PASSING
        if key not in variants or (not ok and variants[key] == "passed"):
            variants[key] = "passed" if ok else "failed"
    data = {"backend": report.backend["name"], "version": report.backend.get("version"),
            "device": report.device, "started": report.started, "tier": report.tier,
            "variants": variants, "special_values": report.special_values(),
            "versions": report.versions}
    before = _load(data["backend"], report.device.get("fingerprint") or report.device["id"])
    if before and all(before.get(k) == data[k] for k in ("version", "versions")):
        # runs of one version add up what they met
        data["special_values"] = specials.union(before.get("special_values") or {},
                                                data["special_values"])
    # on use only: the hwdb loads pydantic and its TOML files when asked
    from backplane.hardware.db import private_data_dir

    path = _path(report.backend["name"], report.device.get("fingerprint") or report.device["id"])
    if private_data_dir(create=True) is None:
        return None  # not this user's own folder (a warning said so): nothing is stored
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError:
        return None
    return path if write_atomic(path, json.dumps(data, indent=1, sort_keys=True).encode()) \
        else None


def _load(backend: str, fingerprint: str) -> dict[str, Any] | None:
    # on use only: the hwdb loads pydantic and its TOML files when asked
    from backplane.hardware.db import private_data_dir

    if private_data_dir() is None:  # not this user's own: nothing there is trusted
        return None
    try:
        data = json.loads(_path(backend, fingerprint).read_text())
    except (OSError, ValueError):
        return None
    variants = data.get("variants") if isinstance(data, dict) else None
    if not isinstance(variants, dict) or not all(
            isinstance(k, str) and "|" in k and v in ("passed", "failed")
            for k, v in variants.items()):
        return None
    return data


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
    return _variants(backend, fingerprint, version, "failed")


def passed_variants(backend: str, fingerprint: str, version: str | None = None
                    ) -> set[tuple[str, str]]:
    """Every (op, dtype) that passed in the stored run of a backend on a device (what
    qualifies it there: :mod:`backplane.engine.runcheck`)."""
    return _variants(backend, fingerprint, version, "passed")


def _variants(backend: str, fingerprint: str, version: str | None,
              status: str) -> set[tuple[str, str]]:
    data = _load(backend, fingerprint)
    if data is None or (version is not None and data.get("version") != version):
        return set()
    return {tuple(k.split("|", 1)) for k, v in data["variants"].items() if v == status}


# --------------------------------------------------------------------------- special values

_cache: dict[Path, tuple[int, dict[str, Any] | None]] = {}


def _recorded(backend: str, device: str) -> dict[str, Any] | None:
    """The stored run of ``backend`` on ``device`` (its store key, or the hardware
    fingerprint the key ends with) that recorded special values; read again on change."""
    # on use only: the hwdb loads pydantic and its TOML files when asked
    from backplane.hardware.db import private_data_dir

    if private_data_dir() is None:  # not this user's own: nothing there is trusted
        return None
    folder = _path(backend, device).parent
    try:
        paths = [_path(backend, device)] + sorted(
            folder.glob(f"*-{_path(backend, device).name}"))
    except OSError:
        return None
    for path in paths:
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            continue
        cached = _cache.get(path)
        if cached is None or cached[0] != mtime:
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                data = None
            cached = _cache[path] = (mtime, data)
        data = cached[1]
        if isinstance(data, dict) and isinstance(data.get("special_values"), dict):
            return data
    return None


def _special_record(backend: str, device: str | None) -> tuple[dict[str, list[str]], str]:
    """(op -> differences, where they were measured) for a backend on a device: its stored
    run there, else the shipped record (for a device of the record's kind, when ``device``
    is a kind); ({}, "") when nothing is known."""
    if device and device not in DEVICE_KINDS:
        data = _recorded(backend, device)
        if data is not None:
            return data["special_values"], "measured on this device"
    entry = specials.shipped().get(backend)
    if entry is None or (device in DEVICE_KINDS and entry.get("kind") != device):
        return {}, ""
    versions = str(entry.get("versions") or "")
    versions = f", {versions}" if versions and len(versions) <= 40 else ""  # a note stays short
    return entry.get("ops") or {}, f"recorded on {entry.get('device')}{versions}"


def special_value_deviations(backend: str, device: str | None, ops: Iterable[str]
                             ) -> dict[str, list[str]]:
    """How ``backend`` differs from the oracle on special values for each of ``ops`` that
    it differs on: op -> differences in words (``["Relu(NaN) = 0, expected NaN"]``).

    ``device`` is a device's hardware fingerprint (``Plan.fingerprints``), its store key
    (``<device id>-<fingerprint>``), a device kind (``"cpu"``) or None: a stored run on
    that device answers first, then the record shipped with backplane for the backend (of
    that kind). Unknown backends and ops are left out; nothing raises.
    """
    try:
        found, _ = _special_record(backend, device)
        return {op: list(found[op]) for op in dict.fromkeys(ops) if found.get(op)}
    except Exception:  # a broken store or record is no answer, never a planning failure
        return {}


def _ops_by_backend(plan: Any) -> dict[tuple[str, str], list[str]]:
    """(backend, device id) -> the ops a plan runs there, in order."""
    op_of = {p.node: p.op for p in plan.placements}
    out: dict[tuple[str, str], list[str]] = {}
    for part in plan.partitions:
        ops = out.setdefault((part.backend, part.device), [])
        ops += [op_of[n] for n in part.nodes if n in op_of and op_of[n] not in ops]
    return out


def _deviations_in_plan(plan: Any) -> dict[tuple[str, str], tuple[dict[str, list[str]], str]]:
    """(backend, device id) -> (op -> differences, where measured), for a plan's ops."""
    fingerprints = getattr(plan, "fingerprints", None) or {}
    out = {}
    for (backend, device), ops in _ops_by_backend(plan).items():
        found, where = _special_record(backend, fingerprints.get(device))
        out[(backend, device)] = ({op: found[op] for op in ops if found.get(op)}, where)
    return out


def _words(found: dict[str, list[str]], per_op: int = 2) -> str:
    return "; ".join(t for texts in found.values() for t in texts[:per_op])


def special_value_note(plan: Any) -> list[str]:
    """A note per backend of ``plan`` that differs from the oracle on special values for
    some op it runs: ``"openvino-cpu deviates on special values for Relu, Clip: Relu(NaN)
    = 0, expected NaN; ... (recorded on AMD EPYC, openvino 2026.4.1)"``. Empty when every
    backend in use is as the oracle (or nothing is known); never raises."""
    try:
        lines = []
        for (backend, device), (found, where) in _deviations_in_plan(plan).items():
            if found:
                lines.append(f"{backend} deviates on special values for {', '.join(found)}"
                             f" on {device}: {_words(found)} ({where})")
        return lines
    except Exception:  # a note is never worth a planning failure
        return []


def special_value_change(before: Any, after: Any) -> list[str]:
    """Event lines for a re-plan (a fallback) that moves nodes to a backend whose
    special-value behaviour differs, for their ops, from the one they ran on:
    ``"moving Relu from openvino-cpu:0 to onnxruntime:0 changes special values: before,
    Relu(NaN) = 0, expected NaN; after, as the oracle"``. Never raises."""
    try:
        def where(plan: Any) -> dict[str, tuple[str, str]]:
            return {p.node: (p.backend, p.device) for p in plan.placements}

        old, new = where(before), where(after)
        found_old, found_new = _deviations_in_plan(before), _deviations_in_plan(after)
        moves: dict[tuple, list[str]] = {}
        for p in after.placements:
            src = old.get(p.node)
            if src is None or src == new[p.node]:
                continue
            a = found_old.get(src, ({}, ""))[0].get(p.op, [])
            b = found_new.get(new[p.node], ({}, ""))[0].get(p.op, [])
            if a != b:
                ops = moves.setdefault((src, new[p.node]), [])
                if p.op not in ops:
                    ops.append(p.op)
        lines = []
        for (src, dst), ops in moves.items():
            a = {op: found_old[src][0].get(op, []) for op in ops}
            b = {op: found_new[dst][0].get(op, []) for op in ops}
            lines.append(f"moving {', '.join(ops)} from {src[1]} to {dst[1]} changes special "
                         f"values: before, {_words(a) or 'as the oracle'}; after, "
                         f"{_words(b) or 'as the oracle'}")
        return lines
    except Exception:  # an event is never worth a failed re-plan
        return []
