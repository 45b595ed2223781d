"""The custom CUDA kernels of the kernel path: kernels/cuda/*.cu, compiled by NVRTC, launched
with CuPy on torch's current stream, taking and returning torch tensors (no copies: the
kernels get the tensors' device pointers).

:func:`custom_kernels` gives op key -> kernel with the ONNX signature ``fn(*inputs,
**attributes)``, for ``MatMul``, ``Softmax``, ``LayerNormalization`` and the fused ops
``backplane::FusedConvRelu``, ``backplane::FusedMatMulBiasGelu``, ``backplane::Attention``.
Each kernel takes the calls within its limits and hands every other call to
``fallback(key)``, the torch op table's kernel: tensors not on a CUDA device, dtypes other
than float32 and float16, and the shapes each ``plan_*`` function refuses (it returns
the reason as a string). The planning functions are pure Python over shapes and dtypes,
so the dispatch logic is tested on machines without a GPU.

Limits, kernel by kernel (everything else falls back):

- MatMul: float32/float16, numpy broadcasting of the batch dimensions as long as they
  collapse to two levels of strides (any two operands' batch shapes do unless both
  broadcast on interleaved axes), at most 65,535 matrices, M, N, K below 2^31. float16
  with K and N multiples of 8 and 16-byte aligned data runs on tensor cores; the rest on
  SIMT tiles.
- FusedMatMulBiasGelu: MatMul's limits, 2-D or more operands, a bias that broadcasts to
  the product without enlarging it, approximate ``none`` or ``tanh``.
- Softmax: float32/float16, any axis, rows below 2^31 elements.
- LayerNormalization: float32/float16, stash_type 1, scale and bias of x's dtype that
  broadcast to the normalised shape; returns (Y, Mean, InvStdDev).
- FusedConvRelu: 1-D and 2-D convolutions (rank 3 or 4), any groups, strides, pads,
  dilations, bias, Relu or Clip; no ``auto_pad`` (the fusion pass resolves it). 1x1
  convolutions of stride 1 without padding run as batched MatMuls (tensor cores in float16);
  groups of fewer than 8 output channels (depthwise) as direct convolutions; the rest as
  implicit GEMMs on SIMT tiles (no tensor cores).
- Attention: float32/float16 Q, K, V, head dims up to 128; a float32, float16 or boolean
  mask that broadcasts to [batch..., Sq, Sk]; float16 with head dim 64 or 128 (Q, K and V
  alike, 16-byte aligned) on tensor cores, the rest on SIMT. No zero-sized dimension.

The tensor-core kernels use sm_80 instructions (mma.sync, ldmatrix, cp.async): GPUs of
compute capability 8.0 and newer. Older GPUs get the SIMT kernels for every call.

Each source is compiled on the first call that needs it (a few seconds; then read from
the cache), or all at once by :func:`prepare`. A kernel that fails to compile or launch
logs one warning and hands its calls to the fallback from then on (``strict=True``
raises instead).

The planners are grouped by op family in this package's modules, the run-time side in
``runtime.py``; every public name is imported here.
"""

from .common import (ACT, DEFAULT_CUSTOM, FLOATS, GRID_YZ_MAX, INT32_MAX, KERNELS, MASK_KIND, OPS,
                     SUFFIX, Batch, Launch, Plan, broadcast_shape, broadcast_strides,
                     collapse_batch, dense_strides, pack_args, prod)
from .contraction import conv_activation, plan_attention, plan_conv, plan_matmul
from .normalisation import plan_layernorm, plan_softmax
from .runtime import PLAN_CACHE_SIZE, CustomKernel, available, custom_kernels, prepare

__all__ = ["ACT", "DEFAULT_CUSTOM", "FLOATS", "GRID_YZ_MAX", "INT32_MAX", "KERNELS", "MASK_KIND",
           "OPS", "PLAN_CACHE_SIZE", "SUFFIX", "Batch", "CustomKernel", "Launch", "Plan",
           "available", "broadcast_shape", "broadcast_strides", "collapse_batch", "conv_activation",
           "custom_kernels", "dense_strides", "pack_args", "plan_attention", "plan_conv",
           "plan_layernorm", "plan_matmul", "plan_softmax", "prepare", "prod"]
