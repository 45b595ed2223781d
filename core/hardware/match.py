"""Matching probed hardware to hwdb entries, and the figures that follow for this device.

Every rule of every entry is tried on each probed device; the matching rule with the highest
confidence wins (a SKU entry over a generic one at equal confidence). The result names the
entry, the rule that matched in words, and its confidence. When nothing matches, or only a
generic entry does, the figures are derived from probed facts: cores x clock x FLOPs per
cycle per core for CPUs, compute units x clock x FLOPs per cycle per unit for GPUs, and the
result says so.

For a CPU the figures are always those of the cores this process can use (a 2-vCPU VM on a
96-core part gets 2 cores' worth), from the entry's per-core FLOPs per cycle.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from backplane.hardware.db import load
from backplane.hardware.probe import Hardware, probe_all
from backplane.hardware.schema import Entry

_DTYPES = (("fp64", "fp64_flops_per_cycle", "fp64_tflops"),
           ("fp32", "fp32_flops_per_cycle", "fp32_tflops"),
           ("fp16", "fp16_flops_per_cycle", "fp16_tflops"),
           ("bf16", "bf16_flops_per_cycle", "bf16_tflops"),
           ("int8", "int8_ops_per_cycle", "int8_tops"))


@dataclass
class Match:
    """A probed device, the entry it matched (or None), how, and its figures here."""

    hardware: Hardware
    entry_id: str | None
    entry_name: str | None
    rule: str | None
    confidence: float
    generic: bool
    figures: dict[str, float] = field(default_factory=dict)
    basis: str = ""
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """The short form ``backplane devices --json`` shows per device."""
        return {"entry": self.entry_id, "rule": self.rule, "confidence": self.confidence,
                "generic": self.generic, "hardware": self.hardware.name,
                "fingerprint": self.hardware.fingerprint}

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as ``backplane hwdb match --json`` prints it."""
        return {"device": self.hardware.to_dict(), "entry": self.entry_id,
                "entry_name": self.entry_name, "rule": self.rule,
                "confidence": self.confidence, "generic": self.generic,
                "figures": self.figures, "basis": self.basis, "notes": self.notes}


def _search(pattern: str | None, text: Any) -> bool:
    return pattern is None or (text is not None and re.search(pattern, str(text), re.I) is not None)


def rule_matches(rule: Any, hw: Hardware) -> bool:
    """Whether one match rule recognises one probed device."""
    f = hw.facts
    kind = rule.rule
    if kind == "pci":
        return (str(f.get("pci_vendor_id", "")).lower() == rule.vendor_id
                and str(f.get("pci_device_id", "")).lower() in rule.device_ids)
    if kind == "cuda":
        mem = f.get("memory_gib")
        return (hw.kind == "gpu" and f.get("compute_capability") == rule.compute_capability
                and _search(rule.name, hw.name)
                and (rule.memory_gib_min is None or (mem is not None and mem >= rule.memory_gib_min))
                and (rule.memory_gib_max is None or (mem is not None and mem <= rule.memory_gib_max)))
    if kind == "cpu":
        flags = set(f.get("flags") or ())
        parts = {p.lower() for p in f.get("parts") or ()}
        return (hw.kind == "cpu"
                and (rule.arch is None or f.get("arch") == rule.arch)
                and (rule.vendor_id is None
                     or str(f.get("vendor_id", "")).lower() == rule.vendor_id.lower())
                and (rule.family is None or f.get("family") == rule.family)
                and (not rule.models or f.get("model") in rule.models)
                and (not rule.parts or bool(parts & {p.lower() for p in rule.parts}))
                and set(rule.flags) <= flags
                and _search(rule.name, f.get("model_name", hw.name)))
    if kind == "openvino":
        return f.get("full_device_name") is not None and _search(rule.full_device_name,
                                                                  f["full_device_name"])
    if kind == "opencl":
        return (f.get("opencl_name") is not None and _search(rule.device_name, f["opencl_name"])
                and _search(rule.platform, f.get("opencl_platform")))
    if kind == "gfx":
        return f.get("gfx_target") == rule.gfx_target and _search(rule.name, hw.name)
    if kind == "name":
        return hw.kind == rule.kind and _search(rule.name, hw.name)
    return False


def describe_rule(rule: Any) -> str:
    """A rule in words: ``cuda: compute capability 9.0, name ~ /H100.*SXM/``."""
    parts = [f"{k.replace('_', ' ')} {v!r}" if isinstance(v, str) else
             f"{k.replace('_', ' ')} {v}" for k, v in rule.model_dump(exclude_none=True).items()
             if k not in ("rule", "confidence", "note") and v not in ([], "")]
    return f"{rule.rule}: " + ", ".join(parts)


def match(hw: Hardware, entries: list[Entry]) -> Match:
    """The best entry for one probed device, and its figures on this device."""
    hits = [(rule.confidence, not e.generic, e, rule) for e in entries if e.kind == hw.kind
            for rule in e.match if rule_matches(rule, hw)]
    hits.sort(key=lambda h: (h[0], h[1]), reverse=True)
    if not hits:
        m = Match(hw, None, None, None, 0.0, True)
        m.notes.append(f"no hwdb entry matches this {hw.kind}; figures are derived from "
                       "probed facts where possible. Run 'backplane hwdb calibrate' to measure.")
        _figures(m, None)
        return m
    confidence, _, entry, rule = hits[0]
    m = Match(hw, entry.id, entry.name, describe_rule(rule), confidence, entry.generic)
    rivals = [h[2].id for h in hits[1:] if h[0] == confidence and h[1] == hits[0][1]
              and h[2].id != entry.id]
    if rivals:
        m.notes.append(f"ambiguous: {', '.join(sorted(set(rivals)))} match with the same "
                       f"confidence; '{entry.id}' was taken")
    if entry.generic:
        m.notes.append(f"matched only the generic entry '{entry.id}': figures are derived from "
                       "probed facts, not from a datasheet")
    _figures(m, entry)
    return m


def _figures(m: Match, entry: Entry | None) -> None:
    hw, f = m.hardware, m.hardware.facts
    if hw.kind == "cpu" and entry is not None and entry.cpu is not None:
        cores = f.get("cores") or 1
        # A SKU's all-core clock is what every core sustains; a probed maximum is usually
        # the single-core turbo. Generic entries have only the probed clock.
        clock = (None if entry.generic else entry.cpu.all_core_clock_mhz) or \
            f.get("clock_mhz") or (entry.compute.base_clock_mhz if entry.compute else None)
        if clock:
            for _, per_cycle, key in _DTYPES:
                rate = getattr(entry.cpu, per_cycle)
                if rate:
                    m.figures[key] = round(cores * clock * 1e6 * rate / 1e12, 6)
            m.basis = (f"derived: {cores} usable physical cores x {clock:g} MHz x "
                       f"{entry.cpu.fp32_flops_per_cycle:g} fp32 FLOPs per cycle per core "
                       f"(from '{entry.id}')")
        else:
            m.notes.append("no clock probed or listed: peak rates unknown until calibrated")
    elif entry is not None and not entry.generic and entry.dense is not None:
        m.figures.update(entry.dense.figures())
        m.basis = f"datasheet of '{entry.id}'"
    elif entry is not None and entry.derive is not None:
        units, clock = f.get("units"), f.get("clock_mhz") or entry.derive.assumed_clock_mhz
        if units and clock:
            for dtype, per_unit in entry.derive.flops_per_cycle_per_unit.items():
                key = f"{dtype}_tops" if dtype.startswith("int") else f"{dtype}_tflops"
                m.figures[key] = round(units * clock * 1e6 * per_unit / 1e12, 6)
            m.basis = f"derived: {units} units x {clock:g} MHz ({entry.derive.note})"
        else:
            m.notes.append("compute units or clock not probed: peak rates unknown until "
                           "calibrated")
    if entry is not None and entry.memory is not None:
        if entry.memory.bandwidth_gb_s and not entry.generic:
            m.figures["memory_bandwidth_gb_s"] = entry.memory.bandwidth_gb_s
        if entry.memory.size_gib and hw.kind != "cpu":
            m.figures["memory_gib"] = entry.memory.size_gib
    if "memory_gib" not in m.figures and f.get("memory_gib"):
        m.figures["memory_gib"] = f["memory_gib"]
    if entry is not None and entry.host_link is not None and entry.host_link.bandwidth_gb_s:
        m.figures["host_link_gb_s"] = entry.host_link.bandwidth_gb_s


def match_all(hardware: list[Hardware] | None = None, entries: list[Entry] | None = None
              ) -> list[Match]:
    """Match every probed device of this machine (or the given ones)."""
    if entries is None:
        entries = [x.entry for x in load()]
    if hardware is None:
        hardware = probe_all().hardware
    return [match(hw, entries) for hw in hardware]


def hardware_for(device: Any, probed: list[Any]) -> Any:
    """The probed hardware a backend device runs on: by PCI bus id, by kind for the host
    CPU, else by name."""
    bus = (device.properties or {}).get("pci_bus_id")
    for hw in probed:
        if bus and str(hw.facts.get("pci_bus_id", "")).lower() == str(bus).lower():
            return hw
    same_kind = [hw for hw in probed if hw.kind == device.kind]
    if device.kind == "cpu" and same_kind:
        return same_kind[0]
    return next((hw for hw in same_kind if device.name and (
        device.name.lower() in hw.name.lower() or hw.name.lower() in device.name.lower())), None)


def match_devices(devices: list[Any]) -> dict[str, Match | None]:
    """The hwdb match of each backend device (by device id), or None where no probed
    hardware corresponds to it."""
    probed = probe_all().hardware
    matches = {id(m.hardware): m for m in match_all(probed)}
    out: dict[str, Match | None] = {}
    for device in devices:
        hw = hardware_for(device, probed)
        out[device.id] = matches[id(hw)] if hw is not None else None
    return out


def device_records(devices: list[Any]) -> list[dict[str, Any]]:
    """Each device as plain data with its hwdb match summary (what ``backplane devices
    --json`` prints)."""
    matched = match_devices(devices)
    return [{**d.to_dict(), "hwdb": matched[d.id].summary() if matched[d.id] else None}
            for d in devices]
