"""The ``backplane`` command: a thin shell over the Python API.

Every listing command accepts ``--json`` and prints exactly the data the API returns
(``Device.to_dict``, ``PluginRecord.to_dict``, ``Plan.to_dict``, ``DemoResult.to_dict``).
Backplane errors are printed as one clear line and exit with status 2; nothing else is
caught, so a bug still shows its traceback.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from backplane.cli import ui
from backplane.engine.isolation import clear
from backplane.engine.registry import devices as list_devices, plugin_records, registry
from backplane.sdk.contract import DEVICE_KINDS, POLICIES
from backplane.sdk.errors import BackplaneError, InputError
from backplane.sdk.text import shown


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="backplane-hal")
def cli() -> None:
    """backplane: run ML models on the best hardware this machine has, and say why."""


@cli.command()
@ui.json_option
def devices(as_json: bool) -> None:
    """List the devices of every healthy backend, best first."""
    # on use only: each command loads what it runs, so every command starts fast
    from backplane.hardware.match import device_records

    records = device_records(list_devices())
    if as_json:
        return ui.emit_json(records)
    rows = [[d["id"], d["kind"], d["name"], d["vendor"],
             f"{d['hwdb']['entry']} ({d['hwdb']['confidence']:.2f})"
             if d["hwdb"] and d["hwdb"]["entry"] else "-"] for d in records]
    ui.console().print(ui.table("devices", ["id", "kind", "name", "vendor", "hwdb entry"], rows))


@cli.command()
@click.option("--recheck", is_flag=True, help="Forget the cached verdicts of the checks that "
              "third-party plugins pass in a child process, and check them again.")
@ui.json_option
def plugins(recheck: bool, as_json: bool) -> None:
    """List backend plugins: loaded, without device, failed or disabled, with the reason, and
    what a third-party plugin changed in the process that checked it."""
    if recheck:
        clear()
        registry(refresh=True)
    records = plugin_records()
    if as_json:
        return ui.emit_json([r.to_dict() for r in records])
    rows = [[r.name, r.state, ", ".join(r.devices), r.reason,
             f"{r.distribution or '?'} {r.distribution_version or ''}".strip(),
             f"{r.api_version} (deprecated)" if r.deprecation else r.api_version]
            for r in records]
    console = ui.console()
    console.print(ui.table("backend plugins", ["name", "state", "devices", "reason",
                                             "distribution", "api"], rows))
    changed = [r for r in records if r.side_effects]
    if changed:
        console.print("changes process state when imported (loaded all the same):")
    for r in changed:
        console.print(f"  {r.name}: {'; '.join(r.side_effects)}", markup=False, soft_wrap=True)


def _session(model: Any, devices: tuple[str, ...], **kwargs: Any) -> Any:
    # on use only: each command loads what it runs, so every command starts fast
    from backplane.engine.session import Session

    return Session(model, devices=list(devices) if devices else "auto", **kwargs)


def planning_options(fn: Any) -> Any:
    """The options that shape a plan, shared by ``plan`` and ``run``."""
    options = [
        click.option("--policy", type=click.Choice(POLICIES), default="latency",
                     show_default=True, help="What the plan minimises."),
        click.option("--precision", default="fp32", show_default=True,
                     help="Compute precision to keep, or 'auto' (lower precision within "
                          "--max-rel-error of the reference on sample inputs)."),
        click.option("--max-rel-error", type=float, default=None,
                     help="Accuracy budget of --precision auto (default 1e-2)."),
        click.option("--device-class", type=click.Choice(DEVICE_KINDS), default=None,
                     help="Run every node this class of device admits there."),
        click.option("--exclude", multiple=True, metavar="CLASS|BACKEND|DEVICE",
                     help="Never use these (repeatable)."),
        click.option("--strict", is_flag=True,
                     help="Fail instead of falling back when a node would leave the "
                          "requested devices or a backend fails."),
        click.option("--tune", type=click.Choice(["auto", "on", "off"]), default=None,
                     is_flag=False, flag_value="on",
                     help="Measured selection: 'auto' (default, or BACKPLANE_TUNE) measures "
                          "the best candidate plans when the cost model cannot separate "
                          "them; 'on' (or --tune alone) always; 'off' never. Winners are "
                          "kept in a database."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@ui.device_option
@planning_options
@click.option("--verbose", "-v", is_flag=True,
              help="Also each node's device, precision and predicted time, and why every "
                   "other device does not run it.")
@ui.json_option
def plan(model: str, devices: tuple[str, ...], verbose: bool, as_json: bool,
         **planning: Any) -> None:
    """Show how MODEL is planned: a summary (partitions, devices, predicted time, the
    costliest nodes) and each partition; with --verbose every node and why every other
    device does not run it; with --json all of it as data."""
    session = _session(model, devices, **planning)
    session.wait_selected()  # the plan shown is the one measured selection keeps
    if as_json:
        return ui.emit_json(session.plan.to_dict())
    click.echo(session.plan.explain(verbose=verbose))


def _read_inputs(specs: tuple[str, ...]) -> dict[str, Any]:
    import numpy as np

    feeds = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise InputError(f"--input '{spec}' must look like NAME=FILE.npy")
        try:
            feeds[name] = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"--input {name}: cannot read '{path}' as a .npy file: {exc}"
                             ) from None
    return feeds


@cli.command()
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--input", "-i", "inputs", multiple=True, metavar="NAME=FILE.npy",
              help="An input array; repeat for each input. Without any, random inputs are used.")
@click.option("--output", "-o", "output_dir", type=click.Path(file_okay=False),
              help="Write each output to DIR/NAME.npy.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random inputs.")
@ui.device_option
@planning_options
@ui.json_option
def run(model: str, inputs: tuple[str, ...], output_dir: str | None, seed: int,
        devices: tuple[str, ...], as_json: bool, **planning: Any) -> None:
    """Run MODEL once and summarise its outputs.

    Without --input, random inputs the model can run are used (sizes from the graph, an
    image's sides 224; integers that index a table inside it), printed, and the plan is
    made for their sizes."""
    # on use only: each command loads what it runs, so every command starts fast
    import numpy as np

    from backplane.model.intake import load_model
    from backplane.engine.plan import LINE_LIMIT
    from backplane.model.samples import random_input_specs

    graph = load_model(model)
    specs = None if inputs else random_input_specs(graph)
    dims = {d: size for vi, spec in zip(graph.inputs, specs or ())
            for d, size in zip(vi.shape or (), spec.shape) if isinstance(d, str)}
    session = _session(graph, devices, dims=dims or None, **planning)
    if specs is not None and not as_json:
        con = ui.console()
        con.print(f"no --input given: random inputs, seed {seed}:")
        for spec in specs:
            con.print(f"  {shown(spec.describe(), LINE_LIMIT)}", markup=False)
    feeds = _read_inputs(inputs) if inputs else session.random_inputs(seed=seed)
    t0 = time.perf_counter()
    outputs = session.run(feeds)
    seconds = time.perf_counter() - t0
    written = {}
    if output_dir:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        for k, (name, value) in enumerate(outputs.items()):
            path = Path(output_dir) / f"{_file_stem(name, k)}.npy"
            np.save(path, value)
            written[name] = str(path)
    summary = [{"name": k, "dtype": str(v.dtype), "shape": list(v.shape),
                "min": _stat(np.min, v), "max": _stat(np.max, v), "mean": _stat(np.mean, v),
                "file": written.get(k)} for k, v in outputs.items()]
    data = {"model": model, "random_inputs": not inputs, "seed": seed if not inputs else None,
            "random_input_specs": [s.to_dict() for s in specs] if specs is not None else None,
            "devices": session.plan.devices_used,
            "seconds": seconds, "outputs": summary, "plan": session.plan.to_dict()}
    if as_json:
        return ui.emit_json(data)
    con = ui.console()
    con.print(f"ran on {', '.join(data['devices'])} in {seconds * 1e3:.2f} ms")
    con.print(ui.table("outputs", ["name", "dtype", "shape", "min", "max", "mean", "file"],
                     [[shown(s["name"]), s["dtype"], s["shape"], s["min"], s["max"], s["mean"],
                       s["file"] and shown(s["file"], LINE_LIMIT)] for s in summary]))


def _file_stem(name: str, k: int) -> str:
    """The output's name as a file name in the output folder, or ``output_K`` where the
    name would leave the folder, or is no plain file name (a model's names are anything:
    ``../x``, a control character, ten megabytes)."""
    plain = (0 < len(name) <= 200 and shown(name, 200) == name and name not in (".", "..")
             and not any(sep in name for sep in "/\\"))
    return name if plain else f"output_{k}"


def _stat(fn: Any, value: Any) -> float | None:
    try:
        return float(fn(value)) if value.size else None
    except (TypeError, ValueError):
        return None


@cli.command()
@ui.device_option
@click.option("--batch", default=8, show_default=True, help="Batch size of the demo input.")
@click.option("--repeats", default=10, show_default=True, help="Timed runs per device.")
@ui.json_option
def demo(devices: tuple[str, ...], batch: int, repeats: int, as_json: bool) -> None:
    """Run a small CNN on this machine's devices and check it against the reference."""
    # on use only: each command loads what it runs, so every command starts fast
    from backplane.cli.demo import run_demo

    result = run_demo(list(devices) or None, batch=batch, repeats=repeats)
    if as_json:
        ui.emit_json(result.to_dict())
    else:
        rows = [[r.target, ", ".join(r.devices), r.status,
                 None if r.median_ms is None else f"{r.median_ms:.3f}",
                 None if r.max_abs_error is None else f"{r.max_abs_error:.1e}",
                 None if r.max_rel_error is None else f"{r.max_rel_error:.1e}"]
                for r in result.rows]
        tolerances = sorted({f"rtol {r.rtol:g}, atol {r.atol:g}" for r in result.rows
                             if r.rtol is not None})
        table = ui.table(f"backplane demo: {result.model}, batch {result.batch}",
                       ["target", "ran on", "status", "median ms", "max abs err",
                        "max rel err"], rows)
        table.caption = (f"median of {result.repeats} runs; error against the reference "
                         f"backend; tolerance {'; '.join(tolerances) or '-'}")
        con = ui.console()
        con.print(table)
        for r in result.rows:
            if r.error:
                con.print(f"{r.target}: {r.error}", markup=False)
        for event in result.events:
            con.print(event, markup=False)
    if not result.ok:
        sys.exit(1)


@cli.command()
@click.option("--timeout", "timeout_s", default=60.0, show_default=True,
              help="Seconds each backend x device trial may take before it is a FAIL.")
@click.option("-j", "--jobs", type=int, default=None,
              help="Trials at once (default: the usable cores, at most 4).")
@ui.json_option
def doctor(timeout_s: float, jobs: int | None, as_json: bool) -> None:
    """Try every backend on every device with a tiny model: PASS/FAIL with the reason, each
    plugin's state, and hints for what is missing. Exit 1 unless every device passed."""
    # on use only: each command loads what it runs, so every command starts fast
    from backplane.cli.doctor import command

    sys.exit(command(timeout_s=timeout_s, jobs=jobs, as_json=as_json))


@cli.command("new-plugin")
@click.argument("name")
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=".",
              show_default=True, help="Where to create the package folder backplane-NAME/.")
@click.option("--force", is_flag=True, help="Write the files over an existing backplane-NAME/.")
@ui.json_option
def new_plugin(name: str, directory: str, force: bool, as_json: bool) -> None:
    """Create backplane-NAME/, a backend plugin package for backend NAME that installs and
    passes the conformance suite's API tier as generated."""
    # on use only: each command loads what it runs, so every command starts fast
    from backplane.cli.scaffold import new_plugin as scaffold

    made = scaffold(name, directory, force=force)
    if as_json:
        return ui.emit_json(made.to_dict())
    click.echo(made.summary())


@cli.command()
@click.argument("repository", metavar="MODEL_OR_REPOSITORY", type=click.Path(exists=True))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, help="Port to listen on.")
@click.option("--device", "--devices", "-d", "devices", multiple=True, metavar="D",
              help="Device ids or backend names, in order (repeatable, or comma-separated); "
                   "overrides every config.toml's devices.")
@click.option("--max-batch-size", type=click.IntRange(min=1), default=None,
              help="Most rows in one batch; 1 runs requests one by one (default: config.toml, "
                   "else the batcher's default).")
@click.option("--max-delay-ms", type=click.FloatRange(min=0), default=None,
              help="Longest a request waits for batch-mates (default: config.toml, else the "
                   "batcher's default).")
@click.option("--max-queue-size", type=click.IntRange(min=1), default=None,
              help="Requests waiting at most; more get 503 (default: config.toml, else the "
                   "batcher's default).")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True),
              default=None, help="Default deadline of a request in seconds; a request still "
                                 "queued then gets 504 (default: config.toml, else none).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["critical", "error", "warning", "info", "debug"]))
@click.option("--access-log", is_flag=True, help="Log a line per request (off: /metrics "
                                                 "counts them).")
def serve(repository: str, host: str, port: int, devices: tuple[str, ...],
          max_batch_size: int | None, max_delay_ms: float | None, max_queue_size: int | None,
          timeout_s: float | None, log_level: str, access_log: bool) -> None:
    """Serve a model (a .onnx file) or a model repository (a folder of NAME/model.onnx or
    NAME/1/model.onnx, each with an optional config.toml) over the KServe Open Inference
    Protocol v2 at /v2, with Prometheus metrics at /metrics; options override every
    config.toml. SIGTERM answers every accepted request, then exits (docs/serving.md)."""
    # on use only: each command loads what it runs, so every command starts fast
    from backplane.serving import require

    require()
    # on use only: each command loads what it runs, so every command starts fast
    from backplane.serving.server import serve as run_server

    def loaded(m: Any) -> None:
        b = m.batcher
        click.echo(f"loaded {m.name} version {m.version} on {', '.join(m.devices())}: "
                   f"{'batching up to ' + str(b.max_batch_size) if b.batching else 'no batching'}"
                   f" ({b.why})")

    named = [d.strip() for spec in devices for d in spec.split(",") if d.strip()]
    run_server(repository, host=host, port=port, log_level=log_level, access_log=access_log,
               on_loaded=loaded,
               session={"devices": named or None},
               batching={"max_batch_size": max_batch_size, "max_delay_ms": max_delay_ms,
                         "max_queue_size": max_queue_size, "timeout_s": timeout_s})


def main() -> None:
    """Entry point of the ``backplane`` command."""
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except BackplaneError as exc:
        from rich.text import Text

        message = Text.assemble(("error: ", "bold red"), f"{type(exc).__name__}: {exc}")
        ui.console(stderr=True).print(message, soft_wrap=True)
        sys.exit(2)


def _add_subcommands() -> None:
    # on use only: each command loads what it runs, so every command starts fast
    from backplane.cli.conformance import conformance
    from backplane.cli.hardware import hwdb

    cli.add_command(hwdb)
    cli.add_command(conformance)


_add_subcommands()
