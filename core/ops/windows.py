"""Window geometry of convolution and pooling: the explicit pads and output sizes ONNX
defines for ``auto_pad``, ``ceil_mode`` and dilations.

Shared by the fusion pass, the oracle and backends' kernels, so each computes a window the
same way. Pure arithmetic: imports nothing of backplane.
"""

from __future__ import annotations

from collections.abc import Iterable


def window_pads(spatial: Iterable[int], kernel: Iterable[int], strides: Iterable[int],
                dilations: Iterable[int], pads: Iterable[int] | None,
                auto_pad: str = "NOTSET") -> list[int]:
    """Explicit pads (all begins, then all ends) of a convolution or pooling window.

    ``auto_pad`` SAME_UPPER / SAME_LOWER pads so that the output is ceil(size / stride),
    the odd pixel at the end / the beginning; VALID, or no ``pads``, is no padding.
    """
    spatial, kernel = list(spatial), list(kernel)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begins, ends = [], []
        for size, k, s, d in zip(spatial, kernel, strides, dilations):
            total = max(0, (-(-size // s) - 1) * s + (k - 1) * d + 1 - size)
            small, large = total // 2, total - total // 2
            begins.append(small if auto_pad == "SAME_UPPER" else large)
            ends.append(large if auto_pad == "SAME_UPPER" else small)
        return begins + ends
    if auto_pad == "VALID" or pads is None:
        return [0] * (2 * len(spatial))
    return [int(p) for p in pads]


def pool_geometry(spatial: Iterable[int], kernel: Iterable[int], strides: Iterable[int],
                  dilations: Iterable[int], pads: Iterable[int] | None,
                  auto_pad: str = "NOTSET", ceil_mode: int = 0
                  ) -> tuple[list[int], list[int], list[int], list[int]]:
    """(begin pads, end pads, output sizes, extra end pads) of a pooling window, as ONNX
    defines them: with ``ceil_mode`` a last partial window counts unless it would start in
    the end padding; ``extra`` pads the input so that window is whole."""
    spatial, kernel = list(spatial), list(kernel)
    strides, dilations = list(strides), list(dilations)
    p = window_pads(spatial, kernel, strides, dilations, pads, auto_pad)
    begins, ends = p[:len(spatial)], p[len(spatial):]
    out, extra = [], []
    for size, k, s, d, b, e in zip(spatial, kernel, strides, dilations, begins, ends):
        span = size + b + e - ((k - 1) * d + 1)
        o = (-(-span // s) if ceil_mode else span // s) + 1
        if ceil_mode and (o - 1) * s >= size + b:  # a window may not start in the end pad
            o -= 1
        out.append(o)
        extra.append(max(0, (o - 1) * s + (k - 1) * d + 1 - (size + b + e)))
    return begins, ends, out, extra


__all__ = ["pool_geometry", "window_pads"]
