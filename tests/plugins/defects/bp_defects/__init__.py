"""Backends that run every op through onnx.reference, except for one planted defect each.

- ``wrong-values``: Relu on float32 returns values off by 1e-2 (float16 and others are right);
- ``segfaults``: Sigmoid kills the process with a segmentation fault;
- ``hangs``: Tanh never returns;
- ``overclaims``: declares Softmax (and only a few ops) but cannot run it.

The conformance suite must report exactly these, and complete the rest of each run.
"""

from __future__ import annotations

import ctypes
import time
from pathlib import Path

from backplane import API_VERSION, Backend, Capabilities, Device, Executable, OpSupport


class _Reference(Executable):
    thread_safe = False

    def __init__(self, model):
        from onnx.reference import ReferenceEvaluator

        self._evaluator = ReferenceEvaluator(model)
        self._outputs = [o.name for o in model.graph.output]

    def run(self, inputs):
        return dict(zip(self._outputs, self._evaluator.run(None, inputs)))


class _Planted(Backend):
    api_version = API_VERSION
    version = "0.5.0"
    capabilities = Capabilities(any_op=True)
    op = ""

    def probe(self):
        return [Device(name="host CPU (planted defect)", kind="cpu")]

    def compile(self, graph, device, options):
        exe = _Reference(graph.model)
        if any(n.op_type == self.op for n in graph.nodes):
            return self.defective(exe, graph)
        return exe

    def defective(self, exe, graph):
        raise NotImplementedError


class _Wrapped(Executable):
    def __init__(self, inner, effect):
        self._inner, self._effect = inner, effect

    def run(self, inputs):
        return self._effect(self._inner.run(inputs), inputs)


class WrongValues(_Planted):
    name = "wrong-values"
    op = "Relu"
    known_failures = str(Path(__file__).with_name("known_failures.toml"))

    def defective(self, exe, graph):
        if graph.nodes[0].primary_dtype != "float32":
            return exe
        return _Wrapped(exe, lambda out, _: {k: v + v.dtype.type(1e-2) for k, v in out.items()})


def _segfault(out, inputs):
    ctypes.string_at(0)  # reads address 0: SIGSEGV
    return out


class Segfaults(_Planted):
    name = "segfaults"
    op = "Sigmoid"

    def defective(self, exe, graph):
        return _Wrapped(exe, _segfault)


def _forever(out, inputs):
    while True:
        time.sleep(3600)


class Hangs(_Planted):
    name = "hangs"
    op = "Tanh"

    def defective(self, exe, graph):
        return _Wrapped(exe, _forever)


class Overclaims(_Planted):
    name = "overclaims"
    op = "Softmax"
    capabilities = Capabilities(ops={op: OpSupport() for op in ("Relu", "Softmax", "Add")})

    def defective(self, exe, graph):
        raise NotImplementedError("Softmax is declared but was never written")
