"""Run-time verification: a backend not qualified on this device has its first run of each
partition checked against the reference backend, on the same inputs.

A backend is qualified for a partition when the conformance run stored on this device
(``backplane conformance run``; :mod:`backplane.engine.qualification`), for the plugin's
installed version, passed every op x dtype of the partition. ``Session(verify=...)``:

- ``"unqualified"`` (the default): check the partitions of backends not qualified here;
- ``"always"``: check every partition not on the reference backend;
- ``"off"``: check nothing.

A partition passes once; later runs are not checked. A mismatch raises
:class:`~backplane.sdk.errors.VerificationError`, and the session excludes the device for its
life with a warning, then answers the request from its next plan. Where the reference gives
NaN or infinity and the backend another value, that is a special-value deviation, noted in
the plan, not a mismatch. Partitions below fp32 are the accuracy check's
(``precision="auto"``), not this one's.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from backplane.engine import qualification
from backplane.engine.executor import to_host
from backplane.engine.plan import FALLBACK_BACKEND
from backplane.model.graph import is_tensor
from backplane.sdk.contract import CompileOptions, Device, op_key
from backplane.sdk.errors import BackplaneError, VerificationError
from backplane.sdk.text import first_line

if TYPE_CHECKING:  # pragma: no cover
    from backplane.model.graph import Graph
    from backplane.engine.plan import Partition, Plan
    from backplane.engine.registry import Registry

VERIFY_MODES = ("unqualified", "always", "off")

#: The largest error a checked output may have, relative to that output's largest magnitude
#: on the reference, by element type (the rest are compared exactly).
TOLERANCE = {"float32": 1e-3, "float64": 1e-3, "float16": 1e-2, "bfloat16": 2e-2}
#: ... and where the partition quantizes: runtimes that round a tie the other way land one
#: quantization step apart, a few percent of an output's range (as the corpus allows).
QUANTIZED_TOLERANCE = 5e-2
#: Ops that round to an integer grid (their outputs, and what is computed from them, may
#: differ by a step between correct runtimes).
QUANTIZING = frozenset({"QuantizeLinear", "DynamicQuantizeLinear", "QLinearConv",
                        "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeLSTM",
                        "DynamicQuantizeMatMul", "QLinearAdd", "QLinearMul", "QLinearSigmoid",
                        "QLinearLeakyRelu", "QLinearGlobalAveragePool", "QLinearConcat",
                        "QLinearAveragePool", "QLinearSoftmax", "MatMulIntegerToFloat",
                        "QAttention", "QGemm"})


def unqualified(graph: "Graph", plan: "Plan", mode: str) -> frozenset[int]:
    """The indices of ``plan``'s partitions whose first run ``mode`` checks."""
    if mode == "off":
        return frozenset()
    out = set()
    passed: dict[str, set[tuple[str, str]]] = {}
    for part in plan.partitions:
        if part.backend == FALLBACK_BACKEND or part.precision != "fp32":
            continue
        if part.device not in passed:
            passed[part.device] = _passed(plan, part) if mode == "unqualified" else set()
        ok = passed[part.device]
        for i in part.node_indices:
            node = graph.nodes[i]
            dtype = node.primary_dtype or ""
            if (op_key(node.op_type, node.domain), dtype) not in ok and \
                    (node.op_type, dtype) not in ok:
                out.add(part.index)
                break
    return frozenset(out)


def _passed(plan: "Plan", part: "Partition") -> set[tuple[str, str]]:
    """The op x dtype variants the stored conformance run of the partition's backend on
    its device passed (none when there is no run, or it cannot be read)."""
    return qualification.passed_variants(part.backend, part.device,
                                         plan.fingerprints.get(part.device),
                                         plan.versions.get(part.backend))


class Verifier:
    """Checks a partition's outputs against the reference backend's, on its inputs.

    Args:
        graph: the whole model.
        reg: the registry (its reference backend and device run the check).
        options: the session's compile options.
    """

    def __init__(self, graph: "Graph", reg: "Registry", options: CompileOptions):
        self.graph, self._reg, self._options = graph, reg, options
        self._non_tensor = frozenset(n for n, vi in graph.values.items() if not is_tensor(vi))
        self._lock = threading.Lock()
        self._exes: dict[tuple[int, ...], Any] = {}

    def check(self, part: "Partition", args: dict[str, Any], outputs: dict[str, Any],
              notes: list[str]) -> None:
        """Raise VerificationError when ``outputs`` (of ``part`` run on ``args``) disagree
        with the reference; append special-value deviations, and a check that could not
        run, to ``notes``."""
        import numpy as np


        try:
            exe = self._reference(part)
            want = exe.run({k: v if k in self._non_tensor else to_host(np, v)
                            for k, v in args.items()})
        except BackplaneError as exc:
            notes.append(f"partition {part.index} on {part.device} was not verified: the "
                         f"reference backend cannot run it ({first_line(exc)})")
            return
        except Exception as exc:
            notes.append(f"partition {part.index} on {part.device} was not verified: the "
                         f"reference backend failed ({type(exc).__name__}: "
                         f"{first_line(exc)})")
            return
        floor = QUANTIZED_TOLERANCE if any(
            self.graph.nodes[i].op_type in QUANTIZING for i in part.node_indices) else 0.0
        for name, ref in want.items():
            if name not in outputs or name in self._non_tensor:
                continue
            problem, deviation = compare(np, to_host(np, outputs[name]), np.asarray(ref),
                                         floor)
            if deviation:
                notes.append(f"{part.device} deviates from the reference on special values "
                             f"in '{name}': {deviation}")
            if problem:
                raise VerificationError(
                    f"backend '{part.backend}' on '{part.device}' is not qualified on this "
                    f"device (no passing 'backplane conformance run' for its ops here), and "
                    f"its first run of partition {part.index} disagreed with the reference "
                    f"backend on output '{name}': {problem}. The device is excluded from "
                    f"this session; run 'backplane conformance run --backend {part.backend}' "
                    "to see which op is wrong",
                    backend=part.backend, device=part.device)

    def _reference(self, part: "Partition") -> Any:
        key = tuple(part.node_indices)
        with self._lock:
            exe = self._exes.get(key)
            if exe is None:
                device = _reference_device(self._reg)
                sub = self.graph.subgraph(part.node_indices, f"{self.graph.name}-check")
                exe = self._reg.backends[FALLBACK_BACKEND].compile(sub, device, self._options)
                self._exes[key] = exe
            return exe


def compare(np: Any, got: Any, want: Any, floor: float = 0.0) -> tuple[str, str]:
    """(what is wrong, special-value deviation): empty strings where there is none.

    Where the reference is finite, the backend must be finite and within
    :data:`TOLERANCE` of it (or ``floor``, if larger), relative to the reference's largest
    finite magnitude; integer and boolean outputs must be equal, or within ``floor`` of
    the output's range where it is set (quantized values, a step apart). Where the
    reference is NaN or infinite, another value is a deviation, not an error."""
    if got.shape != want.shape:
        return f"shape {got.shape}, the reference gives {want.shape}", ""
    if got.dtype != want.dtype:
        return f"dtype {got.dtype}, the reference gives {want.dtype}", ""
    tol = TOLERANCE.get(str(want.dtype))
    if tol is None and (want.dtype.kind in "fc" or (floor and want.dtype.kind in "iu")):
        tol = TOLERANCE["float32"]  # another float, or integers on a quantization grid
    elif tol is None:
        wrong = got != want
        return (f"{int(np.count_nonzero(wrong))} of {want.size} element(s) differ"
                if np.any(wrong) else ""), ""
    tol = max(tol, floor)
    a = got.astype(np.float64)
    b = want.astype(np.float64)
    special = ~np.isfinite(b)
    finite = ~special
    deviation = ""
    if special.any():
        off = special & ~((a == b) | (np.isnan(a) & np.isnan(b)))
        if off.any():
            i = int(np.flatnonzero(off.reshape(-1))[0])
            deviation = (f"{int(off.sum())} element(s), e.g. {a.reshape(-1)[i]!r} where the "
                         f"reference gives {b.reshape(-1)[i]!r}")
    if not finite.any():
        return "", deviation
    bad = finite & ~np.isfinite(a)
    if bad.any():
        return (f"{int(bad.sum())} non-finite element(s) where the reference is finite",
                deviation)
    scale = float(np.max(np.abs(b[finite]))) or 1.0
    error = float(np.max(np.abs(a[finite] - b[finite]))) / scale
    if error > tol:
        return (f"max error {error:.3g} relative to the output's largest magnitude "
                f"(tolerance {tol:g})"), deviation
    return "", deviation


def _reference_device(reg: "Registry") -> Device:
    for d in reg.devices():
        if d.backend == FALLBACK_BACKEND:
            return d
    raise VerificationError("the reference backend has no device", backend=FALLBACK_BACKEND)
