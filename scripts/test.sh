#!/usr/bin/env bash
# Runs every test: Rust unit and integration tests, then the Python client tests (pyarrow,
# pandas) against the real `meshgate` binary. Creates ./.venv on first use.
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages the tests need: PostgreSQL server binaries (the PostgreSQL adapter's tests run a
# throwaway server), OpenSSL headers (its TLS to the database), and Chromium with its driver
# (the catalog's pages are tested in a headless browser).
need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v psql >/dev/null 2>&1 || need+=(postgresql-client)
pkg-config --exists openssl 2>/dev/null || need+=(libssl-dev pkg-config)
# A real browser for the catalog page tests (Selenium drives Chromium through chromedriver).
{ command -v chromium && command -v chromedriver; } >/dev/null 2>&1 || need+=(chromium chromium-driver)
if [ ${#need[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

cargo build --workspace --bins --tests
cargo test --workspace

target_dir="${CARGO_TARGET_DIR:-target}"
venv="${MESHGATE_VENV:-.venv}"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/python/requirements.txt
MESHGATE_BIN="$target_dir/debug/meshgate" "$venv/bin/python" -m pytest tests/python -q
