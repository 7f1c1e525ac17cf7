import numpy as np

from pudnet.data.augment import Augmentation
from pudnet.data.tasks import SubDataset


def task():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 2)
    images = rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    return SubDataset(("a/0", "a/1", "a/2"), images, y, images.copy(), y, images.copy(), y)


def test_class_transform_is_shared_by_support_query_and_test_of_the_class():
    sub = task()
    out = Augmentation(p_class=1.0, max_shift=0).apply(sub, np.random.default_rng(1))
    assert np.array_equal(out.support_y, sub.support_y) and out.num_classes == 3
    for c in range(3):
        rows = sub.support_y == c
        assert np.array_equal(out.support_x[rows], out.query_x[rows]) and np.array_equal(out.test_x[rows], out.query_x[rows])
        assert not np.array_equal(out.support_x[rows], sub.support_x[rows])       # every class transformed
        assert "@rot" in out.class_names[c]
    turns = int(out.class_names[2].split("@rot")[1].split("-")[0]) // 90
    expected = np.rot90(sub.support_x[sub.support_y == 2], turns, axes=(1, 2))
    if out.class_names[2].endswith("-inv"):
        expected = 255 - expected
    assert np.array_equal(out.support_x[sub.support_y == 2], expected)
    assert np.array_equal(sub.support_x, task().support_x)                      # input untouched


def test_shift_moves_pixels_but_keeps_shape_and_is_seeded():
    sub = task()
    a = Augmentation(p_class=0.0, max_shift=2).apply(sub, np.random.default_rng(5))
    b = Augmentation(p_class=0.0, max_shift=2).apply(sub, np.random.default_rng(5))
    assert a.class_names == sub.class_names and a.support_x.shape == sub.support_x.shape
    assert np.array_equal(a.support_x, b.support_x) and not np.array_equal(a.support_x, sub.support_x)
    still = Augmentation(p_class=0.0, max_shift=0).apply(sub, np.random.default_rng(5))
    assert np.array_equal(still.support_x, sub.support_x)


def test_grey_task_turns_every_image_grey_with_its_luminance_and_keeps_labels():
    sub = task()
    out = Augmentation(p_class=0.0, max_shift=0, p_grey=1.0).apply(sub, np.random.default_rng(0))
    assert out.class_names == sub.class_names and np.array_equal(out.support_y, sub.support_y)
    for part in ("support_x", "query_x", "test_x"):
        images = getattr(out, part)
        assert images.dtype == np.uint8 and images.shape == sub.support_x.shape
        assert np.array_equal(images[..., 0], images[..., 1]) and np.array_equal(images[..., 0], images[..., 2])
    pixel = sub.support_x[0, 0, 0].astype(float)
    assert out.support_x[0, 0, 0, 0] == round(0.299 * pixel[0] + 0.587 * pixel[1] + 0.114 * pixel[2])


def test_grey_share_zero_leaves_the_seeded_stream_as_before():
    sub = task()
    a = Augmentation(p_class=0.5, max_shift=2).apply(sub, np.random.default_rng(3))
    b = Augmentation(p_class=0.5, max_shift=2, p_grey=0.0).apply(sub, np.random.default_rng(3))
    assert a.class_names == b.class_names and np.array_equal(a.support_x, b.support_x)
    half_grey = Augmentation(p_class=0.0, max_shift=0, p_grey=0.5)
    greys = [half_grey.apply(sub, np.random.default_rng(seed)) for seed in range(40)]
    share = np.mean([np.array_equal(g.support_x[..., 0], g.support_x[..., 1]) for g in greys])
    assert 0.2 < share < 0.8                                                    # about half the tasks are grey


def test_augmentation_reads_the_training_config_and_all_zero_is_off():
    import types
    cfg = types.SimpleNamespace(augment_p_class=0.5, augment_shift=2, augment_p_grey=0.25)
    assert Augmentation.from_config(cfg) == Augmentation(p_class=0.5, max_shift=2, p_grey=0.25)
    assert Augmentation(max_shift=1) and not Augmentation()
