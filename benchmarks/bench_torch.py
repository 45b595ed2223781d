"""PyTorch: eager, ``torch.compile`` with inductor, and ``torch.compile(backend="backplane")``
on a BERT encoder, a ResNet-style CNN and a GPT-2 decoding step, at batch 1 and 8, on this
CPU (issue 22). OpenVINO's own ``torch.compile`` backend (``backend="openvino"``, the anchor)
is measured beside them where it is installed, and backplane under ``precision="auto"``
(fp16, bf16 or int8 paths kept within 1e-2 of the reference; OpenVINO's backend takes the
CPU's bf16 by itself where the CPU has it). Last, ``Session.from_torch`` run directly
(numpy views in, tensors out): the same session without dynamo, which shows what dynamo's
guards and frame hook cost per call (the small MLP is there for that).

Each (model, batch) starts from a fresh dynamo cache and a fresh inductor cache folder:
- compile: the first call's wall time (dynamo tracing plus the backend's compile; for
  backplane the export to ONNX, planning and compiling; its background selection goes on
  after the first call, and "selected" is when it ended);
- steady state: the variants called in alternation, in rounds of about 50 ms each, and the
  median per call over the rounds, so that drift hits all alike;
- error: the largest difference from eager over every output, relative to that output's
  largest magnitude.
The models come from ``backplane.conformance.torch_models`` (random weights, under
``torch.inference_mode()``). backplane's process-wide discovery (about 1 s, once) is paid
by a warm-up compile before the first model, as torch's own import is.

    python benchmarks/bench_torch.py [--models bert,cnn,gpt2-step] [--batches 1,8]
                                     [--rounds 15] [--json OUT]
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from typing import Any

import torch

import backplane as bp
import backplane.pytorch as bpt
from backplane.conformance import torch_models
from machine import cpu_name, versions

#: Goal of the issue: backplane's steady state at least as fast as inductor's here, for
#: the encoder and the CNN.
GOAL_MODELS = ("bert", "cnn")


def models(batch: int) -> dict[str, Any]:
    """name -> a builder of (module, positional inputs) at ``batch``."""

    def bert() -> tuple[Any, tuple]:
        model = torch_models.bert(hidden=256, layers=4, heads=4, intermediate=1024,
                                  vocab=8000, positions=256)
        return model, (torch.randint(0, 8000, (batch, 128)),)

    def cnn() -> tuple[Any, tuple]:
        model = torch_models.resnet(widths=(64, 128, 256, 512), classes=1000)
        return model, (torch.randn(batch, 3, 224, 224),)

    def gpt2_step() -> tuple[Any, tuple]:
        gpt2 = torch_models.gpt2(embd=256, layers=4, heads=4, vocab=8000, positions=256)
        past = tuple(torch.randn(batch, 4, 127, 64) for _ in range(2 * 4))
        return torch_models.decoder_step(gpt2), (torch.randint(0, 8000, (batch, 1)), *past)

    def mlp() -> tuple[Any, tuple]:
        model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(),
                                    torch.nn.Linear(64, 64)).eval()
        return model, (torch.randn(batch, 64),)

    return {"mlp": mlp, "bert": bert, "cnn": cnn, "gpt2-step": gpt2_step}


def variants() -> dict[str, dict[str, Any]]:
    """name -> torch.compile's keyword arguments (None: eager)."""
    out: dict[str, Any] = {"eager": None, "inductor": {"backend": "inductor"},
                           "backplane": {"backend": "backplane"},
                           "backplane precision=auto": {"backend": "backplane", "options": {
                               "precision": "auto"}}}
    if "openvino" in torch._dynamo.list_backends():
        out["openvino (its torch.compile backend)"] = {"backend": "openvino"}
    out["backplane Session.from_torch"] = "session"
    return out


class Direct:
    """``Session.from_torch`` on the first call; then its ``run``, fed numpy views of the
    tensors, outputs back as tensors: backplane's session without dynamo around it."""

    def __init__(self, module: Any) -> None:
        self.module, self.session, self.names = module, None, []

    def __call__(self, *inputs: Any) -> Any:
        if self.session is None:
            self.session = bp.Session.from_torch(self.module, inputs)
            self.names = [vi.name for vi in self.session.inputs]
        out = self.session.run({n: t.numpy() for n, t in zip(self.names, inputs)})
        return tuple(torch.from_numpy(v) for v in out.values())


def flat(out: Any) -> list[Any]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in flat(o)]
    if hasattr(out, "to_tuple"):
        return flat(out.to_tuple())
    return []


def error(got: Any, want: Any) -> float:
    worst = 0.0
    for g, w in zip(flat(got), flat(want), strict=True):
        scale = max(float(w.abs().max()), 1e-30)
        worst = max(worst, float((g.float() - w.float()).abs().max()) / scale)
    return worst


def measure(name: str, module: Any, inputs: tuple, batch: int, rounds: int) -> list[dict]:
    torch._dynamo.reset()
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="bench-inductor-")
    fns, rows = {}, []
    with torch.inference_mode():
        want = module(*inputs)
        for label, kwargs in variants().items():
            before = {id(g) for g in bpt.graphs()}  # the graphs this variant adds are its own
            mine = module if kwargs is None else Direct(copy.deepcopy(module)) \
                if kwargs == "session" else torch.compile(copy.deepcopy(module), **kwargs)
            start = time.perf_counter()
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    got = mine(*inputs)
            except Exception as exc:  # noqa: BLE001 - a variant that fails is reported as such
                rows.append({"model": name, "batch": batch, "variant": label,
                             "failed": f"{type(exc).__name__}: {str(exc)[:200]}"})
                continue
            first = time.perf_counter() - start
            row = {"model": name, "batch": batch, "variant": label,
                   "compile_s": None if kwargs is None else first, "error": error(got, want),
                   "warnings": [str(w.message)[:300] for w in caught
                                if str(w.message).startswith("backplane:")]}
            if label.startswith("backplane"):
                sessions = [s for g in bpt.graphs() if id(g) not in before
                            for s in g.sessions_list()]
                sessions += [mine.session] if isinstance(mine, Direct) else []
                for session in sessions:
                    session.wait_selected(120)
                row["selected_s"] = time.perf_counter() - start
                row["plans"] = sorted({f"{p.backend}@{p.precision}" for s in sessions
                                       for p in s.plan.partitions})
            fns[label] = mine
            rows.append(row)
        times = {label: [] for label in fns}
        calls = {}
        for label, fn in fns.items():  # calls per round: about 50 ms of each
            start = time.perf_counter()
            fn(*inputs)
            calls[label] = max(1, int(0.05 / max(time.perf_counter() - start, 1e-6)))
        for _ in range(rounds):
            for label, fn in fns.items():
                start = time.perf_counter()
                for _ in range(calls[label]):
                    fn(*inputs)
                times[label].append((time.perf_counter() - start) / calls[label])
    inductor = statistics.median(times["inductor"])
    for row in rows:
        if "failed" in row:
            continue
        row["steady_ms"] = statistics.median(times[row["variant"]]) * 1e3
        row["vs_inductor"] = inductor * 1e3 / row["steady_ms"]
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mlp,bert,cnn,gpt2-step")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    # A variant's failure is one row of the table: not its pages of guard-building logs,
    # nor OpenVINO's FutureWarnings about torch's deprecated dynamo settings.
    logging.getLogger("torch._guards").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", category=FutureWarning)
    with torch.inference_mode():  # discovery once, as torch's own import is paid once
        torch.compile(torch.nn.ReLU(), backend="backplane")(torch.randn(4))
    rows = []
    print("| model | batch | variant | compile s | steady ms | inductor / this | error |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: |")
    for batch in (int(b) for b in args.batches.split(",")):
        builders = models(batch)
        for name in args.models.split(","):
            torch.manual_seed(0)
            module, inputs = builders[name]()
            for row in measure(name, module, inputs, batch, args.rounds):
                rows.append(row)
                if "failed" in row:
                    print(f"| {name} | {batch} | {row['variant']} | failed: "
                          f"{' '.join(row['failed'].split())[:150]} | | | |", flush=True)
                    continue
                compiled = "-" if row["compile_s"] is None else f"{row['compile_s']:.1f}"
                if "selected_s" in row:
                    compiled += f" (selected {row['selected_s']:.1f})"
                print(f"| {name} | {batch} | {row['variant']} | {compiled} | "
                      f"{row['steady_ms']:.3f} | {row['vs_inductor']:.2f} | "
                      f"{row['error']:.1e} |", flush=True)
                for w in row["warnings"]:
                    print(f"|   | | warning: {w} | | | | |")
    print()
    for name in args.models.split(","):
        goal = [r for r in rows if r["model"] == name and r["variant"] == "backplane"]
        ratios = ", ".join(f"batch {r['batch']}: {r['vs_inductor']:.2f}x" for r in goal)
        target = " (goal >= 1.00x)" if name in GOAL_MODELS else ""
        met = all(r["vs_inductor"] >= 1.0 for r in goal)
        verdict = (" met" if met else " MISSED") if name in GOAL_MODELS else ""
        print(f"{name}: backplane steady-state speed relative to inductor: {ratios}"
              f"{target}{verdict}; plans on {', '.join(goal[0]['plans']) if goal else '-'}")
    info = {"machine": cpu_name(), "versions": {**versions(), "torch": torch.__version__},
            "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}
    print(f"\nmachine: {info['machine']}; torch threads {info['threads']}; "
          + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**info, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
