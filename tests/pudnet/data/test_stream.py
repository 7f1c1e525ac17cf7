import json

import numpy as np
import pytest
import torch

from pudnet import PudNet, PudNetConfig
from pudnet.data.tasks import ClassBank, ClassDraw, SubDatasetSampler
from pudnet.model.meta import Episode, train_step
from pudnet.data.augment import Augmentation
from pudnet.data.shards import Catalog, pick_test_images, read_class_bank, write_bank
from pudnet.data.stream import SubDatasetBuilder, plan_task, subdatasets, trainable_classes


def tiny_bank(source, classes, per_class, size=8):
    """Pixel (0,0) tells the class, pixel (0,1) the image's position in its class."""
    labels = np.repeat(np.arange(classes), per_class)
    images = np.zeros((len(labels), size, size, 3), np.uint8)
    images[:, 0, 0, 0], images[:, 0, 1, 0] = labels, np.tile(np.arange(per_class), classes)
    return ClassBank(images, labels, tuple(f"{source}/{i}" for i in range(classes)))


@pytest.fixture
def shards(tmp_path):
    write_bank(tiny_bank("a", classes=6, per_class=30), str(tmp_path / "a"), "a", {}, test_fraction=0.2, seed=0)
    small = tiny_bank("b", classes=3, per_class=10)
    write_bank(small, str(tmp_path / "b"), "b", {}, test_fraction=0.2, seed=0)
    return [str(tmp_path / "a"), str(tmp_path / "b")]


def test_plan_is_seeded_distinct_and_reads_a_window():
    rows = [[8, 8, 8, 6], [30], [5, 5, 5], [12, 12]]
    plan = plan_task(7, rows, ways=3, shots=2, queries=3, seed=1)
    assert plan_task(7, rows, 3, 2, 3, seed=1)[0][2].tolist() == plan[0][2].tolist()
    assert len({c for c, _, _ in plan}) == 3
    for c, blocks, picked in plan:
        total = sum(rows[c][b] for b in blocks)
        assert total >= 5 and len(set(picked)) == 5 and picked.max() < total
        assert len(blocks) == 1 or total - rows[c][blocks[-1]] < 5           # no more blocks than needed
    wide = plan_task(7, rows, 3, 2, 3, seed=1, window_rows=20)
    assert all(sum(rows[c][b] for b in blocks) >= min(20, sum(rows[c])) for c, blocks, _ in wide)
    firsts = {plan_task(i, rows, 3, 2, 3, seed=1)[0][0] for i in range(30)}
    assert len(firsts) == 4                                                     # random class order per task


def test_a_share_of_tasks_draws_its_classes_from_one_source():
    rows = [[8, 8, 8, 6], [30], [5, 5, 5], [12, 12]] * 3
    sources = ["a"] * 6 + ["b"] * 4 + ["c"] * 2                                # c: too few classes for 3-way
    classes = lambda i, share: [c for c, _, _ in plan_task(i, rows, 3, 2, 3, 1, 0, sources, ClassDraw(share))]
    # share 0 gives the tasks of the code before the option (numbers from commit 9ababda)
    assert [classes(i, 0.0) for i in range(6)] == [[5, 4, 9], [5, 4, 3], [11, 6, 4], [9, 0, 4], [6, 4, 11], [8, 4, 11]]
    assert plan_task(4, rows, 3, 2, 3, seed=1)[0][2].tolist() == [1, 4, 0, 3, 2]
    within = [classes(i, 1.0) for i in range(300)]
    picked = [{sources[c] for c in task} for task in within]
    assert all(len(s) == 1 for s in picked) and all(len(set(task)) == 3 for task in within)
    share_a = sum(s == {"a"} for s in picked) / len(picked)
    assert {"a", "b"} == set().union(*picked) and 0.5 < share_a < 0.7         # weighted by class count: 6/10
    assert classes(17, 1.0) == within[17]                                       # a function of (seed, index)
    across = [classes(i, 0.0) for i in range(300)]
    half = [classes(i, 0.5) for i in range(300)]
    assert all(h in (a, w) for h, a, w in zip(half, across, within))  # a task is today's, or its within-source draw
    assert 0.4 < np.mean([h == w != a for h, a, w in zip(half, across, within)]) < 0.6
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="within_source"):
            classes(0, bad)
    with pytest.raises(ValueError, match="source of each"):
        plan_task(0, rows, 3, 2, 3, seed=1, draw=ClassDraw(within_source=0.5))


def test_source_power_tempers_how_often_big_and_small_sources_meet_tasks():
    rows = [[10]] * 14
    sources = ["a"] * 10 + ["b"] * 2 + ["c"] * 2                               # a: a big source, b and c small
    def per_class(power: float) -> dict[str, float]:
        """Appearances per class of each source over 600 3-way tasks."""
        seen = [sources[c] for i in range(600)
                for c, _, _ in plan_task(i, rows, 3, 2, 3, 1, 0, sources, ClassDraw(source_power=power))]
        return {s: seen.count(s) / sources.count(s) for s in "abc"}
    uniform, tempered, flat = per_class(1.0), per_class(0.5), per_class(0.0)
    assert max(uniform.values()) / min(uniform.values()) < 1.3                  # every class alike
    assert uniform["a"] > tempered["a"] > flat["a"] and uniform["b"] < tempered["b"] < flat["b"]
    assert flat["b"] > 2 * flat["a"]                                            # a small source's classes: far more
    tasks = [[c for c, _, _ in plan_task(i, rows, 3, 2, 3, 1, 0, sources, ClassDraw(source_power=0.5))]
             for i in range(50)]
    assert all(len(set(t)) == 3 for t in tasks)                                 # no class twice in a task
    assert tasks[17] == [c for c, _, _ in plan_task(17, rows, 3, 2, 3, 1, 0, sources, ClassDraw(source_power=0.5))]
    for bad in (-0.5, 1.5):
        with pytest.raises(ValueError, match="source_power"):
            ClassDraw(source_power=bad)
    assert not ClassDraw().needs_sources
    assert ClassDraw(source_power=0.5).needs_sources and ClassDraw(within_source=0.1).needs_sources
    sized = ["a"] * 10 + ["b"] * 3 + ["c"]                                     # c: too few classes for 3-way
    within = lambda power: [sized[plan_task(i, rows, 3, 2, 3, 1, 0, sized, ClassDraw(1.0, power))[0][0]]
                            for i in range(600)]                                # each task's one source
    assert 0.68 < within(1.0).count("a") / 600 < 0.86                          # by class count: 10 of 13
    assert 0.4 < within(0.0).count("a") / 600 < 0.6                             # a and b alike


def test_builder_streams_only_given_classes_and_their_train_images(shards):
    classes = ["a/0", "a/2", "a/3", "a/5"]
    builder = SubDatasetBuilder(shards, classes, ways=3, shots=2, queries=4, seed=0)
    out = builder({"id": np.arange(10, 16)})
    assert out["support_x"].shape == (6, 6, 8, 8, 3) and out["query_x"].shape == (6, 12, 8, 8, 3)
    assert out["support_x"].dtype == np.uint8 and out["support_y"][0].tolist() == [0, 0, 1, 1, 2, 2]
    for sub in subdatasets(out):
        assert set(sub.class_names) <= set(classes) and len(sub.test_x) == 0
        for x, y in ((sub.support_x, sub.support_y), (sub.query_x, sub.query_y)):
            for image, label in zip(x, y):
                name = sub.class_names[label]
                assert image[0, 0, 0] == int(name.split("/")[1])               # label c is class_names[c]
                assert not pick_test_images(name, 30, 0.2, 0)[image[0, 1, 0]]   # never a test image
        images = {(i[0, 0, 0], i[0, 1, 0]) for i in np.concatenate([sub.support_x, sub.query_x])}
        assert len(images) == 18                                                # no image twice in a task
    again = builder({"id": np.array([13])})                                   # a retry rebuilds the same task
    assert np.array_equal(again["support_x"][0], out["support_x"][3])
    assert again["class_names"][0] == out["class_names"][3]


def test_classes_too_small_for_a_task_are_refused(shards):
    kept, dropped = trainable_classes(Catalog(shards), ["a/0", "b/0", "b/1"], 10)
    assert kept == ["a/0"] and dropped == ["b/0", "b/1"]
    with pytest.raises(ValueError, match="trainable_classes"):
        SubDatasetBuilder(shards, ["a/0", "a/1", "b/0"], ways=2, shots=5, queries=5, seed=0)


def test_builder_draws_within_one_source_and_refuses_a_share_no_source_can_fill(shards):
    classes = [f"a/{c}" for c in range(6)] + ["b/0", "b/1", "b/2"]
    builder = SubDatasetBuilder(shards, classes, ways=3, shots=2, queries=2, seed=0, draw=ClassDraw(within_source=1.0))
    names = [json.loads(n) for n in builder({"id": np.arange(40)})["class_names"]]
    assert all(len({n.split("/")[0] for n in task}) == 1 for task in names)
    assert {task[0].split("/")[0] for task in names} == {"a", "b"}
    again = builder({"id": np.array([7])})
    assert json.loads(again["class_names"][0]) == names[7]
    with pytest.raises(ValueError, match="within_source"):
        SubDatasetBuilder(shards, classes, ways=7, shots=2, queries=2, seed=0, draw=ClassDraw(within_source=0.5))
    with pytest.raises(ValueError, match="within_source"):
        SubDatasetBuilder(shards, classes, ways=3, shots=2, queries=2, seed=0, draw=ClassDraw(within_source=2.0))


def test_streamed_batch_trains_pudnet():
    bank = tiny_bank("a", classes=4, per_class=12, size=16)
    bank.images[:] = np.random.default_rng(0).integers(0, 255, bank.images.shape, dtype=np.uint8)
    cfg = PudNetConfig(target_kwargs={"depth": 2, "width": 8}, encoder_width=8, hidden=8, layer_embedding=4,
                       image_size=16, max_classes=4)
    model = PudNet(cfg)
    episodes = [Episode.from_subdataset(s, model) for s in subdatasets({
        "task": np.arange(2), "class_names": np.array(['["a/0", "a/1"]'] * 2, dtype=object),
        "support_x": bank.images[:8].reshape(2, 4, 16, 16, 3), "support_y": np.array([[0, 0, 1, 1]] * 2),
        "query_x": bank.images[8:12].reshape(2, 2, 16, 16, 3), "query_y": np.array([[0, 1]] * 2)})]
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss, acc = train_step(model, optimizer, episodes)
    assert np.isfinite(loss) and 0 <= acc <= 1
    assert acc * 4 == round(acc * 4)       # the mean over 2 tasks of 2 query images each
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters())), "the step changed no weight"
    for _ in range(15):                    # the same two tasks again: the stream's batch is one the model can fit
        last, _ = train_step(model, optimizer, episodes)
    assert last < loss, (loss, last)


def test_held_out_tasks_take_test_images_from_the_shards_test_split_only(shards):
    classes = [f"a/{i}" for i in range(6)] + ["b/0"]
    train = read_class_bank(shards, classes, split="train")
    test = read_class_bank(shards, classes, split="test")
    sampler = SubDatasetSampler(train, classes, seed=5, test_bank=test)
    tasks = [sampler.sample(i, 3, 3, 3, 4) for i in range(8)]
    assert [t.class_names for t in tasks] == [sampler.sample(i, 3, 3, 3, 4).class_names for i in range(8)]
    for task in tasks:
        assert "b/0" not in task.class_names                                  # 2 test images: cannot give 4
        learn = {(i[0, 0, 0], i[0, 1, 0]) for i in np.concatenate([task.support_x, task.query_x])}
        tested = {(i[0, 0, 0], i[0, 1, 0]) for i in task.test_x}
        assert len(tested) == 12 and not learn & tested
        for image, label in zip(task.test_x, task.test_y):
            name = task.class_names[label]
            assert image[0, 0, 0] == int(name.split("/")[1]) and pick_test_images(name, 30, 0.2, 0)[image[0, 1, 0]]
    with pytest.raises(ValueError, match="no pool has 7 classes"):
        sampler.sample(0, 7, 3, 3, 4)


def test_augmented_tasks_rename_transformed_classes_and_stay_reproducible(shards):
    builder = SubDatasetBuilder(shards, ["a/0", "a/1", "a/2"], ways=3, shots=2, queries=2, seed=0,
                                augmentation=Augmentation(p_class=1.0))
    subs = subdatasets(builder({"id": np.arange(4)}))
    for sub in subs:
        assert all("@rot" in name for name in sub.class_names)                  # every class transformed
        assert {name.split("@")[0] for name in sub.class_names} <= {"a/0", "a/1", "a/2"}
    again = subdatasets(builder({"id": np.array([2])}))[0]
    assert again.class_names == subs[2].class_names and np.array_equal(again.query_x, subs[2].query_x)


def test_builder_varies_k_and_s_per_call_within_the_ranges_and_the_support_cap(shards):
    classes = [f"a/{i}" for i in range(6)]
    builder = SubDatasetBuilder(shards, classes, ways=2, shots=1, queries=2, seed=0, ways_max=6, shots_max=20,
                                max_support=40)
    shapes = set()
    for step in range(12):
        out = builder({"id": np.arange(3 * step, 3 * step + 3)})             # one global step: 3 tasks
        k = len(json.loads(out["class_names"][0]))
        s = out["support_y"].shape[1] // k
        assert 2 <= k <= 6 and 1 <= s <= 20 and k * s <= 40 and out["query_y"].shape == (3, 2 * k)
        assert np.array_equal(builder({"id": np.arange(3 * step, 3 * step + 3)})["support_x"], out["support_x"])
        shapes.add((k, s))
    assert len(shapes) > 6
