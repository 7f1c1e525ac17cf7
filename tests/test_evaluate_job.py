"""jobs/evaluate.py: the benchmark entry point writes its table as Markdown, JSON and a PNG plot."""
import json

import pytest

from jobs import evaluate


@pytest.mark.integration
def test_smoke_test_runs_every_method_and_writes_all_outputs(tmp_path):
    report = evaluate.main(["--smoke-test", "--json", str(tmp_path / "r.json"), "--markdown", str(tmp_path / "r.md"),
                            "--plot", str(tmp_path / "r.png")])
    saved = json.loads((tmp_path / "r.json").read_text())
    assert set(saved["settings"]) == {"intra", "inter"} == set(report["settings"])
    methods = saved["settings"]["intra"]["methods"]
    assert set(methods) == set(evaluate.ALL_METHODS)
    assert all(0 <= m["accuracy"] <= 1 and m["seconds"] > 0 and m["tasks"] == 3 for m in methods.values())
    assert "time_to_equal_accuracy" in saved["settings"]["inter"]
    assert "PudNet prediction" in (tmp_path / "r.md").read_text()
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_config_rejects_unknown_methods_and_keys():
    with pytest.raises(ValueError, match="methods \\['magic'\\] unknown"):
        evaluate.apply_overrides(evaluate.EvalConfig(), ["methods=magic"])
    with pytest.raises(ValueError, match="unknown key 'epochs'"):
        evaluate.apply_overrides(evaluate.EvalConfig(), ["epochs=3"])


def test_trained_checkpoint_beats_no_learning_baselines_on_its_unseen_classes(tiny_checkpoint):
    report = evaluate.run(evaluate.EvalConfig(checkpoint=str(tiny_checkpoint), tasks=10, shots=5, queries=5, test=5,
                                              max_per_class=200, methods=("random_init", "pudnet")))
    inter = report["settings"]["inter"]["methods"]     # digits, left out of meta-training
    assert inter["pudnet"]["accuracy"] > inter["random_init"]["accuracy"] + 0.3
