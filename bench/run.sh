#!/usr/bin/env bash
# Speed: TPC-H lineitem (scale 1, 6M rows) as `tpchgen-cli` writes it (Parquet) and as an Arrow
# IPC file, served by meshgate and by pyarrow's C++ Flight server, read by the same pyarrow.flight
# client, in one run. Prints a table (see bench/RESULTS.md).
#
#   bash bench/run.sh [SCALE] [--meshgate-arg=--batch-size=65536 ...]
set -euo pipefail
cd "$(dirname "$0")/.."
scale="${1:-1}"
venv="${MESHGATE_VENV:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r bench/requirements.txt
cargo build --release -p meshgate
"$venv/bin/python" bench/flight_bench.py --scale "$scale" --meshgate "${CARGO_TARGET_DIR:-target}/release/meshgate" "${@:2}"
