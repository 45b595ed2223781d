"""example-numpy: a third-party kernel backend whose kernels are numpy functions.

What it is, how it finds devices, and its kernels, in that order. It has no compile of its
own: declaring ``kernels`` gives it backplane's default node-by-node runner.
"""

from __future__ import annotations

import numpy as np

from backplane import AttributeRule, Backend, Device, KernelTable

FLOATS = ("float32", "float64")

kernels = KernelTable(precisions=frozenset({"fp32", "fp64"}), thread_safe=True)


class NumpyBackend(Backend):
    """Host-CPU numpy kernels for a handful of ops."""

    name = "example-numpy"
    api_version = 2  # the backend API it is written for: a literal (docs/api-stability.md)
    version = "0.1.0"
    priority = 10  # preferred over the reference backend
    kernels = kernels

    def probe(self) -> list[Device]:
        """numpy runs wherever Python does: one device."""
        return [Device(name="host CPU (numpy)", kind="cpu", vendor="example")]


@kernels.register("Add", dtypes=FLOATS)
def add(a, b):
    return np.add(a, b)


@kernels.register("Sub", dtypes=FLOATS)
def sub(a, b):
    return np.subtract(a, b)


@kernels.register("Mul", dtypes=FLOATS)
def mul(a, b):
    return np.multiply(a, b)


@kernels.register("Relu", dtypes=FLOATS)
def relu(x):
    return np.maximum(x, 0).astype(x.dtype, copy=False)


@kernels.register("Sigmoid", dtypes=FLOATS)
def sigmoid(x):
    return (1.0 / (1.0 + np.exp(-x))).astype(x.dtype, copy=False)


@kernels.register("Tanh", dtypes=FLOATS)
def tanh(x):
    return np.tanh(x)


@kernels.register("MatMul", dtypes=FLOATS)
def matmul(a, b):
    return np.matmul(a, b)


# Only the common layout: a transposed A goes to another backend, with the reason.
@kernels.register("Gemm", dtypes=FLOATS, max_rank=2,
                  attributes={"transA": AttributeRule(allowed=(0,))})
def gemm(a, b, c=None, alpha=1.0, beta=1.0, transA=0, transB=0):
    y = alpha * (a @ (b.T if transB else b))
    if c is not None:
        y = y + beta * c
    return y.astype(a.dtype, copy=False)


@kernels.register("Softmax", dtypes=FLOATS)
def softmax(x, axis=-1):
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)
