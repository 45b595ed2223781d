"""Element-wise ops and quantization: one generated map kernel (elementwise.cl) each."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from backplane.runtimes.opencl import CL_TYPES, MAXR, mirror, state_of

from .common import (INT_LIMITS, broadcast_strides, cl_type, collapse, dense_strides, is_floating,
                     norm_axis, pad_rank, raw_type, scalar_from, view)


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
    cl_in = cl_in or [cl_type(a.dtype) for a in inputs]
    prelude = _prelude(cl_in, cl_out or cl_type(out_dtype), pt, body)
    ptype = np.float32 if pt == "float" else np.int64
    p = [ptype(params[0]), ptype(params[1])]
    bufs = [st.buf(a) for a in inputs] + [st.buf(inputs[0])] * (3 - len(inputs))
    if all(a.shape == out_shape or a.size == 1 for a in inputs):
        sizes = [a.size for a in inputs] + [1] * (3 - len(inputs))
        knl = st.kernel("elementwise", prelude, "map_contig")
        st.launch1d(knl, n, out.base_data, *bufs, np.int64(n), *map(np.int64, sizes), *p)
        return out
    strides = [broadcast_strides(a.shape, out_shape) for a in inputs]
    strides += [[0] * len(out_shape)] * (3 - len(inputs))
    dims, strides = collapse(list(out_shape), strides)
    table = (len(dims), *pad_rank(dims, 1), *(v for s in strides for v in pad_rank(s)), 0, 0, 0)
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
    dims, (s,) = collapse(list(out_shape), [list(strides)])
    table = (len(dims), *pad_rank(dims, 1), *pad_rank(s), *[0] * (2 * MAXR), base, 0, 0)
    raw = raw_type(x.dtype)
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
    if is_floating(x.dtype):
        return emap([x], x.dtype, _UNARY_FLOAT[op], params)
    return emap([x], x.dtype, _UNARY_INT[op], params, pt="long")


def gelu(x: Any, approximate: str = "none") -> Any:
    return unary("GeluTanh" if approximate == "tanh" else "Gelu", x)


def clip(x: Any, lo: Any = None, hi: Any = None, min: Any = None, max: Any = None) -> Any:
    """Clip; bounds from inputs (opset 11+) or attributes (older); an absent one is open."""
    lo = min if lo is None else float(mirror(lo).reshape(-1)[0]) if is_floating(x.dtype) \
        else int(mirror(lo).reshape(-1)[0])
    hi = max if hi is None else float(mirror(hi).reshape(-1)[0]) if is_floating(x.dtype) \
        else int(mirror(hi).reshape(-1)[0])
    if is_floating(x.dtype):
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
    table = _BINARY_FLOAT if is_floating(a.dtype) else _BINARY_INT
    return emap([a, b], a.dtype, table[op])


def where(cond: Any, x: Any, y: Any) -> Any:
    """Where on raw element bits: any element type of X and Y."""
    raw = raw_type(x.dtype)
    return emap([cond, x, y], x.dtype, "return a ? b : c;", cl_in=["uchar", raw, raw],
                cl_out=raw)


def cast(x: Any, to: int, saturate: int = 1) -> Any:
    from onnx import helper

    dst = np.dtype(helper.tensor_dtype_to_np_dtype(to))
    if str(dst) not in CL_TYPES:
        raise TypeError(f"Cast to {dst} has no OpenCL kernel")
    if dst == x.dtype:
        return strided_copy(x, x.shape, dense_strides(x.shape), 0)
    body = "return (TO)(a != 0);" if dst == np.bool_ else "return (TO)a;"
    return emap([x], dst, body)


def unary_params(op: str, names: tuple, defaults: tuple, x: Any, **attrs: Any) -> Any:
    """A unary op with float attributes (LeakyRelu alpha; HardSigmoid alpha, beta)."""
    params = tuple(float(attrs.get(n, d)) for n, d in zip(names, defaults))
    return unary(op, x, (params + (0.0, 0.0))[:2])


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
        zero_point = scalar_from(0, st, out_dtype)
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
        zero_point = scalar_from(0, st, x.dtype)
    scale, zero_point = _per_axis(x, scale, axis), _per_axis(x, zero_point, axis)
    return emap([x, scale, zero_point], np.float32, "return ((float)a - (float)c) * b;")


def _per_axis(x: Any, p: Any, axis: int) -> Any:
    """A per-axis parameter (1-D) reshaped to broadcast along ``axis`` of ``x``."""
    if p.ndim == 0 or p.size == 1:
        return p
    axis = norm_axis(axis, x.ndim)
    return view(p, [p.size] + [1] * (x.ndim - axis - 1))
