"""The class bank beyond the embedded default (issue 10): freedesktop icon themes, font glyphs and emoji sets,
all from Debian or npm packages made outside this project, never downloaded at run time.

Every source here draws its candidates in a seeded order, renders them at 32 px, and keeps an image only if
its near-duplicate hash (:func:`image_hash`) is new in the source, so exact copies, rescaled copies (an icon
theme's 24 px and 48 px drawings of one SVG) and the same drawing under two names (icon aliases, Latin ``A``
and Greek ``Α`` in one font) are kept once, in the class that comes first. Classes end with
<= ``PER_CLASS`` images and are dropped under ``MIN_PER_CLASS``.
Split groups, provenance and the montage command are in :mod:`pudnet.data.bank`."""
from __future__ import annotations

import json
import re
import unicodedata
import warnings
import zlib
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pudnet.data.tasks import ClassBank
from pudnet.data.sources import _DECODE_ERRORS, SourceUnavailable, _debian_dir, default_cache_dir, to_rgb_array

PER_CLASS, MIN_PER_CLASS, SEED = 64, 20, 0  # a task draws <= S+Q+T images per class; 64 bounds setup time
NEAR = 4.0  # mean |pixel difference| at 32 px under which two images of a class are one: a rescaled icon (64 vs
# 128 px: 4.6 in oxygen, 0 in Papirus) or a font's copy of another's Latin (Noto script fonts); glyph fonts
# differ by a median 2-4 from their nearest other font, icons' hinted 16/22/48 px drawings by 7-60
MIN_THEMES = 8  # an icon name must be drawn by this many themes: a shared concept, not one app's logo
ICON_THEMES = (  # (Debian package, theme folder in usr/share/icons): one artist team's style each
    ("papirus-icon-theme", "Papirus"), ("breeze-icon-theme", "breeze"), ("adwaita-icon-theme", "Adwaita"),
    ("gnome-icon-theme", "gnome"), ("oxygen-icon-theme", "oxygen"), ("tango-icon-theme", "Tango"),
    ("mate-icon-theme", "mate"), ("elementary-xfce-icon-theme", "elementary-xfce"), ("numix-icon-theme", "Numix"),
    ("moka-icon-theme", "Moka"), ("faba-icon-theme", "Faba"), ("yaru-theme-icon", "Yaru"),
    ("deepin-icon-theme", "bloom"), ("paper-icon-theme", "Paper"), ("lxde-icon-theme", "nuoveXT2"),
    ("suru-icon-theme", "suru"), ("obsidian-icon-theme", "Obsidian"), ("elementary-icon-theme", "elementary"),
    ("faenza-icon-theme", "Faenza"), ("gnome-accessibility-themes", "HighContrast"),
    ("gnome-colors-common", "gnome-colors-common"))
FONT_PACKAGES = (
    "fonts-dejavu-core", "fonts-dejavu-extra", "fonts-liberation", "fonts-liberation2", "fonts-freefont-ttf",
    "fonts-urw-base35", "fonts-texgyre", "fonts-crosextra-caladea", "fonts-crosextra-carlito", "fonts-noto-core",
    "fonts-cantarell", "fonts-open-sans", "fonts-roboto-unhinted", "fonts-ebgaramond", "fonts-linuxlibertine",
    "fonts-lato", "fonts-firacode", "fonts-hack", "fonts-inconsolata", "fonts-comic-neue", "fonts-stix",
    "fonts-gfs-didot", "fonts-gfs-neohellenic", "fonts-gfs-artemisia", "fonts-paratype", "fonts-cmu",
    "fonts-junicode", "fonts-sil-gentiumplus", "fonts-sil-charis", "fonts-sil-andika", "fonts-quicksand",
    "fonts-breip", "fonts-humor-sans", "fonts-oldstandard", "fonts-adf-accanthis", "fonts-adf-baskervald",
    "fonts-adf-gillius", "fonts-adf-universalis", "fonts-go", "fonts-jetbrains-mono", "fonts-lobster",
    "fonts-vollkorn", "fonts-cabin", "fonts-comfortaa", "fonts-croscore", "fonts-dkg-handwriting",
    "fonts-fantasque-sans", "fonts-tuffy", "fonts-oflb-asana-math", "fonts-lmodern", "fonts-femkeklaver",
    "fonts-isabella", "fonts-yanone-kaffeesatz", "fonts-play", "fonts-prociono", "fonts-sil-gentium",
    "fonts-league-mono", "fonts-hermit", "fonts-anonymous-pro", "fonts-averia-gwf", "fonts-averia-sans-gwf",
    "fonts-averia-serif-gwf", "fonts-klaudia-berenika", "fonts-dustin")
_FONT_VARIANT = re.compile(r"thin|light|medium|semi|demi|extra|black|heavy|condensed|narrow|hairline|book|"
                           r"caption|display|slanted|oblique|ui[-.]|mono[a-z]*-bold", re.I)  # near-copies of a face
_NOT_UNICODE = ("D050000L", "StandardSymbolsPS")  # URW Dingbats/Symbol: ASCII codes drawn as ✉, α, ...
HOMOGLYPHS = "ΑΒΕΖΗΙΚΜΝΟΡΤΥΧονАВЕКМНОРСТХаеорсухЁёІіЇї"  # Greek/Cyrillic drawn as a Latin letter: not a class
LETTERS = "".join(c for c in (
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789ÀÁÂÃÄÅÆÇÈÉÊËÌÍÎÏÑÒÓÔÕÖØÙÚÛÜÝÞß"
    "àáâãäåæçèéêëìíîïñòóôõöøùúûüýþÿŁłŒœŠšŽžĐđ" + "".join(map(chr, range(0x391, 0x3AA))).replace("\u03a2", "")
    + "".join(map(chr, range(0x3B1, 0x3CA))) + "".join(map(chr, range(0x410, 0x450))) + "ЁёЄєІіЇїЎў"
    + "".join(c for c in map(chr, range(0x100, 0x180)) if c not in "ıĸŉſŁłŒœŠšŽžĐđ")  # Latin Extended-A
    + "άέήίόύώЂЉЊЋЏђљњћџҐґ") if c not in HOMOGLYPHS)
SYMBOLS = ("!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~¡¢£¤¥¦§¨©«¬®¯°±²³´µ¶·¸¹º»¼½¾¿×÷–—‘’‚“”„†‡•…‰‹›€™"
           "←↑→↓↔↕⇐⇒⇔∀∂∃∅∇∈∉∏∑−∓√∝∞∠∧∨∩∪∫∮∴∼≅≈≠≡≤≥⊂⊃⊆⊇⊕⊗⊥⋅⌀⌂⌘■□▲△▶▼◆◇○●◊★☆☎☐☑☒☺☹☼♀♂♠♣♥♦♩♪♫♭♯✓✗✚✱❤")


def _named(first: int, last: int, categories: tuple[str, ...]) -> str:
    """The named characters U+first..U+last whose Unicode category starts with one of ``categories`` and that
    are their own NFKC form (a compatibility form such as ℃, ∬ or ™ draws other classes' characters)."""
    return "".join(c for c in map(chr, range(first, last + 1)) if unicodedata.name(c, "")
                   and unicodedata.category(c).startswith(categories) and unicodedata.normalize("NFKC", c) == c)


SCRIPT_LOOKALIKES = "ՕՍԼՈօոռսհզքցხוזין"  # drawn like Latin O U L, ∩, o n n u h q p g (Armenian), b (Georgian),
# l | ' (Hebrew vav, zayin, yod, final nun)
SCRIPT_BLOCKS = ((0x5D0, 0x5EA), (0x531, 0x587), (0x10A0, 0x10FF))  # Hebrew, Armenian, Georgian letters
SCRIPT_LETTERS = "".join(c for first, last in SCRIPT_BLOCKS for c in _named(first, last, ("Lu", "Ll", "Lo"))
                         if c not in SCRIPT_LOOKALIKES)
SIGN_BLOCKS = ((0x20A0, 0x20C0), (0x2100, 0x214F), (0x2190, 0x23FF), (0x25A0, 0x27FF), (0x2900, 0x2BFF))  # currency,
# letterlike, arrows, maths operators, technical, geometric shapes, miscellaneous symbols, dingbats, more maths and
# arrows; not General Punctuation (dashes, quotes, slashes drawn like SYMBOLS), box drawing (line pieces) or Braille
SIGN_LOOKALIKES = "₣₤₫℈↟↡↨↮⇏⇨∆∊∍∕∖∗∡∲∳≂≃≊⊊⊋⊍⊘⊤⋆⌐⌠▫◦♬⩽⩾"  # copies of a SYMBOLS or LETTERS class, not classes: mean
# drawing within 5 (|pixel difference|, 32 px) of its (₤ £, ∆ Δ, ∗ •, ∕ /, ◦ «, ...), or within 5.5 and alike by
# eye (⊤ T, ♬ ♫; ⩽ ≤ as its mirror ⩾ ≥), or most fonts' drawings within 2 of its drawing in the same font (∲ ∳ ∮,
# ⊊ ⊋ ⊆ ⊇, ⊍ ∪)
SIGNS = "".join(c for first, last in SIGN_BLOCKS for c in _named(first, last, ("S",))
                if c not in SYMBOLS and c not in SIGN_LOOKALIKES)
_RENDER_ERRORS = _DECODE_ERRORS + (RecursionError, ArithmeticError, LookupError, TypeError, AttributeError)  # what
# cairosvg raises on SVGs it cannot draw (a <use> cycle: RecursionError); such a file is skipped, counted, warned
_SKIN_TONES = {"1f3fb", "1f3fc", "1f3fd", "1f3fe", "1f3ff"}  # recoloured copies of a base emoji
def image_hash(image: np.ndarray) -> bytes:
    """Duplicate key of an (R, R, 3) image across a source's classes: its 16x16 grey version quantised to 4
    levels (64 bytes), equal for exact copies and for copies that differ by a little noise or a slight tint."""
    grey = Image.fromarray(image).convert("L").resize((16, 16), Image.Resampling.BOX)
    return (np.asarray(grey, np.uint8) // 64).tobytes()


def dedup_bank(source: str, candidates: dict[str, list[tuple[str, Callable[[], Image.Image | None]]]],
               image_size: int, per_class: int = PER_CLASS, min_per_class: int = MIN_PER_CLASS,
               seed: int = SEED, near: float = NEAR) -> ClassBank:
    """Render each class's ``(key, render)`` candidates in a seeded order (per class, so adding a class changes
    no other), keeping an image when its :func:`image_hash` at 32 px is new in the source and it differs from
    each image its class kept by a mean absolute pixel difference >= ``near`` (at 32 px). Classes are visited
    sorted; one with fewer than ``min_per_class`` such images is dropped (its hashes stay taken), the others
    keep their first ``per_class``.
    A render returning None or failing to decode is skipped. SourceUnavailable if no class is left."""
    seen: set[bytes] = set()
    kept: dict[str, list[np.ndarray]] = {}
    skipped = 0
    for name in sorted(candidates):
        items, images, smalls = candidates[name], [], []
        if len(items) < min_per_class:
            continue
        for i in np.random.default_rng([seed, zlib.crc32(name.encode())]).permutation(len(items)):
            try:
                rendered = items[i][1]()
            except _RENDER_ERRORS:
                skipped += 1
                continue
            if rendered is None:
                continue
            small = to_rgb_array(rendered, 32)
            key = image_hash(small)
            if key in seen or (smalls and np.abs(np.stack(smalls) - small.astype(np.float32)).mean(
                    axis=(1, 2, 3)).min() < near):
                continue
            seen.add(key)
            smalls.append(small.astype(np.float32))
            images.append(small if image_size == 32 else to_rgb_array(rendered, image_size))
            if len(images) == max(per_class, min_per_class):
                break
        if len(images) >= min_per_class:
            kept[name] = images[:per_class]
    if skipped:
        warnings.warn(f"{source}: skipped {skipped} files that do not render", stacklevel=3)
    if not kept:
        raise SourceUnavailable(f"{source}: no class has {min_per_class} distinct images; are its packages installed?")
    names = sorted(kept)
    labels = np.concatenate([np.full(len(kept[n]), c, np.int64) for c, n in enumerate(names)])
    return ClassBank(np.stack([im for n in names for im in kept[n]]), labels, tuple(f"{source}/{n}" for n in names))


def _render_svg(path: Path, px: int = 64) -> Image.Image:
    """An SVG rasterised by cairosvg (PyPI) at ``px`` wide."""
    import cairosvg
    import io
    return Image.open(io.BytesIO(cairosvg.svg2png(url=str(path), output_width=px, output_height=px)))


def _open_image(path: Path) -> Image.Image:
    if path.suffix == ".svg":
        return _render_svg(path)
    with Image.open(path) as image:
        image.load()
        return image


_SIZE_DIR = re.compile(r"^(\d+)(x\d+)?$|^scalable$|^symbolic$")


def icon_candidates(theme_dirs: Iterable[Path]) -> dict[str, list[tuple[str, Callable]]]:
    """{freedesktop icon name: [(key, render)]}, one candidate per (theme, size folder, file): ``-symbolic``
    drawings count as their base name; a file linked under several names counts for the name it has, else the
    first; ``@2x`` folders (rescaled copies) and sizes < 16 px are skipped."""
    out: dict[str, dict[str, tuple[str, Callable]]] = {}
    for theme in theme_dirs:
        for path in sorted(p for ext in ("png", "svg") for p in theme.rglob(f"*.{ext}")):
            parts = path.relative_to(theme).parts
            sizes = [p for p in parts[:-1] if _SIZE_DIR.match(p)]
            if not sizes or "@" in "".join(parts[:-1]) or (sizes[0][0].isdigit() and int(
                    re.match(r"\d+", sizes[0]).group()) < 16):
                continue
            name = re.sub(r"(-symbolic)?(\.symbolic)?$", "", path.stem)
            real = path.resolve()
            key = f"{theme.name}/{sizes[0]}/{name}"
            out.setdefault(name, {}).setdefault(str(real), (key, lambda real=real: _open_image(real)))
    owner: dict[str, str] = {}  # a file linked under several names (aliases) counts for one: its own, else the first
    for name in sorted(out):
        for real in out[name]:
            if real not in owner or re.sub(r"(-symbolic)?(\.symbolic)?$", "", Path(real).stem) == name:
                owner[real] = name
    kept = {name: [c for real, c in files.items() if owner[real] == name] for name, files in out.items()}
    return {name: c for name, c in kept.items() if c}


def load_icons(image_size: int, max_per_class: int | None) -> ClassBank:
    """Freedesktop icon themes: class = icon name (``folder``, ``edit-copy``) drawn by >= MIN_THEMES themes
    of the 21, instance = one theme's drawing at one size. Themes not installed are
    skipped; SourceUnavailable if none is."""
    dirs = []
    for package, folder in ICON_THEMES:
        try:
            dirs.append(_debian_dir(package, f"usr/share/icons/{folder}"))
        except SourceUnavailable:
            continue
    if not dirs:
        raise SourceUnavailable(f"no icon theme installed; run `apt-get install -y {ICON_THEMES[0][0]}` (or more)")
    common = {name: c for name, c in icon_candidates(dirs).items()
              if len({key.split("/")[0] for key, _ in c}) >= MIN_THEMES}
    return dedup_bank("icons", common, image_size, min(max_per_class or PER_CLASS, PER_CLASS))


def _glyph(font: ImageFont.FreeTypeFont, char: str, px: int = 64) -> Image.Image | None:
    """``char`` drawn black on white, its em box centred on a ``px`` canvas (the baseline stays put); None
    where raqm cannot lay it out in this font."""
    image = Image.new("L", (px, px), 255)
    try:
        ImageDraw.Draw(image).text((px / 2, px / 2), char, font=font, fill=0, anchor="mm")
    except RuntimeError:
        return None
    return image


def glyph_candidates(font_paths: Sequence[Path], chars: str) -> dict[str, list[tuple[str, Callable]]]:
    """{character: [(font file name, render)]} for the fonts that draw it: a rendering that is blank or
    equal to the font's .notdef box (what it draws for U+0378, an unassigned code point) is a missing glyph and
    returns None. (Asana Math draws another box for the plane-16 U+10FFFD, so that one let boxes through.)"""
    out: dict[str, list[tuple[str, Callable]]] = {c: [] for c in chars}
    for path in font_paths:
        try:
            font = ImageFont.truetype(str(path), 44)
        except OSError:
            continue
        notdef = _glyph(font, "\u0378")
        if notdef is None:     # no text can be laid out in this font at all
            continue

        def render(char: str, font=font, notdef=np.asarray(notdef)) -> Image.Image | None:
            image = _glyph(font, char)
            if image is None:
                return None
            pixels = np.asarray(image)
            return None if pixels.min() > 128 or np.array_equal(pixels, notdef) else image
        for char in chars:
            out[char].append((path.name, lambda char=char, render=render: render(char)))
    return out


def _package_files(package: str, suffixes: tuple[str, ...]) -> list[Path]:
    """Installed files of a Debian package (dpkg's file list), existing and with one of ``suffixes``."""
    for name in (package, f"{package}:all", f"{package}:amd64", f"{package}:arm64"):
        listing = Path("/var/lib/dpkg/info", f"{name}.list")
        if listing.exists():
            paths = (Path(line) for line in listing.read_text().splitlines())
            return [p for p in paths if p.suffix.lower() in suffixes and p.is_file()]
    return []


def font_files() -> list[Path]:
    """The regular, bold and italic faces of FONT_PACKAGES' TrueType/OpenType fonts (weights such as Light or
    Condensed left out as near-copies of a face, and fonts that map ASCII to other symbols), sorted by file
    name. SourceUnavailable if none."""
    paths = sorted({p for pkg in FONT_PACKAGES for p in _package_files(pkg, (".ttf", ".otf"))
                    if not _FONT_VARIANT.search(p.stem) and p.stem not in _NOT_UNICODE}, key=lambda p: (p.name, str(p)))
    if not paths:
        raise SourceUnavailable(f"no font package installed; run `apt-get install -y {' '.join(FONT_PACKAGES[:4])}`")
    return paths


def char_name(char: str) -> str:
    """A class name for a character, readable in a file listing: ``U+0041 LATIN CAPITAL LETTER A``."""
    return f"U+{ord(char):04X} {unicodedata.name(char, '').lower()}".rstrip()


def _glyph_bank(source: str, chars: str, image_size: int, max_per_class: int | None) -> ClassBank:
    candidates = glyph_candidates(font_files(), chars)
    bank = dedup_bank(source, candidates, image_size, min(max_per_class or PER_CLASS, PER_CLASS))
    return ClassBank(bank.images, bank.labels, tuple(f"{source}/{char_name(n.split('/', 1)[1])}"
                                                     for n in bank.class_names))


def load_glyphs(image_size: int, max_per_class: int | None) -> ClassBank:
    """Latin (with common accented letters), Greek and Cyrillic letters and digits from Debian fonts-* packages:
    class = character, instance = one font's rendering (notMNIST-style)."""
    return _glyph_bank("glyphs", LETTERS, image_size, max_per_class)


def load_symbols(image_size: int, max_per_class: int | None) -> ClassBank:
    """Punctuation, currency, arithmetic, arrows, math and pictographic symbols from the same fonts."""
    return _glyph_bank("symbols", SYMBOLS, image_size, max_per_class)


def load_scripts(image_size: int, max_per_class: int | None) -> ClassBank:
    """Hebrew, Armenian and Georgian letters from the same fonts: letters of other scripts, class = character."""
    return _glyph_bank("scripts", SCRIPT_LETTERS, image_size, max_per_class)


def load_signs(image_size: int, max_per_class: int | None) -> ClassBank:
    """Maths operators, arrows, currency, technical, geometric and dingbat signs beyond SYMBOLS, from the same
    fonts."""
    return _glyph_bank("signs", SIGNS, image_size, max_per_class)


def npm_dir(package: str) -> Path:
    """An npm package installed by setup.sh under ``<cache dir>/npm`` (``npm install --prefix``)."""
    path = default_cache_dir() / "npm" / "node_modules" / package
    if not (path / "package.json").exists():
        raise SourceUnavailable(f"npm package {package!r} not found at {path}; run `npm install --prefix "
                                f"{default_cache_dir() / 'npm'} {package}`, as `bash scripts/setup.sh` does")
    return path


def emoji_candidates(subgroup_of: dict[str, str], sets: dict[str, Path]) -> dict[str, list[tuple[str, Callable]]]:
    """{Unicode subgroup: [(set/file, render)]} for each set's ``<codepoints>.svg`` files, codepoints lower
    case joined by ``-`` without FE0F; files of unknown or skin-toned emoji are left out."""
    out: dict[str, list[tuple[str, Callable]]] = {}
    for label, folder in sets.items():
        for path in sorted(folder.glob("*.svg")):
            codes = [c for c in path.stem.lower().split("-") if c != "fe0f"]
            subgroup = subgroup_of.get("-".join(codes))
            if subgroup and not _SKIN_TONES & set(codes):
                out.setdefault(subgroup, []).append((f"{label}/{path.name}", lambda p=path: _render_svg(p)))
    return out


def load_emoji_sets(image_size: int, max_per_class: int | None) -> ClassBank:
    """OpenMoji (colour and black line styles) and Twemoji from npm, class = Unicode emoji subgroup (per emoji
    there are only 3 styles, < MIN_PER_CLASS), labels from OpenMoji's ``data/openmoji.json``."""
    openmoji, twemoji = npm_dir("openmoji"), npm_dir("@twemoji/svg")
    table = json.loads((openmoji / "data" / "openmoji.json").read_text(encoding="utf-8"))
    subgroup_of = {"-".join(c for c in e["hexcode"].lower().split("-") if c != "fe0f"): e["subgroups"]
                   for e in table if not e["group"].startswith("extras")}  # extras: OpenMoji's own, not Unicode
    sets = {"openmoji-color": openmoji / "color" / "svg", "openmoji-black": openmoji / "black" / "svg",
            "twemoji": twemoji}
    return dedup_bank("emoji_sets", emoji_candidates(subgroup_of, sets), image_size,
                      min(max_per_class or PER_CLASS, PER_CLASS))
