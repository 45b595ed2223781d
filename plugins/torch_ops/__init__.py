"""torch-cpu, and the torch op table the GPU plugins share.

What it is: :data:`kernels`, a ``KernelTable`` of torch implementations of the 49 core ONNX
ops (opsets 13 to 21) and the three fused ops of the ``backplane`` domain, written once,
device-agnostic, for ``cuda-tensorrt`` and ``rocm`` to run on a torch ``cuda`` device
(CUDA and ROCm builds of torch both call their GPU that) wherever their graph compilers
leave a node over. ``compile_on`` (``runner.py``) is their compile: backplane's
node-by-node runner with values kept as torch tensors on a torch device. The kernels are
in ``ops.py``.

How it is verified: ``torch-cpu`` runs the same table on torch's CPU device, so the
conformance suite checks on every commit, without a GPU, the code a GPU runs. It is a
verification backend, not a CPU backend to plan on (openvino-cpu and onnxruntime are):
its probe lists a device only when ``BACKPLANE_TORCH_CPU=1``.

Importing this module imports neither torch nor numpy: the kernels load on first call.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from backplane import API_VERSION, AttributeRule, Backend, CompileOptions, Device, Executable
from backplane.kerneltable import KernelTable, LazyKernel
from backplane import __version__ as _backplane_version
from backplane.errors import DeviceUnavailable

from .runner import TorchExecutable, compile_on, torch_build

#: The environment variable that makes torch-cpu list torch's CPU device.
ENABLE_ENV = "BACKPLANE_TORCH_CPU"
#: How to install the torch this table is verified with.
INSTALL_HINT = "pip install torch==2.13.0"

F = ("float32", "float16", "bfloat16")
F16 = ("float32", "float16")  # ops whose ONNX schema (opset 21) has no bfloat16
INTS = ("int8", "uint8", "int32", "int64")
SIGNED = ("int8", "int32", "int64")
#: Data movement copies elements whatever their type.
ANY = F + INTS + ("bool",)
#: ONNX TensorProto codes Cast converts to: float, uint8, int8, int32, int64, bool, float16,
#: bfloat16.
CAST_TO = (1, 2, 3, 6, 7, 9, 10, 16)

kernels = KernelTable(precisions=frozenset({"fp32", "fp16", "bf16"}), thread_safe=True)


class TorchCPUBackend(Backend):
    """The torch op table on torch's CPU device: how the GPU plugins' kernels are verified."""

    name = "torch-cpu"
    api_version = API_VERSION
    version = _backplane_version
    priority = 50  # below opencl (100), above the reference
    kernels = kernels
    known_failures = str(Path(__file__).with_name("known_failures.toml"))

    def probe(self) -> list[Device]:
        """torch's CPU device, only with ``BACKPLANE_TORCH_CPU=1`` and torch installed.

        torch is not imported (package metadata says whether it is installed and which
        build it is), so listing devices stays cheap with or without the variable.
        """
        if os.environ.get(ENABLE_ENV) != "1":
            raise DeviceUnavailable(
                f"torch-cpu runs the GPU plugins' torch op table on the CPU to verify it, and "
                f"lists a device only when {ENABLE_ENV}=1; for CPU inference plan on "
                f"openvino-cpu or onnxruntime")
        build = torch_build()
        if not build["installed"]:
            raise DeviceUnavailable(f"torch is not installed; {INSTALL_HINT} (the CPU build "
                                    f"is enough for torch-cpu)")
        return [Device(name=f"torch {build['version']} CPU", kind="cpu",
                       properties={"torch_device": "cpu", "torch": build["version"],
                                   "torch_build": build["build"]})]

    def compile(self, graph: Any, device: Device, options: CompileOptions) -> Executable:
        """The table's node-by-node runner on torch's CPU device."""
        version = device.properties.get("torch", "")
        return compile_on(graph, device, options, "cpu", kernels,
                          path=f"torch {version} op table on cpu, {options.precision}")


# --------------------------------------------------------------------------- kernels
# Each registration names the op, the element types of its first input, and what the
# kernel does not handle; the implementations are in ops.py, imported on first call.

def _reg(op: str, impl: str, dtypes: Any = F, domain: str = "", **limits: Any) -> None:
    kernels.register(op, domain=domain, dtypes=dtypes, **limits)(
        LazyKernel(f"{__name__}.ops", impl))  # ops.py, and with it torch, on first call


_ONLY_0 = AttributeRule(allowed=(0,))
_GELU = {"approximate": AttributeRule(allowed=("none", "tanh"))}

# Element-wise.
for _op, _impl in (("Add", "add"), ("Sub", "sub"), ("Mul", "mul"), ("Div", "div")):
    _reg(_op, _impl, F + INTS)
_reg("Pow", "pow_", F + ("int32", "int64"))
for _op, _impl in (("Sqrt", "sqrt"), ("Exp", "exp"), ("Log", "log"), ("Erf", "erf"),
                   ("Sigmoid", "sigmoid"), ("Tanh", "tanh"), ("LeakyRelu", "leaky_relu")):
    _reg(_op, _impl)
_reg("HardSigmoid", "hard_sigmoid", F16)
_reg("HardSwish", "hard_swish", F16)
_reg("Gelu", "gelu", attributes=_GELU)
_reg("Abs", "abs_", F + INTS)
_reg("Neg", "neg", F + SIGNED)
_reg("Relu", "relu", F + SIGNED)
_reg("Clip", "clip", F + INTS)
_reg("Where", "where", ("bool",))  # the condition is the first input
_reg("Cast", "cast", ANY, attributes={"to": AttributeRule(allowed=CAST_TO)})

# Linear algebra and convolutions.
_reg("MatMul", "matmul", F + ("int32", "int64"))
_reg("Gemm", "gemm", F + ("int32", "int64"))
_reg("MatMulInteger", "matmul_integer", ("int8", "uint8"))
_CONV = {"min_rank": 1, "max_rank": 5}  # 1-D to 3-D windows (the bias is rank 1)
_reg("Conv", "conv", F16, **_CONV)
_reg("ConvTranspose", "conv_transpose", F16, **_CONV)

# Pooling, normalisation, reductions.
_POOL = {"min_rank": 3, "max_rank": 5}
_reg("MaxPool", "max_pool", F16 + ("int8", "uint8"), **_POOL)
_reg("AveragePool", "average_pool", F16, **_POOL)
_reg("GlobalAveragePool", "global_average_pool", F16, min_rank=3)
_reg("BatchNormalization", "batch_norm", attributes={"training_mode": _ONLY_0})
_reg("LayerNormalization", "layer_norm", attributes={"stash_type": AttributeRule(allowed=(1,))})
_reg("Softmax", "softmax")
_reg("ReduceSum", "reduce_sum", F + ("int32", "int64"))
_reg("ReduceMean", "reduce_mean", F + ("int32", "int64"))
_reg("ReduceMax", "reduce_max", ANY)

# Shapes and data movement.
for _op, _impl in (("Reshape", "reshape"), ("Flatten", "flatten"), ("Squeeze", "squeeze"),
                   ("Unsqueeze", "unsqueeze"), ("Transpose", "transpose"),
                   ("Expand", "expand"), ("Shape", "shape_of"), ("Concat", "concat"),
                   ("Slice", "slice_"), ("Gather", "gather")):
    _reg(_op, _impl, ANY)
_reg("Pad", "pad", ANY,
     attributes={"mode": AttributeRule(allowed=("constant", "reflect", "edge", "wrap"))})
_reg("Resize", "resize", F + INTS)  # bool: onnx.reference (the oracle) cannot resize it

# Quantization.
_reg("QuantizeLinear", "quantize_linear", F + ("int32",),
     attributes={"output_dtype": AttributeRule(allowed=(0, 2, 3, 4, 5))})
_reg("DequantizeLinear", "dequantize_linear", ("int8", "uint8", "int32"))

# Fused ops of the backplane domain.
_reg("FusedConvRelu", "fused_conv_relu", F16, domain="backplane", **_CONV)
_reg("FusedMatMulBiasGelu", "fused_matmul_bias_gelu", domain="backplane", attributes=_GELU)
_reg("Attention", "attention", domain="backplane")

__all__ = ["TorchCPUBackend", "TorchExecutable", "compile_on", "kernels", "torch_build"]
