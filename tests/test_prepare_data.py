"""jobs/prepare_data.py on a real local Ray cluster: ILSVRC and ImageFolder layouts into shards."""
import os

import numpy as np
import pytest
import ray
from PIL import Image

from jobs.prepare_data import main
from jobs.sharding import list_folder, list_ilsvrc, prepare_listing
from pudnet.data.shards import read_class_bank, read_manifest

pytestmark = pytest.mark.integration
COLOURS = {"n01440764": (200, 30, 30), "n01443537": (30, 200, 30), "n01484850": (30, 30, 200)}


@pytest.fixture(scope="module", autouse=True)
def cluster():
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_USAGE_STATS_ENABLED")}
    os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")   # a throwaway test cluster only
    ray.init(num_cpus=2, object_store_memory=300 << 20, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
    for k, v in saved.items():
        os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def save(path, colour, size, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).convert(mode).save(path, format="JPEG" if path.suffix == ".JPEG" else "PNG")


@pytest.fixture
def ilsvrc(tmp_path):
    """train/<wnid>/ with 6 images each (odd sizes, one grey), a corrupt JPEG, and a flat val/ with its label file."""
    root = tmp_path / "ILSVRC2012"
    labels = ["ImageId,PredictionString"]
    for c, (wnid, colour) in enumerate(COLOURS.items()):
        for i in range(6):
            save(root / "train" / wnid / f"{wnid}_{i}.JPEG", colour, (40 + 7 * i, 30 + 5 * c), "L" if i == 5 else "RGB")
        for i in range(2):
            image_id = f"ILSVRC2012_val_{2 * c + i:08d}"
            save(root / "val" / f"{image_id}.JPEG", colour, (50, 50))
            labels.append(f"{image_id},{wnid} 1 2 30 40")
    (root / "train" / "n01443537" / "n01443537_broken.JPEG").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "LOC_val_solution.csv").write_text("\n".join(labels) + "\n")
    return root


def test_ilsvrc_layout_gives_right_counts_and_skips_the_corrupt_file(ilsvrc, tmp_path, capsys):
    out = str(tmp_path / "shards")
    listing = list_ilsvrc(str(ilsvrc), None, None)
    manifest = prepare_listing(listing, out, "imagenet", 16, {"kind": "ilsvrc"})
    assert manifest.classes == [f"imagenet/{w}" for w in sorted(COLOURS)]
    assert manifest.counts() == {f"imagenet/{w}": {"train": 6, "test": 2} for w in COLOURS}
    assert [os.path.basename(p) for p in manifest.skipped] == ["n01443537_broken.JPEG"]
    assert "skipped 1 unreadable images" in capsys.readouterr().out
    for split in ("train", "test"):
        bank = read_class_bank(out, split=split)
        assert bank.images.shape[1:] == (16, 16, 3)
        assert np.bincount(bank.labels).tolist() == ([6, 6, 6] if split == "train" else [2, 2, 2])
        for label, wnid in enumerate(sorted(COLOURS)):
            mean = bank.images[bank.labels == label].reshape(-1, 3).mean(0)
            grey = sum(COLOURS[wnid]) / 3
            assert np.allclose(mean, COLOURS[wnid], atol=60) or np.allclose(mean, grey, atol=60)  # the right image

    parts = sorted(p.name for p in (tmp_path / "shards").iterdir())
    again = prepare_listing(list_ilsvrc(str(ilsvrc), None, None), out, "imagenet", 16, {"kind": "ilsvrc"})
    assert again == manifest and sorted(p.name for p in (tmp_path / "shards").iterdir()) == parts
    assert "up to date" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--overwrite"):
        prepare_listing(listing, out, "imagenet", 24, {"kind": "ilsvrc"})


def test_image_folder_cli_keeps_a_seeded_share_of_each_class_as_test_images(tmp_path):
    root = tmp_path / "pets"
    for name, colour in (("cat", (250, 200, 0)), ("dog", (0, 100, 250))):
        for i in range(8):
            save(root / name / ("sub" if i % 2 else "") / f"{i}.png", colour, (20, 20))
    (root / "cat" / ".DS_Store").write_bytes(b"junk")
    (root / "README.txt").write_text("not a class")
    listing = list_folder(str(root), 0.25, 0, None)
    assert {k: len(v) for k, v in listing.items()} == {("cat", "train"): 6, ("cat", "test"): 2,
                                                         ("dog", "train"): 6, ("dog", "test"): 2}
    main(["folder", str(root), "--out", str(tmp_path / "out"), "--image-size", "8", "--test-fraction", "0.25"])
    manifest = read_manifest(str(tmp_path / "out"))
    assert manifest.classes == ["pets/cat", "pets/dog"] and not manifest.skipped
    assert manifest.counts() == {"pets/cat": {"train": 6, "test": 2}, "pets/dog": {"train": 6, "test": 2}}


def test_embedded_shards_are_written_again_when_the_source_packages_change(tmp_path, capsys):
    """Shards record the source's installed packages; shards made from other versions (a theme installed or
    upgraded since) are stale, as the decoded cache under them is."""
    import json

    from jobs.sharding import prepare_embedded
    from pudnet.data.sources import installed_packages
    packages = installed_packages("digits")
    assert packages, "scikit-learn, the digits source's package, is installed by scripts/setup.sh"
    roots, missing = prepare_embedded(["digits"], str(tmp_path), 8, 3)
    assert missing == {} and read_manifest(roots["digits"]).fingerprint["packages"] == packages
    manifest = tmp_path / os.path.basename(roots["digits"]) / "manifest.json"
    first = json.loads(manifest.read_text())
    first["fingerprint"]["packages"] = {name: "0.1" for name in packages}    # as if made from an older package
    manifest.write_text(json.dumps(first))
    capsys.readouterr()
    prepare_embedded(["digits"], str(tmp_path), 8, 3)
    assert "writing shards of ['digits']" in capsys.readouterr().out
    again = read_manifest(roots["digits"])
    assert again.fingerprint["packages"] == packages and again.files[0]["path"] != first["files"][0]["path"]
    prepare_embedded(["digits"], str(tmp_path), 8, 3)
    assert "writing shards" not in capsys.readouterr().out                  # up to date: nothing to do


def test_embedded_shards_stay_in_use_when_the_source_packages_are_gone(tmp_path, capsys, monkeypatch):
    import jobs.sharding
    from jobs.sharding import prepare_embedded
    roots, _ = prepare_embedded(["digits"], str(tmp_path), 8, 3)
    made = read_manifest(roots["digits"])
    monkeypatch.setattr(jobs.sharding, "installed_packages", lambda source: {})   # scikit-learn uninstalled
    capsys.readouterr()
    again, missing = prepare_embedded(["digits"], str(tmp_path), 8, 3)
    assert "writing shards" not in capsys.readouterr().out and missing == {} and again == roots
    assert read_manifest(roots["digits"]) == made
