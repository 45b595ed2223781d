"""Element-wise ops and quantization of the torch op table."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .common import iinfo, norm_axis, onnx_dtype


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


# --------------------------------------------------------------------------- quantization

def _per_axis(p: Any, x: Any, axis: int, block_size: int) -> Any:
    """A scale or zero point shaped to broadcast against ``x``: per tensor, per axis
    (1-D along ``axis``) or blocked (``block_size`` consecutive elements share one)."""
    if block_size:
        axis = norm_axis(axis, x.ndim)
        return p.repeat_interleave(block_size, dim=axis).narrow(axis, 0, x.shape[axis])
    if p.numel() == 1:
        return p.reshape(())
    axis = norm_axis(axis, x.ndim)
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
    info = iinfo(out)
    return q.clamp(info.min, info.max).to(out)


def dequantize_linear(x: Any, x_scale: Any, x_zero_point: Any = None, axis: int = 1,
                      block_size: int = 0) -> Any:
    """(x - x_zero_point) * x_scale, in the scale's type. ONNX forms the difference and the
    product in float32 and rounds once to the scale's type (fp16 and bf16 scales)."""
    d = x.float()
    if x_zero_point is not None:
        d = d - _per_axis(x_zero_point, x, axis, block_size).float()
    return (d * _per_axis(x_scale, x, axis, block_size).float()).to(x_scale.dtype)
