"""``backplane conformance fleet``: the conformance suite on every node of a Ray cluster.

The driver (this process) connects to a Ray cluster and sends one task to each alive node,
pinned there (``NodeAffinitySchedulingStrategy``, not soft). On its node the task lists
backplane's devices, groups them by backend and device class (the hardware fingerprint: a
device model and configuration, not a unit, so eight identical GPUs are one class), and runs
the tier once per class on its first device, exactly as ``backplane conformance run`` does
(:func:`backplane.conformance.suite.run`: worker processes, crash and hang records, the
node's own stored results for its scheduler). It sends the reports back as plain JSON data,
with the node's id and hostname. The driver merges them into the matrix with
:func:`backplane.conformance.report.matrix` and writes, like ``conformance run``, one
report folder per node and device class (``DIR/HOST/BACKEND-INDEX/``, the layout of
docs/qualifying-hardware.md's qualify.sh) plus ``matrix.json``, ``matrix.html`` and
``fleet.json``.

Every node gets the same seed, so the columns of the matrix are measured on the same inputs
and a run can be replayed. The task asks Ray for the node's accelerators (every ``GPU`` and
other accelerator resource it advertises) and ``min(jobs, CPUs)`` CPUs, so a qualification
does not share a device with other work; ``shared=True`` asks for nothing and runs beside it.

Ray is imported only here, and only when a fleet runs (``pip install 'backplane-hal[ray]'``).
"""

from __future__ import annotations

import json
import random
import re
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backplane.conformance.report import Report, json_default, matrix, render_matrix_html
from backplane.conformance.runner import DEFAULT_TIMEOUT_S
from backplane.conformance.suite import TIERS, run
from backplane.engine.registry import devices, plugin_records
from backplane.sdk.errors import BackplaneError, ConformanceError


INSTALL_HINT = "pip install 'backplane-hal[ray]'"
#: Ray resources of accelerators a node task asks for (all the node has), besides num_gpus.
ACCELERATOR_RESOURCES = ("NPU", "HPU", "TPU", "neuron_cores")
#: Seconds a TCP connection to the cluster's address may take: Ray itself keeps retrying an
#: unreachable address for minutes before it gives up.
CONNECT_TIMEOUT_S = 5.0


@dataclass
class ClassRun:
    """One conformance run on one node: a backend on the first device of a device class."""

    node_id: str
    hostname: str
    backend: str
    device_class: str
    devices: list[str]
    """Every device of the class on that node (the run used the first)."""
    report: dict[str, Any] | None = None
    """The report as plain data (schema ``backplane-conformance/1``), or None on error."""
    error: str | None = None
    folder: str | None = None
    """Where its report files were written (with ``report_dir``)."""

    @property
    def passed(self) -> bool:
        """Whether the run finished and its api and mandatory cases passed."""
        return self.error is None and bool(self.report and self.report["mandatory_passed"])

    def to_dict(self, with_report: bool = False) -> dict[str, Any]:
        """Plain data; the report's summary only, unless ``with_report``."""
        r = self.report or {}
        out = {"node_id": self.node_id, "hostname": self.hostname, "backend": self.backend,
               "device_class": self.device_class, "devices": self.devices,
               "device": r.get("device"), "passed": self.passed,
               "summary": r.get("summary"), "seconds": r.get("seconds"),
               "error": self.error, "folder": self.folder}
        if with_report:
            out["report"] = self.report
        return out


@dataclass
class FleetResult:
    """Every node's runs, and the matrix merged from their reports."""

    address: str
    seed: int
    tier: str
    nodes: list[dict[str, Any]]
    """Per alive node: ``node_id``, ``hostname``, ``ip``, ``resources`` (what Ray sees),
    ``devices`` (what backplane found there), ``runs`` (how many), ``error`` (the task
    failed) and ``note`` (the backends asked for that have no device there, and why)."""
    runs: list[ClassRun] = field(default_factory=list)
    matrix: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        """Whether every node answered and every run passed (and at least one ran)."""
        return bool(self.runs) and all(r.passed for r in self.runs) and not any(
            n.get("error") for n in self.nodes)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (what ``fleet.json`` and ``--json`` hold; the reports are in their
        folders and in ``matrix``)."""
        return {"address": self.address, "seed": self.seed, "tier": self.tier,
                "seconds": round(self.seconds, 3), "passed": self.passed,
                "nodes": self.nodes, "runs": [r.to_dict() for r in self.runs],
                "matrix": self.matrix}

    def write(self, folder: str | Path) -> dict[str, Path]:
        """Write each run's report files into ``folder/HOST/BACKEND-INDEX/``, and
        ``matrix.json``, ``matrix.html`` and ``fleet.json`` into ``folder``."""
        root = Path(folder)
        root.mkdir(parents=True, exist_ok=True)
        hosts = {}
        for n in self.nodes:  # two nodes of one hostname (containers) get their node ids
            hosts.setdefault(n["hostname"], []).append(n["node_id"])
        for r in self.runs:
            if r.report is None:
                continue
            host = r.hostname if len(hosts.get(r.hostname, [])) < 2 \
                else f"{r.hostname}-{r.node_id[:8]}"
            where = root / _safe(host) / _safe(r.report["device"]["id"].replace(":", "-"))
            Report.from_dict(r.report, f"the report of {r.backend} on {host}").write(where)
            r.folder = str(where)
        paths = {"matrix_json": root / "matrix.json", "matrix_html": root / "matrix.html",
                 "fleet": root / "fleet.json"}
        paths["matrix_json"].write_text(json.dumps(self.matrix, indent=1))
        paths["matrix_html"].write_text(render_matrix_html(self.matrix))
        paths["fleet"].write_text(json.dumps(self.to_dict(), indent=1, default=str))
        return paths


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "_"


# -- on each node ----------------------------------------------------------------------------

def device_classes(backends: Iterable[str] = ()) -> list[dict[str, Any]]:
    """This machine's devices grouped by (backend, device class), in the registry's order:
    ``[{"backend", "device_class", "devices": [ids]}]``. The class is the hwdb hardware
    fingerprint where the device is matched, else its kind and name. ``backends`` keeps
    only those backends (all when empty)."""
    # on use only: the hwdb loads pydantic and its TOML files when asked
    from backplane.hardware.match import match_devices

    wanted = set(backends)
    found = [d for d in devices() if not wanted or d.backend in wanted]
    try:
        matched = match_devices(found)
    except Exception:  # hwdb trouble must not stop a qualification: classes by name then
        matched = {}
    groups: dict[tuple[str, str], list[str]] = {}
    for d in found:
        m = matched.get(d.id)
        key = m.hardware.fingerprint if m else f"{d.kind}-{_safe(d.name)}"
        groups.setdefault((d.backend, key), []).append(d.id)
    return [{"backend": b, "device_class": c, "devices": ids} for (b, c), ids in groups.items()]


def run_node(tier: str = "mandatory", backends: Iterable[str] = (), pattern: str | None = None,
             jobs: int = 1, seed: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
             also_run_known_failures: bool = False) -> dict[str, Any]:
    """Run the tier on every device class of this machine; plain data out (what a fleet's
    node task returns): ``hostname``, ``node_id`` (Ray's, when run as a Ray task),
    ``devices`` (every device found, with its hwdb match), ``runs`` (per class:
    ``backend``, ``device_class``, ``devices``, ``report`` as JSON data or ``error``) and
    ``absent`` (each backend of ``backends`` with no device here: its plugin's state and
    reason)."""
    # on use only: the hwdb loads pydantic and its TOML files when asked
    from backplane.hardware.match import device_records


    node_id = None
    try:
        import ray

        if ray.is_initialized():
            node_id = ray.get_runtime_context().get_node_id()
    except ImportError:
        pass
    runs = []
    for group in device_classes(backends):
        entry: dict[str, Any] = {**group, "report": None, "error": None}
        try:
            report = run(group["backend"], group["devices"][0], tier=tier, pattern=pattern,
                         jobs=jobs, seed=seed, timeout_s=timeout_s,
                         also_run_known_failures=also_run_known_failures)
            # JSON, not pickled objects: the driver may run another backplane version.
            entry["report"] = json.loads(json.dumps(report.to_dict(), default=json_default))
        except BackplaneError as exc:
            entry["error"] = f"{type(exc).__name__}: {exc}"
        runs.append(entry)
    try:
        found = device_records(devices())
    except Exception as exc:  # the listing is for the reader; the runs above are the result
        found = [{"error": f"{type(exc).__name__}: {exc}"}]
    ran = {r["backend"] for r in runs}
    records = {r.name: r for r in plugin_records()}
    absent = {b: (f"{records[b].state}: {records[b].reason}" if b in records
                  else "not installed") for b in backends if b not in ran}
    return {"hostname": socket.gethostname(), "node_id": node_id, "devices": found,
            "runs": runs, "absent": absent}


# -- the driver ------------------------------------------------------------------------------

def import_ray() -> Any:
    """The ``ray`` module, or ConformanceError saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ConformanceError(f"a conformance fleet runs on Ray, which is not installed here "
                               f"({exc}); install it with: {INSTALL_HINT}") from None
    return ray


def connect(address: str) -> tuple[Any, bool]:
    """Connect this process to the Ray cluster at ``address``: ``auto`` (the cluster this
    machine belongs to, or ``RAY_ADDRESS``), ``local`` (start one in this process),
    ``ray://HOST:PORT`` (Ray Client) or ``HOST:PORT`` (the head's GCS). Returns
    ``(ray, connected_here)``; where this process was already connected to a cluster (a
    notebook, a test) that cluster is used and ``connected_here`` is False. Raises
    ConformanceError naming the address and what to check."""
    ray = import_ray()
    address = address.strip()
    if ray.is_initialized():
        here = ray.get_runtime_context().gcs_address
        if address not in ("auto", "local") and not address.startswith("ray://") and \
                address.rpartition(":")[2] != here.rpartition(":")[2]:
            raise ConformanceError(f"this process is already connected to the Ray cluster at "
                                   f"'{here}', not '{address}'; pass that address, or call "
                                   f"ray.shutdown() first")
        return ray, False
    hint = _reachable(address)
    if hint:
        raise ConformanceError(f"cannot reach the Ray cluster at '{address}': {hint}")
    kwargs: dict[str, Any] = {"logging_level": "WARNING", "log_to_driver": False}
    if address == "local":
        kwargs["include_dashboard"] = False
    try:
        ray.init(address=address, **kwargs)
    except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError ...
        raise ConformanceError(
            f"cannot connect to the Ray cluster at '{address}': {type(exc).__name__}: {exc}. "
            f"Check that a head runs there (`ray status --address {address}` on a node), that "
            f"its port is open from here, and that this machine has the cluster's Ray and "
            f"Python versions (here: Ray {ray.__version__})") from None
    return ray, True


def _reachable(address: str) -> str | None:
    """Why a ``HOST:PORT`` or ``ray://HOST:PORT`` address cannot be reached over TCP, or None
    (also for ``auto`` and ``local``, which Ray resolves itself)."""
    if address in ("auto", "local"):
        return None
    client = address.startswith("ray://")
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return ("the address is neither 'auto', 'local', 'ray://HOST:PORT' nor 'HOST:PORT' "
                "(the head's GCS address, port 6379 by default)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        what = ("the Ray Client server (`ray start --head` starts it on port 10001)" if client
                else "the head's GCS (`ray start --head` prints the address; port 6379 by "
                     "default)")
        return (f"no connection to {host}:{port} within {CONNECT_TIMEOUT_S:g} s ({exc}); "
                f"check that {what} listens there and that no firewall is in the way")
    return None


def alive_nodes(ray: Any) -> list[dict[str, Any]]:
    """The cluster's alive nodes: ``node_id``, ``hostname``, ``ip`` and ``resources``."""
    return [{"node_id": n["NodeID"], "hostname": n.get("NodeManagerHostname") or "?",
             "ip": n.get("NodeManagerAddress") or "?",
             "resources": {k: v for k, v in n.get("Resources", {}).items()
                           if not k.startswith("node:")}}
            for n in ray.nodes() if n.get("Alive")]


def _task_options(node: dict[str, Any], jobs: int, shared: bool) -> dict[str, Any]:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    options: dict[str, Any] = {
        "scheduling_strategy": NodeAffinitySchedulingStrategy(node["node_id"], soft=False),
        "max_retries": 0,  # a crash is a finding, not something to hide by running again
    }
    res = node["resources"]
    if shared:
        # Nothing reserved; Ray (< 2.4x) would otherwise hide the GPUs of a zero-GPU task.
        options.update(num_cpus=0, num_gpus=0, runtime_env={
            "env_vars": {"RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}})
        return options
    # Every accelerator of the node, so Ray shows them all to the task and no other work
    # shares them while they are qualified; CPUs for the worker processes, none on a node
    # that has none for Ray (a head started with --num-cpus 0 is still qualified).
    options["num_cpus"] = min(max(1, jobs), int(res.get("CPU", 0)))
    options["num_gpus"] = res.get("GPU", 0)
    extra = {k: res[k] for k in ACCELERATOR_RESOURCES if res.get(k)}
    if extra:
        options["resources"] = extra
    return options


def fleet(address: str = "auto", *, tier: str = "mandatory", backends: Iterable[str] = (),
          pattern: str | None = None, jobs: int = 1, seed: int | None = None,
          timeout_s: float = DEFAULT_TIMEOUT_S, also_run_known_failures: bool = False,
          shared: bool = False, deadline_s: float | None = None,
          report_dir: str | Path | None = None,
          progress: Callable[[dict[str, Any]], None] | None = None) -> FleetResult:
    """Run a conformance tier on every device class of every alive node of a Ray cluster.

    ``progress(node)`` is called as each node answers. ``deadline_s`` bounds the wait for
    the nodes (a node whose accelerators stay busy would otherwise be waited for without
    end); a node that has not answered by then is cancelled and recorded with an error.
    The connection is closed at the end if this call opened it (``local`` stops the
    cluster it started).
    """
    if tier not in TIERS:
        raise ConformanceError(f"unknown tier '{tier}'; choose one of {', '.join(TIERS)}")
    backends = tuple(backends)
    seed = random.SystemRandom().randrange(2**31) if seed is None else seed
    t0 = time.perf_counter()
    ray, connected_here = connect(address)
    try:
        nodes = alive_nodes(ray)
        if not nodes:
            raise ConformanceError(f"the Ray cluster at '{address}' has no alive node")
        task = ray.remote(run_node)
        pending = {task.options(**_task_options(n, jobs, shared)).remote(
            tier, backends, pattern, jobs, seed, timeout_s, also_run_known_failures): n
            for n in nodes}
        runs: list[ClassRun] = []
        end = None if deadline_s is None else time.monotonic() + deadline_s
        while pending:
            left = None if end is None else max(0.0, end - time.monotonic())
            done, _ = ray.wait(list(pending), num_returns=1, timeout=left)
            if not done:
                for ref, node in pending.items():
                    ray.cancel(ref, force=True)
                    node["error"] = (f"no answer within {deadline_s:g} s (waiting for its "
                                     f"resources, or still running); cancelled")
                break
            node = pending.pop(done[0])
            try:
                answer = ray.get(done[0])
            except Exception as exc:  # a task error, a dead node or worker, a runtime_env
                node["error"] = _task_error(exc, node)
            else:
                node["devices"], node["runs"] = answer["devices"], len(answer["runs"])
                runs += [ClassRun(node["node_id"], node["hostname"], r["backend"],
                                  r["device_class"], r["devices"], r["report"], r["error"])
                         for r in answer["runs"]]
                absent = answer.get("absent") or {}
                if absent:
                    node["note"] = "no device of " + "; ".join(
                        f"{b} ({why})" for b, why in absent.items()) + " here"
                elif not answer["runs"]:
                    node["note"] = "no device here"
            if progress:
                progress(node)
    finally:
        if connected_here:
            ray.shutdown()
    order = {n["node_id"]: i for i, n in enumerate(nodes)}
    runs.sort(key=lambda r: order[r.node_id])
    merged = matrix([Report.from_dict(r.report, f"the report of {r.backend} on {r.hostname}")
                     for r in runs if r.report is not None])
    result = FleetResult(address, seed, tier, nodes, runs, merged, time.perf_counter() - t0)
    if report_dir is not None:
        result.write(report_dir)
    return result


def _task_error(exc: BaseException, node: dict[str, Any]) -> str:
    text = f"{type(exc).__name__}: {exc}"
    if "No module named 'backplane" in text:
        return (f"backplane is not installed on node {node['hostname']} ({node['ip']}); "
                f"install the same version there as here: {text.splitlines()[-1]}")
    return text
