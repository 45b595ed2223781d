"""Tables, shape arithmetic, and the launch and plan records every CUDA kernel family uses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

#: The op keys that have custom kernels.
OPS = ("MatMul", "Softmax", "LayerNormalization", "backplane::FusedConvRelu",
       "backplane::FusedMatMulBiasGelu", "backplane::Attention")
#: The op keys the kernel path should use custom kernels for by default. The fused ops
#: with a tensor-core kernel (MatMul+Bias+Gelu, Attention) save the intermediate tensors'
#: round trips through memory and the launches between them; Softmax and
#: LayerNormalization are single-pass row kernels that torch runs as one kernel too, but
#: with float32 statistics for float16 data in one launch each. Not MatMul: cuBLAS is the
#: bar there, and on Hopper it uses wgmma instructions that a portable mma.sync kernel
#: cannot reach (benchmarks/bench_gpu.py measures the gap). Not FusedConvRelu: cuDNN's
#: tensor-core convolutions (TF32 for float32 by default) outrun a SIMT implicit GEMM by
#: more than the saved Relu pass is worth, except for 1x1 convolutions in float16.
DEFAULT_CUSTOM = ("Softmax", "LayerNormalization", "backplane::FusedMatMulBiasGelu",
                  "backplane::Attention")

#: Largest gridDim.y / gridDim.z.
GRID_YZ_MAX = 65535
INT32_MAX = 2 ** 31 - 1
#: Activation codes of common.cuh.
ACT = {"none": 0, "relu": 1, "clip": 2, "gelu": 3, "gelu_tanh": 4}
#: Mask kinds of attention.cu.
MASK_KIND = {None: 0, "float32": 1, "float16": 2, "bool": 3}
SUFFIX = {"float32": "f32", "float16": "f16"}
FLOATS = frozenset(SUFFIX)
#: Every kernel the host wrappers launch, by source file of kernels/cuda.
KERNELS = {
    "matmul.cu": ("matmul_tc_f16", "matmul_simt128_f32", "matmul_simt32_f32",
                  "matmul_simt128_f16", "matmul_simt32_f16"),
    "softmax.cu": tuple(f"softmax_{k}_{s}" for k in ("warp", "block", "cols")
                        for s in ("f32", "f16")),
    "layernorm.cu": tuple(f"layernorm_{k}_{s}" for k in ("warp", "block")
                          for s in ("f32", "f16")),
    "conv.cu": tuple(f"conv_{k}_{s}" for k in ("igemm128", "igemm64", "igemm32", "direct")
                     for s in ("f32", "f16")),
    "attention.cu": ("attention_simt_f32", "attention_simt_f16", "attention_tc_f16_d64",
                     "attention_tc_f16_d128"),
}

# --------------------------------------------------------------------------- shapes


def prod(values: Sequence[int]) -> int:
    """The product of ``values`` (1 for none)."""
    out = 1
    for v in values:
        out *= int(v)
    return out


def broadcast_shape(*shapes: Sequence[int]) -> tuple[int, ...] | None:
    """numpy's broadcast of ``shapes``, or None when they do not broadcast."""
    rank = max((len(s) for s in shapes), default=0)
    out = []
    for i in range(rank):
        sizes = {s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0}
        sizes.discard(1)
        if len(sizes) > 1:
            return None
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


def dense_strides(shape: Sequence[int], item: int = 1) -> tuple[int, ...]:
    """Row-major strides of ``shape``, in units of ``item`` elements."""
    out, step = [], item
    for n in reversed(shape):
        out.append(step)
        step *= int(n)
    return tuple(reversed(out))


def broadcast_strides(shape: Sequence[int], out_shape: Sequence[int],
                      item: int = 1) -> tuple[int, ...]:
    """Strides that read a dense ``shape`` (each index worth ``item`` elements) as
    ``out_shape``, numpy-style (right-aligned; 0 on broadcast axes)."""
    lead = len(out_shape) - len(shape)
    if lead < 0:
        raise ValueError(f"{tuple(shape)} has more dimensions than {tuple(out_shape)}")
    own = dense_strides(shape, item)
    return tuple(0 if i < lead or shape[i - lead] == 1 else own[i - lead]
                 for i in range(len(out_shape)))


@dataclass(frozen=True)
class Batch:
    """A batch of matrices as two levels: index z in [0, n0*n1), split (z // n1, z % n1),
    operand i's matrix at ``z0*strides[i][0] + z1*strides[i][1]`` elements."""

    n0: int
    n1: int
    strides: tuple[tuple[int, int], ...]

    @property
    def count(self) -> int:
        return self.n0 * self.n1

    def offset(self, z: int, operand: int) -> int:
        """Element offset of operand ``operand``'s matrix for batch index ``z``."""
        s0, s1 = self.strides[operand]
        return (z // self.n1) * s0 + (z % self.n1) * s1


def collapse_batch(out_batch: Sequence[int],
                   strides: Sequence[Sequence[int]]) -> Batch | None:
    """The batch dims ``out_batch`` with each operand's strides over them, collapsed into
    two levels (:class:`Batch`); None when more than two remain (operands broadcasting
    on interleaved axes, e.g. [B, 1, H] against [1, S, H])."""
    dims: list[tuple[int, list[int]]] = []
    for i, n in enumerate(out_batch):
        if n == 1:
            continue
        st = [int(s[i]) for s in strides]
        if dims and all(p == s * n for p, s in zip(dims[-1][1], st)):
            dims[-1] = (dims[-1][0] * n, st)
        else:
            dims.append((int(n), st))
    if len(dims) > 2:
        return None
    while len(dims) < 2:
        dims.insert(0, (1, [0] * len(strides)))
    (n0, s0), (n1, s1) = dims
    return Batch(n0, n1, tuple(zip(s0, s1)))


def cdiv(a: int, b: int) -> int:
    """``a / b`` rounded up."""
    return -(-a // b)


def norm_axis(axis: int, rank: int) -> int | None:
    """``axis`` in [0, rank), or None when it is out of range."""
    axis = int(axis)
    if axis < 0:
        axis += rank
    return axis if 0 <= axis < rank else None


def dtype_name(dtype: Any) -> str | None:
    """'float32' for torch.float32, numpy's float32 or the string; None for None."""
    if dtype is None:
        return None
    text = str(dtype)
    return text.removeprefix("torch.")

# --------------------------------------------------------------------------- launches


@dataclass(frozen=True)
class Launch:
    """One kernel launch: source file, kernel, grid, block, and the arguments as
    (type code, value) pairs: ``p`` pointer (a tensor name, or None for null), ``i``
    int32, ``q`` int64, ``f`` float32."""

    source: str
    kernel: str
    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    args: tuple[tuple[str, Any], ...]


def pack_args(args: Sequence[tuple[str, Any]], pointers: dict[str, int]) -> list[Any]:
    """Launch arguments as the numpy scalars CuPy passes by value: pointers as uint64
    (0 for None), ``i`` as int32, ``q`` as int64, ``f`` as float32.

    Raises:
        OverflowError: an int32 argument out of range (the plan should have refused it).
    """
    import numpy as np

    out: list[Any] = []
    for code, value in args:
        if code == "p":
            out.append(np.uint64(pointers[value] if value is not None else 0))
        elif code == "i":
            if not -2 ** 31 <= int(value) <= INT32_MAX:
                raise OverflowError(f"kernel argument {value} does not fit int32")
            out.append(np.int32(value))
        elif code == "q":
            out.append(np.int64(value))
        elif code == "f":
            out.append(np.float32(value))
        else:
            raise ValueError(f"unknown argument code {code!r}")
    return out


@dataclass(frozen=True)
class Plan:
    """How a call runs: the launches (in order), the output shapes and dtypes, and the
    inputs the host must expand to dense tensors first (name -> shape)."""

    launches: tuple[Launch, ...]
    outputs: tuple[tuple[str, tuple[int, ...], str], ...]
    """(tensor name, shape, dtype) of each output, allocated before the launches."""
    result: tuple[str, ...]
    """The tensors returned, in order, with ``view`` shapes applied."""
    expand: dict[str, tuple[int, ...]] = field(default_factory=dict)
    views: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Output name -> the shape it is returned as (MatMul's 1-D operands)."""
