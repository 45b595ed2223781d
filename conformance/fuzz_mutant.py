"""The fuzzer's model under mutation (:class:`Mutant`), and what its mutations look up in it."""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx
from onnx import TensorProto


@dataclass
class Mutant:
    """A model under mutation, with the files of its folder and what was done to it."""

    model: onnx.ModelProto
    data: bytes | None = None
    """The serialized model once a byte-level mutation has run (then ``model`` is stale)."""
    files: dict[str, bytes] = field(default_factory=dict)
    """Files to write, relative to the case's root; the model's folder is ``model/``."""
    links: dict[str, str] = field(default_factory=dict)
    """Symbolic links to make (relative path -> target), relative to the case's root."""
    done: list[str] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        """The model as bytes."""
        return self.data if self.data is not None else self.model.SerializeToString()


def all_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The graph's nodes and those of its subgraphs, depth first."""
    out = []
    for n in graph.node:
        out.append(n)
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                out.extend(all_nodes(a.g))
    return out


def value_infos(m: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The main graph's declared inputs, outputs and values."""
    g = m.graph
    return [*g.input, *g.output, *g.value_info]


def value_names(m: onnx.ModelProto) -> list[str]:
    """The names of the main graph's values: inputs, initializers and node outputs."""
    g = m.graph
    names = [i.name for i in g.input] + [t.name for t in g.initializer]
    for n in g.node:
        names.extend(o for o in n.output if o)
    return names


def elem_name(elem: int) -> str:
    """An element type's name (``FLOAT``), or its number where it has none."""
    try:
        return TensorProto.DataType.Name(elem)
    except ValueError:
        return str(elem)
