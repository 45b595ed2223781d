"""onnx.reference with backplane's kernel fixes: the evaluator the reference backend runs and
the conformance oracle and model conversion compute with.

- :mod:`~backplane.runtimes.onnxref.fixes`: ``evaluator_class()``, onnx.reference's
  ``ReferenceEvaluator`` with the replacement kernels installed (``fixed_ops()``), and the
  list of what each replacement fixes;
- :mod:`~backplane.runtimes.onnxref.legacy`: old op versions, and ops onnx.reference lacks;
- :mod:`~backplane.runtimes.onnxref.control`: Loop, If, Scan and Optional;
- :mod:`~backplane.runtimes.onnxref.recurrent`: RNN, GRU and LSTM.

The fixes live here, below every plugin, because the engine (``convert``) and the
conformance suite (the oracle, its audit) need the same evaluator as the reference backend,
and neither may import a plugin. Importing this package imports neither onnx nor numpy:
import ``fixes`` where the evaluator is built.
"""
