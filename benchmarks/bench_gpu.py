"""The cuda-tensorrt backend on an NVIDIA GPU: custom CUDA kernels against torch, and
backplane Sessions against torch eager (issue 7).

Everything is measured side by side in one run: the two things compared are called in
alternation, so that clock and thermal drift hit both alike, and each figure is the median
over the calls.

a. MatMul float16 4096 x 4096 x 4096: the custom tensor-core kernel (kernels/cuda/matmul.cu)
   against torch.matmul (cuBLAS). Goal: >= 0.7x cuBLAS's speed.
b. each fused kernel against the unfused torch sequence it replaces (FusedMatMulBiasGelu:
   matmul, add, gelu; Attention: matmul, mul, add, softmax, matmul; FusedConvRelu: conv2d,
   relu), float16 and float32. Goal: >= 1.2x. For information: Attention against torch's
   fused scaled_dot_product_attention (what the torch op table's Attention runs), and
   Softmax and LayerNormalization against torch's own single kernels.
   Times of (a) and (b) come from CUDA events around each call on torch's current stream,
   after a warm-up, so they include the Python launch overhead of each side.
c. a backplane Session on the GPU (``Session(model, devices=["cuda-tensorrt"])``: the path
   the backend picks, TensorRT when installed; and forced onto the kernel path) against the
   same ONNX model run by torch eager, node by node with the torch op table's kernels
   (``backplane.runtimes.torch.kernels``: the kernel path without backplane's executor,
   fusion or custom kernels), on the scheduler zoo's large models at batch 1 and 32. Both
   take host numpy inputs and return host numpy outputs; wall-clock time per call.

Without a CUDA GPU it prints "no CUDA GPU: not measured" and exits 0.

    python benchmarks/bench_gpu.py [--calls 50] [--families mlp,resnet,...] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import backplane as bp
from machine import cpu_name, versions

MATMUL_GOAL = 0.7
FUSED_GOAL = 1.2
FAMILIES = ("mlp", "resnet", "depthwise-separable", "transformer-encoder")


def gpu_versions(torch: Any) -> dict[str, str]:
    """The GPU, its driver, CUDA (torch's), torch, CuPy and NVRTC."""
    from backplane.plugins.cuda_tensorrt import nvrtc

    out = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "cuda (torch)": str(torch.version.cuda)}
    try:
        out["driver"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20).stdout.splitlines()[0].strip()
    except Exception:  # noqa: BLE001 - absent tool: say so
        out["driver"] = "unknown"
    try:
        import cupy

        out["cupy"] = cupy.__version__
    except Exception:  # noqa: BLE001
        out["cupy"] = "absent"
    found = nvrtc.version()
    out["nvrtc"] = ".".join(map(str, found)) if found else "absent"
    out["tf32 (matmul, cudnn)"] = (f"{torch.backends.cuda.matmul.allow_tf32}, "
                                   f"{torch.backends.cudnn.allow_tf32}")
    return out


def alternate_cuda(torch: Any, a: Callable[[], Any], b: Callable[[], Any], calls: int,
                   warmup: int = 5) -> tuple[float, float]:
    """Median milliseconds of ``a`` and ``b`` (CUDA events), called in alternation."""
    for _ in range(warmup):
        a(), b()
    torch.cuda.synchronize()
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(calls):
        order = ((0, a), (1, b)) if i % 2 == 0 else ((1, b), (0, a))
        for which, fn in order:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times[which].append(start.elapsed_time(end))
    return statistics.median(times[0]), statistics.median(times[1])


def alternate_wall(a: Callable[[], Any], b: Callable[[], Any], calls: int,
                   warmup: int = 3) -> tuple[float, float]:
    """Median milliseconds of ``a`` and ``b`` (wall clock; both return host data)."""
    for _ in range(warmup):
        a(), b()
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(calls):
        order = ((0, a), (1, b)) if i % 2 == 0 else ((1, b), (0, a))
        for which, fn in order:
            t0 = time.perf_counter()
            fn()
            times[which].append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times[0]), statistics.median(times[1])

# --------------------------------------------------------------------------- a, b: kernels


def kernel_cases(torch: Any) -> list[tuple[str, str, float | None, Callable, Callable, float]]:
    """(part, label, goal, custom, baseline, tolerance) of every kernel row."""
    from backplane.plugins.cuda_tensorrt import cudakernels as ck

    F = torch.nn.functional

    def refuse(key: str) -> Callable[..., Any]:
        def fn(*inputs: Any, **attrs: Any) -> Any:
            raise RuntimeError(f"{key} fell back to torch: {kernels[key].last_fallback}")
        return fn

    kernels = ck.custom_kernels(refuse, strict=True)
    g = torch.Generator(device="cuda").manual_seed(0)

    def rand(*shape: int, dtype: Any = torch.float16, scale: float = 1.0) -> Any:
        return (torch.randn(*shape, generator=g, device="cuda") * scale).to(dtype)

    cases = []
    n = 4096
    a, b = rand(n, n), rand(n, n, scale=n ** -0.5)
    cases.append(("a", "MatMul f16 4096x4096x4096 vs torch.matmul (cuBLAS)", MATMUL_GOAL,
                  lambda: kernels["MatMul"](a, b), lambda: torch.matmul(a, b), 2e-2))
    for dtype, tokens in ((torch.float16, 32 * 128), (torch.float32, 128)):
        x = rand(tokens, 768, dtype=dtype)
        w = rand(768, 3072, dtype=dtype, scale=768 ** -0.5)
        bias = rand(3072, dtype=dtype)
        name = str(dtype).removeprefix("torch.")
        cases.append(("b", f"FusedMatMulBiasGelu {name} {tokens}x768 @ 768x3072 vs "
                           "matmul, add, gelu", FUSED_GOAL,
                      lambda x=x, w=w, bias=bias: kernels["backplane::FusedMatMulBiasGelu"](
                          x, w, bias, approximate="none"),
                      lambda x=x, w=w, bias=bias: F.gelu(torch.matmul(x, w) + bias), 2e-2))
    for dtype, (B, H, S, D) in ((torch.float16, (8, 12, 512, 64)),
                                (torch.float16, (4, 16, 1024, 128)),
                                (torch.float32, (8, 12, 256, 64))):
        q, k, v = (rand(B, H, S, D, dtype=dtype) for _ in range(3))
        mask = rand(1, 1, S, S, dtype=dtype)
        scale = 1 / math.sqrt(D)
        name = str(dtype).removeprefix("torch.")
        cases.append(("b", f"Attention {name} [{B},{H},{S},{D}] + mask vs matmul, mul, add, "
                           "softmax, matmul", FUSED_GOAL,
                      lambda q=q, k=k, v=v, mask=mask, scale=scale: kernels[
                          "backplane::Attention"](q, k, v, mask, scale=scale),
                      lambda q=q, k=k, v=v, mask=mask, scale=scale: torch.matmul(torch.softmax(
                          torch.matmul(q, k.transpose(-1, -2)) * scale + mask, -1), v), 2e-2))
        # The torch op table's own Attention (the fallback) is torch's fused SDPA kernel.
        cases.append(("b", f"Attention {name} [{B},{H},{S},{D}] + mask vs "
                           "F.scaled_dot_product_attention", None,
                      lambda q=q, k=k, v=v, mask=mask, scale=scale: kernels[
                          "backplane::Attention"](q, k, v, mask, scale=scale),
                      lambda q=q, k=k, v=v, mask=mask, scale=scale:
                          F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale),
                      2e-2))
    for dtype in (torch.float16, torch.float32):
        name = str(dtype).removeprefix("torch.")
        for (N, C, HW, Cout, k, label) in ((8, 64, 56, 64, 3, "3x3"), (8, 256, 56, 64, 1, "1x1")):
            x = rand(N, C, HW, HW, dtype=dtype)
            w = rand(Cout, C, k, k, dtype=dtype, scale=(C * k * k) ** -0.5)
            bias = rand(Cout, dtype=dtype)
            pads = [k // 2] * 4
            cases.append(("b", f"FusedConvRelu {name} {label} {C}->{Cout} on {N}x{C}x{HW}x{HW} "
                               "vs conv2d, relu", FUSED_GOAL,
                          lambda x=x, w=w, bias=bias, pads=pads: kernels[
                              "backplane::FusedConvRelu"](x, w, bias, pads=pads),
                          lambda x=x, w=w, bias=bias, k=k: F.conv2d(x, w, bias,
                                                                     padding=k // 2).relu(),
                          2e-2))
    s = rand(8 * 12 * 512, 512, dtype=torch.float16)
    cases.append(("b", "Softmax f16 [49152, 512] vs torch.softmax", None,
                  lambda: kernels["Softmax"](s, axis=-1), lambda: torch.softmax(s, -1), 2e-3))
    x = rand(32 * 128, 768)
    gamma, beta = rand(768), rand(768)
    cases.append(("b", "LayerNormalization f16 [4096, 768] vs F.layer_norm", None,
                  lambda: kernels["LayerNormalization"](x, gamma, beta, axis=-1)[0],
                  lambda: F.layer_norm(x, (768,), gamma, beta), 2e-2))
    return cases


def kernel_rows(torch: Any, calls: int) -> list[dict[str, Any]]:
    rows = []
    for part, label, goal, custom, baseline, tol in kernel_cases(torch):
        try:
            got, want = custom(), baseline()
            err = ((got.float() - want.float()).abs().max() /
                   want.float().abs().max().clamp_min(1e-6)).item()
            ours, theirs = alternate_cuda(torch, custom, baseline, calls)
        except Exception as exc:  # noqa: BLE001 - a failing row is reported, not fatal
            rows.append({"part": part, "what": label, "error": f"{type(exc).__name__}: {exc}"})
            continue
        ratio = theirs / ours
        rows.append({"part": part, "what": label, "custom_ms": ours, "torch_ms": theirs,
                     "ratio": ratio, "goal": f">= {goal}" if goal else "-",
                     "met": goal is None or ratio >= goal, "max_rel_error": err,
                     "checked": err <= tol})
    return rows

# --------------------------------------------------------------------------- c: sessions


class EagerRunner:
    """An ONNX graph run node by node with the torch op table's kernels on one device: what
    torch eager does with the model, without backplane's executor."""

    def __init__(self, model: Any, device: str):
        import torch
        from onnx import numpy_helper

        from backplane.sdk.contract import op_key
        from backplane.runtimes.torch import kernels as table

        self.graph = bp.load_model(model)
        self.steps = []
        for node in self.graph.nodes:
            kernel = table.get(op_key(node.op_type, node.domain))
            if kernel is None:
                raise RuntimeError(f"the torch op table has no kernel for {node.op_type}")
            self.steps.append((node, kernel.fn, kernel.support.layout == "contiguous"))
        from backplane.runtimes.torch import to_device

        self.upload = lambda a: to_device(a, torch.device(device), torch.float32)
        self.consts = {t.name: self.upload(numpy_helper.to_array(t).copy())
                       for t in self.graph.model.graph.initializer}
        self.outputs = [o.name for o in self.graph.outputs]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        values = dict(self.consts)
        values.update((k, self.upload(v)) for k, v in feeds.items())
        for node, fn, dense in self.steps:
            args = [values[name] if name else None for name in node.inputs]
            if dense:
                args = [a.contiguous() if hasattr(a, "contiguous") else a for a in args]
            result = fn(*args, **node.attributes)
            for name, value in zip(node.outputs, result if isinstance(result, (tuple, list))
                                   else (result,)):
                if name:
                    values[name] = value
        return {name: values[name].cpu().numpy() for name in self.outputs}


def session_rows(calls: int, families: tuple[str, ...]) -> list[dict[str, Any]]:
    from backplane.conformance.zoo import scheduler_zoo

    rows = []
    for entry in scheduler_zoo(sizes=["large"]):
        family = entry.name.rsplit("-large", 1)[0]
        if family not in families:
            continue
        rng = np.random.default_rng(0)
        feeds = {name: rng.standard_normal(shape).astype(np.float32)
                 for name, shape in entry.input_shapes.items()}
        try:
            eager = EagerRunner(entry.model, "cuda:0")
            want = eager.run(feeds)
        except Exception as exc:  # noqa: BLE001
            rows.append({"part": "c", "what": f"{entry.name}: torch eager",
                         "error": f"{type(exc).__name__}: {exc}"})
            continue
        for label, options in (("session", None),
                               ("session, kernel path", {"cuda-tensorrt": {"path": "kernels"}})):
            what = f"{entry.name}: {label} vs torch eager"
            try:
                session = bp.Session(entry.model, devices=["cuda-tensorrt"], sample_inputs=feeds,
                                     options=options)
                got = session.run(feeds)
                err = max(float(np.max(np.abs(got[k] - want[k])) /
                                max(float(np.max(np.abs(want[k]))), 1e-6)) for k in want)
                ours, theirs = alternate_wall(lambda: session.run(feeds),
                                              lambda: eager.run(feeds), calls)
            except Exception as exc:  # noqa: BLE001
                rows.append({"part": "c", "what": what,
                             "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"})
                continue
            paths = sorted({p.path.split(";")[0] for p in session.plan.partitions if p.path})
            rows.append({"part": "c", "what": what, "custom_ms": ours, "torch_ms": theirs,
                         "ratio": theirs / ours, "goal": "-", "met": True,
                         "max_rel_error": err, "checked": err <= 1e-2,
                         "path": "; ".join(paths) or "?"})
    return rows

# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=50, help="timed calls per side")
    parser.add_argument("--families", default=",".join(FAMILIES),
                        help="scheduler-zoo families for part c (comma-separated; '' for none)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        print("no CUDA GPU: not measured (torch is not installed)")
        return 0
    if not torch.cuda.is_available():
        print("no CUDA GPU: not measured")
        return 0
    from backplane.plugins.cuda_tensorrt import cudakernels as ck

    meta = {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_name(), "cores": os.cpu_count(),
            "versions": {**versions(), **gpu_versions(torch)}}
    ok, why = ck.available()
    rows: list[dict[str, Any]] = []
    if ok:
        ck.prepare()  # every source compiled (or read from the cache) before timing
        rows += kernel_rows(torch, args.calls)
    else:
        rows.append({"part": "a", "what": "custom kernels", "error": why})
    families = tuple(f for f in args.families.split(",") if f)
    rows += session_rows(max(5, args.calls // 2), families)
    if args.json:
        print(json.dumps({"meta": meta, "rows": rows}, indent=2))
        return 0
    print(f"{meta['date']}, {meta['cpu']}, {meta['cores']} cores; "
          + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()))
    print(f"{'':2}{'measured':86} {'backplane':>10} {'torch':>10} {'ratio':>7} {'goal':>7}")
    for r in rows:
        if "error" in r:
            print(f"{r['part']} {r['what']:86} not measured: {r['error']}")
            continue
        notes = [] if r["met"] else ["goal missed"]
        if not r["checked"]:
            notes.append(f"outputs differ: max relative error {r['max_rel_error']:.1e}")
        if r.get("path"):
            notes.append(r["path"])
        print(f"{r['part']} {r['what']:86} {r['custom_ms']:8.3f}ms {r['torch_ms']:8.3f}ms "
              f"{r['ratio']:7.3f} {r['goal']:>7}" + (f"  ({'; '.join(notes)})" if notes else ""))
    print("ratio = torch time / backplane time (above 1: backplane is faster); a, b: CUDA "
          "events per call; c: wall clock per call, host inputs to host outputs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
