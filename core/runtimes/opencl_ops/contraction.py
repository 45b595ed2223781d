"""Contractions: the GEMM launcher, MatMul, Gemm, Conv, their fused forms and Attention."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from backplane.ops import window_pads
from backplane.runtimes.opencl import gemm_cpu_prelude, state_of

from .common import ACT, broadcast_strides, scalar_from, to3, view
from .elementwise import binary, gelu, where
from .reduction import softmax


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
    strides = [[s * size for s in broadcast_strides(shape, batch)]
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
        bstr = broadcast_strides(bshape, (M, N))
        scm, scn = bstr
    offsets = [(oa, ob, 0) for oa, ob in offs]
    gemm_launch(y, a, b, bias, offsets, M, N, K, K, 1, N, 1, scm, scn, act=act)
    final = batch + ((M,) if a.ndim > 1 else ()) + ((N,) if b.ndim > 1 else ())
    return view(y, final) if final != out_shape else y


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
        scm, scn = broadcast_strides(cshape, (M, N))
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
        ninf = scalar_from(-np.inf, st, np.float32)
        zero = scalar_from(0.0, st, np.float32)
        mask = where(mask, zero, ninf)
    qb, kb = q.shape[:-2], k.shape[:-2]
    shapes, sizes = [qb, kb], [sq * d, sk * d]
    if mask is not None:
        mshape = (1,) * (4 - mask.ndim) + tuple(mask.shape)
        mstr = broadcast_strides(mshape, tuple(np.broadcast_shapes(qb, kb)) + (sq, sk))
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
    P = [N, G, Cg, *to3(spatial, 1), *to3(out_sp, 1), *to3(kernel, 1), *to3(strides, 1),
         *to3(p[:nsp], 0), *to3(dilations, 1), Mg]
    P_buf = st.layout(tuple(P), "int32")
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


def fused_conv_relu(x: Any, w: Any, b: Any = None, clip_min: float | None = None,
                    clip_max: float | None = None, **attrs: Any) -> Any:
    if clip_min is None and clip_max is None:
        return conv(x, w, b, act=ACT["relu"], **attrs)
    lo = -math.inf if clip_min is None else clip_min
    hi = math.inf if clip_max is None else clip_max
    return conv(x, w, b, act=ACT["clip"], lo=lo, hi=hi, **attrs)
