"""The real-model corpus: public models, kept as a recipe (``corpus.toml``), never as files.

Each entry says where its model comes from: an ``.onnx`` file shipped inside a PyPI package
(pinned version, path in the archive, the file's sha256), an architecture built from a
torch/transformers config with random weights and exported by one of torch's two exporters
(TorchScript-based ``dynamo=False``, or ``dynamo=True``), or a float entry quantized to QDQ
int8 by ``onnxruntime.quantization``. :func:`materialize` makes the file under the user cache
folder (``backplane.sdk.cache.cache_root()``, ``BACKPLANE_CACHE_DIR``) and checks every file's
sha256 each time it is read back; :func:`sample_inputs` gives inputs the model accepts;
:func:`check` runs it through backplane and through the runtimes directly::

    from backplane.conformance import corpus
    rec = corpus.check("bert-ts14")
    print(rec.outcome)      # "pass", or "gap: <what failed>"

The recipe and the inputs are in :mod:`~backplane.conformance.corpus_recipe`, making the
files in :mod:`~backplane.conformance.corpus_materialize`, the checks in
:mod:`~backplane.conformance.corpus_check`; this module gathers their public names.
"""

from __future__ import annotations

from backplane.conformance.corpus_check import PINNED, Record, check
from backplane.conformance.corpus_materialize import materialize
from backplane.conformance.corpus_recipe import (LAYOUT, MANIFEST, MODEL_FILE, RECIPE, RTOL,
                                                 CorpusError, Entry, entries, entry, sample_inputs)

__all__ = ["LAYOUT", "MANIFEST", "MODEL_FILE", "PINNED", "RECIPE", "RTOL", "CorpusError",
           "Entry", "Record", "check", "entries", "entry", "materialize", "sample_inputs"]
