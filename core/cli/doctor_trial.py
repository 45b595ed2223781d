"""One ``backplane doctor`` trial: one backend, one device, one tiny model, in a child
process of its own.

:func:`run_trial` starts the child (which loads only that backend), bounds it by a timeout and
turns a crash or a hang into a ``FAIL`` with the stage it happened in; the child compiles and
runs the first of the :data:`MODELS` (:func:`tiny_models`) the backend's capabilities admit
and compares the outputs with numpy's.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from typing import Any

from backplane.engine.executor import to_host
from backplane.engine.isolation import child_env, kill_group
from backplane.engine.registry import registry
from backplane.model.intake import load_model
from backplane.sdk.contract import CompileOptions

#: The verdict of a trial.
PASS, FAIL = "PASS", "FAIL"
#: Seconds one trial (child start, discovery of its one plugin, compile, run) may take.
DEFAULT_TIMEOUT_S = 60.0
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


def run_trial(backend: str, device: str, device_name: str | None = None,
              timeout_s: float = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """Run one backend x device trial in a child process; the result as
    :class:`~backplane.cli.doctor.Row` fields.

    The child loads only this backend (``BACKPLANE_PLUGINS``), so another plugin's import
    or probe cannot slow or break it. A child that dies is a ``crash``, one that does not
    answer within ``timeout_s`` is killed (with its own children) and is a ``timeout``.
    """
    request = json.dumps({"backend": backend, "device": device, "device_name": device_name})
    # The backend is ready here, so it passed its isolation check (or is built in).
    env = child_env(BACKPLANE_PLUGINS=backend, BACKPLANE_ISOLATE="0")
    env.pop("BACKPLANE_DISABLE_PLUGINS", None)
    env.pop("BACKPLANE_DEVICES", None)
    code = "from backplane.cli.doctor_trial import _child_main; _child_main()"
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
    # on use only: each command loads what it runs, so every command starts fast
    import numpy as np

    from backplane.conformance import compare, tolerance

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
