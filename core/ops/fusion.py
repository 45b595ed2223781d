"""The fusion pass: rewrite ONNX patterns into the ``backplane`` domain's fused ops.

Patterns (top-level graph only, default-domain opset 17 or newer):

- ``Conv -> Relu`` and ``Conv -> Clip`` (constant or absent bounds) -> ``FusedConvRelu``;
- ``MatMul -> Add(bias) -> Gelu`` -> ``FusedMatMulBiasGelu``, also with Gelu spelled out
  as ``x * 0.5 * (1 + Erf(x / sqrt 2))`` (either product order, ``Div`` by sqrt 2 or
  ``Mul`` by its inverse), as exporters without a Gelu op write it;
- ``MatMul(Q, K^T) -> Mul|Div (constant scale) -> [Add mask] -> Softmax(axis -1) ->
  MatMul(V)`` on rank-4 values -> ``Attention``. A ``Transpose`` producing ``K^T`` is
  absorbed when nothing else reads it; otherwise a Transpose of ``K^T`` is inserted.
  Without a mask, the Attention node gets a zero scalar additive mask (its decomposition
  takes four inputs).

A Conv's ``auto_pad`` is resolved into explicit ``pads`` (SAME padding only when the input's
spatial size is static). Constants are initializers that are not graph inputs, or outputs
of Constant nodes; those only the rewritten nodes read are removed with them.

A pattern is rewritten only when ``has_kernel`` says a backend has a kernel for the fused
op, the node's type is admitted by the fused op, and every intermediate value has no other
reader (subgraph reads included) and is not a graph output. The fused node takes the name
of the pattern's first node (the Conv, the first MatMul) and the output name of its last,
and sits where the last node was, so readers and plans keyed by name stay valid.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import TYPE_CHECKING, Any

from backplane.model.dtypes import DTYPE_CODES
from backplane.model.intake import load_model
from backplane.ops.fused import KEYS, MIN_OPSET, HasKernel, add_decompositions
from backplane.ops.opdef import DOMAIN
from backplane.ops.registry import get
from backplane.ops.windows import window_pads

if TYPE_CHECKING:  # pragma: no cover
    from backplane.model.graph import Graph

_ONNX = ("", "ai.onnx")


def fuse(graph: "Graph", has_kernel: HasKernel) -> "Graph":
    """Rewrite fusable patterns of ``graph`` into fused ops.

    Args:
        graph: a Graph from :func:`backplane.model.intake.load_model`.
        has_kernel: ``op_key -> bool`` (``"backplane::FusedConvRelu"``): whether some backend
            can run the fused op; patterns of ops without a kernel are left alone.

    Returns:
        A new Graph built from a rewritten copy of the model, with the decompositions of
        the fused ops it uses and the ``backplane`` opset import, checked and
        shape-inferred again by intake; its notes say what was fused. ``graph`` itself
        when nothing was rewritten (or its opset is older than 17).
    """
    if graph.opsets.get("", 0) < MIN_OPSET:
        return graph
    rewriter = _Rewriter(graph, has_kernel)
    for i in range(len(graph.nodes)):
        if i not in rewriter.used:
            rewriter.match(i)
    if not rewriter.counts:
        return graph

    fused = load_model(add_decompositions(rewriter.model()))
    fused.name = graph.name
    summary = ", ".join(f"{n} x {op}" for op, n in sorted(rewriter.counts.items()))
    fused.notes.extend([*graph.notes, f"fused into backplane ops: {summary}"])
    return fused


class _Rewriter:
    """Matches patterns node by node and records the replacements."""

    def __init__(self, graph: "Graph", has_kernel: HasKernel):
        self.g = graph
        self.nodes = graph.nodes
        self.has_kernel = has_kernel
        self.readers: dict[str, list[int]] = {}
        for i in range(len(self.nodes)):
            for v in graph.node_reads(i):
                self.readers.setdefault(v, []).append(i)
        self.producer = {o: i for i, n in enumerate(self.nodes) for o in n.outputs if o}
        self.outputs = {o.name for o in graph.model.graph.output}
        self.graph_inputs = {i.name for i in graph.model.graph.input}
        self.used: set[int] = set()
        self.replacement: dict[int, list[Any]] = {}
        self.initializers: list[Any] = []
        self.counts: Counter[str] = Counter()
        self.taken = set(graph.values) | {n.name for n in self.nodes} | {
            v for n in self.nodes for v in (*n.inputs, *n.outputs)}
        existing = [n for n in self.nodes if n.domain == DOMAIN]
        self.gelu_modes = {n.attributes.get("approximate", "none") for n in existing
                           if n.op_type == "FusedMatMulBiasGelu"}
        self.bool_masks = any(
            n.op_type == "Attention" and len(n.input_types) > 3 and n.input_types[3] is not None
            and n.input_types[3].dtype == "bool" for n in existing)
        self._kernels: dict[str, bool] = {}

    # ---- queries

    def is_op(self, i: int | None, *ops: str) -> bool:
        return (i is not None and i not in self.used and self.nodes[i].op_type in ops
                and self.nodes[i].domain in _ONNX)

    def sole_reader(self, value: str) -> int | None:
        """The one node reading ``value``, if exactly one does and it is not a graph output."""
        readers = self.readers.get(value, [])
        if value in self.outputs or len(readers) != 1 or readers[0] in self.used:
            return None
        return readers[0]

    def constant(self, value: str) -> Any:
        """The value as a numpy array when it is a constant (not an overridable input)."""
        from onnx import numpy_helper

        if value in self.g.initializers and value not in self.graph_inputs:
            proto = next(t for t in self.g.model.graph.initializer if t.name == value)
            return numpy_helper.to_array(proto)
        i = self.producer.get(value)
        if i is not None and self.is_op(i, "Constant"):
            import numpy as np

            attrs = self.nodes[i].attributes
            for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
                if key in attrs:
                    return np.asarray(attrs[key])
        return None

    def scalar(self, value: str, max_rank: int = 1) -> float | None:
        """The float value of a one-element constant of rank <= ``max_rank``, else None.

        The rank bound keeps a rewrite from dropping a broadcast that raised the rank.
        """
        array = self.constant(value) if value else None
        if array is None or array.size != 1 or array.ndim > max_rank:
            return None
        return float(array.reshape(-1)[0])

    def shape(self, value: str) -> tuple[Any, ...] | None:
        vi = self.g.values.get(value)
        return None if vi is None else vi.shape

    def admits(self, op: str, dtype: str | None) -> bool:
        """A kernel exists for the fused op and its first type constraint admits ``dtype``."""
        key = KEYS[op]
        if key not in self._kernels:
            self._kernels[key] = bool(self.has_kernel(key))
        return self._kernels[key] and dtype in get(op, DOMAIN).reference_dtypes

    def fresh(self, name: str) -> str:
        candidate, i = name, 1
        while candidate in self.taken:
            i += 1
            candidate = f"{name}#{i}"
        self.taken.add(candidate)
        return candidate

    # ---- rewriting

    def replace(self, indices: list[int], op: str, inputs: list[str], output: str,
                attributes: dict[str, Any], before: list[Any] = ()) -> None:
        from onnx import helper

        node = helper.make_node(op, inputs, [output], name=self.nodes[indices[0]].name,
                                domain=DOMAIN, **attributes)
        self.replacement[max(indices)] = [*before, node]
        self.used.update(indices)
        self.counts[op] += 1

    def match(self, i: int) -> None:
        if self.is_op(i, "Conv"):
            self.conv_activation(i)
        elif self.is_op(i, "MatMul"):
            if not self.attention(i):
                self.matmul_bias_gelu(i)

    def conv_activation(self, i: int) -> None:
        conv = self.nodes[i]
        j = self.sole_reader(conv.outputs[0])
        if not self.is_op(j, "Relu", "Clip"):
            return
        act = self.nodes[j]
        attributes = self.conv_attributes(i)
        if attributes is None or not self.admits("FusedConvRelu", conv.primary_dtype):
            return
        if act.op_type == "Clip":
            bounds = []
            for k, unbounded in ((1, -math.inf), (2, math.inf)):
                name = act.inputs[k] if len(act.inputs) > k else ""
                value = self.scalar(name) if name else unbounded
                if value is None:
                    return  # a bound computed at run time: not a fixed activation
                bounds.append(value)
            attributes.update(clip_min=bounds[0], clip_max=bounds[1])
        bias = conv.inputs[2] if len(conv.inputs) > 2 else ""
        self.replace([i, j], "FusedConvRelu", [conv.inputs[0], conv.inputs[1], bias],
                     act.outputs[0], attributes)

    def conv_attributes(self, i: int) -> dict[str, Any] | None:
        """Conv's attributes in canonical form (explicit pads), or None if not resolvable."""
        conv = self.nodes[i]
        attrs = conv.attributes
        w = self.shape(conv.inputs[1])
        kernel = attrs.get("kernel_shape") or (list(w[2:]) if w and len(w) > 2 else None)
        if not kernel or not all(isinstance(d, int) for d in kernel):
            return None
        k = len(kernel)
        strides = list(attrs.get("strides") or [1] * k)
        dilations = list(attrs.get("dilations") or [1] * k)
        auto_pad = attrs.get("auto_pad", "NOTSET")
        if auto_pad == "NOTSET":
            pads = list(attrs.get("pads") or [0] * 2 * k)
        elif auto_pad == "VALID":
            pads = [0] * 2 * k
        else:  # SAME_UPPER / SAME_LOWER: the odd pixel goes at the end / the beginning
            x = self.shape(conv.inputs[0])
            if x is None or len(x) != k + 2 or not all(isinstance(d, int) for d in x[2:]):
                return None
            pads = window_pads(x[2:], kernel, strides, dilations, None, auto_pad)
        return {"pads": pads, "strides": strides, "dilations": dilations,
                "group": int(attrs.get("group", 1)), "kernel_shape": list(kernel)}

    def matmul_bias_gelu(self, i: int) -> None:
        mm = self.nodes[i]
        j = self.sole_reader(mm.outputs[0])
        if not self.is_op(j, "Add"):
            return
        add = self.nodes[j]
        others = [v for v in add.inputs if v != mm.outputs[0]]
        if len(others) != 1:
            return
        x = add.outputs[0]
        k = self.sole_reader(x)
        if self.is_op(k, "Gelu"):
            gelu, mode, out = [k], self.nodes[k].attributes.get("approximate", "none"), \
                self.nodes[k].outputs[0]
        else:
            found = self.erf_gelu(x)
            if found is None:
                return
            (gelu, out), mode = found, "none"
        if self.gelu_modes - {mode} or not self.admits("FusedMatMulBiasGelu", mm.primary_dtype):
            return  # one model holds one Gelu decomposition
        self.gelu_modes.add(mode)
        self.replace([i, j, *gelu], "FusedMatMulBiasGelu", [*mm.inputs[:2], others[0]], out,
                     {"approximate": mode})

    def erf_gelu(self, x: str) -> tuple[list[int], str] | None:
        """``x * 0.5 * (1 + Erf(x / sqrt 2))`` reading ``x``: (node indices, output) or None."""
        readers = self.readers.get(x, [])
        if x in self.outputs or len(readers) != 2 or any(r in self.used for r in readers):
            return None

        def other(n: Any, value: str) -> str | None:
            rest = [v for v in n.inputs if v != value]
            return rest[0] if len(rest) == 1 else None

        def near(value: str | None, target: float) -> bool:
            got = self.scalar(value) if value else None
            return got is not None and abs(got - target) <= 1e-6 * max(1.0, abs(target))

        scaled = next((r for r in readers if (
            self.is_op(r, "Div") and self.nodes[r].inputs[0] == x
            and near(self.nodes[r].inputs[1], math.sqrt(2))) or (
            self.is_op(r, "Mul") and near(other(self.nodes[r], x), 1 / math.sqrt(2)))), None)
        if scaled is None:
            return None
        e = self.sole_reader(self.nodes[scaled].outputs[0])
        if not self.is_op(e, "Erf"):
            return None
        a = self.sole_reader(self.nodes[e].outputs[0])
        if not self.is_op(a, "Add") or not near(other(self.nodes[a], self.nodes[e].outputs[0]), 1):
            return None
        m = self.sole_reader(self.nodes[a].outputs[0])
        if not self.is_op(m, "Mul"):
            return None
        factor = other(self.nodes[m], self.nodes[a].outputs[0])
        second = next(r for r in readers if r != scaled)
        if factor == x and m == second:  # (x * (1 + erf)) * 0.5
            h = self.sole_reader(self.nodes[m].outputs[0])
            if not (self.is_op(h, "Mul")
                    and near(other(self.nodes[h], self.nodes[m].outputs[0]), 0.5)):
                return None
            return [scaled, e, a, m, h], self.nodes[h].outputs[0]
        if (self.is_op(second, "Mul") and factor == self.nodes[second].outputs[0]
                and near(other(self.nodes[second], x), 0.5)
                and self.sole_reader(factor) == m):  # (x * 0.5) * (1 + erf)
            return [scaled, e, a, second, m], self.nodes[m].outputs[0]
        return None

    def attention(self, i: int) -> bool:
        qk = self.nodes[i]
        q, kt = qk.inputs[0], qk.inputs[1]
        if any(s is None or len(s) != 4 for s in (self.shape(q), self.shape(kt))):
            return False
        chain, value = [i], qk.outputs[0]
        j = self.sole_reader(value)
        scale = 1.0
        if self.is_op(j, "Mul", "Div"):
            n = self.nodes[j]
            if n.op_type == "Div":
                c = self.scalar(n.inputs[1], 4) if n.inputs[0] == value else None
                scale = 1 / c if c else None
            else:
                rest = [v for v in n.inputs if v != value]
                scale = self.scalar(rest[0], 4) if len(rest) == 1 else None
            if scale is None:
                return False
            chain, value = chain + [j], n.outputs[0]
            j = self.sole_reader(value)
        mask = ""
        if self.is_op(j, "Add"):
            rest = [v for v in self.nodes[j].inputs if v != value]
            if len(rest) != 1:
                return False
            mask = rest[0]
            chain, value = chain + [j], self.nodes[j].outputs[0]
            j = self.sole_reader(value)
        if not self.is_op(j, "Softmax") or self.nodes[j].attributes.get("axis", -1) not in (-1, 3):
            return False
        chain, value = chain + [j], self.nodes[j].outputs[0]
        j = self.sole_reader(value)
        if not self.is_op(j, "MatMul") or self.nodes[j].inputs[0] != value:
            return False
        v = self.nodes[j].inputs[1]
        dtype = qk.primary_dtype
        mask_vi = self.g.values.get(mask) if mask else None
        if (self.shape(v) is None or len(self.shape(v)) != 4 or self.bool_masks
                or (mask and (mask_vi is None or mask_vi.dtype != dtype
                              or mask_vi.shape is None or len(mask_vi.shape) > 4))
                or not self.admits("Attention", dtype)):
            return False
        chain.append(j)
        before: list[Any] = []
        t = self.producer.get(kt)
        if (self.is_op(t, "Transpose") and list(self.nodes[t].attributes.get("perm", [])) ==
                [0, 1, 3, 2] and self.sole_reader(kt) == i):
            k = self.nodes[t].inputs[0]
            chain.append(t)
        else:
            from onnx import helper

            k = self.fresh(f"{qk.name}/k")
            before.append(helper.make_node("Transpose", [kt], [k], perm=[0, 1, 3, 2],
                                           name=self.fresh(f"{qk.name}/k_transpose")))
        if not mask:
            mask = self.zero(dtype, qk.name)
        self.replace(chain, "Attention", [q, k, v, mask], self.nodes[j].outputs[0],
                     {"scale": scale}, before)
        return True

    def zero(self, dtype: str, owner: str) -> str:
        """A new scalar zero initializer of ``dtype``: the additive mask of no mask."""
        from onnx import helper


        name = self.fresh(f"{owner}/zero_mask")
        self.initializers.append(helper.make_tensor(name, DTYPE_CODES[dtype], [], [0]))
        return name

    # ---- the result

    def model(self) -> Any:
        """A copy of the model with the replacements, and what they left unread removed."""
        import onnx

        protos = list(self.g.model.graph.node)
        kept: list[Any] = []
        for index, proto in enumerate(protos):
            kept.extend(self.replacement.get(index, []))
            if index not in self.used:
                kept.append(proto)
        read = {v for n in kept for v in n.input} | self.outputs
        for index in range(len(self.nodes)):
            if index not in self.used:
                read |= self.g.node_reads(index)
        removed_reads = {v for index in self.used for v in self.g.node_reads(index)}
        # Constants that only the fused nodes read are dead now.
        kept = [n for n in kept if not (n.op_type == "Constant" and n.domain in _ONNX
                                         and set(n.output) <= removed_reads
                                         and not set(n.output) & read)]
        produced = {v for n in kept for v in n.output}
        model = onnx.ModelProto()
        model.CopyFrom(self.g.model)
        g = model.graph
        del g.node[:]
        g.node.extend(kept)
        inits = [t for t in g.initializer if t.name in read or t.name in self.graph_inputs
                 or t.name not in removed_reads]  # the user's own unread constants stay
        del g.initializer[:]
        g.initializer.extend(inits + self.initializers)
        infos = [vi for vi in g.value_info if vi.name in produced]
        del g.value_info[:]
        g.value_info.extend(infos)
        return model
