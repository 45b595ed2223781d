"""The Graph: an ONNX model with inferred shapes and dtypes, as nodes the planner can read.

A Graph keeps its ModelProto (graph compilers take that) and a flat view of it (nodes
with python attribute values, value infos with dtype names and shapes) that capability
checks and kernel runners use. ``subgraph`` cuts out a partition as a valid ONNX model.
"""

from __future__ import annotations

from collections import ChainMap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backplane.model.dtypes import DTYPE_CODES, DTYPE_NAMES
from backplane.ops.registry import version_of
from backplane.sdk.text import shown
# Node.version comes from the op registry's table, which never imports this module back

#: The ml_dtypes type of each dtype numpy has no type of its own for (ml_dtypes comes with
#: onnx).
ML_DTYPES = {"bfloat16": "bfloat16", "float8e4m3fn": "float8_e4m3fn",
             "float8e4m3fnuz": "float8_e4m3fnuz", "float8e5m2": "float8_e5m2",
             "float8e5m2fnuz": "float8_e5m2fnuz", "uint4": "uint4", "int4": "int4",
             "float4e2m1": "float4_e2m1fn", "float8e8m0": "float8_e8m0fnu", "uint2": "uint2",
             "int2": "int2", "float6e2m3": "float6_e2m3fn", "float6e3m2": "float6_e3m2fn"}


def numpy_dtype(name: str) -> Any:
    """The numpy dtype of a backplane dtype name (``object`` for strings, ml_dtypes' types
    for bfloat16, the float8, 4- and 2-bit types), or None for a name that has none."""
    import numpy as np

    if name == "string":
        return np.dtype(object)
    if name in ML_DTYPES:
        import ml_dtypes

        found = getattr(ml_dtypes, ML_DTYPES[name], None)
        return np.dtype(found) if found is not None else None
    try:
        return np.dtype(name)
    except TypeError:
        return None

Dim = int | str | None
Shape = tuple[Dim, ...]


@dataclass(frozen=True)
class ValueInfo:
    """A tensor's name, element type and shape.

    ``shape`` is None when even the rank is unknown; a dimension is an int when static,
    a str when symbolic (``"batch"``) and None when unknown.
    """

    name: str
    dtype: str
    shape: Shape | None

    @property
    def is_static(self) -> bool:
        """Whether every dimension is a known integer."""
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    def describe(self) -> str:
        """``float32[batch,3,224,224]``."""
        dims = "?" if self.shape is None else ",".join("?" if d is None else shown(d)
                                                       for d in self.shape)
        return f"{self.dtype}[{dims}]"

    def to_dict(self) -> dict[str, Any]:
        """Plain data."""
        return {"name": self.name, "dtype": self.dtype,
                "shape": None if self.shape is None else list(self.shape)}


@dataclass(frozen=True)
class Node:
    """One node, with python attribute values and the types of its inputs and outputs."""

    name: str
    op_type: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: Mapping[str, Any] = field(default_factory=dict)
    input_types: tuple[ValueInfo | None, ...] = ()
    output_types: tuple[ValueInfo | None, ...] = ()
    opset: int = 0
    """The model's opset of the node's domain (0 when the model imports none)."""
    version: int = 0
    """The version of the op's schema in force at ``opset`` (its ``since`` opset), as the
    operator registry knows it; 0 for an op the registry does not know."""
    constant_inputs: frozenset[int] = frozenset()
    """The positions of the inputs that are constants (initializers) of the graph."""
    body: tuple["Node", ...] = field(default=(), compare=False, repr=False)
    """Every node of the node's subgraphs (If branches, Loop and Scan bodies), nested ones
    included, typed from the subgraphs' inferred value infos."""

    @property
    def primary_dtype(self) -> str | None:
        """The dtype of the first input (first output for ops without inputs)."""
        for vi in (self.input_types or self.output_types):
            return vi.dtype if vi is not None else None
        return None

    @property
    def input_shapes(self) -> list[Shape | None]:
        """Shapes of the inputs (None where unknown or absent)."""
        return [vi.shape if vi is not None else None for vi in self.input_types]


def value_info_from_proto(vi: Any) -> ValueInfo | None:
    """A ValueInfo from an onnx ValueInfoProto, or None where its type is not set.

    A sequence, an optional or a map has its type's spelling as its dtype
    (``seq(float32)``, ``optional(seq(int64))``: the registry's) and no shape."""
    t = vi.type
    if not t.HasField("tensor_type"):
        spelled = type_string(t)
        return ValueInfo(vi.name, spelled, None) if spelled else None
    tt = t.tensor_type
    shape: Shape | None = None
    if tt.HasField("shape"):
        dims: list[Dim] = []
        for d in tt.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
        shape = tuple(dims)
    return ValueInfo(vi.name, DTYPE_NAMES.get(tt.elem_type, f"onnx-type-{tt.elem_type}"), shape)


def type_string(t: Any) -> str | None:
    """A TypeProto as the registry spells it: ``float32``, ``seq(float32)``,
    ``optional(seq(int64))``, ``map(int64,float32)``; None where any part is unset."""
    which = t.WhichOneof("value")
    if which == "tensor_type":
        return DTYPE_NAMES.get(t.tensor_type.elem_type) if t.tensor_type.elem_type else None
    if which in ("sequence_type", "optional_type"):
        inner = type_string(getattr(t, which).elem_type)
        return f"{which.split('_')[0].replace('sequence', 'seq')}({inner})" if inner else None
    if which == "map_type":
        value = type_string(t.map_type.value_type)
        key = DTYPE_NAMES.get(t.map_type.key_type)
        return f"map({key},{value})" if key and value else None
    return None


def is_tensor(vi: ValueInfo | None) -> bool:
    """Whether a value is a tensor (not a sequence, an optional or a map)."""
    return vi is not None and not vi.dtype.startswith(NON_TENSOR)


#: How the dtype of a value that is not a tensor begins.
NON_TENSOR = ("seq(", "optional(", "map(")


def attribute_values(node_proto: Any) -> dict[str, Any]:
    """Attributes as python values: str for strings, numpy arrays for tensors."""
    from onnx import AttributeProto, helper, numpy_helper

    out: dict[str, Any] = {}
    for a in node_proto.attribute:
        if a.type == AttributeProto.TENSOR:
            out[a.name] = numpy_helper.to_array(a.t)
            continue
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        elif isinstance(v, list) and v and isinstance(v[0], bytes):
            v = [x.decode("utf-8", "replace") for x in v]
        out[a.name] = v
    return out


def values_of(g: Any) -> dict[str, ValueInfo]:
    """The typed values a GraphProto declares: initializers, then value infos, outputs and
    inputs (a declaration overrides an initializer of the same name; an input's, an output's
    of the same name: what a caller feeds is checked against the input's, found by fuzzing)."""
    values: dict[str, ValueInfo] = {}
    for t in g.initializer:
        values[t.name] = ValueInfo(t.name, DTYPE_NAMES.get(t.data_type, "unknown"),
                                   tuple(int(d) for d in t.dims))
    for vi in list(g.value_info) + list(g.output) + list(g.input):
        info = value_info_from_proto(vi)
        if info is not None:
            values[vi.name] = info
    return values


def _subgraphs(node_proto: Any) -> list[Any]:
    """The GraphProtos of a node's attributes (If branches, Loop and Scan bodies)."""
    from onnx import AttributeProto

    out: list[Any] = []
    for a in node_proto.attribute:
        if a.type == AttributeProto.GRAPH:
            out.append(a.g)
        elif a.type == AttributeProto.GRAPHS:
            out.extend(a.graphs)
    return out


def nodes_of(node_protos: Any, values: Mapping[str, ValueInfo],
             opsets: Mapping[str, int], constants: frozenset[str] = frozenset()) -> list[Node]:
    """Nodes of a graph's node protos, typed from ``values``; each node's ``body`` holds
    the nodes of its subgraphs, typed from their own value infos and the enclosing scope.
    ``constants`` names the initializers in scope."""
    out = []
    for n in node_protos:
        body: list[Node] = []
        for g in _subgraphs(n):
            # a view, not a copy: copying the enclosing scope into every subgraph made
            # graphs of many If/Loop nodes quadratic to load
            inner = ChainMap(values_of(g), values)
            scope = constants | {t.name for t in g.initializer}
            for m in nodes_of(g.node, inner, opsets, scope):
                body += [m, *m.body]
        domain = n.domain if n.domain != "ai.onnx" else ""
        opset = int(opsets.get(domain, 0))
        out.append(Node(
            name=n.name, op_type=n.op_type, domain=domain,
            inputs=tuple(n.input), outputs=tuple(n.output),
            attributes=attribute_values(n),
            input_types=tuple(values.get(i) if i else None for i in n.input),
            output_types=tuple(values.get(o) if o else None for o in n.output),
            opset=opset, version=version_of(n.op_type, domain, opset) if opset else 0,
            constant_inputs=frozenset(k for k, i in enumerate(n.input) if i in constants),
            body=tuple(body)))
    return out


def _outer_scope_inputs(node_proto: Any) -> set[str]:
    """Names a node's subgraphs (If, Loop, Scan bodies) read from the enclosing scope."""
    from onnx import AttributeProto

    names: set[str] = set()
    for a in node_proto.attribute:
        graphs = [a.g] if a.type == AttributeProto.GRAPH else (
            list(a.graphs) if a.type == AttributeProto.GRAPHS else [])
        for g in graphs:
            defined = {i.name for i in g.input} | {t.name for t in g.initializer}
            for n in g.node:
                for name in list(n.input) + sorted(_outer_scope_inputs(n)):
                    if name and name not in defined:
                        names.add(name)
                defined.update(n.output)
    return names


class Graph:
    """An ONNX model with every value's type known, as seen by the planner and backends.

    Attributes:
        model: the ModelProto (checked, shape-inferred, external data loaded).
        name: a display name.
        nodes: nodes in topological order.
        inputs: the inputs a caller must feed (graph inputs that are not initializers).
        outputs: the graph's outputs.
        initializers: names of constant tensors stored in the model.
        values: every known value by name.
        opsets: opset version per domain (``""`` for the default domain).
        notes: what intake changed on the way in (an opset upgrade), for plans to show.
        external_dir: the folder of the initializers a model too big for one protobuf
            message keeps in their files (over 2 GiB; their ``external_data`` locations are
            relative to it); None when every tensor is inside ``model``. A runtime that
            takes the model as bytes reads them there (ONNX Runtime's
            ``session.model_external_initializers_file_folder_path``), or takes them as
            arrays from :meth:`split_external`.
        unconfirmed_outputs: outputs whose declared shape shape inference could not
            confirm, with that declaration: a backend that produces another shape there is
            warned about, not failed (the model's declaration may be wrong).
    """

    def __init__(self, model: Any, name: str = "model"):
        self.model = model
        self.name = name
        self.notes: list[str] = []
        self.external_dir: Path | None = None
        self.unconfirmed_outputs: dict[str, ValueInfo] = {}
        g = model.graph
        self.initializers = frozenset(t.name for t in g.initializer)
        self.opsets = {o.domain if o.domain != "ai.onnx" else "": o.version
                       for o in model.opset_import}
        self.values = values = values_of(g)
        self.inputs = [values[i.name] for i in g.input
                       if i.name not in self.initializers and i.name in values]
        self.outputs = [values[o.name] for o in g.output if o.name in values]
        self.nodes = nodes_of(g.node, values, self.opsets, self.initializers)
        self._implicit = [_outer_scope_inputs(n) for n in g.node]
        self._reader_index: dict[str, list[int]] | None = None
        self._initializer_at: dict[str, int] | None = None

    def node_reads(self, index: int) -> set[str]:
        """Every value node ``index`` reads, its subgraphs' outer-scope reads included."""
        return {i for i in self.nodes[index].inputs if i} | self._implicit[index]

    def boundary(self, indices: Iterable[int]) -> tuple[list[str], list[str]]:
        """The inputs and outputs of the nodes at ``indices`` taken as one subgraph.

        Inputs are the values read but not produced there (initializers excluded: they
        travel with the subgraph); outputs are the values produced there that the rest of
        the graph, or the graph's caller, reads.
        """
        chosen = sorted(set(indices))
        inside = set(chosen)
        produced: set[str] = set()
        seen: set[str] = set()
        read: list[str] = []
        for i in chosen:
            for r in sorted(self.node_reads(i)):
                if r not in produced and r not in seen:
                    seen.add(r)
                    read.append(r)
            produced.update(o for o in self.nodes[i].outputs if o)
        # Only the readers of what these nodes produce are looked at (not every other node),
        # so cutting a graph into partitions costs time linear in the graph, not quadratic.
        graph_outputs = {o.name for o in self.outputs}
        readers = self._readers()
        inputs = [r for r in read if r not in self.initializers]
        outputs = [o for i in chosen for o in self.nodes[i].outputs
                   if o and (o in graph_outputs or any(j not in inside
                                                       for j in readers.get(o, ())))]
        return inputs, outputs

    def _readers(self) -> dict[str, list[int]]:
        """Value name -> the indices of the nodes that read it (outer-scope reads of
        subgraphs included); built once, on first use."""
        if self._reader_index is None:
            index: dict[str, list[int]] = {}
            for i in range(len(self.nodes)):
                for v in self.node_reads(i):
                    index.setdefault(v, []).append(i)
            self._reader_index = index
        return self._reader_index

    def subgraph(self, indices: Iterable[int], name: str | None = None) -> "Graph":
        """The nodes at ``indices`` as a valid ONNX model of their own (see ``boundary``)."""
        from onnx import helper

        chosen = sorted(set(indices))
        sub_inputs, sub_outputs = self.boundary(chosen)
        if chosen == list(range(len(self.nodes))) and (
                {vi.name for vi in self.inputs} <= set(sub_inputs)
                or {o.name for o in self.outputs} - set(sub_outputs)):
            # the whole graph, unless it has inputs no node reads (ONNX Runtime would ask
            # for them, and the caller's plan feeds only what is read)
            return self
        reads = set().union(*(self.node_reads(i) for i in chosen))
        every = self.model.graph.initializer
        if self._initializer_at is None:
            self._initializer_at = {t.name: k for k, t in enumerate(every)}
        consts = [every[k] for k in sorted(self._initializer_at[r] for r in reads
                                           if r in self._initializer_at)]

        def proto(value: str) -> Any:
            vi = self.values.get(value)
            if vi is None:
                raise ValueError(f"value {value!r} has no inferred type; cannot cut a partition")
            if not is_tensor(vi):  # a sequence or an optional: its declaration as it is
                g = self.model.graph
                return next(d for d in [*g.value_info, *g.input, *g.output] if d.name == value)
            dims = None if vi.shape is None else list(vi.shape)
            return helper.make_tensor_value_info(value, DTYPE_CODES[vi.dtype], dims)

        crossing = set(sub_outputs)
        internal = [o for i in chosen for o in self.nodes[i].outputs
                    if o and o not in crossing and o in self.values]
        graph = helper.make_graph(
            [self.model.graph.node[i] for i in chosen], name or f"{self.name}-part",
            [proto(v) for v in sub_inputs], [proto(v) for v in sub_outputs],
            initializer=consts, value_info=[proto(v) for v in internal])
        model = helper.make_model(graph, opset_imports=list(self.model.opset_import),
                                  ir_version=self.model.ir_version,
                                  functions=list(self.model.functions))
        sub = Graph(model, name or f"{self.name}-part")
        sub.external_dir = self.external_dir  # its initializers may still be in their files
        return sub

    def split_external(self, model: Any = None) -> tuple[Any, dict[str, Any]]:
        """``model`` (default: this graph's) with each initializer kept in a file made a
        graph input of its type and shape, and those initializers as numpy arrays mapped
        from their files in :attr:`external_dir` (copy-on-write: nothing is read before it
        is used, nothing is written). For runtimes that take a model as bytes and its big
        constants from memory (OpenVINO: ``op.Constant(array, shared_memory=True)``; the
        reference: extra feeds). ``(model, {})`` when nothing is kept in a file."""
        model = self.model if model is None else model
        if self.external_dir is None:
            return model, {}
        # on use only: keeps this module's own import light
        from backplane.model.external import split

        return split(model, self.external_dir)

    def describe_inputs(self) -> str:
        """``x: float32[batch,3], y: int64[4]``."""
        return ", ".join(f"{shown(vi.name)}: {vi.describe()}" for vi in self.inputs)

