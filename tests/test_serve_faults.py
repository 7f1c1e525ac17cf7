"""A replica SIGKILLed under a bounded load: the requests it held fail with a retryable 503 (never a 500),
/healthz keeps answering (never hangs), the replacement serves, and ``pudnet predict`` gets through on retry."""
import os
import signal
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import ray
import requests
import torch
from ray import serve

from pudnet import PudNet, PudNetConfig, checkpoint
from pudnet.cli import main as cli_main
from serve_app import local
from serve_app.app import ServeArgs, build_app

pytestmark = pytest.mark.integration
CLIENTS = 3  # the bound on requests in flight


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    torch.manual_seed(0)
    model = PudNet(PudNetConfig(target_kwargs={"depth": 2, "width": 8}, encoder_width=8, hidden=16,
                                layer_embedding=8, max_classes=3))
    ckpt = tmp_path_factory.mktemp("untrained")
    checkpoint.save(ckpt, model.eval())
    try:
        url = local.start()
        serve.run(build_app(ServeArgs(checkpoints={"convnet": str(ckpt)})), name="pudnet", route_prefix="/")
        yield SimpleNamespace(url=url)
    finally:
        local.stop()


def npz_file(path, n=600) -> bytes:
    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), labels=np.arange(n) % 3)
    return path.read_bytes()


def replica_pid(url: str) -> int:
    """The PID of the replica that answers, from its Serve actor (named SERVE_REPLICA::app#deployment#id)."""
    replica = requests.get(url + "/v1/models", timeout=30).json()["replica"]
    actor = ray.get_actor(f"SERVE_REPLICA::pudnet#PudNetServer#{replica}", namespace="serve")
    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=30)


def test_sigkill_under_load_gives_503s_and_a_retry_succeeds(server, tmp_path):
    body = npz_file(tmp_path / "data.npz")
    results, done = [], threading.Event()

    def client():
        while not done.is_set():
            try:
                r = requests.post(server.url + "/v1/predict", data=body, timeout=120)
                results.append((time.monotonic(), r.status_code, r.headers.get("Retry-After"), r.text[:300]))
            except requests.RequestException as e:  # a reset connection counts as a failure too
                results.append((time.monotonic(), -1, None, repr(e)))
    clients = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for c in clients:
        c.start()
    try:
        time.sleep(3)
        pid = replica_pid(server.url)
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        health = []
        while time.monotonic() < killed_at + 8:  # /healthz answers at once (200 or 503 starting), never hangs
            start = time.monotonic()
            status = requests.get(server.url + "/healthz", timeout=10).status_code
            health.append((status, time.monotonic() - start))
            time.sleep(0.5)
        out = tmp_path / "w.safetensors"  # the CLI, right after the kill: it retries until a replica is back
        assert cli_main(["predict", "--endpoint", server.url, "--data", str(tmp_path / "data.npz"),
                         "--out", str(out), "--retries", "6"]) == 0
    finally:
        done.set()
        for c in clients:
            c.join()
    failures = [r for r in results if r[1] != 200]
    assert len(failures) <= CLIENTS, failures
    assert all(status == 503 and retry_after for _, status, retry_after, _ in failures), failures
    assert any(t > killed_at and status == 200 for t, status, _, _ in results), "no request served after the kill"
    assert all(status in (200, 503) and seconds < 5 for status, seconds in health), health
    assert out.stat().st_size > 0
