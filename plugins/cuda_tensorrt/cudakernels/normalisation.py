"""Plans of the row kernels: Softmax and LayerNormalization."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .common import (FLOATS, INT32_MAX, SUFFIX, Launch, Plan, broadcast_shape, cdiv, dtype_name,
                     norm_axis, prod)

# --------------------------------------------------------------------------- Softmax


def plan_softmax(shape: Sequence[int], axis: int, dtype: Any) -> Plan | str:
    """Softmax along ``axis`` (opset 13) of a dense ``shape``; or why not."""
    dtype = dtype_name(dtype)
    if dtype not in FLOATS:
        return f"dtype {dtype} (the kernels take float32 and float16)"
    ax = norm_axis(axis, len(shape))
    if ax is None:
        return f"axis {axis} out of range for rank {len(shape)}"
    if 0 in shape:
        return "a zero-sized dimension"
    outer, L, inner = prod(shape[:ax]), int(shape[ax]), prod(shape[ax + 1:])
    if L > INT32_MAX:
        return "a softmax axis of 2^31 or more"
    sfx = SUFFIX[dtype]
    if inner == 1 and L <= 1024:
        launch = Launch("softmax.cu", f"softmax_warp_{sfx}", (cdiv(outer, 8), 1, 1),
                        (256, 1, 1), (("p", "x"), ("p", "y"), ("q", outer), ("i", L)))
    elif inner == 1:
        if outer > INT32_MAX:
            return "2^31 or more rows"
        launch = Launch("softmax.cu", f"softmax_block_{sfx}", (outer, 1, 1), (256, 1, 1),
                        (("p", "x"), ("p", "y"), ("i", L)))
    else:
        if cdiv(outer * inner, 256) > INT32_MAX:
            return "too many columns"
        launch = Launch("softmax.cu", f"softmax_cols_{sfx}", (cdiv(outer * inner, 256), 1, 1),
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
    dtype = dtype_name(dtype)
    if dtype not in FLOATS:
        return f"dtype {dtype} (the kernels take float32 and float16)"
    if int(stash_type) != 1:
        return f"stash_type {stash_type} (the kernels keep statistics in float32, type 1)"
    ax = norm_axis(axis, len(shape))
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
        if dtype_name(pdtype) != dtype:
            return f"{name} is {dtype_name(pdtype)}, X is {dtype}"
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
        launch = Launch("layernorm.cu", f"layernorm_warp_{sfx}", (cdiv(rows, 8), 1, 1),
                        (256, 1, 1), (*common, ("q", rows), ("i", N), ("f", epsilon)))
    else:
        launch = Launch("layernorm.cu", f"layernorm_block_{sfx}", (rows, 1, 1), (256, 1, 1),
                        (*common, ("i", N), ("f", epsilon)))
    stats = (*shape[:ax], *([1] * (len(shape) - ax)))
    return Plan((launch,), (("y", tuple(shape), dtype), ("mean", stats, "float32"),
                            ("inv_std", stats, "float32")), ("y", "mean", "inv_std"),
                expand=expand)
