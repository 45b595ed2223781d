"""MatMul, Gemm, MatMulInteger, the convolutions and their fused forms on the NEON kernels."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from backplane.ops import window_pads

from .common import ACT_CLIP, ACT_GELU, ACT_GELU_TANH, ACT_NONE, ACT_RELU, dense, dt


# --------------------------------------------------------------------------- linear algebra

def _batched(x: Any, batch: tuple, rows: int, cols: int) -> tuple[Any, int]:
    """``x`` as a dense [batch..., rows, cols] buffer and its batch stride (0: shared)."""
    if int(np.prod(x.shape[:-2], dtype=np.int64)) == 1:
        return dense(x), 0
    if tuple(x.shape[:-2]) != tuple(batch):
        x = np.broadcast_to(x, tuple(batch) + (rows, cols))
    return dense(x), rows * cols


def _matmul_shapes(a: Any, b: Any) -> tuple[Any, Any, tuple, int, int, int, tuple]:
    a2 = a[None, :] if a.ndim == 1 else a
    b2 = b[:, None] if b.ndim == 1 else b
    M, K = a2.shape[-2:]
    N = b2.shape[-1]
    if b2.shape[-2] != K:
        raise ValueError(f"MatMul of {a.shape} and {b.shape}: inner sizes differ")
    batch = tuple(np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2]))
    out = batch + ((M,) if a.ndim > 1 else ()) + ((N,) if b.ndim > 1 else ())
    return a2, b2, batch, M, N, K, out


def _gemm(rt: Any, a: Any, b: Any, bias: Any = None, act: int = ACT_NONE) -> Any:
    """Batched A @ B (+ a per-column or broadcast bias) with an epilogue."""
    a2, b2, batch, M, N, K, out = _matmul_shapes(a, b)
    y = np.empty(batch + (M, N), a.dtype)
    if y.size == 0:
        return y.reshape(out)
    nb = int(np.prod(batch, dtype=np.int64))
    ad, a_bs = _batched(a2, batch, M, K)
    bd, b_bs = _batched(b2, batch, K, N)
    c, c_rs, c_cs, c_bs = None, 0, 0, 0
    if bias is not None:
        bias = np.asarray(bias, a.dtype)
        if bias.ndim <= 2:
            c2 = bias.reshape((1,) * (2 - bias.ndim) + bias.shape)
            c = dense(c2)
            c_rs = c2.shape[1] if c2.shape[0] != 1 else 0
            c_cs = 1 if c2.shape[1] != 1 else 0
        else:
            c = dense(np.broadcast_to(bias, batch + (M, N)))
            c_rs, c_cs, c_bs = N, 1, M * N
    rt.call("gemm", [ad, bd, c], [y],
            (M, N, K, K, 1, N, 1, c_rs, c_cs, dt(a), act, nb, a_bs, b_bs, c_bs),
            (1.0, 1.0 if c is not None else 0.0, 0.0, 0.0))
    return y.reshape(out)


def matmul(rt: Any, a: Any, b: Any) -> Any:
    return _gemm(rt, a, b)


def fused_matmul_bias_gelu(rt: Any, a: Any, b: Any, bias: Any, approximate: str = "none") -> Any:
    return _gemm(rt, a, b, bias, ACT_GELU_TANH if approximate == "tanh" else ACT_GELU)


def gemm(rt: Any, a: Any, b: Any, c: Any = None, alpha: float = 1.0, beta: float = 1.0,
         transA: int = 0, transB: int = 0) -> Any:
    a, b = dense(a), dense(b)
    M, K = (a.shape[1], a.shape[0]) if transA else a.shape
    N = b.shape[0] if transB else b.shape[1]
    a_rs, a_cs = (1, M) if transA else (K, 1)
    b_rs, b_cs = (1, K) if transB else (N, 1)
    y = np.empty((M, N), a.dtype)
    if y.size == 0:
        return y
    c_rs = c_cs = 0
    if c is not None:
        c2 = np.asarray(c, a.dtype)
        c2 = dense(c2.reshape((1,) * (2 - c2.ndim) + c2.shape))
        c_rs = c2.shape[1] if c2.shape[0] != 1 else 0
        c_cs = 1 if c2.shape[1] != 1 else 0
        c = c2
    rt.call("gemm", [a, b, c], [y],
            (M, N, K, a_rs, a_cs, b_rs, b_cs, c_rs, c_cs, dt(a), ACT_NONE, 1, 0, 0, 0),
            (alpha, beta if c is not None else 0.0, 0.0, 0.0))
    return y


def matmul_integer(rt: Any, a: Any, b: Any, a_zero_point: Any = None,
                   b_zero_point: Any = None) -> Any:
    kinds = {np.dtype(np.uint8): 0, np.dtype(np.int8): 1}
    if a.dtype not in kinds or b.dtype not in kinds:
        raise TypeError(f"MatMulInteger of {a.dtype} and {b.dtype}: int8 and uint8 only")
    a2, b2, batch, M, N, K, out = _matmul_shapes(a, b)
    y = np.empty(batch + (M, N), np.int32)
    if y.size == 0:
        return y.reshape(out)
    za = None if a_zero_point is None else dense(
        np.broadcast_to(np.asarray(a_zero_point, np.int32).reshape(-1), (M,)))
    zb = None if b_zero_point is None else dense(
        np.broadcast_to(np.asarray(b_zero_point, np.int32).reshape(-1), (N,)))
    ad, a_bs = _batched(a2, batch, M, K)
    bd, b_bs = _batched(b2, batch, K, N)
    nb = int(np.prod(batch, dtype=np.int64))
    rt.call("matmul_int8", [ad, bd, za, zb], [y],
            (M, N, K, kinds[a.dtype], kinds[b.dtype], nb, a_bs, b_bs))
    return y.reshape(out)


# --------------------------------------------------------------------------- convolutions

def _three(values: list[int], fill: int) -> list[int]:
    return [fill] * (3 - len(values)) + list(values)


def _conv_call(rt: Any, kernel: str, x: Any, w: Any, b: Any, y: Any, group: int,
               kshape: list[int], strides: list[int], dilations: list[int], begins: list[int],
               act: int = ACT_NONE, lo: float = 0.0, hi: float = 0.0) -> Any:
    if y.size == 0:
        return y
    iv = (dt(x), x.shape[0], x.shape[1], y.shape[1], group, *_three(list(x.shape[2:]), 1),
          *_three(kshape, 1), *_three(list(y.shape[2:]), 1), *_three(strides, 1),
          *_three(dilations, 1), *_three(begins, 0), act)
    rt.call(kernel, [dense(x), dense(w), None if b is None else dense(b)], [y], iv, (lo, hi))
    return y


def conv(rt: Any, x: Any, w: Any, b: Any = None, auto_pad: str = "NOTSET",
         dilations: Any = None, group: int = 1, kernel_shape: Any = None, pads: Any = None,
         strides: Any = None, act: int = ACT_NONE, lo: float = 0.0, hi: float = 0.0) -> Any:
    nsp = x.ndim - 2
    if not 1 <= nsp <= 3:
        raise ValueError(f"Conv over {nsp} spatial dimensions (1 to 3)")
    kshape = list(w.shape[2:])
    strides = list(strides or [1] * nsp)
    dilations = list(dilations or [1] * nsp)
    p = window_pads(x.shape[2:], kshape, strides, dilations, pads, auto_pad)
    out = [(size + p[i] + p[i + nsp] - ((k - 1) * d + 1)) // s + 1
           for i, (size, k, s, d) in enumerate(zip(x.shape[2:], kshape, strides, dilations))]
    y = np.empty((x.shape[0], w.shape[0], *out), x.dtype)
    return _conv_call(rt, "conv", x, w, b, y, group, kshape, strides, dilations, p[:nsp],
                      act, lo, hi)


def fused_conv_relu(rt: Any, x: Any, w: Any, b: Any = None, clip_min: Any = None,
                    clip_max: Any = None, **attrs: Any) -> Any:
    if clip_min is None and clip_max is None:
        return conv(rt, x, w, b, act=ACT_RELU, **attrs)
    lo = -math.inf if clip_min is None else float(clip_min)
    hi = math.inf if clip_max is None else float(clip_max)
    return conv(rt, x, w, b, act=ACT_CLIP, lo=lo, hi=hi, **attrs)


def conv_transpose(rt: Any, x: Any, w: Any, b: Any = None, auto_pad: str = "NOTSET",
                   dilations: Any = None, group: int = 1, kernel_shape: Any = None,
                   output_padding: Any = None, output_shape: Any = None, pads: Any = None,
                   strides: Any = None) -> Any:
    """Output size and padding as the specification gives them (and backplane's oracle): an
    ``output_shape`` (or SAME auto-padding) sets the total padding, its larger half first
    unless SAME_UPPER asks otherwise (a negative total zero-extends the output)."""
    nsp = x.ndim - 2
    if not 1 <= nsp <= 3:
        raise ValueError(f"ConvTranspose over {nsp} spatial dimensions (1 to 3)")
    kshape = list(w.shape[2:])
    strides = list(strides or [1] * nsp)
    dilations = list(dilations or [1] * nsp)
    opad = list(output_padding or [0] * nsp)
    size = list(x.shape[2:])
    full = [s * (n - 1) + op + (k - 1) * d + 1
            for n, s, op, k, d in zip(size, strides, opad, kshape, dilations)]
    if output_shape is not None:
        out = [int(v) for v in output_shape][-nsp:]
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = [n * s for n, s in zip(size, strides)]
    else:
        out = None
    if out is not None:
        total = [f - o for f, o in zip(full, out)]
        # The spec: SAME_UPPER puts the smaller half of the total padding first, NOTSET
        # (output_shape) and SAME_LOWER the larger.
        begins = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in total]
    else:
        p = [int(v) for v in pads] if pads is not None and auto_pad != "VALID" else [0] * (2 * nsp)
        begins = p[:nsp]
        out = [f - p[i] - p[i + nsp] for i, f in enumerate(full)]
    y = np.empty((x.shape[0], w.shape[1] * group, *out), x.dtype)
    return _conv_call(rt, "conv_transpose", x, w, b, y, group, kshape, strides, dilations,
                      begins)
