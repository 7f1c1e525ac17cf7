"""jobs/evaluate.py: reads a run's record from its checkpoint, writes Markdown, JSON and PNGs, never leaves Ray up."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import ray
import torch

from jobs import evaluate
from jobs.train import TrainConfig, load_config
from pudnet import PudNet
from pudnet.model import checkpoint
from pudnet.data.tasks import ClassBank, ClassSplit, split_classes
from pudnet.data.shards import write_bank
from tiny_runs import TINY, record, two_tiny_sources

FAST = ["protocols=whole", "whole.shots=4,0", "whole.classes=3", "whole.sgd.max_epochs=2", "whole.sgd.patience=1",
        "whole.sgd.batch_size=16", "whole.sgd.finetune_batch_size=16"]


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory):
    """A run dir with two checkpoints (the newer step in the older-named folder) over tiny shards, no Ray."""
    base = tmp_path_factory.mktemp("eval_run")
    roots, split = two_tiny_sources(base)
    run = base / "run"
    for folder, step in (("checkpoint_2026-01-01_00-00-00", 8), ("checkpoint_2026-01-02_00-00-00", 4)):
        torch.manual_seed(step)
        model = PudNet(TINY)
        checkpoint.save(run / folder, model, split, extra={**record(model, split, roots, heldout_sources=("other",),
                                                                    sources=("seen", "other")), "step": str(step)})
        (run / folder / "state.json").write_text(json.dumps({"step": step}))
    return run


def test_a_run_directory_is_evaluated_from_its_newest_checkpoint_alone_without_ray(fake_run, tmp_path):
    report = evaluate.main([str(fake_run), *FAST, "--out", str(tmp_path)])
    assert not ray.is_initialized()
    assert report["checkpoint"].endswith("checkpoint_2026-01-01_00-00-00")          # step 8, not the newer name
    assert report["train_config"]["heldout_sources"] == ("other",)          # the typed TrainConfig
    assert set(report["whole"]) == {"intra", "inter: renamed"}                     # named by the shard manifest
    inter = report["whole"]["inter: renamed"]
    assert inter["classes"] == [f"other/c{i}" for i in range(4)] and set(inter["shots"]) == {"4", "all"}
    assert inter["shots"]["all"]["test_images"] == 4 * 3 and inter["shots"]["all"]["support_images"] == 4 * 12
    assert "PudNet + 1 fine-tune epoch" in (tmp_path / "eval.md").read_text()
    assert json.loads((tmp_path / "eval.json").read_text())["whole"]["intra"]["shots"]["4"]["methods"]
    assert (tmp_path / "eval.png").read_bytes()[:4] == b"\x89PNG"


def test_checkpoint_dir_weights_file_and_key_value_all_name_the_same_checkpoint(fake_run):
    older = fake_run / "checkpoint_2026-01-02_00-00-00"
    for args in ([str(older)], [str(older / checkpoint.WEIGHTS_FILE)], [f"checkpoint={older}"]):
        report = evaluate.main(args + FAST + ["whole.shots=0"])
        assert report["checkpoint"].startswith(str(older)) and list(report["whole"]["intra"]["shots"]) == ["all"]
    assert not ray.is_initialized()


@pytest.mark.parametrize("config", sorted(Path(__file__).parents[1].glob("cluster/configs/**/*.yaml")),
                         ids=lambda p: p.name)
def test_every_shipped_config_is_read_back_from_the_record_with_its_shard_roots(config, fake_run, tmp_path):
    cfg = load_config(str(config))
    loaded = checkpoint.load(fake_run / "checkpoint_2026-01-01_00-00-00")
    roots = json.loads(loaded.metadata["shard_roots"])
    checkpoint.save(tmp_path, loaded.model, loaded.split, extra={
        "train_config": json.dumps(dataclasses.asdict(cfg)), "shard_roots": json.dumps(roots)})
    got = evaluate.load(evaluate.EvalConfig(checkpoint=str(tmp_path)), smoke=False)
    assert got.train_config == dataclasses.asdict(cfg) and got.roots == roots     # no source name guessed
    assert not ray.is_initialized()


def test_a_checkpoint_without_a_run_record_is_refused_with_the_reason(tmp_path):
    checkpoint.save(tmp_path / "bare", PudNet(TINY), split_classes([f"a/{i}" for i in range(6)], [], 0.5, 2, 0))
    with pytest.raises(ValueError, match="neither shard_roots nor train_config"):
        evaluate.main([str(tmp_path / "bare")])
    with pytest.raises(FileNotFoundError, match="no PudNet checkpoint at .* or a run directory with checkpoint_"):
        evaluate.main([str(tmp_path)])


def test_training_curves_from_a_run_directory(tmp_path):
    lines = [{"event": "start", "step": 0}, {"step": 2, "loss": 1.5, "query_accuracy": 0.4, "tasks_per_s": 9.0},
             {"step": 4, "loss": 1.1, "query_accuracy": 0.6, "val_accuracy": 0.5, "tasks_per_s": 8.5}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n")
    evaluate.main(["--curves", str(tmp_path)])
    assert (tmp_path / "training_curves.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.integration
def test_smoke_test_runs_every_method_and_writes_all_outputs(tmp_path):
    report = evaluate.main(["--smoke-test", "--json", str(tmp_path / "r.json"), "--markdown", str(tmp_path / "r.md"),
                            "--plot", str(tmp_path / "r.png")])
    assert not ray.is_initialized()      # shards prepared through Ray on first use: that cluster is gone again
    saved = json.loads((tmp_path / "r.json").read_text())
    assert set(saved["settings"]) == {"intra", "inter"} == set(report["settings"])
    methods = saved["settings"]["intra"]["methods"]
    assert set(methods) == set(evaluate.EvalConfig().methods)
    assert all(0 <= m["accuracy"] <= 1 and m["seconds"] > 0 and m["tasks"] == 3 for m in methods.values())
    assert "time_to_equal_accuracy" in saved["settings"]["inter"]
    assert set(saved["whole"]) == {"intra", "inter: digits"} and set(saved["whole"]["intra"]["shots"]) == {"5", "20"}
    assert "PudNet prediction" in (tmp_path / "r.md").read_text()
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_config_rejects_unknown_methods_and_keys():
    with pytest.raises(ValueError, match="methods \\['magic'\\] unknown"):
        evaluate.apply_overrides(evaluate.EvalConfig(), ["methods=magic"])
    with pytest.raises(ValueError, match="whole.methods: methods \\['magic'\\] unknown"):
        evaluate.apply_overrides(evaluate.EvalConfig(), ["whole.methods=magic"])
    with pytest.raises(ValueError, match="unknown key 'epochs'"):
        evaluate.apply_overrides(evaluate.EvalConfig(), ["epochs=3"])


def test_every_nested_config_refuses_unknown_keys_and_stored_configs_load_back():
    """pydantic drops an unknown key silently in a dataclass without CONFIG: every level must refuse one."""
    for cls, nested in ((TrainConfig, "model"), (evaluate.EvalConfig, "sgd"), (evaluate.EvalConfig, "whole"),
                        (evaluate.EvalConfig, "whole.sgd")):
        values = {}
        node = values
        for part in nested.split("."):
            node = node.setdefault(part, {})
        node["typo"] = 1
        with pytest.raises(ValueError, match=f"unknown {cls.__name__} key '{nested}.typo'"):
            evaluate.from_dict(cls, values)
    smoke = load_config(overrides=["sources=mnist,digits", "heldout_sources=digits"])
    for cfg in (TrainConfig(), evaluate.EvalConfig(), smoke):   # checkpoints store asdict as JSON: tuples -> lists
        assert evaluate.from_dict(type(cfg), json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg


@pytest.fixture(scope="module")
def recorded_checkpoint(tiny_checkpoint, pypi_bank, tmp_path_factory):
    """The shared tiny checkpoint re-saved with the run record jobs/train.py writes, over shards of its bank."""
    base = tmp_path_factory.mktemp("recorded")
    root = str(base / "shards")
    write_bank(pypi_bank, root, "pypi", {"test": 1}, test_fraction=0.2)
    loaded = checkpoint.load(tiny_checkpoint)
    checkpoint.save(base / "ckpt", loaded.model, loaded.split,
                    extra=record(loaded.model, loaded.split, [root], sources=("digits", "mnist", "animal_mnist"),
                                 heldout_sources=("digits",)))
    return base / "ckpt"


def test_trained_checkpoint_beats_no_learning_baselines_on_its_unseen_classes(recorded_checkpoint):
    report = evaluate.run(evaluate.EvalConfig(checkpoint=str(recorded_checkpoint), tasks=10, shots=5, queries=5,
                                              test=5, max_per_class=200, methods=("random_init", "pudnet"),
                                              protocols=("tasks",)))
    inter = report["settings"]["inter"]["methods"]     # digits, left out of meta-training
    assert inter["pudnet"]["accuracy"] > inter["random_init"]["accuracy"] + 0.3
    assert not ray.is_initialized()


def test_with_bank_classes_held_out_the_base_sources_held_out_classes_are_also_scored_alone(tmp_path, capsys):
    """The 6 base sources' held-out classes keep their own setting, comparable with tables before the bank."""
    rng = np.random.default_rng(0)
    roots, names = [], {}
    for source in ("mnist", "icons", "fashion_mnist"):
        names[source] = tuple(f"{source}/c{i}" for i in range(4))
        roots.append(str(tmp_path / source))
        write_bank(ClassBank(rng.integers(0, 255, (60, 32, 32, 3), dtype=np.uint8), np.repeat(np.arange(4), 15),
                             names[source]), roots[-1], source, {"test": 1}, test_fraction=0.2)
    split = ClassSplit(names["mnist"][:2] + names["icons"][:2], names["mnist"][2:] + names["icons"][2:],
                       names["fashion_mnist"], 0)
    torch.manual_seed(0)
    model = PudNet(TINY)
    checkpoint.save(tmp_path / "ckpt", model, split, extra=record(model, split, roots, heldout_sources=(
        "fashion_mnist",), sources=("mnist", "icons", "fashion_mnist")))
    report = evaluate.run(evaluate.EvalConfig(checkpoint=str(tmp_path / "ckpt"), protocols=("tasks",), tasks=2,
                                              ways=2, shots=2, queries=2, test=2, methods=("random_init",)))
    assert list(report["settings"]) == ["intra", "intra: base sources", "inter"]
    out = capsys.readouterr().out
    assert "intra: base sources-dataset: held-out classes of mnist**" in out
    assert "intra-dataset: held-out classes of icons, mnist**" in out
