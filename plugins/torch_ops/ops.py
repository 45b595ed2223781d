"""The torch op table's kernels: one function per op, ``fn(*inputs, **attributes)``.

Inputs and outputs are torch tensors on one device (``cpu``, or ``cuda`` for the CUDA and
ROCm builds of torch alike); optional inputs the node leaves empty arrive as ``None``, and
attributes the node does not set take ONNX's defaults from the signatures. The code is
device-agnostic: the same lines run on torch's CPU device in CI and on the GPU plugins'
devices, so that what the conformance suite checks on every commit is what a GPU runs.

Arithmetic happens in the tensor's own dtype (fp16 math on fp16 tensors), as a GPU would,
except where ONNX defines a wider computation (LayerNormalization's ``stash_type``,
DequantizeLinear's float32 product, exact integer products) or torch's CPU kernel sums
narrower than GPU libraries do (ConvTranspose); each such place says why.
Shape-like inputs (Reshape's shape, Slice's starts, Pad's pads, Resize's sizes ...) are
read to the host with ``.tolist()``: their values decide output shapes.

In a reduced-precision run (``compile_on`` with ``precision`` fp16 or bf16) ONNX's float
stands for the run's compute type: :data:`FLOAT` holds it, and the kernels that make float
tensors of their own choosing (Cast to float, LayerNormalization's statistics) read it.
"""

from __future__ import annotations

import contextvars
import math
import weakref
from typing import Any

import torch
import torch.nn.functional as F

from backplane.ops import pool_geometry, window_pads

#: The torch dtype ONNX's ``float`` (TensorProto code 1) stands for in the current run:
#: float32, or float16 / bfloat16 in a reduced-precision run. Set by the runner per run.
FLOAT: contextvars.ContextVar[torch.dtype] = contextvars.ContextVar(
    "backplane_torch_float", default=torch.float32)

#: ONNX TensorProto codes of the element types the table computes on.
ONNX_TYPES: dict[int, torch.dtype] = {
    1: torch.float32, 2: torch.uint8, 3: torch.int8, 4: torch.uint16, 5: torch.int16,
    6: torch.int32, 7: torch.int64, 9: torch.bool, 10: torch.float16, 11: torch.float64,
    16: torch.bfloat16}

_REDUCED = (torch.float16, torch.bfloat16)


def onnx_dtype(code: int) -> torch.dtype:
    """The torch dtype of ONNX element type ``code`` in this run (float: :data:`FLOAT`)."""
    if code == 1:
        return FLOAT.get()
    try:
        return ONNX_TYPES[code]
    except KeyError:
        raise TypeError(f"ONNX element type {code} has no torch kernel here; the table "
                        f"computes on {sorted(ONNX_TYPES)}") from None


#: Host copies of small constants, recorded by the runner as it uploads them (see
#: :func:`remember`): shape-like inputs are read on the host, and reading a GPU tensor costs
#: a device-to-host copy and a synchronisation per node per run. A recorded float32
#: constant also keeps its exact values where a reduced-precision run lowered the tensor.
#: Keyed by the tensor's id, with a weak reference to it (a tensor cannot be a weak
#: dictionary key: comparing two is element-wise); an entry goes when its tensor does.
HOST_COPIES: dict[int, tuple[Any, list[Any]]] = {}
#: Constants up to this many elements get a host copy.
HOST_COPY_ELEMENTS = 64


def remember(tensor: Any, values: list[Any]) -> None:
    """Record ``values`` (flat) as the host copy of the constant ``tensor``."""
    key = id(tensor)
    HOST_COPIES[key] = (weakref.ref(tensor), values)
    weakref.finalize(tensor, HOST_COPIES.pop, key, None)


def _host(t: Any) -> tuple[list[Any], bool]:
    """A shape-like input's values on the host, and whether they are exact (a recorded
    constant, or a tensor not lowered to fp16/bf16)."""
    entry = HOST_COPIES.get(id(t))
    if entry is not None and entry[0]() is t:
        return entry[1], True
    return t.reshape(-1).tolist(), t.dtype not in _REDUCED


def _ints(t: Any) -> list[int]:
    """A shape-like input as Python ints (its values decide a shape, so they go to the host)."""
    return [int(v) for v in _host(t)[0]]


def _floats(t: Any) -> list[float]:
    return [float(v) for v in _host(t)[0]]


def _axis(axis: int, rank: int) -> int:
    if not -max(rank, 1) <= axis < max(rank, 1):
        raise ValueError(f"axis {axis} is out of range for rank {rank}")
    return axis % rank if rank else 0


def _iinfo(dtype: torch.dtype) -> Any:
    return torch.iinfo(dtype)


# --------------------------------------------------------------------------- element-wise

# Ops torch implements with ONNX's semantics as they are (none takes an attribute).
add, sub, mul = torch.add, torch.sub, torch.mul
sqrt, exp, log, erf = torch.sqrt, torch.exp, torch.log, torch.erf
abs_, neg, relu, sigmoid, tanh = torch.abs, torch.neg, torch.relu, torch.sigmoid, torch.tanh
where = torch.where


def div(a: Any, b: Any) -> Any:
    """Float division; integers truncate toward zero, as ONNX's (C's) integer division."""
    if a.is_floating_point():
        return torch.div(a, b)
    return torch.div(a, b, rounding_mode="trunc")


def pow_(a: Any, b: Any) -> Any:
    """The exponent has its own type (T1); the result has the base's."""
    return torch.pow(a, b).to(a.dtype)


def leaky_relu(x: Any, alpha: float = 0.01) -> Any:
    return F.leaky_relu(x, alpha)


def hard_sigmoid(x: Any, alpha: float = 0.2, beta: float = 0.5) -> Any:
    return torch.clamp(x * alpha + beta, 0.0, 1.0)


def hard_swish(x: Any) -> Any:
    """x * HardSigmoid(x, 1/6, 0.5), ONNX's definition: torch's hardswish forms x * 6 first,
    which overflows for |x| above max / 6."""
    return x * hard_sigmoid(x, 1 / 6, 0.5)


def gelu(x: Any, approximate: str = "none") -> Any:
    return F.gelu(x, approximate=approximate)


def clip(x: Any, lo: Any = None, hi: Any = None) -> Any:
    """Clip to tensor bounds (opset 11+); an absent bound is open. The bounds stay on the
    device (no host read)."""
    if lo is None and hi is None:
        return x
    lo = None if lo is None else lo.reshape(())
    hi = None if hi is None else hi.reshape(())
    return torch.clamp(x, min=lo, max=hi)


def cast(x: Any, to: int, saturate: int = 1) -> Any:
    """Conversion as numpy's ``astype``: floats to integers truncate toward zero, any
    nonzero (NaN included) is True."""
    return x.to(onnx_dtype(to))


# --------------------------------------------------------------------------- linear algebra

#: Bound on the elements of one temporary of the integer matrix product.
_INT_CHUNK = 1 << 24


def _int_matmul(a: Any, b: Any) -> Any:
    """Integer matmul with numpy's semantics (1-D promotion, broadcast batches, wrapping
    arithmetic in the operands' type), as broadcast products summed over K: torch's GPU
    BLAS has no integer GEMM, and this runs the same everywhere. Rows are done in chunks
    so that the M x K x N temporary stays bounded."""
    dtype = torch.promote_types(a.dtype, b.dtype)
    squeeze_a, squeeze_b = a.ndim == 1, b.ndim == 1
    a = a.unsqueeze(0) if squeeze_a else a
    b = b.unsqueeze(-1) if squeeze_b else b
    a, b = a.to(dtype), b.to(dtype)
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    rows = max(1, _INT_CHUNK // max(1, k * n * max(1, math.prod(batch))))
    bt = b.unsqueeze(-3)  # [..., 1, K, N]
    parts = [(a[..., i:i + rows, :].unsqueeze(-1) * bt).sum(-2, dtype=dtype)
             for i in range(0, m, rows)]
    y = torch.cat(parts, -2) if parts else a.new_zeros((*batch, 0, n))
    if squeeze_a:
        y = y.squeeze(-2)
    if squeeze_b:
        y = y.squeeze(-1)
    return y


def matmul(a: Any, b: Any) -> Any:
    if a.is_floating_point():
        return torch.matmul(a, b)
    return _int_matmul(a, b)


def gemm(a: Any, b: Any, c: Any = None, alpha: float = 1.0, beta: float = 1.0,
         transA: int = 0, transB: int = 0) -> Any:
    a = a.t() if transA else a
    b = b.t() if transB else b
    if a.is_floating_point():
        if c is not None and beta != 0:
            return torch.addmm(c, a, b, beta=beta, alpha=alpha)
        y = torch.matmul(a, b)
        return y * alpha if alpha != 1 else y
    y = _int_matmul(a, b)
    if alpha == 1 and (c is None or beta in (0, 1)):
        return y + c if c is not None and beta == 1 else y
    # ONNX scales integer products by float alpha and beta, then casts back (truncating).
    out = y.double() * alpha
    if c is not None and beta != 0:
        out = out + c.double() * beta
    return out.to(y.dtype)


def matmul_integer(a: Any, b: Any, a_zero_point: Any = None, b_zero_point: Any = None) -> Any:
    """int32 products of (A - a_zero_point) and (B - b_zero_point); per-tensor, per-row (A)
    and per-column (B) zero points. Computed in float64: exact for K below 2^37 (each
    product is at most 255 * 255), runs on every device's BLAS, and never meets TF32."""
    af, bf = a.double(), b.double()
    if a_zero_point is not None:
        za = a_zero_point.double()
        if za.ndim == 1 and a.ndim >= 2:  # per row: one zero point per row of A
            za = za.unsqueeze(-1)
        af = af - za
    if b_zero_point is not None:
        bf = bf - b_zero_point.double()
    return torch.matmul(af, bf).to(torch.int32)


# --------------------------------------------------------------------------- convolutions

def _spatial_attrs(x: Any, kernel: list[int], strides: Any, dilations: Any, pads: Any,
                   auto_pad: str) -> tuple[list[int], list[int], list[int], list[int]]:
    nsp = len(kernel)
    strides = list(strides) if strides else [1] * nsp
    dilations = list(dilations) if dilations else [1] * nsp
    p = window_pads(x.shape[2:], kernel, strides, dilations, pads, auto_pad)
    return strides, dilations, p[:nsp], p[nsp:]


def _pad_spatial(x: Any, begins: list[int], ends: list[int], value: float = 0.0) -> Any:
    """``x`` padded (or cropped, for negative pads) on its spatial axes."""
    if not any(begins) and not any(ends):
        return x
    widths = []
    for b, e in zip(reversed(begins), reversed(ends)):  # F.pad: last axis first
        widths += [b, e]
    return F.pad(x, widths, value=value)


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def conv(x: Any, w: Any, b: Any = None, auto_pad: str = "NOTSET", dilations: Any = None,
         group: int = 1, kernel_shape: Any = None, pads: Any = None, strides: Any = None) -> Any:
    """1-D to 3-D convolution; asymmetric pads become an explicit pad of the input."""
    kernel = list(kernel_shape) if kernel_shape else list(w.shape[2:])
    strides, dilations, begins, ends = _spatial_attrs(x, kernel, strides, dilations, pads,
                                                      auto_pad)
    if begins == ends:
        padding = begins
    else:
        x, padding = _pad_spatial(x, begins, ends), [0] * len(kernel)
    return _CONV[len(kernel)](x, w, b, stride=strides, padding=padding, dilation=dilations,
                              groups=group)


def conv_transpose(x: Any, w: Any, b: Any = None, auto_pad: str = "NOTSET",
                   dilations: Any = None, group: int = 1, kernel_shape: Any = None,
                   output_padding: Any = None, output_shape: Any = None, pads: Any = None,
                   strides: Any = None) -> Any:
    """ONNX ConvTranspose: the uncropped transposed convolution, then the window ONNX keeps
    (pads cropped; an ``output_padding`` or ``output_shape`` beyond it is zeros), then the
    bias. The window follows the specification, as ``plugins/reference/fixes.py`` does."""
    kernel = list(kernel_shape) if kernel_shape else list(w.shape[2:])
    nsp = len(kernel)
    strides = list(strides) if strides else [1] * nsp
    dilations = list(dilations) if dilations else [1] * nsp
    output_padding = list(output_padding) if output_padding else [0] * nsp
    spatial = list(x.shape[2:])
    full = [strides[i] * (spatial[i] - 1) + output_padding[i] + (kernel[i] - 1) * dilations[i]
            + 1 for i in range(nsp)]
    if output_shape:
        out_sp = list(output_shape)[-nsp:]
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out_sp = [spatial[i] * strides[i] for i in range(nsp)]
    else:
        out_sp = None
    if out_sp is not None:
        totals = [full[i] - out_sp[i] for i in range(nsp)]
        # The spec: SAME_UPPER puts the smaller half of the total padding first, NOTSET
        # (output_shape) and SAME_LOWER the larger.
        begins = [t // 2 if auto_pad == "SAME_UPPER" else t - t // 2 for t in totals]
    else:
        p = list(pads) if pads and auto_pad != "VALID" else [0] * (2 * nsp)
        begins = p[:nsp]
        out_sp = [full[i] - p[i] - p[nsp + i] for i in range(nsp)]
    if x.device.type == "cpu" and x.dtype in _REDUCED:
        # torch's CPU transposed convolution (slow_conv_transpose) accumulates fp16 in
        # fp16, 4x the error of a float32 sum on a 3x3x3 kernel; GPU libraries (cuDNN,
        # MIOpen) accumulate in float32, as ONNX's tolerances assume. So on the CPU the
        # sums are formed in float32, each output rounded once to the input's type.
        y = _CONV_T[nsp](x.float(), w.float(), None, stride=strides, padding=0,
                         dilation=dilations, groups=group).to(x.dtype)
    else:
        y = _CONV_T[nsp](x, w, None, stride=strides, padding=0, dilation=dilations,
                         groups=group)
    made = list(y.shape[2:])  # without output_padding
    y = _pad_spatial(y, [-v for v in begins],
                     [begins[i] + out_sp[i] - made[i] for i in range(nsp)])
    if b is not None:
        y = y + b.reshape((1, -1) + (1,) * nsp)
    return y


def fused_conv_relu(x: Any, w: Any, b: Any = None, clip_min: float | None = None,
                    clip_max: float | None = None, **conv_attrs: Any) -> Any:
    """backplane::FusedConvRelu: Conv, then Relu, or Clip when a bound is set."""
    y = conv(x, w, b, **conv_attrs)
    if clip_min is None and clip_max is None:
        return torch.relu(y)
    return torch.clamp(y, min=clip_min, max=clip_max)


# --------------------------------------------------------------------------- pooling

def _pool_geometry(x: Any, kernel: list[int], strides: Any, pads: Any, dilations: Any,
                   ceil_mode: int, auto_pad: str) -> tuple[list[int], list[int], list[int],
                                                          list[int], list[int], list[int]]:
    """(strides, dilations, begin pads, end pads, extra end pads, output sizes) of a pool,
    as ONNX defines them: with ``ceil_mode`` a last partial window counts unless it would
    start in the end padding; ``extra`` pads the input so that window is whole."""
    nsp = len(kernel)
    strides = list(strides) if strides else [1] * nsp
    dilations = list(dilations) if dilations else [1] * nsp
    begins, ends, out, extra = pool_geometry(x.shape[2:], kernel, strides, dilations, pads,
                                             auto_pad, ceil_mode)
    return strides, dilations, begins, ends, extra, out


_MAX_POOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


def max_pool(x: Any, kernel_shape: Any, auto_pad: str = "NOTSET", ceil_mode: int = 0,
             dilations: Any = None, pads: Any = None, storage_order: int = 0,
             strides: Any = None) -> tuple[Any, Any]:
    """MaxPool and its Indices: the input padded explicitly with the type's lowest value
    (so asymmetric pads and ONNX's ceil rule need nothing from torch's own padding), then
    torch's max pool; torch's indices into the padded image become ONNX's flat indices
    into the unpadded input (row-major, or column-major per image with storage_order=1)."""
    kernel = list(kernel_shape)
    nsp = len(kernel)
    strides, dilations, begins, ends, extra, _ = _pool_geometry(
        x, kernel, strides, pads, dilations, ceil_mode, auto_pad)
    low = -math.inf if x.is_floating_point() else _iinfo(x.dtype).min
    xp = _pad_spatial(x, begins, [e + a for e, a in zip(ends, extra)], low)
    y, where = _MAX_POOL[nsp](xp, kernel, strides, 0, dilations, return_indices=True)
    padded, spatial = list(xp.shape[2:]), list(x.shape[2:])
    flat = torch.zeros_like(where)
    rest = where
    coords = []
    for size in reversed(padded):
        coords.append(rest % size)
        rest = rest // size
    coords.reverse()
    order = range(nsp - 1, -1, -1) if storage_order else range(nsp)
    for i in order:
        flat = flat * spatial[i] + (coords[i] - begins[i])
    image = math.prod(spatial)
    offsets = torch.arange(x.shape[0] * x.shape[1], device=x.device, dtype=torch.int64)
    offsets = (offsets * image).reshape(x.shape[:2] + (1,) * nsp)
    return y, flat + offsets


def average_pool(x: Any, kernel_shape: Any, auto_pad: str = "NOTSET", ceil_mode: int = 0,
                 count_include_pad: int = 0, dilations: Any = None, pads: Any = None,
                 strides: Any = None) -> Any:
    """AveragePool as a depthwise convolution with a kernel of ones over the explicitly
    padded input (torch's avg_pool has no dilations, and no 3-D fp16 kernel on the CPU),
    divided by the count of the elements each window averages: the input's only, or the
    pads' too with ``count_include_pad``, never the extra end of a ceil-mode window."""
    kernel = list(kernel_shape)
    nsp = len(kernel)
    strides, dilations, begins, ends, extra, _ = _pool_geometry(
        x, kernel, strides, pads, dilations, ceil_mode, auto_pad)
    c = x.shape[1]
    xp = _pad_spatial(x, begins, [e + a for e, a in zip(ends, extra)])
    ones = torch.ones((c, 1, *kernel), dtype=x.dtype, device=x.device)
    total = _CONV[nsp](xp, ones, None, stride=strides, dilation=dilations, groups=c)
    if count_include_pad:
        region = torch.ones([1, 1] + [s + b + e for s, b, e in zip(x.shape[2:], begins, ends)],
                            device=x.device)
        region = _pad_spatial(region, [0] * nsp, extra)
    else:
        region = torch.ones([1, 1, *x.shape[2:]], device=x.device)
        region = _pad_spatial(region, begins, [e + a for e, a in zip(ends, extra)])
    count = _CONV[nsp](region, torch.ones((1, 1, *kernel), device=x.device), None,
                       stride=strides, dilation=dilations)
    return total / count.to(x.dtype)


def global_average_pool(x: Any) -> Any:
    return x.mean(dim=tuple(range(2, x.ndim)), keepdim=True)


# --------------------------------------------------------------------------- normalisation

def batch_norm(x: Any, scale: Any, b: Any, mean: Any, var: Any, epsilon: float = 1e-5,
               momentum: float = 0.9, training_mode: int = 0) -> Any:
    """Inference-mode BatchNormalization (torch's, which takes float32 statistics with an
    fp16 or bf16 input, as cuDNN does)."""
    return F.batch_norm(x, mean, var, scale, b, training=False, eps=epsilon)


def layer_norm(x: Any, scale: Any, bias: Any = None, axis: int = -1, epsilon: float = 1e-5,
               stash_type: int = 1) -> tuple[Any, Any, Any]:
    """Mean, variance and the normalised values in float32 (``stash_type`` 1: ONNX computes
    them wider than an fp16 input), and the scale and bias applied in float32 too, rounded
    once to the input's type, as torch's fused layer_norm kernels do on GPUs (ONNX's body
    applies them in the input's type, whose two roundings miss the oracle by up to 4e-3
    on fp16 rows of 1,025 where the result lands near zero). Mean and InvStdDev are float
    outputs."""
    axis = _axis(axis, x.ndim)
    dims = tuple(range(axis, x.ndim))
    xf = x.float()
    mean = xf.mean(dim=dims, keepdim=True)
    d = xf - mean
    inv = torch.rsqrt((d * d).mean(dim=dims, keepdim=True) + epsilon)
    y = d * inv * scale.float()
    if bias is not None:
        y = y + bias.float()
    return y.to(x.dtype), mean.to(FLOAT.get()), inv.to(FLOAT.get())


def softmax(x: Any, axis: int = -1) -> Any:
    return torch.softmax(x, dim=_axis(axis, x.ndim))


# --------------------------------------------------------------------------- reductions

def _reduce_axes(x: Any, axes: Any, noop_with_empty_axes: int) -> list[int] | None:
    """The axes to reduce, or None for no reduction at all."""
    found = _ints(axes) if axes is not None else []
    if not found:
        return None if noop_with_empty_axes else list(range(x.ndim))
    return sorted({_axis(a, x.ndim) for a in found})


def _empty_reduction(x: Any, dims: list[int], keepdims: int, value: Any) -> Any:
    shape = [1 if i in dims else d for i, d in enumerate(x.shape)] if keepdims else \
        [d for i, d in enumerate(x.shape) if i not in dims]
    return torch.full(shape, value, dtype=x.dtype, device=x.device)


def reduce_sum(x: Any, axes: Any = None, keepdims: int = 1, noop_with_empty_axes: int = 0) -> Any:
    dims = _reduce_axes(x, axes, noop_with_empty_axes)
    if dims is None:
        return x
    if not dims:  # a scalar over all of its (no) axes
        return x
    return x.sum(dim=dims, keepdim=bool(keepdims), dtype=x.dtype)


def reduce_mean(x: Any, axes: Any = None, keepdims: int = 1,
                noop_with_empty_axes: int = 0) -> Any:
    """Floats: torch's mean. Integers: the sum divided by the count, truncated, as ONNX's
    mean of integers cast back to their type."""
    dims = _reduce_axes(x, axes, noop_with_empty_axes)
    if dims is None:
        return x
    if not dims:
        return x
    if x.is_floating_point():
        return x.mean(dim=dims, keepdim=bool(keepdims))
    count = math.prod(x.shape[i] for i in dims)
    total = x.sum(dim=dims, keepdim=bool(keepdims), dtype=x.dtype)
    return torch.div(total, count, rounding_mode="trunc")


def reduce_max(x: Any, axes: Any = None, keepdims: int = 1, noop_with_empty_axes: int = 0) -> Any:
    """The maximum; over an empty set, the identity (-inf, the type's minimum, False)."""
    dims = _reduce_axes(x, axes, noop_with_empty_axes)
    if dims is None:
        return x
    if not dims:
        return x
    if any(x.shape[i] == 0 for i in dims):
        low = (False if x.dtype == torch.bool else -math.inf if x.is_floating_point()
               else _iinfo(x.dtype).min)
        return _empty_reduction(x, dims, keepdims, low)
    if x.dtype == torch.bool:
        return x.any(dim=tuple(dims), keepdim=bool(keepdims))
    return torch.amax(x, dim=dims, keepdim=bool(keepdims))


# --------------------------------------------------------------------------- shapes

def reshape(x: Any, shape: Any, allowzero: int = 0) -> Any:
    target = _ints(shape)
    if not allowzero:  # 0 copies the input's dimension
        target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
    return x.reshape(target)


def flatten(x: Any, axis: int = 1) -> Any:
    axis = axis + x.ndim if axis < 0 else axis
    if not 0 <= axis <= x.ndim:
        raise ValueError(f"Flatten axis {axis} is out of range for rank {x.ndim}")
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


def squeeze(x: Any, axes: Any = None) -> Any:
    if axes is None:
        return x.reshape([d for d in x.shape if d != 1])
    drop = {_axis(a, x.ndim) for a in _ints(axes)}
    for a in drop:
        if x.shape[a] != 1:
            raise ValueError(f"Squeeze axis {a} has size {x.shape[a]}, not 1")
    return x.reshape([d for i, d in enumerate(x.shape) if i not in drop])


def unsqueeze(x: Any, axes: Any) -> Any:
    found = _ints(axes)
    rank = x.ndim + len(found)
    new = {_axis(a, rank) for a in found}
    dims = iter(x.shape)
    return x.reshape([1 if i in new else next(dims) for i in range(rank)])


def transpose(x: Any, perm: Any = None) -> Any:
    return x.permute(list(perm) if perm is not None else list(range(x.ndim))[::-1])


def expand(x: Any, shape: Any) -> Any:
    return x.expand(torch.broadcast_shapes(x.shape, tuple(_ints(shape))))


def shape_of(x: Any, start: int = 0, end: int | None = None) -> Any:
    return torch.tensor(list(x.shape)[start:end], dtype=torch.int64, device=x.device)


def concat(*inputs: Any, axis: int) -> Any:
    return torch.cat(inputs, dim=_axis(axis, inputs[0].ndim))


def slice_(x: Any, starts: Any, ends: Any, axes: Any = None, steps: Any = None) -> Any:
    """ONNX Slice: starts and ends clamped per the step's sign; positive steps are a view,
    negative ones a gather (torch slices have no negative steps)."""
    starts, ends = _ints(starts), _ints(ends)
    axes = [_axis(a, x.ndim) for a in _ints(axes)] if axes is not None else \
        list(range(len(starts)))
    steps = _ints(steps) if steps is not None else [1] * len(starts)
    index: list[Any] = [slice(None)] * x.ndim
    gathers = []
    for a, start, end, step in zip(axes, starts, ends, steps):
        n = x.shape[a]
        if step == 0:
            raise ValueError("Slice step must not be 0")
        start = start + n if start < 0 else start
        end = end + n if end < 0 else end
        if step > 0:
            index[a] = slice(min(max(start, 0), n), min(max(end, 0), n), step)
        else:
            start, end = min(max(start, 0), n - 1), min(max(end, -1), n - 1)
            gathers.append((a, range(start, end, step)))
    y = x[tuple(index)]
    for a, positions in gathers:
        idx = torch.tensor(list(positions), dtype=torch.int64, device=x.device)
        y = y.index_select(a, idx)
    return y


def gather(x: Any, indices: Any, axis: int = 0) -> Any:
    """Gather with negative indices. Out-of-range indices raise here: on a GPU they would
    be a device-side assert that poisons the whole context."""
    axis = _axis(axis, x.ndim)
    n = x.shape[axis]
    idx = indices.to(torch.int64).reshape(-1)
    if idx.numel() and bool(((idx < -n) | (idx >= n)).any()):
        bad = idx[(idx < -n) | (idx >= n)][0].item()
        raise IndexError(f"Gather index {bad} is out of range for axis {axis} of size {n}")
    idx = torch.where(idx < 0, idx + n, idx)
    y = x.index_select(axis, idx)
    return y.reshape(x.shape[:axis] + indices.shape + x.shape[axis + 1:])


def pad(x: Any, pads: Any, constant_value: Any = None, axes: Any = None,
        mode: str = "constant") -> Any:
    """ONNX Pad on any axes, any element type: negative pads crop first; constant mode
    writes the input into a filled tensor, edge/reflect/wrap gather along each axis."""
    p = _ints(pads)
    rank = x.ndim
    on = [_axis(a, rank) for a in _ints(axes)] if axes is not None else list(range(rank))
    if len(p) != 2 * len(on):
        raise ValueError(f"Pad has {len(p)} pads for {len(on)} axes")
    begins, ends = [0] * rank, [0] * rank
    for i, a in enumerate(on):
        begins[a], ends[a] = p[i], p[len(on) + i]
    for a in range(rank):  # crop
        lo, hi = max(-begins[a], 0), x.shape[a] - max(-ends[a], 0)
        if lo or hi != x.shape[a]:
            x = x.narrow(a, lo, max(hi - lo, 0))
    begins, ends = [max(b, 0) for b in begins], [max(e, 0) for e in ends]
    if not any(begins) and not any(ends):
        return x
    if mode == "constant":
        shape = [d + b + e for d, b, e in zip(x.shape, begins, ends)]
        if constant_value is not None and constant_value.numel():
            out = constant_value.reshape(()).to(x.dtype).expand(shape).contiguous()
        else:
            out = torch.zeros(shape, dtype=x.dtype, device=x.device)
        out[tuple(slice(b, b + d) for b, d in zip(begins, x.shape))] = x
        return out
    for a in range(rank):
        if not (begins[a] or ends[a]):
            continue
        n = x.shape[a]
        i = torch.arange(-begins[a], n + ends[a], device=x.device)
        if mode == "edge":
            i = i.clamp(0, n - 1)
        elif mode == "wrap":
            i = torch.remainder(i, n)
        elif mode == "reflect":
            if n == 1:
                i = torch.zeros_like(i)
            else:
                i = torch.remainder(i, 2 * n - 2)
                i = torch.where(i >= n, 2 * n - 2 - i, i)
        else:
            raise ValueError(f"Pad mode {mode!r} is not one of constant, edge, reflect, wrap")
        x = x.index_select(a, i)
    return x


# --------------------------------------------------------------------------- Resize

def _resize_axis(x: Any, t: Any, axis: int, nearest: bool) -> Any:
    """Resample one axis (Resize is separable) by the taps ``t`` of
    :func:`backplane.ops.resize.taps`: a selection for nearest mode, else a gather and a
    weighted sum on the device in ``x``'s type."""
    if nearest:  # a selection, exact in every type (and inf * 0 never meets NaN)
        return x.index_select(axis, torch.from_numpy(t.nearest()).to(x.device))
    shape = list(x.shape)
    shape[axis:axis + 1] = list(t.index.shape)
    g = x.index_select(axis, torch.from_numpy(t.index.reshape(-1)).to(x.device)).reshape(shape)
    w = torch.from_numpy(t.weight).to(device=x.device, dtype=x.dtype)
    w = w.reshape((1,) * axis + tuple(w.shape) + (1,) * (x.ndim - axis - 1))
    return (g * w).sum(axis + 1)


def resize(x: Any, roi: Any = None, scales: Any = None, sizes: Any = None, antialias: int = 0,
           axes: Any = None, coordinate_transformation_mode: str = "half_pixel",
           cubic_coeff_a: float = -0.75, exclude_outside: int = 0,
           extrapolation_value: float = 0.0, keep_aspect_ratio_policy: str = "stretch",
           mode: str = "nearest", nearest_mode: str = "round_prefer_floor") -> Any:
    """ONNX Resize, every mode and coordinate transformation, any rank: per axis, the
    source taps and weights computed in float64 on the host as onnx.reference does
    (:mod:`backplane.ops.resize`), then a gather and a weighted sum on the device in the
    input's type. Integer inputs of linear and cubic modes are weighted in float64 and
    rounded back with saturation."""
    from backplane.ops import resize as resize_math

    want = _ints(sizes) if sizes is not None and sizes.numel() else None
    given, exact = _host(scales) if want is None else (None, True)
    planned = resize_math.plan(list(x.shape), axes, _floats(roi) if roi is not None else None,
                               given, want, keep_aspect_ratio_policy, exact)
    exact_types = not x.is_floating_point() and mode != "nearest"
    work = x.double() if exact_types else x
    outside_masks = []
    for ax in planned:
        a, n_in = ax.axis, work.shape[ax.axis]
        if ax.size == 0 or n_in == 0:
            shape = list(work.shape)
            shape[a] = ax.size
            work = work.new_empty(shape)
            continue
        t = resize_math.taps(n_in, ax, mode, coordinate_transformation_mode, nearest_mode,
                             antialias, cubic_coeff_a, exclude_outside)
        work = _resize_axis(work, t, a, mode == "nearest")
        if t.outside is not None and t.outside.any():
            outside_masks.append((a, torch.from_numpy(t.outside).to(work.device)))
    for a, outside in outside_masks:
        mask = outside.reshape((1,) * a + (-1,) + (1,) * (x.ndim - a - 1))
        work = torch.where(mask, torch.tensor(extrapolation_value, dtype=work.dtype,
                                              device=work.device), work)
    if exact_types:
        info = _iinfo(x.dtype)
        work = torch.round(work).clamp(info.min, info.max).to(x.dtype)
    return work


# --------------------------------------------------------------------------- quantization

def _per_axis(p: Any, x: Any, axis: int, block_size: int) -> Any:
    """A scale or zero point shaped to broadcast against ``x``: per tensor, per axis
    (1-D along ``axis``) or blocked (``block_size`` consecutive elements share one)."""
    if block_size:
        axis = _axis(axis, x.ndim)
        return p.repeat_interleave(block_size, dim=axis).narrow(axis, 0, x.shape[axis])
    if p.numel() == 1:
        return p.reshape(())
    axis = _axis(axis, x.ndim)
    return p.reshape((-1,) + (1,) * (x.ndim - axis - 1))


_QUANTIZED = (torch.uint8, torch.int8, torch.uint16, torch.int16)


def quantize_linear(x: Any, y_scale: Any, y_zero_point: Any = None, axis: int = 1,
                    block_size: int = 0, output_dtype: int = 0, saturate: int = 1) -> Any:
    """round_half_to_even(x / y_scale) + y_zero_point, saturated to the output type. The
    quotient is computed in x's type (in float64 for int32 x, as ONNX divides integers);
    the zero point is added and the clamp done in float64, where both are exact."""
    if y_zero_point is not None:
        out = y_zero_point.dtype
    else:
        out = onnx_dtype(output_dtype) if output_dtype else torch.uint8
    if out not in _QUANTIZED:
        raise TypeError(f"QuantizeLinear to {out} has no torch kernel here (uint8, int8, "
                        f"uint16, int16)")
    scale = _per_axis(y_scale, x, axis, block_size)
    if x.is_floating_point():
        q = torch.round(x / scale).double()
    else:
        q = torch.round(x.double() / scale.double())
    if y_zero_point is not None:
        q = q + _per_axis(y_zero_point, x, axis, block_size).double()
    info = _iinfo(out)
    return q.clamp(info.min, info.max).to(out)


def dequantize_linear(x: Any, x_scale: Any, x_zero_point: Any = None, axis: int = 1,
                      block_size: int = 0) -> Any:
    """(x - x_zero_point) * x_scale, in the scale's type. ONNX forms the difference and the
    product in float32 and rounds once to the scale's type (fp16 and bf16 scales)."""
    d = x.float()
    if x_zero_point is not None:
        d = d - _per_axis(x_zero_point, x, axis, block_size).float()
    return (d * _per_axis(x_scale, x, axis, block_size).float()).to(x_scale.dtype)


# --------------------------------------------------------------------------- fused

def fused_matmul_bias_gelu(a: Any, b: Any, bias: Any, approximate: str = "none") -> Any:
    """backplane::FusedMatMulBiasGelu: Gelu(A @ B + bias)."""
    return F.gelu(torch.matmul(a, b) + bias, approximate=approximate)


def attention(q: Any, k: Any, v: Any, mask: Any = None, scale: float | None = None) -> Any:
    """backplane::Attention: torch's scaled_dot_product_attention (flash or memory-efficient
    kernels on GPUs). A boolean mask keeps True; an additive one is added to the scores. A
    mask of rank below 2 (the fusion pass's zero scalar) is given the two axes torch wants."""
    if mask is not None and mask.ndim < 2:
        mask = mask.reshape((1,) * (2 - mask.ndim) + tuple(mask.shape))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
