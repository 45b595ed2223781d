"""The schema of an hwdb entry: one TOML file per SKU, units in field names, every figure sourced.

An entry is data only. It is parsed with ``tomllib`` (nothing in it is ever executed) and
validated by these pydantic models, then by the plausibility checks in ``checks.py``, which
catch the classic datasheet mistakes a schema cannot (a TB/s figure in a GB/s field, a
sparse rate in a dense field ...). ``hwdb/schema.json`` is these models as JSON Schema, for
editors and for plugin authors who write entries without backplane installed.

Units: ``_tflops`` TFLOP/s, ``_tops`` TOP/s (integer), ``_gib`` GiB, ``_kib`` KiB, ``_gb_s``
GB/s (10^9 bytes per second), ``_mhz`` MHz, ``_w`` W. Dense and sparse peak rates live in
separate tables, ``[dense]`` and ``[sparse]``; a dense table never holds a sparse figure.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = 1
KINDS = ("cpu", "gpu", "npu", "accelerator")
#: Element types an entry may list in ``dtypes``.
DTYPES = ("fp64", "fp32", "tf32", "fp16", "bf16", "fp8", "fp6", "fp4", "int32", "int16",
          "int8", "int4", "uint8", "bool")
#: ISA features and hardware units an entry may list in ``features`` (a closed vocabulary,
#: so that the scheduler can rely on the spelling).
FEATURES = (
    # x86
    "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx512_bf16", "avx512_fp16", "avx_vnni", "amx", "amx_bf16", "amx_int8", "amx_fp16",
    # arm
    "neon", "asimd", "asimdhp", "asimddp", "fphp", "i8mm", "bf16", "sve", "sve2", "sme",
    # accelerators
    "tensor-cores", "matrix-cores", "sparsity-2:4", "fp8", "fp4", "transformer-engine",
    "nvlink", "infinity-fabric", "unified-memory", "npu-static-shapes",
)
ID_PATTERN = r"^[a-z0-9][a-z0-9-]*/[a-z0-9][a-z0-9.-]*$"

Pos = Annotated[float, Field(gt=0)]
PosInt = Annotated[int, Field(gt=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Source(_Strict):
    """A document the figures come from."""

    id: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")]
    title: Annotated[str, Field(min_length=3)]
    url: Annotated[str, Field(pattern=r"^https?://\S+$")]
    accessed: str | None = None
    note: str | None = None


class _Sourced(_Strict):
    """A table of figures with the id of the source they come from.

    ``source`` covers every figure of the table; ``field_sources`` names another source for
    single fields (``{ fp8_tflops = "nv-transformer-engine" }``).
    """

    source: str | None = None
    field_sources: dict[str, str] = Field(default_factory=dict)

    def figures(self) -> dict[str, float]:
        """The numeric fields that are set (the figures that need a source)."""
        return {k: v for k, v in self.__dict__.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)}


class Peak(_Sourced):
    """Peak rates per element type, TFLOP/s for floats and TOP/s for integers.

    ``fp64_tensor_tflops`` is the matrix-unit fp64 rate where it differs from the vector one.
    """

    fp64_tflops: Pos | None = None
    fp64_tensor_tflops: Pos | None = None
    fp32_tflops: Pos | None = None
    tf32_tflops: Pos | None = None
    fp16_tflops: Pos | None = None
    bf16_tflops: Pos | None = None
    fp8_tflops: Pos | None = None
    fp6_tflops: Pos | None = None
    fp4_tflops: Pos | None = None
    int8_tops: Pos | None = None
    int4_tops: Pos | None = None


class Compute(_Sourced):
    """Compute units (SMs, CUs, cores, NPU tiles) and clocks."""

    units: PosInt | None = None
    unit_name: str | None = None
    base_clock_mhz: Pos | None = None
    boost_clock_mhz: Pos | None = None


class Memory(_Sourced):
    """Device memory (for a CPU: the memory system of one socket)."""

    size_gib: Pos | None = None
    type: str | None = None
    bandwidth_gb_s: Pos | None = None
    bus_width_bits: PosInt | None = None
    channels: PosInt | None = None


class Cache(_Sourced):
    """Cache sizes: per compute unit (``_per_unit``) or for the whole device."""

    l1d_kib_per_unit: Pos | None = None
    l1i_kib_per_unit: Pos | None = None
    l2_kib_per_unit: Pos | None = None
    l2_kib: Pos | None = None
    l3_kib: Pos | None = None
    shared_kib_per_unit: Pos | None = None


class Power(_Sourced):
    """Thermal design power (the board or package figure the vendor states)."""

    tdp_w: Pos | None = None
    min_tdp_w: Pos | None = None


class HostLink(_Sourced):
    """How the device reaches host memory, and that link's bandwidth per direction."""

    type: str
    bandwidth_gb_s: Pos | None = None


class Cpu(_Sourced):
    """Per-core figures of a CPU, from which the peak of any core count is derived.

    ``*_flops_per_cycle`` is per core: vector (or matrix, for AMX/SME) units x lanes x 2 for
    FMA. ``cores``/``threads`` are the SKU's, per socket (absent in generic entries, whose
    core count is probed).
    """

    cores: PosInt | None = None
    threads: PosInt | None = None
    fp64_flops_per_cycle: Pos | None = None
    fp32_flops_per_cycle: Pos
    fp16_flops_per_cycle: Pos | None = None
    bf16_flops_per_cycle: Pos | None = None
    int8_ops_per_cycle: Pos | None = None
    all_core_clock_mhz: Pos | None = None


# -- match rules -----------------------------------------------------------------------------


class _Rule(_Strict):
    confidence: Annotated[float, Field(gt=0, le=1)] = 0.9
    note: str | None = None


def _regex(value: str | None) -> str | None:
    if value is not None:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
    return value


class PciRule(_Rule):
    """PCI vendor id and any of the device ids (``0x10de``, ``0x2330``)."""

    rule: Literal["pci"]
    vendor_id: Annotated[str, Field(pattern=r"^0x[0-9a-f]{4}$")]
    device_ids: Annotated[list[Annotated[str, Field(pattern=r"^0x[0-9a-f]{4}$")]],
                          Field(min_length=1)]


class CudaRule(_Rule):
    """CUDA compute capability and a pattern on the device name (NVML, torch, nvidia-smi)."""

    rule: Literal["cuda"]
    compute_capability: Annotated[str, Field(pattern=r"^\d+\.\d+$")]
    name: str | None = None
    memory_gib_min: Pos | None = None
    memory_gib_max: Pos | None = None

    _check = field_validator("name")(_regex)


class CpuRule(_Rule):
    """CPU vendor, family, models, required flags and a pattern on the model name.

    On aarch64 ``parts`` are core names from the CPU part number (``Neoverse-N1``).
    """

    rule: Literal["cpu"]
    arch: Literal["x86_64", "aarch64"] | None = None
    vendor_id: str | None = None
    family: int | None = None
    models: list[int] = Field(default_factory=list)
    parts: list[str] = Field(default_factory=list)
    flags: list[str] = Field(default_factory=list)
    name: str | None = None

    _check = field_validator("name")(_regex)


class OpenVinoRule(_Rule):
    """A pattern on OpenVINO's ``FULL_DEVICE_NAME`` of a device (``CPU``, ``GPU``, ``NPU``)."""

    rule: Literal["openvino"]
    device: str | None = None
    full_device_name: str

    _check = field_validator("full_device_name")(_regex)


class OpenClRule(_Rule):
    """A pattern on an OpenCL device's ``name`` (and optionally its platform's)."""

    rule: Literal["opencl"]
    device_name: str
    platform: str | None = None

    _check = field_validator("device_name", "platform")(_regex)


class GfxRule(_Rule):
    """An AMD gfx target (``gfx942``), optionally with a pattern on the marketing name."""

    rule: Literal["gfx"]
    gfx_target: Annotated[str, Field(pattern=r"^gfx[0-9a-f]+$")]
    name: str | None = None

    _check = field_validator("name")(_regex)


class NameRule(_Rule):
    """A pattern on the device name any probe reports (an NPU driver, a board name)."""

    rule: Literal["name"]
    kind: Literal["cpu", "gpu", "npu", "accelerator"]
    name: str

    _check = field_validator("name")(_regex)


Rule = Annotated[Union[PciRule, CudaRule, CpuRule, OpenVinoRule, OpenClRule, GfxRule, NameRule],
                 Field(discriminator="rule")]


class Derive(_Strict):
    """How a generic entry's figures come from probed facts.

    peak(dtype) = cores x clock x ``<dtype>_flops_per_cycle`` (from ``[cpu]``) for CPUs;
    units x clock x ``flops_per_cycle_per_unit`` for GPUs.
    """

    flops_per_cycle_per_unit: dict[str, Pos] = Field(default_factory=dict)
    assumed_clock_mhz: Pos | None = None
    note: str


class Entry(_Strict):
    """One hwdb entry.

    ``replaces = true`` says the entry deliberately takes the place of a lower-precedence
    entry with the same id (a user correcting a shipped figure); without it, such a
    conflict is reported as a warning.
    """

    schema_version: Literal[1] = Field(alias="schema")
    id: Annotated[str, Field(pattern=ID_PATTERN)]
    name: Annotated[str, Field(min_length=2)]
    vendor: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]*$")]
    kind: Literal["cpu", "gpu", "npu", "accelerator"]
    architecture: str | None = None
    released: Annotated[int, Field(ge=1990, le=2100)] | None = None
    generic: bool = False
    replaces: bool = False
    tensor_units: bool = False
    dtypes: Annotated[list[Literal[DTYPES]], Field(min_length=1)]  # type: ignore[valid-type]
    features: list[Literal[FEATURES]] = Field(default_factory=list)  # type: ignore[valid-type]
    compute: Compute | None = None
    dense: Peak | None = None
    sparse: Peak | None = None
    memory: Memory | None = None
    cache: Cache | None = None
    power: Power | None = None
    host_link: HostLink | None = None
    cpu: Cpu | None = None
    derive: Derive | None = None
    sources: list[Source] = Field(default_factory=list)
    match: list[Rule] = Field(default_factory=list)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _shape(self) -> "Entry":
        if self.vendor != self.id.split("/", 1)[0]:
            raise ValueError(f"vendor '{self.vendor}' differs from the id's vendor part "
                             f"'{self.id.split('/', 1)[0]}'")
        if self.kind == "cpu" and self.cpu is None:
            raise ValueError("a cpu entry needs a [cpu] table (cores and flops per cycle)")
        if self.kind == "cpu" and not self.generic and self.cpu.cores is None:
            raise ValueError("a cpu SKU entry needs cpu.cores (per socket)")
        if self.generic and self.derive is None:
            raise ValueError("a generic entry needs a [derive] table saying how its figures "
                             "come from probed facts")
        if not self.generic and self.dense is None:
            raise ValueError("a SKU entry needs a [dense] table of peak rates")
        return self

    def tables(self) -> dict[str, _Sourced]:
        """The sourced tables that are present, by name."""
        names = ("compute", "dense", "sparse", "memory", "cache", "power", "host_link", "cpu")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


def json_schema() -> dict:
    """The entry schema as JSON Schema (what ``hwdb/schema.json`` holds)."""
    return Entry.model_json_schema(by_alias=True)
