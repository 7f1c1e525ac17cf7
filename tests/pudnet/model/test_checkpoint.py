import json

import pytest
import torch
from safetensors import safe_open

from pudnet import PudNet, PudNetConfig

from pudnet.model import checkpoint
from pudnet.data.tasks import ClassSplit


def test_checkpoint_round_trip_rebuilds_the_model_from_the_file_alone(tmp_path):
    torch.manual_seed(0)
    cfg = PudNetConfig(target_kwargs={"depth": 2, "width": 8}, encoder_width=8, hidden=8, layer_embedding=4)
    model = PudNet(cfg)
    split = ClassSplit(("a/0", "a/1"), ("a/2",), ("b/0",), seed=3)
    path = checkpoint.save(tmp_path, model, split, extra={"step": "7"})
    assert path.name == "model.safetensors" and list(tmp_path.iterdir()) == [path]   # no temp file left
    with safe_open(str(path), "pt") as f:
        assert json.loads(f.metadata()["pudnet_config"])["hidden"] == 8
    loaded = checkpoint.load(tmp_path)
    assert loaded.model.cfg == cfg and loaded.split == split and loaded.metadata["step"] == "7"
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.model.state_dict()[name]), name


def test_load_rejects_missing_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no PudNet checkpoint"):
        checkpoint.load(tmp_path)
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="not a pudnet-checkpoint-1 file"):
        checkpoint.load(tmp_path)
    (tmp_path / "checkpoint_manager_snapshot.json").write_text('{"not": "weights"}')   # a run's other files
    with pytest.raises(ValueError, match="not readable as safetensors"):
        checkpoint.load(tmp_path / "checkpoint_manager_snapshot.json")
    (tmp_path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":")   # truncated
    with pytest.raises(ValueError, match="not readable as safetensors"):
        checkpoint.load(tmp_path)


def test_tiny_checkpoint_beats_chance_on_unseen_digits(tiny_checkpoint, pypi_bank):
    """The shared fixture is genuinely trained: the serve and job tests rely on it."""
    from pudnet.data.tasks import SubDatasetSampler
    from pudnet.evaluation.episodes import Evaluator, evaluate_tasks
    loaded = checkpoint.load(tiny_checkpoint)
    sampler = SubDatasetSampler(pypi_bank, loaded.split.inter_test, seed=11)
    report = evaluate_tasks(Evaluator(loaded.model), [sampler.sample(i, 5, 5, 5, 10) for i in range(10)],
                            ("random_init", "pudnet"))
    assert report["methods"]["pudnet"]["accuracy"] > report["methods"]["random_init"]["accuracy"] + 0.3
