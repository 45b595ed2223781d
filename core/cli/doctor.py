"""``backplane doctor``: does every backend work on every device here, and if not, why, and
what to do about it.

:func:`diagnose` tries every device of every ready backend with a tiny float32 model
(``Relu(MatMul(x, w))``, else a simpler one the backend's capabilities admit: see
:data:`~backplane.cli.doctor_trial.MODELS`), compares the outputs with numpy's, and lists
every other plugin with its state and reason. Each trial runs in a child process of its
own (:mod:`backplane.cli.doctor_trial`), bounded by a timeout, so a backend that crashes or
hangs is a ``FAIL`` with that reason, never a dead doctor. Hints
(:func:`~backplane.cli.doctor_hints.derive_hints`, a pure function) turn probe notes, plugin
states and the machine's device nodes into what to install or set.

The verdict of a trial is ``PASS`` or ``FAIL``; a plugin without a device gets its state
instead: ``NO DEVICE``, ``DISABLED`` or ``FAILED``. :attr:`Diagnosis.ok` (exit status 0 of the
command) holds when every listed device passed.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from backplane.cli.doctor_hints import Hint, derive_hints, machine_facts
from backplane.cli.doctor_trial import DEFAULT_TIMEOUT_S, FAIL, MODELS, PASS, SEED, run_trial
from backplane.engine.registry import plugin_records, registry
from backplane.hardware.probe import probe_all
from backplane.sdk.hostfacts import usable_cores

#: The verdict of a plugin without a device, by its registry state.
STATE_VERDICTS = {"no-device": "NO DEVICE", "disabled": "DISABLED", "failed": "FAILED"}
#: Seconds the hardware probes (``probe_all``, whose vendor tools have their own timeouts)
#: may take before hints go without them.
HARDWARE_PROBE_TIMEOUT_S = 60.0


@dataclass
class Row:
    """One backend x device trial, or one plugin without a device."""

    backend: str
    device: str | None
    verdict: str
    reason: str = ""
    device_name: str | None = None
    stage: str | None = None
    """Where a FAIL happened: setup, capabilities, compile, run, values, timeout, crash."""
    model: str | None = None
    declared: bool | None = None
    """Whether the backend's capabilities admit the model (it is tried either way)."""
    precision: str | None = None
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    rtol: float | None = None
    atol: float | None = None
    compile_ms: float | None = None
    run_ms: float | None = None
    seconds: float | None = None
    """Wall time of the whole trial: child start, discovery, compile and run."""
    distribution: str | None = None
    plugin_version: str | None = None
    side_effects: list[str] = field(default_factory=list)
    """What the plugin changed in the process that checked it (``PluginRecord``)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return asdict(self)



@dataclass
class Diagnosis:
    """What :func:`diagnose` found, as ``backplane doctor --json`` prints it."""

    rows: list[Row] = field(default_factory=list)
    hints: list[Hint] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """What the hardware probes did not find, and why (``probe_all().notes``)."""
    facts: dict[str, Any] = field(default_factory=dict)
    seed: int = SEED
    timeout_s: float = DEFAULT_TIMEOUT_S
    seconds: float = 0.0

    @property
    def trials(self) -> list[Row]:
        """The rows of devices that were tried."""
        return [r for r in self.rows if r.verdict in (PASS, FAIL)]

    @property
    def ok(self) -> bool:
        """Whether every listed device passed (and at least one was listed)."""
        return bool(self.trials) and all(r.verdict == PASS for r in self.trials)

    @property
    def exit_code(self) -> int:
        """0 when :attr:`ok`, else 1."""
        return 0 if self.ok else 1

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return {"ok": self.ok, "exit_code": self.exit_code, "seed": self.seed,
                "timeout_s": self.timeout_s, "seconds": self.seconds,
                "models": [{"name": n, "computes": c} for n, c in MODELS],
                "rows": [r.to_dict() for r in self.rows],
                "hints": [h.to_dict() for h in self.hints],
                "notes": list(self.notes), "facts": self.facts}


# -- the whole check ---------------------------------------------------------------------------

def diagnose(timeout_s: float = DEFAULT_TIMEOUT_S, jobs: int | None = None) -> Diagnosis:
    """Try every device of every ready backend, list every other plugin, derive hints.

    Args:
        timeout_s: seconds each trial may take before it is killed and recorded as a FAIL.
        jobs: trials run at once (default: the usable cores, at most 4); the times of
            trials that ran side by side are indicative only.

    Returns:
        A :class:`Diagnosis`; never raises for a backend's failure.
    """
    t0 = time.perf_counter()
    hardware: dict[str, Any] = {}
    probing = threading.Thread(target=lambda: hardware.update(result=probe_all()),
                               name="backplane-doctor-probe", daemon=True)
    probing.start()
    reg = registry()
    records = plugin_records()
    rows, todo = [], []
    for record in records:
        base = {"distribution": record.distribution, "plugin_version": record.plugin_version,
                "side_effects": list(record.side_effects)}
        if record.state == "ready":
            for device in reg.resolve(record.name):
                row = Row(record.name, device.id, FAIL, device_name=device.name, **base)
                rows.append(row)
                todo.append(row)
        else:
            verdict = STATE_VERDICTS.get(record.state, record.state.upper())
            rows.append(Row(record.name, None, verdict, record.reason, **base))

    def trial(row: Row) -> dict[str, Any]:
        return run_trial(row.backend, row.device or "", row.device_name, timeout_s)

    with ThreadPoolExecutor(max_workers=max(1, jobs or min(4, usable_cores()))) as pool:
        for row, result in zip(todo, pool.map(trial, todo)):
            for key, value in result.items():
                setattr(row, key, value)
    probing.join(HARDWARE_PROBE_TIMEOUT_S)
    probed = hardware.get("result")
    notes = list(probed.notes) if probed is not None else [
        f"the hardware probes did not finish within {HARDWARE_PROBE_TIMEOUT_S:g} s: hints "
        "about GPUs, NPUs and OpenCL are missing"]
    facts = machine_facts(probed)
    deprecations = {r.name: getattr(r, "deprecation", "") for r in records}
    hints = derive_hints([r.to_dict() for r in rows], notes, facts, deprecations)
    return Diagnosis(rows, hints, notes, facts, SEED, timeout_s,
                  round(time.perf_counter() - t0, 3))


# -- the command --------------------------------------------------------------------------------

def command(timeout_s: float = DEFAULT_TIMEOUT_S, jobs: int | None = None,
            as_json: bool = False) -> int:
    """``backplane doctor``: diagnose, print (a table or JSON), return the exit status."""
    report = diagnose(timeout_s=timeout_s, jobs=jobs)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        print_report(report)
    return report.exit_code


def print_report(report: Diagnosis) -> None:
    """The report as a table of rows, the reasons, the hints and a summary line."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    con = Console(highlight=False)
    table = Table(title="backplane doctor: each device, a tiny float32 model",
                  title_justify="left",
                  caption="compile and run in ms; trial: the whole trial process in s",
                  caption_justify="left")
    for column in ("device", "verdict", "model", "compile", "run", "trial"):
        table.add_column(column, no_wrap=column in ("device", "verdict", "model"))
    colour = {PASS: "green", FAIL: "red", "FAILED": "red"}
    for r in report.rows:
        model = (r.model or "-") + ("" if r.declared in (None, True) else " (undeclared)") \
            + (f" {r.precision}" if r.precision not in (None, "fp32") else "")
        table.add_row(Text(r.device or r.backend), Text(r.verdict, colour.get(r.verdict, "")),
                      Text(model), _num(r.compile_ms, ".1f"), _num(r.run_ms, ".2f"),
                      _num(r.seconds, ".1f"))
    con.print(table)
    reasons = [r for r in report.rows if r.reason]
    if reasons:
        con.print("why:")
        for r in reasons:
            con.print(f"  {r.backend}{' on ' + r.device if r.device else ''}: {r.verdict}: "
                      f"{r.reason}", markup=False, soft_wrap=True)
    if report.hints:
        con.print("hints:")
        for h in report.hints:
            con.print(f"  - {h.text}", markup=False, soft_wrap=True)
    trials = report.trials
    passed = sum(r.verdict == PASS for r in trials)
    con.print(f"{passed} of {len(trials)} devices passed in {report.seconds:.1f} s; exit "
              f"status {report.exit_code}", markup=False)


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)
