"""The conformance case record, its random generator, and the opset of generated models."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
import onnx

#: The default-domain opset of generated models.
OPSET = 21


@dataclass(kw_only=True)
class Case:
    """One conformance case: a model, its inputs, and where its expected outputs come from."""

    id: str
    """Stable and readable, unique in a suite: ``"Add/float32/broadcast-3x1x4+4"``."""
    op: str
    domain: str = ""
    dtype: str
    """The element type of the op's main input, as in ``backplane.model.graph.DTYPE_NAMES``."""
    tier: str
    model: onnx.ModelProto = field(repr=False)
    inputs: dict[str, np.ndarray] = field(repr=False)
    expected: dict[str, np.ndarray] | None = field(default=None, repr=False)
    """None: the runner asks the oracle. ONNX node tests carry their recorded outputs."""
    tags: tuple[str, ...] = ()
    seed: int = 0
    """The suite seed; the inputs come from ``default_rng(seed + crc32(id))``."""
    tolerance_key: str = ""
    recorded_tolerance: tuple[float, float] | None = None
    """ONNX node tests: the (rtol, atol) ONNX states for its recorded outputs, which were
    computed in the test's own dtype by other formulas; the runner never compares tighter."""
    signed_zero: bool = False
    """A special-values case whose outputs must carry the oracle's sign of zero (Abs, Neg,
    data movement); elsewhere -0.0 equals 0.0."""


def case_rng(seed: int, case_id: str) -> np.random.Generator:
    """The random generator of one case: the suite seed plus a stable hash of the case id."""
    return np.random.default_rng((seed + zlib.crc32(case_id.encode("utf-8"))) % 2 ** 63)
