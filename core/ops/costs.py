"""What running one node costs, independent of the hardware: flops and bytes, by op family.

Every op belongs to a family, and a family has one cost function (some with a table of
per-element flops), so a new op needs no new code: :func:`family_of` reads the op's family
from :data:`FAMILIES`, and for an op not listed there guesses one from its schema (one
output typed like its first input: element-wise; anything else: data movement).

Families: ``elementwise``, ``contraction`` (matrix products, convolutions, recurrences,
attention), ``window`` (pooling, resampling), ``reduction``, ``normalisation``,
``movement``, ``gather`` (gather and scatter), ``control`` (If, Loop, Scan: the cost of
their bodies), ``sequence``, ``quantisation`` and ``metadata`` (ops that compute nothing at
run time: Constant, Identity, Shape, Size ...).

Cost conventions (all counts per element of the tensor named):

- a multiply-add counts 2 flops; an add, multiply, compare or select counts 1;
- a transcendental function (exp, log, erf, tanh, pow, sqrt) counts
  :data:`TRANSCENDENTAL_FLOPS`;
- unknown or symbolic dimensions count as 1, an unknown rank as a scalar, and an unknown
  element type as 0 bytes: a cost is always computed from what is known.

Importing this module imports neither numpy nor onnx.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from backplane.model.graph import Node, ValueInfo

#: Flops per element of a transcendental function (a polynomial or table evaluation).
TRANSCENDENTAL_FLOPS = 8

#: Bits per element by dtype name; types not listed count 0 (strings are variable-length).
ITEM_BITS = {
    "float32": 32, "float64": 64, "float16": 16, "bfloat16": 16, "int8": 8, "uint8": 8,
    "int16": 16, "uint16": 16, "int32": 32, "uint32": 32, "int64": 64, "uint64": 64,
    "bool": 8, "complex64": 64, "complex128": 128, "float8e4m3fn": 8, "float8e4m3fnuz": 8,
    "float8e5m2": 8, "float8e5m2fnuz": 8, "uint4": 4, "int4": 4, "float4e2m1": 4,
    "float8e8m0": 8, "uint2": 2, "int2": 2, "float6e2m3": 6, "float6e3m2": 6,
}


@dataclass(frozen=True)
class Cost:
    """What running one node costs, independent of the hardware.

    Attributes:
        flops: floating-point (or integer arithmetic) operations; a multiply-add counts 2.
        bytes: bytes read from the inputs plus bytes written to the outputs.
    """

    flops: int
    bytes: int

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(self.flops + other.flops, self.bytes + other.bytes)

    @property
    def intensity(self) -> float:
        """Arithmetic intensity, flops per byte (0 when no byte moves)."""
        return self.flops / self.bytes if self.bytes else 0.0

    def to_dict(self) -> dict[str, int]:
        """Plain data."""
        return {"flops": self.flops, "bytes": self.bytes}


# --------------------------------------------------------------------------- shapes, bytes


def dims(vi: "ValueInfo | None") -> tuple[int, ...] | None:
    """A value's dimensions with unknown and symbolic ones as 1; None if the rank is unknown."""
    if vi is None or vi.shape is None:
        return None
    return tuple(d if isinstance(d, int) and d >= 0 else 1 for d in vi.shape)


def elements(vi: "ValueInfo | None") -> int:
    """Element count of a value: 0 when absent, 1 for an unknown rank."""
    if vi is None:
        return 0
    return math.prod(dims(vi) or ())


def nbytes(vi: "ValueInfo | None") -> int:
    """Bytes a value occupies (sub-byte types packed, rounded up)."""
    if vi is None:
        return 0
    return (elements(vi) * ITEM_BITS.get(vi.dtype, 0) + 7) // 8


def output_bytes(node: "Node") -> int:
    """Bytes written to the node's outputs."""
    return sum(nbytes(vi) for vi in node.output_types)


def io_bytes(node: "Node") -> int:
    """Bytes read from every present input plus bytes written to the outputs."""
    return sum(nbytes(vi) for vi in node.input_types) + output_bytes(node)


def broadcast(shapes: Iterable[Sequence[int]]) -> tuple[int, ...]:
    """The numpy-broadcast shape of ``shapes`` (dimensions already made concrete)."""
    shapes = list(shapes)
    rank = max((len(s) for s in shapes), default=0)
    out = [1] * rank
    for s in shapes:
        for i, d in enumerate(reversed(s)):
            out[rank - 1 - i] = max(out[rank - 1 - i], d)
    return tuple(out)


def result_elements(node: "Node", index: int = 0) -> int:
    """Elements of output ``index``: its inferred shape where known, else the broadcast
    of the inputs' shapes (the rule of element-wise ops)."""
    out = node.output_types[index] if len(node.output_types) > index else None
    known = [d for d in (dims(vi) for vi in node.input_types) if d is not None]
    implied = broadcast(known)
    if out is None or out.shape is None:
        return math.prod(implied)
    if len(out.shape) == len(implied):
        return math.prod(d if isinstance(d, int) and d >= 0 else b
                         for d, b in zip(out.shape, implied))
    return elements(out)


def _input(node: "Node", index: int) -> "ValueInfo | None":
    if index < len(node.inputs) and node.inputs[index] and index < len(node.input_types):
        return node.input_types[index]
    return None


def _has_input(node: "Node", index: int) -> bool:
    return index < len(node.inputs) and bool(node.inputs[index])


# --------------------------------------------------------------------------- cost functions

_T = TRANSCENDENTAL_FLOPS
#: Flops per output element of element-wise ops; ops not listed count 1.
ELEMENTWISE_FLOPS: dict[str, int] = {
    "Add": 1, "Sub": 1, "Mul": 1, "Div": 1, "Abs": 1, "Neg": 1, "Relu": 1, "Where": 1,
    "Cast": 1, "LeakyRelu": 2, "Clip": 2, "HardSigmoid": 3, "HardSwish": 4, "PRelu": 2,
    "Pow": _T, "Sqrt": _T, "Exp": _T, "Log": _T, "Erf": _T, "Tanh": _T, "Sin": _T, "Cos": _T,
    "Tan": _T, "Asin": _T, "Acos": _T, "Atan": _T, "Sinh": _T, "Cosh": _T, "Asinh": _T,
    "Acosh": _T, "Atanh": _T, "Reciprocal": 1, "Softsign": 3, "Elu": _T + 2, "Selu": _T + 3,
    "Celu": _T + 3, "Softplus": 2 * _T, "Mish": 3 * _T + 1, "ThresholdedRelu": 1,
    "Sigmoid": _T + 2,  # 1 / (1 + exp(-x))
    "Gelu": _T + 4,     # 0.5 * x * (1 + erf(x / sqrt 2))
    "Swish": _T + 3, "SwiGLU": _T + 4, "FastGelu": _T + 6, "BiasGelu": _T + 5,
    "QuickGelu": _T + 3, "ScaledSiLU": _T + 4, "BiasAdd": 2,
}
#: Flops per input element of normalisations and softmax; ops not listed count 4.
NORMALISATION_FLOPS: dict[str, int] = {
    "BatchNormalization": 2,  # inference: one multiply-add with folded statistics
    "LayerNormalization": 8,  # mean, variance, normalise, scale and shift
    "Softmax": 4 + _T,        # max, subtract, exp, sum, divide
    "LogSoftmax": 4 + 2 * _T, "Hardmax": 2, "InstanceNormalization": 8,
    "GroupNormalization": 8, "MeanVarianceNormalization": 8, "RMSNormalization": 6,
    "LpNormalization": 4, "LRN": 6 + _T, "SkipLayerNormalization": 10,
    "SkipSimplifiedLayerNormalization": 8, "EmbedLayerNormalization": 10, "GroupNorm": 8,
    "SkipGroupNorm": 10, "BiasSoftmax": 5 + _T,
}
#: Flops per output element of Resize, by mode.
RESIZE_FLOPS = {"nearest": 0, "linear": 8, "cubic": 32}
#: Flops per element of quantisation: scale, round, shift, saturate; and back: shift, scale.
QUANTIZE_FLOPS = 4
DEQUANTIZE_FLOPS = 2
#: Flops per element of an element-wise op on quantized values (dequantize the inputs,
#: compute, quantize the result).
QLINEAR_FLOPS = 2 * DEQUANTIZE_FLOPS + 1 + QUANTIZE_FLOPS
#: Gates of the recurrent ops: four for LSTM, three for GRU, one for RNN.
RNN_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1, "AttnLSTM": 4, "DynamicQuantizeLSTM": 4}


def elementwise_cost(node: "Node") -> Cost:
    """Element-wise ops: a constant per element of the broadcast output."""
    per = ELEMENTWISE_FLOPS.get(node.op_type, 1)
    return Cost(per * result_elements(node), io_bytes(node))


def matmul_dims(a: Sequence[int] | None, b: Sequence[int] | None
                ) -> tuple[int, int, int, int] | None:
    """(batch, M, N, K) of ``a @ b`` with numpy matmul rules; None if a rank is unknown."""
    if a is None or b is None or not a or not b:
        return None
    k = a[-1]
    m = a[-2] if len(a) >= 2 else 1
    n = b[-1] if len(b) >= 2 else 1
    batch = math.prod(broadcast([a[:-2], b[:-2]]))
    return batch, m, n, k


def matmul_cost(node: "Node") -> Cost:
    """MatMul and MatMulInteger: 2*M*N*K per batch element."""
    found = matmul_dims(dims(_input(node, 0)), dims(_input(node, 1)))
    if found is None:  # ranks unknown: the output size, one product each
        return Cost(2 * result_elements(node), io_bytes(node))
    batch, m, n, k = found
    return Cost(2 * batch * m * n * k, io_bytes(node))


def gemm_cost(node: "Node") -> Cost:
    """Gemm: 2*M*N*K, plus M*N to add C when present."""
    a, b = dims(_input(node, 0)), dims(_input(node, 1))
    if a is None or b is None or len(a) != 2 or len(b) != 2:
        return Cost(2 * result_elements(node), io_bytes(node))
    m, k = (a[1], a[0]) if node.attributes.get("transA", 0) else a
    n = b[0] if node.attributes.get("transB", 0) else b[1]
    flops = 2 * m * n * k + (m * n if _has_input(node, 2) else 0)
    return Cost(flops, io_bytes(node))


def window_output_spatial(node: "Node", spatial_in: Sequence[int], kernel: Sequence[int]
                          ) -> list[int]:
    """Output spatial size of a Conv/pool window from its attributes (ceil_mode ignored)."""
    n = len(kernel)
    strides = list(node.attributes.get("strides") or [1] * n)
    dilations = list(node.attributes.get("dilations") or [1] * n)
    pads = list(node.attributes.get("pads") or [0] * (2 * n))
    auto_pad = node.attributes.get("auto_pad", "NOTSET")
    out = []
    for i in range(n):
        s = max(strides[i], 1)
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out.append(-(-spatial_in[i] // s))
            continue
        extent = dilations[i] * (kernel[i] - 1) + 1
        total = 0 if auto_pad == "VALID" else pads[i] + pads[i + n]
        out.append(max((spatial_in[i] + total - extent) // s + 1, 1))
    return out


def conv_cost(node: "Node") -> Cost:
    """Conv: 2 * output elements * (C_in/group) * prod(kernel), plus the bias add."""
    x, w = dims(_input(node, 0)), dims(_input(node, 1))
    if w is None or len(w) < 2:
        return Cost(2 * result_elements(node), io_bytes(node))
    kernel = list(node.attributes.get("kernel_shape") or w[2:])
    out_vi = node.output_types[0] if node.output_types else None
    if out_vi is not None and out_vi.shape is not None:
        out = result_elements(node)
    elif x is not None and len(x) == 2 + len(kernel):
        out = x[0] * w[0] * math.prod(window_output_spatial(node, x[2:], kernel))
    else:
        out = w[0]
    flops = 2 * out * w[1] * math.prod(kernel) + (out if _has_input(node, 2) else 0)
    return Cost(flops, io_bytes(node))


def conv_transpose_cost(node: "Node") -> Cost:
    """ConvTranspose: every input element scatters into (C_out/group) * prod(kernel)
    outputs, 2 flops each, plus the bias add.

    Counted from the input rather than the output: with strides above 1 most of the
    output positions receive fewer than prod(kernel) contributions.
    """
    x, w = dims(_input(node, 0)), dims(_input(node, 1))
    if w is None or len(w) < 2:
        return Cost(2 * result_elements(node), io_bytes(node))
    kernel = list(node.attributes.get("kernel_shape") or w[2:])
    inputs = math.prod(x) if x is not None else w[0]
    flops = 2 * inputs * w[1] * math.prod(kernel)
    if _has_input(node, 2):
        flops += result_elements(node)
    return Cost(flops, io_bytes(node))


def pool_cost(node: "Node") -> Cost:
    """MaxPool, AveragePool: one compare or add per output element per kernel position."""
    kernel = list(node.attributes.get("kernel_shape") or [])
    out_vi = node.output_types[0] if node.output_types else None
    x = dims(_input(node, 0))
    if (out_vi is None or out_vi.shape is None) and x is not None and len(x) == 2 + len(kernel):
        out = x[0] * x[1] * math.prod(window_output_spatial(node, x[2:], kernel))
    else:
        out = elements(out_vi)
    return Cost(out * math.prod(kernel), io_bytes(node))


def input_elements_cost(node: "Node") -> Cost:
    """Reductions and global pooling: one operation per input element."""
    return Cost(elements(_input(node, 0)), io_bytes(node))


def normalisation_cost(node: "Node") -> Cost:
    """BatchNormalization, LayerNormalization, Softmax: a few operations per element."""
    per = NORMALISATION_FLOPS.get(node.op_type, 4)
    return Cost(per * elements(_input(node, 0)), io_bytes(node))


def movement_cost(node: "Node") -> Cost:
    """Data movement (Reshape, Transpose, Concat, ...): no flops; bytes in and out."""
    return Cost(0, io_bytes(node))


def gather_cost(node: "Node") -> Cost:
    """Gather and Slice read only what they copy: the output's bytes, plus the indices."""
    small = sum(nbytes(vi) for vi in node.input_types[1:])
    return Cost(0, 2 * output_bytes(node) + small)


def shape_cost(node: "Node") -> Cost:
    """Shape reads metadata only: the bytes of the small int64 output."""
    return Cost(0, output_bytes(node))


def resize_cost(node: "Node") -> Cost:
    """Resize: interpolation work per output element, by mode."""
    per = RESIZE_FLOPS.get(str(node.attributes.get("mode", "nearest")), 8)
    return Cost(per * result_elements(node), io_bytes(node))


def quantize_cost(node: "Node") -> Cost:
    """QuantizeLinear: scale, round, shift and saturate each element."""
    return Cost(QUANTIZE_FLOPS * elements(_input(node, 0)), io_bytes(node))


def dequantize_cost(node: "Node") -> Cost:
    """DequantizeLinear: shift and scale each element."""
    return Cost(DEQUANTIZE_FLOPS * elements(_input(node, 0)), io_bytes(node))


def recurrent_cost(node: "Node") -> Cost:
    """LSTM, GRU, RNN: per step, per direction, the gates' two matrix products
    (``gates * hidden`` outputs over ``input + hidden`` terms) and their activations."""
    x, w = dims(_input(node, 0)), dims(_input(node, 1))
    if x is None or w is None or len(x) != 3 or len(w) != 3:
        return Cost(2 * result_elements(node), io_bytes(node))
    layout = int(node.attributes.get("layout", 0))
    seq, batch = (x[1], x[0]) if layout else (x[0], x[1])
    directions, gate_rows, inputs = w
    hidden = int(node.attributes.get("hidden_size") or gate_rows // RNN_GATES.get(
        node.op_type, 1))
    per_step = 2 * gate_rows * (inputs + hidden) + gate_rows * TRANSCENDENTAL_FLOPS
    return Cost(directions * seq * batch * per_step, io_bytes(node))


def attention_cost(node: "Node") -> Cost:
    """Attention (ONNX 23 and ``com.microsoft``): ``Q @ K^T``, softmax, ``@ V``, from the
    query's and key's sizes; 3-D inputs ``[batch, seq, hidden]`` or 4-D ``[batch, heads,
    seq, head_dim]``. A ``com.microsoft`` Attention taking the packed input and its weights
    adds the projection."""
    q, k = dims(_input(node, 0)), dims(_input(node, 1))
    if q is None or len(q) < 3:
        return Cost(2 * result_elements(node), io_bytes(node))
    batch, seq_q, width = math.prod(q[:-2]), q[-2], q[-1]
    seq_k = k[-2] if k is not None and len(k) == len(q) and node.domain != "com.microsoft" \
        else seq_q
    flops = 4 * batch * seq_q * seq_k * width + batch * seq_q * seq_k * (4 + TRANSCENDENTAL_FLOPS)
    if node.domain == "com.microsoft" and node.op_type in ("Attention", "QAttention") \
            and k is not None and len(k) == 2:  # input @ packed QKV weights first
        flops += 2 * batch * seq_q * k[0] * k[1]
    return Cost(flops, io_bytes(node))


def einsum_cost(node: "Node") -> Cost:
    """Einsum: one multiply-add per point of the space of every letter of the equation."""
    equation = str(node.attributes.get("equation", "")).replace(" ", "")
    terms = equation.split("->")[0].split(",")
    sizes: dict[str, int] = {}
    for term, vi in zip(terms, node.input_types):
        shape = dims(vi)
        letters = [c for c in term if c.isalpha()]
        if shape is None or "..." in term or len(letters) != len(shape):
            return Cost(2 * result_elements(node), io_bytes(node))
        for c, d in zip(letters, shape):
            sizes[c] = max(sizes.get(c, 1), d)
    return Cost(2 * math.prod(sizes.values()) if sizes else 0, io_bytes(node))


def contraction_cost(node: "Node") -> Cost:
    """A contraction without a formula of its own: a multiply-add per output element and
    per element of the first input's last axis (the inner dimension of a product)."""
    a = dims(_input(node, 0))
    inner = a[-1] if a else 1
    return Cost(2 * result_elements(node) * inner, io_bytes(node))


def window_cost(node: "Node") -> Cost:
    """Pooling-like windows: the kernel's size per output element (4 where unknown)."""
    if node.attributes.get("kernel_shape"):
        return pool_cost(node)
    return Cost(4 * result_elements(node), io_bytes(node))


def reduction_cost(node: "Node") -> Cost:
    """Reductions, arg-reductions, global pooling, cumulative sums: one operation per
    input element (TopK: log2 of k per element, a heap)."""
    if node.op_type == "TopK":
        k = max(2, elements(_input(node, 1)))
        return Cost(elements(_input(node, 0)) * math.ceil(math.log2(k)), io_bytes(node))
    return input_elements_cost(node)


def generation_cost(node: "Node") -> Cost:
    """Ops that write a tensor from a few scalars (ConstantOfShape, Range, random
    tensors, windows): the bytes written."""
    return Cost(result_elements(node), output_bytes(node))


def quantisation_cost(node: "Node") -> Cost:
    """Quantize, dequantize, and element-wise ops on quantized values, per element."""
    if node.op_type in ("QuantizeLinear", "QuantizeWithOrder", "QuantizeBFP"):
        return quantize_cost(node)
    if node.op_type in ("DequantizeLinear", "DequantizeWithOrder", "DequantizeBFP"):
        return dequantize_cost(node)
    if node.op_type == "DynamicQuantizeLinear":  # min/max, then quantize
        return Cost((QUANTIZE_FLOPS + 2) * elements(_input(node, 0)), io_bytes(node))
    return Cost(QLINEAR_FLOPS * result_elements(node), io_bytes(node))


def metadata_cost(node: "Node") -> Cost:
    """Ops that compute nothing at run time: the bytes they hand on."""
    return Cost(0, output_bytes(node))


def control_cost(node: "Node") -> Cost:
    """If, Loop, Scan: their inputs and outputs, plus every node of their bodies once
    (both branches of an If; one iteration of a Loop, whose trip count is unknown)."""
    total = Cost(0, io_bytes(node))
    for inner in node.body:
        total = total + cost_of(inner)
    return total


# --------------------------------------------------------------------------- families

#: The op families, in the order the docs list them.
FAMILY_NAMES = ("elementwise", "contraction", "window", "reduction", "normalisation",
                "movement", "gather", "control", "sequence", "quantisation", "metadata")


def _names(text: str) -> tuple[str, ...]:
    return tuple(text.split())


#: The family of every op listed, by op name (the same name in another domain, as
#: ``com.microsoft::Gelu``, is the same family). Ops not listed are given one from their
#: schema by :func:`family_of`.
FAMILIES: dict[str, str] = {
    **dict.fromkeys(_names("""
        Abs Acos Acosh Add And Asin Asinh Atan Atanh BitCast BitShift BitwiseAnd BitwiseNot
        BitwiseOr BitwiseXor Cast CastLike Ceil Celu Clip Cos Cosh Div Elu Equal Erf Exp
        Floor Gelu Greater GreaterOrEqual HardSigmoid HardSwish IsInf IsNaN LeakyRelu Less
        LessOrEqual Log Max Mean Min Mish Mod Mul Neg Not Or PRelu Pow Reciprocal Relu Round
        Selu Shrink Sigmoid Sign Sin Sinh Softplus Softsign Sqrt Sub Sum Swish SwiGLU Tan
        Tanh ThresholdedRelu Where Xor RegexFullMatch StringConcat StringNormalizer
        StringSplit Binarizer Scaler Imputer CastMap BiasAdd BiasGelu FastGelu QuickGelu
        BiasDropout BitmaskDropout BitmaskBiasDropout ScaledSiLU GatedAdd ComplexMul
        ComplexMulConj IsAllFinite MulInteger BiasSplitGelu RotaryEmbedding
        GemmaRotaryEmbedding MRotaryEmbedding"""), "elementwise"),
    **dict.fromkeys(_names("""
        MatMul Gemm Conv ConvTranspose ConvInteger MatMulInteger QLinearConv QLinearMatMul
        Einsum LSTM GRU RNN Attention DeformConv Det LinearAttention CausalConvWithState DFT
        STFT LinearClassifier LinearRegressor SVMClassifier SVMRegressor TreeEnsemble
        TreeEnsembleClassifier TreeEnsembleRegressor TfIdfVectorizer MultiHeadAttention
        GroupQueryAttention PackedAttention PackedMultiHeadAttention DecoderAttention
        DecoderMaskedMultiHeadAttention DecoderMaskedSelfAttention QAttention
        LongformerAttention SparseAttention PagedAttention SparsePagedAttention
        DynamicSparseAttention QOrderedAttention QOrderedLongformerAttention FusedConv
        FusedGemm FusedMatMul FusedMatMulActivation TransposeMatMul MatMulNBits MatMulBnb4
        MatMulFpQ4 MatMulInteger16 MatMulIntegerToFloat DynamicQuantizeMatMul QGemm
        QOrderedMatMul GemmFastGelu GemmFloat8 NhwcConv NhwcFusedConv
        ConvTransposeWithDynamicPads AttnLSTM DynamicQuantizeLSTM CDist Inverse Rfft Irfft
        MoE QMoE MatMulNBitsMlp MatMulNBitsQLoRA MatMulNBitsQkv MatMulPacked
        MatMulBlockQuantizedFp4Weight MatMulBlockQuantizedFp8Weight SparseToDenseMatMul
        WordConvEmbedding FusedConvRelu FusedMatMulBiasGelu"""), "contraction"),
    **dict.fromkeys(_names("""
        AveragePool MaxPool LpPool MaxRoiPool RoiAlign MaxUnpool Col2Im GridSample AffineGrid
        Resize Upsample NhwcMaxPool MaxpoolWithMask QLinearAveragePool CropAndResize"""),
        "window"),
    **dict.fromkeys(_names("""
        ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean ReduceMin
        ReduceProd ReduceSum ReduceSumSquare ArgMax ArgMin GlobalAveragePool GlobalLpPool
        GlobalMaxPool TopK CumSum CumProd NonMaxSuppression Unique SoftmaxCrossEntropyLoss
        NegativeLogLikelihoodLoss ReduceSumInteger QLinearReduceMean
        QLinearGlobalAveragePool"""), "reduction"),
    **dict.fromkeys(_names("""
        BatchNormalization LayerNormalization InstanceNormalization GroupNormalization LRN
        LpNormalization MeanVarianceNormalization RMSNormalization Softmax LogSoftmax Hardmax
        Normalizer SkipLayerNormalization SkipSimplifiedLayerNormalization
        EmbedLayerNormalization QEmbedLayerNormalization GroupNorm SkipGroupNorm BiasSoftmax
        QLinearSoftmax QOrderedLayerNormalization BranchwiseRMSNorm GatedRMSNorm
        RMSNormRotary"""), "normalisation"),
    **dict.fromkeys(_names("""
        Reshape Transpose Concat Split Squeeze Unsqueeze Flatten Expand Tile Pad DepthToSpace
        SpaceToDepth ReverseSequence Trilu CenterCropPad ConstantOfShape Range EyeLike
        RandomNormal RandomNormalLike RandomUniform RandomUniformLike Bernoulli Multinomial
        HannWindow HammingWindow BlackmanWindow MelWeightMatrix ImageDecoder ExpandDims
        UnfoldTensor RemovePadding RestorePadding QLinearConcat"""), "movement"),
    **dict.fromkeys(_names("""
        Gather GatherElements GatherND Scatter ScatterElements ScatterND Slice Compress
        OneHot NonZero TensorScatter ArrayFeatureExtractor LabelEncoder CategoryMapper
        OneHotEncoder DictVectorizer FeatureVectorizer ZipMap GatherBlockQuantized
        TorchEmbedding GatherPacked"""), "gather"),
    **dict.fromkeys(_names("If Loop Scan SequenceMap"), "control"),
    **dict.fromkeys(_names("""
        SequenceAt SequenceConstruct SequenceEmpty SequenceErase SequenceInsert
        SequenceLength SplitToSequence ConcatFromSequence"""), "sequence"),
    **dict.fromkeys(_names("""
        QuantizeLinear DequantizeLinear DynamicQuantizeLinear QLinearAdd QLinearMul
        QLinearLeakyRelu QLinearSigmoid QLinearWhere QuantizeWithOrder DequantizeWithOrder
        QuantizeBFP DequantizeBFP QOrderedGelu"""), "quantisation"),
    **dict.fromkeys(_names("""
        Constant Identity Shape Size Dropout Optional OptionalGetElement
        OptionalHasElement"""), "metadata"),
}

#: Ops that compute nothing at run time: they hand on a constant, their input, or
#: metadata of their input (Dropout, in inference, is its input). The planner folds them,
#: and the subgraphs of constants and shapes they feed, before planning.
COMPUTES_NOTHING = frozenset(op for op, family in FAMILIES.items() if family == "metadata")

#: The cost function of each op that has one of its own, else its family's.
_OWN: dict[str, Callable[["Node"], Cost]] = {
    **dict.fromkeys(_names("""MatMul MatMulInteger QLinearMatMul MatMulInteger16
        MatMulIntegerToFloat DynamicQuantizeMatMul TransposeMatMul FusedMatMul"""), matmul_cost),
    **dict.fromkeys(_names("Gemm FusedGemm QGemm"), gemm_cost),
    **dict.fromkeys(_names("Conv ConvInteger FusedConv QLinearConv DeformConv NhwcConv"),
                    conv_cost),
    **dict.fromkeys(_names("ConvTranspose ConvTransposeWithDynamicPads"), conv_transpose_cost),
    **dict.fromkeys(_names("LSTM GRU RNN AttnLSTM DynamicQuantizeLSTM"), recurrent_cost),
    **dict.fromkeys(_names("""Attention MultiHeadAttention GroupQueryAttention QAttention
        PackedAttention PackedMultiHeadAttention DecoderMaskedMultiHeadAttention SparseAttention
        PagedAttention LongformerAttention"""), attention_cost),
    **dict.fromkeys(_names("Resize Upsample"), resize_cost),
    **dict.fromkeys(_names("Shape Size"), shape_cost),
    **dict.fromkeys(_names("""ConstantOfShape Range EyeLike RandomNormal RandomUniform
        RandomNormalLike RandomUniformLike HannWindow HammingWindow BlackmanWindow
        MelWeightMatrix"""), generation_cost),
    "Einsum": einsum_cost, "Gather": gather_cost, "Slice": gather_cost,
}
#: The cost function of each family.
FAMILY_COSTS: dict[str, Callable[["Node"], Cost]] = {
    "elementwise": elementwise_cost, "contraction": contraction_cost, "window": window_cost,
    "reduction": reduction_cost, "normalisation": normalisation_cost,
    "movement": movement_cost, "gather": gather_cost, "control": control_cost,
    "sequence": movement_cost, "quantisation": quantisation_cost, "metadata": metadata_cost,
}


def family_of(op: str, schema: Any = None) -> str:
    """The family of ``op``: listed in :data:`FAMILIES`, else guessed from its ``schema``
    (a record of :mod:`backplane.ops.schemas`: one output typed like the first input is
    element-wise, anything else moves data)."""
    found = FAMILIES.get(op)
    if found is not None:
        return found
    if schema is not None and schema.get("inputs") and len(schema.get("outputs", ())) == 1:
        if schema["outputs"][0]["type"] == schema["inputs"][0]["type"]:
            return "elementwise"
    return "movement"


def cost_function(op: str, family: str) -> Callable[["Node"], Cost]:
    """The cost function of ``op`` of ``family``: the op's own, else the family's."""
    return _OWN.get(op) or FAMILY_COSTS[family]


def cost_of(node: "Node") -> Cost:
    """A node's cost by its op's family, without the registry (for nodes inside bodies);
    never raises: a malformed node is priced from its outputs' bytes."""
    try:
        return cost_function(node.op_type, family_of(node.op_type))(node)
    except Exception:  # a malformed node must not stop planning; price it as unknown
        return Cost(0, output_bytes(node))
