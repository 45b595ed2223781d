"""The host side of each NEON kernel: shapes, broadcasting and layouts in numpy, then one
call into a kernel of ``kernels/neon`` through a runtime (``runtime.py``). Every function
takes the runtime first, then the node's inputs and attributes.

What numpy does here is shape logic and data movement, never the arithmetic of an op:
views, dense copies, broadcasting strides, padding and window gathering for pools, Resize's
taps and weights (from the sizes alone), exact widening of f16 or bf16 parameters to f32. The data-movement ops (Reshape, Transpose, Concat, Slice, Gather,
Squeeze, Unsqueeze, Flatten, Expand, Shape, Identity, Pad, Where, Cast) run in numpy
entirely: they compute nothing.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from backplane.ops import pool_geometry, window_pads

F32, F16, BF16 = 0, 1, 2
#: Unary op codes of kernels/neon/bp_neon.h.
UNARY = {"Relu": 0, "LeakyRelu": 1, "Sigmoid": 2, "Tanh": 3, "Exp": 4, "Log": 5, "Sqrt": 6,
         "Abs": 7, "Neg": 8, "Erf": 9, "Gelu": 10, "GeluTanh": 11, "HardSigmoid": 12,
         "HardSwish": 13, "Clip": 14}
BINARY = {"Add": 0, "Sub": 1, "Mul": 2, "Div": 3, "Pow": 4}
ACT_NONE, ACT_RELU, ACT_CLIP, ACT_GELU, ACT_GELU_TANH = range(5)
MAX_RANK = 8


def _dt(a: Any) -> int:
    if a.dtype == np.float32:
        return F32
    if a.dtype == np.float16:
        return F16
    if a.dtype.name == "bfloat16":  # ml_dtypes' type: only the element-wise kernels take it
        return BF16
    raise TypeError(f"the NEON kernels take float32, float16 or bfloat16, not {a.dtype}")


def _dense(a: Any) -> Any:
    """A dense row-major array (0-d arrays stay 0-d, unlike numpy.ascontiguousarray)."""
    a = np.asarray(a)
    return a if a.flags.c_contiguous else a.copy(order="C")


def _ints(a: Any) -> list[int]:
    return [int(v) for v in np.asarray(a).reshape(-1)]


def _axis(a: int, rank: int) -> int:
    return a + rank if a < 0 else a


# --------------------------------------------------------------------------- element-wise

def unary(rt: Any, op: str, x: Any, p0: float = 0.0, p1: float = 0.0) -> Any:
    x = _dense(x)
    y = np.empty_like(x)
    if x.size:
        rt.call("unary", [x], [y], (UNARY[op], _dt(x), x.size), (p0, p1))
    return y


def unary_op(rt: Any, op: str, x: Any) -> Any:
    return unary(rt, op, x)


def leaky_relu(rt: Any, x: Any, alpha: float = 0.01) -> Any:
    return unary(rt, "LeakyRelu", x, alpha)


def hard_sigmoid(rt: Any, x: Any, alpha: float = 0.2, beta: float = 0.5) -> Any:
    return unary(rt, "HardSigmoid", x, alpha, beta)


def gelu(rt: Any, x: Any, approximate: str = "none") -> Any:
    return unary(rt, "GeluTanh" if approximate == "tanh" else "Gelu", x)


def clip(rt: Any, x: Any, lo: Any = None, hi: Any = None) -> Any:
    low = float(np.asarray(lo).reshape(-1)[0]) if lo is not None else -math.inf
    high = float(np.asarray(hi).reshape(-1)[0]) if hi is not None else math.inf
    return unary(rt, "Clip", x, min(low, high), high)  # min > max: every element is max


def broadcast_layout(shape_a: tuple, shape_b: tuple) -> tuple[tuple, list, list, list]:
    """(output shape, collapsed dims, a strides, b strides) of a broadcast over dense
    inputs: dims of size 1 dropped, neighbours that are contiguous in both inputs merged, so
    the innermost strides are 0 or 1."""
    out = tuple(np.broadcast_shapes(shape_a, shape_b))
    rank = len(out)

    def strides(shape: tuple) -> list[int]:
        full = (1,) * (rank - len(shape)) + tuple(shape)
        st, acc = [0] * rank, 1
        for i in range(rank - 1, -1, -1):
            st[i] = acc if full[i] != 1 else 0
            acc *= full[i]
        return st

    sa, sb = strides(shape_a), strides(shape_b)
    dims, ra, rb = [], [], []
    for d, a, b in zip(out, sa, sb):
        if d == 1:
            continue
        if dims and ra[-1] == a * d and rb[-1] == b * d:
            dims[-1] *= d
            ra[-1], rb[-1] = a, b
        else:
            dims.append(d)
            ra.append(a)
            rb.append(b)
    if not dims:
        dims, ra, rb = [1], [0], [0]
    return out, dims, ra, rb


def binary(rt: Any, op: str, a: Any, b: Any) -> Any:
    if op == "Pow" and a.dtype != b.dtype:
        # the exponent has a type of its own: both widen (exactly) to f32, then one rounding
        wide = binary(rt, op, a.astype(np.float32), b.astype(np.float32))
        return wide.astype(a.dtype)
    a, b = _dense(a), _dense(b)
    out, dims, sa, sb = broadcast_layout(a.shape, b.shape)
    y = np.empty(out, a.dtype)
    if y.size == 0:
        return y
    if len(dims) > MAX_RANK:
        raise ValueError(f"a broadcast of {len(dims)} independent dimensions (at most {MAX_RANK})")
    rt.call("binary", [a, b], [y], (BINARY[op], _dt(a), len(dims), *dims, *sa, *sb))
    return y


# --------------------------------------------------------------------------- linear algebra

def _batched(x: Any, batch: tuple, rows: int, cols: int) -> tuple[Any, int]:
    """``x`` as a dense [batch..., rows, cols] buffer and its batch stride (0: shared)."""
    if int(np.prod(x.shape[:-2], dtype=np.int64)) == 1:
        return _dense(x), 0
    if tuple(x.shape[:-2]) != tuple(batch):
        x = np.broadcast_to(x, tuple(batch) + (rows, cols))
    return _dense(x), rows * cols


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
            c = _dense(c2)
            c_rs = c2.shape[1] if c2.shape[0] != 1 else 0
            c_cs = 1 if c2.shape[1] != 1 else 0
        else:
            c = _dense(np.broadcast_to(bias, batch + (M, N)))
            c_rs, c_cs, c_bs = N, 1, M * N
    rt.call("gemm", [ad, bd, c], [y],
            (M, N, K, K, 1, N, 1, c_rs, c_cs, _dt(a), act, nb, a_bs, b_bs, c_bs),
            (1.0, 1.0 if c is not None else 0.0, 0.0, 0.0))
    return y.reshape(out)


def matmul(rt: Any, a: Any, b: Any) -> Any:
    return _gemm(rt, a, b)


def fused_matmul_bias_gelu(rt: Any, a: Any, b: Any, bias: Any, approximate: str = "none") -> Any:
    return _gemm(rt, a, b, bias, ACT_GELU_TANH if approximate == "tanh" else ACT_GELU)


def gemm(rt: Any, a: Any, b: Any, c: Any = None, alpha: float = 1.0, beta: float = 1.0,
         transA: int = 0, transB: int = 0) -> Any:
    a, b = _dense(a), _dense(b)
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
        c2 = _dense(c2.reshape((1,) * (2 - c2.ndim) + c2.shape))
        c_rs = c2.shape[1] if c2.shape[0] != 1 else 0
        c_cs = 1 if c2.shape[1] != 1 else 0
        c = c2
    rt.call("gemm", [a, b, c], [y],
            (M, N, K, a_rs, a_cs, b_rs, b_cs, c_rs, c_cs, _dt(a), ACT_NONE, 1, 0, 0, 0),
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
    za = None if a_zero_point is None else _dense(
        np.broadcast_to(np.asarray(a_zero_point, np.int32).reshape(-1), (M,)))
    zb = None if b_zero_point is None else _dense(
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
    iv = (_dt(x), x.shape[0], x.shape[1], y.shape[1], group, *_three(list(x.shape[2:]), 1),
          *_three(kshape, 1), *_three(list(y.shape[2:]), 1), *_three(strides, 1),
          *_three(dilations, 1), *_three(begins, 0), act)
    rt.call(kernel, [_dense(x), _dense(w), None if b is None else _dense(b)], [y], iv, (lo, hi))
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


# --------------------------------------------------------------------------- normalisation

def softmax(rt: Any, x: Any, axis: int = -1) -> Any:
    x = _dense(x)
    y = np.empty_like(x)
    if x.size == 0:
        return y
    axis = _axis(axis, x.ndim)
    outer = int(np.prod(x.shape[:axis], dtype=np.int64))
    inner = int(np.prod(x.shape[axis + 1:], dtype=np.int64))
    rt.call("softmax", [x], [y], (_dt(x), outer, x.shape[axis], inner))
    return y


def layer_norm(rt: Any, x: Any, scale: Any, bias: Any = None, axis: int = -1,
               epsilon: float = 1e-5, stash_type: int = 1) -> tuple[Any, Any, Any]:
    x = _dense(x)
    axis = _axis(axis, x.ndim)
    norm = x.shape[axis:]
    R = int(np.prod(norm, dtype=np.int64))
    rows = int(np.prod(x.shape[:axis], dtype=np.int64))
    stats_shape = x.shape[:axis] + (1,) * (x.ndim - axis)
    y = np.empty_like(x)
    mean = np.empty(stats_shape, np.float32)
    inv = np.empty(stats_shape, np.float32)
    if rows == 0 or R == 0:
        return y, mean, inv
    s = _dense(np.broadcast_to(scale, norm))
    b = None if bias is None else _dense(np.broadcast_to(bias, norm).astype(s.dtype))
    rt.call("layer_norm", [x, s, b], [y, mean, inv], (_dt(x), _dt(s), rows, R), (epsilon,))
    return y, mean, inv


def batch_norm(rt: Any, x: Any, scale: Any, bias: Any, mean: Any, var: Any,
               epsilon: float = 1e-5, momentum: float = 0.9, training_mode: int = 0) -> Any:
    if training_mode:
        raise ValueError("BatchNormalization in training mode")
    x = _dense(x)
    y = np.empty_like(x)
    if x.size == 0:
        return y
    channels = x.shape[1] if x.ndim > 1 else 1
    inner = int(np.prod(x.shape[2:], dtype=np.int64))
    params = [_dense(np.asarray(p).astype(np.float32)) for p in (scale, bias, mean, var)]
    rt.call("batch_norm", [x, *params], [y], (_dt(x), x.shape[0], channels, inner), (epsilon,))
    return y


# --------------------------------------------------------------------------- reductions

_REDUCE = {"sum": 0, "mean": 1, "max": 2}


def _reduce(rt: Any, kind: str, data: Any, axes: Any = None, keepdims: int = 1,
            noop_with_empty_axes: int = 0) -> Any:
    chosen = [] if axes is None else _ints(axes)
    if not chosen and noop_with_empty_axes:
        return np.array(data, copy=True)
    rank = data.ndim
    chosen = sorted({_axis(a, rank) for a in chosen}) if chosen else list(range(rank))
    kept = [i for i in range(rank) if i not in chosen]
    out_shape = tuple(1 if i in chosen else data.shape[i] for i in range(rank)) if keepdims \
        else tuple(data.shape[i] for i in kept)
    if chosen == list(range(chosen[0], chosen[-1] + 1)) if chosen else True:
        x = _dense(data)
        lo, hi = (chosen[0], chosen[-1] + 1) if chosen else (0, 0)
        outer = int(np.prod(data.shape[:lo], dtype=np.int64))
        R = int(np.prod(data.shape[lo:hi], dtype=np.int64))
        inner = int(np.prod(data.shape[hi:], dtype=np.int64))
    else:  # the reduced axes last, as one
        x = _dense(np.transpose(data, kept + chosen))
        outer = int(np.prod([data.shape[i] for i in kept], dtype=np.int64))
        R = int(np.prod([data.shape[i] for i in chosen], dtype=np.int64))
        inner = 1
    y = np.empty(out_shape, data.dtype)
    if y.size:
        rt.call("reduce", [x], [y], (_dt(data), _REDUCE[kind], outer, R, inner))
    return y


def reduce_sum(rt: Any, data: Any, axes: Any = None, **attrs: Any) -> Any:
    return _reduce(rt, "sum", data, axes, **attrs)


def reduce_mean(rt: Any, data: Any, axes: Any = None, **attrs: Any) -> Any:
    return _reduce(rt, "mean", data, axes, **attrs)


def reduce_max(rt: Any, data: Any, axes: Any = None, **attrs: Any) -> Any:
    return _reduce(rt, "max", data, axes, **attrs)


def global_average_pool(rt: Any, x: Any) -> Any:
    x = _dense(x)
    rows = x.shape[0] * x.shape[1]
    R = int(np.prod(x.shape[2:], dtype=np.int64))
    y = np.empty(x.shape[:2] + (1,) * (x.ndim - 2), x.dtype)
    if y.size:
        rt.call("reduce", [x], [y], (_dt(x), _REDUCE["mean"], rows, R, 1))
    return y


def _windows(a: Any, kernel: list[int], strides: list[int], dilations: list[int],
             out: list[int]) -> Any:
    """[..., out..., k...] views of the last len(kernel) axes of ``a`` (padded already)."""
    nsp = len(kernel)
    spans = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    v = np.lib.stride_tricks.sliding_window_view(a, spans, axis=tuple(range(a.ndim - nsp, a.ndim)))
    lead = a.ndim - nsp
    index = [slice(None)] * lead
    index += [slice(0, (o - 1) * s + 1, s) for o, s in zip(out, strides)]
    index += [slice(None, None, d) for d in dilations]
    return v[tuple(index)]


def _pool(rt: Any, kind: str, x: Any, kernel_shape: Any, auto_pad: str = "NOTSET",
          ceil_mode: int = 0, dilations: Any = None, pads: Any = None, strides: Any = None,
          count_include_pad: int = 0, storage_order: int = 0) -> Any:
    """MaxPool and AveragePool with the output sizes of backplane's oracle (np_pool): the
    windows are gathered here (data movement), their max or mean computed by the kernel."""
    kernel = list(kernel_shape)
    nsp = len(kernel)
    spatial = list(x.shape[2:])
    strides = list(strides or [1] * nsp)
    dilations = list(dilations or [1] * nsp)
    begins, ends, out, extra = pool_geometry(spatial, kernel, strides, dilations, pads,
                                             auto_pad, ceil_mode)
    widths = [(b, e + x_) for b, e, x_ in zip(begins, ends, extra)]
    y = np.empty(x.shape[:2] + tuple(out), x.dtype)
    indices = np.empty(y.shape, np.int64) if kind == "max" else None
    if y.size == 0:
        return (y, indices) if kind == "max" else y
    P, K = int(np.prod(out)), int(np.prod(kernel))
    fill = -np.inf if kind == "max" else 0.0
    xp = np.pad(x, [(0, 0), (0, 0)] + widths, constant_values=fill)
    rows = _dense(_windows(xp, kernel, strides, dilations, out)).reshape(-1, K)
    if kind == "max":
        flat = np.arange(int(np.prod(spatial))).reshape(spatial[::-1] if storage_order else spatial)
        if storage_order:
            flat = flat.transpose(list(range(nsp))[::-1])
        where = _windows(np.pad(flat, widths, constant_values=-1), kernel, strides, dilations,
                         out).reshape(P, K)
        best = np.empty(rows.shape[0], np.int64)
        rt.call("pool_windows", [rows, None], [y, best], (_dt(x), 0, rows.shape[0], K, P))
        image = int(np.prod(spatial))
        offsets = np.arange(x.shape[0] * x.shape[1], dtype=np.int64).repeat(P) * image
        found = where[np.arange(rows.shape[0]) % P, best]
        indices[...] = (found + offsets).reshape(y.shape)  # as the oracle: -1 + offset in pads
        return y, indices
    inside = np.ones(spatial if not count_include_pad else
                     [s + b + e for s, b, e in zip(spatial, begins, ends)], np.float32)
    region = np.pad(inside, widths if not count_include_pad else [(0, x_) for x_ in extra])
    counted = _dense(_windows(region, kernel, strides, dilations, out)).reshape(P, K)
    counts = np.empty(P, np.float32)
    rt.call("reduce", [counted], [counts], (F32, _REDUCE["sum"], P, K, 1))
    rt.call("pool_windows", [rows, counts], [y, None], (_dt(x), 1, rows.shape[0], K, P))
    return y


def max_pool(rt: Any, x: Any, **attrs: Any) -> Any:
    return _pool(rt, "max", x, **attrs)


def average_pool(rt: Any, x: Any, **attrs: Any) -> Any:
    return _pool(rt, "avg", x, **attrs)


# --------------------------------------------------------------------------- quantization

def _per_axis(x: Any, param: Any, axis: int, block_size: int = 0
              ) -> tuple[int, int, int, Any]:
    """(outer, C, inner, param as one value per C) for a per-tensor, per-axis or blocked
    parameter (a blocked one is repeated to one value per element: C = x.size)."""
    if block_size:
        p = np.repeat(np.asarray(param), block_size, axis=_axis(axis, x.ndim))
        p = p[tuple(slice(0, d) for d in x.shape)]
        return 1, int(x.size), 1, p.reshape(-1)
    p = np.asarray(param).reshape(-1)
    if p.size == 1 or x.ndim == 0:
        return 1, 1, int(x.size), p[:1]
    axis = _axis(axis, x.ndim)
    if p.size != x.shape[axis]:
        raise ValueError(f"a per-axis parameter of {p.size} values for axis {axis} of {x.shape}")
    return (int(np.prod(x.shape[:axis], dtype=np.int64)), x.shape[axis],
            int(np.prod(x.shape[axis + 1:], dtype=np.int64)), p)


def quantize_linear(rt: Any, x: Any, y_scale: Any, y_zero_point: Any = None, axis: int = 1,
                    block_size: int = 0, output_dtype: int = 0, saturate: int = 1) -> Any:
    if y_zero_point is not None:
        out = np.asarray(y_zero_point).dtype
    else:
        out = np.dtype(np.int8) if output_dtype == 3 else np.dtype(np.uint8)
    if out not in (np.dtype(np.uint8), np.dtype(np.int8)):
        raise TypeError(f"QuantizeLinear to {out}: uint8 and int8 only")
    x = _dense(x)
    y = np.empty(x.shape, out)
    if x.size == 0:
        return y
    outer, C, inner, scale = _per_axis(x, y_scale, axis, block_size)
    zp = None if y_zero_point is None else _dense(
        _per_axis(x, y_zero_point, axis, block_size)[3].astype(np.int32))
    rt.call("quantize", [x, _dense(scale.astype(np.float32)), zp], [y],
            (_dt(x), int(out == np.int8), outer, C, inner))
    return y


def dequantize_linear(rt: Any, x: Any, x_scale: Any, x_zero_point: Any = None, axis: int = 1,
                      block_size: int = 0, output_dtype: int = 0) -> Any:
    import ml_dtypes

    kinds = {np.dtype(np.uint8): 0, np.dtype(np.int8): 1, np.dtype(np.int32): 2}
    if x.dtype not in kinds:
        raise TypeError(f"DequantizeLinear of {x.dtype}: uint8, int8 and int32 only")
    scale_dt = np.asarray(x_scale).dtype
    outs = {np.dtype(np.float32): (np.float32, F32), np.dtype(np.float16): (np.float16, F16),
            np.dtype(ml_dtypes.bfloat16): (ml_dtypes.bfloat16, BF16)}
    if scale_dt not in outs:
        raise TypeError(f"DequantizeLinear with {scale_dt} scales")
    out_type, ydt = outs[scale_dt]
    x = _dense(x)
    y = np.empty(x.shape, out_type)
    if x.size == 0:
        return y
    outer, C, inner, scale = _per_axis(x, x_scale, axis, block_size)
    zp = None if x_zero_point is None else _dense(
        _per_axis(x, x_zero_point, axis, block_size)[3].astype(np.int32))
    rt.call("dequantize", [x, _dense(scale.astype(np.float32)), zp], [y],
            (kinds[x.dtype], ydt, outer, C, inner))
    return y


# --------------------------------------------------------------------------- data movement
# No arithmetic: numpy views and copies.

def identity(rt: Any, x: Any) -> Any:
    return x


def reshape(rt: Any, x: Any, shape: Any, allowzero: int = 0) -> Any:
    target = _ints(shape)
    out = [x.shape[i] if d == 0 and not allowzero else d for i, d in enumerate(target)]
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1], dtype=np.int64))
        out[out.index(-1)] = x.size // known if known else 0
    return np.reshape(x, out)


def flatten(rt: Any, x: Any, axis: int = 1) -> Any:
    axis = _axis(axis, x.ndim)
    return np.reshape(x, (int(np.prod(x.shape[:axis], dtype=np.int64)),
                          int(np.prod(x.shape[axis:], dtype=np.int64))))


def squeeze(rt: Any, x: Any, axes_in: Any = None, axes: Any = None) -> Any:
    chosen = _ints(axes_in) if axes_in is not None else axes
    if chosen is None:
        return np.reshape(x, [d for d in x.shape if d != 1])
    drop = {_axis(a, x.ndim) for a in chosen}
    return np.reshape(x, [d for i, d in enumerate(x.shape) if i not in drop])


def unsqueeze(rt: Any, x: Any, axes_in: Any = None, axes: Any = None) -> Any:
    chosen = _ints(axes_in) if axes_in is not None else list(axes)
    rank = x.ndim + len(chosen)
    add = {_axis(a, rank) for a in chosen}
    it = iter(x.shape)
    return np.reshape(x, [1 if i in add else next(it) for i in range(rank)])


def shape_op(rt: Any, x: Any, start: int = 0, end: int | None = None) -> Any:
    return np.asarray(x.shape[start:end], np.int64)


def transpose(rt: Any, x: Any, perm: Any = None) -> Any:
    return np.transpose(x, None if perm is None else list(perm))


def expand(rt: Any, x: Any, shape: Any) -> Any:
    out = np.broadcast_shapes(x.shape, tuple(_ints(shape)))
    return np.broadcast_to(x, out).copy()


def slice_op(rt: Any, x: Any, starts: Any, ends: Any, axes: Any = None, steps: Any = None) -> Any:
    starts, ends = _ints(starts), _ints(ends)
    axes = _ints(axes) if axes is not None else list(range(len(starts)))
    steps = _ints(steps) if steps is not None else [1] * len(starts)
    index = [slice(None)] * x.ndim
    for s, e, a, k in zip(starts, ends, axes, steps):
        if k == 0:
            raise ValueError("Slice step 0")
        a = _axis(a, x.ndim)
        lo, hi, k = slice(s, e, k).indices(x.shape[a])
        index[a] = slice(lo, hi if hi >= 0 else None, k)
    return x[tuple(index)]


def concat(rt: Any, *inputs: Any, axis: int = 0) -> Any:
    return np.concatenate(inputs, axis=axis)


def gather(rt: Any, x: Any, indices: Any, axis: int = 0) -> Any:
    return np.take(x, np.asarray(indices, np.int64), axis=_axis(axis, x.ndim))


def where(rt: Any, cond: Any, x: Any, y: Any) -> Any:
    return np.where(cond, x, y)


def cast(rt: Any, x: Any, to: int, saturate: int = 1) -> Any:
    from onnx import helper

    dst = np.dtype(helper.tensor_dtype_to_np_dtype(to))
    if dst == np.bool_:
        return np.asarray(x) != 0
    with np.errstate(over="ignore", invalid="ignore"):  # ONNX: out of range is inf or undefined
        return np.asarray(x).astype(dst)


def pad(rt: Any, x: Any, pads: Any, constant_value: Any = None, axes: Any = None,
        mode: str = "constant") -> Any:
    p = _ints(pads)
    rank = x.ndim
    chosen = [_axis(a, rank) for a in _ints(axes)] if axes is not None else list(range(rank))
    begins, ends = [0] * rank, [0] * rank
    for i, a in enumerate(chosen):
        begins[a], ends[a] = p[i], p[i + len(chosen)]
    # negative pads crop: slice first, then pad the rest
    crop = tuple(slice(-b if b < 0 else 0, x.shape[i] + e if e < 0 else None)
                 for i, (b, e) in enumerate(zip(begins, ends)))
    x = x[crop]
    widths = [(max(b, 0), max(e, 0)) for b, e in zip(begins, ends)]
    if mode == "constant":
        value = 0 if constant_value is None else np.asarray(constant_value).reshape(-1)[0]
        return np.pad(x, widths, mode="constant", constant_values=value)
    return np.pad(x, widths, mode={"reflect": "reflect", "edge": "edge", "wrap": "wrap"}[mode])
