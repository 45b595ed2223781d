"""ONNX element types by number and by name: the one table the graph IR and the operator
schemas both read.

A leaf: it imports nothing of backplane, so :mod:`backplane.model.graph` and
:mod:`backplane.ops.schemas` can both take it without importing each other.
"""

from __future__ import annotations

#: ONNX TensorProto element types by number (fixed by the ONNX spec), as numpy-style names.
DTYPE_NAMES = {
    1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64",
    8: "string", 9: "bool", 10: "float16", 11: "float64", 12: "uint32", 13: "uint64",
    14: "complex64", 15: "complex128", 16: "bfloat16", 17: "float8e4m3fn",
    18: "float8e4m3fnuz", 19: "float8e5m2", 20: "float8e5m2fnuz", 21: "uint4", 22: "int4",
    23: "float4e2m1", 24: "float8e8m0", 25: "uint2", 26: "int2", 27: "float6e2m3",
    28: "float6e3m2",
}
#: The element type number of each name of :data:`DTYPE_NAMES`.
DTYPE_CODES = {v: k for k, v in DTYPE_NAMES.items()}
