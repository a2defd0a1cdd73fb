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
"$PYTHON" -m pip install -q -r python/requirements-test.txt
out="${CARGO_TARGET_DIR:-target}/python-wheels"
rm -rf "$out"
"$PYTHON" -m maturin build --release --features crash-points -m python/Cargo.toml --out "$out"
"$PYTHON" -m pip install -q --force-reinstall --no-deps "$out"/larder_py-*.whl
cd python
"$PYTHON" -m pytest -n auto --timeout=120 -W error -p no:cacheprovider "$@" tests
