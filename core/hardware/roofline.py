"""The roofline of an hwdb entry: peak-rate ceilings per dtype and the memory-bandwidth slope.

Datasheet (or, for generic entries, derived) ceilings are solid lines; figures measured by
``backplane hwdb calibrate`` on a device matched to the entry are dashed, so the gap between
promise and practice is visible at a glance.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from backplane.hardware.calibrate import measured_for_entry
from backplane.sdk.errors import BackplaneError

_RATE_KEYS = ("fp64_tflops", "fp32_tflops", "tf32_tflops", "fp16_tflops", "bf16_tflops",
              "fp8_tflops", "int8_tops")


def ceilings(entry_id: str) -> dict[str, Any]:
    """The figures drawn: {"datasheet": {...}, "measured": {...}, "basis": str}."""
    # on use only: the hwdb loads pydantic and its TOML files when asked
    from backplane.hardware.db import load

    entry = load().get(entry_id)
    figures: dict[str, float] = {}
    basis = "datasheet"
    if entry.dense is not None:
        figures.update({k: v for k, v in entry.dense.figures().items() if k in _RATE_KEYS})
        if entry.memory is not None and entry.memory.bandwidth_gb_s:
            figures["memory_bandwidth_gb_s"] = entry.memory.bandwidth_gb_s
    else:
        # on use only: the hwdb loads pydantic and its TOML files when asked
        from backplane.hardware.match import match_all

        for m in match_all():
            if m.entry_id == entry_id:
                figures.update(m.figures)
                basis = m.basis or "derived"
                break
    measured = {k: v["value"] for k, v in measured_for_entry(entry_id).items()}
    return {"datasheet": figures, "measured": measured, "basis": basis, "name": entry.name}


def draw(entry_id: str, output: str | Path) -> Path:
    """Write the roofline of ``entry_id`` to ``output`` (format from its suffix)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BackplaneError("drawing a roofline needs matplotlib: "
                             "pip install 'backplane-hal[plot]'") from None
    import numpy as np

    data = ceilings(entry_id)
    if not any(k in _RATE_KEYS for k in data["datasheet"]) and not data["measured"]:
        raise BackplaneError(f"'{entry_id}' has no peak rate to draw: it is a generic entry "
                             "that no device here matches, and nothing was measured. Run "
                             "'backplane hwdb calibrate' on matching hardware first.")
    fig, ax = plt.subplots(figsize=(8, 5.5))
    intensity = np.logspace(-2, 4, 400)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    basis = "derived" if data["basis"].startswith("derived") else data["basis"]
    for style, figures, label in (("-", data["datasheet"], basis),
                                  ("--", data["measured"], "measured")):
        bandwidth = figures.get("memory_bandwidth_gb_s")
        for i, key in enumerate(_RATE_KEYS):  # one colour per dtype in both styles
            if key not in figures:
                continue
            peak = figures[key]
            roof = np.minimum(peak, intensity * bandwidth / 1e3) if bandwidth else \
                np.full_like(intensity, peak)
            unit = "TOP/s" if key.endswith("_tops") else "TFLOP/s"
            ax.plot(intensity, roof, style, color=colours[i % len(colours)],
                    label=f"{key.split('_')[0]} {peak:.3g} {unit} ({label})")
        if bandwidth:
            ax.plot([], [], style, color="grey", label=f"memory {bandwidth:.4g} GB/s ({label})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (operations per byte of memory traffic)")
    ax.set_ylabel("attainable rate (TFLOP/s or TOP/s)")
    ax.set_title(f"roofline: {data['name']} ({entry_id})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if basis == "derived":
        fig.text(0.01, -0.02, data["basis"], fontsize=7)
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path
