#!/usr/bin/env bash
# The Python suite: builds the test wheel (with larder's crash points), installs it and
# its test dependencies in a virtual environment, and runs the tests in parallel under
# -W error.
set -euo pipefail
cd "$(dirname "$0")/.."
# Everything is installed into a virtual environment under target/ (made on first use),
# never into the system's Python; PYTHON=/path/to/python overrides it.
if [ -z "${PYTHON:-}" ]; then
    venv="${CARGO_TARGET_DIR:-target}/venv"
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
    PYTHON="$(cd "$venv/bin" && pwd)/python"
fi
# Pinned to the versions the suite was last run with: a new release of a plugin must not
# turn a warning into a failure under -W error without anyone changing this tree.
"$PYTHON" -m pip install -q "maturin==1.16.0" "pytest==9.2.0" "pytest-xdist==3.8.0" \
    "pytest-timeout==2.4.0" "hypothesis==6.170.17"
out="${CARGO_TARGET_DIR:-target}/python-wheels"
rm -rf "$out"
"$PYTHON" -m maturin build --release --features crash-points -m python/Cargo.toml --out "$out"
"$PYTHON" -m pip install -q --force-reinstall --no-deps "$out"/larder_py-*.whl
cd python
"$PYTHON" -m pytest -n auto --timeout=120 -W error -p no:cacheprovider "$@" tests
