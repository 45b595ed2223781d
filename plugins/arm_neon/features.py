"""CPU features of an ARM CPU and the kernel variants they allow.

A kernel source ``x.c`` is the base variant (ARMv8-A with Advanced SIMD, which every
AArch64 CPU has); ``x.VARIANT.c`` is compiled with the instruction-set extension of
``VARIANT`` and runs only where the CPU reports the matching feature. Features come from the
kernel's hardware capability words (``getauxval(AT_HWCAP)`` and ``AT_HWCAP2``: natively
through ctypes, under emulation from the harness, which reads them inside qemu), else from
the ``Features`` line of ``/proc/cpuinfo``. Nothing here imports numpy.
"""

from __future__ import annotations

import ctypes
import platform
from collections.abc import Iterable, Mapping
from pathlib import Path
from backplane.sdk.hostfacts import parse_cpuinfo

#: Bits of AT_HWCAP and AT_HWCAP2 (Linux, arch/arm64/include/uapi/asm/hwcap.h) by the
#: feature names /proc/cpuinfo prints.
HWCAP_BITS = {"fp": 0, "asimd": 1, "fphp": 9, "asimdhp": 10, "asimddp": 20, "sve": 22,
              "asimdfhm": 23}
HWCAP2_BITS = {"sve2": 1, "svei8mm": 9, "i8mm": 13, "bf16": 14}
#: The features the plugin reports (and the variants need).
KNOWN = frozenset(HWCAP_BITS) | frozenset(HWCAP2_BITS)
AT_HWCAP, AT_HWCAP2 = 16, 26

#: Variants in order of preference, each with the feature it needs and the -march it is
#: compiled with. There is no SVE variant yet: ``sve`` is reported, not used.
VARIANTS = ("i8mm", "dotprod", "fp16", "base")
REQUIRES = {"base": "asimd", "fp16": "asimdhp", "dotprod": "asimddp", "i8mm": "i8mm"}
MARCH = {"base": "armv8-a", "fp16": "armv8.2-a+fp16", "dotprod": "armv8.2-a+dotprod",
         "i8mm": "armv8.2-a+i8mm"}

#: What qemu-aarch64 (7.2) emulates for the CPU models worth naming: the features the
#: variants need. The probe shows these; at run time the harness reports the real words.
QEMU_MODELS: Mapping[str, frozenset[str]] = {
    "max": frozenset({"fp", "asimd", "fphp", "asimdhp", "asimddp", "asimdfhm", "sve", "sve2",
                      "svei8mm", "i8mm", "bf16"}),
    "cortex-a35": frozenset({"fp", "asimd"}),
    "cortex-a53": frozenset({"fp", "asimd"}),
    "cortex-a57": frozenset({"fp", "asimd"}),
    "cortex-a72": frozenset({"fp", "asimd"}),
    "cortex-a76": frozenset({"fp", "asimd", "fphp", "asimdhp", "asimddp"}),
    "neoverse-n1": frozenset({"fp", "asimd", "fphp", "asimdhp", "asimddp"}),
    "a64fx": frozenset({"fp", "asimd", "fphp", "asimdhp", "sve"}),
}


def from_hwcap(hwcap: int, hwcap2: int = 0) -> frozenset[str]:
    """The known features set in the two capability words."""
    return frozenset([n for n, b in HWCAP_BITS.items() if hwcap >> b & 1]
                     + [n for n, b in HWCAP2_BITS.items() if hwcap2 >> b & 1])


def from_cpuinfo(text: str) -> frozenset[str]:
    """The known features of an aarch64 ``/proc/cpuinfo`` (empty for another CPU)."""
    info = parse_cpuinfo(text)
    if info.get("arch") != "aarch64":
        return frozenset()
    return frozenset(info["flags"]) & KNOWN


def is_arm_host() -> bool:
    """Whether this process runs on an AArch64 CPU."""
    return platform.machine().lower() in ("aarch64", "arm64")


def host_features(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[frozenset[str], str]:
    """This AArch64 host's features and where they were read (``getauxval`` or
    ``/proc/cpuinfo``)."""
    try:
        libc = ctypes.CDLL(None)
        getauxval = libc.getauxval
        getauxval.restype, getauxval.argtypes = ctypes.c_ulong, [ctypes.c_ulong]
        words = getauxval(AT_HWCAP), getauxval(AT_HWCAP2)
        if words[0]:
            return from_hwcap(*words), "getauxval(AT_HWCAP, AT_HWCAP2)"
    except (OSError, AttributeError):
        pass
    try:
        return from_cpuinfo(cpuinfo.read_text()), str(cpuinfo)
    except OSError:
        return frozenset({"fp", "asimd"}), "assumed (ARMv8-A)"


def choose(available: Iterable[str], features: Iterable[str]) -> str | None:
    """The preferred variant among ``available`` that ``features`` allow (None if none)."""
    have, offered = set(features), set(available)
    return next((v for v in VARIANTS if v in offered and REQUIRES[v] in have), None)


def variants_for(index: Mapping[str, Mapping[str, str]], features: Iterable[str]
                 ) -> dict[str, str]:
    """Kernel name -> the variant it runs as, for an index of kernel -> {variant: symbol}."""
    chosen = {}
    have = frozenset(features)
    for kernel, offered in index.items():
        v = choose(offered, have)
        if v is not None:
            chosen[kernel] = v
    return chosen
