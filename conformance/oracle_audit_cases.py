"""The cases of the oracle audit (``oracle_audit.py``): ONNX's node tests, as recorded and
converted to the op versions none is recorded at.

The node tests come from ``onnx/backend/test/data/node`` where the installed wheel ships it
(or a folder named by ``--data``), else from the generators the data is made from
(``onnx.backend.test.case.node``, seeded, so a run is repeatable).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backplane.conformance.onnx_suite import generated_node_tests, read_value
from backplane.ops import RANDOM_OPS
from backplane.ops.survey import relabeled


#: Converted tests per untested op version (``--old-versions``).
PER_OLD_VERSION = 2
#: The opset below which backplane's intake upgrades a model: old versions start here.
OLDEST_OPSET = 7
@dataclass
class AuditCase:
    """One node test: its model and its recorded inputs and outputs (graph order)."""

    id: str
    op: str
    domain: str
    version: int
    opset: int
    model: bytes
    inputs: list[Any]
    outputs: list[Any]
    origin: str = "recorded"
    random: bool = False
    """Its outputs are random draws: only their structure (shapes, dtypes) is compared."""

    @property
    def tensors_only(self) -> bool:
        """Whether every input and output is a plain tensor (the oracle's domain)."""
        import numpy as np

        return all(isinstance(v, np.ndarray) for v in [*self.inputs, *self.outputs])


def node_tests(pattern: str | None = None, data_dir: str | None = None,
               old_versions: bool = False) -> list[AuditCase]:
    """ONNX's node tests whose id or op matches ``pattern`` (globs or substrings, ``|``
    between alternatives), from the data files or their generators (module docstring)."""
    import onnx

    folder = Path(data_dir) if data_dir else Path(onnx.__file__).parent / \
        "backend/test/data/node"
    raw = _from_files(folder) if folder.is_dir() else generated_node_tests()
    bases = {name: model for name, model, _, _ in raw}
    cases = [_case(name, model, inputs, outputs, bases) for name, model, inputs, outputs in raw]
    if old_versions:
        cases += _converted(cases, bases)
    return _select(cases, pattern)


def _select(cases: list[AuditCase], pattern: str | None) -> list[AuditCase]:
    import fnmatch

    if not pattern:
        return cases
    globs = [p if any(ch in p for ch in "*?[") else f"*{p}*" for p in pattern.split("|") if p]
    return [c for c in cases if any(fnmatch.fnmatchcase(c.id, g) or fnmatch.fnmatchcase(c.op, g)
                                    for g in globs)]


def _from_files(folder: Path) -> list[tuple[str, Any, list, list]]:
    import onnx

    out = []
    for test in sorted(p for p in folder.iterdir() if (p / "model.onnx").is_file()):
        model = onnx.load(str(test / "model.onnx"))
        data = test / "test_data_set_0"
        inputs = [read_value(data / f"input_{i}.pb", vi.type)
                  for i, vi in enumerate(model.graph.input)]
        outputs = [read_value(data / f"output_{i}.pb", vi.type)
                   for i, vi in enumerate(model.graph.output)]
        out.append((test.name, model, inputs, outputs))
    return out


def _case(name: str, model: Any, inputs: list, outputs: list, bases: dict[str, Any],
          origin: str = "recorded") -> AuditCase:
    import onnx

    base = bases.get(name.split("_expanded")[0], model)  # an expanded test: its op's test
    node = base.graph.node[0]
    domain = "" if node.domain == "ai.onnx" else node.domain
    opset = next((o.version for o in model.opset_import
                  if (o.domain if o.domain != "ai.onnx" else "") == domain), 0)
    try:
        version = onnx.defs.get_schema(node.op_type, opset, domain).since_version
    except Exception:  # an op the installed onnx does not define at that opset
        version = 0
    return AuditCase(name, node.op_type, domain, version, opset, model.SerializeToString(),
                     inputs, outputs, origin, _random(base, inputs))


def _random(model: Any, inputs: list[Any]) -> bool:
    """Whether a test's outputs are random draws (its first node's op: see RANDOM_OPS)."""
    node = model.graph.node[0]
    if node.op_type in RANDOM_OPS:
        return True
    if node.op_type != "Dropout" or len(node.input) < 3 or not node.input[2]:
        return False
    fed = dict(zip([vi.name for vi in model.graph.input], inputs))
    training = fed.get(node.input[2])
    ratio = fed.get(node.input[1]) if node.input[1] else 0.5
    return bool(training is not None and training and (ratio is None or ratio > 0))


def _converted(cases: list[AuditCase], bases: dict[str, Any]) -> list[AuditCase]:
    """Tests converted to each default-domain op version from opset 7 none is recorded at."""
    import onnx

    tested: dict[str, set[int]] = {}
    sources: dict[str, list[AuditCase]] = {}
    for c in cases:
        if c.domain == "" and "_expanded" not in c.id:
            tested.setdefault(c.op, set()).add(c.version)
            sources.setdefault(c.op, []).append(c)
    out = []
    for op, have in sorted(tested.items()):
        versions = sorted({s.since_version for s in onnx.defs.get_all_schemas_with_history()
                           if s.name == op and s.domain == ""})
        for i, since in enumerate(versions):
            end = versions[i + 1] - 1 if i + 1 < len(versions) else 10 ** 6
            if since in have or end < OLDEST_OPSET:
                continue
            target = max(since, OLDEST_OPSET)
            made = 0
            for src in sorted(sources[op], key=lambda c: abs(c.opset - target)):
                if made == PER_OLD_VERSION or src.random:
                    continue
                model = onnx.load_from_string(src.model)
                feeds = dict(zip([vi.name for vi in model.graph.input], src.inputs))
                found = _at_opset(model, target, op, feeds, versions)
                if found is None:
                    continue
                new, how, frozen = found
                inputs = [v for vi, v in zip(onnx.load_from_string(src.model).graph.input,
                                             src.inputs) if vi.name not in frozen]
                out.append(_case(f"{src.id}@opset{target}", new, inputs, src.outputs, bases,
                                 origin=f"{how} from {src.id} (opset {src.opset})"))
                made += 1
    return out


def _at_opset(model: Any, target: int, op: str, feeds: dict[str, Any], versions: list[int]
              ) -> tuple[Any, str, set[str]] | None:
    """``(model at opset target, how, inputs made constants)``: relabelled where the node
    is valid there as it is (the versions between differ in types only, or in what the
    node leaves unset); else converted by ``onnx.version_converter``, with the integer
    inputs made initializers if the adapter needs them constant (old versions took axes,
    pads, starts ... as attributes), to the target or to one of the op's versions
    between, then relabelled; None where nothing works. ``versions``: the op's."""
    import onnx
    from onnx import numpy_helper, version_converter


    def valid(m: Any) -> bool:
        try:
            onnx.checker.check_model(m, full_check=True)
        except Exception:  # not a valid model at that opset
            return False
        return len(m.graph.node) == 1 and m.graph.node[0].op_type == op

    same = relabeled(model, target)
    if valid(same):
        return same, "relabelled", set()
    first = model.graph.node[0].input[0] if model.graph.node[0].input else ""
    frozen = {name for name, v in feeds.items() if name != first
              and getattr(v, "dtype", None) is not None and v.dtype.kind in "iu"}
    for consts in (set(), frozen) if frozen else (set(),):
        source = onnx.ModelProto()
        source.CopyFrom(model)
        kept = [vi for vi in source.graph.input if vi.name not in consts]
        del source.graph.input[:]
        source.graph.input.extend(kept)
        source.graph.initializer.extend(numpy_helper.from_array(feeds[n], n)
                                        for n in sorted(consts))
        opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
        for step in [target] + [v for v in versions if target < v < opset]:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    new = relabeled(version_converter.convert_version(source, step), target)
            except Exception:  # no adapter down to this version (with these inputs)
                continue
            if valid(new):
                return new, "converted", consts
    return None
