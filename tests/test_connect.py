"""jobs/connect.py: jobs find their cluster or say why not, within a bounded time, and never leave Ray running."""
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import ray

from jobs.connect import ClusterUnreachable, probe, ray_cluster, resolve
from serve_app.local import free_port

REPO = Path(__file__).resolve().parents[1]


def test_the_address_comes_from_the_flag_then_ray_address_then_a_local_cluster(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve(None) == ("local", "default")
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert resolve(None) == ("10.0.0.1:6379", "RAY_ADDRESS")
    assert resolve("127.0.0.1:1234") == ("127.0.0.1:1234", "--address")


def test_a_closed_port_fails_at_once_naming_the_address_and_the_fix():
    port = free_port()                                   # bound, then released: nothing listens there
    start = time.monotonic()
    with pytest.raises(ClusterUnreachable, match=rf"no Ray cluster answers at 127.0.0.1:{port} .*ray start --head"):
        probe(f"127.0.0.1:{port}", "RAY_ADDRESS")
    assert time.monotonic() - start < 5


@pytest.mark.parametrize("address, message", [("http://127.0.0.1:8265", "dashboard URL"),
                                              ("somehost", "not host:port")])
def test_addresses_that_cannot_be_a_cluster_are_refused(address, message):
    with pytest.raises(ClusterUnreachable, match=message):
        probe(address, "--address")


def test_an_unreachable_cluster_leaves_ray_uninitialised():
    with pytest.raises(ClusterUnreachable):
        with ray_cluster(f"127.0.0.1:{free_port()}"):
            pass
    assert not ray.is_initialized()


def _processes(temp_dir: str) -> list[int]:
    found = subprocess.run(["pgrep", "-f", temp_dir], capture_output=True, text=True).stdout.split()
    return [int(pid) for pid in found if int(pid) != os.getpid()]


@pytest.fixture(scope="module")
def dead_head():
    """A `ray start` head killed by PID (SIGKILL, no `ray stop`): its ray_current_cluster file stays behind."""
    temp_dir = tempfile.mkdtemp(prefix="rayd", dir="/tmp")     # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "RAY_TMPDIR": temp_dir, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    subprocess.run(["ray", "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=1",
                    "--include-dashboard=false", "--object-store-memory=100000000",
                    f"--ray-client-server-port={free_port()}"], env=env, check=True, capture_output=True, timeout=120)
    try:
        for pid in _processes(temp_dir):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while _processes(temp_dir) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _processes(temp_dir)
        assert Path(temp_dir, "ray", "ray_current_cluster").exists()   # where `ray start` without --temp-dir writes
        yield env, f"127.0.0.1:{port}"
    finally:
        for pid in _processes(temp_dir):
            os.kill(pid, signal.SIGKILL)
        subprocess.run(["rm", "-rf", temp_dir])


def _train(env: dict, *args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    out = subprocess.run([sys.executable, "jobs/train.py", "--smoke-test", *args], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=timeout)
    return out, time.monotonic() - start


@pytest.mark.integration
@pytest.mark.parametrize("how", ["RAY_ADDRESS", "--address auto"])
def test_train_fails_fast_with_one_line_when_its_cluster_died(dead_head, tmp_path, how):
    env, address = dead_head
    args = [f"storage_path={tmp_path}"]
    if how == "RAY_ADDRESS":
        env = {**env, "RAY_ADDRESS": address}
    else:
        args = ["--address", "auto", *args]
    out, seconds = _train(env, *args)
    assert out.returncode != 0 and seconds < 60, (seconds, out.stderr[-2000:])
    last = out.stderr.strip().splitlines()[-1]
    port = address.rsplit(":", 1)[1]                    # `auto` finds the head by the address it recorded (its IP)
    assert re.search(rf"no Ray cluster answers at [\w.]+:{port} ", last) and "ray start --head" in last, last
    assert "Traceback" not in out.stderr


@pytest.mark.integration
def test_without_an_address_a_job_runs_on_a_new_local_cluster_despite_the_stale_file(dead_head, tmp_path):
    env, _ = dead_head
    start = time.monotonic()
    out = subprocess.run([sys.executable, "jobs/prepare_data.py", "embedded", "--sources", "digits", "--out",
                          str(tmp_path), "--max-per-class", "20"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=180)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "digits: 10 classes" in out.stdout and time.monotonic() - start < 150
