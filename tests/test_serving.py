"""backplane serve: the KServe Open Inference Protocol v2 over HTTP, spoken to by clients
nobody here wrote (tritonclient.http, and plain HTTP from the standard library).

The server is the real one (uvicorn in a thread, or ``backplane serve`` in a child process
for SIGTERM) on small ONNX models built here; its answers are compared with
``Session.run`` on the same inputs, fp32 within rtol 1e-5 (atol 1e-6 for values near the
ReLU's zeros), on fresh random inputs whose seed the failure message names.
"""

from __future__ import annotations

import gzip
import http.client
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

tritonhttp = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

from backplane.serving import protocol  # noqa: E402
from backplane.serving.repository import Repository, RepositoryError  # noqa: E402
from conftest import clean_env, free_port  # noqa: E402
from models import batched_mlp as mlp  # noqa: E402

SEED = 2100
RTOL, ATOL = 1e-5, 1e-6


# --- models and the server -------------------------------------------------------------

def fixed(scale: float) -> onnx.ModelProto:
    """a FP32[2,3], n INT64[2,3] -> s = a * scale, k = n + 1: fixed shapes, two dtypes."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["a", "c"], ["s"]), helper.make_node("Add", ["n", "one"], ["k"])],
        "fixed", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3]),
                  helper.make_tensor_value_info("n", TensorProto.INT64, [2, 3])],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("k", TensorProto.INT64, [2, 3])],
        initializer=[numpy_helper.from_array(np.array(scale, np.float32), "c"),
                     numpy_helper.from_array(np.array(1, np.int64), "one")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def write(model: onnx.ModelProto, path: Path, config: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    if config is not None:
        (path.parent / "config.toml").write_text(config)
    return path


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """mlp (batched); fixed, versions 1 and 2 in Triton's layout; tight (a queue of one
    request that waits 1.5 s for a batch-mate: a second request finds the queue full)."""
    root = tmp_path_factory.mktemp("repository")
    write(mlp(), root / "mlp" / "model.onnx", "[batching]\nmax_batch_size = 8\n"
                                               "max_delay_ms = 5\n")
    write(fixed(2.0), root / "fixed" / "1" / "model.onnx")
    write(fixed(3.0), root / "fixed" / "2" / "model.onnx")
    write(mlp(), root / "tight" / "model.onnx", "[batching]\nmax_batch_size = 2\n"
                                                 "max_delay_ms = 1500\nmax_queue_size = 1\n")
    return root


class Running:
    """A uvicorn server on a thread, serving ``app`` on a free loopback port."""

    def __init__(self, app):
        import uvicorn

        self.app, self.port = app, free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        end = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < end, "server did not start"
            time.sleep(0.01)

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    def session(self, name: str, version: str | None = None):
        return self.app.state.server.find(name, version).session

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture(scope="module")
def server(repo):
    from backplane.serving.server import create_app

    running = Running(create_app(repo))
    yield running
    running.stop()


@pytest.fixture
def client(server):
    c = tritonhttp.InferenceServerClient(server.url)
    yield c
    c.close()


def request(url: str, method: str, path: str, body: bytes | dict | None = None,
            headers: dict | None = None) -> tuple[int, dict, bytes]:
    """(status, headers, body) of one plain HTTP request."""
    conn = http.client.HTTPConnection(url, timeout=30)
    try:
        if isinstance(body, dict):
            body = json.dumps(body).encode()
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def rows(seed: int, n: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """Every sample of GET /metrics, parsed by prometheus-client's own parser."""
    status, _, body = request(url, "GET", "/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body.decode())
            for s in family.samples}


# --- metadata and health ---------------------------------------------------------------

def test_server_and_models_report_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata()["name"] == "backplane"
    assert client.is_model_ready("mlp") and client.is_model_ready("fixed", "1")
    meta = client.get_model_metadata("mlp")
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 8]}]
    fixed_meta = client.get_model_metadata("fixed")
    assert fixed_meta["versions"] == ["1", "2"]
    assert fixed_meta["inputs"][1] == {"name": "n", "datatype": "INT64", "shape": [2, 3]}


def test_unknown_model_version_or_path_is_404_with_json_error(server, client):
    with pytest.raises(InferenceServerException) as info:
        client.get_model_metadata("mpl")
    assert info.value.status() == "404" and "Did you mean 'mlp'" in info.value.message()
    status, _, body = request(server.url, "POST", "/v2/models/fixed/versions/7/infer", {})
    assert status == 404 and "no version '7'" in json.loads(body)["error"]
    status, _, body = request(server.url, "GET", "/v2/nothing")
    assert status == 404 and "error" in json.loads(body)


# --- inference -------------------------------------------------------------------------

@pytest.mark.parametrize("binary_in", [True, False])
@pytest.mark.parametrize("binary_out", [True, False, None])
def test_tritonclient_gets_the_sessions_outputs(server, client, binary_in, binary_out):
    seed = SEED + 2 * binary_in + (3 if binary_out is None else binary_out)
    x = rows(seed, n=1 + seed % 4)
    inp = tritonhttp.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary_in)
    outputs = None if binary_out is None else [
        tritonhttp.InferRequestedOutput("y", binary_data=binary_out)]  # None: all, binary
    result = client.infer("mlp", [inp], outputs=outputs, request_id=f"r{seed}")
    assert result.get_response()["id"] == f"r{seed}"
    np.testing.assert_allclose(result.as_numpy("y"), server.session("mlp").run({"x": x})["y"],
                               rtol=RTOL, atol=ATOL, err_msg=f"seed {seed}")


def test_versions_and_int64_tensors(server, client):
    rng = np.random.default_rng(SEED + 10)
    a = rng.standard_normal((2, 3)).astype(np.float32)
    n = rng.integers(-2**40, 2**40, (2, 3)).astype(np.int64)
    for version, scale in (("1", 2.0), ("2", 3.0), ("", 3.0)):  # "": the highest version
        inputs = [tritonhttp.InferInput("a", [2, 3], "FP32"),
                  tritonhttp.InferInput("n", [2, 3], "INT64")]
        inputs[0].set_data_from_numpy(a, binary_data=False)
        inputs[1].set_data_from_numpy(n, binary_data=True)
        result = client.infer("fixed", inputs, model_version=version)
        assert result.get_response()["model_version"] == (version or "2")
        np.testing.assert_allclose(result.as_numpy("s"), a * scale, rtol=RTOL,
                                   err_msg=f"seed {SEED + 10}")
        np.testing.assert_array_equal(result.as_numpy("k"), n + 1)


def test_plain_http_json_with_nested_data(server):
    x = rows(SEED + 20, n=2)
    status, headers, body = request(server.url, "POST", "/v2/models/mlp/infer", {
        "inputs": [{"name": "x", "shape": [2, 16], "datatype": "FP32", "data": x.tolist()}]})
    assert status == 200 and headers["content-type"] == "application/json"
    out = json.loads(body)["outputs"][0]
    assert out["name"] == "y" and out["datatype"] == "FP32" and out["shape"] == [2, 8]
    np.testing.assert_allclose(np.array(out["data"], np.float32).reshape(2, 8),
                               server.session("mlp").run({"x": x})["y"], rtol=RTOL, atol=ATOL,
                               err_msg=f"seed {SEED + 20}")


def test_plain_http_gzip_body_with_binary_tensor(server):
    x = rows(SEED + 30, n=4)
    head = json.dumps({"inputs": [{"name": "x", "shape": [4, 16], "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}).encode()
    status, headers, body = request(
        server.url, "POST", "/v2/models/mlp/infer", gzip.compress(head + x.tobytes()),
        {protocol.HEADER_LENGTH: str(len(head)), "Content-Encoding": "gzip"})
    assert status == 200 and headers["content-type"] == "application/octet-stream"
    n = int(headers[protocol.HEADER_LENGTH.lower()])
    y = np.frombuffer(body[n:], "<f4").reshape(4, 8)
    np.testing.assert_allclose(y, server.session("mlp").run({"x": x})["y"], rtol=RTOL,
                               atol=ATOL, err_msg=f"seed {SEED + 30}")


# --- errors ----------------------------------------------------------------------------

def _x(shape=(1, 16), datatype="FP32", data=None) -> dict:
    count = int(np.prod(shape))
    return {"inputs": [{"name": "x", "shape": list(shape), "datatype": datatype,
                        "data": [0.5] * count if data is None else data}]}


@pytest.mark.parametrize("body, headers, says", [
    (b"{not json", {}, "not valid JSON"),
    (b'{"inputs": []}', {}, "non-empty list"),
    (_x(datatype="FP128"), {}, "unknown datatype 'FP128'"),
    (_x(data=[1.0] * 15), {}, "shape [1, 16] holds 16 elements but 'data' has 15"),
    (_x(datatype="INT32", data=[1.5] * 16), {}, "INT32 data must be integers"),
    (b"{}", {protocol.HEADER_LENGTH: "99"}, "the body holds 2 bytes"),
    (_x(shape=(1, 15)), {}, "'x'"),  # the session's InputError: the wrong shape, named
    (_x(datatype="FP64"), {}, "input 'x' was sent as FP64, but the model takes FP32"),
    ({**_x(), "outputs": [{"name": "z"}]}, {}, "unknown output 'z'"),
], ids=["json", "no-inputs", "datatype", "data-length", "truncation", "header-length",
        "model-shape", "model-dtype", "output"])
def test_a_request_at_fault_is_400_naming_the_problem(server, body, headers, says):
    status, _, answer = request(server.url, "POST", "/v2/models/mlp/infer", body, headers)
    assert status == 400, answer
    assert says in json.loads(answer)["error"]


def test_full_queue_is_503_with_retry_after_and_no_request_is_lost(server):
    """'tight' holds one request that waits 1.5 s for a batch-mate: a burst sent meanwhile
    finds its queue full, whatever the CPU's speed."""
    seeds = [SEED + 40 + k for k in range(8)]
    answers: dict[int, tuple[int, dict, bytes]] = {}

    def send(seed: int) -> None:
        answers[seed] = request(server.url, "POST", "/v2/models/tight/infer",
                                _x(data=rows(seed, 1).reshape(-1).tolist()))

    overload = ("backplane_inference_requests_total",
                (("model", "tight"), ("outcome", "overload"), ("version", "1")))
    before = scrape(server.url)[overload]
    threads = [threading.Thread(target=send, args=(s,)) for s in seeds]
    threads[0].start()
    end = time.monotonic() + 30
    while scrape(server.url).get(("backplane_requests_queued",
                                  (("model", "tight"), ("version", "1")))) != 1:
        assert time.monotonic() < end and threads[0].is_alive()
        time.sleep(0.02)
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(answers) == seeds  # every request answered
    codes = [answers[s][0] for s in seeds]
    assert codes[0] == 200 and set(codes) <= {200, 503} and 503 in codes, codes
    assert scrape(server.url)[overload] - before == codes.count(503)
    for seed, (status, headers, body) in answers.items():
        if status == 503:
            assert int(headers["retry-after"]) >= 1 and "queue is full" in json.loads(body)["error"]
        else:
            y = np.array(json.loads(body)["outputs"][0]["data"], np.float32).reshape(1, 8)
            np.testing.assert_allclose(y, server.session("tight").run({"x": rows(seed, 1)})["y"],
                                       rtol=RTOL, atol=ATOL, err_msg=f"seed {seed}")


def test_deadline_passed_in_the_queue_is_504(client):
    """A 1 µs deadline (Triton's ``timeout`` parameter) passes while the request waits
    5 ms for batch-mates: it is answered 504 and not run."""
    inp = tritonhttp.InferInput("x", [1, 16], "FP32")
    inp.set_data_from_numpy(rows(SEED + 50, 1))
    with pytest.raises(InferenceServerException) as info:
        client.infer("mlp", [inp], timeout=1)
    assert info.value.status() == "504" and "deadline" in info.value.message()


# --- configuration and metrics ---------------------------------------------------------

def test_config_endpoint_gives_the_batcher_and_the_plan(server):
    status, _, body = request(server.url, "GET", "/v2/models/mlp/config")
    data = json.loads(body)
    assert status == 200
    assert data["batcher"]["max_batch_size"] == 8 and data["batcher"]["batching"] is True
    assert data["plan"]["partitions"] and data["explain"].startswith("plan for 'mlp'")
    assert data["config"]["batching"] == {"max_batch_size": 8, "max_delay_ms": 5}


def test_metrics_count_the_requests_sent(server, client):
    def value(samples, name, **labels):
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    before = scrape(server.url)
    good, bad = 5, 2
    for k in range(good):
        inp = tritonhttp.InferInput("x", [2, 16], "FP32")
        inp.set_data_from_numpy(rows(SEED + 60 + k, 2))
        client.infer("mlp", [inp])
    for _ in range(bad):
        request(server.url, "POST", "/v2/models/mlp/infer", b"{not json")
    after = scrape(server.url)
    m = {"model": "mlp", "version": "1"}

    def delta(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("backplane_inference_requests_total", **m, outcome="success") == good
    assert delta("backplane_inference_requests_total", **m, outcome="bad_request") == bad
    assert delta("backplane_request_duration_seconds_count", **m) == good
    assert delta("backplane_queue_duration_seconds_count", **m) == good
    assert delta("backplane_batch_size_sum", **m) == good  # requests run, over all batches
    devices = {dict(k[1]).get("device") for k in after if k[0] == "backplane_requests_in_flight"}
    assert set(server.app.state.server.find("mlp").devices()) <= devices


# --- shutting down ---------------------------------------------------------------------

def test_a_draining_server_is_not_ready_and_refuses_inference(tmp_path):
    from backplane.serving.server import create_app

    running = Running(create_app(write(mlp(), tmp_path / "one.onnx"),
                                 batching={"max_batch_size": 1}))
    try:
        running.app.state.server.drain()
        assert request(running.url, "GET", "/v2/health/ready")[0] == 503
        assert request(running.url, "GET", "/v2/models/one/ready")[0] == 503
        assert request(running.url, "GET", "/v2/health/live")[0] == 200
        status, headers, body = request(running.url, "POST", "/v2/models/one/infer", _x())
        assert status == 503 and "retry-after" not in headers
        assert "shutting down" in json.loads(body)["error"]
    finally:
        running.stop()


def test_sigterm_answers_every_accepted_request_then_exits(server, repo, example_site):
    """Three requests wait (up to 20 s) for batch-mates in ``backplane serve``; SIGTERM
    must answer them at once (not drop them), then exit with status 0."""
    port, device = free_port(), server.app.state.server.find("mlp").devices()[0]
    proc = subprocess.Popen(
        [sys.executable, "-m", "backplane", "serve", str(repo / "mlp" / "model.onnx"),
         "--port", str(port), "--device", device, "--max-batch-size", "8",
         "--max-delay-ms", "20000", "--log-level", "warning"],
        env=clean_env(example_site), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"127.0.0.1:{port}"
    try:
        end = time.monotonic() + 60
        while True:
            try:
                if request(url, "GET", "/v2/health/ready")[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < end, proc.stderr.read()
            time.sleep(0.1)
        seeds = [SEED + 70 + k for k in range(3)]
        answers: dict[int, tuple] = {}
        threads = [threading.Thread(target=lambda s=s: answers.__setitem__(s, request(
            url, "POST", "/v2/models/model/infer", _x(data=rows(s, 1).reshape(-1).tolist()))))
            for s in seeds]
        for t in threads:
            t.start()
        key = ("backplane_requests_queued", (("model", "model"), ("version", "1")))
        while scrape(url).get(key) != 3:
            assert time.monotonic() < end
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(30)
        assert proc.wait(30) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    for s in seeds:
        status, _, body = answers[s]
        assert status == 200, body
        y = np.array(json.loads(body)["outputs"][0]["data"], np.float32).reshape(1, 8)
        np.testing.assert_allclose(y, server.session("mlp").run({"x": rows(s, 1)})["y"],
                                   rtol=RTOL, atol=ATOL, err_msg=f"seed {s}")


# --- the repository --------------------------------------------------------------------

@pytest.mark.parametrize("config, says", [
    ("polcy = 'latency'\n", "unknown key 'polcy'"),
    ("devices = 3\n", "key 'devices' must be"),
    ("[batching]\nmax_batch_size = 0\n", "key 'batching.max_batch_size' must be an integer"),
    ("[batching]\nmax_delay = 2\n", "unknown key 'batching.max_delay'"),
    ("dims = { batch = 'eight' }\n", "key 'dims' must be"),
    ("precision = \n", "not valid TOML"),
], ids=["unknown", "devices", "batch-size", "batching-unknown", "dims", "toml"])
def test_a_wrong_config_names_its_file_and_key(tmp_path, config, says):
    write(mlp(), tmp_path / "m" / "model.onnx", config)
    with pytest.raises(RepositoryError) as info:
        Repository(tmp_path)
    assert says in str(info.value) and str(tmp_path / "m" / "config.toml") in str(info.value)


def test_repository_layouts(tmp_path, repo):
    found = {(e.name, e.version) for e in Repository(repo).entries}
    assert found == {("mlp", "1"), ("fixed", "1"), ("fixed", "2"), ("tight", "1")}
    single = Repository(repo / "mlp" / "model.onnx").entries
    assert [(e.name, e.version) for e in single] == [("model", "1")]
    write(mlp(), tmp_path / "both" / "model.onnx")
    write(mlp(), tmp_path / "both" / "1" / "model.onnx")
    with pytest.raises(RepositoryError, match="both model.onnx and version folders"):
        Repository(tmp_path)
    with pytest.raises(RepositoryError, match="no model folders"):
        Repository(tmp_path / "both" / "1")


# --- the codec -------------------------------------------------------------------------

@pytest.mark.parametrize("datatype", list(protocol.DATATYPES))
def test_every_datatype_round_trips_in_json_and_binary(datatype):
    rng = np.random.default_rng(SEED + 80)
    if datatype == "BYTES":
        arr = np.array([["a", "bé"], ["", "xyz"]], dtype=object)
    elif datatype == "BOOL":
        arr = rng.integers(0, 2, (2, 2)).astype(bool)
    else:
        dtype = np.dtype(protocol.DATATYPES[datatype])
        arr = (rng.standard_normal((2, 2)) * 100).astype(dtype) if dtype.kind == "f" else \
            rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max, (2, 2), dtype=dtype,
                         endpoint=True)
    via_json = protocol.from_json(protocol.to_json(arr, datatype), datatype, [2, 2])
    via_bytes = protocol.from_bytes(protocol.to_bytes(arr, datatype), datatype, [2, 2])
    if datatype == "BYTES":
        assert via_json.tolist() == arr.tolist()
        assert [v.decode() for v in via_bytes.reshape(-1)] == arr.reshape(-1).tolist()
    else:
        assert via_json.dtype == arr.dtype and via_bytes.dtype == arr.dtype
        np.testing.assert_array_equal(via_json, arr)
        np.testing.assert_array_equal(via_bytes, arr)


@pytest.mark.parametrize("data, datatype", [([300], "UINT8"), ([2**64], "UINT64"),
                                            ([-1], "UINT32"), ([True], "FP32"), (["a"], "INT8")])
def test_json_values_are_never_silently_changed(data, datatype):
    with pytest.raises(protocol.ProtocolError):
        protocol.from_json(data, datatype, [1])


# --- packaging -------------------------------------------------------------------------

def test_import_backplane_leaves_the_server_packages_alone():
    code = ("import sys, backplane, backplane.cli; backplane.devices(); "
            "print(sorted(m for m in ('starlette', 'uvicorn', 'prometheus_client') "
            "if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=clean_env(), timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stderr


def test_serve_without_the_serve_extra_says_what_to_install(repo):
    code = ("import sys; sys.modules['uvicorn'] = None; from backplane.cli import main; "
            f"sys.argv = ['backplane', 'serve', {str(repo / 'mlp' / 'model.onnx')!r}]; main()")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=clean_env(), timeout=120)
    assert result.returncode == 2
    assert "pip install 'backplane-hal[serve]'" in result.stderr and "uvicorn" in result.stderr
