"""The host side of each NEON kernel: shapes, broadcasting and layouts in numpy, then one
call into a kernel of ``kernels/neon`` through a runtime (``runtime.py``). Every function
takes the runtime first, then the node's inputs and attributes.

What numpy does here is shape logic and data movement, never the arithmetic of an op:
views, dense copies, broadcasting strides, padding and window gathering for pools, Resize's
taps and weights (from the sizes alone), exact widening of f16 or bf16 parameters to f32.
The data-movement ops (Reshape, Transpose, Concat, Slice, Gather, Squeeze, Unsqueeze,
Flatten, Expand, Shape, Identity, Pad, Where, Cast) run in numpy entirely: they compute
nothing.

The kernels are grouped by op family in this package's modules; every one is imported
here, where the kernel table looks them up by name. Resize is in ``resize.py``.
"""

from .common import (ACT_CLIP, ACT_GELU, ACT_GELU_TANH, ACT_NONE, ACT_RELU, BF16, BINARY, F16, F32,
                     MAX_RANK, UNARY)
from .contraction import (conv, conv_transpose, fused_conv_relu, fused_matmul_bias_gelu, gemm,
                          matmul, matmul_integer)
from .elementwise import (binary, broadcast_layout, clip, dequantize_linear, gelu, hard_sigmoid,
                          leaky_relu, quantize_linear, unary, unary_op)
from .movement import (cast, concat, expand, flatten, gather, identity, pad, reshape, shape_op,
                       slice_op, squeeze, transpose, unsqueeze, where)
from .reduction import (average_pool, batch_norm, global_average_pool, layer_norm, max_pool,
                        reduce_max, reduce_mean, reduce_sum, softmax)

__all__ = ["ACT_CLIP", "ACT_GELU", "ACT_GELU_TANH", "ACT_NONE", "ACT_RELU", "BF16", "BINARY", "F16",
           "F32", "MAX_RANK", "UNARY", "average_pool", "batch_norm", "binary", "broadcast_layout",
           "cast", "clip", "concat", "conv", "conv_transpose", "dequantize_linear", "expand",
           "flatten", "fused_conv_relu", "fused_matmul_bias_gelu", "gather", "gelu", "gemm",
           "global_average_pool", "hard_sigmoid", "identity", "layer_norm", "leaky_relu", "matmul",
           "matmul_integer", "max_pool", "pad", "quantize_linear", "reduce_max", "reduce_mean",
           "reduce_sum", "reshape", "shape_op", "slice_op", "softmax", "squeeze", "transpose",
           "unary", "unary_op", "unsqueeze", "where"]
