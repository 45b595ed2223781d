"""Operator schemas as checked-in data: every version of every op backplane plans for.

Two data files beside this module, both machine-written and reviewed as diffs:

- ``schemas.json``: every op of the ONNX default domain and of ``ai.onnx.ml`` that the
  installed onnx defines, with the schema of every version in force from opset
  :data:`MIN_OPSET` (default domain; every version for ``ai.onnx.ml``) to the newest.
  Rewritten from ``onnx.defs`` by ``python -m backplane.ops.schemas``; a test fails when it
  is stale for the installed onnx.
- ``contrib_schemas.json``: the ``com.microsoft`` ops that ONNX Runtime's optimizer and
  quantizer write (Attention, SkipLayerNormalization, QLinearConv, MatMulNBits ...), read
  from ONNX Runtime's own schema registry when that file is rewritten; its test runs when
  the installed ONNX Runtime is the one recorded in it.

One version's record: ``inputs`` and ``outputs`` (name, type constraint, optional,
variadic), ``type_constraints`` (constraint -> dtype names; a formal of one fixed type
names its own type string as its constraint), ``attributes`` (name -> default, None when
required or without one), ``required_attributes``, ``function`` (the schema carries a
function body, which runtimes without a kernel expand) and ``deprecated``. Types that are
not tensors keep their ONNX spelling with the element types renamed: ``seq(float32)``,
``optional(seq(int64))``, ``map(string,float32)``.

Reading the data imports neither numpy nor onnx; :func:`regenerate` imports onnx (and
ONNX Runtime for the contrib file).
"""

from __future__ import annotations

import functools
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any
from backplane.model.dtypes import DTYPE_NAMES

#: The data files, beside this module.
DATA_FILE = "schemas.json"
CONTRIB_FILE = "contrib_schemas.json"
#: The oldest default-domain opset whose schemas are recorded (and that intake accepts as
#: it is; older models are upgraded to it).
MIN_OPSET = 7
#: The ONNX domains read from onnx.defs (``""`` is the default domain).
ONNX_DOMAINS = ("", "ai.onnx.ml")
#: The contrib domain read from ONNX Runtime.
CONTRIB_DOMAIN = "com.microsoft"


def key_of(name: str, domain: str) -> str:
    """The registry key of an op: ``Add``, ``ai.onnx.ml::LabelEncoder``."""
    return name if domain in ("", "ai.onnx") else f"{domain}::{name}"


@functools.lru_cache(maxsize=None)
def load(file: str = DATA_FILE) -> dict[str, Any]:
    """A data file, parsed (kept for the life of the process; treat it as read-only)."""
    text = resources.files(__package__).joinpath(file).read_text("utf-8")
    return json.loads(text)


def newest_opsets() -> dict[str, int]:
    """The newest opset of each domain the data records (``{"": 28, "ai.onnx.ml": 5, ...}``)."""
    out = dict(load(DATA_FILE)["opsets"])
    out.update(load(CONTRIB_FILE)["opsets"])
    return out


# --------------------------------------------------------------------------- regeneration

_TENSOR = re.compile(r"(?<![\w])(sparse_tensor|tensor)\((\w+)\)")


def type_name(type_str: str) -> str:
    """``tensor(float)`` -> ``float32``; ``seq(tensor(int64))`` -> ``seq(int64)``; the
    element types of maps keep ONNX's names for non-tensors (``map(string,float32)``)."""
    from onnx import TensorProto


    def one(m: re.Match[str]) -> str:
        code = getattr(TensorProto, m.group(2).upper(), None)
        name = DTYPE_NAMES.get(code, m.group(2)) if code is not None else m.group(2)
        return name if m.group(1) == "tensor" else f"{m.group(1)}({name})"

    text = type_str.replace(" ", "")
    if text.startswith("tensor(") and text.endswith(")") and text.count("(") == 1:
        return _TENSOR.sub(one, text)
    text = _TENSOR.sub(one, text)
    return re.sub(r"\bfloat\b", "float32", re.sub(r"\bdouble\b", "float64", text))


def _attribute_default(attr: Any) -> Any:
    """A schema attribute's default as JSON data, or None when it has none."""
    import numpy as np
    from onnx import AttributeProto, helper, numpy_helper

    default = attr.default_value if hasattr(attr, "default_value") else _parsed(attr)
    if attr.required or default is None or default.type == AttributeProto.UNDEFINED:
        return None
    if default.type == AttributeProto.TENSOR:
        return numpy_helper.to_array(default.t).tolist()
    if default.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS,
                        AttributeProto.SPARSE_TENSOR, AttributeProto.SPARSE_TENSORS,
                        AttributeProto.TENSORS, AttributeProto.TYPE_PROTO,
                        AttributeProto.TYPE_PROTOS):
        return None
    value = helper.get_attribute_value(default)
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, float):  # stored as float32: keep its shortest decimal form
        return float(str(np.float32(value)))
    if isinstance(value, list):
        return [v.decode("utf-8") if isinstance(v, bytes) else
                float(str(np.float32(v))) if isinstance(v, float) else v for v in value]
    return value


def _parsed(attr: Any) -> Any:
    """ONNX Runtime's schema attributes carry their default as serialised bytes."""
    from onnx import AttributeProto

    raw = getattr(attr, "_default_value", b"")
    if not raw:
        return None
    proto = AttributeProto()
    proto.ParseFromString(raw)
    return proto


def _formals(params: Any, constraints: dict[str, list[str]]) -> list[dict[str, Any]]:
    out = []
    for p in params:
        type_str = getattr(p, "type_str", None) or getattr(p, "typeStr", "")
        if type_str not in constraints:  # a fixed type: the type string names itself
            constraints[type_str] = [type_name(type_str)]
        option = int(getattr(p.option, "value", p.option))  # 0 single, 1 optional, 2 variadic
        out.append({"name": p.name, "type": type_str, "optional": option == 1,
                    "variadic": option == 2})
    return out


def _record(schema: Any) -> dict[str, Any]:
    """One version's schema as data."""
    constraints = {t.type_param_str: sorted({type_name(x) for x in t.allowed_type_strs})
                   for t in schema.type_constraints}
    inputs = _formals(schema.inputs, constraints)
    outputs = _formals(schema.outputs, constraints)
    return {
        "inputs": inputs,
        "outputs": outputs,
        "type_constraints": constraints,
        "attributes": {k: _attribute_default(a) for k, a in sorted(schema.attributes.items())},
        "required_attributes": sorted(k for k, a in schema.attributes.items() if a.required),
        "function": bool(getattr(schema, "has_function", False)
                         or getattr(schema, "has_context_dependent_function", False)),
        "deprecated": bool(schema.deprecated),
    }


def _ops_of(schemas: list[Any], min_opset: dict[str, int]) -> dict[str, Any]:
    """``{key: {"name", "domain", "since", "versions": {since: record}}}`` in name order,
    keeping per op the version in force at the domain's first recorded opset and later."""
    by_key: dict[str, list[Any]] = {}
    for s in schemas:
        by_key.setdefault(key_of(s.name, s.domain), []).append(s)
    ops: dict[str, Any] = {}
    for key in sorted(by_key, key=lambda k: (k.count("::"), k)):
        history = sorted(by_key[key], key=lambda s: s.since_version)
        floor = min_opset.get(history[0].domain, 1)
        in_force = [s.since_version for s in history if s.since_version <= floor]
        first = max(in_force) if in_force else history[0].since_version
        ops[key] = {"name": history[0].name, "domain": history[0].domain,
                    "since": history[0].since_version,
                    "versions": {str(s.since_version): _record(s) for s in history
                                 if s.since_version >= first}}
    return ops


def regenerate(path: str | Path | None = None) -> dict[str, Any]:
    """The ONNX schema data (``schemas.json``) from the installed onnx; written to ``path``
    as laid out by :func:`dump` when given."""
    import onnx
    from onnx import defs

    schemas = [s for s in defs.get_all_schemas_with_history() if s.domain in ONNX_DOMAINS]
    newest = {d: max(s.since_version for s in schemas if s.domain == d) for d in ONNX_DOMAINS}
    newest[""] = defs.onnx_opset_version()
    data = {"generated_by": "python -m backplane.ops.schemas", "onnx": onnx.__version__,
            "min_opset": MIN_OPSET, "opsets": newest,
            "ops": _ops_of(schemas, {"": MIN_OPSET})}
    if path is not None:
        Path(path).write_text(dump(data), "utf-8")
    return data


def regenerate_contrib(path: str | Path | None = None) -> dict[str, Any]:
    """The ``com.microsoft`` schema data (``contrib_schemas.json``) from the installed ONNX
    Runtime's schema registry."""
    import onnxruntime
    from onnxruntime.capi import _pybind_state

    schemas = [s for s in _pybind_state.get_all_operator_schema()
               if s.domain == CONTRIB_DOMAIN]
    data = {"generated_by": "python -m backplane.ops.schemas",
            "onnxruntime": onnxruntime.__version__,
            "opsets": {CONTRIB_DOMAIN: max(s.since_version for s in schemas)},
            "ops": _ops_of(schemas, {})}
    if path is not None:
        Path(path).write_text(dump(data), "utf-8")
    return data


def dump(data: dict[str, Any]) -> str:
    """The data as JSON text laid out for review: a line per version field, per formal."""
    def one(v: Any) -> str:
        return json.dumps(v, allow_nan=False)

    def fields(d: dict[str, Any], indent: str) -> str:
        out = []
        for k, v in d.items():
            if isinstance(v, list) and v and isinstance(v[0], dict):
                text = "[\n" + ",\n".join(f"{indent} {one(x)}" for x in v) + f"\n{indent}]"
            else:
                text = one(v)
            out.append(f"{indent}{one(k)}: {text}")
        return ",\n".join(out)

    ops = []
    for key, op in data["ops"].items():
        versions = ",\n".join(f"    {one(v)}: {{\n{fields(rec, '     ')}\n    }}"
                              for v, rec in op["versions"].items())
        head = ", ".join(f"{one(k)}: {one(v)}" for k, v in op.items() if k != "versions")
        ops.append(f"  {one(key)}: {{{head}, \"versions\": {{\n{versions}\n   }}}}")
    head = [f" {one(k)}: {one(v)}" for k, v in data.items() if k != "ops"]
    return "{\n" + ",\n".join(head + [' "ops": {\n' + ",\n".join(ops) + "\n }"]) + "\n}\n"


if __name__ == "__main__":  # python -m backplane.ops.schemas: rewrite the data files
    here = Path(__file__).parent
    regenerate(here / DATA_FILE)
    print(f"wrote {here / DATA_FILE}")
    try:
        regenerate_contrib(here / CONTRIB_FILE)
        print(f"wrote {here / CONTRIB_FILE}")
    except ImportError as exc:
        print(f"kept {here / CONTRIB_FILE}: onnxruntime is not importable ({exc})")
