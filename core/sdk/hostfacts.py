"""Host facts: pure parsers for what hardware tools and kernel files print.

Each function turns the text of one source into plain Python data and nothing else: no
subprocesses, no file reads except ``parse_cache_sysfs`` and ``parse_drm_device``, which
read a sysfs folder. They are part of the plugin SDK because backend plugins and core's
hardware probe (``backplane.hardware.probe``) read the same sources: whoever runs the tool
or reads the file calls these.

- ``/proc/cpuinfo`` (x86_64 and aarch64 kernels) -> ``parse_cpuinfo``, from ``probe_cpu``
  and the ``arm-neon`` backend plugin;
- ``/sys/devices/system/cpu/cpu0/cache/index*`` -> ``parse_cache_sysfs``, from ``probe_cpu``;
- ``nvidia-smi --query-gpu=<NVIDIA_SMI_QUERY> --format=csv,noheader,nounits`` ->
  ``parse_nvidia_smi_csv``, from ``backplane.runtimes.nvml`` when NVML is not installed;
- ``/sys/class/kfd/kfd/topology/nodes/N/properties`` (the amdgpu KFD topology, one node per
  CPU or GPU agent) -> ``parse_kfd_properties``, from ``probe_amd`` and the ``rocm`` plugin;
- ``amd-smi static --json`` -> ``parse_amd_smi_static_json``, from ``probe_amd`` and the
  ``rocm`` plugin; its human-readable form -> ``parse_amd_smi_static_text``;
- ``rocm-smi --showproductname`` (plain, ``--csv`` or ``--json``) -> ``parse_rocm_smi``,
  from the same two when amd-smi is absent.
- ``/sys/class/drm/{cardN,renderDN}/device`` (a DRM card's PCI device folder: ``uevent``,
  ``vendor``, ``device``, ``mem_info_vram_total`` ...) -> ``parse_drm_device``, its
  ``uevent`` -> ``parse_drm_uevent``; and a KFD node's PCI address -> ``kfd_pci_bus_id``:
  from the ``rocm`` backend plugin, which joins KFD nodes to DRM cards.

None of them raises on odd input: they return what they could read, with missing fields as
None, and an empty result when the text is not that source's output at all. The tests run
them on recorded real outputs in ``tests/data/hwprobe`` (see its SOURCES.md).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path
from typing import Any

#: The fields ``backplane.runtimes.nvml`` asks nvidia-smi for, in this order.
NVIDIA_SMI_QUERY = ("index", "name", "pci.bus_id", "pci.device_id", "memory.total",
                    "compute_cap", "driver_version", "clocks.max.sm")

#: MIDR implementer codes, from the Linux kernel's arch/arm64/include/asm/cputype.h.
ARM_IMPLEMENTERS = {0x41: "ARM", 0x42: "Broadcom", 0x43: "Cavium", 0x46: "Fujitsu",
                    0x48: "HiSilicon", 0x4E: "NVIDIA", 0x50: "APM", 0x51: "Qualcomm",
                    0x61: "Apple", 0x6D: "Microsoft", 0xC0: "Ampere"}

#: (implementer, part) -> core name, from the same header (ARM_CPU_PART_* and friends).
ARM_PARTS = {
    **{(0x41, part): name for part, name in {
        0xD03: "Cortex-A53", 0xD04: "Cortex-A35", 0xD05: "Cortex-A55", 0xD07: "Cortex-A57",
        0xD08: "Cortex-A72", 0xD09: "Cortex-A73", 0xD0A: "Cortex-A75", 0xD0B: "Cortex-A76",
        0xD0C: "Neoverse-N1", 0xD0D: "Cortex-A77", 0xD40: "Neoverse-V1", 0xD41: "Cortex-A78",
        0xD42: "Cortex-A78AE", 0xD44: "Cortex-X1", 0xD46: "Cortex-A510", 0xD47: "Cortex-A710",
        0xD48: "Cortex-X2", 0xD49: "Neoverse-N2", 0xD4B: "Cortex-A78C", 0xD4C: "Cortex-X1C",
        0xD4D: "Cortex-A715", 0xD4E: "Cortex-X3", 0xD4F: "Neoverse-V2", 0xD80: "Cortex-A520",
        0xD81: "Cortex-A720", 0xD82: "Cortex-X4", 0xD84: "Neoverse-V3", 0xD85: "Cortex-X925",
        0xD87: "Cortex-A725"}.items()},
    (0x43, 0x0AF): "ThunderX2", (0x46, 0x001): "A64FX", (0x48, 0xD01): "TSV110",
    (0x4E, 0x003): "Denver", (0x4E, 0x004): "Carmel", (0xC0, 0xAC3): "Ampere-1",
}


# -- small conversions ---------------------------------------------------------------------


def _value(text: Any) -> str | None:
    """A tool's cell as a string, or None for the ways tools say 'no value'."""
    if text is None:
        return None
    text = str(text).strip()
    if not text or text.upper() in ("N/A", "NA", "NONE", "UNKNOWN") or \
            (text.startswith("[") and text.endswith("]")):
        return None
    return text


def _int(value: Any) -> int | None:
    """An int from 5, "5", "81559 MiB" or "0x41"; None otherwise."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    match = re.match(r"0x[0-9a-f]+|-?\d+", _value(value) or "", re.IGNORECASE)
    if not match:
        return None
    return int(match.group(0), 16) if match.group(0)[:2].lower() == "0x" else int(match.group(0))


def _pci_id(value: Any) -> str | None:
    """A 16-bit PCI id as "0x74a1", from "0x74a1" or 0x74a1."""
    number = _int(value)
    return f"0x{number:04x}" if number is not None and 0 <= number <= 0xFFFF else None


def _mib(value: Any) -> int | None:
    """A memory size in MiB from {"value": 196592, "unit": "MB"}, "196592 MB" or 196592.

    AMD tools print binary megabytes as "MB" (an MI300X is 196592 of them).
    """
    if isinstance(value, dict):
        value = f"{value.get('value')} {value.get('unit') or ''}"
    text = _value(value)
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([KMGT]?i?B)?", text or "", re.IGNORECASE)
    if not match:
        return None
    scale = {"": 1, "B": 2**-20, "KB": 2**-10, "KIB": 2**-10, "MB": 1, "MIB": 1,
             "GB": 2**10, "GIB": 2**10, "TB": 2**20, "TIB": 2**20}
    return int(float(match.group(1)) * scale.get((match.group(2) or "").upper(), 1))


def _gfx_name(value: Any) -> str | None:
    """The LLVM target name ("gfx90a") for what AMD tools print as a GFX version.

    rocm_smi_lib's rsmi_get_gfx_target_version() writes the stepping in decimal, so older
    rocm-smi and amd-smi print "gfx9010" for gfx90a and "gfx11000" for gfx1100; those are
    re-encoded the way the compiler names targets. A feature suffix (":xnack-") is dropped.
    """
    text = (_value(value) or "").lower().split(":")[0]
    d = text[3:] if re.fullmatch(r"gfx\d+", text) else ""
    major = 1 if len(d) == 4 and d[0] != "1" else 2 if len(d) == 5 and d[0] == "1" else 0
    if major:
        return f"gfx{d[:major]}{d[major]}{int(d[major + 1:]):x}"
    return text if re.fullmatch(r"gfx[0-9a-f]{3,4}", text) else None


def _gfx_from_version(version: int) -> str:
    """KFD's decimal gfx_target_version (90402) as a target name (gfx942)."""
    major, minor, step = version // 10000, (version // 100) % 100, version % 100
    return f"gfx{major}{minor:x}{step:x}"


def _json_prefix(text: str) -> Any:
    """The JSON document in ``text``, skipping warnings printed before it.

    A capture cut off mid-document is closed at its last complete value, so a truncated
    output still yields the fields it holds. None when there is no JSON at all.
    """
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    if not starts:
        return None
    body = text[min(starts):]
    try:
        return json.loads(body)
    except ValueError:
        pass
    stack: list[str] = []
    cuts: list[tuple[int, str]] = []
    in_string = escaped = False
    for i, ch in enumerate(body):
        if in_string:
            escaped, in_string = (False, True) if escaped else (ch == "\\", ch != '"')
            continue
        if ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
            cuts.append((i + 1, "".join(reversed(stack))))
        elif ch in "}]" and stack:
            stack.pop()
            cuts.append((i + 1, "".join(reversed(stack))))
        elif ch == ",":
            cuts.append((i, "".join(reversed(stack))))
    for end, closers in reversed(cuts[-200:]):
        try:
            return json.loads(body[:end] + closers)
        except ValueError:
            continue
    return None


# -- CPU -----------------------------------------------------------------------------------


def _cpuinfo_blocks(text: str) -> list[dict[str, str]]:
    """One dict per "processor : N" block; lines before the first block form their own."""
    blocks: list[dict[str, str]] = [{}]
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key, value = key.strip().lower(), value.strip()
        if not sep or not key:
            continue
        if key == "processor" and value.isdigit():
            blocks.append({})
        blocks[-1].setdefault(key, value)
    return [b for b in blocks if b]


def _core_name(implementer: int | None, part: int | None) -> str | None:
    if implementer is None or part is None:
        return None
    known = ARM_PARTS.get((implementer, part))
    vendor = ARM_IMPLEMENTERS.get(implementer, f"0x{implementer:02x}")
    return known or f"{vendor} part 0x{part:03x}"


def parse_cpuinfo(text: str) -> dict:
    """The host CPU described by a Linux ``/proc/cpuinfo`` (x86_64 or aarch64).

    Returns arch, vendor_id, model_name, family, model, stepping, cpu_part,
    cpu_implementer, flags (sorted, as the first CPU lists them: "flags" on x86, "Features"
    on aarch64, where the kernel prints the system-wide set), logical_cpus (processor blocks),
    physical_cores and sockets (x86 only, when the kernel prints physical/core ids), mhz
    (the highest "cpu MHz") and parts (aarch64: the distinct core names, sorted). On
    heterogeneous aarch64 chips model_name is the core of the highest-numbered CPU, since
    kernels number the big cores last. An empty dict when the text is not cpuinfo.
    """
    blocks = _cpuinfo_blocks(text or "")
    keys = {k for b in blocks for k in b}
    if "vendor_id" in keys or "flags" in keys:
        arch, flag_key = "x86_64", "flags"
    elif "cpu implementer" in keys or "features" in keys:
        arch, flag_key = "aarch64", "features"
    else:
        return {}

    def first(key: str) -> str | None:
        return next((b[key] for b in blocks if b.get(key)), None)

    mhz = [float(b["cpu mhz"]) for b in blocks
           if re.fullmatch(r"\d+(\.\d+)?", b.get("cpu mhz", ""))]
    info: dict[str, Any] = {
        "arch": arch, "vendor_id": first("vendor_id"), "model_name": first("model name"),
        "family": _int(first("cpu family")), "model": _int(first("model")),
        "stepping": _int(first("stepping")), "cpu_part": None, "cpu_implementer": None,
        "flags": sorted(set((first(flag_key) or "").split())),
        "logical_cpus": sum(1 for b in blocks if b.get("processor", "").isdigit()),
        "physical_cores": None, "sockets": None, "mhz": max(mhz) if mhz else None,
    }
    if arch == "x86_64":
        ids = [(b["physical id"], b["core id"]) for b in blocks
               if "physical id" in b and "core id" in b]
        info["physical_cores"] = len(set(ids)) or None
        info["sockets"] = len({b["physical id"] for b in blocks if "physical id" in b}) or None
        return info
    cores = [(_int(b.get("cpu implementer")), _int(b.get("cpu part")))
             for b in blocks if "cpu part" in b]
    implementer, part = cores[-1] if cores else (None, None)
    info.update(family=None, model=None, stepping=None, cpu_part=part,
                cpu_implementer=implementer,
                vendor_id=ARM_IMPLEMENTERS.get(implementer, f"0x{implementer:02x}")
                if implementer is not None else None,
                parts=sorted({n for n in (_core_name(i, p) for i, p in cores) if n}))
    if (implementer, part) in ARM_PARTS or info["model_name"] is None:
        info["model_name"] = _core_name(implementer, part)
    return info


def _size_kib(text: str | None) -> int | None:
    match = re.fullmatch(r"(\d+)\s*([KMG]?)", (text or "").strip(), re.IGNORECASE)
    if not match:
        return None
    number, unit = int(match.group(1)), match.group(2).upper()
    return {"": number // 1024, "K": number, "M": number * 1024, "G": number * 1024**2}[unit]


def parse_cache_sysfs(root: str | os.PathLike) -> dict:
    """Cache sizes in KiB from a sysfs cache folder such as /sys/devices/system/cpu/cpu0/cache.

    Reads ``index*/{level,type,size}``; returns l1d_kib, l1i_kib, l2_kib and l3_kib, each
    None when the folder does not say.
    """
    out: dict[str, int | None] = dict.fromkeys(("l1d_kib", "l1i_kib", "l2_kib", "l3_kib"))
    try:
        indexes = sorted(Path(root).glob("index*"))
    except OSError:
        return out
    for index in indexes:
        try:
            level, kind, size = ((index / name).read_text().strip()
                                 for name in ("level", "type", "size"))
        except OSError:
            continue
        key = {("1", "Data"): "l1d_kib", ("1", "Instruction"): "l1i_kib",
               ("1", "Unified"): "l1d_kib"}.get((level, kind)) or \
            {"2": "l2_kib", "3": "l3_kib"}.get(level)
        if key and out[key] is None:
            out[key] = _size_kib(size)
    return out


# -- NVIDIA --------------------------------------------------------------------------------

# nvidia-smi header names (it prints the canonical name even for an alias) -> our keys.
_NVSMI_KEYS = {"index": "index", "name": "name", "gpu_name": "name",
               "pci.bus_id": "pci_bus_id", "gpu_bus_id": "pci_bus_id",
               "pci.device_id": "pci_device_id", "memory.total": "memory_mib",
               "compute_cap": "compute_capability", "driver_version": "driver_version",
               "clocks.max.sm": "max_sm_clock_mhz", "clocks.max.sm_clock": "max_sm_clock_mhz"}


def parse_nvidia_smi_csv(text: str, fields: list[str] | tuple[str, ...] | None = None
                         ) -> list[dict]:
    """GPUs from ``nvidia-smi --query-gpu=... --format=csv`` output.

    Columns come from the header line when the text has one (``--format=csv``), else from
    ``fields``, else ``NVIDIA_SMI_QUERY`` (``--format=csv,noheader``). Units ("81559 MiB")
    and "[N/A]"-style values are handled. Each GPU has index, name, pci_bus_id,
    pci_vendor_id and pci_device_id (split from nvidia-smi's "0x233010DE"), memory_mib,
    compute_capability, driver_version and max_sm_clock_mhz, None where not queried.
    Lines with the wrong number of cells (a truncated last line, an error message) are
    skipped.
    """
    lines = [line for line in (text or "").splitlines() if line.strip()]
    if not lines:
        return []
    head = [re.sub(r"\s*\[.*\]$", "", cell.strip()) for cell in lines[0].split(",")]
    if any(h in _NVSMI_KEYS for h in head) and not any(_int(h) is not None for h in head):
        columns, lines = head, lines[1:]
    else:
        columns = list(fields or NVIDIA_SMI_QUERY)
    gpus = []
    for line in lines:
        cells = [cell.strip() for cell in line.split(",")]
        if len(cells) != len(columns):
            continue
        gpu: dict[str, Any] = dict.fromkeys(("index", "name", "pci_bus_id", "pci_vendor_id",
                                             "pci_device_id", "memory_mib",
                                             "compute_capability", "driver_version",
                                             "max_sm_clock_mhz"))
        for column, cell in zip(columns, cells):
            key = _NVSMI_KEYS.get(column)
            if key in ("index", "memory_mib", "max_sm_clock_mhz"):
                gpu[key] = _int(cell)
            elif key == "pci_device_id":
                ids = _int(cell)
                if ids is not None and 0 <= ids <= 0xFFFFFFFF:
                    gpu["pci_device_id"], gpu["pci_vendor_id"] = (
                        f"0x{ids >> 16:04x}", f"0x{ids & 0xFFFF:04x}")
            elif key:
                gpu[key] = _value(cell)
        if "index" in columns and gpu["index"] is None:
            continue
        if any(v is not None for v in gpu.values()):
            gpus.append(gpu)
    return gpus


# -- AMD -----------------------------------------------------------------------------------


def parse_kfd_properties(text: str) -> dict:
    """One KFD topology node's ``properties`` file ("name value" per line).

    Every numeric value becomes an int, others stay strings. Adds is_gpu (simd_count > 0),
    gfx_target ("gfx942" from gfx_target_version 90402; absent on CPU nodes and on kernels
    that do not print the version) and pci_vendor_id / pci_device_id as "0x1002" / "0x74a1"
    when vendor_id / device_id are present and non-zero (zero means the kernel does not
    know). An empty dict when no line is a "name number" pair.
    """
    props: dict[str, Any] = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and re.fullmatch(r"[A-Za-z_]\w*", parts[0]):
            props[parts[0]] = int(parts[1]) if re.fullmatch(r"-?\d+", parts[1]) else parts[1]
    if not any(isinstance(v, int) for v in props.values()):
        return {}
    version = props.get("gfx_target_version")
    if isinstance(version, int) and version > 0:
        props["gfx_target"] = _gfx_from_version(version)
    simds = props.get("simd_count")
    props["is_gpu"] = isinstance(simds, int) and simds > 0
    for source, key in (("vendor_id", "pci_vendor_id"), ("device_id", "pci_device_id")):
        if isinstance(props.get(source), int) and props[source] > 0:
            props[key] = _pci_id(props[source])
    return props


def _amd_gpu(index: Any, asic: dict, bus: dict, vram: dict) -> dict:
    return {"index": _int(index), "market_name": _value(asic.get("market_name")),
            "pci_vendor_id": _pci_id(asic.get("vendor_id")),
            "pci_device_id": _pci_id(asic.get("device_id")),
            "gfx_target": _gfx_name(asic.get("target_graphics_version")),
            "vram_mib": _mib(vram.get("size", vram.get("vram_size"))),
            "compute_units": _int(asic.get("num_compute_units")),
            "bus_id": _value(bus.get("bdf"))}


def parse_amd_smi_static_json(text: str) -> list[dict]:
    """GPUs from ``amd-smi static --json``: a list (older amd-smi) or {"gpu_data": [...]}.

    Each GPU has index, market_name, pci_vendor_id, pci_device_id, gfx_target (from
    target_graphics_version), vram_mib, compute_units and bus_id. Warnings printed before
    the JSON are skipped; a truncated capture gives what it holds.
    """
    data = _json_prefix(text or "")
    if isinstance(data, dict):
        data = data.get("gpu_data", [data] if "asic" in data else [])
    if not isinstance(data, list):
        return []
    gpus = []
    for position, entry in enumerate(data):
        if not isinstance(entry, dict) or not ({"gpu", "asic"} & entry.keys()):
            continue
        parts = [entry.get(k) if isinstance(entry.get(k), dict) else {}
                 for k in ("asic", "bus", "vram")]
        gpus.append(_amd_gpu(entry.get("gpu", position), *parts))
    return gpus


def parse_amd_smi_static_text(text: str) -> list[dict]:
    """GPUs from plain ``amd-smi static`` ("GPU: 0", then "ASIC:", "    MARKET_NAME: ...").

    Same fields as ``parse_amd_smi_static_json``.
    """
    gpus: list[tuple[str, dict[str, dict[str, str]]]] = []
    section = ""
    for line in (text or "").splitlines():
        stripped = line.strip()
        if match := re.fullmatch(r"GPU:\s*(\d+)", stripped):
            gpus.append((match.group(1), {}))
            section = ""
            continue
        key, sep, value = stripped.partition(":")
        if not gpus or not sep:
            continue
        if not value.strip():
            section = key.strip().lower()
        else:
            gpus[-1][1].setdefault(section, {})[key.strip().lower()] = value.strip()
    return [_amd_gpu(index, s.get("asic", {}), s.get("bus", {}), s.get("vram", {}))
            for index, s in gpus]


_ROCM_SMI_KEYS = {"card series": "card_series", "card model": "card_model",
                  "card vendor": "card_vendor", "card sku": "card_sku",
                  "gfx version": "gfx_target"}


def parse_rocm_smi(text: str) -> list[dict]:
    """GPUs from ``rocm-smi --showproductname``, plain text, ``--csv`` or ``--json``.

    The form is detected from the text. Each GPU has index, card_series, card_model,
    card_vendor, card_sku and gfx_target (the "GFX Version" field newer rocm-smi prints;
    None when absent). CSV rows cut short are skipped.
    """
    text = text or ""
    found: dict[int, dict[str, Any]] = {}

    def put(index: int | None, key: str, value: Any) -> None:
        field = _ROCM_SMI_KEYS.get(key.strip().lower())
        if index is not None and field:
            record = found.setdefault(index, {"index": index, **dict.fromkeys(
                ("card_series", "card_model", "card_vendor", "card_sku", "gfx_target"))})
            record[field] = _gfx_name(value) if field == "gfx_target" else _value(value)

    first_line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if first_line.lower().startswith("device,"):
        rows = list(csv.reader(io.StringIO(text.strip())))
        for row in rows[1:]:
            if len(row) == len(rows[0]):
                for key, value in zip(rows[0][1:], row[1:]):
                    put(_int(row[0].removeprefix("card")), key, value)
    elif "GPU[" not in text and isinstance(data := _json_prefix(text), dict):
        for card, values in data.items():
            if re.fullmatch(r"card\d+", str(card)) and isinstance(values, dict):
                for key, value in values.items():
                    put(int(str(card)[4:]), key, value)
    else:
        for match in re.finditer(r"^GPU\[(\d+)\]\s*:\s*([^:\n]+?)\s*:[ \t]*(.*)$", text, re.M):
            put(int(match.group(1)), match.group(2), match.group(3))
    return [found[i] for i in sorted(found)]


# -- DRM (amdgpu) ------------------------------------------------------------------------------


def parse_drm_uevent(text: str) -> dict:
    """A DRM card's PCI ``uevent`` file (``/sys/class/drm/card1/device/uevent``: KEY=VALUE lines).

    Returns driver ("amdgpu", "i915" ...), pci_class, pci_vendor_id and pci_device_id
    ("0x1002", "0x66af" from ``PCI_ID=1002:66AF``), pci_subsystem_vendor_id and
    pci_subsystem_device_id (from ``PCI_SUBSYS_ID``) and pci_bus_id (``PCI_SLOT_NAME`` in
    lower case, "0000:0d:00.0"), each None when the file does not say. An empty dict when
    no line is a ``KEY=VALUE`` pair.
    """
    pairs: dict[str, str] = {}
    for line in (text or "").splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and re.fullmatch(r"[A-Z][A-Z0-9_]*", key):
            pairs.setdefault(key, value.strip())
    if not pairs:
        return {}

    def ids(value: str | None) -> tuple[str | None, str | None]:
        match = re.fullmatch(r"([0-9a-fA-F]{4}):([0-9a-fA-F]{4})", value or "")
        return (f"0x{match.group(1).lower()}", f"0x{match.group(2).lower()}") if match \
            else (None, None)

    vendor, device = ids(pairs.get("PCI_ID"))
    sub_vendor, sub_device = ids(pairs.get("PCI_SUBSYS_ID"))
    slot = _value(pairs.get("PCI_SLOT_NAME"))
    return {"driver": _value(pairs.get("DRIVER")), "pci_class": _value(pairs.get("PCI_CLASS")),
            "pci_vendor_id": vendor, "pci_device_id": device,
            "pci_subsystem_vendor_id": sub_vendor, "pci_subsystem_device_id": sub_device,
            "pci_bus_id": slot.lower() if slot else None}


#: Files of a DRM card's device folder read by ``parse_drm_device``, and their keys.
DRM_DEVICE_FILES = {"vendor": "pci_vendor_id", "device": "pci_device_id",
                    "revision": "pci_revision", "mem_info_vram_total": "vram_bytes",
                    "unique_id": "unique_id", "product_name": "product_name"}


def parse_drm_device(root: str | os.PathLike) -> dict:
    """A DRM card's PCI device folder, such as ``/sys/class/drm/card1/device``.

    Reads ``uevent`` (see ``parse_drm_uevent``), then ``vendor``, ``device`` and
    ``revision`` ("0x1002", used where the uevent has no ``PCI_ID``), ``mem_info_vram_total``
    (vram_bytes, an int; amdgpu only), ``unique_id`` and ``product_name`` (amdgpu, on some
    boards only). Keys of files that are absent, unreadable or empty are left out (None
    for the uevent's). Never raises; an empty dict when the folder holds none of these.
    """
    def read(name: str) -> str | None:
        try:
            return (Path(root) / name).read_text(errors="replace").strip() or None
        except (OSError, ValueError):
            return None

    out: dict[str, Any] = parse_drm_uevent(read("uevent") or "")
    for name, key in DRM_DEVICE_FILES.items():
        text = _value(read(name))
        if text is None or out.get(key) is not None:
            continue
        number = _int(text)
        if key in ("pci_vendor_id", "pci_device_id"):
            value: Any = _pci_id(text)
        elif key == "pci_revision":
            value = f"0x{number:02x}" if number is not None and 0 <= number <= 0xFF else None
        elif key == "vram_bytes":
            value = number if number is not None and number > 0 else None
        else:
            value = text
        if value is not None:
            out[key] = value
    return out if any(v is not None for v in out.values()) else {}


def kfd_pci_bus_id(props: dict) -> str | None:
    """The PCI address ("0000:63:00.0") of a KFD GPU node, from ``parse_kfd_properties`` output.

    KFD's ``location_id`` is the device's bus number and devfn (bus << 8 | device << 3 |
    function) and ``domain`` its PCI domain (0 when the kernel does not print it). None for
    CPU nodes and for nodes that do not print ``location_id``.
    """
    location, domain = props.get("location_id"), props.get("domain", 0)
    if not props.get("is_gpu") or not isinstance(location, int) or not 0 <= location <= 0xFFFF:
        return None
    domain = domain if isinstance(domain, int) and 0 <= domain <= 0xFFFF else 0
    bus, devfn = location >> 8, location & 0xFF
    return f"{domain:04x}:{bus:02x}:{devfn >> 3:02x}.{devfn & 7:x}"


def usable_cores() -> int:
    """Logical CPUs this process may run on (its affinity; the CPU count elsewhere)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def physical_cores() -> int:
    """Physical cores this process may run on: its logical CPUs over the hardware threads
    per core (sysfs' thread siblings of CPU 0; one where that cannot be read). ONNX Runtime
    and OpenVINO size their default thread pools by it."""
    try:
        siblings = Path("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list").read_text()
        per_core = sum(int(b or a) - int(a) + 1  # "0,4" or "0-1": hardware threads per core
                       for a, _, b in (r.partition("-") for r in siblings.strip().split(",")))
    except (OSError, ValueError):
        per_core = 1
    return max(1, usable_cores() // max(1, per_core))
