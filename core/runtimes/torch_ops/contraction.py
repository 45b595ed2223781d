"""Contractions of the torch op table: MatMul, Gemm, convolutions and the fused ops."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from backplane.ops import window_pads

from .common import CONV, REDUCED, pad_spatial


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
        x, padding = pad_spatial(x, begins, ends), [0] * len(kernel)
    return CONV[len(kernel)](x, w, b, stride=strides, padding=padding, dilation=dilations,
                             groups=group)


def conv_transpose(x: Any, w: Any, b: Any = None, auto_pad: str = "NOTSET",
                   dilations: Any = None, group: int = 1, kernel_shape: Any = None,
                   output_padding: Any = None, output_shape: Any = None, pads: Any = None,
                   strides: Any = None) -> Any:
    """ONNX ConvTranspose: the uncropped transposed convolution, then the window ONNX keeps
    (pads cropped; an ``output_padding`` or ``output_shape`` beyond it is zeros), then the
    bias. The window follows the specification, as ``runtimes/onnxref/fixes.py`` does."""
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
    if x.device.type == "cpu" and x.dtype in REDUCED:
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
    y = pad_spatial(y, [-v for v in begins],
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
