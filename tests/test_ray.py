"""Scale-out on Ray: backplane sessions as Ray Serve replicas, and the conformance suite on
every node of a Ray cluster (``backplane conformance fleet --ray``).

One local Ray cluster for the module (2 CPUs, the backplane resources of this machine),
with one Serve application on it: a small MatMul + Relu model with a batch dimension,
on ONNX Runtime.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest

import backplane
from backplane.serving.ray import deployment, node_resources, ray_resources

from tests.conftest import clean_env, free_port, run_cli, run_python
from tests.models import batched_mlp as mlp

ray = pytest.importorskip("ray", reason="the ray extra is not installed")
serve = pytest.importorskip("ray.serve", reason="the ray extra is not installed")

MAX_BATCH = 8
#: Long enough that requests sent together meet in a batch even on a loaded machine.
MAX_DELAY_MS = 100.0
#: A quick selection of conformance cases for the fleet: a few ops, one backend.
FLEET_PATTERN = "Relu/float32/rank|Add/float32/rank-2"


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster advertising this machine's backplane resources; its address."""
    try:
        ray.init(num_cpus=2, include_dashboard=False, resources=node_resources(),
                 logging_level="ERROR", log_to_driver=False)
    except Exception as exc:  # noqa: BLE001 - any reason Ray cannot start is a skip reason
        pytest.skip(f"a local Ray cluster cannot start here: {type(exc).__name__}: {exc}")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module")
def app(cluster):
    """The Serve application: (handle, HTTP URL, a local Session of the same model)."""
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    model = mlp()
    handle = serve.run(deployment(model, devices=["onnxruntime"], max_batch_size=MAX_BATCH,
                                  max_delay_ms=MAX_DELAY_MS, num_cpus=0.5),
                       name="mlp", route_prefix="/mlp")
    return handle, f"http://127.0.0.1:{port}/mlp", backplane.Session(model,
                                                                     devices=["onnxruntime"])


def rows(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)


def test_a_replica_answers_as_session_run_does(app):
    handle, _, session = app
    seed = random.randrange(2**31)
    x = rows(5, seed)
    out = handle.infer.remote({"x": x}).result()
    np.testing.assert_allclose(out["y"], session.run({"x": x})["y"], rtol=1e-5, atol=1e-6,
                               err_msg=f"seed {seed}")


def test_requests_sent_together_run_in_batches(app):
    handle, _, session = app
    seed = random.randrange(2**31)
    before = handle.stats.remote().result()
    xs = [rows(1, seed + i) for i in range(2 * MAX_BATCH)]
    answers = [handle.infer.remote({"x": x}) for x in xs]
    for i, (x, answer) in enumerate(zip(xs, answers)):
        np.testing.assert_allclose(answer.result()["y"], session.run({"x": x})["y"], rtol=1e-5,
                                   atol=1e-6, err_msg=f"request {i}, seed {seed + i}")
    after = handle.stats.remote().result()
    requests = after["requests"] - before["requests"]
    batches = after["batches"] - before["batches"]
    assert requests == 2 * MAX_BATCH
    assert batches < requests, after["recent"]
    assert max(r["requests"] for r in after["recent"][-batches:]) > 1
    assert after["config"]["batching"] and after["config"]["max_batch_size"] == MAX_BATCH


def test_a_bad_request_gets_input_error_and_its_batch_mates_succeed(app):
    handle, _, session = app
    seed = random.randrange(2**31)
    xs = [rows(1, seed + i) for i in range(MAX_BATCH - 1)]
    good = [handle.infer.remote({"x": x}) for x in xs[:3]]
    bad = handle.infer.remote({"x": np.ones((1, 15), np.float32)})
    good += [handle.infer.remote({"x": x}) for x in xs[3:]]
    with pytest.raises(backplane.InputError, match="dimension 1 must be 16"):
        bad.result()
    for i, (x, answer) in enumerate(zip(xs, good)):
        np.testing.assert_allclose(answer.result()["y"], session.run({"x": x})["y"], rtol=1e-5,
                                   atol=1e-6, err_msg=f"request {i}, seed {seed + i}")


def test_http_through_serves_proxy_takes_and_gives_json(app):
    _, url, session = app
    seed = random.randrange(2**31)
    x = rows(3, seed)

    def post(body: bytes) -> tuple[int, dict]:
        request = urllib.request.Request(url, data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            with e:
                return e.code, json.loads(e.read())

    status, body = post(json.dumps({"inputs": {"x": x.tolist()}}).encode())
    assert status == 200, body
    np.testing.assert_allclose(np.array(body["outputs"]["y"], np.float32),
                               session.run({"x": x})["y"], rtol=1e-5, atol=1e-6,
                               err_msg=f"seed {seed}")
    status, body = post(json.dumps({"inputs": {"x": [[1.0, 2.0]]}}).encode())
    assert (status, body["type"]) == (400, "InputError"), body
    status, body = post(b"not json")
    assert (status, body["type"]) == (400, "InputError"), body


def test_replicas_ask_for_the_resources_their_devices_give_a_node():
    here = node_resources()
    assert here["backplane/onnxruntime"] >= 1
    assert ray_resources(["onnxruntime"]) == {
        "num_cpus": 1.0, "resources": {"backplane/onnxruntime": 0.001}}
    gpu = {"id": "cuda-tensorrt:0", "backend": "cuda-tensorrt", "kind": "gpu",
           "vendor": "NVIDIA"}
    npu = {"id": "npu:0", "backend": "npu", "kind": "npu", "vendor": "Intel"}
    assert ray_resources([gpu, npu]) == {
        "num_cpus": 1.0, "num_gpus": 1.0,
        "resources": {"backplane/cuda-tensorrt": 1.0, "backplane/npu": 1.0}}
    assert ray_resources("auto") == {"num_cpus": 1.0}


def test_a_node_prints_its_resources_for_ray_start():
    done = subprocess.run([sys.executable, "-m", "backplane.serving.ray", "resources"],
                          capture_output=True, text=True, timeout=120,
                          env=clean_env(BACKPLANE_PROBE_TIMEOUT_S="60"))
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["backplane/onnxruntime"] >= 1
    assert all(k.startswith("backplane/") for k in printed)


def test_fleet_reports_each_node_and_merges_a_matrix_equal_to_a_local_run(cluster, tmp_path):
    from backplane.conformance.report import load, matrix
    from backplane.conformance.suite import run

    seed = random.randrange(2**31)
    done = run_cli("conformance", "fleet", "--ray", cluster, "--backend", "onnxruntime",
                   "-k", FLEET_PATTERN, "--seed", str(seed), "--report", str(tmp_path),
                   "--json", timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    fleet = json.loads(done.stdout)
    [node] = fleet["nodes"]
    [one] = fleet["runs"]
    assert (one["node_id"], one["backend"], one["passed"]) == (node["node_id"],
                                                              "onnxruntime", True)
    report = load(tmp_path / node["hostname"] / "onnxruntime-0" / "report.json")
    assert report.seed == seed and report.host["hostname"] == node["hostname"]

    local = run("onnxruntime", tier="mandatory", pattern=FLEET_PATTERN, seed=seed)
    statuses = {c.id: c.status for c in local.cases}
    assert {c["id"]: c["status"] for c in report.cases} == statuses, f"seed {seed}"
    merged = json.loads((tmp_path / "matrix.json").read_text())
    assert merged == fleet["matrix"]
    assert [r["cells"] for r in merged["rows"]] == [r["cells"] for r in matrix([local])["rows"]]
    assert (tmp_path / "matrix.html").is_file() and (tmp_path / "fleet.json").is_file()


def test_fleet_says_what_to_check_when_the_cluster_cannot_be_reached():
    port = free_port()  # nothing listens there
    done = run_cli("conformance", "fleet", "--ray", f"127.0.0.1:{port}", timeout=120)
    assert done.returncode == 2
    assert f"cannot reach the Ray cluster at '127.0.0.1:{port}'" in done.stderr
    assert "ray start --head" in done.stderr


def test_fleet_without_ray_says_how_to_install_it():
    done = run_python("import sys; sys.modules['ray'] = None\n"
                      "from backplane.conformance.fleet import fleet\n"
                      "try:\n    fleet('auto')\n"
                      "except Exception as exc:\n    print(type(exc).__name__, exc)")
    assert done.stdout.startswith("ConformanceError"), done.stdout + done.stderr
    assert "pip install 'backplane-hal[ray]'" in done.stdout
