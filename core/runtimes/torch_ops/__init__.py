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

The kernels are grouped by op family in this package's modules; every one is
imported here, where the kernel table looks them up by name. The table is
:data:`backplane.runtimes.torch.kernels` (torch-cpu, cuda-tensorrt and rocm share it), which
names this package (``OPS``) and imports it on a kernel's first call: importing it imports
torch.
"""

from .common import FLOAT, HOST_COPIES, HOST_COPY_ELEMENTS, ONNX_TYPES, onnx_dtype, remember
from .contraction import (attention, conv, conv_transpose, fused_conv_relu, fused_matmul_bias_gelu,
                          gemm, matmul, matmul_integer)
from .elementwise import (abs_, add, cast, clip, dequantize_linear, div, erf, exp, gelu,
                          hard_sigmoid, hard_swish, leaky_relu, log, mul, neg, pow_,
                          quantize_linear, relu, sigmoid, sqrt, sub, tanh, where)
from .movement import (concat, expand, flatten, gather, pad, reshape, resize, shape_of, slice_,
                       squeeze, transpose, unsqueeze)
from .reduction import (average_pool, batch_norm, global_average_pool, layer_norm, max_pool,
                        reduce_max, reduce_mean, reduce_sum, softmax)

__all__ = ["FLOAT", "HOST_COPIES", "HOST_COPY_ELEMENTS", "ONNX_TYPES", "abs_", "add", "attention",
           "average_pool", "batch_norm", "cast", "clip", "concat", "conv", "conv_transpose",
           "dequantize_linear", "div", "erf", "exp", "expand", "flatten", "fused_conv_relu",
           "fused_matmul_bias_gelu", "gather", "gelu", "gemm", "global_average_pool",
           "hard_sigmoid", "hard_swish", "layer_norm", "leaky_relu", "log", "matmul",
           "matmul_integer", "max_pool", "mul", "neg", "onnx_dtype", "pad", "pow_",
           "quantize_linear", "reduce_max", "reduce_mean", "reduce_sum", "relu", "remember",
           "reshape", "resize", "shape_of", "sigmoid", "slice_", "softmax", "sqrt", "squeeze",
           "sub", "tanh", "transpose", "unsqueeze", "where"]
