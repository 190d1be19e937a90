#!/usr/bin/env bash
# Creates .venv and installs Kiln's dependencies. Safe to run any number of times:
# an up-to-date venv is detected by a stamp holding the hash of the requirement files.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
want_dev=0
[ "${1:-}" = "--dev" ] && want_dev=1

if [ ! -x .venv/bin/python ]; then
  echo "kiln setup: creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi

files="requirements.txt"
[ $want_dev = 1 ] && files="$files requirements-dev.txt"
stamp=".venv/.kiln-installed-$(cat $files setup.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ]; then
  echo "kiln setup: .venv is up to date"
  exit 0
fi

echo "kiln setup: installing $files (first run takes a couple of minutes)"
.venv/bin/python -m pip install -q --upgrade pip
args=()
for f in $files; do args+=(-r "$f"); done
.venv/bin/python -m pip install -q "${args[@]}"
# open-clip-torch is installed only for its CLIP BPE vocabulary file (the real merges, used to build the
# CLIP tokenizers offline). --no-deps keeps torchvision out: it breaks beside the pinned torch.
.venv/bin/python -m pip install -q --no-deps open-clip-torch==3.3.0
rm -f .venv/.kiln-installed-*
touch "$stamp"
echo "kiln setup: done"
