"""``backplane conformance run``, ``matrix``, ``fleet`` (on a Ray cluster), ``ops`` and
``onnx-suite``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from backplane.cli import ui


@click.group()
def conformance() -> None:
    """The conformance suite: check a backend on a device, merge reports into a matrix."""


@conformance.command()
@click.option("--backend", "-b", required=True, help="The backend to check.")
@click.option("--device", "-d", help="Device id (default: the backend's first device).")
@click.option("--tier", type=click.Choice(["api", "mandatory", "all"]), default="mandatory",
              show_default=True)
@click.option("-k", "pattern", metavar="PATTERN", help="Only cases whose id matches (glob or substring).")
@click.option("-j", "jobs", default=1, show_default=True, help="Worker processes.")
@click.option("--seed", type=int, help="Replay the random inputs of an earlier run.")
@click.option("--timeout", "timeout_s", default=120.0, show_default=True,
              help="Seconds a case may take before it is recorded as a hang.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False),
              help="Write report.json, junit.xml and report.html here.")
@click.option("--also-run-known-failures", is_flag=True,
              help="Run declared known failures too, to see which now pass.")
@ui.json_option
def run(backend: str, device: str | None, tier: str, pattern: str | None, jobs: int,
        seed: int | None, timeout_s: float, report_dir: str | None,
        also_run_known_failures: bool, as_json: bool) -> None:
    """Run a tier; exit 0 only if the api and mandatory cases passed."""
    # on use only: each command loads what it runs, so every command starts fast
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from backplane.conformance.suite import run as run_suite

    con = ui.console(stderr=True)
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), console=con,
                  disable=as_json or not con.is_terminal) as bar:
        task = bar.add_task(f"{backend} {tier}", total=None)

        def tick(result, total):
            bar.update(task, total=total, advance=1,
                       description=f"{backend} {tier}: {result.id[:40]}")

        report = run_suite(backend, device, tier=tier, pattern=pattern, jobs=jobs, seed=seed,
                           report_dir=report_dir, also_run_known_failures=also_run_known_failures,
                           timeout_s=timeout_s, progress=tick)
    if as_json:
        ui.emit_json(report.to_dict())
    else:
        out = ui.console()
        bad = [c for c in report.cases if c.status not in (
            "pass", "skipped", "undeclared-pass", "unsupported", "special-values")]
        if bad:
            out.print(ui.table("cases that did not pass", ["case", "status", "error or reason"],
                             [[c.id, c.status, (c.error or c.reason or "-").splitlines()[0][:120]]
                              for c in bad[:200]]))
        differ = report.special_values()
        if differ:
            out.print(ui.table("special values: right on ordinary values, different from the "
                             "oracle on these (passed, listed in the report)", ["op", "what"],
                             [[op, "; ".join(texts)[:300]] for op, texts in differ.items()]))
        summary = ", ".join(f"{k} {v}" for k, v in report.summary.items())
        out.print(f"{'PASSED' if report.mandatory_passed else 'FAILED'}: {backend} on "
                  f"{report.device['id']} ({report.device.get('hwdb') or 'no hwdb entry'}), "
                  f"tier {tier}: {len(report.cases)} cases in {report.seconds:.1f} s: {summary}; "
                  f"seed {report.seed}", markup=False)
        cov = report.coverage()
        out.print(f"core ops declared: {len(cov['declared'])} of {cov['core_ops']}, passed: "
                  f"{len(cov['passed'])}" + (f"; {report.summary['unsupported']} cases of "
                  "undeclared ops did not run (unsupported)"
                  if report.summary.get("unsupported") else ""), markup=False)
        if report_dir:
            out.print(f"reports in {Path(report_dir).resolve()}", markup=False)
    if not report.mandatory_passed:
        sys.exit(1)


@conformance.command()
@click.argument("reports", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False),
              help="The matrix page to write (.html).")
@ui.json_option
def matrix(reports: tuple[str, ...], output: str, as_json: bool) -> None:
    """Merge REPORT.json files from many machines into one backend x device matrix."""
    # on use only: each command loads what it runs, so every command starts fast
    from backplane.conformance.report import load, matrix as merge, render_matrix_html

    m = merge([load(p) for p in reports])
    Path(output).write_text(render_matrix_html(m))
    if as_json:
        return ui.emit_json(m)
    ui.console().print(f"wrote {output}: {len(m['columns'])} columns, {len(m['rows'])} rows",
                     markup=False)


@conformance.command()
@click.argument("before", type=click.Path(dir_okay=False))
@click.argument("after", type=click.Path(dir_okay=False))
@ui.json_option
def diff(before: str, after: str, as_json: bool) -> None:
    """Compare two REPORT.json files case by case; exit 0 only if every verdict is the same.

    Verdicts are the status, errors and tolerances of each case id; timings and texts
    that quote measurements are listed, not counted."""
    # on use only: each command loads what it runs, so every command starts fast
    from backplane.conformance.report import diff as compare, load

    d = compare(load(before), load(after))
    if as_json:
        ui.emit_json(d)
    else:
        out = ui.console()
        out.print(f"{before}: {d['cases'][0]} cases; {after}: {d['cases'][1]} cases; "
                  f"{'the same verdicts' if d['same'] else 'verdicts differ'}", markup=False)
        rows = ([[i, "only before", "", ""] for i in d["only_before"]]
                + [[i, "only after", "", ""] for i in d["only_after"]]
                + [[v["id"], v["field"], v["before"], v["after"]] for v in d["verdicts"]])
        if rows:
            out.print(ui.table("verdicts that differ", ["case", "field", "before", "after"],
                               rows))
        if d["texts"]:
            out.print(f"{len(d['texts'])} other field(s) differ (texts, not verdicts): "
                      + ", ".join(sorted({t['field'] for t in d['texts']})), markup=False)
    if not d["same"]:
        sys.exit(1)


@conformance.command()
@click.option("--ray", "address", required=True, metavar="ADDRESS",
              help="The Ray cluster: auto, local (start one here, to try it), ray://HOST:PORT "
                   "or HOST:PORT (the head's GCS address).")
@click.option("--backend", "-b", "backends", multiple=True,
              help="Only this backend (repeatable; default: every ready one on each node).")
@click.option("--tier", type=click.Choice(["api", "mandatory", "all"]), default="mandatory",
              show_default=True)
@click.option("-k", "pattern", metavar="PATTERN",
              help="Only cases whose id matches (glob or substring).")
@click.option("-j", "jobs", default=1, show_default=True, help="Worker processes per run.")
@click.option("--seed", type=int, help="Replay the random inputs of an earlier fleet run.")
@click.option("--timeout", "timeout_s", default=120.0, show_default=True,
              help="Seconds a case may take before it is recorded as a hang.")
@click.option("--shared", is_flag=True, help="Reserve no CPU or accelerator on the nodes: run "
              "beside the work already there instead of waiting for it.")
@click.option("--deadline", "deadline_s", type=float, metavar="SECONDS",
              help="Stop waiting for nodes after this long (they are cancelled and reported).")
@click.option("--report", "report_dir", type=click.Path(file_okay=False),
              help="Write DIR/HOST/BACKEND-INDEX/ (report.json, junit.xml, report.html) per "
                   "node and device class, and matrix.json, matrix.html, fleet.json.")
@click.option("--also-run-known-failures", is_flag=True,
              help="Run declared known failures too, to see which now pass.")
@ui.json_option
def fleet(address: str, backends: tuple[str, ...], tier: str, pattern: str | None, jobs: int,
          seed: int | None, timeout_s: float, shared: bool, deadline_s: float | None,
          report_dir: str | None, also_run_known_failures: bool, as_json: bool) -> None:
    """Run a tier on every node of a Ray cluster, once per backend and device class, and
    merge the reports into one matrix; exit 0 only if every run passed."""
    # on use only: each command loads what it runs, so every command starts fast
    from backplane.conformance.fleet import fleet as run_fleet

    con = ui.console(stderr=True)

    def tick(node):
        said = node.get("error") or node.get("note") or f"{node['runs']} run(s) done"
        con.print(f"node {node['hostname']} ({node['ip']}): {said}", markup=False)

    result = run_fleet(address, tier=tier, backends=backends, pattern=pattern, jobs=jobs,
                       seed=seed, timeout_s=timeout_s, shared=shared, deadline_s=deadline_s,
                       also_run_known_failures=also_run_known_failures,
                       report_dir=report_dir, progress=None if as_json else tick)
    if as_json:
        ui.emit_json(result.to_dict())
    else:
        out = ui.console()
        out.print(ui.table(f"conformance fleet: tier {tier}, seed {result.seed}",
                         ["node", "backend", "device", "class", "verdict", "summary"],
                         [[r.hostname, r.backend, r.devices[0] + (
                             f" (+{len(r.devices) - 1})" if len(r.devices) > 1 else ""),
                           r.device_class, "PASSED" if r.passed else "FAILED",
                           r.error or ", ".join(f"{k} {v}" for k, v in
                                                (r.report or {}).get("summary", {}).items())]
                          for r in result.runs]))
        for n in result.nodes:
            if n.get("error") or n.get("note"):
                out.print(f"node {n['hostname']} ({n['ip']}): {n.get('error') or n['note']}",
                          markup=False)
        m = result.matrix
        out.print(f"{'PASSED' if result.passed else 'FAILED'}: {len(result.runs)} runs on "
                  f"{len(result.nodes)} nodes in {result.seconds:.1f} s; matrix "
                  f"{len(m['columns'])} columns x {len(m['rows'])} rows", markup=False)
        if report_dir:
            out.print(f"reports in {Path(report_dir).resolve()}", markup=False)
    if not result.passed:
        sys.exit(1)


@conformance.command("ops")
@click.option("--report", "reports", multiple=True, type=click.Path(dir_okay=False),
              help="A conformance report (report.json) to merge into the stored results.")
@click.option("--results", default="docs/data/conformance-results.json", show_default=True,
              type=click.Path(dir_okay=False), help="The stored per-op results.")
@click.option("--output", "-o", type=click.Path(dir_okay=False),
              help="Write the page here (default: print it).")
@click.option("--special-values", "special_values",
              default="conformance/special_values.toml", show_default=True,
              type=click.Path(dir_okay=False), help="The shipped record of the backends' "
              "special-value behaviour, rewritten from the stored results with --report.")
@click.option("--write-capabilities", is_flag=True,
              help="First derive the graph compilers' capability tables afresh and write "
                   "the ones the plugins ship (minutes).")
@ui.json_option
def ops_table(reports: tuple[str, ...], results: str, special_values: str, output: str | None,
              write_capabilities: bool, as_json: bool) -> None:
    """Every op of the registry against every built-in backend: the versions each declares
    and its stored conformance results (docs/ops.md); with --report, the stored results
    and the shipped record of special values are rewritten too."""
    # on use only: each command loads what it runs, so every command starts fast
    from backplane.conformance.opsdoc import (installed_versions, load_results, merge_reports,
                                              render, save_results, write_shipped_tables)
    from backplane.conformance.specials import render_shipped

    if write_capabilities:
        for path in write_shipped_tables():
            ui.console(stderr=True).print(f"wrote {path}", markup=False)
    stored = load_results(results)
    if reports:
        stored = merge_reports(stored, [json.loads(Path(r).read_text("utf-8")) for r in reports])
        save_results(results, stored)
        Path(special_values).parent.mkdir(parents=True, exist_ok=True)
        Path(special_values).write_text(render_shipped(stored, installed_versions()), "utf-8")
    if as_json:
        return ui.emit_json(stored)
    page = render(stored)
    if output:
        Path(output).write_text(page, "utf-8")
        ui.console().print(f"wrote {output}", markup=False)
    else:
        click.echo(page, nl=False)


@conformance.command("onnx-suite")
@click.option("--backend", "-b", help="Pin this backend in its own column (default: each of "
              "openvino-cpu and onnxruntime).")
@click.option("--no-pinned", is_flag=True, help="No pinned columns: auto and the runtimes "
              "called directly only.")
@click.option("--set", "sets", multiple=True, metavar="SET",
              help="Only this case set (node, simple, pytorch-converted, pytorch-operator, "
                   "light); repeatable.")
@click.option("-k", "pattern", metavar="PATTERN", help="Only cases whose id matches (glob or "
              "substring, | between alternatives).")
@click.option("--sample", type=int, is_flag=False, flag_value=-1, default=None, metavar="[N]",
              help="Only the fixed sample the CI test runs (N cases; default its size).")
@click.option("-j", "jobs", default=os.cpu_count() or 1, show_default="one per core",
              help="Worker processes.")
@click.option("--timeout", "timeout_s", default=120.0, show_default=True,
              help="Seconds a case may take in one column before it counts as a timeout.")
@click.option("--write-gaps", type=click.Path(dir_okay=False), metavar="FILE",
              help="Write the cases a runtime passes and auto does not to FILE (the CI "
                   "test's conformance/onnx_suite_gaps.txt, with --sample).")
@ui.json_option
def onnx_suite(backend: str | None, no_pinned: bool, sets: tuple[str, ...],
               pattern: str | None, sample: int | None, jobs: int, timeout_s: float,
               write_gaps: str | None, as_json: bool) -> None:
    """ONNX's backend test suite: backplane (auto, and pinned to a backend) beside ONNX
    Runtime and OpenVINO called directly. Exit 1 if auto gives a wrong answer."""
    # on use only: each command loads what it runs, so every command starts fast
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from backplane.conformance import onnx_suite as suite
    from backplane.conformance import onnx_suite_report as report

    if backend and no_pinned:
        raise click.UsageError("--backend names a backend to pin; drop --no-pinned")
    if backend:
        # on use only: each command loads what it runs, so every command starts fast
        from backplane.sdk.errors import did_you_mean
        from backplane.engine.registry import registry

        names = sorted(registry().backends)
        if backend not in names:
            raise click.UsageError(f"no backend '{backend}' is installed (installed: "
                                   f"{', '.join(names)}).{did_you_mean(backend, names)}")
    try:
        cases = suite.load_cases(tuple(sets) or suite.SETS, pattern)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if sample is not None:
        cases = suite.sample(cases, suite.SAMPLE_SIZE if sample < 0 else sample)
    if not cases:
        raise click.UsageError(f"no case matches {pattern!r}" if pattern else "no case")
    columns = suite.columns_for(backend, pinned=not no_pinned)
    con = ui.console(stderr=True)
    t0 = time.perf_counter()
    with Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), console=con,
                  disable=as_json or not con.is_terminal) as bar:
        task = bar.add_task(f"{len(cases)} cases x {len(columns)} columns", total=None)
        results = suite.run(cases, columns, jobs=jobs, timeout_s=timeout_s,
                            progress=lambda done, total: bar.update(task, completed=done,
                                                                    total=total))
    env = report.environment()
    data = report.to_dict(results, columns, env, time.perf_counter() - t0)
    if as_json:
        ui.emit_json(data)
    else:
        click.echo(report.render(data), nl=False)
    if write_gaps:
        n = report.write_gaps(write_gaps, results, env)
        ui.console(stderr=True).print(f"wrote {n} gaps to {write_gaps}", markup=False)
    if data["targets"]["auto_wrong"]:
        sys.exit(1)
