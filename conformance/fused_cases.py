"""Cases for the fused ops of the ``backplane`` domain.

Each case is a one-node model (the fused node, with its decomposition as a local function,
so that any backend and the oracle can run it). Its expected outputs do not come from that
decomposition: they are the oracle's float64 outputs of the equivalent *unfused* ONNX
model (Conv then Relu; MatMul, Add, Gelu; Transpose, MatMul, Mul, Add or Where, Softmax,
MatMul), so a decomposition that drifted from the ops it stands for fails here too.

Cases are in the mandatory tier: a backend declaring a fused op must pass them, and one
that does not declare it gets ``unsupported`` (or ``undeclared-pass``), as for any op.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from backplane.conformance.casedef import OPSET, Case, case_rng
from backplane.conformance.oracle import expected
from backplane.model.graph import DTYPE_CODES
from backplane.ops.fused import add_decompositions


DOMAIN = "backplane"
_FLOAT = {"float32": np.float32, "float16": np.float16}


def fused_cases(seed: int) -> list[Case]:
    """Every fused-op case, inputs drawn from the suite seed."""
    out: list[Case] = []
    for dt in ("float32", "float16"):
        out += _conv_relu_cases(seed, dt)
        out += _matmul_bias_gelu_cases(seed, dt)
        out += _attention_cases(seed, dt)
    return out


# --------------------------------------------------------------------------- builders

def _model(nodes: list[Any], inputs: dict[str, np.ndarray], inits: dict[str, np.ndarray],
           name: str, fused: bool) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info(n, DTYPE_CODES[str(v.dtype)], list(v.shape))
         for n, v in inputs.items()],
        [helper.make_tensor_value_info("Y", TensorProto.UNDEFINED, None)],
        initializer=[numpy_helper.from_array(v, n) for n, v in inits.items()])
    opsets = [helper.make_opsetid("", OPSET)] + ([helper.make_opsetid(DOMAIN, 1)] if fused
                                                  else [])
    return helper.make_model(graph, opset_imports=opsets,
                             ir_version=helper.find_min_ir_version_for(opsets[:1]))


def _case(seed: int, op: str, dt: str, label: str, tags: tuple[str, ...],
          make: Callable[[np.random.Generator], tuple]) -> Case:
    """``make(rng)`` -> (fused node, unfused nodes, inputs, initializers)."""
    case_id = f"{op}/{dt}/{label}"
    fused_node, plain_nodes, inputs, inits = make(case_rng(seed, case_id))
    plain = _model(plain_nodes, inputs, inits, case_id, fused=False)
    want = expected(plain, inputs)
    fused = add_decompositions(_model([fused_node], inputs, inits, case_id, fused=True))
    out = fused.graph.output[0]
    out.type.tensor_type.elem_type = DTYPE_CODES[dt]
    for d in want["Y"].shape:
        out.type.tensor_type.shape.dim.add().dim_value = d
    return Case(id=case_id, op=op, domain=DOMAIN, dtype=dt, tier="mandatory", model=fused,
                inputs=inputs, expected=want, tags=tags, seed=seed,
                tolerance_key=f"{DOMAIN}::{op}")


def _const(name: str, value: float, dt: str) -> Any:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(
        np.array(value, _FLOAT[dt]), name))


# --------------------------------------------------------------------------- FusedConvRelu

def _conv_relu_cases(seed: int, dt: str) -> list[Case]:
    variants = [  # label, x, w, attributes, bias, clip (min, max) or None, tags
        ("rank-4-k3-pads-1", (1, 3, 8, 8), (4, 3, 3, 3), {"pads": [1, 1, 1, 1]}, True,
         None, ("rank-4",)),
        ("rank-3-1d", (2, 2, 9), (3, 2, 3), {}, True, None, ("rank-3",)),
        ("attr-clip-0-6-strides-2", (1, 3, 9, 9), (4, 3, 3, 3),
         {"strides": [2, 2], "pads": [1, 1, 1, 1]}, True, (0.0, 6.0), ("rank-4", "attr")),
        ("attr-clip-min-only", (1, 2, 6, 6), (2, 2, 3, 3), {}, False, (-0.5, None),
         ("rank-4", "attr")),
        ("attr-depthwise", (1, 4, 7, 7), (4, 1, 3, 3), {"group": 4, "pads": [1, 1, 1, 1]},
         False, None, ("rank-4", "attr")),
        ("attr-dilations-2-asymmetric-pads", (1, 2, 9, 9), (3, 2, 3, 3),
         {"dilations": [2, 2], "pads": [0, 1, 2, 1]}, True, None, ("rank-4", "attr")),
        ("empty-batch-0", (0, 3, 8, 8), (4, 3, 3, 3), {"pads": [1, 1, 1, 1]}, True, None,
         ("rank-4", "empty")),
        ("large-1x16x64x64", (1, 16, 64, 64), (16, 16, 3, 3), {"pads": [1, 1, 1, 1]}, True,
         None, ("rank-4", "large")),
    ]
    out = []
    for label, xs, ws, attrs, bias, clip, tags in variants:
        def make(rng, xs=xs, ws=ws, attrs=attrs, bias=bias, clip=clip):
            ftype = _FLOAT[dt]
            fan_in = math.prod(ws[1:])
            inputs = {"X": rng.standard_normal(xs).astype(ftype)}
            inits = {"W": (rng.standard_normal(ws) * math.sqrt(2 / fan_in)).astype(ftype)}
            if bias:
                inits["B"] = rng.standard_normal(ws[0]).astype(ftype)
            conv_in = ["X", "W"] + (["B"] if bias else [])
            conv_attrs = {"kernel_shape": list(ws[2:]), **attrs}
            fused_attrs = dict(conv_attrs)
            if clip is not None:
                fused_attrs.update({k: v for k, v in zip(("clip_min", "clip_max"), clip)
                                    if v is not None})
            fused = helper.make_node("FusedConvRelu", conv_in, ["Y"], domain=DOMAIN,
                                     **fused_attrs)
            plain = [helper.make_node("Conv", conv_in, ["c"], **conv_attrs)]
            if clip is None:
                plain.append(helper.make_node("Relu", ["c"], ["Y"]))
            else:
                bounds = []
                for i, v in enumerate(clip):
                    if v is None:
                        bounds.append("")
                    else:
                        plain.append(_const(f"bound{i}", v, dt))
                        bounds.append(f"bound{i}")
                plain.append(helper.make_node("Clip", ["c", *bounds], ["Y"]))
            return fused, plain, inputs, inits
        out.append(_case(seed, "FusedConvRelu", dt, label, tags, make))
    return out


# --------------------------------------------------------------------------- FusedMatMulBiasGelu

def _matmul_bias_gelu_cases(seed: int, dt: str) -> list[Case]:
    variants = [  # label, a, k x n, approximate, tags
        ("rank-2-3x4x5", (3, 4), (4, 5), "none", ("rank-2",)),
        ("rank-3-batched", (2, 3, 8), (8, 6), "none", ("rank-3",)),
        ("attr-approximate-tanh", (4, 8), (8, 8), "tanh", ("rank-2", "attr")),
        ("size-1025-k", (2, 1025), (1025, 7), "none", ("rank-2", "size-1025")),
        ("empty-m-0", (0, 4), (4, 5), "none", ("rank-2", "empty")),
        ("large-256x512x512", (256, 512), (512, 512), "none", ("rank-2", "large")),
    ]
    out = []
    for label, a_shape, b_shape, approximate, tags in variants:
        def make(rng, a_shape=a_shape, b_shape=b_shape, approximate=approximate):
            ftype = _FLOAT[dt]
            inputs = {"A": rng.standard_normal(a_shape).astype(ftype)}
            inits = {"B": (rng.standard_normal(b_shape) / math.sqrt(b_shape[0])).astype(ftype),
                     "bias": rng.standard_normal(b_shape[1]).astype(ftype)}
            fused = helper.make_node("FusedMatMulBiasGelu", ["A", "B", "bias"], ["Y"],
                                     domain=DOMAIN, approximate=approximate)
            plain = [helper.make_node("MatMul", ["A", "B"], ["m"]),
                     helper.make_node("Add", ["m", "bias"], ["s"]),
                     helper.make_node("Gelu", ["s"], ["Y"], approximate=approximate)]
            return fused, plain, inputs, inits
        out.append(_case(seed, "FusedMatMulBiasGelu", dt, label, tags, make))
    return out


# --------------------------------------------------------------------------- Attention

def _attention_cases(seed: int, dt: str) -> list[Case]:
    variants = [  # label, q, k/v (batch, heads, seq, dim), mask shape or None, mask kind, tags
        ("rank-4-no-mask", (1, 2, 5, 8), (1, 2, 5, 8), None, None, ("rank-4",)),
        ("attr-additive-mask", (2, 2, 4, 8), (2, 2, 6, 8), (1, 1, 4, 6), "additive",
         ("rank-4", "attr", "broadcast")),
        ("attr-bool-mask", (1, 3, 4, 8), (1, 3, 4, 8), (4, 4), "bool",
         ("rank-4", "attr", "broadcast")),
        ("attr-scale", (1, 1, 3, 4), (1, 1, 3, 4), None, None, ("rank-4", "attr")),
        ("size-127-seq", (1, 2, 127, 16), (1, 2, 127, 16), None, None, ("rank-4", "size-127")),
        ("large-1x8x128x64", (1, 8, 128, 64), (1, 8, 128, 64), (1, 1, 128, 128), "additive",
         ("rank-4", "large")),
    ]
    out = []
    for label, qs, ks, ms, mkind, tags in variants:
        def make(rng, qs=qs, ks=ks, ms=ms, mkind=mkind, label=label):
            ftype = _FLOAT[dt]
            inputs = {"Q": rng.standard_normal(qs).astype(ftype),
                      "K": rng.standard_normal(ks).astype(ftype),
                      "V": rng.standard_normal(ks).astype(ftype)}
            scale = 0.3 if label == "attr-scale" else 1 / math.sqrt(qs[-1])
            if mkind == "additive":
                logits = rng.standard_normal(ms)
                hidden = rng.random(ms) < 0.3
                hidden[..., 0] = False  # never a whole row
                inputs["mask"] = np.where(hidden, -np.inf, logits).astype(ftype)
            elif mkind == "bool":
                keep = rng.random(ms) < 0.7
                keep[..., 0] = True
                inputs["mask"] = keep
            names = ["Q", "K", "V"] + (["mask"] if mkind else [])
            fused = helper.make_node("Attention", names, ["Y"], domain=DOMAIN, scale=scale)
            plain = [helper.make_node("Transpose", ["K"], ["kt"], perm=[0, 1, 3, 2]),
                     helper.make_node("MatMul", ["Q", "kt"], ["qk"]),
                     _const("scale", scale, dt),
                     helper.make_node("Mul", ["qk", "scale"], ["scores"])]
            last = "scores"
            if mkind == "additive":
                plain.append(helper.make_node("Add", ["scores", "mask"], ["masked"]))
                last = "masked"
            elif mkind == "bool":
                plain += [_const("neg_inf", -np.inf, dt),
                          helper.make_node("Where", ["mask", "scores", "neg_inf"], ["masked"])]
                last = "masked"
            plain += [helper.make_node("Softmax", [last], ["p"], axis=-1),
                      helper.make_node("MatMul", ["p", "V"], ["Y"])]
            return fused, plain, inputs, {}
        out.append(_case(seed, "Attention", dt, label, tags, make))
    return out
