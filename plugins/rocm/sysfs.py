"""Finding AMD GPUs without a vendor runtime: the KFD topology, DRM cards, the amdgpu module,
and the names amd-smi or rocm-smi give them.

Everything here reads files under a sysfs root and a /dev root given as parameters (tests
point them at recorded trees), through the pure parsers of ``backplane.sdk.hostfacts``,
and never raises on missing, unreadable or garbled files: what cannot be read is left out.
The vendor tools run through an injectable ``run_tool`` and are bounded by a timeout. The
hwdb entry comes through the ``backplane_hwdb_match`` hook, which the hardware layer
implements.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backplane.sdk import hostfacts
from backplane.sdk.hooks import plugin_manager

#: Where the topology, the DRM cards and the amdgpu module are, below the sysfs root.
KFD_NODES = "class/kfd/kfd/topology/nodes"
DRM = "class/drm"
AMDGPU_MODULE = "module/amdgpu"
AMD_VENDOR_ID = "0x1002"
#: How long amd-smi or rocm-smi may take before their names are done without.
TOOL_TIMEOUT_S = 3.0

RunTool = Callable[[list[str], float], "str | None"]


@dataclass
class Gpu:
    """One GPU node of the KFD topology, with the DRM card it is (when that could be told)."""

    node: int
    props: dict[str, Any]
    drm: dict[str, Any] = field(default_factory=dict)
    drm_note: str = ""

    @property
    def gfx_target(self) -> str | None:
        """The LLVM target ("gfx942"), from KFD's gfx_target_version; None on old kernels."""
        return self.props.get("gfx_target")

    @property
    def bus_id(self) -> str | None:
        """The PCI address ("0000:05:00.0"), from KFD's location_id, else the DRM card's."""
        return hostfacts.kfd_pci_bus_id(self.props) or self.drm.get("pci_bus_id")

    def facts(self) -> dict[str, Any]:
        """What sysfs says of this GPU, as device properties (absent facts left out)."""
        p, d = self.props, self.drm
        simds, per_cu = p.get("simd_count"), p.get("simd_per_cu")
        vram = d.get("vram_bytes") or (p.get("local_mem_size") or None)
        out = {"gfx_target": self.gfx_target, "kfd_node": self.node,
               "gpu_id": p.get("gpu_id"),
               "pci_vendor_id": p.get("pci_vendor_id") or d.get("pci_vendor_id"),
               "pci_device_id": p.get("pci_device_id") or d.get("pci_device_id"),
               "pci_bus_id": self.bus_id,
               "compute_units": simds // per_cu if isinstance(simds, int) and
               isinstance(per_cu, int) and per_cu > 0 else None,
               "max_clock_mhz": p.get("max_engine_clk_fcompute") or None,
               "num_xcc": p.get("num_xcc"), "wavefront_size": p.get("wave_front_size") or None,
               "vram_bytes": vram, "drm_render_minor": p.get("drm_render_minor"),
               "drm_driver": d.get("driver"), "product_name": d.get("product_name"),
               "unique_id": d.get("unique_id")}
        return {k: v for k, v in out.items() if v is not None}


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except (OSError, ValueError):
        return ""


def _node_number(path: Path) -> int:
    return int(path.parent.name) if path.parent.name.isdigit() else 1 << 30


def find_gpus(sysfs: str | os.PathLike) -> list[Gpu]:
    """The GPU nodes of the KFD topology under ``sysfs``, in node order, each joined to its
    DRM card.

    A node is a GPU when it has SIMDs or a gfx target (a CPU node has neither). Its card is
    ``renderD<drm_render_minor>`` (the link KFD itself gives), else the card at its PCI
    address; a card whose PCI address or device id differs from the node's is not joined
    (``drm_note`` says so).
    """
    root = Path(sysfs, KFD_NODES)
    try:
        files = sorted(root.glob("*/properties"), key=_node_number) if root.is_dir() else []
    except OSError:
        return []
    gpus: list[Gpu] = []
    cards: list[dict[str, Any]] | None = None
    for f in files:
        props = hostfacts.parse_kfd_properties(_read(f))
        if not (props.get("is_gpu") or props.get("gfx_target")):
            continue
        gpu_id = _read(f.parent / "gpu_id").strip()
        if gpu_id.isdigit():
            props["gpu_id"] = int(gpu_id)
        props["is_gpu"] = True
        gpu = Gpu(_node_number(f), props)
        minor = props.get("drm_render_minor")
        found = hostfacts.parse_drm_device(Path(sysfs, DRM, f"renderD{minor}", "device")) \
            if isinstance(minor, int) and minor > 0 else {}
        gpu.drm_note = _mismatch(gpu, found, f"renderD{minor}")
        bus = hostfacts.kfd_pci_bus_id(props)
        if (gpu.drm_note or not found) and bus:
            cards = drm_cards(sysfs) if cards is None else cards
            at_bus = next((c for c in cards if c.get("pci_bus_id") == bus), {})
            if at_bus and not _mismatch(gpu, at_bus, at_bus["card"]):
                found, gpu.drm_note = at_bus, ""
        gpu.drm = {} if gpu.drm_note else found
        gpus.append(gpu)
    return gpus


def _mismatch(gpu: Gpu, card: dict[str, Any], where: str) -> str:
    """Why a DRM card is not the GPU of a KFD node (another PCI address or device), or ''."""
    bus = hostfacts.kfd_pci_bus_id(gpu.props)
    for key, mine in (("pci_bus_id", bus), ("pci_device_id", gpu.props.get("pci_device_id"))):
        theirs = card.get(key)
        if mine and theirs and mine != theirs:
            return (f"DRM {where} is {key.replace('_', ' ').replace('pci', 'PCI')} {theirs}, "
                    f"KFD node {gpu.node} is {mine}: not joined")
    return ""


def drm_cards(sysfs: str | os.PathLike) -> list[dict[str, Any]]:
    """Every DRM card (``card<N>``, not its connectors) under ``sysfs``, parsed, with its name."""
    root = Path(sysfs, DRM)
    try:
        names = sorted((p for p in root.glob("card*") if re.fullmatch(r"card\d+", p.name)),
                       key=lambda p: int(p.name[4:])) if root.is_dir() else []
    except OSError:
        return []
    return [{"card": p.name, **info} for p in names
            if (info := hostfacts.parse_drm_device(p / "device"))]


def driver_version(sysfs: str | os.PathLike) -> str | None:
    """The amdgpu module's version (``/sys/module/amdgpu/version``: ROCm's DKMS driver prints
    one, the kernel's own amdgpu does not); "in-kernel amdgpu" when the module is loaded
    without it; None when the module is not loaded."""
    module = Path(sysfs, AMDGPU_MODULE)
    version = _read(module / "version").strip()
    if version and re.fullmatch(r"[\w.+~-]{1,64}", version):
        return version
    return "in-kernel amdgpu (no module version)" if module.is_dir() else None


def unusable_reason(sysfs: str | os.PathLike, dev: str | os.PathLike,
                    gpus: list[Gpu]) -> str | None:
    """Why the GPUs of this machine cannot be used through KFD at all, or None when they
    can: no AMD GPU; an AMD GPU without the amdgpu driver's KFD; /dev/kfd missing (a
    container without the device) or not accessible to this user."""
    kfd, dev_kfd = Path(sysfs, KFD_NODES), Path(dev, "kfd")
    if not gpus:
        cards = [c for c in drm_cards(sysfs) if c.get("pci_vendor_id") == AMD_VENDOR_ID]
        if not cards:
            return (f"no AMD GPU: no GPU node in the KFD topology ({kfd}) and no DRM card of "
                    f"vendor {AMD_VENDOR_ID} in {Path(sysfs, DRM)}")
        what = ", ".join(f"{c['card']} ({c.get('pci_bus_id') or 'bus ?'}, PCI "
                         f"{c.get('pci_vendor_id')}:{c.get('pci_device_id')}, driver "
                         f"{c.get('driver') or 'none'})" for c in cards)
        if not any(c.get("driver") == "amdgpu" for c in cards):
            return (f"an AMD GPU is present ({what}) but the amdgpu driver does not drive it; "
                    f"ROCm needs amdgpu: load it (modprobe amdgpu; for GCN 1/2 cards "
                    f"amdgpu.si_support=1 / amdgpu.cik_support=1 with radeon blacklisted)")
        return (f"an AMD GPU is present ({what}) but amdgpu publishes no compute node in the "
                f"KFD topology ({kfd}): the driver has no KFD (HSA) support or the GPU is not "
                f"supported by it; install ROCm's amdgpu-dkms or use a kernel built with "
                f"CONFIG_HSA_AMD=y")
    summary = ", ".join(sorted({g.gfx_target or "gfx?" for g in gpus}))
    if not dev_kfd.exists():
        return (f"the KFD topology lists {len(gpus)} AMD GPU(s) ({summary}) but {dev_kfd} is "
                f"missing: in a container pass --device=/dev/kfd --device=/dev/dri; "
                f"otherwise load the amdgpu driver with KFD support")
    if not os.access(dev_kfd, os.R_OK | os.W_OK):
        return (f"{dev_kfd} is not readable and writable by this user ({len(gpus)} AMD GPU(s), "
                f"{summary}): add the user to the 'render' and 'video' groups "
                f"(sudo usermod -aG render,video $USER) and log in again")
    return None


# ---------------------------------------------------------------------- names


def run_tool(argv: list[str], timeout_s: float) -> str | None:
    """A vendor tool's stdout, or None when it is absent, fails or takes too long."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return done.stdout if done.returncode == 0 else None


def tool_names(run: RunTool = run_tool, timeout_s: float = TOOL_TIMEOUT_S
               ) -> list[dict[str, Any]]:
    """The GPUs amd-smi (``static --json``) or, without it, rocm-smi (``--showproductname``)
    lists, parsed; [] when neither answers."""
    text = run(["amd-smi", "static", "--json"], timeout_s)
    if text:
        found = hostfacts.parse_amd_smi_static_json(text)
        if found:
            return found
    text = run(["rocm-smi", "--showproductname"], timeout_s)
    return hostfacts.parse_rocm_smi(text) if text else []


def name_of(gpu: Gpu, position: int, gpus: list[Gpu], names: list[dict[str, Any]]) -> str:
    """The GPU's marketing name: amd-smi's market_name (joined by PCI address, else by
    order among GPUs of the same gfx target), rocm-smi's card series, the board's FRU
    product name, else "AMD GPU <gfx target>" (the name core's hardware probe gives)."""
    named = next((n for n in names if n.get("bus_id") and gpu.bus_id and
                  str(n["bus_id"]).lower() == gpu.bus_id), None)
    if named is None and gpu.gfx_target:
        same = [n for n in names if n.get("gfx_target") == gpu.gfx_target]
        rank = [g for g in gpus if g.gfx_target == gpu.gfx_target].index(gpu)
        named = same[rank] if rank < len(same) else None
    if named is None and len(names) == len(gpus):
        named = names[position]
    for key in ("market_name", "card_series"):
        if named and named.get(key):
            return str(named[key])
    return gpu.drm.get("product_name") or f"AMD GPU {gpu.gfx_target or ''}".strip()


# ---------------------------------------------------------------------- hwdb


def hwdb_match(name: str, facts: dict[str, Any]) -> tuple[str | None, str | None]:
    """The hwdb entry this GPU matches and the rule, in words (the ``backplane_hwdb_match``
    hook); (None, None) when none does or the database cannot be read."""
    # The facts in the keys the hardware probe gives an AMD GPU, which match rules read.
    hw_facts = {k: facts[k] for k in ("gfx_target", "pci_vendor_id", "pci_device_id",
                                      "pci_bus_id") if facts.get(k)}
    if facts.get("compute_units"):
        hw_facts["units"] = facts["compute_units"]
    if facts.get("max_clock_mhz"):
        hw_facts["clock_mhz"] = facts["max_clock_mhz"]
    if facts.get("vram_bytes"):
        hw_facts["memory_gib"] = round(facts["vram_bytes"] / 2**30, 1)
    try:
        found = plugin_manager().hook.backplane_hwdb_match(
            kind="gpu", name=name, vendor="amd", source="rocm", facts=hw_facts)
    except Exception:  # the database is optional to listing devices
        return None, None
    return (found[0], found[1]) if found else (None, None)
