"""The custom CUDA kernels of the kernel path: kernels/cuda/*.cu, compiled by NVRTC, launched
with CuPy on torch's current stream, taking and returning torch tensors (no copies: the
kernels get the tensors' device pointers).

:func:`custom_kernels` gives op key -> kernel with the ONNX signature ``fn(*inputs,
**attributes)``, for ``MatMul``, ``Softmax``, ``LayerNormalization`` and the fused ops
``backplane::FusedConvRelu``, ``backplane::FusedMatMulBiasGelu``, ``backplane::Attention``.
Each kernel takes the calls within its limits and hands every other call to
``fallback(key)``, the torch op table's kernel: tensors not on a CUDA device, dtypes other
than float32 and float16, and the shapes each ``plan_*`` function below refuses (it returns
the reason as a string). The planning functions are pure Python over shapes and dtypes,
so the dispatch logic is tested on machines without a GPU.

Limits, kernel by kernel (everything else falls back):

- MatMul: float32/float16, numpy broadcasting of the batch dimensions as long as they
  collapse to two levels of strides (any two operands' batch shapes do unless both
  broadcast on interleaved axes), at most 65,535 matrices, M, N, K below 2^31. float16
  with K and N multiples of 8 and 16-byte aligned data runs on tensor cores; the rest on
  SIMT tiles.
- FusedMatMulBiasGelu: MatMul's limits, 2-D or more operands, a bias that broadcasts to
  the product without enlarging it, approximate ``none`` or ``tanh``.
- Softmax: float32/float16, any axis, rows below 2^31 elements.
- LayerNormalization: float32/float16, stash_type 1, scale and bias of x's dtype that
  broadcast to the normalised shape; returns (Y, Mean, InvStdDev).
- FusedConvRelu: 1-D and 2-D convolutions (rank 3 or 4), any groups, strides, pads,
  dilations, bias, Relu or Clip; no ``auto_pad`` (the fusion pass resolves it). 1x1
  convolutions of stride 1 without padding run as batched MatMuls (tensor cores in float16);
  groups of fewer than 8 output channels (depthwise) as direct convolutions; the rest as
  implicit GEMMs on SIMT tiles (no tensor cores).
- Attention: float32/float16 Q, K, V, head dims up to 128; a float32, float16 or boolean
  mask that broadcasts to [batch..., Sq, Sk]; float16 with head dim 64 or 128 (Q, K and V
  alike, 16-byte aligned) on tensor cores, the rest on SIMT. No zero-sized dimension.

The tensor-core kernels use sm_80 instructions (mma.sync, ldmatrix, cp.async): GPUs of
compute capability 8.0 and newer. Older GPUs get the SIMT kernels for every call.

Each source is compiled on the first call that needs it (a few seconds; then read from
the cache), or all at once by :func:`prepare`. A kernel that fails to compile or launch
logs one warning and hands its calls to the fallback from then on (``strict=True``
raises instead).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import nvrtc

log = logging.getLogger("backplane")

#: The op keys that have custom kernels.
OPS = ("MatMul", "Softmax", "LayerNormalization", "backplane::FusedConvRelu",
       "backplane::FusedMatMulBiasGelu", "backplane::Attention")
#: The op keys the kernel path should use custom kernels for by default. The fused ops
#: with a tensor-core kernel (MatMul+Bias+Gelu, Attention) save the intermediate tensors'
#: round trips through memory and the launches between them; Softmax and
#: LayerNormalization are single-pass row kernels that torch runs as one kernel too, but
#: with float32 statistics for float16 data in one launch each. Not MatMul: cuBLAS is the
#: bar there, and on Hopper it uses wgmma instructions that a portable mma.sync kernel
#: cannot reach (benchmarks/bench_gpu.py measures the gap). Not FusedConvRelu: cuDNN's
#: tensor-core convolutions (TF32 for float32 by default) outrun a SIMT implicit GEMM by
#: more than the saved Relu pass is worth, except for 1x1 convolutions in float16.
DEFAULT_CUSTOM = ("Softmax", "LayerNormalization", "backplane::FusedMatMulBiasGelu",
                  "backplane::Attention")

#: Largest gridDim.y / gridDim.z.
GRID_YZ_MAX = 65535
INT32_MAX = 2 ** 31 - 1
#: Activation codes of common.cuh.
ACT = {"none": 0, "relu": 1, "clip": 2, "gelu": 3, "gelu_tanh": 4}
#: Mask kinds of attention.cu.
MASK_KIND = {None: 0, "float32": 1, "float16": 2, "bool": 3}
SUFFIX = {"float32": "f32", "float16": "f16"}
FLOATS = frozenset(SUFFIX)
#: Every kernel the host wrappers launch, by source file of kernels/cuda.
KERNELS = {
    "matmul.cu": ("matmul_tc_f16", "matmul_simt128_f32", "matmul_simt32_f32",
                  "matmul_simt128_f16", "matmul_simt32_f16"),
    "softmax.cu": tuple(f"softmax_{k}_{s}" for k in ("warp", "block", "cols")
                        for s in ("f32", "f16")),
    "layernorm.cu": tuple(f"layernorm_{k}_{s}" for k in ("warp", "block")
                          for s in ("f32", "f16")),
    "conv.cu": tuple(f"conv_{k}_{s}" for k in ("igemm128", "igemm64", "igemm32", "direct")
                     for s in ("f32", "f16")),
    "attention.cu": ("attention_simt_f32", "attention_simt_f16", "attention_tc_f16_d64",
                     "attention_tc_f16_d128"),
}

# --------------------------------------------------------------------------- shapes


def prod(values: Sequence[int]) -> int:
    """The product of ``values`` (1 for none)."""
    out = 1
    for v in values:
        out *= int(v)
    return out


def broadcast_shape(*shapes: Sequence[int]) -> tuple[int, ...] | None:
    """numpy's broadcast of ``shapes``, or None when they do not broadcast."""
    rank = max((len(s) for s in shapes), default=0)
    out = []
    for i in range(rank):
        sizes = {s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0}
        sizes.discard(1)
        if len(sizes) > 1:
            return None
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


def dense_strides(shape: Sequence[int], item: int = 1) -> tuple[int, ...]:
    """Row-major strides of ``shape``, in units of ``item`` elements."""
    out, step = [], item
    for n in reversed(shape):
        out.append(step)
        step *= int(n)
    return tuple(reversed(out))


def broadcast_strides(shape: Sequence[int], out_shape: Sequence[int],
                      item: int = 1) -> tuple[int, ...]:
    """Strides that read a dense ``shape`` (each index worth ``item`` elements) as
    ``out_shape``, numpy-style (right-aligned; 0 on broadcast axes)."""
    lead = len(out_shape) - len(shape)
    if lead < 0:
        raise ValueError(f"{tuple(shape)} has more dimensions than {tuple(out_shape)}")
    own = dense_strides(shape, item)
    return tuple(0 if i < lead or shape[i - lead] == 1 else own[i - lead]
                 for i in range(len(out_shape)))


@dataclass(frozen=True)
class Batch:
    """A batch of matrices as two levels: index z in [0, n0*n1), split (z // n1, z % n1),
    operand i's matrix at ``z0*strides[i][0] + z1*strides[i][1]`` elements."""

    n0: int
    n1: int
    strides: tuple[tuple[int, int], ...]

    @property
    def count(self) -> int:
        return self.n0 * self.n1

    def offset(self, z: int, operand: int) -> int:
        """Element offset of operand ``operand``'s matrix for batch index ``z``."""
        s0, s1 = self.strides[operand]
        return (z // self.n1) * s0 + (z % self.n1) * s1


def collapse_batch(out_batch: Sequence[int],
                   strides: Sequence[Sequence[int]]) -> Batch | None:
    """The batch dims ``out_batch`` with each operand's strides over them, collapsed into
    two levels (:class:`Batch`); None when more than two remain (operands broadcasting
    on interleaved axes, e.g. [B, 1, H] against [1, S, H])."""
    dims: list[tuple[int, list[int]]] = []
    for i, n in enumerate(out_batch):
        if n == 1:
            continue
        st = [int(s[i]) for s in strides]
        if dims and all(p == s * n for p, s in zip(dims[-1][1], st)):
            dims[-1] = (dims[-1][0] * n, st)
        else:
            dims.append((int(n), st))
    if len(dims) > 2:
        return None
    while len(dims) < 2:
        dims.insert(0, (1, [0] * len(strides)))
    (n0, s0), (n1, s1) = dims
    return Batch(n0, n1, tuple(zip(s0, s1)))


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _norm_axis(axis: int, rank: int) -> int | None:
    axis = int(axis)
    if axis < 0:
        axis += rank
    return axis if 0 <= axis < rank else None


def _name(dtype: Any) -> str | None:
    """'float32' for torch.float32, numpy's float32 or the string; None for None."""
    if dtype is None:
        return None
    text = str(dtype)
    return text.removeprefix("torch.")

# --------------------------------------------------------------------------- launches


@dataclass(frozen=True)
class Launch:
    """One kernel launch: source file, kernel, grid, block, and the arguments as
    (type code, value) pairs: ``p`` pointer (a tensor name, or None for null), ``i``
    int32, ``q`` int64, ``f`` float32."""

    source: str
    kernel: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    args: tuple[tuple[str, Any], ...]


def pack_args(args: Sequence[tuple[str, Any]], pointers: dict[str, int]) -> list[Any]:
    """Launch arguments as the numpy scalars CuPy passes by value: pointers as uint64
    (0 for None), ``i`` as int32, ``q`` as int64, ``f`` as float32.

    Raises:
        OverflowError: an int32 argument out of range (the plan should have refused it).
    """
    import numpy as np

    out: list[Any] = []
    for code, value in args:
        if code == "p":
            out.append(np.uint64(pointers[value] if value is not None else 0))
        elif code == "i":
            if not -2 ** 31 <= int(value) <= INT32_MAX:
                raise OverflowError(f"kernel argument {value} does not fit int32")
            out.append(np.int32(value))
        elif code == "q":
            out.append(np.int64(value))
        elif code == "f":
            out.append(np.float32(value))
        else:
            raise ValueError(f"unknown argument code {code!r}")
    return out


@dataclass(frozen=True)
class Plan:
    """How a call runs: the launches (in order), the output shapes and dtypes, and the
    inputs the host must expand to dense tensors first (name -> shape)."""

    launches: tuple[Launch, ...]
    outputs: tuple[tuple[str, tuple[int, ...], str], ...]
    """(tensor name, shape, dtype) of each output, allocated before the launches."""
    result: tuple[str, ...]
    """The tensors returned, in order, with ``view`` shapes applied."""
    expand: dict[str, tuple[int, ...]] = field(default_factory=dict)
    views: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Output name -> the shape it is returned as (MatMul's 1-D operands)."""

# --------------------------------------------------------------------------- MatMul


def _matmul_launch(dtype: str, a: str, b: str, c: str, bias: str | None, M: int, N: int,
                   K: int, batch: Batch, bias_strides: tuple[int, int], act: int,
                   lo: float, hi: float, tensor_cores: bool, sm_count: int) -> Launch:
    if tensor_cores:
        kernel, bm, bn, threads = "matmul_tc_f16", 128, 128, 256
    elif _cdiv(M, 128) * _cdiv(N, 128) * batch.count >= 2 * sm_count:
        kernel, bm, bn, threads = f"matmul_simt128_{SUFFIX[dtype]}", 128, 128, 256
    else:
        kernel, bm, bn, threads = f"matmul_simt32_{SUFFIX[dtype]}", 32, 64, 128
    (sa0, sa1), (sb0, sb1) = batch.strides[0], batch.strides[1]
    sc0, sc1 = batch.strides[2] if len(batch.strides) > 2 else (0, 0)
    args = (("p", a), ("p", b), ("p", c), ("p", bias), ("i", M), ("i", N), ("i", K),
            ("i", batch.n1), ("q", sa0), ("q", sa1), ("q", sb0), ("q", sb1), ("q", sc0),
            ("q", sc1), ("q", bias_strides[0]), ("q", bias_strides[1]), ("i", act),
            ("f", lo), ("f", hi))
    return Launch("matmul.cu", kernel, (_cdiv(N, bn), _cdiv(M, bm), batch.count),
                  (threads, 1, 1), args)


def plan_matmul(a_shape: Sequence[int], b_shape: Sequence[int], dtype: Any, *,
                bias_shape: Sequence[int] | None = None, act: int = 0, aligned: bool = True,
                sm_count: int = 132, tensor_cores: bool = True) -> Plan | str:
    """MatMul of ``a_shape`` by ``b_shape`` (numpy semantics), optionally ``act(. + bias)``;
    or why not. ``aligned``: every operand's data is 16-byte aligned. ``sm_count`` picks
    the tile size (enough tiles to fill the multiprocessors twice, else smaller ones).
    ``tensor_cores``: the GPU has sm_80's (compute capability 8.0 or newer)."""
    dtype = _name(dtype)
    if dtype not in FLOATS:
        return f"dtype {dtype} (the kernels take float32 and float16)"
    if len(a_shape) < 1 or len(b_shape) < 1:
        return "a 0-D operand"
    if bias_shape is not None and (len(a_shape) < 2 or len(b_shape) < 2):
        return "a 1-D operand with a bias (the fused kernel takes matrices)"
    a2 = (1, *a_shape) if len(a_shape) == 1 else tuple(a_shape)
    b2 = (*b_shape, 1) if len(b_shape) == 1 else tuple(b_shape)
    M, K = a2[-2:]
    K2, N = b2[-2:]
    if K != K2:
        return f"inner dimensions differ ({K} and {K2})"
    out_batch = broadcast_shape(a2[:-2], b2[:-2])
    if out_batch is None:
        return f"batch dimensions {a2[:-2]} and {b2[:-2]} do not broadcast"
    full = (*out_batch, M, N)
    operands = [broadcast_strides(a2[:-2], out_batch, M * K),
                broadcast_strides(b2[:-2], out_batch, K * N)]
    bias_mn = (0, 0)
    if bias_shape is not None:
        if broadcast_shape(full, bias_shape) != full:
            return f"bias {tuple(bias_shape)} enlarges the product {full}"
        bias_full = broadcast_strides(bias_shape, full)
        operands.append(bias_full[:-2])
        bias_mn = bias_full[-2], bias_full[-1]
    if 0 in full or K == 0:
        return "a zero-sized dimension"
    if max(M, N, K) > INT32_MAX:
        return "a matrix dimension of 2^31 or more"
    batch = collapse_batch(out_batch, operands)
    if batch is None:
        return f"batch dimensions {a2[:-2]} and {b2[:-2]} broadcast on interleaved axes"
    if batch.count > GRID_YZ_MAX:
        return f"{batch.count} matrices (at most {GRID_YZ_MAX})"
    tc = tensor_cores and dtype == "float16" and aligned and K % 8 == 0 and N % 8 == 0
    if _cdiv(M, 128 if tc else 32) > GRID_YZ_MAX:
        return f"M = {M} needs more than {GRID_YZ_MAX} row tiles"
    launch = _matmul_launch(dtype, "a", "b", "y", "bias" if bias_shape is not None else None,
                            M, N, K, batch, bias_mn, act, 0.0, 0.0, tc, sm_count)
    final = (*out_batch, *((M,) if len(a_shape) > 1 else ()), *((N,) if len(b_shape) > 1 else ()))
    views = {"y": final} if final != full else {}
    return Plan((launch,), (("y", full, dtype),), ("y",), views=views)

# --------------------------------------------------------------------------- Softmax


def plan_softmax(shape: Sequence[int], axis: int, dtype: Any) -> Plan | str:
    """Softmax along ``axis`` (opset 13) of a dense ``shape``; or why not."""
    dtype = _name(dtype)
    if dtype not in FLOATS:
        return f"dtype {dtype} (the kernels take float32 and float16)"
    ax = _norm_axis(axis, len(shape))
    if ax is None:
        return f"axis {axis} out of range for rank {len(shape)}"
    if 0 in shape:
        return "a zero-sized dimension"
    outer, L, inner = prod(shape[:ax]), int(shape[ax]), prod(shape[ax + 1:])
    if L > INT32_MAX:
        return "a softmax axis of 2^31 or more"
    sfx = SUFFIX[dtype]
    if inner == 1 and L <= 1024:
        launch = Launch("softmax.cu", f"softmax_warp_{sfx}", (_cdiv(outer, 8), 1, 1),
                        (256, 1, 1), (("p", "x"), ("p", "y"), ("q", outer), ("i", L)))
    elif inner == 1:
        if outer > INT32_MAX:
            return "2^31 or more rows"
        launch = Launch("softmax.cu", f"softmax_block_{sfx}", (outer, 1, 1), (256, 1, 1),
                        (("p", "x"), ("p", "y"), ("i", L)))
    else:
        if _cdiv(outer * inner, 256) > INT32_MAX:
            return "too many columns"
        launch = Launch("softmax.cu", f"softmax_cols_{sfx}", (_cdiv(outer * inner, 256), 1, 1),
                        (256, 1, 1), (("p", "x"), ("p", "y"), ("q", outer), ("i", L),
                                      ("q", inner)))
    return Plan((launch,), (("y", tuple(shape), dtype),), ("y",))

# --------------------------------------------------------------------------- LayerNorm


def _param_fits(shape: Sequence[int], norm: Sequence[int]) -> bool:
    """Whether a scale/bias of ``shape`` broadcasts to the normalised shape ``norm``
    (without reaching into the leading, non-normalised axes)."""
    if len(shape) > len(norm) and any(d != 1 for d in shape[:len(shape) - len(norm)]):
        return False
    tail = tuple(shape[max(0, len(shape) - len(norm)):])
    return broadcast_shape(tail, norm) == tuple(norm)


def plan_layernorm(shape: Sequence[int], dtype: Any, scale_shape: Sequence[int],
                   scale_dtype: Any, bias_shape: Sequence[int] | None = None,
                   bias_dtype: Any = None, axis: int = -1, epsilon: float = 1e-5,
                   stash_type: int = 1) -> Plan | str:
    """LayerNormalization of a dense ``shape`` over axes ``axis``..; or why not."""
    dtype = _name(dtype)
    if dtype not in FLOATS:
        return f"dtype {dtype} (the kernels take float32 and float16)"
    if int(stash_type) != 1:
        return f"stash_type {stash_type} (the kernels keep statistics in float32, type 1)"
    ax = _norm_axis(axis, len(shape))
    if ax is None:
        return f"axis {axis} out of range for rank {len(shape)}"
    if 0 in shape:
        return "a zero-sized dimension"
    norm = tuple(shape[ax:])
    rows, N = prod(shape[:ax]), prod(norm)
    expand = {}
    for name, pshape, pdtype in (("scale", scale_shape, scale_dtype),
                                 ("bias", bias_shape, bias_dtype)):
        if pshape is None:
            continue
        if _name(pdtype) != dtype:
            return f"{name} is {_name(pdtype)}, X is {dtype}"
        if not _param_fits(pshape, norm):
            return f"{name} {tuple(pshape)} does not broadcast to the normalised shape {norm}"
        if prod(pshape) != N:
            expand[name] = norm
    if N > INT32_MAX or rows > INT32_MAX:
        return "2^31 or more rows or elements per row"
    sfx = SUFFIX[dtype]
    bias = "bias" if bias_shape is not None else None
    common = (("p", "x"), ("p", "scale"), ("p", bias), ("p", "y"), ("p", "mean"),
              ("p", "inv_std"))
    if N <= 1024:
        launch = Launch("layernorm.cu", f"layernorm_warp_{sfx}", (_cdiv(rows, 8), 1, 1),
                        (256, 1, 1), (*common, ("q", rows), ("i", N), ("f", epsilon)))
    else:
        launch = Launch("layernorm.cu", f"layernorm_block_{sfx}", (rows, 1, 1), (256, 1, 1),
                        (*common, ("i", N), ("f", epsilon)))
    stats = (*shape[:ax], *([1] * (len(shape) - ax)))
    return Plan((launch,), (("y", tuple(shape), dtype), ("mean", stats, "float32"),
                            ("inv_std", stats, "float32")), ("y", "mean", "inv_std"),
                expand=expand)

# --------------------------------------------------------------------------- FusedConvRelu


def conv_activation(attrs: dict[str, Any]) -> tuple[int, float, float]:
    """(ACT code, lo, hi) of a FusedConvRelu: Relu, or Clip when a bound is set (an unset
    bound unbounded)."""
    lo, hi = attrs.get("clip_min"), attrs.get("clip_max")
    if lo is None and hi is None:
        return ACT["relu"], 0.0, 0.0
    return (ACT["clip"], -math.inf if lo is None else float(lo),
            math.inf if hi is None else float(hi))


def plan_conv(x_shape: Sequence[int], w_shape: Sequence[int], dtype: Any,
              attrs: dict[str, Any], *, w_dtype: Any = None, bias: bool = False,
              bias_shape: Sequence[int] | None = None, bias_dtype: Any = None,
              aligned: bool = True, sm_count: int = 132, tensor_cores: bool = True
              ) -> Plan | str:
    """FusedConvRelu of dense X and W (NCHW, or NCL viewed as NC1L); or why not."""
    dtype = _name(dtype)
    if dtype not in FLOATS:
        return f"dtype {dtype} (the kernels take float32 and float16)"
    if _name(w_dtype or dtype) != dtype or (bias and _name(bias_dtype or dtype) != dtype):
        return "W or B has another dtype than X"
    unknown = set(attrs) - {"pads", "strides", "dilations", "group", "kernel_shape",
                            "clip_min", "clip_max", "auto_pad"}
    if unknown:
        return f"attributes {sorted(unknown)}"
    if attrs.get("auto_pad", "NOTSET") != "NOTSET":
        return f"auto_pad {attrs['auto_pad']} (resolve it into pads first)"
    rank = len(x_shape)
    if rank not in (3, 4) or len(w_shape) != rank:
        return f"rank {rank} (the kernels take 1-D and 2-D convolutions)"
    sp = rank - 2
    kernel = list(attrs.get("kernel_shape") or w_shape[2:])
    if tuple(kernel) != tuple(w_shape[2:]):
        return f"kernel_shape {kernel} differs from W's {tuple(w_shape[2:])}"
    strides = list(attrs.get("strides") or [1] * sp)
    dilations = list(attrs.get("dilations") or [1] * sp)
    pads = list(attrs.get("pads") or [0] * 2 * sp)
    if len(strides) != sp or len(dilations) != sp or len(pads) != 2 * sp:
        return "strides, dilations or pads of the wrong length"
    if min(strides + dilations) < 1 or min(pads) < 0:
        return "non-positive strides or dilations, or negative pads"
    G = int(attrs.get("group", 1))
    Nb, C = int(x_shape[0]), int(x_shape[1])
    Cout, Cg = int(w_shape[0]), int(w_shape[1])
    if G < 1 or C % G or Cout % G or Cg != C // G:
        return f"group {G} does not divide channels {C} -> {Cout} with W {tuple(w_shape)}"
    if bias and tuple(bias_shape or (Cout,)) != (Cout,):
        return f"B of shape {tuple(bias_shape or ())} (expected ({Cout},))"
    if sp == 1:  # NCL as NC1L
        spatial, kernel = [1, int(x_shape[2])], [1, kernel[0]]
        strides, dilations = [1, strides[0]], [1, dilations[0]]
        pads = [0, pads[0], 0, pads[1]]
    else:
        spatial = [int(x_shape[2]), int(x_shape[3])]
    H, Wd = spatial
    KH, KW = kernel
    out = [(size + pads[i] + pads[i + 2] - ((k - 1) * d + 1)) // s + 1
           for i, (size, k, s, d) in enumerate(zip(spatial, kernel, strides, dilations))]
    OH, OW = out
    if min(Nb, C, Cout, OH, OW, KH, KW) < 1:
        return "a zero-sized dimension or output"
    y_shape = (Nb, Cout, *(out if sp == 2 else out[1:]))
    Mg = Cout // G
    act, lo, hi = conv_activation(attrs)
    if Nb * OH * OW > INT32_MAX or max(Nb * C * H * Wd, Nb * Cout * OH * OW) > 2 ** 62:
        return "too many output positions"
    pointwise = KH == KW == 1 and strides == [1, 1] and not any(pads)
    if pointwise:  # per (image, group): Y = W_g [Mg, Cg] @ X_{n,g} [Cg, H*W]
        HW = H * Wd
        if Nb * G <= GRID_YZ_MAX and _cdiv(Mg, 32) <= GRID_YZ_MAX:
            tc = tensor_cores and dtype == "float16" and aligned and Cg % 8 == 0 \
                and HW % 8 == 0
            batch = Batch(Nb, G, ((0, Mg * Cg), (C * HW, Cg * HW), (0, Mg)))
            launch = _matmul_launch(dtype, "w", "x", "y", "b" if bias else None, Mg, HW, Cg,
                                    batch, (1, 0), act, lo, hi, tc, sm_count)
            return Plan((launch,), (("y", y_shape, dtype),), ("y",))
    if G > GRID_YZ_MAX:
        return f"{G} groups (at most {GRID_YZ_MAX})"
    sfx = SUFFIX[dtype]
    args = (("p", "x"), ("p", "w"), ("p", "b" if bias else None), ("p", "y"), ("i", Nb),
            ("i", C), ("i", H), ("i", Wd), ("i", Cout), ("i", OH), ("i", OW), ("i", KH),
            ("i", KW), ("i", strides[0]), ("i", strides[1]), ("i", pads[0]), ("i", pads[1]),
            ("i", dilations[0]), ("i", dilations[1]), ("i", G), ("i", act), ("f", lo),
            ("f", hi))
    if Mg < 8:
        total = Nb * Cout * OH * OW
        launch = Launch("conv.cu", f"conv_direct_{sfx}", (_cdiv(total, 256), 1, 1),
                        (256, 1, 1), args)
    else:
        bm, bn, threads = (128, 128, 256) if Mg >= 128 else (64, 128, 256) if Mg >= 48 \
            else (32, 64, 128)
        if _cdiv(Mg, bm) > GRID_YZ_MAX:
            return f"{Mg} output channels per group"
        launch = Launch("conv.cu", f"conv_igemm{bm}_{sfx}",
                        (_cdiv(Nb * OH * OW, bn), _cdiv(Mg, bm), G), (threads, 1, 1), args)
    return Plan((launch,), (("y", y_shape, dtype),), ("y",))

# --------------------------------------------------------------------------- Attention


def plan_attention(q_shape: Sequence[int], k_shape: Sequence[int], v_shape: Sequence[int],
                   dtype: Any, *, k_dtype: Any = None, v_dtype: Any = None,
                   mask_shape: Sequence[int] | None = None, mask_dtype: Any = None,
                   scale: float | None = None, aligned: bool = True,
                   tensor_cores: bool = True) -> Plan | str:
    """Attention(Q, K, V, mask) of dense tensors; or why not."""
    dtype = _name(dtype)
    if dtype not in FLOATS:
        return f"dtype {dtype} (the kernels take float32 and float16)"
    if _name(k_dtype or dtype) != dtype or _name(v_dtype or dtype) != dtype:
        return "Q, K and V differ in dtype"
    if min(len(q_shape), len(k_shape), len(v_shape)) < 2:
        return "an operand of rank below 2"
    Sq, D = int(q_shape[-2]), int(q_shape[-1])
    Sk, Dk = int(k_shape[-2]), int(k_shape[-1])
    Sv, Dv = int(v_shape[-2]), int(v_shape[-1])
    if Dk != D or Sv != Sk:
        return f"Q {tuple(q_shape)}, K {tuple(k_shape)} and V {tuple(v_shape)} do not agree"
    mask_kind = 0
    batch_shapes = [tuple(q_shape[:-2]), tuple(k_shape[:-2]), tuple(v_shape[:-2])]
    if mask_shape is not None:
        mask_kind = MASK_KIND.get(_name(mask_dtype), -1)
        if mask_kind < 0:
            return f"a mask of dtype {_name(mask_dtype)}"
        m2 = (1,) * max(0, 2 - len(mask_shape)) + tuple(mask_shape)
        if broadcast_shape(m2[-2:], (Sq, Sk)) != (Sq, Sk):
            return f"mask {tuple(mask_shape)} does not broadcast to [{Sq}, {Sk}]"
        batch_shapes.append(m2[:-2])
    out_batch = broadcast_shape(*batch_shapes)
    if out_batch is None:
        return "the batch dimensions do not broadcast"
    if 0 in (*out_batch, Sq, Sk, D, Dv):
        return "a zero-sized dimension"
    if max(D, Dv) > 128:
        return f"head dims {D}, {Dv} (at most 128)"
    if max(Sq, Sk) > INT32_MAX // 2:
        return "a sequence of 2^30 or more"
    strides = [broadcast_strides(batch_shapes[0], out_batch, Sq * D),
               broadcast_strides(batch_shapes[1], out_batch, Sk * D),
               broadcast_strides(batch_shapes[2], out_batch, Sk * Dv)]
    smq = smk = 0
    if mask_shape is not None:
        m2 = (1,) * max(0, 2 - len(mask_shape)) + tuple(mask_shape)
        full = broadcast_strides(m2, (*out_batch, Sq, Sk))
        strides.append(full[:-2])
        smq, smk = full[-2:]
    batch = collapse_batch(out_batch, strides)
    if batch is None:
        return "the batch dimensions broadcast on interleaved axes"
    if batch.count > GRID_YZ_MAX:
        return f"{batch.count} (batch, head) pairs (at most {GRID_YZ_MAX})"
    sm0, sm1 = batch.strides[3] if mask_shape is not None else (0, 0)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    args = (("p", "q"), ("p", "k"), ("p", "v"), ("p", "y"),
            ("p", "mask" if mask_shape is not None else None), ("i", mask_kind), ("i", Sq),
            ("i", Sk), ("i", D), ("i", Dv), ("f", scale), ("i", batch.n1),
            *(("q", s) for pair in batch.strides[:3] for s in pair), ("q", sm0), ("q", sm1),
            ("q", smq), ("q", smk))
    if tensor_cores and dtype == "float16" and aligned and D == Dv and D in (64, 128):
        launch = Launch("attention.cu", f"attention_tc_f16_d{D}", (_cdiv(Sq, 64), batch.count, 1),
                        (128, 1, 1), args)
    else:
        launch = Launch("attention.cu", f"attention_simt_{SUFFIX[dtype]}",
                        (_cdiv(Sq, 8), batch.count, 1), (256, 1, 1), args)
    return Plan((launch,), (("y", (*out_batch, Sq, Dv), dtype),), ("y",))

# --------------------------------------------------------------------------- runtime


_state_lock = threading.Lock()
_available: tuple[bool, str] | None = None


def available() -> tuple[bool, str]:
    """(whether the custom kernels can run here, why not / what they run with): torch
    with a CUDA device, CuPy, and NVRTC. Imports torch and CuPy (once)."""
    global _available
    with _state_lock:
        if _available is not None:
            return _available
    try:
        import torch
    except ImportError:
        found = (False, "torch is not installed")
    else:
        if not torch.cuda.is_available():
            found = (False, "torch has no CUDA device (torch.cuda.is_available() is False)")
        else:
            try:
                import cupy
            except Exception as exc:  # noqa: BLE001 - any import failure means no CuPy
                found = (False, f"CuPy cannot be imported ({type(exc).__name__}: {exc}); "
                                "pip install cupy-cuda12x")
            else:
                try:
                    lib = nvrtc.load()
                    cupy.cuda.runtime.getDeviceCount()  # CuPy finds its CUDA runtime
                except nvrtc.NvrtcNotFound as exc:
                    found = (False, str(exc))
                except Exception as exc:  # noqa: BLE001 - CuPy's CUDA runtime is missing
                    found = (False, f"CuPy {cupy.__version__} cannot reach the GPU "
                                    f"({type(exc).__name__}: {exc})")
                else:
                    found = (True, f"CuPy {cupy.__version__}, NVRTC "
                                   f"{'.'.join(map(str, lib.version))} ({lib.path})")
    with _state_lock:
        _available = found
    return found


class _Runtime:
    """Compiled modules per (source, device), CuPy streams per torch stream."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._modules: dict[tuple[str, int], Any] = {}
        self._functions: dict[tuple[str, str, int], Any] = {}
        self._streams: dict[int, Any] = {}
        self._devices: dict[int, tuple[int, bool]] = {}

    def device(self, index: int) -> tuple[int, bool]:
        """(multiprocessors, whether it has sm_80 tensor cores) of GPU ``index``."""
        found = self._devices.get(index)
        if found is None:
            import torch

            props = torch.cuda.get_device_properties(index)
            found = (props.multi_processor_count, (props.major, props.minor) >= (8, 0))
            self._devices[index] = found
        return found

    def function(self, source: str, kernel: str, index: int) -> Any:
        key = (source, kernel, index)
        fn = self._functions.get(key)
        if fn is not None:
            return fn
        with self._lock:
            module = self._modules.get((source, index))
            if module is None:
                import cupy
                import torch

                major, minor = torch.cuda.get_device_capability(index)
                compiled = nvrtc.compile_source(source, (major, minor))
                with cupy.cuda.Device(index):
                    module = cupy.cuda.function.Module()
                    module.load(compiled.binary)
                self._modules[(source, index)] = module
            fn = module.get_function(kernel)
            self._functions[key] = fn
            return fn

    def stream(self, device: Any) -> Any:
        import cupy
        import torch

        ts = torch.cuda.current_stream(device)
        found = self._streams.get(ts.cuda_stream)
        if found is None:
            from_external = getattr(cupy.cuda.Stream, "from_external", None)
            found = (from_external(ts) if from_external is not None
                     else cupy.cuda.ExternalStream(ts.cuda_stream, device.index))
            self._streams[ts.cuda_stream] = found
        return found

    def run(self, plan: Plan, tensors: dict[str, Any], device: Any) -> list[Any]:
        """Allocate the plan's outputs, launch its kernels on torch's current stream of
        ``device``, and return the results."""
        import cupy
        import torch

        dtypes = {"float32": torch.float32, "float16": torch.float16}
        for name, shape in plan.expand.items():
            t = tensors[name]
            if t.dim() > len(shape):  # leading axes of size 1 (checked by the plan)
                t = t.reshape(tuple(t.shape)[t.dim() - len(shape):])
            tensors[name] = t.expand(shape).contiguous()
        for name, shape, dtype in plan.outputs:
            tensors[name] = torch.empty(shape, dtype=dtypes[dtype], device=device)
        pointers = {name: t.data_ptr() for name, t in tensors.items() if t is not None}
        index = device.index if device.index is not None else torch.cuda.current_device()
        stream = self.stream(device)
        with cupy.cuda.Device(index):
            for launch in plan.launches:
                fn = self.function(launch.source, launch.kernel, index)
                fn(launch.grid, launch.block, tuple(pack_args(launch.args, pointers)),
                   stream=stream)
        return [tensors[name].view(plan.views[name]) if name in plan.views else tensors[name]
                for name in plan.result]


_runtime = _Runtime()


def prepare(index: int = 0) -> list[nvrtc.Compiled]:
    """Compile every kernel source for GPU ``index`` now (through the cache, in parallel)
    rather than at each source's first call; returns what was compiled or read."""
    import torch

    return nvrtc.compile_all(torch.cuda.get_device_capability(index))

# --------------------------------------------------------------------------- the kernels


def _on_cuda(*tensors: Any) -> str | None:
    """Why the tensors cannot go to a custom kernel (not torch CUDA tensors, or on
    different devices), or None."""
    device = None
    for t in tensors:
        if t is None:
            continue
        dev = getattr(t, "device", None)
        if getattr(dev, "type", None) != "cuda":
            return f"an input is not a torch CUDA tensor ({type(t).__name__} on {dev})"
        if device is not None and dev != device:
            return f"inputs on {device} and {dev}"
        device = dev
    return None


def _aligned(*tensors: Any) -> bool:
    return all(t is None or t.data_ptr() % 16 == 0 for t in tensors)


class CustomKernel:
    """One op's custom kernel with the ONNX signature; calls outside its limits go to
    ``fallback(key)``.

    ``why_not(*inputs, **attributes)`` says why a call would fall back (None when the
    custom kernel takes it); ``calls`` counts the calls taken and passed on."""

    def __init__(self, key: str, planner: Callable[..., Plan | str],
                 fallback: Callable[[str], Callable[..., Any]], strict: bool = False):
        self.key = key
        self._planner = planner
        self._fallback_for = fallback
        self._fallback: Callable[..., Any] | None = None
        self.strict = strict
        self.broken: str | None = None
        self.calls = {"custom": 0, "fallback": 0}
        self.last_fallback: str | None = None
        self._plans: dict[Any, Plan | str] = {}

    def fallback(self) -> Callable[..., Any]:
        """The torch op table's kernel for this op."""
        if self._fallback is None:
            self._fallback = self._fallback_for(self.key)
        return self._fallback

    def why_not(self, *inputs: Any, **attributes: Any) -> str | None:
        """Why this call would not run on the custom kernel, or None."""
        found = self._plan(inputs, attributes)
        return found if isinstance(found, str) else None

    def _plan(self, inputs: tuple[Any, ...], attributes: dict[str, Any]) -> Plan | str:
        if self.broken:
            return f"the custom kernel failed before: {self.broken}"
        where = _on_cuda(*inputs)
        if where:
            return where
        key = _plan_key(inputs, attributes)
        found = self._plans.get(key) if key is not None else None
        if found is None:
            try:
                found = self._planner(*inputs, **attributes)
            except TypeError as exc:  # an input or attribute the ONNX op does not have
                found = f"unexpected arguments ({exc})"
            if key is not None:
                if len(self._plans) >= PLAN_CACHE_SIZE:
                    self._plans.clear()
                self._plans[key] = found
        return found

    def __call__(self, *inputs: Any, **attributes: Any) -> Any:
        plan = self._plan(inputs, attributes)
        if isinstance(plan, Plan):
            tensors = {name: t for name, t in zip(_INPUT_NAMES[self.key], inputs)}
            tensors = {n: (t.contiguous() if t is not None else None)
                       for n, t in tensors.items()}
            device = next(t.device for t in inputs if t is not None)
            try:
                results = _runtime.run(plan, tensors, device)
            except Exception as exc:
                if self.strict or "out of memory" in str(exc).lower():
                    raise  # the torch kernel would not fit either
                first = (str(exc).splitlines() or [""])[0]
                self.broken = f"{type(exc).__name__}: {first}"
                log.warning("custom CUDA kernel for %s failed (%s); using the torch kernel "
                            "from now on", self.key, self.broken)
            else:
                self.calls["custom"] += 1
                return results[0] if len(results) == 1 else tuple(results)
            plan = self.broken or "failed"
        self.calls["fallback"] += 1
        self.last_fallback = plan
        return self.fallback()(*inputs, **attributes)


#: Plans kept per kernel (a model's shapes are few; the cache is emptied when full).
PLAN_CACHE_SIZE = 256


def _frozen(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return value


def _plan_key(inputs: Sequence[Any], attributes: dict[str, Any]) -> Any:
    """What a plan depends on: each input's shape, dtype, alignment and device, and the
    attributes; None when an attribute cannot be hashed (then nothing is cached)."""
    key = (tuple(None if t is None else (tuple(t.shape), t.dtype, t.data_ptr() % 16 == 0,
                                         t.device) for t in inputs),
           tuple(sorted((k, _frozen(v)) for k, v in attributes.items())))
    try:
        hash(key)
    except TypeError:
        return None
    return key


_INPUT_NAMES = {
    "MatMul": ("a", "b"),
    "backplane::FusedMatMulBiasGelu": ("a", "b", "bias"),
    "Softmax": ("x",),
    "LayerNormalization": ("x", "scale", "bias"),
    "backplane::FusedConvRelu": ("x", "w", "b"),
    "backplane::Attention": ("q", "k", "v", "mask"),
}


def _gpu(t: Any) -> dict[str, Any]:
    """The planners' device arguments for tensor ``t``'s GPU."""
    sm_count, tensor_cores = _runtime.device(t.device.index if t.device.index is not None else 0)
    return {"sm_count": sm_count, "tensor_cores": tensor_cores}


def _matmul(a: Any, b: Any) -> Plan | str:
    if a.dtype != b.dtype:
        return f"operands of dtypes {a.dtype} and {b.dtype}"
    return plan_matmul(tuple(a.shape), tuple(b.shape), a.dtype, aligned=_aligned(a, b),
                       **_gpu(a))


def _matmul_bias_gelu(a: Any, b: Any, bias: Any, approximate: str = "none") -> Plan | str:
    if approximate not in ("none", "tanh"):
        return f"approximate={approximate!r}"
    if not (a.dtype == b.dtype == bias.dtype):
        return "operands of different dtypes"
    return plan_matmul(tuple(a.shape), tuple(b.shape), a.dtype, bias_shape=tuple(bias.shape),
                       act=ACT["gelu" if approximate == "none" else "gelu_tanh"],
                       aligned=_aligned(a, b), **_gpu(a))


def _softmax(x: Any, axis: int = -1) -> Plan | str:
    return plan_softmax(tuple(x.shape), axis, x.dtype)


def _layernorm(x: Any, scale: Any, bias: Any = None, axis: int = -1, epsilon: float = 1e-5,
               stash_type: int = 1) -> Plan | str:
    return plan_layernorm(tuple(x.shape), x.dtype, tuple(scale.shape), scale.dtype,
                          tuple(bias.shape) if bias is not None else None,
                          bias.dtype if bias is not None else None, axis, epsilon, stash_type)


def _conv_relu(x: Any, w: Any, b: Any = None, **attrs: Any) -> Plan | str:
    return plan_conv(tuple(x.shape), tuple(w.shape), x.dtype, attrs, w_dtype=w.dtype,
                     bias=b is not None, bias_shape=tuple(b.shape) if b is not None else None,
                     bias_dtype=b.dtype if b is not None else None, aligned=_aligned(x, w),
                     **_gpu(x))


def _attention(q: Any, k: Any, v: Any, mask: Any = None, scale: float | None = None
               ) -> Plan | str:
    return plan_attention(tuple(q.shape), tuple(k.shape), tuple(v.shape), q.dtype,
                          k_dtype=k.dtype, v_dtype=v.dtype,
                          mask_shape=tuple(mask.shape) if mask is not None else None,
                          mask_dtype=mask.dtype if mask is not None else None, scale=scale,
                          aligned=_aligned(q, k, v), tensor_cores=_gpu(q)["tensor_cores"])


_PLANNERS: dict[str, Callable[..., Plan | str]] = {
    "MatMul": _matmul, "Softmax": _softmax, "LayerNormalization": _layernorm,
    "backplane::FusedConvRelu": _conv_relu, "backplane::FusedMatMulBiasGelu": _matmul_bias_gelu,
    "backplane::Attention": _attention,
}


def custom_kernels(fallback: Callable[[str], Callable[..., Any]], *,
                   strict: bool = False) -> dict[str, CustomKernel]:
    """Op key -> custom kernel (a :class:`CustomKernel`, called ``fn(*inputs,
    **attributes)``) for every key of :data:`OPS`.

    Args:
        fallback: op key -> the torch op table's kernel, called for inputs outside a
            custom kernel's limits (looked up on first use).
        strict: raise when a custom kernel fails to compile or launch, instead of logging
            a warning and using the fallback from then on (tests use it).
    """
    return {key: CustomKernel(key, _PLANNERS[key], fallback, strict) for key in OPS}


__all__ = ["ACT", "Batch", "CustomKernel", "DEFAULT_CUSTOM", "KERNELS", "Launch", "OPS", "Plan",
           "available", "broadcast_shape", "broadcast_strides", "collapse_batch",
           "custom_kernels", "pack_args", "plan_attention", "plan_conv", "plan_layernorm",
           "plan_matmul", "plan_softmax", "prepare"]
