"""Shared runtime adapters: what several backend plugins need from one vendor runtime.

- :mod:`backplane.runtimes.openvino`: the OpenVINO ``Core``, tensor conversion, error
  translation, the ONNX fixes OpenVINO's frontend needs, ``query_model`` over trial models;
- :mod:`backplane.runtimes.onnxruntime`: session options, sessions on one provider with CPU
  fallback off, :class:`~backplane.runtimes.onnxruntime.ORTExecutable`, provider readiness;
- :mod:`backplane.runtimes.torch`: the torch op table, its runner ``compile_on`` and
  ``torch_build``; the kernels are in :mod:`backplane.runtimes.torch_ops`;
- :mod:`backplane.runtimes.opencl`: device state, the OpenCL kernel table and executable,
  the probe kernel (:mod:`backplane.runtimes.opencl_drivers`: pip-installed drivers); the
  kernels' host side is in :mod:`backplane.runtimes.opencl_ops`;
- :mod:`backplane.runtimes.onnxref`: onnx.reference with backplane's kernel fixes, the
  evaluator of the reference backend, the conformance oracle and model conversion;
- :mod:`backplane.runtimes.nvml`: NVIDIA GPUs' records from NVML, else nvidia-smi
  (cuda-tensorrt and core's hardware probe);
- :mod:`backplane.runtimes.shapecache`: compiled forms kept per input-shape signature.

A plugin imports these, never another plugin; an adapter imports only the SDK. Importing an
adapter imports no vendor runtime (nor numpy): each is imported inside the functions that
use it, so ``import backplane`` and plugin discovery stay fast. The kernel packages
(``torch_ops``, ``opencl_ops``) and ``onnxref.fixes`` do import theirs: their tables and
callers import them on first use. Code shared by the executables raises errors naming
the backend and device it runs for, which the caller passes (``backend=``).
"""
