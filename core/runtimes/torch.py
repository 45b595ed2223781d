"""torch, as the torch-cpu, cuda-tensorrt and rocm backends use it: the torch op table.

:data:`kernels` is a ``KernelTable`` of torch implementations of the 49 core ONNX ops
(opsets 13 to 21) and the three fused ops of the ``backplane`` domain, written once,
device-agnostic, for ``cuda-tensorrt`` and ``rocm`` to run on a torch ``cuda`` device (CUDA
and ROCm builds of torch both call their GPU that) wherever their graph compilers leave a
node over, and for ``torch-cpu`` to verify on torch's CPU device.
``compile_on(graph, device, options, torch_device)`` is their compile: backplane's
node-by-node runner (``KernelTable.compile``) with an upload that puts host arrays and
DLPack tensors on ``torch_device`` and a run under ``torch.inference_mode()``.
``torch_build()`` reads torch's version and build from package metadata, for probes that
must not import torch.

The kernels' implementations are in :data:`OPS`, imported on a kernel's first call (as
:class:`~backplane.sdk.kerneltable.LazyKernel` does for every table); the runner shares with
them the run's float type and the host copies of constants. Importing this module imports
neither torch nor numpy.
"""

from __future__ import annotations

import importlib
import re
from importlib import metadata
from typing import TYPE_CHECKING, Any

from backplane.sdk.contract import AttributeRule, CompileOptions, Device, Executable
from backplane.sdk.errors import CompileError
from backplane.sdk.kerneltable import KernelTable, LazyKernel

if TYPE_CHECKING:  # pragma: no cover
    from backplane.model.graph import Graph

#: The module holding the table's kernels (:mod:`backplane.runtimes.torch_ops`), named here
#: and imported on first call: importing it imports torch, which listing backends must not.
OPS = "backplane.runtimes.torch_ops"

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


# --------------------------------------------------------------------------- kernels
# Each registration names the op, the element types of its first input, and what the
# kernel does not handle; the implementations are in OPS, imported on first call.

def _reg(op: str, impl: str, dtypes: Any = F, domain: str = "", **limits: Any) -> None:
    kernels.register(op, domain=domain, dtypes=dtypes, **limits)(
        LazyKernel(OPS, impl))  # OPS, and with it torch, on first call


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


# --------------------------------------------------------------------------- the runner

#: Compute precisions the table runs at: ONNX float computed as this torch dtype.
PRECISION_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
#: Element types of the constants that keep a host copy: the types of shape-like inputs.
_HOST_COPIED = ("int64", "int32", "float32")
#: Distributions that install torch (the PyPI wheel; ROCm's own builds use the same name).
TORCH_DISTRIBUTIONS = ("torch",)


def torch_build(version: str | None = None) -> dict[str, Any]:
    """torch's installed version and build, from package metadata (torch is not imported).

    Args:
        version: a torch version string to describe instead of the installed one.

    Returns ``{"installed": bool, "version": "2.13.0+cu124" | None, "build": "cuda" | "rocm"
    | "cpu" | "unknown" | None, "accelerator_version": "12.4" | "6.2" | None}``. The build is
    read from the local version label (``+cu124``, ``+rocm6.2``, ``+cpu``); a version without
    one (PyPI's default Linux wheels are CUDA builds; macOS and Windows wheels are CPU
    builds) is ``"unknown"``, which only importing torch could settle.
    """
    installed = version is None
    if version is None:
        for dist in TORCH_DISTRIBUTIONS:
            try:
                version = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
        else:
            return {"installed": False, "version": None, "build": None,
                    "accelerator_version": None}
    label = version.partition("+")[2]
    cuda = re.fullmatch(r"cu(\d+)", label)
    rocm = re.fullmatch(r"rocm([\d.]+)", label)
    if cuda:
        digits = cuda.group(1)
        build, accel = "cuda", f"{digits[:-1]}.{digits[-1]}" if len(digits) > 1 else digits
    elif rocm:
        build, accel = "rocm", rocm.group(1)
    elif label == "cpu":
        build, accel = "cpu", None
    else:
        build, accel = (_shipped_build() if installed else None) or "unknown", None
    return {"installed": True, "version": version, "build": build, "accelerator_version": accel}


def _shipped_build() -> str | None:
    """"cuda" or "rocm" when the installed torch ships ``libtorch_cuda`` or ``libtorch_hip``
    (how a version without a label, PyPI's Linux wheel, is told apart without importing
    torch), "cpu" when it ships neither, None when its files cannot be found."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.origin:
        return None
    lib = Path(spec.origin).parent / "lib"
    if not lib.is_dir():
        return None
    if any(lib.glob("libtorch_cuda.*")) or any(lib.glob("torch_cuda.*")):
        return "cuda"
    if any(lib.glob("libtorch_hip.*")):
        return "rocm"
    return "cpu"


def compile_on(graph: "Graph", device: Device, options: CompileOptions, torch_device: str,
               table: KernelTable | None = None, path: str = "") -> "TorchExecutable":
    """Compile ``graph`` for the torch device ``torch_device`` with ``table``'s kernels.

    Args:
        graph: the (sub)graph to run.
        device: the backplane device (for errors and the default runner).
        options: ``options.precision`` ``fp32``, ``fp16`` or ``bf16``: with the lower two,
            float32 inputs and constants are computed in that type, and graph outputs the
            graph declares float32 come back as float32.
        torch_device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` ...
        table: the kernels; default this module's :data:`kernels`. A GPU plugin passes
            ``kernels.copy()`` with its own kernels registered on top.
        path: how the partition was compiled, in words (``Executable.path``).

    Raises:
        CompileError: a precision the table does not compute at, or a node the table does
            not admit (from ``KernelTable.compile``).
    """
    if table is None:
        table = kernels
    if options.precision not in PRECISION_DTYPES or options.precision not in table.precisions:
        raise CompileError(
            f"backend '{device.backend}' computes at {', '.join(sorted(table.precisions))}, "
            f"not {options.precision}", backend=device.backend, device=device.id)
    import torch  # defers the vendor runtime to the first compile

    ops = _implementations()
    target = torch.device(torch_device)
    compute = getattr(torch, PRECISION_DTYPES[options.precision])
    constants: list[Any] = []
    compiling = [True]  # what is uploaded while compiling is the graph's constants

    def upload(value: Any) -> Any:
        tensor = to_device(value, target, compute)
        if compiling[0]:
            constants.append(tensor)
            # Shape-like constants (shapes, axes, pads, starts, scales) keep a host copy.
            if value.size <= ops.HOST_COPY_ELEMENTS and value.dtype.name in _HOST_COPIED:
                ops.remember(tensor, value.reshape(-1).tolist())
        return tensor

    inner = table.compile(graph, device, options, upload=upload, download=_keep)
    compiling[0] = False
    return TorchExecutable(inner, graph, compute, constants, path)


class TorchExecutable(Executable):
    """A kernel runner over torch tensors on one device.

    ``run`` takes host numpy arrays or DLPack objects (torch tensors of any device, CuPy
    arrays ...) and returns torch tensors on the device, dense, float32 where the graph says
    so; bfloat16 outputs come back as host ``ml_dtypes.bfloat16`` arrays, since neither
    numpy's DLPack nor torch's ``.numpy()`` carries bfloat16 (backplane's executor could not
    move them). An output that shares memory with a constant is a copy, so a caller's
    writes never reach the compiled model. Runs hold no lock: kernels share no state and
    ``torch.inference_mode`` is per thread, so the executable is as thread-safe as its
    table declares.
    """

    dlpack = True

    def __init__(self, inner: Any, graph: "Graph", compute: Any, constants: list[Any],
                 path: str):
        import torch  # defers the vendor runtime (compile_on imported it already)

        self._inner = inner
        self._compute = compute
        self._torch = torch
        self._float = _implementations().FLOAT  # the run's float type, read by the kernels
        self._outputs = [(o.name, o.dtype == "float32") for o in graph.outputs]
        self._const_storage = {c.untyped_storage().data_ptr() for c in constants
                               if c.numel()}
        self.path = path
        self.thread_safe = bool(getattr(inner, "thread_safe", False))  # type: ignore[misc]

    @property
    def memory(self) -> Any:
        """Peak bytes of the values the kernels produced (the kernel runner's figures)."""
        return self._inner.memory

    def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Run the graph once; outputs as described in the class docstring."""
        torch = self._torch
        token = self._float.set(self._compute)
        try:
            with torch.inference_mode():
                out = self._inner.run(inputs)
                return {name: self._finish(out[name], as_float32)
                        for name, as_float32 in self._outputs}
        finally:
            self._float.reset(token)

    def _finish(self, value: Any, as_float32: bool) -> Any:
        torch = self._torch
        if not isinstance(value, torch.Tensor):
            return value
        if as_float32 and value.dtype != torch.float32:
            value = value.float()
        value = value.contiguous()
        if value.numel() and value.untyped_storage().data_ptr() in self._const_storage:
            value = value.clone()
        if value.dtype == torch.bfloat16:
            return bfloat16_to_host(value)
        return value


def to_device(value: Any, target: Any, compute: Any) -> Any:
    """A torch tensor on ``target`` holding ``value`` (a numpy array, a torch tensor or any
    DLPack object), float32 lowered to ``compute`` in a reduced-precision run.

    On the CPU a dense writeable numpy array is shared, not copied; a read-only one (the
    executor hands partitions read-only views) is copied, since torch tensors cannot be
    read-only. bfloat16 arrays (ml_dtypes) cross as their 16-bit patterns.
    """
    import torch  # defers the vendor runtime to the first upload

    if not isinstance(value, torch.Tensor):
        import numpy as np

        if isinstance(value, np.ndarray) or not hasattr(value, "__dlpack__"):
            value = _from_numpy(np, torch, np.asarray(value))
        else:
            value = torch.from_dlpack(value)
    value = value.to(target)
    if value.dtype == torch.float32 and compute != torch.float32:
        value = value.to(compute)
    return value


def _from_numpy(np: Any, torch: Any, array: Any) -> Any:
    bf16 = array.dtype.name == "bfloat16"
    if bf16:
        array = array.view(np.int16)
    if not (array.flags.writeable and array.flags.c_contiguous):
        array = np.array(array, order="C")
    tensor = torch.from_numpy(array)
    return tensor.view(torch.bfloat16) if bf16 else tensor


def bfloat16_to_host(tensor: Any) -> Any:
    """A torch bfloat16 tensor as a host ``ml_dtypes.bfloat16`` array (its bit patterns)."""
    import ml_dtypes
    import torch  # defers the vendor runtime (loaded by whoever made the tensor)

    return tensor.detach().cpu().contiguous().view(torch.int16).numpy().view(ml_dtypes.bfloat16)


def _keep(value: Any) -> Any:
    return value


def _implementations() -> Any:
    """:data:`OPS`, the kernels' module (importing it imports torch)."""
    return importlib.import_module(OPS)
