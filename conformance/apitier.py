"""The API tier: the plugin contract itself, checked on one backend and device.

Checks (each a case ``api/<name>``):

- ``api-version-current``: the plugin is written for the current backend API (one written
  for an older version inside the window loads, with a deprecation warning, but is not
  certified; the detail says what to change);
- ``probe-bounded``: probe returns within the probe timeout;
- ``probe-no-side-effects``: probe leaves the working directory and the environment as they
  were, and returns the same devices twice;
- ``capabilities-are-data``: capabilities are a ``Capabilities`` whose ``to_dict()`` is JSON;
- ``invalid-input-is-a-backplane-error``: a run with out-of-range Gather indices ends in a
  BackplaneError through backplane's wrappers, never a crash or a hang;
- ``thread-safe``: four threads compile the same model and eight run it at once, and every
  result equals the single-threaded one;
- ``repeatable``: five runs on the same input give bit-identical outputs;
- ``releases-memory``: a compiled executable is freed once dropped, and twenty compile/run
  cycles do not grow the process by more than 64 MiB.

The last three compile a 3-node MLP (MatMul, Add, Relu), or for a backend that does not
admit it a one-node model of the first op of ``FALLBACK_OPS`` it admits (the detail says
which): the contract holds for a backend with a single kernel too.

They run in a worker process of their own, so a crash or a hang is recorded, not suffered.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import tempfile
import threading
import time
import weakref
from typing import Any
from backplane.conformance.runner import CaseResult
from backplane.engine.registry import registry
from backplane.engine.session import Session
from backplane.model.intake import load_model
from backplane.sdk.contract import API_VERSION, Capabilities, CompileOptions, changes_since
from backplane.sdk.errors import BackplaneError, PluginDeprecationWarning

CHECKS = ("api-version-current", "probe-bounded", "probe-no-side-effects", "capabilities-are-data",
          "invalid-input-is-a-backplane-error", "thread-safe", "repeatable", "releases-memory")


def _mlp(seed: int) -> Any:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w = numpy_helper.from_array(rng.standard_normal((64, 32)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
             helper.make_node("Add", ["h", "b"], ["hb"], name="add"),
             helper.make_node("Relu", ["hb"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "api-mlp",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 32])],
                              initializer=[w, b])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


#: One-node float32 models the compile/run checks fall back to, in order, for a backend
#: that does not admit the MLP (a Relu-only backend, an NPU plugin without MatMul): ops
#: whose results are finite on any finite input, so outputs compare bit for bit.
FALLBACK_OPS = ("Relu", "Add", "Mul", "Sub", "Abs", "Neg", "Sigmoid", "Tanh", "Identity")


def _unary(op: str) -> Any:
    from onnx import TensorProto, helper

    inputs = ["x", "x"] if op in ("Add", "Mul", "Sub") else ["x"]
    graph = helper.make_graph([helper.make_node(op, inputs, ["y"], name=op.lower())],
                              f"api-{op.lower()}",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def check_graph(seed: int, caps: Any) -> tuple[Any, str]:
    """(the graph the compile/run checks use, its description): the 3-node MLP when the
    backend admits it, else the first one-node model of FALLBACK_OPS it admits, else the
    MLP (whose compile then fails, naming the op)."""
    for model, text in [(_mlp(seed), "a 3-node MLP (MatMul, Add, Relu)")] + [
            (_unary(op), f"a one-node {op} model") for op in FALLBACK_OPS]:
        graph = load_model(model)
        if all(caps.check(n) for n in graph.nodes):
            return graph, text
    return load_model(_mlp(seed)), ("a 3-node MLP (MatMul, Add, Relu); the backend admits "
                                    f"none of it, nor a one-node model of {', '.join(FALLBACK_OPS)}")


def _gather() -> Any:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Gather", ["data", "idx"], ["y"], name="gather")], "api-gather",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [4, 3]),
         helper.make_tensor_value_info("idx", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def check_all(backend_name: str, device_id: str, seed: int) -> list[tuple[str, str, str]]:
    """Run every check in this process: (name, "pass" | "fail", detail)."""
    import numpy as np


    reg = registry()
    backend = reg.backend(backend_name)
    [device] = reg.resolve(device_id)
    out: list[tuple[str, str, str]] = []

    def record(name: str, ok: bool, detail: str) -> None:
        out.append((name, "pass" if ok else "fail", detail))

    # the contract version: the api tier certifies the current one (an older version in the
    # window loads, through an adapter, with a deprecation warning: docs/api-stability.md)

    version = getattr(backend, "api_version", None)
    record("api-version-current", version == API_VERSION,
           f"written for backend API {version}, the current one" if version == API_VERSION else
           f"written for backend API {version}; the current one is {API_VERSION}. To move: "
           + "; ".join(changes_since(int(version or 0))))

    # probe
    found: list[Any] = []
    t = threading.Thread(target=lambda: found.append(backend.probe()), daemon=True)
    t0 = time.perf_counter()
    t.start()
    t.join(reg.probe_timeout_s)
    seconds = time.perf_counter() - t0
    record("probe-bounded", not t.is_alive(), f"probe took {seconds:.3f} s "
           f"(limit {reg.probe_timeout_s:g} s)")
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)
        env = dict(os.environ)
        try:
            first, second = backend.probe(), backend.probe()
            changed = sorted(os.listdir(tmp))
            env_changed = sorted(k for k in set(env) | set(os.environ)
                                 if env.get(k) != os.environ.get(k))
        finally:
            os.chdir(cwd)
    same = [d.name for d in first] == [d.name for d in second]
    record("probe-no-side-effects", not changed and not env_changed and same,
           f"files created in the working directory: {changed}; environment changed: "
           f"{env_changed}; same devices twice: {same}")
    caps = backend.capabilities
    try:
        json.dumps(caps.to_dict())
        ok = isinstance(caps, Capabilities)
        detail = f"{len(caps.ops)} ops declared, any_op={caps.any_op}"
    except Exception as exc:
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    record("capabilities-are-data", ok, detail)

    # invalid input, through backplane's own wrappers
    try:
        session = Session(_gather(), devices=[device.id], strict=True)
        session.run({"data": np.ones((4, 3), np.float32), "idx": np.array([0, 99], np.int64)})
        record("invalid-input-is-a-backplane-error", False,
               "Gather with index 99 of 4 returned instead of raising")
    except BackplaneError as exc:
        record("invalid-input-is-a-backplane-error", True, f"{type(exc).__name__}: "
               f"{str(exc)[:200]}")
    except Exception as exc:
        record("invalid-input-is-a-backplane-error", False, f"{type(exc).__name__}: {exc}")

    # threads, repeatability, memory
    graph, model_text = check_graph(seed, backend.capabilities)
    options = CompileOptions()
    rng = np.random.default_rng(seed)
    xs = [rng.standard_normal((8, 64)).astype(np.float32) for _ in range(8)]
    try:
        exe = backend.compile(graph, device, options)
        want = [exe.run({"x": x})["y"] for x in xs]
        runs = [np.asarray(exe.run({"x": xs[0]})["y"]) for _ in range(5)]
        record("repeatable", all(np.array_equal(r, runs[0]) for r in runs),
               f"five runs of {model_text} on one input, compared bit for bit")
        errors: list[str] = []
        compiled: list[Any] = []

        def compile_one() -> None:
            try:
                compiled.append(backend.compile(graph, device, options))
            except Exception as exc:
                errors.append(f"compile: {type(exc).__name__}: {exc}")

        def run_one(k: int) -> None:
            try:
                for _ in range(5):
                    got = exe.run({"x": xs[k]})["y"]
                    if not np.array_equal(got, want[k]):
                        errors.append(f"thread {k}: result differs from the single-threaded one")
                        return
            except Exception as exc:
                errors.append(f"run: {type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=compile_one) for _ in range(4)]
        threads += [threading.Thread(target=run_one, args=(k,)) for k in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(120)
        if any(th.is_alive() for th in threads):
            errors.append("a thread did not finish within 120 s")
        record("thread-safe", not errors, "; ".join(errors[:3]) or
               "4 compiling and 8 running threads agreed with the single-threaded results")
        ref = weakref.ref(exe)
        del exe, compiled
        gc.collect()
        freed = ref() is None
        before = _rss_bytes()
        for _ in range(20):
            e = backend.compile(graph, device, options)
            e.run({"x": rng.standard_normal((4096, 64)).astype(np.float32)})
            del e
        gc.collect()
        grown = (_rss_bytes() - before) / 2**20
        record("releases-memory", freed and grown < 64,
               f"executable freed when dropped: {freed}; growth over 20 compile/run cycles: "
               f"{grown:.1f} MiB (limit 64)")
    except Exception as exc:
        for name in ("repeatable", "thread-safe", "releases-memory"):
            if name not in {o[0] for o in out}:
                record(name, False, f"compile or run of {model_text} failed: "
                                    f"{type(exc).__name__}: {exc}")
    return out


def _child(conn: Any, backend: str, device: str, seed: int) -> None:
    import warnings


    warnings.simplefilter("ignore", PluginDeprecationWarning)  # the parent has shown it
    try:
        conn.send(check_all(backend, device, seed))
    except BaseException as exc:
        conn.send([("setup", "error", f"{type(exc).__name__}: {exc}")])


def run_api_tier(backend: str, device: str, seed: int, timeout_s: float) -> list[Any]:
    """Every API check as a CaseResult, run in a worker process."""
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_child, args=(child, backend, device, seed), daemon=True)
    t0 = time.perf_counter()
    process.start()
    child.close()
    got: list[tuple[str, str, str]] = []
    status, why = None, ""
    if parent.poll(timeout_s):
        try:
            got = parent.recv()
        except EOFError:
            process.join(5)
            status, why = "crash", f"the worker died (exit code {process.exitcode})"
    else:
        status, why = "hang", f"no answer within {timeout_s:g} s"
    if process.is_alive():
        process.kill()
    seconds = time.perf_counter() - t0
    done = {name: (st, detail) for name, st, detail in got}
    results = []
    for name in CHECKS:
        st, detail = done.get(name, (status or "error", why or done.get("setup", ("", ""))[1]))
        results.append(CaseResult(f"api/{name}", "api", "-", "api", [], st,
                                  seconds=seconds / len(CHECKS), error=None if st == "pass" else detail,
                                  reason=detail if st == "pass" else None))
    return results
