#!/usr/bin/env bash
# The Python suite: builds the test wheel (with larder's crash points), installs it and
# its test dependencies, and runs the tests in parallel under -W error.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" -m pip install -q "maturin>=1.16,<2" pytest pytest-xdist pytest-timeout hypothesis
out="${CARGO_TARGET_DIR:-target}/python-wheels"
rm -rf "$out"
"$PYTHON" -m maturin build --release --features crash-points -m python/Cargo.toml --out "$out"
"$PYTHON" -m pip install -q --force-reinstall --no-deps "$out"/larder_py-*.whl
cd python
"$PYTHON" -m pytest -n auto --timeout=120 -W error -p no:cacheprovider "$@" tests
