"""reference: runs any valid ONNX graph through onnx.reference, on the host CPU.

The few kernels onnx.reference gets wrong are replaced (:mod:`backplane.runtimes.onnxref`,
the evaluator this backend shares with the conformance oracle and model conversion).

It is always available, it is the oracle the conformance suite compares against, and it
is the last resort of every automatic plan (plans flag it when it is used).
"""

from __future__ import annotations

import platform
import threading
from typing import Any

from backplane import (API_VERSION, Backend, Capabilities, CompileOptions, Device, Executable,
                       OpSupport)
from backplane import __version__ as _backplane_version


class ReferenceBackend(Backend):
    """onnx.reference as a backend: every default-domain op, in the model's own types."""

    name = "reference"
    api_version = API_VERSION
    version = _backplane_version
    priority = -1000  # last in the fixed order: the fallback, never the first choice
    # onnx.reference interprets node by node in numpy: slow per node, slow convolutions.
    cost_hints = {"launch_us": 10.0, "node_us": 8.0, "compute_efficiency": 0.1,
                  "memory_efficiency": 0.5}
    # Every default-domain op, and the fused ops of the backplane domain, which onnx.reference
    # runs through the decompositions the fusion pass adds to the model as local functions.
    capabilities = Capabilities(
        ops={f"backplane::{op}": OpSupport() for op in
             ("FusedConvRelu", "FusedMatMulBiasGelu", "Attention")},
        any_op=True, precisions=frozenset({"fp64", "fp32"}))

    def probe(self) -> list[Device]:
        """One device, the host CPU; onnx.reference needs nothing else."""
        cpu = platform.processor() or platform.machine()
        return [Device(name=f"host CPU ({cpu}), onnx.reference", kind="cpu",
                       properties={"machine": platform.machine()})]

    def compile(self, graph: Any, device: Device, options: CompileOptions) -> Executable:
        """Build a ReferenceEvaluator over the (sub)graph's model (initializers kept in
        their files, in a model over 2 GiB, are fed to it as mapped arrays)."""
        model, consts = graph.split_external()
        return ReferenceExecutable(model, consts)


class ReferenceExecutable(Executable):
    """One onnx.reference evaluator per thread: concurrent runs never share evaluator state."""

    thread_safe = True

    def __init__(self, model: Any, consts: dict[str, Any] | None = None):
        # on use only: discovery loads this module, and must stay light
        from backplane.runtimes.onnxref.fixes import evaluator_class

        self._model, self._consts = model, dict(consts or {})
        self._outputs = [o.name for o in model.graph.output]
        # Optional inputs a run may leave out: onnx.reference reads them as None (empty).
        self._empty = {i.name: None for i in model.graph.input
                       if i.type.WhichOneof("value") == "optional_type"}
        self._local = threading.local()
        self._local.evaluator = evaluator_class()(model)  # fail at compile, not at first run

    def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Evaluate the graph once."""
        evaluator = getattr(self._local, "evaluator", None)
        if evaluator is None:
            # on use only: discovery loads this module, and must stay light
            from backplane.runtimes.onnxref.fixes import evaluator_class

            evaluator = self._local.evaluator = evaluator_class()(self._model)
        import numpy as np

        # IEEE semantics, as ONNX specifies: exp overflows to inf, log(0) is -inf, quietly.
        with np.errstate(all="ignore"):
            return dict(zip(self._outputs, evaluator.run(
                None, {**self._empty, **inputs, **self._consts})))
