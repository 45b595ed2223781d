"""The OpenCL kernels' host side: one function per op, ``fn(*inputs, **attributes)``.

Inputs and outputs are dense, row-major :class:`pyopencl.array.Array` values from the
device's pool. Every function launches device code except the metadata-only ones
(Reshape, Flatten, Squeeze, Unsqueeze, Identity: a view of the same buffer; Shape: a host
computation uploaded as a small int64 array). Parameters that decide a launch (shapes,
axes, pads, indices, clip bounds) are read from the host copy small integer arrays carry
(see ``runtime.mirror``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyopencl.array as cla

from backplane.ops import pool_geometry, window_pads

from .runtime import CL_TYPES, MAXR, RAW_NUMPY, RAW_TYPES, gemm_cpu_prelude, mirror, state_of

FLOAT_MIN = {"float32": "-INFINITY"}
INT_LIMITS = {"int8": (-128, 127), "uint8": (0, 255), "int32": (-2 ** 31, 2 ** 31 - 1),
              "int64": (-2 ** 63, 2 ** 63 - 1), "int16": (-2 ** 15, 2 ** 15 - 1),
              "uint16": (0, 2 ** 16 - 1), "bool": (0, 1)}
ACT = {"none": 0, "relu": 1, "clip": 2, "gelu": 3, "gelu_tanh": 4}

# --------------------------------------------------------------------------- helpers


def _cl(dtype: Any) -> str:
    return CL_TYPES[str(np.dtype(dtype))]


def _raw(dtype: Any) -> str:
    return RAW_TYPES[np.dtype(dtype).itemsize]


def _is_float(dtype: Any) -> bool:
    return np.dtype(dtype).kind == "f"


def _strides(shape: tuple[int, ...]) -> list[int]:
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= int(d)
    return out[::-1]


def _norm_axis(axis: int, rank: int) -> int:
    if not -max(rank, 1) <= axis < max(rank, 1):
        raise ValueError(f"axis {axis} is out of range for rank {rank}")
    return axis % rank if rank else 0


def _collapse(dims: list[int], strides: list[list[int]]) -> tuple[list[int], list[list[int]]]:
    """Drop size-1 dimensions and merge neighbours that every operand walks contiguously."""
    keep = [i for i, d in enumerate(dims) if d != 1]
    out_dims: list[int] = []
    out_str: list[list[int]] = [[] for _ in strides]
    for i in keep:
        d = dims[i]
        if out_dims and all(o[-1] == s[i] * d for o, s in zip(out_str, strides)):
            out_dims[-1] *= d
            for o, s in zip(out_str, strides):
                o[-1] = s[i]
        else:
            out_dims.append(d)
            for o, s in zip(out_str, strides):
                o.append(s[i])
    if len(out_dims) > MAXR:
        raise ValueError(f"the OpenCL kernels index at most {MAXR} dimensions after merging "
                         f"contiguous ones; this operand needs {len(out_dims)}")
    return out_dims, out_str


def _pad(values: list[int], fill: int = 0) -> list[int]:
    return list(values) + [fill] * (MAXR - len(values))


def _broadcast_strides(shape: tuple[int, ...], out_shape: tuple[int, ...]) -> list[int]:
    """Element strides of a dense ``shape`` read as ``out_shape`` (0 where broadcast)."""
    st = _strides(shape)
    lead = len(out_shape) - len(shape)
    return [0 if i < lead or shape[i - lead] == 1 else st[i - lead]
            for i in range(len(out_shape))]


def _view(x: Any, shape: Any) -> Any:
    """The same buffer seen with another shape (no copy)."""
    shape = tuple(int(d) for d in shape)
    if int(np.prod(shape)) != x.size:
        raise ValueError(f"cannot view {x.shape} as {shape}")
    if x.size == 0 or x.base_data is None:
        out = state_of(x).empty(shape, x.dtype)
    else:
        out = cla.Array(x.queue, shape, x.dtype, data=x.base_data, offset=x.offset)
    host = getattr(x, "_host", None)
    if host is not None:
        out._host = host.reshape(shape)
    return out


def _host_ints(x: Any) -> list[int]:
    return [int(v) for v in np.asarray(mirror(x)).reshape(-1)]


def _scalar_from(x: Any, st: Any, dtype: Any) -> Any:
    """A one-element device array of ``dtype`` holding ``x`` (a Python number)."""
    return st.upload(np.asarray(x, dtype=dtype))


# --------------------------------------------------------------------------- element-wise

def _prelude(types: list[str], out: str, pt: str, body: str) -> str:
    types = (types + [types[0]] * 3)[:3]
    return (f"#define T0 {types[0]}\n#define T1 {types[1]}\n#define T2 {types[2]}\n"
            f"#define TO {out}\n#define PT {pt}\n"
            f"inline TO bp_op(T0 a, T1 b, T2 c, PT p0, PT p1) {{ {body} }}\n")


def emap(inputs: list[Any], out_dtype: Any, body: str, params: tuple = (0, 0), pt: str = "float",
         cl_in: list[str] | None = None, cl_out: str | None = None) -> Any:
    """Element-wise map over up to three broadcast inputs."""
    st = state_of(inputs[0])
    out_shape = tuple(np.broadcast_shapes(*[a.shape for a in inputs]))
    out = st.empty(out_shape, out_dtype)
    n = out.size
    if n == 0:
        return out
    cl_in = cl_in or [_cl(a.dtype) for a in inputs]
    prelude = _prelude(cl_in, cl_out or _cl(out_dtype), pt, body)
    ptype = np.float32 if pt == "float" else np.int64
    p = [ptype(params[0]), ptype(params[1])]
    bufs = [st.buf(a) for a in inputs] + [st.buf(inputs[0])] * (3 - len(inputs))
    if all(a.shape == out_shape or a.size == 1 for a in inputs):
        sizes = [a.size for a in inputs] + [1] * (3 - len(inputs))
        knl = st.kernel("elementwise", prelude, "map_contig")
        st.launch1d(knl, n, out.base_data, *bufs, np.int64(n), *map(np.int64, sizes), *p)
        return out
    strides = [_broadcast_strides(a.shape, out_shape) for a in inputs]
    strides += [[0] * len(out_shape)] * (3 - len(inputs))
    dims, strides = _collapse(list(out_shape), strides)
    table = (len(dims), *_pad(dims, 1), *(v for s in strides for v in _pad(s)), 0, 0, 0)
    knl = st.kernel("elementwise", prelude, "map_strided")
    st.launch1d(knl, n, out.base_data, *bufs, st.layout(table), np.int64(n), *p)
    return out


def strided_copy(x: Any, out_shape: tuple[int, ...], strides: list[int], base: int) -> Any:
    """Dense copy of a strided view of ``x`` (Transpose, Slice, Expand): raw bits."""
    st = state_of(x)
    out = st.empty(out_shape, x.dtype)
    n = out.size
    if n == 0:
        return out
    dims, (s,) = _collapse(list(out_shape), [list(strides)])
    table = (len(dims), *_pad(dims, 1), *_pad(s), *[0] * (2 * MAXR), base, 0, 0)
    raw = _raw(x.dtype)
    knl = st.kernel("elementwise", _prelude([raw], raw, "float", "return a;"), "map_strided")
    buf = st.buf(x)
    st.launch1d(knl, n, out.base_data, buf, buf, buf, st.layout(table), np.int64(n),
                np.float32(0), np.float32(0))
    return out


_UNARY_FLOAT = {
    "Abs": "return fabs(a);",
    "Neg": "return -a;",
    "Relu": "return a < 0.0f ? 0.0f : a;",
    "LeakyRelu": "return a < 0.0f ? a * p0 : a;",
    "Sigmoid": "return a >= 0.0f ? 1.0f / (1.0f + exp(-a)) : exp(a) / (1.0f + exp(a));",
    "Tanh": "return tanh(a);",
    "HardSigmoid": "return fmax(0.0f, fmin(1.0f, p0 * a + p1));",
    "HardSwish": "return a * fmax(0.0f, fmin(1.0f, a / 6.0f + 0.5f));",
    "Gelu": "return 0.5f * a * (1.0f + erf(a * 0.70710678118654752f));",
    "GeluTanh": ("return 0.5f * a * (1.0f + tanh(0.79788456080286536f * "
                 "(a + 0.044715f * a * a * a)));"),
    "Erf": "return erf(a);",
    "Sqrt": "return sqrt(a);",
    "Exp": "return exp(a);",
    "Log": "return log(a);",
    "Clip": "return a < p0 ? p0 : (a > p1 ? p1 : a);",
}
_UNARY_INT = {
    "Abs": "return a < 0 ? (TO)(-a) : a;",
    "Neg": "return (TO)(-a);",
    "Relu": "return a < 0 ? (TO)0 : a;",
    "Clip": "return a < p0 ? (TO)p0 : (a > p1 ? (TO)p1 : a);",
}


def unary(op: str, x: Any, params: tuple = (0, 0)) -> Any:
    """One element-wise op of one input; integer types where the op admits them."""
    if _is_float(x.dtype):
        return emap([x], x.dtype, _UNARY_FLOAT[op], params)
    return emap([x], x.dtype, _UNARY_INT[op], params, pt="long")


def gelu(x: Any, approximate: str = "none") -> Any:
    return unary("GeluTanh" if approximate == "tanh" else "Gelu", x)


def clip(x: Any, lo: Any = None, hi: Any = None, min: Any = None, max: Any = None) -> Any:
    """Clip; bounds from inputs (opset 11+) or attributes (older); an absent one is open."""
    lo = min if lo is None else float(mirror(lo).reshape(-1)[0]) if _is_float(x.dtype) \
        else int(mirror(lo).reshape(-1)[0])
    hi = max if hi is None else float(mirror(hi).reshape(-1)[0]) if _is_float(x.dtype) \
        else int(mirror(hi).reshape(-1)[0])
    if _is_float(x.dtype):
        lo = -math.inf if lo is None else lo
        hi = math.inf if hi is None else hi
    else:
        tmin, tmax = INT_LIMITS[str(x.dtype)]
        lo = tmin if lo is None else lo
        hi = tmax if hi is None else hi
    if lo > hi:  # the spec: every element becomes max
        lo = hi
    return unary("Clip", x, (lo, hi))


_BINARY_FLOAT = {"Add": "return a + b;", "Sub": "return a - b;", "Mul": "return a * b;",
                 "Div": "return a / b;", "Pow": "return pow(a, (float)b);"}
_BINARY_INT = {
    "Add": "return (TO)(a + b);", "Sub": "return (TO)(a - b);", "Mul": "return (TO)(a * b);",
    # Integer division truncates, as numpy's cast of the quotient does; x / 0 and MIN / -1
    # would trap on a CPU device, so they are defined here (0 and -x).
    "Div": "return b == 0 ? (TO)0 : (TO)(b == -1 ? -a : a / b);",
    "Pow": ("long r = 1, base = a, e = (long)b;"
            "if (e < 0) return (TO)(base == 1 ? 1 : (base == -1 ? ((e & 1) ? -1 : 1) : 0));"
            "while (e > 0) { if (e & 1) r *= base; base *= base; e >>= 1; } return (TO)r;"),
}


def binary(op: str, a: Any, b: Any) -> Any:
    """Add Sub Mul Div Pow with numpy broadcasting; the result has A's type."""
    table = _BINARY_FLOAT if _is_float(a.dtype) else _BINARY_INT
    return emap([a, b], a.dtype, table[op])


def where(cond: Any, x: Any, y: Any) -> Any:
    """Where on raw element bits: any element type of X and Y."""
    raw = _raw(x.dtype)
    return emap([cond, x, y], x.dtype, "return a ? b : c;", cl_in=["uchar", raw, raw],
                cl_out=raw)


def cast(x: Any, to: int, saturate: int = 1) -> Any:
    from onnx import helper

    dst = np.dtype(helper.tensor_dtype_to_np_dtype(to))
    if str(dst) not in CL_TYPES:
        raise TypeError(f"Cast to {dst} has no OpenCL kernel")
    if dst == x.dtype:
        return strided_copy(x, x.shape, _strides(x.shape), 0)
    body = "return (TO)(a != 0);" if dst == np.bool_ else "return (TO)a;"
    return emap([x], dst, body)


# --------------------------------------------------------------------------- quantization

def quantize_linear(x: Any, scale: Any, zero_point: Any = None, axis: int = 1,
                    block_size: int = 0, output_dtype: int = 0, saturate: int = 1) -> Any:
    """y = saturate(round_half_even(x / scale) + zero_point), per tensor or per axis."""
    from onnx import helper

    st = state_of(x)
    if zero_point is not None:
        out_dtype = zero_point.dtype
    elif output_dtype:
        out_dtype = np.dtype(helper.tensor_dtype_to_np_dtype(output_dtype))
    else:
        out_dtype = np.dtype(np.uint8)
    if str(out_dtype) not in ("int8", "uint8"):
        raise TypeError(f"QuantizeLinear to {out_dtype} has no OpenCL kernel")
    if zero_point is None:
        zero_point = _scalar_from(0, st, out_dtype)
    scale, zero_point = _per_axis(x, scale, axis), _per_axis(x, zero_point, axis)
    lo, hi = INT_LIMITS[str(out_dtype)]
    body = (f"float v = rint(a / b) + (float)c; "
            f"return (TO)fmin(fmax(v, {float(lo)}f), {float(hi)}f);")
    return emap([x, scale, zero_point], out_dtype, body)


def dequantize_linear(x: Any, scale: Any, zero_point: Any = None, axis: int = 1,
                      block_size: int = 0, output_dtype: int = 0) -> Any:
    """y = (x - zero_point) * scale, per tensor or per axis, float32 scales."""
    st = state_of(x)
    if scale.dtype != np.float32:
        raise TypeError(f"DequantizeLinear with {scale.dtype} scales has no OpenCL kernel "
                        f"(float32 only)")
    if zero_point is None:
        zero_point = _scalar_from(0, st, x.dtype)
    scale, zero_point = _per_axis(x, scale, axis), _per_axis(x, zero_point, axis)
    return emap([x, scale, zero_point], np.float32, "return ((float)a - (float)c) * b;")


def _per_axis(x: Any, p: Any, axis: int) -> Any:
    """A per-axis parameter (1-D) reshaped to broadcast along ``axis`` of ``x``."""
    if p.ndim == 0 or p.size == 1:
        return p
    axis = _norm_axis(axis, x.ndim)
    return _view(p, [p.size] + [1] * (x.ndim - axis - 1))


# --------------------------------------------------------------------------- GEMM

def gemm_launch(Y: Any, A: Any, B: Any, C: Any | None, offsets: list[tuple[int, int, int]],
                M: int, N: int, K: int, sam: int, sak: int, sbk: int, sbn: int, scm: int = 0,
                scn: int = 0, alpha: float = 1.0, beta: float = 1.0, act: int = 0,
                lo: float = 0.0, hi: float = 0.0) -> None:
    """Y[b] = act(alpha * A[b] @ B[b] + beta * C[b]) for every batch ``b`` of ``offsets``
    (element offsets of A, B and C per batch); Y dense [batch, M, N]."""
    st = state_of(Y)
    batch = len(offsets)
    if batch == 0 or M == 0 or N == 0:
        return
    if st.is_cpu:
        _gemm_cpu(st, Y, A, B, C, offsets, M, N, K, sam, sak, sbk, sbn, scm, scn, alpha, beta,
                  act, lo, hi)
        return
    tm, tn, tk, wgx, wgy = st.gemm_tiles()
    prelude = (f"#define TM {tm}\n#define TN {tn}\n#define TK {tk}\n#define WGX {wgx}\n"
               f"#define WGY {wgy}\n#define ACT {act}\n#define HAS_C {int(C is not None)}\n")
    knl = st.kernel("matmul", prelude, "gemm")
    table = tuple(v for o in offsets for v in o)
    gx = -(-N // (wgx * tn)) * wgx
    gy = -(-M // (wgy * tm)) * wgy
    cbuf = st.buf(C) if C is not None else st.buf(A)
    knl(st.queue, (gx, gy, batch), (wgx, wgy, 1), Y.base_data, st.buf(A), st.buf(B), cbuf,
        st.layout(table), np.int32(M), np.int32(N), np.int32(K), np.int64(sam), np.int64(sak),
        np.int64(sbk), np.int64(sbn), np.int64(scm), np.int64(scn), np.float32(alpha),
        np.float32(beta), np.float32(lo), np.float32(hi))


def _gemm_cpu(st: Any, Y: Any, A: Any, B: Any, C: Any | None, offsets: list, M: int, N: int,
              K: int, sam: int, sak: int, sbk: int, sbn: int, scm: int, scn: int,
              alpha: float, beta: float, act: int, lo: float, hi: float,
              packed: Any = None) -> None:
    """The CPU variant (matmul_cpu.cl): pack B into vector-width column blocks, then a
    register-blocked kernel without local memory or barriers."""
    rm, vw, lx, kb = st.cpu_gemm_blocks()
    nbw = 2 * vw
    prelude = gemm_cpu_prelude(rm, vw, act, int(C is not None), kb)
    batch = len(offsets)
    nblk = -(-N // nbw)
    per_batch = nblk * K * nbw
    table = st.layout(tuple(v for o in offsets for v in o))
    if packed is None:
        packed = st.empty((batch, max(per_batch, 1)), np.float32)
    elif per_batch:  # already packed, one block per batch
        per_batch = 0
    if per_batch:
        pack = st.kernel("matmul_cpu", prelude, "pack_b")
        local = st.local_1d
        pack(st.queue, (-(-per_batch // local) * local, batch), (local, 1), packed.base_data,
             st.buf(B), table, np.int32(N), np.int32(K), np.int64(sbk), np.int64(sbn),
             np.int32(nblk), np.int64(per_batch))
    knl = st.kernel("matmul_cpu", prelude, "gemm_cpu")
    cbuf = st.buf(C) if C is not None else st.buf(A)
    knl(st.queue, (-(-M // (rm * lx)) * lx, nblk, batch), (lx, 1, 1), Y.base_data, st.buf(A),
        packed.base_data, cbuf, table, np.int32(M), np.int32(N), np.int32(K), np.int64(sam),
        np.int64(sak), np.int64(scm), np.int64(scn), np.float32(alpha), np.float32(beta),
        np.float32(lo), np.float32(hi), np.int32(nblk))


def _batch_offsets(shapes: list[tuple[int, ...]], sizes: list[int]) -> tuple[tuple, list]:
    """Broadcast batch shape of operands with batch dims ``shapes`` and per-matrix element
    counts ``sizes`` (0: the operand is the same for every batch); offsets per batch."""
    batch = tuple(np.broadcast_shapes(*shapes)) if shapes else ()
    strides = [[s * size for s in _broadcast_strides(shape, batch)]
               for shape, size in zip(shapes, sizes)]
    offsets = []
    for idx in np.ndindex(*batch) if batch else [()]:
        offsets.append(tuple(sum(i * s for i, s in zip(idx, st)) for st in strides))
    return batch, offsets


def matmul(a: Any, b: Any, bias: Any = None, act: int = 0) -> Any:
    """numpy matmul semantics (1-D promotion, broadcast batch dimensions); optional bias
    (broadcast over rows) and activation in the epilogue."""
    st = state_of(a)
    a_shape = (1,) + a.shape if a.ndim == 1 else a.shape
    b_shape = b.shape + (1,) if b.ndim == 1 else b.shape
    M, K = a_shape[-2:]
    K2, N = b_shape[-2:]
    if K != K2:
        raise ValueError(f"MatMul of {a.shape} and {b.shape}: inner dimensions differ")
    batch, offs = _batch_offsets([a_shape[:-2], b_shape[:-2]], [M * K, K * N])
    out_shape = batch + (M, N)
    y = st.empty(out_shape, np.float32)
    scm = scn = 0
    if bias is not None:
        bshape = (1,) * (2 - bias.ndim) + bias.shape[-2:]
        bstr = _broadcast_strides(bshape, (M, N))
        scm, scn = bstr
    offsets = [(oa, ob, 0) for oa, ob in offs]
    gemm_launch(y, a, b, bias, offsets, M, N, K, K, 1, N, 1, scm, scn, act=act)
    final = batch + ((M,) if a.ndim > 1 else ()) + ((N,) if b.ndim > 1 else ())
    return _view(y, final) if final != out_shape else y


def gemm(a: Any, b: Any, c: Any = None, alpha: float = 1.0, beta: float = 1.0,
         transA: int = 0, transB: int = 0) -> Any:
    st = state_of(a)
    M, K = (a.shape[1], a.shape[0]) if transA else a.shape
    N = b.shape[0] if transB else b.shape[1]
    sam, sak = (1, M) if transA else (K, 1)
    sbk, sbn = (1, K) if transB else (N, 1)
    y = st.empty((M, N), np.float32)
    scm = scn = 0
    if c is not None:
        cshape = (1,) * (2 - c.ndim) + tuple(c.shape)
        scm, scn = _broadcast_strides(cshape, (M, N))
    gemm_launch(y, a, b, c, [(0, 0, 0)], M, N, K, sam, sak, sbk, sbn, scm, scn, alpha,
                beta if c is not None else 0.0)
    return y


def fused_matmul_bias_gelu(a: Any, b: Any, bias: Any, approximate: str = "none") -> Any:
    act = ACT["gelu_tanh"] if approximate == "tanh" else ACT["gelu"]
    if bias.ndim <= 1 or (bias.ndim == 2 and b.ndim >= 1):
        return matmul(a, b, bias, act)
    return gelu(binary("Add", matmul(a, b), bias), approximate)


def attention(q: Any, k: Any, v: Any, mask: Any = None, scale: float | None = None) -> Any:
    """Softmax(Q K^T * scale + mask) V: a GEMM with the mask in its epilogue, the softmax
    kernel, and a second GEMM."""
    st = state_of(q)
    sq, d = q.shape[-2:]
    sk = k.shape[-2]
    dv = v.shape[-1]
    scale = 1.0 / math.sqrt(d) if scale is None else float(scale)
    if mask is not None and mask.dtype == np.bool_:
        ninf = _scalar_from(-np.inf, st, np.float32)
        zero = _scalar_from(0.0, st, np.float32)
        mask = where(mask, zero, ninf)
    qb, kb = q.shape[:-2], k.shape[:-2]
    shapes, sizes = [qb, kb], [sq * d, sk * d]
    if mask is not None:
        mshape = (1,) * (4 - mask.ndim) + tuple(mask.shape)
        mstr = _broadcast_strides(mshape, tuple(np.broadcast_shapes(qb, kb)) + (sq, sk))
        batch, offs = _batch_offsets(shapes, sizes)
        bstr = mstr[:-2]
        offsets = [(oa, ob, sum(i * s for i, s in zip(idx, bstr)))
                   for (oa, ob), idx in zip(offs, np.ndindex(*batch))]
        scm, scn = mstr[-2:]
    else:
        batch, offs = _batch_offsets(shapes, sizes)
        offsets = [(oa, ob, 0) for oa, ob in offs]
        scm = scn = 0
    s = st.empty(batch + (sq, sk), np.float32)
    gemm_launch(s, q, k, mask, offsets, sq, sk, d, d, 1, 1, d, scm, scn, alpha=scale)
    p = softmax(s, axis=-1)
    return matmul(p, v) if dv else st.empty(batch + (sq, dv), np.float32)


# --------------------------------------------------------------------------- convolution

def _to3(values: list[int], fill: int) -> list[int]:
    return [fill] * (3 - len(values)) + list(values)


def conv(x: Any, w: Any, b: Any = None, auto_pad: str = "NOTSET", dilations: Any = None,
         group: int = 1, kernel_shape: Any = None, pads: Any = None, strides: Any = None,
         act: int = 0, lo: float = 0.0, hi: float = 0.0) -> Any:
    """Conv: depthwise direct kernel (one input channel per group), a direct GEMM for 1x1
    stride-1 unpadded kernels, im2col + GEMM otherwise; bias and activation fused."""
    st = state_of(x)
    nsp = x.ndim - 2
    if nsp < 1 or nsp > 3:
        raise ValueError(f"Conv of rank {x.ndim}: the OpenCL kernels take 1 to 3 spatial dims")
    N, C = x.shape[:2]
    Cout = w.shape[0]
    kernel = list(kernel_shape or w.shape[2:])
    strides = list(strides or [1] * nsp)
    dilations = list(dilations or [1] * nsp)
    spatial = list(x.shape[2:])
    p = window_pads(spatial, kernel, strides, dilations, pads, auto_pad)
    out_sp = [(size + p[i] + p[i + nsp] - ((k - 1) * d + 1)) // s + 1
              for i, (size, k, s, d) in enumerate(zip(spatial, kernel, strides, dilations))]
    G = int(group)
    Cg, Mg = C // G, Cout // G
    y = st.empty((N, Cout, *out_sp), np.float32)
    if y.size == 0:
        return y
    P = [N, G, Cg, *_to3(spatial, 1), *_to3(out_sp, 1), *_to3(kernel, 1), *_to3(strides, 1),
         *_to3(p[:nsp], 0), *_to3(dilations, 1), Mg]
    P_buf = _int32_table(st, P)
    ohw = int(np.prod(out_sp))
    kdim = Cg * int(np.prod(kernel))
    if Cg == 1:
        prelude = f"#define ACT {act}\n"
        knl = st.kernel("conv", prelude, "depthwise")
        st.launch1d(knl, y.size, y.base_data, st.buf(x), st.buf(w),
                    st.buf(b) if b is not None else st.buf(w), P_buf, np.int64(y.size),
                    np.int32(b is not None), np.float32(lo), np.float32(hi))
        return y
    direct = all(k == 1 for k in kernel) and all(s == 1 for s in strides) and not any(p)
    if direct:
        src, b_size = x, C * ohw
        offsets = [(g * Mg * kdim, n * b_size + g * Cg * ohw, g * Mg)
                   for n in range(N) for g in range(G)]
    else:
        pack = 2 * st.cpu_gemm_blocks()[1] if st.is_cpu else 0
        npos = -(-ohw // pack) * pack if pack else ohw
        src = st.empty((N * G, kdim, npos), np.float32)
        knl = st.kernel("conv", f"#define PACK {pack}\n", "im2col")
        local = min(st.local_1d, 64)
        knl(st.queue, (-(-npos // local) * local, N * G), (local, 1), src.base_data,
            st.buf(x), P_buf, np.int32(npos))
        offsets = [(g * Mg * kdim, (n * G + g) * kdim * npos, g * Mg)
                   for n in range(N) for g in range(G)]
        if pack:  # im2col wrote matmul_cpu's packed B: no second copy
            _gemm_cpu(st, y, w, src, b, offsets, Mg, ohw, kdim, kdim, 1, 0, 0, 1, 0, 1.0, 1.0,
                      act, lo, hi, packed=src)
            return y
    gemm_launch(y, w, src, b, offsets, Mg, ohw, kdim, kdim, 1, ohw, 1, 1, 0, act=act,
                lo=lo, hi=hi)
    return y


def _int32_table(st: Any, values: list[int]) -> Any:
    # The layout cache holds int64 tables; int32 ones are kept under a tagged key.
    import pyopencl as cl

    key = ("i32", *values)
    buf = st._layouts.get(key)
    if buf is None:
        host = np.asarray(values, np.int32)
        buf = cl.Buffer(st.ctx, cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR,
                        hostbuf=host)
        st._layouts[key] = buf
    return buf


def fused_conv_relu(x: Any, w: Any, b: Any = None, clip_min: float | None = None,
                    clip_max: float | None = None, **attrs: Any) -> Any:
    if clip_min is None and clip_max is None:
        return conv(x, w, b, act=ACT["relu"], **attrs)
    lo = -math.inf if clip_min is None else clip_min
    hi = math.inf if clip_max is None else clip_max
    return conv(x, w, b, act=ACT["clip"], lo=lo, hi=hi, **attrs)


# --------------------------------------------------------------------------- pooling

def pool(kind: str, x: Any, kernel_shape: Any, auto_pad: str = "NOTSET", ceil_mode: int = 0,
         dilations: Any = None, pads: Any = None, strides: Any = None,
         count_include_pad: int = 0, storage_order: int = 0, want_indices: bool = False) -> Any:
    st = state_of(x)
    nsp = x.ndim - 2
    kernel = list(kernel_shape)
    strides = list(strides or [1] * nsp)
    dilations = list(dilations or [1] * nsp)
    spatial = list(x.shape[2:])
    begins, ends, out_sp, _ = pool_geometry(spatial, kernel, strides, dilations, pads,
                                            auto_pad, ceil_mode)
    p = begins + ends
    shape = (*x.shape[:2], *out_sp)
    y = st.empty(shape, x.dtype)
    ind = st.empty(shape, np.int64) if want_indices else None
    if y.size == 0:
        return (y, ind) if want_indices else y
    P = [*_to3(spatial, 1), *_to3(out_sp, 1), *_to3(kernel, 1), *_to3(strides, 1),
         *_to3(p[:nsp], 0), *_to3(dilations, 1), *_to3(p[nsp:], 0), int(count_include_pad),
         int(storage_order)]
    is_float = _is_float(x.dtype)
    lowest = "-INFINITY" if is_float else str(INT_LIMITS[str(x.dtype)][0])
    prelude = (f"#define T {_cl(x.dtype)}\n#define IS_MAX {int(kind == 'max')}\n"
               f"#define IS_FLOAT {int(is_float)}\n#define LOWEST (({_cl(x.dtype)}){lowest})\n")
    knl = st.kernel("pool", prelude, "pool")
    st.launch1d(knl, y.size, y.base_data, ind.base_data if ind is not None else y.base_data,
                st.buf(x), st.layout(tuple(P)), np.int64(y.size), np.int32(want_indices))
    return (y, ind) if want_indices else y


def max_pool(x: Any, **attrs: Any) -> Any:
    return pool("max", x, want_indices=True, **attrs)


def average_pool(x: Any, **attrs: Any) -> Any:
    return pool("avg", x, **attrs)


def global_average_pool(x: Any) -> Any:
    return reduce("mean", x, list(range(2, x.ndim)), keepdims=1)


# --------------------------------------------------------------------------- reductions

def reduce(mode: str, x: Any, axes: list[int] | None, keepdims: int = 1,
           noop_with_empty_axes: int = 0) -> Any:
    st = state_of(x)
    rank = x.ndim
    if not axes:
        if noop_with_empty_axes:
            return strided_copy(x, x.shape, _strides(x.shape), 0)
        axes = list(range(rank))
    axes = sorted({_norm_axis(a, rank) for a in axes})
    kept = [i for i in range(rank) if i not in axes]
    strides = _strides(x.shape)
    out_shape = tuple(1 if i in axes else x.shape[i] for i in range(rank)) if keepdims \
        else tuple(x.shape[i] for i in kept)
    y = st.empty(out_shape, x.dtype)
    nout = y.size
    nred = int(np.prod([x.shape[i] for i in axes])) if axes else 1
    if nout == 0:
        return y
    kd, (ks,) = _collapse([x.shape[i] for i in kept], [[strides[i] for i in kept]])
    rd, (rs,) = _collapse([x.shape[i] for i in axes], [[strides[i] for i in axes]])
    if not rd:
        rd, rs = [1], [0]
    dt = str(x.dtype)
    is_float = _is_float(x.dtype)
    if mode == "max":
        acc = _cl(dt)
        init = "-INFINITY" if is_float else str(INT_LIMITS[dt][0]) + ("L" if dt == "int64" else "")
        if dt == "int64":
            init = "LONG_MIN"
    else:
        acc = "float" if is_float else "long"
        init = "0"
    if mode == "mean" and not is_float and nred == 0:
        raise ValueError("ReduceMean over no element")
    prelude = (f"#define T {_cl(dt)}\n#define TA {acc}\n#define TO {_cl(dt)}\n"
               f"#define MODE {dict(sum=0, mean=1, max=2)[mode]}\n#define INIT (({acc}){init})\n"
               f"#define KAHAN {int(is_float and mode != 'max')}\n")
    table = (len(kd), *_pad(kd, 1), *_pad(ks), len(rd), *_pad(rd, 1), *_pad(rs))
    knl = st.kernel("reduce", prelude, "reduce")
    st.launch1d(knl, nout, y.base_data, st.buf(x), st.layout(table), np.int64(nout),
                np.int64(nred))
    return y


def reduce_op(mode: str):
    def fn(x: Any, axes_in: Any = None, axes: Any = None, keepdims: int = 1,
           noop_with_empty_axes: int = 0) -> Any:
        chosen = _host_ints(axes_in) if axes_in is not None else axes
        return reduce(mode, x, list(chosen) if chosen is not None else None, keepdims,
                      noop_with_empty_axes)
    return fn


# --------------------------------------------------------------------------- normalisation

_NORM = "#define NORM 1\n"


def softmax(x: Any, axis: int = -1) -> Any:
    st = state_of(x)
    y = st.empty(x.shape, np.float32)
    if y.size == 0:
        return y
    axis = _norm_axis(axis, x.ndim)
    outer = int(np.prod(x.shape[:axis]))
    inner = int(np.prod(x.shape[axis + 1:]))
    rows = outer * inner
    knl = st.kernel("reduce", _NORM, "softmax")
    st.launch1d(knl, rows, y.base_data, st.buf(x), np.int64(rows), np.int64(x.shape[axis]),
                np.int64(inner))
    return y


def layer_norm(x: Any, scale: Any, bias: Any = None, axis: int = -1, epsilon: float = 1e-5,
               stash_type: int = 1) -> tuple[Any, Any, Any]:
    st = state_of(x)
    axis = _norm_axis(axis, x.ndim)
    rows = int(np.prod(x.shape[:axis]))
    n = int(np.prod(x.shape[axis:]))
    norm_shape = tuple(x.shape[axis:])
    if scale.shape != norm_shape:
        scale = strided_copy(scale, norm_shape, _broadcast_strides(scale.shape, norm_shape), 0)
    if bias is not None and bias.shape != norm_shape:
        bias = strided_copy(bias, norm_shape, _broadcast_strides(bias.shape, norm_shape), 0)
    y = st.empty(x.shape, np.float32)
    stat_shape = tuple(x.shape[:axis]) + (1,) * (x.ndim - axis)
    mean = st.empty(stat_shape, np.float32)
    rstd = st.empty(stat_shape, np.float32)
    if y.size:
        knl = st.kernel("reduce", _NORM, "layernorm")
        st.launch1d(knl, rows, y.base_data, mean.base_data, rstd.base_data, st.buf(x),
                    st.buf(scale), st.buf(bias) if bias is not None else st.buf(scale),
                    np.int64(rows), np.int64(n), np.float32(epsilon),
                    np.int32(bias is not None), np.int32(1))
    return y, mean, rstd


def batch_norm(x: Any, scale: Any, b: Any, mean: Any, var: Any, epsilon: float = 1e-5,
               momentum: float = 0.9, training_mode: int = 0) -> Any:
    st = state_of(x)
    y = st.empty(x.shape, np.float32)
    if y.size == 0:
        return y
    channels = x.shape[1] if x.ndim > 1 else 1
    inner = int(np.prod(x.shape[2:]))
    knl = st.kernel("reduce", _NORM, "batchnorm")
    st.launch1d(knl, y.size, y.base_data, st.buf(x), st.buf(scale), st.buf(b), st.buf(mean),
                st.buf(var), np.int64(y.size), np.int64(channels), np.int64(inner),
                np.float32(epsilon))
    return y


# --------------------------------------------------------------------------- shapes (views)

def identity(x: Any) -> Any:
    return _view(x, x.shape)


def reshape(x: Any, shape: Any, allowzero: int = 0) -> Any:
    target = _host_ints(shape)
    out = []
    for i, d in enumerate(target):
        out.append(x.shape[i] if d == 0 and not allowzero else d)
    if -1 in out:
        known = int(np.prod([d for d in out if d != -1]))
        out[out.index(-1)] = x.size // known if known else 0
    return _view(x, out)


def flatten(x: Any, axis: int = 1) -> Any:
    axis = axis + x.ndim if axis < 0 else axis
    return _view(x, (int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:]))))


def squeeze(x: Any, axes_in: Any = None, axes: Any = None) -> Any:
    chosen = _host_ints(axes_in) if axes_in is not None else axes
    if chosen is None:
        shape = [d for d in x.shape if d != 1]
    else:
        drop = {_norm_axis(a, x.ndim) for a in chosen}
        shape = [d for i, d in enumerate(x.shape) if i not in drop]
    return _view(x, shape)


def unsqueeze(x: Any, axes_in: Any = None, axes: Any = None) -> Any:
    chosen = _host_ints(axes_in) if axes_in is not None else list(axes)
    rank = x.ndim + len(chosen)
    add = {a + rank if a < 0 else a for a in chosen}
    it = iter(x.shape)
    return _view(x, [1 if i in add else next(it) for i in range(rank)])


def shape_op(x: Any, start: int = 0, end: int | None = None) -> Any:
    """Shape: computed on the host from the array's metadata, uploaded as int64."""
    return state_of(x).upload(np.asarray(x.shape[start:end], np.int64))


# --------------------------------------------------------------------------- data movement

def transpose(x: Any, perm: Any = None) -> Any:
    perm = list(perm) if perm is not None else list(range(x.ndim))[::-1]
    st = _strides(x.shape)
    return strided_copy(x, tuple(x.shape[p] for p in perm), [st[p] for p in perm], 0)


def expand(x: Any, shape: Any) -> Any:
    out_shape = tuple(np.broadcast_shapes(x.shape, tuple(_host_ints(shape))))
    return strided_copy(x, out_shape, _broadcast_strides(x.shape, out_shape), 0)


def slice_op(x: Any, starts: Any, ends: Any, axes: Any = None, steps: Any = None) -> Any:
    starts, ends = _host_ints(starts), _host_ints(ends)
    axes = _host_ints(axes) if axes is not None else list(range(len(starts)))
    steps = _host_ints(steps) if steps is not None else [1] * len(starts)
    strides = _strides(x.shape)
    out_shape, out_strides, base = list(x.shape), list(strides), 0
    for s, e, a, k in zip(starts, ends, axes, steps):
        a = _norm_axis(a, x.ndim)
        if k == 0:
            raise ValueError("Slice step 0")
        dim = x.shape[a]
        lo, hi, k = slice(s, e, k).indices(dim)
        n = len(range(lo, hi, k))
        out_shape[a] = n
        out_strides[a] = strides[a] * k
        if n:
            base += lo * strides[a]
    return strided_copy(x, tuple(out_shape), out_strides, base)


def concat(*inputs: Any, axis: int = 0) -> Any:
    st = state_of(inputs[0])
    axis = _norm_axis(axis, inputs[0].ndim)
    out_shape = list(inputs[0].shape)
    out_shape[axis] = sum(a.shape[axis] for a in inputs)
    y = st.empty(tuple(out_shape), inputs[0].dtype)
    ostr = _strides(tuple(out_shape))
    raw = _raw(y.dtype)
    knl = st.kernel("movement", f"#define RT {raw}\n#define MODE 0\n", "scatter_copy")
    at = 0
    for a in inputs:
        if a.size:
            dims, (s,) = _collapse(list(a.shape), [list(ostr)])
            # dims merged for the output strides must also be dense in the input: they are,
            # since both walk row-major and the input is dense.
            table = (len(dims), *_pad(dims, 1), *_pad(s), at * ostr[axis])
            st.launch1d(knl, a.size, y.base_data, st.buf(a), st.layout(table), np.int64(a.size))
        at += a.shape[axis]
    return y


def gather(x: Any, indices: Any, axis: int = 0) -> Any:
    st = state_of(x)
    axis = _norm_axis(axis, x.ndim)
    n_axis = x.shape[axis]
    idx = np.asarray(mirror(indices), np.int64)
    if idx.size and (idx.min() < -n_axis or idx.max() >= n_axis):
        bad = idx[(idx < -n_axis) | (idx >= n_axis)].reshape(-1)[0]
        raise IndexError(f"Gather index {bad} is out of range for axis {axis} of size {n_axis}")
    idx = np.where(idx < 0, idx + n_axis, idx)
    out_shape = x.shape[:axis] + idx.shape + x.shape[axis + 1:]
    y = st.empty(out_shape, x.dtype)
    if y.size == 0:
        return y
    dev_idx = st.upload(idx)
    inner = int(np.prod(x.shape[axis + 1:]))
    knl = st.kernel("movement", f"#define RT {_raw(x.dtype)}\n#define MODE 0\n", "gather")
    st.launch1d(knl, y.size, y.base_data, st.buf(x), st.buf(dev_idx), np.int64(y.size),
                np.int64(idx.size), np.int64(n_axis), np.int64(inner))
    return y


_PAD_MODES = {"constant": 0, "reflect": 1, "edge": 2, "wrap": 3}


def pad(x: Any, pads: Any, constant_value: Any = None, axes: Any = None,
        mode: str = "constant") -> Any:
    st = state_of(x)
    rank = x.ndim
    p = _host_ints(pads)
    chosen = [_norm_axis(a, rank) for a in _host_ints(axes)] if axes is not None \
        else list(range(rank))
    begins, ends = [0] * rank, [0] * rank
    for i, a in enumerate(chosen):
        begins[a], ends[a] = p[i], p[i + len(chosen)]
    out_shape = tuple(d + b + e for d, b, e in zip(x.shape, begins, ends))
    y = st.empty(out_shape, x.dtype)
    if y.size == 0:
        return y
    value = 0 if constant_value is None else np.asarray(mirror(constant_value)).reshape(-1)[0]
    raw_value = np.asarray(value, x.dtype).reshape(1).view(RAW_NUMPY[x.dtype.itemsize])[0]
    if rank > MAXR:
        raise ValueError(f"Pad of rank {rank}: at most {MAXR}")
    table = (rank, *_pad(list(out_shape), 1), *_pad(list(x.shape), 1),
             *_pad(_strides(x.shape)), *_pad(begins))
    raw = _raw(x.dtype)
    knl = st.kernel("movement", f"#define RT {raw}\n#define MODE {_PAD_MODES[mode]}\n", "pad")
    st.launch1d(knl, y.size, y.base_data, st.buf(x), st.layout(table), np.int64(y.size),
                raw_value)
    return y


def unary_params(op: str, names: tuple, defaults: tuple, x: Any, **attrs: Any) -> Any:
    """A unary op with float attributes (LeakyRelu alpha; HardSigmoid alpha, beta)."""
    params = tuple(float(attrs.get(n, d)) for n, d in zip(names, defaults))
    return unary(op, x, (params + (0.0, 0.0))[:2])


reduce_op_sum = reduce_op("sum")
reduce_op_mean = reduce_op("mean")
reduce_op_max = reduce_op("max")
