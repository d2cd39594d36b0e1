#!/usr/bin/env bash
# Speed: TPC-H lineitem (scale 1, 6M rows) as `tpchgen-cli` writes it (Parquet) and as an Arrow
# IPC file, served by meshgate and by pyarrow's C++ Flight server, read by the same pyarrow.flight
# client, in one run. Prints a table (see bench/RESULTS.md).
#
#   bash bench/run.sh [SCALE] [--meshgate-arg=--batch-size=65536 ...]
#
# Two builds side by side in one run (e.g. before and after a change), each a release binary:
#
#   python bench/flight_bench.py --scale 1 --meshgate before=/path/meshgate --meshgate after=target/release/meshgate
#
# `postgres` first: the same table loaded into a throwaway PostgreSQL (tpchgen-cli CSV, COPY),
# read through meshgate and with adbc_driver_postgresql (bench/postgres_bench.py).
#
#   bash bench/run.sh postgres [SCALE]
#
# `pushdown` first: a governed read of the same table partitioned by l_shipmode (pyarrow's
# dataset writer), through two gateways, one with --no-storage-pushdown
# (bench/pushdown_bench.py).
#
#   bash bench/run.sh pushdown [SCALE]
#
# `wire` first: the rest of the wire-speed figures in one run (bench/wire_bench.py): iperf3's
# loopback TCP limit next to four concurrent streams, four shard endpoints, authentication +
# policy + audit on and off, body compression, and the server's peak memory with a slow client
# and with 64 clients at once.
#
#   bash bench/run.sh wire [SCALE]
set -euo pipefail
cd "$(dirname "$0")/.."
bench=flight
case "${1:-}" in
  postgres | pushdown | wire)
    bench="$1"
    shift
    ;;
esac
scale="${1:-1}"
if [ "$bench" = wire ] && ! command -v iperf3 >/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends iperf3
fi
venv="${MESHGATE_VENV:-.venv}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r bench/requirements.txt
cargo build --release -p meshgate
"$venv/bin/python" "bench/${bench}_bench.py" --scale "$scale" --meshgate "${CARGO_TARGET_DIR:-target}/release/meshgate" "${@:2}"
