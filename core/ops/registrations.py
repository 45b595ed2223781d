"""Op tables from a runtime's own kernel registrations: what it really runs, per op version
and type, read rather than guessed.

ONNX Runtime registers one kernel per (execution provider, op, version range, types):
``onnxruntime.capi._pybind_state.get_all_opkernel_def()`` lists them all, for every
provider of the installed build. :func:`ort_op_table` turns them into the op table a
backend declares (``{op key: {version: [dtypes]}}``, the main input's dtypes at each
version of the op's schema in force), for the CPU provider (the ``onnxruntime`` backend)
and the GPU providers (the ``cuda-tensorrt`` and ``rocm`` backends' ONNX Runtime paths).

Importing this module imports no runtime; the functions import onnxruntime.
"""

from __future__ import annotations

from typing import Any

from backplane.ops.registry import all_ops
from backplane.ops.schemas import type_name
from backplane.sdk.contract import OpSupport

#: ONNX Runtime's op domains, as the operator registry names them.
ORT_DOMAINS = ("", "ai.onnx.ml", "com.microsoft")


#: The ONNX Runtime distributions whose builds carry each GPU provider.
PROVIDER_DISTRIBUTIONS = {
    "CUDAExecutionProvider": ("onnxruntime-gpu", "ort-nightly-gpu"),
    "TensorrtExecutionProvider": ("onnxruntime-gpu", "ort-nightly-gpu"),
    "ROCMExecutionProvider": ("onnxruntime-rocm",),
    "MIGraphXExecutionProvider": ("onnxruntime-migraphx", "onnxruntime-rocm"),
}


def may_have(provider: str) -> bool:
    """Whether an installed ONNX Runtime distribution may carry ``provider`` (package
    metadata only: the plain CPU build has no GPU provider, and is not imported to say so)."""
    from importlib import metadata

    dists = PROVIDER_DISTRIBUTIONS.get(provider)
    if dists is None:
        return True
    for dist in dists:
        try:
            metadata.version(dist)
            return True
        except metadata.PackageNotFoundError:
            continue
    return False


def ort_kernels(provider: str) -> dict[str, list[tuple[int, int, dict[str, list[str]]]]]:
    """``{op key: [(first version, last version, {type constraint: [dtypes]})]}`` of the
    kernels ``provider`` registers in the installed ONNX Runtime (empty when the build
    lacks the provider)."""
    from onnxruntime.capi import _pybind_state

    kernels: dict[str, list[tuple[int, int, dict[str, list[str]]]]] = {}
    for k in _pybind_state.get_all_opkernel_def():
        if k.provider == provider and k.domain in ORT_DOMAINS:
            key = k.op_name if k.domain == "" else f"{k.domain}::{k.op_name}"
            start, end = k.version_range
            kernels.setdefault(key, []).append((int(start), int(end), {
                t: [type_name(x) for x in allowed] for t, allowed in k.type_constraints.items()}))
    return kernels


def ort_op_table(provider: str, expands_functions: bool = True) -> dict[str, dict[str, list[str]]]:
    """Every op of the registry in ORT's domains, at every recorded version, with the
    dtypes of its main input (:func:`main_constraint`) that ``provider``'s kernels admit
    there (on the CPU provider, float16 wherever float32 is: ORT casts around the node).
    An op version without a kernel counts where ORT runs it anyway: Constant (ORT makes it
    an initializer) and, with ``expands_functions``, ops whose schema has a function body
    (ORT expands it into ops that have kernels)."""
    kernels = ort_kernels(provider) if may_have(provider) else {}
    if not kernels:  # the installed build lacks the provider
        return {}
    ops: dict[str, dict[str, list[str]]] = {}
    for definition in all_ops():
        if definition.domain not in ORT_DOMAINS:
            continue
        found = {}
        for schema in definition.schemas:
            main = main_constraint(schema)
            if main is None:
                continue
            allowed = schema.type_constraints.get(main, frozenset())
            covering = [c for lo, hi, c in kernels.get(definition.key, ())
                        if _covers(lo, hi, schema.since)]
            if covering:
                dtypes = set().union(*(c.get(main, allowed) for c in covering)) & set(allowed)
                if provider == "CPUExecutionProvider" and "float32" in dtypes:
                    # ORT's CPU provider computes a float16 node without a float16 kernel
                    # in float32 between casts it inserts (InsertCastTransformer).
                    dtypes |= {"float16"} & set(allowed)
            elif definition.key == "Constant" or (expands_functions and schema.function):
                dtypes = set(allowed)
            else:
                continue
            if dtypes:
                found[str(schema.since)] = sorted(dtypes)
        if found:
            ops[definition.key] = found
    return ops


#: The end ONNX Runtime gives a kernel registered "from version N on".
OPEN_END = 2**31 - 1


def _covers(first: int, last: int, version: int) -> bool:
    """Whether a kernel registered for versions ``first`` to ``last`` runs nodes of schema
    version ``version``: ONNX Runtime matches an open-ended registration to its first
    version only (a later version of the op needs a registration of its own), a closed range
    to every version in it."""
    return version == first or (first < version <= last and last != OPEN_END)


def main_constraint(schema: Any) -> str | None:
    """The type constraint of the value whose dtype capabilities check: the first input's,
    or the first output's for an op without inputs."""
    formals = schema.inputs or schema.outputs
    return formals[0][1] if formals else None


def op_supports(table: Any, constraints: Any = None, **fixed: Any) -> dict[str, Any]:
    """OpSupport per op from an op table ``{op key: {version: [dtypes]}}``, derived or
    surveyed: ``constraints`` adds OpSupport fields per op key (attribute limits where a
    variant runs wrong), ``fixed`` to every op (``dynamic_shapes=False``)."""
    out = {}
    for key, versions in table.items():
        per = {int(v): frozenset(d) for v, d in versions.items() if d}
        if per:
            out[key] = OpSupport(dtypes=frozenset().union(*per.values()), versions=per,
                                 **(constraints or {}).get(key, {}), **fixed)
    return out


def merged_paths(kernel_ops: Any, *graph_paths: dict[str, Any]) -> dict[str, Any]:
    """The op table of a backend with several compile paths, tried in order until one
    takes the partition: an op any graph path declares (the union of their versions and
    dtypes), else the kernel path's own support (with its attribute limits)."""
    import dataclasses

    out: dict[str, Any] = {}
    for table in graph_paths:
        for key, support in table.items():
            have = out.get(key)
            if have is None:
                out[key] = support
                continue
            versions = {v: (have.versions or {}).get(v, frozenset()) | d
                        for v, d in (support.versions or {}).items()}
            versions.update({v: d for v, d in (have.versions or {}).items() if v not in versions})
            out[key] = dataclasses.replace(
                have, dtypes=(have.dtypes or frozenset()) | (support.dtypes or frozenset()),
                versions=versions if have.versions is not None and support.versions is not None
                else None)
    for key in kernel_ops:
        out.setdefault(key, kernel_ops[key])
    return out
