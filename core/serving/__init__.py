"""Serving models over the network: ``backplane serve``.

- :mod:`~backplane.serving.protocol`: the KServe Open Inference Protocol v2 tensor codec
  (JSON and binary tensors);
- :mod:`~backplane.serving.repository`: a model repository (one ``.onnx`` file, or a
  folder of model folders with optional ``config.toml``), loaded into Sessions behind
  Batchers;
- :mod:`~backplane.serving.metrics`: Prometheus metrics in a registry of the server's own;
- :mod:`~backplane.serving.server`: the Starlette app (:func:`create_app`) and
  :func:`serve`.

They need the ``serve`` extra (Starlette, uvicorn, prometheus-client); ``import
backplane`` never imports them. :func:`require` says what is missing.
"""

from __future__ import annotations

import importlib

from backplane.sdk.errors import UnsupportedError

#: The import names of the ``serve`` extra's packages.
REQUIRED = ("starlette", "uvicorn", "prometheus_client")


def require() -> None:
    """Raise :class:`~backplane.sdk.errors.UnsupportedError` naming the packages of the
    ``serve`` extra that are not installed, and how to install them."""
    missing = []
    for name in REQUIRED:
        try:  # (imported, not only found: a package that is present but broken is missing)
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UnsupportedError(f"backplane serve needs {', '.join(missing)}, which "
                               f"{'is' if len(missing) == 1 else 'are'} not installed; run: "
                               "pip install 'backplane-hal[serve]'")
