import numpy as np
import pytest
import torch

from pudnet import PudNet, PudNetConfig

from pudnet.evaluation import plots
from pudnet.data.tasks import ClassBank
from pudnet.evaluation.episodes import (Evaluator, Point, SGDSettings, TaskResult, markdown_table, ridge_head,
                                        summarize, time_to_equal_accuracy)
from pudnet.evaluation.whole import (WHOLE_METHODS, evaluate_whole, read_whole_tasks, whole_markdown, whole_task,
                                     whole_tasks)


def result(pudnet_acc, curve):
    return TaskResult({"pudnet": (pudnet_acc, 0.01)}, [Point(i, s, 0.0, a) for i, (s, a) in enumerate(curve)])


def test_summarize_expected_numbers():
    results = [TaskResult({"m": (0.5, 1.0)}), TaskResult({"m": (0.7, 3.0)})]
    s = summarize(results)["m"]
    assert s["accuracy"] == pytest.approx(0.6) and s["seconds"] == pytest.approx(2.0) and s["tasks"] == 2
    assert s["ci95"] == pytest.approx(1.96 * 0.1414213 / 2 ** 0.5, rel=1e-4)


def test_time_to_equal_accuracy_uses_the_mean_curve_and_pads_stopped_tasks():
    # PudNet mean 0.7 in 0.01 s; mean SGD curve: (1 s, 0.4), (2 s, 0.65), (2.5 s, 0.75 - second task stopped)
    results = [result(0.6, [(1, 0.3), (2, 0.6), (3, 0.8)]), result(0.8, [(1, 0.5), (2, 0.7)])]
    r = time_to_equal_accuracy(results)
    assert r["reached"] and r["sgd_seconds"] == pytest.approx(2.5) and r["ratio"] == pytest.approx(250)
    never = time_to_equal_accuracy([result(0.9, [(1, 0.3), (4, 0.5)])])
    assert not never["reached"] and never["ratio"] == pytest.approx(400)         # a lower bound
    assert "lower bound" in markdown_table("x", {"methods": summarize([result(0.9, [])]),
                                                 "time_to_equal_accuracy": never})


def test_ridge_head_fits_separable_features_and_picks_its_strength_by_leave_one_out():
    g = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(4, 16, generator=g)
    labels = torch.arange(4).repeat_interleave(25)
    features = centres[labels] + torch.randn(100, 16, generator=g)
    weight, bias = ridge_head(features, labels, 4)
    assert weight.shape == (4, 16) and bias.shape == (4,)
    assert ((features @ weight.t() + bias).argmax(1) == labels).float().mean() == 1.0


def tiny_banks(classes=3, train=24, test=6, size=16, seed=0):
    """Random images whose class shifts the mean brightness: learnable, tiny."""
    rng = np.random.default_rng(seed)
    names = tuple(f"toy/c{i}" for i in range(classes))

    def bank(n):
        labels = np.repeat(np.arange(classes), n)
        images = rng.integers(0, 120, (len(labels), size, size, 3)) + 60 * labels[:, None, None, None]
        return ClassBank(images.astype(np.uint8), labels.astype(np.int64), names)
    return bank(train), bank(test)


def test_whole_task_nests_supports_and_cuts_validation_from_the_support_set():
    train, test = tiny_banks()
    small, small_rows = whole_task(train, test, 10, 0.1, seed=0)
    full, full_rows = whole_task(train, test, 0, 0.25, seed=0)
    assert len(small.support_y) == 30 and len(full.support_y) == 72 and len(full.test_y) == 18
    assert np.bincount(small.query_y).tolist() == [1, 1, 1] and np.bincount(full.query_y).tolist() == [6, 6, 6]
    for task, rows in ((small, small_rows), (full, full_rows)):   # Adam trains on the support minus the cut
        assert len(rows) == len(task.support_y) - len(task.query_y)
        kept = {task.support_x[i].tobytes() for i in rows.tolist()}
        assert not kept & {x.tobytes() for x in task.query_x}
    # the 10 images of a class are among its 24
    assert {x.tobytes() for x in small.support_x} <= {x.tobytes() for x in full.support_x}
    with pytest.raises(ValueError, match="too few"):
        whole_task(*tiny_banks(train=1), 0, 0.1, seed=0)


def test_whole_protocol_on_a_tiny_untrained_model_reports_every_method_curve_and_ratio(tmp_path):
    torch.manual_seed(0)
    model = PudNet(PudNetConfig(image_size=16, target_kwargs={"depth": 2, "width": 8}, encoder_width=4, hidden=8,
                                layer_embedding=4, max_classes=5))
    settings = SGDSettings(batch_size=16, max_epochs=3, patience=2, finetune_steps=(), finetune_batch_size=16)
    train, test = tiny_banks()
    out = evaluate_whole(Evaluator(model, settings, seed=0, max_stats_images=20), train, test, (5, 0),
                         val_fraction=0.2)
    assert list(out) == ["5", "all"] and out["all"]["support_images"] == 72 and out["all"]["test_images"] == 18
    for r in out.values():
        assert set(r["methods"]) == set(WHOLE_METHODS)
        assert all(0 <= m["accuracy"] <= 1 and m["seconds"] > 0 and m["tasks"] == 1 for m in r["methods"].values())
        assert 2 <= len(r["sgd_curve"]) <= 4 and "ratio" in r["time_to_equal_accuracy"]
    table = whole_markdown("toy", {"classes": list(train.class_names), "shots": out})
    assert "| PudNet prediction |" in table and "S=all (72 images)" in table and "time-to-equal" in table
    png = plots.accuracy_vs_time({"whole": {"toy": {"classes": [], "shots": out}}})
    assert png[:4] == b"\x89PNG" and len(png) > 10_000


def test_each_method_is_timed_on_its_own_work_not_on_read_out_or_scoring(monkeypatch):
    """A fake clock moves by a different amount in each kind of work: 0.5 per optimiser step, 1 in PudNet's
    statistics pass, 100 in a read-out (BatchNorm statistics recomputed on the support set), 1000 in scoring.
    Adam's and fine-tuning's seconds are their steps'; a baseline's include its own statistics pass (its method)
    but no scoring; PudNet's include its own pass."""
    from pudnet.evaluation import episodes

    class Clock:
        now = 0.0

        def perf_counter(self):
            return self.now

    clock = Clock()
    monkeypatch.setattr(episodes, "time", clock)

    def advancing(fn, seconds):
        def call(*args, **kwargs):
            clock.now += seconds
            return fn(*args, **kwargs)
        return call
    torch.manual_seed(0)
    model = PudNet(PudNetConfig(image_size=16, target_kwargs={"depth": 2, "width": 8}, encoder_width=4, hidden=8,
                                layer_embedding=4, max_classes=5))
    evaluator = Evaluator(model, SGDSettings(batch_size=16, max_epochs=2, patience=2, finetune_steps=(1,),
                                             finetune_batch_size=16), seed=0)
    monkeypatch.setattr(episodes.F, "cross_entropy", advancing(episodes.F.cross_entropy, 0.5))
    monkeypatch.setattr(model.target, "support_pass", advancing(model.target.support_pass, 1.0))
    monkeypatch.setattr(evaluator, "_weights", advancing(evaluator._weights, 100.0))
    monkeypatch.setattr(evaluator, "accuracy", advancing(evaluator.accuracy, 1000.0))
    task, rows = whole_task(*tiny_banks(), 10, 0.2, seed=0)
    out = evaluator.run(task, 0, ("ncm_pixels", "random_prototype", "linear_probe", "pudnet", "pudnet_ft1",
                                  "sgd_converged"), rows)
    assert [p.seconds for p in out.sgd_curve] == [0.5 * p.step for p in out.sgd_curve] and len(out.sgd_curve) == 3
    assert out.scores["pudnet"][1] == 1.0 and out.scores["pudnet_ft1"][1] == 1.5
    assert out.scores["ncm_pixels"][1] == 0.0
    assert out.scores["random_prototype"][1] == out.scores["linear_probe"][1] == 101.0   # _weights runs a support pass


def test_training_curves_skip_event_records_and_refuse_an_empty_log():
    records = [{"event": "start", "step": 0}] + [
        {"step": s, "loss": 2 / s, "query_accuracy": 0.1 * s, "tasks_per_s": 8.0, **({"val_accuracy": 0.5} if s % 2
                                                                                      else {})} for s in range(1, 6)]
    png = plots.training_curves(records)
    assert png[:4] == b"\x89PNG" and len(png) > 10_000
    with pytest.raises(ValueError, match="no metric records"):
        plots.training_curves([{"event": "start", "step": 0}])


def test_whole_tasks_pick_classes_with_enough_images_and_name_inter_tasks_by_their_shard_manifest(tmp_path):
    from pudnet.data.tasks import ClassSplit
    from pudnet.data.shards import Catalog, write_bank

    def shard(root, source, names, per_class):
        labels = np.repeat(np.arange(len(names)), per_class)
        write_bank(ClassBank(np.zeros((len(labels), 8, 8, 3), np.uint8), labels, names), str(tmp_path / root),
                   source, {}, test_fraction=0.25)
    shard("a", "a", tuple(f"a/{i}" for i in range(6)), [8, 8, 8, 40, 40, 40])
    shard("b", "renamed", tuple(f"b/{i}" for i in range(7)), 8)
    split = ClassSplit(("a/0",), tuple(f"a/{i}" for i in range(1, 6)), tuple(f"b/{i}" for i in range(7)), 0)
    tasks = whole_tasks(split, Catalog([str(tmp_path / "a"), str(tmp_path / "b")]), (10, 0), 10, 5, seed=0)
    assert tasks["intra"] == ["a/3", "a/4", "a/5"]            # 30 train images each; a/1, a/2 have 6 (< S=10)
    assert list(tasks) == ["intra", "inter: renamed"] and len(tasks["inter: renamed"]) == 5   # max_classes
    assert tasks == whole_tasks(split, Catalog([str(tmp_path / "a"), str(tmp_path / "b")]), (10, 0), 10, 5, seed=0)
    read = read_whole_tasks([str(tmp_path / "a"), str(tmp_path / "b")], split, (10, 0), 10, 5, seed=0)
    assert list(read) == [("intra", 10), ("intra", 0), ("inter: renamed", 10), ("inter: renamed", 0)]
    task, rows = read[("intra", 10)]                           # the shards' train split as support, test as test
    assert task.class_names == ("a/3", "a/4", "a/5") and len(task.support_y) == 30 and len(task.test_y) == 30
    assert len(rows) == 27 and len(read[("inter: renamed", 0)][0].support_y) == 5 * 6
