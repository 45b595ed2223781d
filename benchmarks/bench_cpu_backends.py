"""The CPU backends against the runtimes they wrap, and the opencl kernels against numpy.

Every row is measured side by side in one run: the two things compared are called in
alternation, call after call, so that drift in the machine's speed hits both alike, and
each figure is the median over the calls.

a. overhead: a Session pinned to openvino-cpu against the same model compiled with
   OpenVINO's own API (same precision and performance hint), and a Session pinned to
   onnxruntime against an ORT InferenceSession with the same options; batch 1, a
   ResNet-style CNN and a transformer encoder block. Goal: latency ratio <= 1.03; the
   per-call overhead in microseconds is the difference of the medians.
b. opencl: MatMul f32 1024x1024x1024 GFLOP/s against numpy.matmul (goal >= 0.5x);
   FusedConvRelu and FusedMatMulBiasGelu against their unfused sequences, both on opencl
   (goal >= 1.2x).

    python benchmarks/bench_cpu_backends.py [--calls 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import backplane as bp
from machine import cpu_name, versions
from backplane.conformance import zoo

OVERHEAD_GOAL = 1.03
MATMUL_GOAL = 0.5
FUSED_GOAL = 1.2


def alternate(a: Callable[[], Any], b: Callable[[], Any], calls: int,
              warmup: int = 5) -> tuple[float, float]:
    """Median seconds of ``a`` and of ``b``, called in alternation ``calls`` times each."""
    for _ in range(warmup):
        a(), b()
    ta, tb = [], []
    for i in range(calls):
        first, second = (a, b) if i % 2 == 0 else (b, a)
        t0 = time.perf_counter()
        first()
        t1 = time.perf_counter()
        second()
        t2 = time.perf_counter()
        (ta, tb)[i % 2].append(t1 - t0)
        (tb, ta)[i % 2].append(t2 - t1)
    return statistics.median(ta), statistics.median(tb)


def models() -> dict[str, tuple[Any, dict[str, np.ndarray]]]:
    """The two overhead models at batch 1, with fixed random inputs."""
    rng = np.random.default_rng(0)
    cnn = zoo.resnet(width=32, size=112).model
    block = zoo.transformer_encoder(dim=256, heads=4, hidden=1024).model
    return {
        "ResNet-style CNN 1x3x112x112": (
            cnn, {"x": rng.standard_normal((1, 3, 112, 112)).astype(np.float32)}),
        "transformer block 1x128x256": (
            block, {"x": rng.standard_normal((1, 128, 256)).astype(np.float32)}),
    }


def native_openvino(model: Any) -> Callable[[dict], Any]:
    import openvino as ov
    import openvino.properties.hint as hints

    core = ov.Core()
    compiled = core.compile_model(core.read_model(model.SerializeToString(), b""), "CPU", {
        hints.inference_precision: ov.Type.f32,
        hints.performance_mode: hints.PerformanceMode.LATENCY})
    request = compiled.create_infer_request()
    return lambda feeds: {k.get_any_name(): v for k, v in request.infer(feeds).items()}


def native_onnxruntime(model: Any) -> Callable[[dict], Any]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    session = ort.InferenceSession(model.SerializeToString(), opts,
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return lambda feeds: dict(zip(names, session.run(None, feeds)))


NATIVE = {"openvino-cpu": native_openvino, "onnxruntime": native_onnxruntime}


def overhead_rows(calls: int) -> list[dict]:
    rows = []
    for label, (model, feeds) in models().items():
        for backend, native in NATIVE.items():
            try:
                session = bp.Session(model, devices=[backend])
                direct = native(model)
            except Exception as exc:  # a runtime missing here: say so in the table
                rows.append({"part": "a", "what": f"{backend}: {label}", "error": str(exc)})
                continue
            want = direct(feeds)["y"]
            got = session.run(feeds)["y"]
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
            ours, theirs = alternate(lambda: session.run(feeds), lambda: direct(feeds), calls)
            rows.append({"part": "a", "what": f"{backend}: {label}",
                         "backplane_ms": ours * 1e3, "native_ms": theirs * 1e3,
                         "ratio": ours / theirs, "overhead_us": (ours - theirs) * 1e6,
                         "goal": f"<= {OVERHEAD_GOAL}", "met": ours / theirs <= OVERHEAD_GOAL})
    return rows


def _one_node(op: str, inputs: dict[str, list[int]], weights: dict[str, np.ndarray],
              out_shape: list[int], domain: str = "", **attrs: Any) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    from backplane.conformance.cases import OPSET

    node = helper.make_node(op, [*inputs, *weights], ["y"], domain=domain, **attrs)
    opsets = [helper.make_opsetid("", OPSET)]
    if domain:
        opsets.append(helper.make_opsetid(domain, 1))
    graph = helper.make_graph(
        [node], op, [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
                     for n, s in inputs.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
        initializer=[numpy_helper.from_array(w, n) for n, w in weights.items()])
    return helper.make_model(graph, opset_imports=opsets)


def matmul_row(calls: int) -> dict:
    n = 1024
    rng = np.random.default_rng(1)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    session = bp.Session(_one_node("MatMul", {"a": [n, n], "b": [n, n]}, {}, [n, n]),
                         devices=["opencl"])
    feeds = {"a": a, "b": b}
    np.testing.assert_allclose(session.run(feeds)["y"], a @ b, rtol=1e-3, atol=1e-2)
    ours, theirs = alternate(lambda: session.run(feeds), lambda: np.matmul(a, b), calls,
                             warmup=2)
    flops = 2.0 * n ** 3
    return {"part": "b", "what": "opencl MatMul f32 1024^3 vs numpy.matmul",
            "backplane_ms": ours * 1e3, "native_ms": theirs * 1e3,
            "gflops": flops / ours / 1e9, "native_gflops": flops / theirs / 1e9,
            "ratio": theirs / ours, "goal": f">= {MATMUL_GOAL}", "met": theirs / ours >= MATMUL_GOAL}


def fused_models() -> dict[str, tuple[Any, dict[str, np.ndarray]]]:
    """Two unfused patterns the fusion pass rewrites, with inputs."""
    from onnx import TensorProto, helper, numpy_helper

    from backplane.conformance.cases import OPSET

    rng = np.random.default_rng(2)

    def model(nodes, inputs, inits, out_shape):
        graph = helper.make_graph(
            nodes, "pattern",
            [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(a.shape))
             for n, a in inputs.items()],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)],
            initializer=[numpy_helper.from_array(a, n) for n, a in inits.items()])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])

    x = rng.standard_normal((1, 64, 56, 56)).astype(np.float32)
    w = (rng.standard_normal((64, 64, 3, 3)) * 0.05).astype(np.float32)
    bias = rng.standard_normal(64).astype(np.float32)
    conv = model([helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1],
                                   kernel_shape=[3, 3]),
                  helper.make_node("Relu", ["c"], ["y"])], {"x": x}, {"w": w, "b": bias},
                 [1, 64, 56, 56])
    a = rng.standard_normal((128, 768)).astype(np.float32)
    wm = (rng.standard_normal((768, 3072)) * 0.03).astype(np.float32)
    bm = rng.standard_normal(3072).astype(np.float32)
    mlp = model([helper.make_node("MatMul", ["a", "w"], ["m"]),
                 helper.make_node("Add", ["m", "b"], ["s"]),
                 helper.make_node("Gelu", ["s"], ["y"])], {"a": a}, {"w": wm, "b": bm},
                [128, 3072])
    return {"FusedConvRelu (Conv 3x3 64->64 on 1x64x56x56, Relu)": (conv, {"x": x}),
            "FusedMatMulBiasGelu (128x768 @ 768x3072, Add, Gelu)": (mlp, {"a": a})}


def fused_rows(calls: int) -> list[dict]:
    from backplane.ops.fusion import fuse
    from backplane.engine.registry import registry

    reg = registry()
    backend = reg.backends["opencl"]
    device = next(d for d in bp.devices() if d.backend == "opencl")
    options = bp.CompileOptions()
    rows = []
    for label, (model, feeds) in fused_models().items():
        graph = bp.load_model(model)
        fused_graph = fuse(graph, lambda key: key in backend.capabilities.ops)
        if fused_graph is graph:
            rows.append({"part": "b", "what": f"opencl {label}",
                         "error": "the fusion pass found nothing opencl declares"})
            continue
        unfused = backend.compile(graph, device, options)
        fused = backend.compile(fused_graph, device, options)
        np.testing.assert_allclose(fused.run(feeds)["y"], unfused.run(feeds)["y"],
                                   rtol=1e-3, atol=1e-3)
        t_fused, t_unfused = alternate(lambda: fused.run(feeds), lambda: unfused.run(feeds),
                                       calls, warmup=3)
        rows.append({"part": "b", "what": f"opencl {label}",
                     "backplane_ms": t_fused * 1e3, "native_ms": t_unfused * 1e3,
                     "ratio": t_unfused / t_fused, "goal": f">= {FUSED_GOAL}",
                     "met": t_unfused / t_fused >= FUSED_GOAL})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="timed calls per side")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    rows = overhead_rows(args.calls)
    for part in (lambda: [matmul_row(max(5, args.calls // 20))],
                 lambda: fused_rows(max(10, args.calls // 4))):
        try:
            rows += part()
        except Exception as exc:  # noqa: BLE001 - a missing backend is a row, not a crash
            rows.append({"part": "b", "what": "opencl", "error": f"{type(exc).__name__}: {exc}"})
    meta = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_name(), "cores": os.cpu_count(),
            "versions": versions()}
    if args.json:
        print(json.dumps({"meta": meta, "rows": rows}, indent=2))
        return 0
    print(f"{meta['date']}, {meta['cpu']}, {meta['cores']} cores; "
          + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()))
    print(f"{'':2}{'measured':62} {'backplane':>10} {'baseline':>10} {'ratio':>7} "
          f"{'goal':>7} {'extra':>14}")
    for r in rows:
        if "error" in r:
            print(f"{r['part']} {r['what']:62} not measured: {r['error']}")
            continue
        extra = (f"{r['overhead_us']:+.0f} us/call" if "overhead_us" in r else
                 f"{r['gflops']:.1f}/{r['native_gflops']:.1f} GF/s" if "gflops" in r else "")
        print(f"{r['part']} {r['what']:62} {r['backplane_ms']:8.3f}ms {r['native_ms']:8.3f}ms "
              f"{r['ratio']:7.3f} {r['goal']:>7} {extra:>14}"
              f"{'' if r['met'] else '  (goal missed)'}")
    print("a: ratio = backplane / native latency; b: ratio = baseline / backplane time "
          "(MatMul: backplane speed / numpy speed; fused: unfused time / fused time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
