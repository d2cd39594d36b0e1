#!/usr/bin/env bash
# Runs every test: Rust unit and integration tests, then the Python client tests (pyarrow,
# pandas) against the real `meshgate` binary. Creates ./.venv on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --bins --tests
cargo test --workspace

target_dir="${CARGO_TARGET_DIR:-target}"
venv="${MESHGATE_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/python/requirements.txt
MESHGATE_BIN="$target_dir/debug/meshgate" "$venv/bin/python" -m pytest tests/python -q
