"""The OpenCL kernels' host side: one function per op, ``fn(*inputs, **attributes)``.

Inputs and outputs are dense, row-major :class:`pyopencl.array.Array` values from the
device's pool. Every function launches device code except the metadata-only ones
(Reshape, Flatten, Squeeze, Unsqueeze, Identity: a view of the same buffer; Shape: a host
computation uploaded as a small int64 array). Parameters that decide a launch (shapes,
axes, pads, indices, clip bounds) are read from the host copy small integer arrays carry
(see :func:`backplane.runtimes.opencl.mirror`).

The kernels are grouped by op family in this package's modules; every one is
imported here, where the kernel table looks them up by name. The table is
:data:`backplane.runtimes.opencl.kernels` (the opencl and rocm backends share it), which
names this package (``OPS``) and imports it on a kernel's first call: importing it imports
numpy and pyopencl.
"""

from .common import ACT, FLOAT_MIN, INT_LIMITS
from .contraction import (attention, conv, fused_conv_relu, fused_matmul_bias_gelu, gemm,
                          gemm_launch, matmul)
from .elementwise import (binary, cast, clip, dequantize_linear, emap, gelu, quantize_linear,
                          strided_copy, unary, unary_params, where)
from .movement import (concat, expand, flatten, gather, identity, pad, reshape, shape_op, slice_op,
                       squeeze, transpose, unsqueeze)
from .reduction import (average_pool, batch_norm, global_average_pool, layer_norm, max_pool, pool,
                        reduce, reduce_op, reduce_op_max, reduce_op_mean, reduce_op_sum, softmax)

__all__ = ["ACT", "FLOAT_MIN", "INT_LIMITS", "attention", "average_pool", "batch_norm", "binary",
           "cast", "clip", "concat", "conv", "dequantize_linear", "emap", "expand", "flatten",
           "fused_conv_relu", "fused_matmul_bias_gelu", "gather", "gelu", "gemm", "gemm_launch",
           "global_average_pool", "identity", "layer_norm", "matmul", "max_pool", "pad", "pool",
           "quantize_linear", "reduce", "reduce_op", "reduce_op_max", "reduce_op_mean",
           "reduce_op_sum", "reshape", "shape_op", "slice_op", "softmax", "squeeze", "strided_copy",
           "transpose", "unary", "unary_params", "unsqueeze", "where"]
