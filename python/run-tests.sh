#!/usr/bin/env bash
# The Python suite, against the wheel as a user installs it: builds the test wheel
# (manylinux abi3, with larder's crash points, which the crash tests need) through
# build-wheel.sh, installs it with the test dependencies into a fresh virtual
# environment, and runs the whole suite there in parallel under -W error. Then builds
# and checks the release wheel (no crash points): manylinux and abi3 by auditwheel,
# stripped, with its metadata (build-wheel.sh's checks).
#
#   python/run-tests.sh [PYTEST ARGS...]
#
# PYTHON=/path/to/python3 is the interpreter the fresh environments are made from
# (default: python3). LARDER_SKIP_RELEASE_WHEEL=1 skips the release wheel (a second
# release build of the extension) for a quicker run while working on the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target"
target="$(cd "$target" && pwd)"

# The near-cache and `larder listen` tests start redis-server of their own.
if ! command -v redis-server >/dev/null; then
    apt-get -o DPkg::Lock::Timeout=300 update -q
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q redis-server
fi
# The fresh environments (this script's and build-wheel.sh's tools).
base="${PYTHON:-python3}"
if ! "$base" -c 'import venv, ensurepip' 2>/dev/null; then
    apt-get -o DPkg::Lock::Timeout=300 update -q
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q python3-venv
fi
# build-wheel.sh's check of the extension's sections.
if ! command -v readelf >/dev/null; then
    apt-get -o DPkg::Lock::Timeout=300 update -q
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -q binutils
fi

started=$SECONDS
wheel="$(python/build-wheel.sh --features crash-points | tail -n 1)"
echo "run-tests.sh: test wheel $wheel built in $((SECONDS - started)) s" >&2

# A fresh environment each run: nothing left from a previous install or from the
# source tree can stand in for what the wheel holds.
started=$SECONDS
venv="$target/venv-wheel"
rm -rf "$venv"
"$base" -m venv "$venv"
python="$(cd "$venv/bin" && pwd)/python"
"$python" -m pip install -q -r python/requirements-test.txt
"$python" -m pip install -q --no-deps "$wheel"
echo "run-tests.sh: fresh environment with the wheel made in $((SECONDS - started)) s" >&2

cd python
# The suite must import the installed package, not python/python/larder.
"$python" - "$venv" <<'EOF'
import os
import sys

import larder

where = os.path.realpath(larder.__file__)
venv = os.path.realpath(sys.argv[1])
if not where.startswith(venv + os.sep):
    sys.exit(f"run-tests.sh: larder is imported from {where}, not from the wheel in {venv}")
if not larder._larder.CRASH_POINTS:
    sys.exit("run-tests.sh: the test wheel has no crash points")
EOF
started=$SECONDS
"$python" -m pytest -n auto --timeout=120 -W error -p no:cacheprovider "$@" tests
echo "run-tests.sh: suite ran in $((SECONDS - started)) s" >&2
cd ..

if [ "${LARDER_SKIP_RELEASE_WHEEL:-}" != 1 ]; then
    started=$SECONDS
    python/build-wheel.sh >/dev/null
    echo "run-tests.sh: release wheel built and checked in $((SECONDS - started)) s" >&2
fi
