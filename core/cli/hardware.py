"""``backplane hwdb ...``: list, show, match, validate, calibrate and draw the hwdb."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from backplane.cli import ui


@click.group()
def hwdb() -> None:
    """The hardware-characteristics database: entries, matching, calibration."""


def _peaks(entry: Any) -> str:
    if entry.dense is None:
        return "derived" if entry.generic else ""
    figs = entry.dense.figures()
    keys = [k for k in ("fp32_tflops", "fp16_tflops", "int8_tops") if k in figs]
    return ", ".join(f"{k.split('_')[0]} {figs[k]:g}" for k in keys)


@hwdb.command("list")
@ui.json_option
def list_(as_json: bool) -> None:
    """List every entry: id, kind, name, peak rates and where it came from."""
    # on use only: each command loads what it runs, so every command starts fast
    from backplane.hardware.db import load

    db = load()
    if as_json:
        return ui.emit_json([{"id": x.entry.id, "kind": x.entry.kind, "name": x.entry.name,
                            "generic": x.entry.generic, "origin": x.origin,
                            "location": x.location} for x in db])
    rows = [[x.entry.id, x.entry.kind, x.entry.name, _peaks(x.entry),
             x.entry.memory.bandwidth_gb_s if x.entry.memory else None, x.origin] for x in db]
    con = ui.console()
    con.print(ui.table(f"hwdb: {len(db)} entries", ["id", "kind", "name",
                                                  "dense peak (TFLOP/s, TOP/s)", "GB/s",
                                                  "origin"], rows))
    for c in db.conflicts:
        con.print(f"conflict: {c}", markup=False)


@hwdb.command()
@click.argument("entry_id", metavar="ID")
@ui.json_option
def show(entry_id: str, as_json: bool) -> None:
    """Show one entry with its sources, and measured figures beside datasheet ones."""
    # on use only: each command loads what it runs, so every command starts fast
    from backplane.hardware.calibrate import measured_for_entry
    from backplane.hardware.db import load

    db = load()
    entry = db.get(entry_id)
    loaded = db.entries[entry_id]
    measured = measured_for_entry(entry_id)
    data = {"origin": loaded.origin, "location": loaded.location,
            **entry.model_dump(mode="json", by_alias=True, exclude_none=True),
            "measured": measured}
    if as_json:
        return ui.emit_json(data)
    con = ui.console()
    con.print(f"{entry.id}: {entry.name} ({entry.kind}; {loaded.origin}: {loaded.location})",
              markup=False)
    sources = {s.id: s for s in entry.sources}
    rows = []
    for table_name, table in entry.tables().items():
        for field, value in table.figures().items():
            src = table.field_sources.get(field, table.source)
            rows.append([f"{table_name}.{field}", f"{value:g}", src])
    con.print(ui.table("figures", ["field", "value", "source"], rows))
    if measured:
        con.print(ui.table("measured (backplane hwdb calibrate)",
                         ["field", "value", "backend", "when"],
                         [[k, f"{m['value']:.4g}", m["backend"], m["measured_at"]]
                          for k, m in sorted(measured.items())]))
    for s in sources.values():
        con.print(f"[{s.id}] {s.title}: {s.url}", markup=False)


@hwdb.command()
@click.argument("paths", nargs=-1, type=click.Path())
@ui.json_option
def validate(paths: tuple[str, ...], as_json: bool) -> None:
    """Validate hwdb files or folders (default: every loaded source); exit 1 if any is invalid."""
    # on use only: each command loads what it runs, so every command starts fast
    from backplane.hardware.db import load, shipped_dir, validate_paths

    if paths:
        count, problems = validate_paths(list(paths))
    else:
        db = load(refresh=True)
        count_shipped, problems = validate_paths([shipped_dir()])
        problems = problems + [p for p in db.problems if p not in problems]
        count = max(count_shipped, len(db))
    if as_json:
        ui.emit_json({"files": count, "problems": [p.to_dict() for p in problems]})
    else:
        con = ui.console()
        for p in problems:
            con.print(f"invalid: {p}", markup=False, soft_wrap=True)
        con.print(f"{count} file{'s' if count != 1 else ''} checked, "
                  f"{len(problems)} problem{'s' if len(problems) != 1 else ''}")
    if problems:
        sys.exit(1)


@hwdb.command("match")
@ui.json_option
def match_(as_json: bool) -> None:
    """Probe this machine's hardware and show the entry each device matched, and how."""
    # on use only: each command loads what it runs, so every command starts fast
    from backplane.hardware.match import match_all
    from backplane.hardware.probe import probe_all

    probed = probe_all()
    matches = match_all(probed.hardware)
    if as_json:
        return ui.emit_json({"devices": [m.to_dict() for m in matches], "notes": probed.notes})
    rows = [[m.hardware.kind, m.hardware.name, m.entry_id or "-", f"{m.confidence:.2f}",
             _figure_text(m.figures)] for m in matches]
    con = ui.console()
    con.print(ui.table("hardware", ["kind", "name", "entry", "confidence", "figures"], rows))
    for m in matches:
        con.print(f"{m.hardware.name}: rule {m.rule or '-'}", markup=False)
        if m.basis:
            con.print(f"{m.hardware.name}: figures {m.basis}", markup=False)
        for note in m.notes:
            con.print(f"{m.hardware.name}: {note}", markup=False)
    for note in probed.notes:
        con.print(f"probe: {note}", markup=False)


def _figure_text(figures: dict[str, float]) -> str:
    order = ("fp32_tflops", "fp16_tflops", "int8_tops", "memory_bandwidth_gb_s")
    return ", ".join(f"{k} {figures[k]:.4g}" for k in order if k in figures)


@hwdb.command()
@click.option("--device", "-d", "devices", multiple=True, metavar="D",
              help="Device id or backend name; repeatable. Default: every device.")
@click.option("--dtype", "dtypes", multiple=True, type=click.Choice(["fp64", "fp32", "fp16"]),
              help="Element types of the peak measurement; repeatable. Default: all.")
@click.option("--no-save", is_flag=True, help="Measure and print, but do not store.")
@ui.json_option
def calibrate(devices: tuple[str, ...], dtypes: tuple[str, ...], no_save: bool,
              as_json: bool) -> None:
    """Measure bandwidth, peak per dtype and launch overhead; store them per user."""
    # on use only: each command loads what it runs, so every command starts fast
    from backplane.engine.calibration import calibrate as run
    from backplane.hardware.calibrate import overlay_path

    t0 = time.perf_counter()
    results = run(list(devices) or None, list(dtypes) or None, save=not no_save)
    seconds = time.perf_counter() - t0
    if as_json:
        return ui.emit_json({"seconds": seconds, "stored_in": None if no_save else
                           str(overlay_path()), "results": [r.to_dict() for r in results]})
    con = ui.console()
    for r in results:
        rows = [[m.key, f"{m.value:.4g}",
                 f"{r.datasheet[m.key]:.4g}" if m.key in r.datasheet else "-",
                 f"{m.value / r.datasheet[m.key]:.2f}" if r.datasheet.get(m.key) else "-",
                 m.detail] for m in r.measurements]
        con.print(ui.table(f"{r.device} ({r.hardware}; entry {r.entry or 'none'})",
                         ["figure", "measured", "datasheet/derived", "ratio", "how"], rows))
        for s in r.skipped:
            con.print(f"  skipped: {s}", markup=False)
    con.print(f"calibrated {len(results)} device{'s' if len(results) != 1 else ''} in "
              f"{seconds:.1f} s" + ("" if no_save else f"; stored in {overlay_path()}"))


@hwdb.command()
@click.argument("entry_id", metavar="ID")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="The image to write (.png, .svg, .pdf).")
def roofline(entry_id: str, output: str) -> None:
    """Draw ID's roofline: datasheet ceilings solid, measured ones dashed."""
    # on use only: each command loads what it runs, so every command starts fast
    from backplane.hardware.roofline import draw

    path = draw(entry_id, output)
    ui.console().print(f"wrote {path}", markup=False)


@hwdb.command()
def schema() -> None:
    """Print the entry schema as JSON Schema (what hwdb/schema.json holds)."""
    # on use only: each command loads what it runs, so every command starts fast
    import json

    from backplane.hardware.schema import json_schema

    click.echo(json.dumps(json_schema(), indent=1, sort_keys=True))
