"""``backplane serve``: the KServe Open Inference Protocol v2 over HTTP, with Prometheus
metrics, on Starlette and uvicorn.

::

    app = create_app("models/")           # every model loaded, each behind a Batcher
    serve("models/", port=8000)           # the same, served until SIGTERM

Endpoints (``{v}``: a version; without it, a model's highest version):

=====================================================  ===================================
``GET /v2``                                            server metadata
``GET /v2/health/live``, ``/v2/health/ready``          200, or 503 once shutting down
``GET /v2/models/{name}[/versions/{v}]``               inputs and outputs (OIP datatype,
                                                       shape with -1 for dynamic)
``GET /v2/models/{name}[/versions/{v}]/ready``         200, or 503 once shutting down
``POST /v2/models/{name}[/versions/{v}]/infer``        inference (JSON or binary tensors)
``GET /v2/models/{name}[/versions/{v}]/config``        the batcher's settings and the plan
``GET /metrics``                                       Prometheus metrics
=====================================================  ===================================

Errors are JSON ``{"error": "..."}`` naming the problem: 400 for a request at fault
(malformed body, unknown datatype, data that does not fill its shape, inputs of the wrong
dtype or shape for the model), 404 for an unknown model, version or path, 413 for a body
over the limit, 503 with ``Retry-After`` when the queue is full (OverloadError) or the
server is shutting down, 504 when a request's deadline passed while it was queued
(DeadlineError: it was accepted, then not run in time; 503 stays the answer of a request
refused at once, so a client can tell the two apart), 500 for a backend's failure.

SIGTERM (or Ctrl-C) drains: the server stops accepting inference requests (503, and
readiness goes false), answers every request it accepted (``Batcher.close(drain=True)``),
then stops and exits with status 0. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from backplane import __version__
from backplane.sdk.errors import BackplaneError, OverloadError, did_you_mean
from backplane.sdk.text import shown
from backplane.serving.metrics import Metrics
from backplane.serving.protocol import (HEADER_LENGTH, InferRequest, ProtocolError, datatype_of,
                                        decode_request, encode_response, error_status)
from backplane.serving.repository import ModelNotFoundError, Repository, ServedModel

log = logging.getLogger("backplane.serving")

#: The largest request body accepted (after decompression), in bytes.
DEFAULT_MAX_BODY_BYTES = 256 * 2**20
#: Bodies from this size on are decoded and encoded on a worker thread, not the event loop.
OFFLOAD_BYTES = 1 << 20


#: The metrics' outcome of each error status (others: "error").
_OUTCOMES = {400: "bad_request", 503: "overload", 504: "deadline"}


class BodyTooLarge(ProtocolError):
    """A request body over the server's limit (HTTP 413)."""


class ServerState:
    """What the app serves: the loaded models, the metrics, and whether it is draining.

    Attributes:
        models: ``{name: {version: ServedModel}}``.
        metrics: the server's :class:`~backplane.serving.metrics.Metrics`.
        draining: True once shutting down: inference gets 503, readiness is false.
        max_body_bytes: the largest request body accepted.
    """

    def __init__(self, models: dict[str, dict[str, ServedModel]], metrics: Metrics,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES):
        self.models, self.metrics, self.max_body_bytes = models, metrics, max_body_bytes
        self.draining = False
        self._closed = threading.Event()
        self._lock = threading.Lock()

    def find(self, name: str, version: str | None = None) -> ServedModel:
        """The model version a request names (its highest version when none is named).

        Raises:
            ModelNotFoundError: no such model, or no such version of it.
        """
        versions = self.models.get(name)
        if versions is None:
            raise ModelNotFoundError(f"unknown model '{shown(name)}'; this server serves "
                                     f"{', '.join(repr(shown(n)) for n in sorted(self.models))}"
                                     f".{did_you_mean(name, self.models)}")
        if version is None:
            return versions[max(versions, key=int)]
        if version not in versions:
            raise ModelNotFoundError(f"model '{shown(name)}' has no version '{shown(version)}'"
                                     f"; its versions are {', '.join(sorted(versions, key=int))}")
        return versions[version]

    def served(self) -> list[ServedModel]:
        """Every model version served."""
        return [m for versions in self.models.values() for m in versions.values()]

    def drain(self, timeout_s: float | None = None) -> None:
        """Stop accepting inference requests and answer every one accepted (blocking;
        safe to call more than once and from any thread)."""
        self.draining = True
        with self._lock:
            if self._closed.is_set():
                return
            for m in self.served():
                m.batcher.close(drain=True, timeout_s=timeout_s)
            self._closed.set()


def create_app(repository: Repository | str | Path | Mapping[str, Mapping[str, ServedModel]],
               *, session: Mapping[str, Any] | None = None,
               batching: Mapping[str, Any] | None = None,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               on_loaded: Callable[[ServedModel], None] | None = None) -> Starlette:
    """The Starlette app serving ``repository``, every model loaded before it returns.

    Args:
        repository: a :class:`Repository`, its path (a ``.onnx`` file or a repository
            folder), or models already loaded (``{name: {version: ServedModel}}``; their
            batchers keep the observers they were made with, so the batch metrics stay
            empty unless those feed ``app.state.server.metrics``).
        session: Session keyword arguments overriding every model's config.toml
            (``devices``, ``policy``, ``precision``, ``max_rel_error``, ``dims``).
        batching: Batcher keyword arguments overriding every config.toml
            (``max_batch_size``, ``max_delay_ms``, ...).
        max_body_bytes: the largest request body accepted (413 beyond).
        on_loaded: called with each model once it is loaded (progress).

    ``app.state.server`` is the :class:`ServerState`; its lifespan's shutdown drains.
    """
    metrics = Metrics()
    if isinstance(repository, Mapping):
        models = {n: dict(v) for n, v in repository.items()}
    else:
        repo = repository if isinstance(repository, Repository) else Repository(repository)
        models = repo.load(session, batching,
                           observer=lambda e: metrics.observer(e.name, e.version),
                           on_loaded=on_loaded)
    state = ServerState(models, metrics, max_body_bytes)
    metrics.watch(state.served())

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(state.drain)

    model = "/v2/models/{name}"
    version = "/v2/models/{name}/versions/{version}"
    # (inference first: Starlette tries the routes in order, on every request)
    routes = [Route(base + "/infer", _infer, methods=["POST"]) for base in (model, version)]
    routes += [Route("/v2", _server_metadata), Route("/v2/health/live", _live),
               Route("/v2/health/ready", _ready), Route("/metrics", _metrics)]
    for base in (model, version):
        routes += [Route(base, _model_metadata), Route(base + "/ready", _model_ready),
                   Route(base + "/config", _model_config)]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: _http_error})
    app.state.server = state
    return app


# --- responses -----------------------------------------------------------------------

def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(json.dumps(data, default=str).encode(), status, headers=headers,
                    media_type="application/json")


def _error(message: str, status: int, headers: Mapping[str, str] | None = None,
           **extra: Any) -> Response:
    return _json({"error": message, **extra}, status, headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    what = {404: f"no such path: {shown(request.url.path, 200)}",
            405: f"{request.method} is not allowed on {shown(request.url.path, 200)}"}
    return _error(what.get(exc.status_code, str(exc.detail)), exc.status_code, exc.headers)


def _state(request: Request) -> ServerState:
    return request.app.state.server


def _find(request: Request) -> ServedModel:
    p = request.path_params
    return _state(request).find(p["name"], p.get("version"))


def _not_found(fn: Callable[[Request], Any]) -> Callable[[Request], Any]:
    async def endpoint(request: Request) -> Response:
        try:
            return await fn(request)
        except ModelNotFoundError as exc:
            return _error(str(exc), 404)

    endpoint.__name__ = fn.__name__
    return endpoint


# --- endpoints -----------------------------------------------------------------------

async def _server_metadata(request: Request) -> Response:
    return _json({"name": "backplane", "version": __version__,
                  "extensions": ["binary_tensor_data", "model_configuration"]})


async def _live(request: Request) -> Response:
    return _json({"live": True})


async def _ready(request: Request) -> Response:
    ready = not _state(request).draining
    return _json({"ready": ready}, 200 if ready else 503)


async def _metrics(request: Request) -> Response:
    body, content_type = await run_in_threadpool(_state(request).metrics.exposition)
    return Response(body, headers={"content-type": content_type})


@_not_found
async def _model_metadata(request: Request) -> Response:
    m = _find(request)
    data = m.metadata()
    data["versions"] = sorted(_state(request).models[m.name], key=int)
    return _json(data)


@_not_found
async def _model_ready(request: Request) -> Response:
    m = _find(request)
    ready = not _state(request).draining
    return _json({"name": m.name, "version": m.version, "ready": ready},
                 200 if ready else 503)


@_not_found
async def _model_config(request: Request) -> Response:
    return _json(_find(request).config_data())


@_not_found
async def _infer(request: Request) -> Response:
    started = time.perf_counter()
    state = _state(request)
    m = _find(request)
    outcome, response = "error", None
    try:
        if state.draining:
            raise OverloadError("the server is shutting down and accepts no more requests; "
                                "send it to another replica", retry_after_s=None)
        body = await _read_body(request, state.max_body_bytes)
        big = len(body) >= OFFLOAD_BYTES
        header = request.headers.get(HEADER_LENGTH)
        decoded = (await run_in_threadpool(decode_request, body, header) if big
                   else decode_request(body, header))
        _check_request(m, decoded)
        # (a handler cancelled (a client's hang-up) cancels its request if still queued;
        # one already running is answered into the void, and the batcher goes on)
        outputs = await m.batcher.run(decoded.inputs, timeout_s=decoded.timeout_s)
        payload, headers = (await run_in_threadpool(encode_response, m.name, m.version,
                                                    decoded, outputs) if big
                            else encode_response(m.name, m.version, decoded, outputs))
        outcome, response = "success", Response(payload, headers=headers)
    except BodyTooLarge as exc:
        outcome, response = "bad_request", _error(str(exc), 413)
    except BackplaneError as exc:  # ProtocolError and RequestError are InputErrors: 400
        status, headers = error_status(exc)
        outcome = _OUTCOMES.get(status, "error")
        extra = {"retry_after_s": exc.retry_after_s} if isinstance(exc, OverloadError) else {}
        if status == 503 and not headers:
            headers = {"Connection": "close"}  # closing: no retry here, send it elsewhere
        response = _error(str(exc) if status != 500 else f"{type(exc).__name__}: {exc}",
                          status, headers, **extra)
    except Exception as exc:  # noqa: BLE001 - a bug answers 500 and is logged, never hangs
        log.exception("backplane serve: inference on %s failed", m.name)
        response = _error(f"internal error: {type(exc).__name__}: {exc}", 500)
    finally:
        state.metrics.request(m.name, m.version, outcome, time.perf_counter() - started)
    return response


def _check_request(m: ServedModel, request: InferRequest) -> None:
    """Before anything runs: a 400 naming the input sent as a datatype the model does not
    take, or the output asked for that the model does not have (input names, shapes and
    the rest are the session's to check: its InputError says what is wrong)."""
    for vi in m.session.inputs:
        want = datatype_of(vi.dtype)
        got = request.datatypes.get(vi.name)
        if got is not None and want is not None and got != want:
            raise ProtocolError(f"input '{shown(vi.name)}' was sent as {got}, but the model "
                                f"takes {want} ({vi.describe()})")
    outputs = [vi.name for vi in m.session.outputs]
    for o in request.outputs or ():
        if o.name not in outputs:
            raise ProtocolError(f"unknown output '{shown(o.name)}'; the model's outputs are "
                                f"{', '.join(repr(shown(n)) for n in outputs)}"
                                f"{did_you_mean(o.name, outputs)}")


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, decompressed (Content-Encoding gzip or deflate), at most
    ``limit`` bytes."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", "deflate"):
        raise ProtocolError(f"Content-Encoding '{shown(encoding)}' is not supported; send "
                            "gzip, deflate or none")
    too_large = BodyTooLarge(f"the request body is over the server's limit of {limit} "
                             "bytes; send smaller requests")
    declared = request.headers.get("content-length")
    if encoding == "identity" and declared and declared.isdigit() and int(declared) > limit:
        raise too_large
    inflate = (zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
               if encoding != "identity" else None)
    parts, size = [], 0
    try:
        async for chunk in request.stream():
            if inflate is not None:  # (bounded: a small bomb never inflates past the limit)
                chunk = inflate.decompress(chunk, limit + 1 - size)
                if inflate.unconsumed_tail:
                    raise too_large
            size += len(chunk)
            if size > limit:
                raise too_large
            parts.append(chunk)
        if inflate is not None:
            parts.append(inflate.flush())
            if not inflate.eof:
                raise ProtocolError(f"the {encoding} request body is truncated")
    except zlib.error as exc:
        raise ProtocolError(f"the request body is not valid {encoding}: {exc}") from None
    return b"".join(parts)


# --- running -------------------------------------------------------------------------

class _DrainingServer(uvicorn.Server):
    """uvicorn's server, whose first SIGTERM or SIGINT drains before it stops: inference
    answers 503 and readiness goes false at once, every accepted request is answered,
    then uvicorn shuts down as usual (a second SIGINT stops at once)."""

    def __init__(self, config: uvicorn.Config, state: ServerState):
        super().__init__(config)
        self.state = state
        self._draining: threading.Thread | None = None

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self._draining is not None:  # a second signal: uvicorn's own handling
            return super().handle_exit(sig, frame)
        self.state.draining = True
        waiting = sum(m.batcher.queued + m.batcher.in_flight for m in self.state.served())
        logging.getLogger("uvicorn.error").info(
            "backplane: %s: no more requests accepted; answering the %d accepted, then "
            "stopping", signal.Signals(sig).name, waiting)

        def drain() -> None:
            try:
                self.state.drain()
            finally:
                self.should_exit = True

        self._draining = threading.Thread(target=drain, name="backplane-drain", daemon=True)
        self._draining.start()


def serve(repository: str | Path, *, host: str = "127.0.0.1", port: int = 8000,
          session: Mapping[str, Any] | None = None, batching: Mapping[str, Any] | None = None,
          max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, log_level: str = "info",
          access_log: bool = False,
          on_loaded: Callable[[ServedModel], None] | None = None) -> None:
    """Load ``repository`` (see :func:`create_app`) and serve it on ``host:port`` until
    SIGTERM or Ctrl-C, which drain (see the module's description). ``access_log`` logs
    a line per request (off by default, as in Triton: it costs each request time, and
    /metrics counts them)."""
    app = create_app(repository, session=session, batching=batching,
                     max_body_bytes=max_body_bytes, on_loaded=on_loaded)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="on",
                            access_log=access_log, timeout_graceful_shutdown=30)
    _DrainingServer(config, app.state.server).run()
