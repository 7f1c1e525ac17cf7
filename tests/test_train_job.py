"""jobs/train.py: its config, then real Ray runs on 2 CPUs (end to end, `ray job submit`, DDP on 2 nodes,
resume, a failed worker, a crash that costs nothing, a run that repeats, the stream). Ray tests share one
simulated 2-node cluster, started after the subprocess tests so that no two clusters run at once."""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import numpy as np
import pytest
import ray
from ray.cluster_utils import Cluster

from jobs.progress import METRICS_FILE
from jobs.stream import make_stream
from jobs.train import TrainConfig, load_config, main
from pudnet.model import checkpoint
from pudnet.model.recipe import lr_factor
from pudnet.data.tasks import ClassBank
from pudnet.data.shards import pick_test_images, write_bank
from pudnet.data.stream import subdatasets
from serve_app.local import free_port

REPO = Path(__file__).resolve().parents[1]
TEST_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}
integration = pytest.mark.integration


def test_config_files_load_and_the_embedded_default_is_the_default():
    for path in sorted((REPO / "cluster" / "configs").glob("*.yaml")):
        assert isinstance(load_config(str(path)), TrainConfig), path
    assert load_config(str(REPO / "cluster/configs/embedded_default.yaml")) == load_config()
    smoke = load_config(smoke_test=True, overrides=["steps=3", "model.hidden=16"])
    assert (smoke.steps, smoke.model.hidden, smoke.num_workers, smoke.sources) == (3, 16, 2, ("digits", "mnist",
                                                                                              "animal_mnist"))
    assert smoke.name.startswith("pudnet-") and os.path.isabs(smoke.storage_path) and os.path.isabs(smoke.data_dir)


def test_bad_config_values_fail_fast_naming_the_field():
    with pytest.raises(ValueError, match=r"ways=1 \(allowed: 2..model.max_classes=20\)"):
        load_config(overrides=["ways=1"])
    with pytest.raises(ValueError, match="lr=-0.1.*tasks_per_step=0"):
        load_config(overrides=["lr=-0.1", "tasks_per_step=0"])
    with pytest.raises(ValueError, match="heldout_sources"):
        load_config(overrides=["heldout_sources=imagenet"])
    with pytest.raises(ValueError, match=r"within_source=1.5 \(allowed: \[0, 1\]\)"):
        load_config(overrides=["within_source=1.5"])
    with pytest.raises(ValueError, match=r"source_power=-1.0 \(allowed: \[0, 1\]\)"):
        load_config(overrides=["source_power=-1"])
    with pytest.raises(ValueError, match=r"augment_p_grey=-0.5 \(allowed: \[0, 1\]\)"):
        load_config(overrides=["augment_p_grey=-0.5"])
    with pytest.raises(ValueError, match="unknown key 'model.depth'"):
        load_config(overrides=["model.depth=3"])


def test_learning_rate_warms_up_then_follows_a_cosine_to_zero():
    cfg = TrainConfig(steps=100, warmup_steps=10)
    factor = [lr_factor(step, cfg.steps, cfg.warmup_steps, cfg.lr_schedule) for step in (0, 9, 50, 100)]
    assert factor == pytest.approx([0.1, 0.99, 0.5, 0.0], abs=0.01)
    assert lr_factor(77, 100, 0, "constant") == 1.0


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Shards of the embedded sources, prepared by the first run that needs them."""
    return tmp_path_factory.mktemp("shards")


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / METRICS_FILE).read_text().splitlines()]


def checkpointed(log: list[dict]) -> list[dict]:
    """The records of saved checkpoints: they carry each rank's weight digest (a start record carries one)."""
    return [r for r in log if "weights" in r and "event" not in r]


@integration
def test_smoke_test_end_to_end_prints_the_table_and_writes_a_loadable_checkpoint(tmp_path, data_dir):
    env = {**os.environ, **TEST_ENV, "RAY_ADDRESS": "local"}   # its own local cluster, never one found running
    out = subprocess.run([sys.executable, "jobs/train.py", "--smoke-test", f"storage_path={tmp_path}",
                          f"data_dir={data_dir}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=420)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert json.loads(out.stdout[:out.stdout.index("\n}\n") + 2])["world_size"] == 2         # config printed first
    assert re.search(r"\*\*intra-dataset: held-out classes of [a-z_, ]+\*\* \(5 tasks\)", out.stdout)
    assert "**inter-dataset: left-out sources of digits** (5 tasks)" in out.stdout
    assert re.search(r"\| PudNet \+ 10 fine-tune steps \| \d+\.\d ± \d+\.\d \|", out.stdout)
    path = re.search(r"final checkpoint: (\S+)", out.stdout).group(1)
    loaded = checkpoint.load(path)
    assert loaded.model.cfg.hidden == 32 and set(loaded.split.inter_test) == {f"digits/{d}" for d in range(10)}
    assert json.loads(loaded.metadata["train_config"])["steps"] == 6
    assert records(Path(path).parent)[-1]["step"] == 6


@integration
def test_ray_job_submit_runs_the_smoke_test_and_its_metrics_are_in_the_job_logs(tmp_path, data_dir):
    env = {**os.environ, **TEST_ENV}
    env.pop("RAY_ADDRESS", None)
    temp_dir = tempfile.mkdtemp(prefix="rayj", dir="/tmp")    # short: Ray's socket paths must fit 107 bytes
    gcs, dash, client, agent = (free_port() for _ in range(4))
    url = f"http://127.0.0.1:{dash}"
    head = subprocess.Popen(["ray", "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
                             f"--dashboard-port={dash}", "--dashboard-host=127.0.0.1", "--num-cpus=2",
                             f"--temp-dir={temp_dir}", f"--ray-client-server-port={client}",
                             f"--dashboard-agent-listen-port={agent}", "--object-store-memory=300000000"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(60):
            if subprocess.run(["ray", "job", "list", "--address", url], env=env, capture_output=True).returncode == 0:
                break
        job = f"pudnet-smoke-{uuid.uuid4().hex[:8]}"
        submit = subprocess.run(["ray", "job", "submit", "--address", url, "--submission-id", job, "--working-dir",
                                 str(REPO), "--", "python", "jobs/train.py", "--smoke-test", "eval_tasks=2",
                                 f"storage_path={tmp_path}", f"data_dir={data_dir}"],
                                env=env, capture_output=True, text=True, timeout=420)
        assert submit.returncode == 0, submit.stdout[-3000:] + submit.stderr[-3000:]
        status = subprocess.run(["ray", "job", "status", "--address", url, job], env=env, capture_output=True,
                                text=True)
        assert "succeeded" in status.stdout.lower()
        logs = subprocess.run(["ray", "job", "logs", "--address", url, job], env=env, capture_output=True,
                              text=True).stdout
        metrics = [dict(kv.split("=") for kv in line.split("[pudnet] ")[1].split()) for line in logs.splitlines()
                   if "[pudnet] step=" in line]
        assert metrics[-1]["step"] == "6/6" and 0 <= float(metrics[-1]["query_accuracy"]) <= 1
        assert float(metrics[-1]["loss"]) > 0 and float(metrics[-1]["tasks_per_s"]) > 0
        # a task of the smoke test is 5 ways x (5 shots + 5 queries) images: the two rates must agree
        assert float(metrics[-1]["images_per_s"]) == pytest.approx(50 * float(metrics[-1]["tasks_per_s"]), rel=2e-3)
        assert re.search(r"\*\*intra-dataset: held-out classes of [a-z_, ]+\*\* \(2 tasks\)", logs)
    finally:
        head.terminate()   # `ray start --block` stops every process of this head on SIGTERM
        head.wait(60)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    """Two simulated nodes of 1 CPU each; every Ray test below runs on them."""
    env = {**TEST_ENV, "RAY_TMPDIR": tempfile.mkdtemp(prefix="rayc", dir="/tmp")}   # own ray_current_cluster file
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)           # token auth off: a throwaway test cluster only
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 200 << 20,
                                                          "include_dashboard": False})
    nodes.add_node(num_cpus=1, object_store_memory=200 << 20)
    ray.init(address=nodes.address, log_to_driver=False)
    yield nodes
    ray.shutdown()
    nodes.shutdown()
    shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)
    for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def run(tmp_path, data_dir, *overrides):
    main(["--smoke-test", "eval_tasks=0", "val_tasks=2", "checkpoint_every=2", "log_every=2", f"data_dir={data_dir}",
          f"storage_path={tmp_path}", *overrides])


@integration
def test_two_workers_on_two_nodes_train_with_ddp_and_hold_identical_weights(cluster, tmp_path, data_dir):
    # with the auxiliary classifier: a parameter used outside DDP's forward must still be synchronised
    run(tmp_path, data_dir, "steps=4", "name=ddp", "placement_strategy=STRICT_SPREAD", "model.aux_weight=0.1")
    log = records(tmp_path / "ddp")
    assert len(set(log[0]["nodes"])) == 2                                       # one worker per node
    saved = checkpointed(log)
    assert [r["step"] for r in saved] == [2, 4]
    assert all(len(r["weights"]) == 2 and len(set(r["weights"])) == 1 for r in saved)   # ranks agree
    assert saved[-1]["weights"][0] != log[0]["weights"]                         # and they did train


@pytest.fixture(scope="module")
def restarted_run(cluster, tmp_path_factory, data_dir):
    """A run stopped after its step-4 checkpoint, then restarted to step 8 with a worker raising at step 5."""
    storage = tmp_path_factory.mktemp("runs")
    run(storage, data_dir, "steps=4", "name=restart")
    first = records(storage / "restart")
    run(storage, data_dir, "steps=8", "name=restart", "fail_at_step=5", "max_failures=1")
    return storage / "restart", first, records(storage / "restart")[len(first):]


@integration
def test_a_restarted_run_continues_from_its_checkpoint(restarted_run):
    _, first, log = restarted_run
    assert first[-1]["step"] == 4 and log[0]["event"] == "start" and log[0]["step"] == 4
    assert log[0]["weights"] == first[-1]["weights"][0]                         # same step, same weights


@integration
def test_a_second_run_with_the_same_settings_repeats_the_first_to_the_bit(restarted_run, tmp_path, data_dir):
    """The stream keeps step order (jobs/train.fit), so the main job's tables repeat instead of drifting. Without
    it, runs differed by timing, so this could pass by luck then; it failed twice in two tries."""
    _, first, _ = restarted_run
    run(tmp_path, data_dir, "steps=4", "name=again")
    saved = [[r["weights"] for r in checkpointed(log)] for log in (first, records(tmp_path / "again"))]
    assert len(saved[0]) == 2 and saved[1] == saved[0]                          # steps 2 and 4, both ranks


@integration
def test_a_run_that_crashes_ends_with_the_weights_of_one_that_does_not(restarted_run, tmp_path, data_dir):
    """Nothing is lost on a crash: a worker raising at step 3 sends the run back to its step-2 checkpoint, and
    the replayed steps (the same tasks, optimiser and schedule) end at the uninterrupted run's weights."""
    _, first, _ = restarted_run
    run(tmp_path, data_dir, "steps=4", "name=crash", "fail_at_step=3", "max_failures=1")
    log = records(tmp_path / "crash")
    assert (tmp_path / "crash" / "injected-failure-3").exists()
    assert [s["step"] for s in log if s.get("event") == "start"] == [0, 2]       # it did crash and resume
    assert checkpointed(log)[-1]["weights"] == checkpointed(first)[-1]["weights"]  # step 4, both ranks


@integration
def test_a_worker_failure_is_survived_from_the_last_checkpoint(restarted_run):
    path, _, log = restarted_run
    starts = [r for r in log if r.get("event") == "start"]
    assert [s["step"] for s in starts] == [4, 4]                                # the retry resumed from step 4
    assert starts[1]["weights"] == starts[0]["weights"]
    assert (path / "injected-failure-5").exists() and log[-1]["step"] == 8
    assert len(set(log[-1]["weights"])) == 1


@integration
def test_streamed_sub_datasets_hold_only_meta_train_classes_and_train_images(cluster, tmp_path):
    labels = np.repeat(np.arange(6), 30)
    images = np.zeros((len(labels), 8, 8, 3), np.uint8)
    images[:, 0, 0, 0], images[:, 0, 1, 0] = labels, np.tile(np.arange(30), 6)   # pixels name class and image
    write_bank(ClassBank(images, labels, tuple(f"s/{c}" for c in range(6))), str(tmp_path), "s", {})
    meta_train = ["s/0", "s/2", "s/3", "s/5"]
    cfg = TrainConfig(tasks_per_step=2, num_workers=2, steps=10, stream_actors=1, stream_cpus=0.5, ways=3, shots=2,
                      queries=3, seed=0, window_rows=0, stream_cache_mb=16, augment_p_class=0.0, augment_shift=0)
    stream = make_stream(cfg, [str(tmp_path)], meta_train, str(tmp_path / "no-run"))
    tasks = [s for batch in stream.iter_batches(batch_size=8, batch_format="numpy") for s in subdatasets(batch)]
    assert len(tasks) == 40
    for task in tasks:
        assert set(task.class_names) <= set(meta_train)
        for image in np.concatenate([task.support_x, task.query_x]):
            name = f"s/{image[0, 0, 0]}"
            assert name in meta_train and not pick_test_images(name, 30, 0.2, 0)[image[0, 1, 0]]
