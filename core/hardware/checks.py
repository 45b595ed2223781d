"""Plausibility checks: the datasheet mistakes a schema cannot catch.

Each check looks at one validated entry and returns :class:`Problem` records naming the
file, the field, the value and what was expected. They catch the classic mistakes of hand-
copied hardware tables: a bandwidth in TB/s in a GB/s field, a sparse rate in a dense field,
an fp16 rate below fp32 on a part with tensor units, a clock in GHz, a memory size in MiB,
a figure without a source, a CPU peak inconsistent with its own per-core figures.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from backplane.hardware.schema import Entry

#: Lowest believable memory bandwidth (GB/s) per memory technology; a figure below it is
#: almost always TB/s written into a GB/s field.
MIN_BANDWIDTH_GB_S = {"HBM": 300.0, "GDDR": 100.0, "LPDDR": 5.0, "DDR": 5.0}
MAX_BANDWIDTH_GB_S = 20000.0
#: A dense rate above this fraction of the sparse rate of the same type is a sparse figure.
MAX_DENSE_TO_SPARSE = 0.6
#: Tolerance between a CPU's [dense] fp32 and cores x clock x flops per cycle.
CPU_PEAK_TOLERANCE = 0.25


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one hwdb file."""

    file: str
    field: str
    value: Any
    expected: str

    def __str__(self) -> str:
        where = f"{self.file}: {self.field}" if self.field else self.file
        return f"{where} = {self.value!r}: {self.expected}"

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as ``backplane hwdb validate --json`` prints it."""
        d = asdict(self)
        d["value"] = repr(self.value) if not isinstance(d["value"], (int, float, str)) else d["value"]
        return d


def check(entry: Entry, file: str) -> list[Problem]:
    """Every plausibility problem of one entry (an empty list when it is believable)."""
    problems: list[Problem] = []
    for fn in (_sources, _bandwidth, _dense_vs_sparse, _fp16_vs_fp32, _units, _cpu_peak):
        problems += [Problem(file, f, v, e) for f, v, e in fn(entry)]
    return problems


def _sources(e: Entry):
    known = {s.id for s in e.sources}
    seen: set[str] = set()
    for s in e.sources:
        if s.id in seen:
            yield "sources.id", s.id, "unique source ids within the file"
        seen.add(s.id)
    for name, table in e.tables().items():
        for field in table.field_sources:
            if field not in table.figures():
                yield f"{name}.field_sources.{field}", field, \
                    f"a figure of [{name}] (it has {sorted(table.figures())})"
        for field, value in table.figures().items():
            source = table.field_sources.get(field, table.source)
            if source is None:
                yield f"{name}.{field}", value, (f"a source: set [{name}] source = \"<id>\" "
                                                  "naming one of [[sources]]")
            elif source not in known:
                yield f"{name}.source", source, \
                    f"the id of one of [[sources]] ({', '.join(sorted(known)) or 'none listed'})"


def _bandwidth(e: Entry):
    m = e.memory
    if m is not None and m.bandwidth_gb_s is not None:
        kind = (m.type or "").upper()
        floor = next((v for k, v in MIN_BANDWIDTH_GB_S.items() if kind.startswith(k)), 1.0)
        if m.bandwidth_gb_s < floor:
            tb = " (it looks like TB/s written into a GB/s field)" if m.bandwidth_gb_s < 20 else ""
            yield "memory.bandwidth_gb_s", m.bandwidth_gb_s, \
                f"GB/s, at least {floor:g} for {m.type or 'any memory'}{tb}"
        elif m.bandwidth_gb_s > MAX_BANDWIDTH_GB_S:
            yield "memory.bandwidth_gb_s", m.bandwidth_gb_s, \
                f"GB/s, at most {MAX_BANDWIDTH_GB_S:g} (is it MB/s?)"
    link = e.host_link
    if link is not None and link.bandwidth_gb_s is not None and link.bandwidth_gb_s < 0.5:
        yield "host_link.bandwidth_gb_s", link.bandwidth_gb_s, \
            "GB/s per direction, at least 0.5 (it looks like TB/s or a different unit)"


def _dense_vs_sparse(e: Entry):
    if e.dense is None or e.sparse is None:
        return
    sparse = e.sparse.figures()
    for field, dense in e.dense.figures().items():
        if field in sparse and dense > MAX_DENSE_TO_SPARSE * sparse[field]:
            yield f"dense.{field}", dense, (
                f"a dense rate, at most {MAX_DENSE_TO_SPARSE:g} x the sparse "
                f"{sparse[field]:g} (2:4 sparsity doubles the rate); this looks like the "
                "sparse figure in the dense table")


def _fp16_vs_fp32(e: Entry):
    if not e.tensor_units or e.dense is None:
        return
    fp16, fp32 = e.dense.fp16_tflops, e.dense.fp32_tflops
    if fp16 is not None and fp32 is not None and fp16 < fp32:
        yield "dense.fp16_tflops", fp16, (
            f"at least the fp32 rate {fp32:g} on a part with tensor units (a vector or "
            "non-tensor fp16 figure, or a fp16/fp32 swap?)")


def _units(e: Entry):
    c = e.compute
    for field in ("base_clock_mhz", "boost_clock_mhz"):
        value = getattr(c, field, None) if c else None
        if value is not None and not 100 <= value <= 10000:
            yield f"compute.{field}", value, "MHz, between 100 and 10000 (is it GHz?)"
    if e.cpu is not None and e.cpu.all_core_clock_mhz is not None and \
            not 100 <= e.cpu.all_core_clock_mhz <= 10000:
        yield "cpu.all_core_clock_mhz", e.cpu.all_core_clock_mhz, "MHz, between 100 and 10000"
    if e.memory is not None and e.memory.size_gib is not None and e.memory.size_gib > 16384:
        yield "memory.size_gib", e.memory.size_gib, "GiB, at most 16384 (is it MiB?)"
    if e.power is not None and e.power.tdp_w is not None and e.power.tdp_w > 3000:
        yield "power.tdp_w", e.power.tdp_w, "W per device, at most 3000 (is it a system figure?)"


def _cpu_peak(e: Entry):
    cpu = e.cpu
    if cpu is None or e.dense is None or e.dense.fp32_tflops is None or cpu.cores is None \
            or cpu.all_core_clock_mhz is None:
        return
    derived = cpu.cores * cpu.all_core_clock_mhz * 1e6 * cpu.fp32_flops_per_cycle / 1e12
    if abs(e.dense.fp32_tflops - derived) > CPU_PEAK_TOLERANCE * derived:
        yield "dense.fp32_tflops", e.dense.fp32_tflops, (
            f"about cores x all-core clock x fp32 flops per cycle = {cpu.cores} x "
            f"{cpu.all_core_clock_mhz:g} MHz x {cpu.fp32_flops_per_cycle:g} = {derived:.3g} "
            f"TFLOP/s (within {CPU_PEAK_TOLERANCE:.0%}); per-core and per-socket mixed up?")
