import numpy as np
import pyarrow.parquet as pq
import pytest

from pudnet.data.tasks import ClassBank
from pudnet.data.shards import (BlockReader, Catalog, read_class_bank, read_manifest, row_group_rows, pick_test_images,
                                write_bank)


def tiny_bank(source="a", classes=4, per_class=30, size=8):
    """Pixel (0,0) tells the class, pixel (0,1) the image's position in its class."""
    names = tuple(f"{source}/{i}" for i in range(classes))
    labels = np.repeat(np.arange(classes), per_class)
    images = np.zeros((len(labels), size, size, 3), np.uint8)
    images[:, 0, 0, 0] = labels
    images[:, 0, 1, 0] = np.tile(np.arange(per_class), classes)
    return ClassBank(images, labels, names)


def write(tmp_path, bank=None, **kw):
    bank = bank or tiny_bank()
    return write_bank(bank, str(tmp_path), bank.class_sources[0], {"kind": "test"}, **kw)


def test_test_split_is_exact_seeded_and_per_class():
    mask = pick_test_images("a/0", 30, 0.2, seed=1)
    assert mask.sum() == 6 and np.array_equal(mask, pick_test_images("a/0", 30, 0.2, seed=1))
    assert not np.array_equal(mask, pick_test_images("a/0", 30, 0.2, seed=2))
    assert not np.array_equal(mask, pick_test_images("a/1", 30, 0.2, seed=1))      # classes are not split alike
    with pytest.raises(ValueError, match="fraction"):
        pick_test_images("a/0", 30, 1.0, 0)


def test_round_trip_keeps_classes_splits_and_pixels(tmp_path):
    bank = tiny_bank()
    manifest = write(tmp_path, bank, test_fraction=0.2, seed=3)
    assert manifest.counts() == {f"a/{i}": {"train": 24, "test": 6} for i in range(4)}
    assert read_manifest(str(tmp_path)) == manifest
    train = read_class_bank(str(tmp_path), split="train")
    test = read_class_bank(str(tmp_path), split="test")
    for bank_part, split in ((train, "train"), (test, "test")):
        assert bank_part.class_names == bank.class_names
        for c, name in enumerate(bank.class_names):
            rows = bank_part.images[bank_part.labels == c]
            assert set(rows[:, 0, 0, 0]) == {c}                       # every image is in its own class
            expected = np.flatnonzero(pick_test_images(name, 30, 0.2, 3) == (split == "test"))
            assert sorted(rows[:, 0, 1, 0]) == list(expected)            # and in its own split
    both = read_class_bank(str(tmp_path), classes=["a/2", "a/0"], max_per_class=5)
    assert both.class_names == ("a/2", "a/0") and np.bincount(both.labels).tolist() == [10, 10]
    assert set(both.images[both.labels == 0, 0, 0, 0]) == {2}


def test_rewrite_is_a_no_op_and_other_settings_need_overwrite(tmp_path):
    first = write(tmp_path)
    parts = sorted(p.name for p in tmp_path.iterdir())
    assert write(tmp_path) == first and sorted(p.name for p in tmp_path.iterdir()) == parts
    with pytest.raises(ValueError, match="--overwrite"):
        write(tmp_path, seed=9)
    second = write(tmp_path, seed=9, overwrite=True)
    assert second.fingerprint["seed"] == 9
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("parts-"))
    assert left == [second.files[0]["path"].split("/")[0]]            # the replaced parts are gone


def test_readers_ignore_files_no_manifest_lists(tmp_path):
    write(tmp_path)
    (tmp_path / "parts-crashed" / "c00000").mkdir(parents=True)
    (tmp_path / "parts-crashed" / "c00000" / "train-00000000.parquet").write_bytes(b"half a file")
    assert len(read_class_bank(str(tmp_path)).images) == 120
    with pytest.raises(FileNotFoundError, match="prepare_data"):
        read_class_bank(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="not in the shards"):
        read_class_bank(str(tmp_path), classes=["a/0", "b/7"])


def test_blocks_match_the_row_groups_and_the_reader_caches_within_budget(tmp_path):
    bank = tiny_bank(classes=2, per_class=40, size=128)       # 48 KiB images: 21 per row group
    write(tmp_path, bank, test_fraction=0.0)
    catalog = Catalog(str(tmp_path))
    blocks = catalog.blocks("a/1", "train")
    assert row_group_rows(128) == 21 and [b.rows for b in blocks] == [21, 19]
    assert pq.ParquetFile(blocks[0].path).metadata.num_row_groups == 2
    reader = BlockReader(128, cache_bytes=blocks[0].rows * 128 * 128 * 3)
    images = np.concatenate([reader.read(b) for b in blocks])
    assert images.shape == (40, 128, 128, 3) and list(images[:, 0, 1, 0]) == list(range(40))
    assert len(reader.cache) == 1 and reader.read(blocks[1]) is reader.cache[(blocks[1].path, 1)]


def test_several_directories_pool_their_classes(tmp_path):
    write(tmp_path / "a", tiny_bank("a"))
    write(tmp_path / "b", tiny_bank("b", classes=2))
    bank = read_class_bank([str(tmp_path / "a"), str(tmp_path / "b")], split="train")
    assert bank.class_names == ("a/0", "a/1", "a/2", "a/3", "b/0", "b/1") and len(bank.images) == 6 * 24
    write(tmp_path / "c", tiny_bank("a", size=16))
    with pytest.raises(ValueError, match="collide"):
        Catalog([str(tmp_path / "a"), str(tmp_path / "c")])
