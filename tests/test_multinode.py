"""A real two-node Ray cluster on one machine, driven only through the CLIs a cluster user runs.

Two `ray start` processes on 127.0.0.1 (a head with the dashboard, a second node joined with `--address`),
each a separate raylet with its own node id (Ray registers them under the machine's address; the dashboard
and Serve listen on loopback only). On it: `ray job submit --working-dir . -- python jobs/train.py
--smoke-test` with its two train workers forced onto different nodes, then `serve deploy serve_app/config.yaml`
pointed at the checkpoint the job wrote, and one `pudnet predict` over HTTP.

Both nodes run with `--block` and are stopped by SIGTERM to those two processes: `ray stop` kills every Ray
process on the machine, other developers' clusters included, so it is not used here. Token authentication is
off on both sides (`RAY_AUTH_MODE=disabled`): a throwaway loopback cluster only; cluster/README.md gives the
secure setting. About 2-3 minutes on 2 cores.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import requests
import yaml
from ray.util.state import list_actors, list_nodes
from safetensors import safe_open
from safetensors.torch import load_file

from jobs.train import load_config
from pudnet.model import targets
from pudnet.data.sources import load_class_bank
from serve_app.local import free_port

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]
ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
       "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}   # the whole cluster stops: no node to drain work to


def run(args: list[str], env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def wait_for(what: str, check, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(1)
    raise TimeoutError(f"{what} not ready after {timeout} s")


def ray_start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    """One node, blocking in the foreground: SIGTERM to it stops that node's processes and no others."""
    with open(log, "w") as out:
        return subprocess.Popen(["ray", "start", "--block", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                                 "--object-store-memory=300000000", f"--dashboard-agent-listen-port={free_port()}",
                                 *args], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def processes(temp_dir: str) -> list[str]:
    """Command lines of the processes of this cluster, on both nodes (every Ray process names its temp dir)."""
    found = run(["pgrep", "-af", temp_dir], os.environ).stdout.splitlines()
    return [line for line in found if "pgrep" not in line]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    logs = tmp_path_factory.mktemp("ray_start_logs")
    temp_dir = tempfile.mkdtemp(prefix="raym", dir="/tmp")   # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, **ENV, "RAY_TMPDIR": temp_dir}      # RAY_TMPDIR: our own ray_current_cluster file
    env.pop("RAY_ADDRESS", None)
    gcs, dashboard = free_port(), free_port()
    url = f"http://127.0.0.1:{dashboard}"
    nodes = []
    try:
        nodes.append(ray_start(["--head", f"--port={gcs}", "--dashboard-host=127.0.0.1",
                                f"--dashboard-port={dashboard}", f"--ray-client-server-port={free_port()}",
                                f"--temp-dir={temp_dir}"], env, logs / "head.log"))
        wait_for("dashboard", lambda: run(["ray", "job", "list", "--address", url], env).returncode == 0)
        nodes.append(ray_start([f"--address=127.0.0.1:{gcs}"], env, logs / "worker.log"))

        def two_alive():
            alive = list_nodes(address=url, filters=[("state", "=", "ALIVE")])
            return {n.node_id for n in alive} if len(alive) == 2 else None
        node_ids = wait_for("the second node", two_alive)
        raylets = [p for p in processes(temp_dir) if "raylet/raylet" in p]
        assert len(raylets) == 2, "cannot see both nodes' processes: the final check would be void"
        yield SimpleNamespace(url=url, env=env, node_ids=node_ids)
    finally:
        for node in reversed(nodes):
            node.send_signal(signal.SIGTERM)
            node.wait(60)
        assert wait_for("every process of this cluster to exit", lambda: not processes(temp_dir), timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)   # session logs; the nodes' own output is in `logs`


@pytest.fixture(scope="module")
def job(cluster, tmp_path_factory):
    """The smoke test submitted as a Ray job, its workers required on different nodes (STRICT_SPREAD)."""
    storage, data = tmp_path_factory.mktemp("runs"), tmp_path_factory.mktemp("shards")
    submission = f"pudnet-multinode-{uuid.uuid4().hex[:8]}"
    submit = run(["ray", "job", "submit", "--address", cluster.url, "--submission-id", submission, "--working-dir", ".",
                  "--", "python", "jobs/train.py", "--smoke-test", "placement_strategy=STRICT_SPREAD", "eval_tasks=0",
                  f"storage_path={storage}", f"data_dir={data}"], cluster.env, timeout=360)
    assert submit.returncode == 0, submit.stdout[-4000:] + submit.stderr[-2000:]   # 0: the job SUCCEEDED
    return run(["ray", "job", "logs", "--address", cluster.url, submission], cluster.env).stdout


def test_job_succeeds_with_a_train_worker_on_each_node(cluster, job):
    start = json.loads(re.search(r"\[pudnet\] start: (\{.*\})", job).group(1))
    assert sorted(start["nodes"]) == sorted(cluster.node_ids)       # rank 0 and rank 1, as the workers saw it
    workers = list_actors(address=cluster.url, filters=[("class_name", "=", "RayTrainWorker")], detail=True)
    assert {w.node_id for w in workers} == cluster.node_ids           # and as the cluster recorded it
    assert re.search(r"\[pudnet\] step=6/6 ", job)


def test_serve_deploy_of_the_jobs_checkpoint_answers_a_prediction(cluster, job, tmp_path):
    checkpoint = re.search(r"final checkpoint: (\S+)", job).group(1)
    config = yaml.safe_load((REPO / "serve_app/config.yaml").read_text())
    port = free_port()
    # Loopback on a free port; one proxy, since both nodes share this machine's 127.0.0.1:port.
    config.update(http_options={"host": "127.0.0.1", "port": port}, proxy_location="HeadOnly")
    config["applications"][0]["args"]["checkpoints"] = {"convnet": checkpoint}
    deploy_file = tmp_path / "serve-config.yaml"
    deploy_file.write_text(yaml.safe_dump(config))
    deployed = run(["serve", "deploy", str(deploy_file), "--address", cluster.url], cluster.env)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    endpoint = f"http://127.0.0.1:{port}"

    def healthy():
        try:
            answer = requests.get(f"{endpoint}/healthz", timeout=5).json()
            return answer == {"status": "ok", "architectures": ["convnet"]}
        except requests.RequestException:
            return False
    wait_for("serve /healthz", healthy, timeout=180)

    bank, _ = load_class_bank(["digits"], image_size=32, max_per_class=40)   # 10 classes the smoke test held out
    np.savez(tmp_path / "digits.npz", images=bank.images, labels=bank.labels, class_names=np.array(bank.class_names))
    out = tmp_path / "weights.safetensors"
    predicted = run(["pudnet", "predict", "--endpoint", endpoint, "--data",
                     str(tmp_path / "digits.npz"), "--arch", "convnet", "--out", str(out)], cluster.env, timeout=120)
    assert predicted.returncode == 0, predicted.stdout + predicted.stderr
    with safe_open(out, "pt") as f:
        metadata = f.metadata()
    assert json.loads(metadata["class_names"]) == list(bank.class_names)
    smoke_target = load_config(smoke_test=True).model.target_kwargs
    target = targets.build("convnet", num_classes=len(bank.class_names), **smoke_target)
    target.load_state_dict(load_file(out))    # strict: every generated tensor has its torchvision/ConvNet key
