"""Start-up and a replica SIGKILLed under a bounded load: /healthz answers at once ("starting" or ok, never a
hang), the requests the replica held fail with a retryable 503 or, if it died mid-response, a body cut short of its
Content-Length (never a 500), the replacement serves, and
``pudnet predict`` gets through on retry."""
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

from pudnet import PudNet, PudNetConfig

from pudnet.model import checkpoint
from pudnet.client import main as cli_main
from serve_app import local

pytestmark = pytest.mark.integration
CLIENTS = 1  # plus one `pudnet predict`: the replica holds both (max_ongoing_requests 2)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    torch.manual_seed(0)
    model = PudNet(PudNetConfig(target_kwargs={"depth": 2, "width": 8}, encoder_width=8, hidden=16,
                                layer_embedding=8, max_classes=3))
    ckpt = tmp_path_factory.mktemp("untrained")
    checkpoint.save(ckpt, model.eval())
    config = local.read_config(checkpoints={"convnet": str(ckpt)})
    deployment = config["applications"][0]["deployments"][0]
    del deployment["autoscaling_config"]  # one replica: the one that is killed
    deployment["num_replicas"] = 1
    try:
        url = local.start()
        local.deploy(config, wait=False)  # the first test watches the start-up
        yield SimpleNamespace(url=url)
    finally:
        local.stop()


def npz_file(path, n=2400) -> bytes:
    rng = np.random.default_rng(0)
    np.savez(path, images=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), labels=np.arange(n) % 3)
    return path.read_bytes()


def replica_pid(url: str) -> int:
    """The PID of the replica that answers, from its Serve actor (named SERVE_REPLICA::app#deployment#id)."""
    replica = requests.get(url + "/v1/models", timeout=30).json()["replica"]
    actor = ray.get_actor(f"SERVE_REPLICA::pudnet#PudNetServer#{replica}", namespace="serve")
    return ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=30)


def test_healthz_answers_during_start_up(server):
    """From the deploy call on, polled: 404 from Serve's proxy until the route exists, then 503 "starting" from
    the gateway until a PudNetServer replica answers, then ok. Only a request that arrives before the gateway's
    own replica runs waits (Serve's proxy queues it: the actor start, 2-25 s here); every later one is quick."""
    answers, deadline = [], time.monotonic() + 120
    while time.monotonic() < deadline:
        start = time.monotonic()
        r = requests.get(server.url + "/healthz", timeout=60)
        state = r.json().get("status") if r.headers.get("content-type") == "application/json" else r.text[:40]
        answers.append((r.status_code, state, round(time.monotonic() - start, 3)))
        if r.status_code == 200:
            break
        time.sleep(0.2)
    print("healthz during start-up (status, state, s):", answers)
    assert answers[-1][:2] == (200, "ok"), answers
    routed = [i for i, (status, _, _) in enumerate(answers) if status != 404]
    assert all((status, state) == (503, "starting") for status, state, _ in answers[routed[0]:-1]), answers
    assert all(seconds < 8 for _, _, seconds in answers[routed[0] + 1:]), answers
    assert all(seconds < 8 for status, _, seconds in answers if status == 404), answers


def test_sigkill_under_load_gives_503s_and_a_retry_succeeds(server, tmp_path, capsys, monkeypatch):
    """Bounded load: CLIENTS looping clients plus one `pudnet predict`, all in flight on the one replica (its
    max_ongoing_requests) when it is SIGKILLed."""
    deadline = time.monotonic() + 120  # ready (run alone, the start-up test has not waited for it)
    while time.monotonic() < deadline and requests.get(server.url + "/healthz", timeout=60).status_code != 200:
        time.sleep(0.5)
    body = npz_file(tmp_path / "data.npz")
    results, done, cli_rc = [], threading.Event(), []

    def client():
        while not done.is_set():
            try:
                r = requests.post(server.url + "/v1/predict", data=body, timeout=120)
                results.append((time.monotonic(), r.status_code, r.headers.get("Retry-After"), r.text[:300]))
            except requests.RequestException as e:  # a reset connection counts as a failure too
                results.append((time.monotonic(), -1, None, repr(e)))
    out = tmp_path / "w.safetensors"
    cli = threading.Thread(target=lambda: cli_rc.append(cli_main(
        ["predict", "--endpoint", server.url, "--data", str(tmp_path / "data.npz"), "--out", str(out),
         "--retries", "6"])))
    clients = [threading.Thread(target=client) for _ in range(CLIENTS)]
    sent, real_post = threading.Event(), requests.post

    def post(*args, **kwargs):   # marks the moment `pudnet predict` starts its upload
        if threading.current_thread() is cli:
            sent.set()
        return real_post(*args, **kwargs)
    monkeypatch.setattr(requests, "post", post)
    for c in clients:
        c.start()
    try:
        time.sleep(3)
        pid = replica_pid(server.url)
        cli.start()
        assert sent.wait(60), "pudnet predict never sent its request"
        time.sleep(1.0)  # its upload (7 MB on loopback) is done: on the replica, or queued for it
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        health = []
        while time.monotonic() < killed_at + 8:  # /healthz answers at once (200 or 503 starting), never hangs
            start = time.monotonic()
            r = requests.get(server.url + "/healthz", timeout=10)
            health.append((r.status_code, r.json()["status"], round(time.monotonic() - start, 3)))
            time.sleep(0.5)
        cli.join(timeout=180)
    finally:
        done.set()
        for c in clients:
            c.join()
    err = capsys.readouterr().err
    failures = [r for r in results if r[1] != 200]
    print("failures:", [(status, text[:120]) for _, status, _, text in failures], "healthz after the kill:", health,
          "cli:", [line for line in err.splitlines() if line.startswith("pudnet:")])
    assert len(failures) <= CLIENTS, failures
    # A request the replica held fails in one of two signalled, retryable ways: a 503 with Retry-After, or, when
    # the replica was killed while streaming its response (headers and a Content-Length already sent), a body
    # cut short of its Content-Length. Never a 500, a reset before any answer, or a hang.
    cut_short = lambda status, text: status == -1 and "IncompleteRead" in text  # noqa: E731
    assert all((status == 503 and retry_after) or cut_short(status, text)
               for _, status, retry_after, text in failures), failures
    assert any(t > killed_at and status == 200 for t, status, _, _ in results), "no request served after the kill"
    assert all((status, state) in ((200, "ok"), (503, "starting")) and seconds < 5 for status, state, seconds in health)
    assert cli_rc == [0] and out.stat().st_size > 0, err
    # Its request was on the killed replica (a 503 or a download that broke off, then a retry) or still queued
    # for the replacement (served on the first try): which one depends on timing. Every failure it saw was
    # retried; retries themselves are tested deterministically in tests/pudnet/test_client.py.
    assert err.count("server unavailable (503): replica_unavailable") + err.count("broke off") == \
        err.count("pudnet: ") == err.count("; retry "), err
