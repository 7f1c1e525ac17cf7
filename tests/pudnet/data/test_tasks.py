import numpy as np
import pytest
import torch

from pudnet.data.tasks import ClassBank, ClassDraw, ClassSplit, SubDatasetSampler, split_classes, to_tensor


def tiny_bank(sources=("a", "b", "c"), classes=4, per_class=30, size=8):
    names = tuple(f"{s}/{i}" for s in sources for i in range(classes))
    labels = np.repeat(np.arange(len(names)), per_class)
    images = np.zeros((len(labels), size, size, 3), np.uint8)
    images[:, 0, 0, 0] = labels                     # pixel (0,0) tells the class
    images[:, 0, 1, 0] = np.tile(np.arange(per_class), len(names))   # pixel (0,1) tells the image
    return ClassBank(images, labels, names)


def test_bank_validates_and_indexes():
    bank = tiny_bank()
    assert bank.class_sources[:5] == ("a", "a", "a", "a", "b")
    assert [len(r) for r in bank.indices_by_class()] == [30] * 12
    with pytest.raises(ValueError, match="uint8"):
        ClassBank(np.zeros((2, 8, 8, 3), np.float32), np.zeros(2, np.int64), ("x/0",))
    with pytest.raises(ValueError, match="collide"):
        ClassBank.concat([bank, bank])


def test_split_is_seeded_disjoint_and_keeps_left_out_sources_whole():
    bank = tiny_bank()
    split = split_classes(bank.class_names, ["c"], intra_fraction=0.25, min_intra=3, seed=7)
    assert split == split_classes(bank.class_names, ["c"], 0.25, 3, seed=7)
    assert split != split_classes(bank.class_names, ["c"], 0.25, 3, seed=8)
    assert set(split.inter_test) == {f"c/{i}" for i in range(4)} and len(split.intra_test) == 3
    assert not set(split.meta_train) & (set(split.intra_test) | set(split.inter_test))
    assert sorted(split.meta_train + split.intra_test + split.inter_test) == sorted(bank.class_names)
    assert ClassSplit.from_json(split.to_json()) == split
    with pytest.raises(ValueError, match="appear in meta_train"):
        ClassSplit(("a/0",), ("a/0",), (), 0)
    with pytest.raises(ValueError, match="too few"):
        split_classes(bank.class_names, ["a", "b"], 0.5, 4, 0)


def test_meta_training_sampler_never_yields_a_held_out_class():
    bank = tiny_bank()
    split = split_classes(bank.class_names, ["c"], 0.25, 3, seed=0)
    sampler = SubDatasetSampler(bank, split.meta_train, seed=1)
    allowed = {bank.class_names.index(c) for c in split.meta_train}
    for i in range(200):
        task = sampler.sample(i, 3, 2, 2)
        assert set(task.class_names) <= set(split.meta_train)
        assert set(task.support_x[:, 0, 0, 0]) | set(task.query_x[:, 0, 0, 0]) <= allowed


def test_tasks_are_deterministic_random_order_and_keep_test_images_apart():
    bank = tiny_bank()
    sampler = SubDatasetSampler(bank, bank.class_names, seed=3, test_fraction=0.2)
    a, b = sampler.sample(5, 4, 3, 2, 2), sampler.sample(5, 4, 3, 2, 2)
    assert a.class_names == b.class_names and np.array_equal(a.support_x, b.support_x)
    orders = {sampler.sample(i, 4, 1, 1).class_names[0] for i in range(40)}
    assert len(orders) > 4                                     # the first class varies: no fixed "class 0"
    for i in range(20):
        t = sampler.sample(i, 4, 3, 2, 2)
        assert list(t.support_y) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
        for c, name in enumerate(t.class_names):   # label c really is class_names[c]
            assert set(t.support_x[t.support_y == c, 0, 0, 0]) == {bank.class_names.index(name)}
        image_id = lambda x, y: set(zip(x[:, 0, 0, 0], x[:, 0, 1, 0]))
        learn = image_id(t.support_x, t.support_y) | image_id(t.query_x, t.query_y)
        assert len(learn) == 20 and not learn & image_id(t.test_x, t.test_y)


def test_by_source_tasks_use_one_source():
    bank = tiny_bank()
    sampler = SubDatasetSampler(bank, bank.class_names, seed=0, by_source=True)
    sources = [{n.split("/")[0] for n in sampler.sample(i, 3, 1, 1).class_names} for i in range(9)]
    assert all(len(s) == 1 for s in sources) and {next(iter(s)) for s in sources} == {"a", "b", "c"}
    with pytest.raises(ValueError, match="has 5 classes"):
        sampler.sample(0, 5, 1, 1)


def test_a_share_of_in_process_tasks_draws_within_one_source_as_the_stream_does():
    """``within_source`` (TrainConfig.within_source in pudnet.model.recipe) picks classes as the stream does."""
    bank = tiny_bank(sources=("a", "b", "c"), classes=4)
    sampler = SubDatasetSampler(bank, bank.class_names[:10], seed=0)          # c has 2 classes: never within, K=3
    for i in range(30):
        default = sampler.sample(i, 3, 1, 1)
        assert np.array_equal(sampler.sample(i, 3, 1, 1, draw=ClassDraw(within_source=0.0)).support_x, default.support_x)
        one = sampler.sample(i, 3, 1, 1, draw=ClassDraw(within_source=1.0)).class_names
        assert len({n.split("/")[0] for n in one}) == 1 and not one[0].startswith("c/")
        assert sampler.sample(i, 3, 1, 1, draw=ClassDraw(within_source=1.0)).class_names == one
    with pytest.raises(ValueError, match="within_source"):
        sampler.sample(0, 3, 1, 1, draw=ClassDraw(within_source=1.5))


def test_only_classes_with_enough_images_take_part():
    bank = tiny_bank(sources=("a",), classes=4)
    keep = (bank.labels != 3) | (np.arange(len(bank.labels)) % 30 < 10)      # class a/3 keeps 10 images
    small = ClassBank(bank.images[keep], bank.labels[keep], bank.class_names)
    sampler = SubDatasetSampler(small, small.class_names, seed=0, test_fraction=0.2)
    assert sampler.eligible(10, 10, 4) == {"": ["a/0", "a/1", "a/2"]}
    assert all("a/3" not in sampler.sample(i, 3, 10, 10, 4).class_names for i in range(10))
    assert any("a/3" in sampler.sample(i, 3, 2, 2, 2).class_names for i in range(10))
    with pytest.raises(ValueError, match="eligible"):
        sampler.sample(0, 4, 10, 10, 4)


def test_to_tensor_normalises_channels_first():
    images = np.full((2, 4, 4, 3), 255, np.uint8)
    x = to_tensor(images, (0.5, 0.5, 0.5), (0.5, 0.25, 0.5))
    assert x.shape == (2, 3, 4, 4) and x.dtype == torch.float32
    assert torch.allclose(x[:, 1], torch.full((2, 4, 4), 2.0)) and torch.allclose(x[:, 0], torch.ones(2, 4, 4))


def test_test_images_come_from_the_test_bank_when_given():
    train, test = tiny_bank(sources=("a",)), tiny_bank(sources=("a",), per_class=6)
    test.images[:, 0, 2, 0] = 99                                   # marks every test-split image
    sampler = SubDatasetSampler(train, train.class_names, seed=0, test_bank=test)
    for i in range(10):
        t = sampler.sample(i, 3, 10, 10, 5)
        assert (t.test_x[:, 0, 2, 0] == 99).all() and not (t.support_x[:, 0, 2, 0] == 99).any()
        for c, name in enumerate(t.class_names):
            assert set(t.test_x[t.test_y == c, 0, 0, 0]) == {train.class_names.index(name)}
    assert sampler.eligible(10, 10, 7) == {"": []}                  # 6 test images per class only
