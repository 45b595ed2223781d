"""Plans of the contraction kernels: MatMul, FusedMatMulBiasGelu, FusedConvRelu, Attention."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .common import (ACT, FLOATS, GRID_YZ_MAX, INT32_MAX, MASK_KIND, SUFFIX, Batch, Launch, Plan,
                     broadcast_shape, broadcast_strides, cdiv, collapse_batch, dtype_name)

# --------------------------------------------------------------------------- MatMul


def _matmul_launch(dtype: str, a: str, b: str, c: str, bias: str | None, M: int, N: int,
                   K: int, batch: Batch, bias_strides: tuple[int, int], act: int,
                   lo: float, hi: float, tensor_cores: bool, sm_count: int) -> Launch:
    if tensor_cores:
        kernel, bm, bn, threads = "matmul_tc_f16", 128, 128, 256
    elif cdiv(M, 128) * cdiv(N, 128) * batch.count >= 2 * sm_count:
        kernel, bm, bn, threads = f"matmul_simt128_{SUFFIX[dtype]}", 128, 128, 256
    else:
        kernel, bm, bn, threads = f"matmul_simt32_{SUFFIX[dtype]}", 32, 64, 128
    (sa0, sa1), (sb0, sb1) = batch.strides[0], batch.strides[1]
    sc0, sc1 = batch.strides[2] if len(batch.strides) > 2 else (0, 0)
    args = (("p", a), ("p", b), ("p", c), ("p", bias), ("i", M), ("i", N), ("i", K),
            ("i", batch.n1), ("q", sa0), ("q", sa1), ("q", sb0), ("q", sb1), ("q", sc0),
            ("q", sc1), ("q", bias_strides[0]), ("q", bias_strides[1]), ("i", act),
            ("f", lo), ("f", hi))
    return Launch("matmul.cu", kernel, (cdiv(N, bn), cdiv(M, bm), batch.count),
                  (threads, 1, 1), args)


def plan_matmul(a_shape: Sequence[int], b_shape: Sequence[int], dtype: Any, *,
                bias_shape: Sequence[int] | None = None, act: int = 0, aligned: bool = True,
                sm_count: int = 132, tensor_cores: bool = True) -> Plan | str:
    """MatMul of ``a_shape`` by ``b_shape`` (numpy semantics), optionally ``act(. + bias)``;
    or why not. ``aligned``: every operand's data is 16-byte aligned. ``sm_count`` picks
    the tile size (enough tiles to fill the multiprocessors twice, else smaller ones).
    ``tensor_cores``: the GPU has sm_80's (compute capability 8.0 or newer)."""
    dtype = dtype_name(dtype)
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
    if cdiv(M, 128 if tc else 32) > GRID_YZ_MAX:
        return f"M = {M} needs more than {GRID_YZ_MAX} row tiles"
    launch = _matmul_launch(dtype, "a", "b", "y", "bias" if bias_shape is not None else None,
                            M, N, K, batch, bias_mn, act, 0.0, 0.0, tc, sm_count)
    final = (*out_batch, *((M,) if len(a_shape) > 1 else ()), *((N,) if len(b_shape) > 1 else ()))
    views = {"y": final} if final != full else {}
    return Plan((launch,), (("y", full, dtype),), ("y",), views=views)

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
    dtype = dtype_name(dtype)
    if dtype not in FLOATS:
        return f"dtype {dtype} (the kernels take float32 and float16)"
    if dtype_name(w_dtype or dtype) != dtype or (bias and dtype_name(bias_dtype or dtype) != dtype):
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
        if Nb * G <= GRID_YZ_MAX and cdiv(Mg, 32) <= GRID_YZ_MAX:
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
        launch = Launch("conv.cu", f"conv_direct_{sfx}", (cdiv(total, 256), 1, 1),
                        (256, 1, 1), args)
    else:
        bm, bn, threads = (128, 128, 256) if Mg >= 128 else (64, 128, 256) if Mg >= 48 \
            else (32, 64, 128)
        if cdiv(Mg, bm) > GRID_YZ_MAX:
            return f"{Mg} output channels per group"
        launch = Launch("conv.cu", f"conv_igemm{bm}_{sfx}",
                        (cdiv(Nb * OH * OW, bn), cdiv(Mg, bm), G), (threads, 1, 1), args)
    return Plan((launch,), (("y", y_shape, dtype),), ("y",))

# --------------------------------------------------------------------------- Attention


def plan_attention(q_shape: Sequence[int], k_shape: Sequence[int], v_shape: Sequence[int],
                   dtype: Any, *, k_dtype: Any = None, v_dtype: Any = None,
                   mask_shape: Sequence[int] | None = None, mask_dtype: Any = None,
                   scale: float | None = None, aligned: bool = True,
                   tensor_cores: bool = True) -> Plan | str:
    """Attention(Q, K, V, mask) of dense tensors; or why not."""
    dtype = dtype_name(dtype)
    if dtype not in FLOATS:
        return f"dtype {dtype} (the kernels take float32 and float16)"
    if dtype_name(k_dtype or dtype) != dtype or dtype_name(v_dtype or dtype) != dtype:
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
        mask_kind = MASK_KIND.get(dtype_name(mask_dtype), -1)
        if mask_kind < 0:
            return f"a mask of dtype {dtype_name(mask_dtype)}"
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
        launch = Launch("attention.cu", f"attention_tc_f16_d{D}", (cdiv(Sq, 64), batch.count, 1),
                        (128, 1, 1), args)
    else:
        launch = Launch("attention.cu", f"attention_simt_{SUFFIX[dtype]}",
                        (cdiv(Sq, 8), batch.count, 1), (256, 1, 1), args)
    return Plan((launch,), (("y", (*out_batch, Sq, Dv), dtype),), ("y",))
