"""The cost model: how long a node takes on a device through a backend, and what moving data
between devices costs.

For one node on one device through one backend at one precision::

    time = max(flops / (peak[precision] x compute efficiency[family]),
               bytes / (memory bandwidth x memory efficiency)) x learned[family]
           + per-node overhead x learned[fixed]
    time x= live-load slowdown x the model's own correction learned from past runs

plus, once per partition, the backend's launch overhead, and, wherever a value crosses
memory domains, ``link latency + bytes / link bandwidth``. Energy is time x power.

Where the figures come from, best first:

- the device: peak rates and memory bandwidth measured by ``backplane hwdb calibrate`` on
  this device (the best over its backends), else the hwdb entry it matched (datasheet, or
  derived from probed facts for CPUs; a backend may name the entry of its device in
  ``Device.properties["hwdb_entry"]``), else conservative defaults per device kind; power
  from the entry's TDP (a CPU's share of it for the cores this process may use); the host
  link from ``Device.properties["host_link_gb_s"]`` when the backend probed it;
- the backend on the device: its own calibration record (MatMul, Conv and depthwise Conv
  rates, bandwidth, launch and per-node overheads, each relative to the device's
  figures), else the backend's declared ``cost_hints``, else :data:`DEFAULT_HINTS`;
- past runs: sessions report each partition's measured time beside its prediction split
  by op family (:func:`observe_partition`). Per backend version and device fingerprint, a
  factor per family (and one on fixed costs) is fitted to the runs of every model, so a
  model never run before is priced with what the others taught; once a model has
  :data:`MIN_OBSERVATIONS` runs of its own, what is left of its error scales its
  predictions too (:mod:`backplane.engine.learning`, ``<data dir>/costmodel.json``).

Everything here is plain arithmetic on cached figures: planning a 1,000-node graph must
take milliseconds.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from backplane import ops
from backplane.engine import learning
from backplane.engine.learning import (FAMILIES, MAX_CORRECTION, MIN_OBSERVATIONS,
                                       correction, error_sigma, observe, save)
from backplane.hardware import liveload as load

if TYPE_CHECKING:  # pragma: no cover
    from backplane.engine.plan import Partition, Plan
    from backplane.sdk.contract import Backend, Device
    from backplane.model.graph import Node

#: Cost hints for a backend that declares none (per-node and per-call overheads in µs,
#: efficiencies as fractions of the device's peak rate and memory bandwidth).
DEFAULT_HINTS = {"launch_us": 20.0, "node_us": 5.0, "compute_efficiency": 0.3,
                 "memory_efficiency": 0.5}
#: Device figures when neither calibration nor the hwdb has one, per device kind:
#: (fp32 TFLOP/s, memory GB/s, power W).
KIND_DEFAULTS = {"cpu": (0.05, 10.0, 15.0), "gpu": (10.0, 500.0, 300.0),
                 "npu": (2.0, 50.0, 5.0), "accelerator": (5.0, 100.0, 50.0)}
#: A CPU core's share of memory bandwidth is at least this (GB/s): one core of a many-core
#: server streams far more than bandwidth / cores.
MIN_CPU_CORE_GB_S = 8.0
#: Host link when the hwdb has none: PCIe 4.0 x16 per direction, and a copy's latency.
DEFAULT_LINK_GB_S, DEFAULT_LINK_LATENCY_S = 25.0, 10e-6
#: A backend whose QDQ MatMul runs this many times its fp32 MatMul rate runs int8 kernels.
INT8_KERNELS = 1.5
_MATMUL_OPS = frozenset({"MatMul", "Gemm", "MatMulInteger", "FusedMatMulBiasGelu", "Attention"})
_CONV_OPS = frozenset({"Conv", "ConvTranspose", "FusedConvRelu", "ConvInteger"})
#: Calibration figure of each family's rate.
_FAMILY_FIGURES = {"matmul": "matmul_layers_tflops", "conv": "conv_fp32_tflops",
                   "dwconv": "dwconv_fp32_tflops", "qmatmul": "qdq_matmul_tops"}
_PRECISION_FIGURES = {"fp64": "fp64_tflops", "fp32": "fp32_tflops", "tf32": "tf32_tflops",
                      "fp16": "fp16_tflops", "bf16": "bf16_tflops", "fp8": "fp8_tflops",
                      "int8": "int8_tops"}


@dataclass
class DeviceProfile:
    """What the cost model knows about one device."""

    device: str
    kind: str
    domain: str
    """Memory domain: devices in one domain share memory (every CPU device is ``host``)."""
    peak: dict[str, float]
    """Peak operations per second by precision (fp32 always present)."""
    bandwidth: float
    """Memory bandwidth, bytes per second, for the cores or device this process uses."""
    link_bandwidth: float
    link_latency: float
    power_w: float
    memory_bytes: int | None
    fingerprint: str | None
    entry: str | None
    basis: list[str] = field(default_factory=list)
    measured: dict[str, dict[str, float]] = field(default_factory=dict)
    """Calibrated figures per backend name, as stored by ``backplane hwdb calibrate``."""
    cache_bytes: int | None = None
    """The last-level cache (a CPU's L3 from sysfs): data that fits streams faster."""
    cache_bandwidth: float = 0.0
    """Bytes per second for data that fits ``cache_bytes`` (the best backend's 4 MiB
    element-wise rate; the memory bandwidth when not measured)."""


@dataclass
class BackendRates:
    """One backend on one device: its overheads and efficiencies."""

    launch_s: float
    node_s: float
    efficiency: dict[str, float]
    memory_efficiency: float
    source: str
    io_s_per_byte: float = 0.0
    """What a call costs per byte of its inputs and outputs beyond streaming them (copies
    into and out of the runtime's own buffers)."""


def family(node: "Node", quantized: bool = False) -> str:
    """The efficiency family of a node: matmul, qmatmul (``quantized``: it reads
    dequantized values), conv, dwconv or other."""
    if node.op_type in _MATMUL_OPS:
        return "qmatmul" if quantized and node.op_type in ("MatMul", "Gemm") else "matmul"
    if node.op_type in _CONV_OPS:
        return "dwconv" if int(node.attributes.get("group", 1) or 1) > 1 else "conv"
    return "other"


class CostModel:
    """Prices nodes, partitions and transfers for a set of devices and their backends.

    Build one per plan (:func:`for_devices`); it reads cached device profiles, the
    current live load and what past runs taught once, so every price within one plan sees
    the same machine state.
    """

    def __init__(self, devices: "list[Device]", backends: "dict[str, Backend]",
                 model_key: str = ""):
        self.profiles = {d.id: profile(d) for d in devices}
        self.rates = {d.id: rates(backends[d.backend], self.profiles[d.id])
                      for d in devices}
        self.slowdown = {d.id: load.slowdown(d) for d in devices}
        self.learned: dict[str, dict[str, float]] = {}
        """Device id -> the factor runs of every model put on each family and ``fixed``."""
        self.correction: dict[str, float] = {}
        """Device id -> the factor this model's own runs put on top."""
        for d in devices:
            self.learned[d.id], self.correction[d.id] = learning.learned(
                d.backend, _version(backends[d.backend]), self.profiles[d.id].fingerprint,
                model_key)

    def node_time(self, node: "Node", device_id: str, precision: str,
                  cost: Any | None = None, quantized: bool = False,
                  fused: bool = False) -> float:
        """Predicted seconds for ``node`` on a device at ``precision``, inside a partition
        (the partition's launch overhead is :meth:`launch_time`). ``quantized``: the node
        reads the output of a DequantizeLinear. ``fused``: a graph compiler folds the node
        into the one producing its input, so it moves no data of its own."""
        return self.learned_time(device_id, *self.node_parts(node, device_id, precision, cost,
                                                             quantized, fused))

    def learned_time(self, device_id: str, fam: str, work_s: float, overhead_s: float
                     ) -> float:
        """Seconds of a node priced by :meth:`node_parts`, with what past runs taught."""
        learned = self.learned[device_id]
        return (work_s * learned[fam] + overhead_s * learned["fixed"]) * \
            self.correction[device_id]

    def node_parts(self, node: "Node", device_id: str, precision: str,
                   cost: Any | None = None, quantized: bool = False, fused: bool = False,
                   folded: bool = False) -> tuple[str, float, float]:
        """A node's family, and its predicted seconds of work and of per-node overhead,
        under the live load but before anything learned (what runs are compared with).
        ``folded``: a graph compiler folds the node at compile time (every input a
        constant), so it costs its per-node overhead at most. See :meth:`node_time`."""
        fam = family(node, quantized)
        r = self.rates[device_id]
        if folded:
            return fam, 0.0, r.node_s
        c = cost if cost is not None else ops.cost(node)
        prof = self.profiles[device_id]
        # Efficiencies are fractions of the fp32 peak, but for lower-precision paths.
        peak = prof.peak.get(_pricing_precision(node, precision, quantized), prof.peak["fp32"])
        compute = c.flops / (peak * r.efficiency[fam]) if c.flops else 0.0
        # Matrix and convolution kernels stream their operands at the device's bandwidth;
        # how well a backend does on memory-bound element-wise work is its own figure.
        nbytes = c.bytes
        level = prof.cache_bandwidth if prof.cache_bytes and nbytes <= prof.cache_bytes \
            else prof.bandwidth
        bandwidth = level * (r.memory_efficiency if fam == "other" else 1.0)
        if fam == "qmatmul" and r.efficiency["qmatmul"] > INT8_KERNELS * r.efficiency["matmul"]:
            nbytes //= 4  # int8 kernels: the dequantized operands stay int8 in memory
        memory = nbytes / bandwidth if nbytes and not fused else 0.0
        slow = self.slowdown[device_id][0]
        return fam, max(compute, memory) * slow, r.node_s * slow

    def io_time(self, device_id: str, nbytes: int, learned: bool = True) -> float:
        """Predicted seconds a call spends copying ``nbytes`` of inputs or outputs
        (``learned=False``: before anything learned)."""
        t = nbytes * self.rates[device_id].io_s_per_byte * self.slowdown[device_id][0]
        return t * self._fixed_factor(device_id) if learned else t

    def folded_time(self, device_id: str) -> float:
        """Predicted seconds of a node that reads only constants, on a graph compiler:
        it is folded at compile time and costs its per-node overhead at most."""
        return self.rates[device_id].node_s * self._fixed_factor(device_id)

    def launch_time(self, device_id: str, learned: bool = True) -> float:
        """Predicted seconds of one call into a partition on the device
        (``learned=False``: before anything learned)."""
        t = self.rates[device_id].launch_s * self.slowdown[device_id][0]
        return t * self._fixed_factor(device_id) if learned else t

    def _fixed_factor(self, device_id: str) -> float:
        return self.learned[device_id]["fixed"] * self.correction[device_id]

    def transfer_time(self, nbytes: int, src: str | None, dst: str | None) -> float:
        """Seconds to move ``nbytes`` from one device to another (``None`` is the host
        caller: graph inputs come from it and outputs go back to it)."""
        a = self.profiles[src].domain if src else "host"
        b = self.profiles[dst].domain if dst else "host"
        if a == b:
            return 0.0
        hops = [p for p in (self.profiles.get(src or ""), self.profiles.get(dst or ""))
                if p is not None and p.domain != "host"]
        return sum(p.link_latency + nbytes / p.link_bandwidth for p in hops)

    def energy(self, seconds: float, device_id: str) -> float:
        """Joules a device spends working for ``seconds``."""
        return seconds * self.profiles[device_id].power_w

    def domain(self, device_id: str) -> str:
        """The memory domain of a device."""
        return self.profiles[device_id].domain


def for_devices(devices: "list[Device]", backends: "dict[str, Backend]",
                model_key: str = "") -> CostModel:
    """A cost model over ``devices``, with the corrections learned for ``model_key``
    (:func:`graph_key`)."""
    return CostModel(devices, backends, model_key)


def graph_key(graph: Any) -> str:
    """A short key of a graph's structure and sizes (ops, attributes' names, input shapes):
    what corrections learned from past runs are kept under. A model's errors are its own
    (a backend may be 2x faster than predicted on one network and 2x slower on another),
    so a correction applies to the model it was learned on, at the sizes it ran at."""
    import hashlib

    h = hashlib.sha1()
    for node in graph.nodes:
        h.update(f"{node.domain}:{node.op_type}:{node.input_shapes}:"
                 f"{sorted(node.attributes)};".encode())
    return h.hexdigest()[:16]


def _pricing_precision(node: "Node", precision: str, quantized: bool) -> str:
    """The precision a node actually computes at on a path of ``precision``: lower float
    precisions apply to float nodes; int8 only to integer ops and quantized patterns."""
    if precision == "int8":
        return "int8" if node.op_type in ("MatMulInteger", "ConvInteger") or quantized \
            else "fp32"
    return precision if node.primary_dtype in ("float32", None) else "fp32"


# -- device profiles -------------------------------------------------------------------------

_profile_lock = threading.Lock()
_profiles: dict[str, DeviceProfile] = {}


def profile(device: "Device") -> DeviceProfile:
    """The cached profile of one device (built on first use: hwdb match, calibration)."""
    key = repr((device.id, device.name, device.kind, device.memory_bytes,
                sorted((str(k), repr(v)) for k, v in (device.properties or {}).items())))
    with _profile_lock:
        found = _profiles.get(key)
    if found is not None:
        return found
    built = _build_profile(device)
    with _profile_lock:
        return _profiles.setdefault(key, built)


def refresh() -> None:
    """Forget cached device profiles and learned corrections (re-read on next use)."""
    with _profile_lock:
        _profiles.clear()
    learning.forget()


def _build_profile(device: "Device") -> DeviceProfile:
    # on use only: the hwdb loads pydantic and its TOML files when asked
    from backplane.hardware import calibrate, db
    from backplane.hardware.match import match_devices

    props = device.properties or {}
    fpeak, fbw, fpower = KIND_DEFAULTS.get(device.kind, KIND_DEFAULTS["accelerator"])
    try:
        m = match_devices([device]).get(device.id)
    except Exception:  # an unreadable hwdb never stops planning: defaults hold
        m = None
    figures = dict(m.figures) if m is not None else {}
    fingerprint = m.hardware.fingerprint if m is not None else None
    entry_id = props.get("hwdb_entry") or (m.entry_id if m is not None else None)
    entry = None
    if entry_id:
        try:
            entry = db.load().get(entry_id)
        except Exception:
            entry = None
        if entry is not None and m is None and entry.dense is not None:
            figures.update(entry.dense.figures())
            if entry.memory is not None and entry.memory.bandwidth_gb_s:
                figures["memory_bandwidth_gb_s"] = entry.memory.bandwidth_gb_s
    basis = [m.basis if m is not None and m.basis else
             (f"hwdb entry '{entry_id}'" if entry_id else
              f"no hwdb figures: defaults for a {device.kind}")]
    measured: dict[str, dict[str, float]] = {}
    if fingerprint:
        for r in calibrate.read_overlay():
            if r.get("fingerprint") == fingerprint and r.get("backend"):
                values = {k: v.get("value") for k, v in (r.get("measured") or {}).items()
                          if isinstance(v, dict) and isinstance(v.get("value"), (int, float))}
                measured.setdefault(r["backend"], {}).update(values)
    best = {}
    for values in measured.values():
        for k, v in values.items():
            best[k] = min(best.get(k, v), v) if k.endswith("_us") else max(best.get(k, v), v)
    peak: dict[str, float] = {}
    for precision, key in _PRECISION_FIGURES.items():
        value = figures.get(key)
        if key in best:
            value = best[key] if value is None else max(value, best[key])
        if value:
            peak[precision] = value * 1e12
    if "fp32" not in peak:
        peak["fp32"] = fpeak * 1e12
    if best:
        basis.append("calibrated: " + ", ".join(sorted(measured)))
    cores = None
    if device.kind == "cpu" and m is not None:
        cores = m.hardware.facts.get("cores")
    bandwidth = figures.get("memory_bandwidth_gb_s")
    if bandwidth and device.kind == "cpu" and entry is not None and entry.cpu is not None \
            and entry.cpu.cores and cores:
        # The socket's bandwidth is shared by all its cores; this process has ``cores``.
        bandwidth = max(bandwidth * cores / entry.cpu.cores, MIN_CPU_CORE_GB_S * cores)
    bandwidth = max(bandwidth or fbw, best.get("memory_bandwidth_gb_s", 0.0))
    power = fpower if device.kind != "cpu" else fpower * (cores or 1) / 4
    if entry is not None and entry.power is not None and entry.power.tdp_w:
        power = entry.power.tdp_w
        if device.kind == "cpu" and entry.cpu is not None and entry.cpu.cores and cores:
            power *= min(1.0, cores / entry.cpu.cores)
    # A link the backend probed (PCIe generation x width, a USB NPU) beats the datasheet's.
    link = props.get("host_link_gb_s") or figures.get("host_link_gb_s") or DEFAULT_LINK_GB_S
    memory = device.memory_bytes or (int(figures["memory_gib"] * 2**30)
                                     if figures.get("memory_gib") else None)
    if memory is None and device.kind == "cpu":
        memory = _host_memory()
    domain = "host" if device.kind == "cpu" else str(props.get("pci_bus_id") or device.id)
    l3 = m.hardware.facts.get("l3_kib") if m is not None and device.kind == "cpu" else None
    cached = max(best.get("elementwise_gb_s", 0.0), bandwidth)
    return DeviceProfile(device.id, device.kind, domain, peak, bandwidth * 1e9, link * 1e9,
                         DEFAULT_LINK_LATENCY_S, power, memory, fingerprint, entry_id, basis,
                         measured, int(l3) * 1024 if l3 else None, cached * 1e9)


def _host_memory() -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def rates(backend: "Backend", prof: DeviceProfile) -> BackendRates:
    """A backend's overheads and efficiencies on a device: calibrated, else its hints."""
    hints = dict(DEFAULT_HINTS)
    declared = getattr(backend, "cost_hints", None) or {}
    hints.update({k: float(v) for k, v in declared.items() if k in DEFAULT_HINTS
                  and isinstance(v, (int, float)) and v > 0})
    eff = {f: min(1.0, hints["compute_efficiency"]) for f in FAMILIES}
    mem_eff = min(1.0, hints["memory_efficiency"])
    launch, node = hints["launch_us"] * 1e-6, hints["node_us"] * 1e-6
    io = 0.0
    source = "declared cost hints" if declared else "default cost hints"
    cal = prof.measured.get(backend.name)
    if cal:
        source = "calibrated"
        fp32 = prof.peak["fp32"]
        for fam, key in _FAMILY_FIGURES.items():
            if cal.get(key):
                # Int8 kernels may beat the fp32 peak, up to the device's int8 peak.
                cap = prof.peak.get("int8", fp32) / fp32 if fam == "qmatmul" else 1.0
                eff[fam] = min(cap, cal[key] * 1e12 / fp32)
        if cal.get("fp32_tflops") and not cal.get("matmul_layers_tflops"):
            eff["matmul"] = min(1.0, cal["fp32_tflops"] * 1e12 / fp32)  # the square peak
        for fam, key in (("conv", "conv_fp32_tflops"), ("qmatmul", "qdq_matmul_tops")):
            if not cal.get(key):
                eff[fam] = eff["matmul"]
        if cal.get("elementwise_gb_s"):
            best = max(v.get("elementwise_gb_s") or 0.0 for v in prof.measured.values()) * 1e9
            own = cal["elementwise_gb_s"] * 1e9
            if backend.kernels is None:
                # A graph compiler runs element-wise work inside a graph fused, at the
                # device's rate; where its one-node Mul is slower than the best backend's,
                # the difference is the call copying its inputs and outputs.
                mem_eff, io = 1.0, max(0.0, 1 / own - 1 / best)
            else:
                mem_eff = min(1.0, own / best)
            eff["other"] = mem_eff
        elif cal.get("memory_bandwidth_gb_s"):
            mem_eff = min(1.0, cal["memory_bandwidth_gb_s"] * 1e9 / prof.bandwidth)
            eff["other"] = mem_eff
        if cal.get("launch_overhead_us"):
            launch = cal["launch_overhead_us"] * 1e-6
        if cal.get("node_overhead_us") is not None:
            node = max(0.0, cal["node_overhead_us"]) * 1e-6
    return BackendRates(launch, node, eff, mem_eff, source, io)


def _version(backend: "Backend") -> str:
    return str(getattr(backend, "version", "") or "0")


# -- learning from past runs -----------------------------------------------------------------

def observe_partition(plan: "Plan", part: "Partition", seconds: float) -> None:
    """Record one measured run of a partition of ``plan``: ``seconds`` against its
    prediction per op family (:attr:`Partition.predicted_by_family`), which teaches the
    family factors of its backend on its device for every model, and this model's own
    (:mod:`backplane.engine.learning`). A partition with no family split is recorded with
    its whole prediction, for this model only."""
    version = plan.versions.get(part.backend, "0")
    fingerprint = plan.fingerprints.get(part.device)
    if part.predicted_by_family:
        learning.record(part.backend, version, fingerprint, plan.model_key,
                        part.predicted_by_family, seconds)
    else:
        correction_ = plan.corrections.get(part.device, 1.0) or 1.0
        observe(part.backend, version, fingerprint, plan.model_key,
                part.predicted_s / correction_, seconds)


__all__ = ["BackendRates", "CostModel", "DEFAULT_HINTS", "DeviceProfile", "FAMILIES",
           "KIND_DEFAULTS", "MAX_CORRECTION", "MIN_OBSERVATIONS", "correction", "error_sigma",
           "family", "for_devices", "graph_key", "observe", "observe_partition", "profile",
           "rates", "refresh", "save"]
