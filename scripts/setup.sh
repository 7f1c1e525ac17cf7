#!/usr/bin/env bash
# Install pudnet and its embedded datasets on a fresh machine (Linux or macOS, Python >= 3.10).
#   bash scripts/setup.sh                       # the package, its test tools, the default sources and the class
#                                               # bank (issue 10): icon themes, fonts, emoji sets
#   PUDNET_BANK=default bash scripts/setup.sh   # opt out of the bank: the 6 default sources only
# PyPI alone gives the embedded default (digits, MNIST-5k, Animal-MNIST). Where apt-get works as root, the
# Debian-packaged sources are added (Fashion-MNIST, Openclipart, Noto emoji); elsewhere they are reported missing.
# The bank adds 21 icon themes and 64 font packages (apt, root only), cairosvg (PyPI) and two emoji sets (npm,
# into the cache dir); what is missing is reported and skipped, never fatal. See README: Data.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BANK=${PUDNET_BANK:-full}
"$PY" -m pip install -q -e ".[dev]"
# animal-mnist's metadata asks for tensorflow, which its data files do not need
"$PY" -m pip install -q --no-deps animal-mnist
DEBS="dataset-fashion-mnist openclipart-png ruby-tanuki-emoji"
if [ "$BANK" = full ]; then
  "$PY" -m pip install -q cairosvg || echo "setup: cairosvg (PyPI) not installed; SVG icon themes and emoji skipped" >&2
  DEBS="$DEBS $("$PY" -c 'from pudnet.data.bank_sources import ICON_THEMES, FONT_PACKAGES as F
print(" ".join([p for p, _ in ICON_THEMES] + list(F)))')"
fi
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get update -qq || true
  # one package at a time is slow; all at once fails whole on one absent name: try all, then each
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $DEBS >/dev/null 2>&1; then
    for deb in $DEBS; do
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$deb" >/dev/null 2>&1 \
        || echo "setup: apt-get could not install $deb; its source is skipped" >&2
    done
  fi
  if [ "$BANK" = full ]; then apt-get clean; fi  # the bank's .deb downloads (380 MB) would count twice on disk
else
  echo "setup: no root apt-get here; optional Debian datasets skipped (see README: Data)" >&2
fi
if [ "$BANK" = full ]; then
  NPM_DIR="$("$PY" -c 'from pudnet.data.sources import default_cache_dir; print(default_cache_dir() / "npm")')"
  if command -v npm >/dev/null; then
    npm install -s --no-audit --no-fund --prefix "$NPM_DIR" openmoji@17.0.0 @twemoji/svg@15.0.0 \
      || echo "setup: npm could not install openmoji/@twemoji/svg; source emoji_sets skipped" >&2
  else
    echo "setup: npm not found; source emoji_sets skipped" >&2
  fi
  "$PY" -m pudnet.data.bank summary --workers 2   # renders the missing caches, two sources at a time
else
  "$PY" - <<'PY'
from pudnet.data.sources import BASE_SOURCES, load_class_bank
bank, missing = load_class_bank(BASE_SOURCES, image_size=32, max_per_class=1000)
print(f"setup: {len(bank.class_names)} classes, {len(bank.images)} images cached from "
      f"{sorted(set(BASE_SOURCES) - set(missing))}")
for name, why in missing.items():
    print(f"setup: source {name} missing: {why}")
PY
fi
