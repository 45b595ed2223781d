"""The operator registry: every op backplane plans for, with its schemas and its cost.

An op is found from its name: :func:`get` returns its :class:`OpDef` (its schema at every
recorded version, its family, its cost function), and :func:`cost` prices a graph node.

Four tiers (:data:`TIERS`):

- ``mandatory``: :data:`MANDATORY`, the 49 ONNX default-domain ops of the core set that
  the conformance suite's mandatory tier checks;
- ``optional``: every other op the installed onnx defines in the default domain and in
  ``ai.onnx.ml``, at every version from opset 7 to the newest;
- ``contrib``: the ``com.microsoft`` ops of ONNX Runtime's contrib registry, which its
  optimizer and quantizer write into models (Attention, SkipLayerNormalization,
  QLinearConv, MatMulNBits ...), planned wherever a backend declares them;
- ``fused``: :data:`FUSED`, ops of the ``backplane`` domain (:mod:`backplane.ops.fused`),
  each with a decomposition into ONNX ops so any backend, and the oracle, can run a graph
  that the fusion pass (:func:`backplane.ops.fusion.fuse`) rewrote.

Schemas are data (:mod:`backplane.ops.schemas`), read from checked-in JSON; costs come from
each op's family (:mod:`backplane.ops.costs`). Importing this package imports neither
numpy nor onnx; ``import backplane`` does not import it at all.

This package only gathers the public names: the table is :mod:`backplane.ops.registry`,
the definitions :mod:`backplane.ops.opdef`, the window geometry :mod:`backplane.ops.windows`.
Modules of the package import those, never the package itself, so none of them depends on
another through this file.
"""

from __future__ import annotations

from backplane.ops.costs import Cost
from backplane.ops.opdef import DOMAIN, FUSED, MANDATORY, RANDOM_OPS, TIERS, OpDef, OpVersion
from backplane.ops.registry import DOMAINS, all_ops, cost, find, get, version_of
from backplane.ops.windows import pool_geometry, window_pads

__all__ = ["DOMAIN", "DOMAINS", "FUSED", "MANDATORY", "RANDOM_OPS", "TIERS", "Cost", "OpDef",
           "OpVersion", "all_ops", "cost", "find", "get", "pool_geometry", "version_of",
           "window_pads"]
