"""``backplane demo``: a small generated CNN runs on what this machine has, checked against
the reference backend, with time and error per device.

The model is built in code (no download): Conv-Relu-MaxPool, Conv-Relu, GlobalAveragePool,
Flatten, Gemm, Softmax, with seeded random weights and a symbolic batch dimension.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from backplane.engine.registry import registry
from backplane.engine.session import Session
from backplane.sdk.errors import BackplaneError


def build_demo_model(seed: int = 0) -> Any:
    """The demo CNN as an onnx.ModelProto: ``image float32[batch,3,32,32] -> probs [batch,10]``."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)

    def weight(name: str, *shape: int) -> Any:
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else shape[0]
        data = (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
        return numpy_helper.from_array(data, name)

    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2],
                         name="pool1"),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], transB=1, name="fc"),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1, name="softmax"),
    ]
    inits = [weight("w1", 16, 3, 3, 3), weight("b1", 16), weight("w2", 32, 16, 3, 3),
             weight("b2", 32), weight("w3", 10, 32), weight("b3", 10)]
    graph = helper.make_graph(
        nodes, "backplane-demo-cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, 32, 32])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 10])],
        initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@dataclass
class DemoRow:
    """One device's result: where it ran, how fast, how close to the reference."""

    target: str
    devices: list[str]
    status: str
    median_ms: float | None = None
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    rtol: float | None = None
    atol: float | None = None
    error: str = ""


@dataclass
class DemoResult:
    """The demo's whole result, as ``backplane demo --json`` prints it."""

    model: str
    batch: int
    seed: int
    repeats: int
    rows: list[DemoRow] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every device ran and matched the reference."""
        return bool(self.rows) and all(r.status == "PASS" for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return {**asdict(self), "ok": self.ok}


def run_demo(devices: list[str] | None = None, batch: int = 8, repeats: int = 10,
             seed: int = 0) -> DemoResult:
    """Run the demo model automatically placed and on each device, against the reference.

    Each device is tried first in the order, with the reference backend behind it for the
    ops it lacks; the row says which devices ran.

    Args:
        devices: device ids or backend names to try one by one; default: every device.
        batch: the batch size of the input.
        repeats: timed runs per device (the median is reported).
        seed: seed of the weights and the input.
    """
    # on use only: each command loads what it runs, so every command starts fast
    from backplane.conformance import compare

    model = build_demo_model(seed)
    oracle = Session(model, devices=["reference"], strict=True)
    inputs = oracle.random_inputs(seed=seed, dims={"batch": batch})
    expected = oracle.run(inputs)["probs"]
    result = DemoResult("backplane-demo-cnn", batch, seed, repeats)
    targets = devices if devices is not None else ["auto"] + [d.id for d in registry().devices()]
    for target in targets:
        try:
            if target == "auto":  # what an application gets: re-plans past failures
                session = Session(model)
            else:  # this device first, the reference only for ops it lacks; no re-planning
                names = [target] if target.split(":")[0] == "reference" else [target, "reference"]
                session = Session(model, devices=names, strict=True)
            session.run(inputs)  # warm-up
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                out = session.run(inputs)["probs"]
                times.append(time.perf_counter() - t0)
        except BackplaneError as exc:
            result.rows.append(DemoRow(target, [], "ERROR", error=str(exc)))
            continue
        cmp = compare(out, expected)
        used = session.plan.devices_used
        result.events += [f"{target}: {e}" for e in session.plan.events]
        result.rows.append(DemoRow(
            target, used, "PASS" if cmp.ok else "FAIL", round(statistics.median(times) * 1e3, 4),
            cmp.max_abs_error, cmp.max_rel_error, cmp.rtol, cmp.atol, cmp.detail))
    return result
