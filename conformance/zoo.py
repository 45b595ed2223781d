"""Model-level conformance cases: small but realistic networks, built in code (no downloads).

Each model has a dynamic batch dimension (``"batch"``; the transformer also a dynamic
``"seq"``) and is run at two input sizes. Weights are float32 from a seeded generator, scaled
as a trained network's would be (He initialisation, unit-ish activations), so that outputs
neither vanish nor overflow and tolerances mean the same thing as on real models.

Each family also takes size parameters (the defaults are the suite's cases);
``scheduler_zoo`` gives every family at a small and a large size, at batch 1 and 32, for
measuring device selection (``benchmarks/bench_scheduler.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from backplane.conformance.casedef import OPSET, Case, case_rng


@dataclass
class ZooModel:
    """A model and the two input sizes it is checked at (input name -> shape)."""

    name: str
    model: onnx.ModelProto
    input_shapes: list[dict[str, list[int]]]


class _Net:
    """A tiny graph builder: nodes, initializers and unique value names."""

    def __init__(self, name: str, seed: int):
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._count = 0

    def fresh(self, stem: str) -> str:
        self._count += 1
        return f"{stem}_{self._count}"

    def const(self, array: np.ndarray, stem: str = "c") -> str:
        name = self.fresh(stem)
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, shape: tuple[int, ...], fan_in: int, stem: str = "w") -> str:
        w = self.rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)
        return self.const(w.astype(np.float32), stem)

    def bias(self, n: int) -> str:
        return self.const((self.rng.standard_normal(n) * 0.1).astype(np.float32), "b")

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs) -> str:
        outs = [self.fresh(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=self.fresh(op_type),
                                           **attrs))
        return outs[0]

    # building blocks --------------------------------------------------------------

    def conv_bn(self, x: str, c_in: int, c_out: int, k: int, stride: int = 1,
                group: int = 1, act: str | None = "Relu") -> str:
        w = self.weight((c_out, c_in // group, k, k), c_in // group * k * k)
        y = self.op("Conv", [x, w], kernel_shape=[k, k], strides=[stride, stride],
                    pads=[k // 2] * 4, group=group)
        y = self.batch_norm(y, c_out)
        if act == "Relu":
            y = self.op("Relu", [y])
        elif act == "Relu6":
            y = self.op("Clip", [y, self.const(np.float32(0)), self.const(np.float32(6))])
        return y

    def batch_norm(self, x: str, c: int) -> str:
        rng = self.rng
        scale = self.const(rng.uniform(0.5, 1.5, c).astype(np.float32), "gamma")
        shift = self.const((rng.standard_normal(c) * 0.1).astype(np.float32), "beta")
        mean = self.const((rng.standard_normal(c) * 0.1).astype(np.float32), "mean")
        var = self.const(rng.uniform(0.5, 1.5, c).astype(np.float32), "var")
        return self.op("BatchNormalization", [x, scale, shift, mean, var], epsilon=1e-5)

    def linear(self, x: str, n_in: int, n_out: int) -> str:
        """x @ W + b for an input of any rank (MatMul then Add, as exporters write it)."""
        y = self.op("MatMul", [x, self.weight((n_in, n_out), n_in)])
        return self.op("Add", [y, self.bias(n_out)])

    def head(self, x: str, channels: int, classes: int = 10) -> str:
        y = self.op("GlobalAveragePool", [x])
        y = self.op("Flatten", [y], axis=1)
        return self.op("Gemm", [y, self.weight((classes, channels), channels),
                                self.bias(classes)], transB=1)

    def model(self, inputs: list[onnx.ValueInfoProto], out_dims: list) -> onnx.ModelProto:
        """The model whose output ``y`` is the last node's output."""
        self.nodes[-1].output[0] = "y"
        graph = helper.make_graph(
            self.nodes, self.name, inputs,
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_dims)],
            initializer=self.inits)
        opset = [helper.make_opsetid("", OPSET)]
        model = helper.make_model(graph, opset_imports=opset,
                                  ir_version=helper.find_min_ir_version_for(opset),
                                  producer_name="backplane-zoo")
        return model


#: The quantisation step of every activation in ``qdq_mlp`` (int8, zero point 0).
QDQ_ACTIVATION_SCALE = 1 / 32


def _image(name: str = "x", size: int = 32) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 3, size, size])


def mlp(seed: int = 0, widths: tuple[int, ...] = (64, 128, 64, 10)) -> ZooModel:
    """x[batch,widths[0]] -> (Gemm -> Relu) per hidden width -> Gemm widths[-1] -> Softmax.

    The default is 64 -> 128 -> 64 -> 10, the suite's case."""
    n = _Net("mlp", seed)
    y = "x"
    for n_in, n_out in zip(widths[:-2], widths[1:-1]):
        y = n.op("Gemm", [y, n.weight((n_in, n_out), n_in), n.bias(n_out)])
        y = n.op("Relu", [y])
    n_in, n_out = widths[-2:]
    y = n.op("Gemm", [y, n.weight((n_in, n_out), n_in), n.bias(n_out)])
    n.op("Softmax", [y], axis=-1)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", widths[0]])
    return ZooModel("mlp", n.model([x], ["batch", n_out]),
                    [{"x": [1, widths[0]]}, {"x": [8, widths[0]]}])


def resnet(seed: int = 0, width: int = 16, size: int = 32) -> ZooModel:
    """A ResNet-style CNN: conv-bn-relu stem, an identity block, a strided block with a
    1x1 projection shortcut, global average pool and a Gemm head. ``width`` channels in the
    first stage, ``size`` x ``size`` images (the suite's cases use the defaults)."""
    n = _Net("resnet", seed)
    w = width
    stem = n.conv_bn("x", 3, w, 3)
    a = n.conv_bn(stem, w, w, 3)
    a = n.conv_bn(a, w, w, 3, act=None)
    a = n.op("Relu", [n.op("Add", [a, stem])])
    b = n.conv_bn(a, w, 2 * w, 3, stride=2)
    b = n.conv_bn(b, 2 * w, 2 * w, 3, act=None)
    shortcut = n.conv_bn(a, w, 2 * w, 1, stride=2, act=None)
    b = n.op("Relu", [n.op("Add", [b, shortcut])])
    n.head(b, 2 * w)
    return ZooModel("resnet", n.model([_image(size=size)], ["batch", 10]),
                    [{"x": [1, 3, size, size]}, {"x": [2, 3, size, size]}])


def depthwise_separable(seed: int = 0, width: int = 16, size: int = 32) -> ZooModel:
    """A MobileNet-style CNN: depthwise 3x3 and pointwise 1x1 convolutions with ReLU6.

    A strided stem of ``width`` channels, then two depthwise-separable blocks doubling the
    channels (the second strided), on ``size`` x ``size`` images (the suite uses the
    defaults)."""
    n = _Net("depthwise-separable", seed)
    w = width
    y = n.conv_bn("x", 3, w, 3, stride=2, act="Relu6")
    for c_in, c_out, stride in ((w, 2 * w, 1), (2 * w, 4 * w, 2)):
        y = n.conv_bn(y, c_in, c_in, 3, stride=stride, group=c_in, act="Relu6")
        y = n.conv_bn(y, c_in, c_out, 1, act="Relu6")
    y = n.head(y, 4 * w)
    return ZooModel("depthwise-separable", n.model([_image(size=size)], ["batch", 10]),
                    [{"x": [1, 3, size, size]}, {"x": [3, 3, size, size]}])


def transformer_encoder(seed: int = 0, dim: int = 32, heads: int = 4, hidden: int = 64,
                        layers: int = 1) -> ZooModel:
    """A stack of ``layers`` pre-norm transformer encoder blocks (the suite uses one), each:
    LayerNormalization, multi-head self-attention (MatMul Q/K/V, scaled Softmax), a Gelu
    MLP, and two residual additions."""
    n = _Net("transformer-encoder", seed)
    head_dim = dim // heads

    def layer_norm(x: str) -> str:
        return n.op("LayerNormalization", [x, n.const(np.ones(dim, np.float32), "ln_scale"),
                                           n.const(np.zeros(dim, np.float32), "ln_bias")],
                    axis=-1, epsilon=1e-5)

    def split_heads(x: str, perm: list[int]) -> str:
        y = n.op("Reshape", [x, n.const(np.array([0, 0, heads, head_dim], np.int64), "shape")])
        return n.op("Transpose", [y], perm=perm)

    def block(x: str) -> str:
        h = layer_norm(x)
        q = split_heads(n.linear(h, dim, dim), [0, 2, 1, 3])
        k = split_heads(n.linear(h, dim, dim), [0, 2, 3, 1])
        v = split_heads(n.linear(h, dim, dim), [0, 2, 1, 3])
        scores = n.op("Mul", [n.op("MatMul", [q, k]),
                              n.const(np.float32(1 / math.sqrt(head_dim)), "scale")])
        context = n.op("MatMul", [n.op("Softmax", [scores], axis=-1), v])
        context = n.op("Transpose", [context], perm=[0, 2, 1, 3])
        context = n.op("Reshape", [context, n.const(np.array([0, 0, dim], np.int64), "shape")])
        x1 = n.op("Add", [x, n.linear(context, dim, dim)])
        m = n.op("Gelu", [n.linear(layer_norm(x1), dim, hidden)])
        return n.op("Add", [x1, n.linear(m, hidden, dim)])

    y = "x"
    for _ in range(layers):
        y = block(y)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", dim])
    return ZooModel("transformer-encoder", n.model([x], ["batch", "seq", dim]),
                    [{"x": [1, 8, dim]}, {"x": [2, 16, dim]}])


def qdq_mlp(seed: int = 0, widths: tuple[int, ...] = (64, 128, 10)) -> ZooModel:
    """An int8 QDQ MLP: activations quantized per tensor, weights per output column,
    QuantizeLinear/DequantizeLinear pairs around each MatMul, Relu between layers.

    ``widths`` runs from the input to the output width; the default, 64 -> 128 -> 10, is
    the suite's case."""
    n = _Net("qdq-mlp", seed)

    def qdq(x: str, scale: float) -> str:
        s, zp = n.const(np.float32(scale), "x_scale"), n.const(np.int8(0), "x_zero_point")
        return n.op("DequantizeLinear", [n.op("QuantizeLinear", [x, s, zp]), s, zp])

    def qlinear(x: str, n_in: int, n_out: int) -> str:
        w = n.rng.standard_normal((n_in, n_out)) * math.sqrt(2.0 / n_in)
        scale = (np.abs(w).max(axis=0) / 127).astype(np.float32)
        wq = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
        w_deq = n.op("DequantizeLinear", [n.const(wq, "w_q"), n.const(scale, "w_scale"),
                                          n.const(np.zeros(n_out, np.int8), "w_zero_point")],
                     axis=1)
        return n.op("Add", [n.op("MatMul", [qdq(x, QDQ_ACTIVATION_SCALE), w_deq]),
                            n.bias(n_out)])

    y = "x"
    for n_in, n_out in zip(widths[:-2], widths[1:-1]):
        y = n.op("Relu", [qlinear(y, n_in, n_out)])
    qlinear(y, *widths[-2:])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", widths[0]])
    return ZooModel("qdq-mlp", n.model([x], ["batch", widths[-1]]),
                    [{"x": [1, widths[0]]}, {"x": [8, widths[0]]}])


def models(seed: int = 0) -> list[ZooModel]:
    """Every zoo model, weights drawn from ``seed``."""
    return [mlp(seed), resnet(seed), depthwise_separable(seed), transformer_encoder(seed),
            qdq_mlp(seed)]


def zoo_cases(seed: int) -> list[Case]:
    """One case per zoo model and input size, inputs standard normal from the case's rng."""
    out = []
    for zoo_model in models():
        op = f"model:{zoo_model.name}"
        for shapes in zoo_model.input_shapes:
            label = "+".join("x".join(str(d) for d in shape) for shape in shapes.values())
            case_id = f"{op}/float32/input-{label}"
            rng = case_rng(seed, case_id)
            inputs = {name: rng.standard_normal(shape).astype(np.float32)
                      for name, shape in shapes.items()}
            out.append(Case(id=case_id, op=op, dtype="float32", tier="mandatory",
                            model=zoo_model.model, inputs=inputs, tags=("model",), seed=seed,
                            tolerance_key=op))
    return out


# -- the scheduler zoo ---------------------------------------------------------------------

#: Batch sizes each scheduler-zoo model is given at.
SCHEDULER_BATCHES = (1, 32)

#: (family, size) -> (builder, its size arguments, the shape of one sample). "small" is the
#: suite's default of each family: 10 to 100 µs a run at batch 1 on ONNX Runtime. "large"
#: is sized so that a run at batch 32 takes about 5 to 20 ms on ONNX Runtime on an idle
#: 2-core AVX-512 machine (2026-11-30): large enough that the choice of device matters,
#: small enough that a benchmark can time every backend on every model.
SCHEDULER_SIZES: dict[tuple[str, str], tuple[Callable[..., ZooModel], dict[str, Any],
                                              list[int]]] = {
    ("mlp", "small"): (mlp, {}, [64]),
    ("mlp", "large"): (mlp, {"widths": (1024, 4096, 4096, 1024)}, [1024]),
    ("resnet", "small"): (resnet, {}, [3, 32, 32]),
    ("resnet", "large"): (resnet, {"width": 32, "size": 56}, [3, 56, 56]),
    ("depthwise-separable", "small"): (depthwise_separable, {}, [3, 32, 32]),
    ("depthwise-separable", "large"): (depthwise_separable, {"width": 64, "size": 112},
                                       [3, 112, 112]),
    ("transformer-encoder", "small"): (transformer_encoder, {}, [16, 32]),
    ("transformer-encoder", "large"): (transformer_encoder,
                                       {"dim": 256, "heads": 4, "hidden": 1024, "layers": 2},
                                       [64, 256]),
    ("qdq-mlp", "small"): (qdq_mlp, {}, [64]),
    ("qdq-mlp", "large"): (qdq_mlp, {"widths": (1024, 4096, 4096, 1024)}, [1024]),
}


class SchedulerModel(NamedTuple):
    """One scheduler-zoo entry: ``"<family>-<size>-b<batch>"``, the model (batch symbolic)
    and the concrete input shapes (input name -> shape) to run it at."""

    name: str
    model: onnx.ModelProto
    input_shapes: dict[str, list[int]]


def scheduler_zoo(seed: int = 0, sizes: Iterable[str] = ("small", "large")
                  ) -> list[SchedulerModel]:
    """Every family of ``SCHEDULER_SIZES`` at each of ``sizes`` and each batch of
    ``SCHEDULER_BATCHES``, weights drawn from ``seed``.

    Entries are named ``"<family>-<size>-b<batch>"`` (``"mlp-small-b1"``,
    ``"qdq-mlp-large-b32"``); the batches of one family and size share one ModelProto,
    whose batch dimension stays symbolic. The large models hold up to 100 MB of weights and
    take about two seconds to build.
    """
    sizes = list(sizes)
    unknown = set(sizes) - {size for _, size in SCHEDULER_SIZES}
    if unknown:
        raise ValueError(f"unknown size(s) {sorted(unknown)}; choose from 'small', 'large'")
    out = []
    for (family, size), (build, kwargs, sample) in SCHEDULER_SIZES.items():
        if size not in sizes:
            continue
        model = build(seed, **kwargs).model
        (name,) = (vi.name for vi in model.graph.input)
        for batch in SCHEDULER_BATCHES:
            out.append(SchedulerModel(f"{family}-{size}-b{batch}", model,
                                      {name: [batch, *sample]}))
    return out
