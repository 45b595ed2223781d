"""``backplane doctor``: does every backend work on every device here, and if not, why, and
what to do about it.

:func:`diagnose` tries every device of every ready backend with a tiny float32 model
(``Relu(MatMul(x, w))``, else a simpler one the backend's capabilities admit: see
:data:`MODELS`), compares the outputs with numpy's, and lists every other plugin with its
state and reason. Each trial runs in a child process of its own, bounded by a timeout, so a
backend that crashes or hangs is a ``FAIL`` with that reason, never a dead doctor. Hints
(:func:`derive_hints`, a pure function) turn probe notes, plugin states and the machine's
device nodes into what to install or set.

The verdict of a trial is ``PASS`` or ``FAIL``; a plugin without a device gets its state
instead: ``NO DEVICE``, ``DISABLED`` or ``FAILED``. :attr:`Report.ok` (exit status 0 of the
command) holds when every listed device passed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from backplane.engine.isolation import NOT_IMPORTED, child_env, kill_group

PASS, FAIL = "PASS", "FAIL"
#: The verdict of a plugin without a device, by its registry state.
STATE_VERDICTS = {"no-device": "NO DEVICE", "disabled": "DISABLED", "failed": "FAILED"}
#: Seconds one trial (child start, discovery of its one plugin, compile, run) may take.
DEFAULT_TIMEOUT_S = 60.0
#: Seconds the hardware probes (``probe_all``, whose vendor tools have their own timeouts)
#: may take before hints go without them.
HARDWARE_PROBE_TIMEOUT_S = 60.0
#: Seed of the tiny models' weights and inputs.
SEED = 0
#: Compute precisions tried in this order: the first one a backend declares is used (an NPU
#: declaring fp16 and int8 only is checked at fp16, against float16 tolerances).
PRECISION_ORDER = ("fp32", "fp16", "bf16")
#: The tolerance dtype of each precision (a float32 model computed at fp16 is judged as fp16).
_TOLERANCE_DTYPE = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
#: The tiny models (:func:`tiny_models` builds them), most telling first, as (name, what it
#: computes). A backend is tried with the first whose every node its capabilities admit;
#: with none, with the last, and the row says it was not declared.
MODELS = (("matmul-relu", "Relu(MatMul(x[2,3], w[3,4])), w a constant"),
          ("add-relu", "Relu(Add(a[2,3], b[2,3]))"), ("relu", "Relu(x[2,3])"),
          ("add", "Add(a[2,3], b[2,3])"))
_MARK = "BACKPLANE-DOCTOR-RESULT "
#: A line the trial child prints as it enters each stage, so that a crash or a hang still
#: says where it happened and with which model.
_STAGE = "BACKPLANE-DOCTOR-STAGE "
#: Python packages whose presence decides hints (imported by none of this: only looked up).
PACKAGES = ("torch", "cupy", "tensorrt", "openvino", "onnxruntime", "pyopencl")
#: The pip extra that brings each CPU backend's runtime.
CPU_EXTRAS = {"openvino-cpu": "openvino", "onnxruntime": "onnxruntime", "opencl": "opencl"}


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


@dataclass(frozen=True)
class Hint:
    """Something to install, set or look at; ``level`` is ``action`` or ``info``."""

    about: str
    text: str
    level: str = "action"

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return asdict(self)


@dataclass
class Report:
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

def diagnose(timeout_s: float = DEFAULT_TIMEOUT_S, jobs: int | None = None) -> Report:
    """Try every device of every ready backend, list every other plugin, derive hints.

    Args:
        timeout_s: seconds each trial may take before it is killed and recorded as a FAIL.
        jobs: trials run at once (default: the usable cores, at most 4); the times of
            trials that ran side by side are indicative only.

    Returns:
        A :class:`Report`; never raises for a backend's failure.
    """
    from backplane.hardware.probe import probe_all
    from backplane.engine.registry import plugin_records, registry

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

    with ThreadPoolExecutor(max_workers=max(1, jobs or min(4, _usable_cores()))) as pool:
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
    return Report(rows, hints, notes, facts, SEED, timeout_s,
                  round(time.perf_counter() - t0, 3))


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# -- one trial, in a child process --------------------------------------------------------------

def run_trial(backend: str, device: str, device_name: str | None = None,
              timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """Run one backend x device trial in a child process; the result as :class:`Row` fields.

    The child loads only this backend (``BACKPLANE_PLUGINS``), so another plugin's import
    or probe cannot slow or break it. A child that dies is a ``crash``, one that does not
    answer within ``timeout_s`` is killed (with its own children) and is a ``timeout``.
    """
    request = json.dumps({"backend": backend, "device": device, "device_name": device_name})
    # The backend is ready here, so it passed its isolation check (or is built in).
    env = child_env(BACKPLANE_PLUGINS=backend, BACKPLANE_ISOLATE="0")
    env.pop("BACKPLANE_DISABLE_PLUGINS", None)
    env.pop("BACKPLANE_DEVICES", None)
    code = "from backplane.cli.doctor import _child_main; _child_main()"
    t0 = time.perf_counter()
    popen = subprocess.Popen([sys.executable, "-c", code, request], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                             env=env, start_new_session=True)
    try:
        out, err = popen.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_group(popen)
        try:
            out, err = popen.communicate(timeout=5)
        except subprocess.TimeoutExpired:  # a grandchild of its own session holds the pipes
            out, err = "", ""
        where = _stage_of(out)
        return {**where, "verdict": FAIL, "stage": "timeout",
                "seconds": round(time.perf_counter() - t0, 3),
                "reason": f"timeout: no answer within {timeout_s:g} s"
                          f"{_during(where)}; the trial process was killed"
                          + _last_line(err, "; last words on stderr: ")}
    seconds = round(time.perf_counter() - t0, 3)
    for line in reversed(out.splitlines()):
        if line.startswith(_MARK):
            return {**json.loads(line[len(_MARK):]), "seconds": seconds}
    where = _stage_of(out)
    if popen.returncode and popen.returncode < 0:
        try:
            sig = signal.Signals(-popen.returncode).name
        except ValueError:
            sig = f"signal {-popen.returncode}"
        why = f"the trial process was killed by {sig} (exit code {popen.returncode})"
    else:
        why = f"the trial process exited with code {popen.returncode} without a result"
    return {**where, "verdict": FAIL, "stage": "crash", "seconds": seconds,
            "reason": f"crash{_during(where)}: {why}" + _last_line(err, "; stderr: ")}


def _stage_of(out: str) -> dict[str, Any]:
    """The last stage the trial child announced (model, precision, declared, stage)."""
    for line in reversed((out or "").splitlines()):
        if line.startswith(_STAGE):
            try:
                return dict(json.loads(line[len(_STAGE):]))
            except ValueError:
                break
    return {}


def _during(where: dict[str, Any]) -> str:
    stage = where.get("stage")
    if not stage:
        return ""
    return f" during {stage}" + (f" of '{where['model']}'" if where.get("model") else "")


def _last_line(text: str, prefix: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return f"{prefix}{lines[-1][:300]}" if lines else ""


def _child_main() -> None:
    """The trial child: one backend, one device, one tiny model; prints one result line."""
    request = json.loads(sys.argv[1])
    result = _trial(request["backend"], request["device"], request.get("device_name"))
    sys.stdout.write("\n" + _MARK + json.dumps(result, default=str) + "\n")
    sys.stdout.flush()


def _trial(backend_name: str, device_id: str, device_name: str | None) -> dict[str, Any]:
    """Compile and run the first tiny model the backend admits; compare with numpy."""
    import numpy as np

    from backplane.conformance import compare, tolerance
    from backplane.sdk.contract import CompileOptions
    from backplane.engine.executor import to_host
    from backplane.model.intake import load_model
    from backplane.engine.registry import registry

    out: dict[str, Any] = {"verdict": FAIL}

    def enter(name: str) -> str:
        fields = {k: out[k] for k in ("model", "precision", "declared") if k in out}
        sys.stdout.write(f"\n{_STAGE}{json.dumps({**fields, 'stage': name})}\n")
        sys.stdout.flush()
        return name

    stage = enter("setup")
    try:
        reg = registry()
        backend = reg.backend(backend_name)
        [device] = reg.resolve(device_id)
        if device_name is not None and device.name != device_name:
            raise RuntimeError(f"{device_id} is '{device.name}' in the trial process, not "
                               f"'{device_name}': the backend's probe order is not stable")
        stage = enter("capabilities")
        caps = backend.capabilities
        precision = next((p for p in PRECISION_ORDER if p in caps.precisions), None)
        out["precision"] = precision
        if precision is None:
            out.update(stage=stage, reason=f"declares precisions {sorted(caps.precisions)}, "
                       f"none of {', '.join(PRECISION_ORDER)}; the doctor's float models "
                       "cannot be checked")
            return out
        models = tiny_models(np)
        chosen = None
        for name, model, feeds, expected, op in models:
            graph = load_model(model)
            if all(bool(caps.check(n)) for n in graph.nodes):
                chosen = (name, graph, feeds, expected, op, True)
                break
        if chosen is None:  # nothing declared: the simplest model, tried anyway
            name, model, feeds, expected, op = models[-1]
            chosen = (name, load_model(model), feeds, expected, op, False)
        name, graph, feeds, expected, op, declared = chosen
        out.update(model=name, declared=declared)
        stage = enter("compile")
        t0 = time.perf_counter()
        exe = backend.compile(graph, device, CompileOptions(precision=precision))
        out["compile_ms"] = round((time.perf_counter() - t0) * 1e3, 3)
        stage = enter("run")
        t0 = time.perf_counter()
        got = exe.run({k: v.copy() for k, v in feeds.items()})
        got = {k: to_host(np, v) for k, v in dict(got).items()}
        out["run_ms"] = round((time.perf_counter() - t0) * 1e3, 3)
    except BaseException as exc:  # the child's one job is to say what went wrong
        out.update(stage=stage, reason=f"{stage} error: {type(exc).__name__}: {exc}"
                   + ("" if out.get("declared", True) else
                      f" (the backend declares none of the doctor's models; "
                      f"'{out.get('model')}' was tried anyway)"))
        return out
    stage, problems = "values", []
    rtol, atol = tolerance(_TOLERANCE_DTYPE[precision], op if precision == "fp32" else None)
    worst = [0.0, 0.0]
    for key, want in expected.items():
        if key not in got:
            problems.append(f"output '{key}' missing (got {sorted(got)})")
            continue
        c = compare(got[key], want, rtol, atol)
        worst = [max(worst[0], c.max_abs_error), max(worst[1], c.max_rel_error)]
        if not c.ok:
            problems.append(f"output '{key}': max abs error {c.max_abs_error:.3g}, max rel "
                            f"error {c.max_rel_error:.3g} (rtol {rtol:g}, atol {atol:g})"
                            + (f"; {c.detail}" if c.detail else ""))
    out.update(max_abs_error=worst[0], max_rel_error=worst[1], rtol=rtol, atol=atol)
    if problems:
        out.update(stage=stage, reason="wrong values: " + "; ".join(problems))
    else:
        out.update(verdict=PASS, stage=None,
                   reason="" if declared else f"'{name}' ran although the backend does not "
                   "declare it")
    return out


def tiny_models(np: Any) -> list[tuple[str, Any, dict[str, Any], dict[str, Any], str]]:
    """The :data:`MODELS` as (name, ModelProto, feeds, numpy's expected outputs, op)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(SEED)

    def arr(*shape: int) -> Any:
        return rng.standard_normal(shape).astype(np.float32)

    def build(name: str, nodes: list, inputs: dict[str, Any], out_shape: list[int],
              inits: dict[str, Any] | None = None) -> Any:
        graph = helper.make_graph(
            nodes, f"backplane-doctor-{name}",
            [helper.make_tensor_value_info(k, TensorProto.FLOAT, list(v.shape))
             for k, v in inputs.items()],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
            initializer=[numpy_helper.from_array(v, k) for k, v in (inits or {}).items()])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                 ir_version=8)

    def f64(v: Any) -> Any:
        return v.astype(np.float64)

    x, w, a, b = arr(2, 3), arr(3, 4), arr(2, 3), arr(2, 3)
    node = helper.make_node
    return [
        ("matmul-relu", build("matmul-relu", [node("MatMul", ["x", "w"], ["m"]),
                                              node("Relu", ["m"], ["y"])],
                              {"x": x}, [2, 4], {"w": w}),
         {"x": x}, {"y": np.maximum(f64(x) @ f64(w), 0).astype(np.float32)}, "MatMul"),
        ("add-relu", build("add-relu", [node("Add", ["a", "b"], ["s"]),
                                        node("Relu", ["s"], ["y"])], {"a": a, "b": b}, [2, 3]),
         {"a": a, "b": b}, {"y": np.maximum(f64(a) + f64(b), 0).astype(np.float32)}, "Add"),
        ("relu", build("relu", [node("Relu", ["x"], ["y"])], {"x": x}, [2, 3]),
         {"x": x}, {"y": np.maximum(x, 0)}, "Relu"),
        ("add", build("add", [node("Add", ["a", "b"], ["y"])], {"a": a, "b": b}, [2, 3]),
         {"a": a, "b": b}, {"y": (f64(a) + f64(b)).astype(np.float32)}, "Add"),
    ]


# -- hints --------------------------------------------------------------------------------------

def machine_facts(probed: Any = None) -> dict[str, Any]:
    """What hints read about this machine: device nodes, installed packages, settings.

    ``probed`` is a ``probe_all()`` result (its hardware records name the GPUs found).
    Looks packages up without importing them.
    """
    import importlib.util
    import platform

    def spec(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            return False

    hardware = list(getattr(probed, "hardware", []) or [])
    nvidia = "/dev/nvidiactl" if Path("/dev/nvidiactl").exists() else (
        "nvidia-smi" if shutil.which("nvidia-smi") else None)
    amd = "/dev/kfd" if Path("/dev/kfd").exists() else None
    accel = sorted(str(p) for p in Path("/dev/accel").glob("accel*")) \
        if Path("/dev/accel").is_dir() else []
    return {
        "arch": platform.machine(),
        "nvidia_gpu": nvidia or next((h.name for h in hardware if h.vendor == "nvidia"), None),
        "amd_gpu": amd or next((h.name for h in hardware
                                if h.kind == "gpu" and h.vendor == "amd"), None),
        "accel_nodes": accel,
        "packages": {name: spec(name) for name in PACKAGES},
        "env": {k: os.environ[k] for k in ("BACKPLANE_PLUGINS", "BACKPLANE_DISABLE_PLUGINS",
                                           "BACKPLANE_TORCH_CPU") if k in os.environ},
    }


def derive_hints(rows: list[dict[str, Any]], notes: list[str], facts: dict[str, Any],
                 deprecations: dict[str, str] | None = None) -> list[Hint]:
    """What to install or set, from the doctor's rows, the probe notes and machine facts.

    A pure function of its arguments: ``rows`` as :meth:`Row.to_dict` gives them, ``notes``
    as ``probe_all().notes``, ``facts`` as :func:`machine_facts`, ``deprecations`` as
    backend name -> the registry's deprecation text. A GPU or NPU backend without a device
    is only worth a hint where this machine has that hardware.
    """
    hints: list[Hint] = []
    by_name = {r["backend"]: r for r in rows}
    packages = facts.get("packages", {})

    def state(name: str) -> str | None:
        return (by_name.get(name) or {}).get("verdict")

    def why(name: str) -> str:
        r = by_name.get(name) or {}
        return r.get("reason") or "not installed"

    unready = ("NO DEVICE", "FAILED", "DISABLED", None)
    nvidia = facts.get("nvidia_gpu")
    if nvidia and state("cuda-tensorrt") in unready:
        if not (packages.get("torch") or packages.get("cupy") or packages.get("tensorrt")):
            text = (f"an NVIDIA GPU is present ({nvidia}) but no CUDA runtime package: "
                    "pip install 'backplane-hal[cuda]' (or 'backplane-hal[tensorrt]' for "
                    "TensorRT too)")
        else:
            text = (f"an NVIDIA GPU is present ({nvidia}) but cuda-tensorrt lists no device: "
                    f"{why('cuda-tensorrt')}")
        hints.append(Hint("cuda-tensorrt", text))
    for note in notes:
        if note.startswith("NVIDIA device nodes exist but"):
            hints.append(Hint("nvidia", f"{note}: check the driver (nvidia-smi must list the "
                                        "GPU); pip install nvidia-ml-py for NVML"))
    amd = facts.get("amd_gpu")
    if amd and state("rocm") in unready:
        hints.append(Hint("rocm", f"an AMD GPU is present ({amd}) but rocm lists no device: "
                                  f"{why('rocm')} (docs/backends/rocm.md)"))
    accel = facts.get("accel_nodes") or []
    for note in notes:
        if "NPU node exists but OpenVINO does not list it" in note:
            node = accel[0] if accel else "/dev/accel"
            hints.append(Hint("npu", (
                f"an NPU device node exists ({node}) but OpenVINO does not list it: install "
                "the NPU driver (Intel's linux-npu-driver: the NPU compiler and Level Zero) "
                "and check that the user may open the node (group render)")
                + ("" if packages.get("openvino") else
                   "; OpenVINO itself is missing: pip install 'backplane-hal[openvino]'")))
    if accel and state("npu") in ("NO DEVICE", "FAILED") and not any(
            h.about == "npu" for h in hints):
        hints.append(Hint("npu", f"an NPU device node exists ({accel[0]}) but npu lists no "
                                 f"device: {why('npu')}"))
    for note in notes:
        if note.startswith("no OpenCL probe: pyopencl is not installed"):
            hints.append(Hint("opencl", "pyopencl is not installed: pip install "
                                        "'backplane-hal[opencl]' (with PoCL, OpenCL runs on "
                                        "this CPU)"))
        elif note.startswith(("OpenCL has no platform", "OpenCL platforms list no device")):
            hints.append(Hint("opencl", f"{note}: pip install 'backplane-hal[opencl]' (PoCL's "
                                        "CPU platform), or install the GPU vendor's OpenCL "
                                        "driver (ICD)"))
    for name, extra in CPU_EXTRAS.items():
        if state(name) == "NO DEVICE" and not any(h.about == name for h in hints):
            hints.append(Hint(name, f"{name} has no device: {why(name)}"
                              + ("" if f"[{extra}]" in why(name) else
                                 f" (pip install 'backplane-hal[{extra}]')")))
    arch = str(facts.get("arch", "")).lower()
    if arch in ("aarch64", "arm64") and state("arm-neon") in ("NO DEVICE", "FAILED"):
        hints.append(Hint("arm-neon", f"this is an ARM CPU but arm-neon lists no device: "
                                      f"{why('arm-neon')}"))
    if state("torch-cpu") == "NO DEVICE" and "BACKPLANE_TORCH_CPU" not in facts.get("env", {}):
        hints.append(Hint("torch-cpu", "torch-cpu is off: BACKPLANE_TORCH_CPU=1 backplane "
                                       "doctor checks the GPU backends' torch op table on the "
                                       "CPU (for verification, not for inference)", "info"))
    for r in rows:
        name = r["backend"]
        if r.get("side_effects"):
            hints.append(Hint(name, f"{name} changes the process that imports it: "
                                    f"{'; '.join(r['side_effects'])}. It is loaded; a plugin "
                                    "should leave process state alone (tell its maintainers)"))
        if r["verdict"] == "FAILED":
            hints.append(Hint(name, _failed_hint(name, r.get("reason") or "",
                                                 r.get("distribution"))))
        elif r["verdict"] == FAIL:
            hints.append(Hint(name, (
                f"{name} fails on {r['device']} ({r.get('stage') or 'error'}): "
                f"`backplane conformance run --backend {name} --device {r['device']} -j 2` "
                "checks the contract and every op; sessions re-plan past a failing device "
                f"(strict=True raises), BACKPLANE_DISABLE_PLUGINS={name} keeps it out")))
    disabled = sorted(r["backend"] for r in rows if r["verdict"] == "DISABLED")
    if disabled:
        hints.append(Hint("settings", f"disabled by BACKPLANE_PLUGINS / BACKPLANE_DISABLE_PLUGINS"
                                      f": {', '.join(disabled)} (unset them to check these too)",
                          "info"))
    for name, text in sorted((deprecations or {}).items()):
        if text:
            hints.append(Hint(name, text))
    return hints


def _failed_hint(name: str, reason: str, distribution: str | None) -> str:
    where = f" (from {distribution})" if distribution else ""
    skip = f"BACKPLANE_DISABLE_PLUGINS={name} skips it"
    if "ModuleNotFoundError" in reason and "No module named" in reason:
        module = reason.split("No module named", 1)[1].strip().strip("'\"")
        return (f"{name}{where} failed to import: module '{module}' is missing; install it "
                f"(see the plugin's documentation for its extra), or {skip}")
    if "backend API" in reason:
        return f"{name}{where}: {reason}"
    if reason.startswith("probe did not return"):
        return (f"{name}{where}: its probe hangs (a wedged driver or device?); {skip}; report "
                "it to the plugin's maintainers")
    if NOT_IMPORTED in reason:
        return (f"{name}{where} {reason.replace(NOT_IMPORTED, '')}, so it is never imported "
                f"(report it to its maintainers); after an update `backplane plugins "
                f"--recheck` checks it again; {skip}")
    return (f"{name}{where} failed: {reason}. `BACKPLANE_DEBUG=1 backplane plugins` shows the "
            f"traceback; {skip}")


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


def print_report(report: Report) -> None:
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
