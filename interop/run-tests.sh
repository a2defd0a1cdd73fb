#!/usr/bin/env bash
# One cache file used at once by a Python process, php-fpm workers and nginx workers:
# a value set by one is read by the others, a revocation by one is seen by all, and a
# writer killed halfway through a value in one is repaired by another
# (interop/test_three_languages.py).
#
#   interop/run-tests.sh [PYTEST ARGS...]
#
# Needs what the PHP and OpenResty suites need (php8.2-fpm with FFI, nginx with
# libnginx-mod-http-lua, curl; .ci/test installs them) and the Python package's test
# wheel (crash points on): the one python/run-tests.sh installed in target/venv-wheel
# when it is there, else this script builds it into target/venv-interop.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
target="${CARGO_TARGET_DIR:-target}"
mkdir -p "$target"
target="$(cd "$target" && pwd)"

# The library every server loads, with the crash points (the victims stop inside a
# write): the same build as the PHP and OpenResty suites'.
cargo build -q -p larder-capi --release --features crash-points --target-dir "$repo/target/crash-points"
export LARDER_LIBRARY="$repo/target/crash-points/release/liblarder.so"

python="$target/venv-wheel/bin/python"
if ! "$python" -c 'import sys, larder, pytest; sys.exit(not larder._larder.CRASH_POINTS)' 2>/dev/null; then
    wheel="$(python/build-wheel.sh --features crash-points | tail -n 1)"
    rm -rf "$target/venv-interop"
    "${PYTHON:-python3}" -m venv "$target/venv-interop"
    python="$target/venv-interop/bin/python"
    "$python" -m pip install -q -r python/requirements-test.txt
    "$python" -m pip install -q --no-deps "$wheel"
fi

# shellcheck source=php/tests/fpm.sh
source php/tests/fpm.sh
# shellcheck source=lua/t/nginx.sh
source lua/t/nginx.sh

dir="$(mktemp -d /tmp/larder-interop.XXXXXX)"
# Every server is stopped, whatever failed before: no error inside one stop may skip
# the others or the removal of the directory.
cleanup() {
    set +e
    local server
    for server in php php-victim; do
        if [ -d "$dir/$server" ]; then fpm_stop "$dir/$server"; fi
    done
    for server in nginx nginx-victim; do
        if [ -d "$dir/$server" ]; then nginx_stop "$dir/$server"; fi
    done
    rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
trap 'exit 129' HUP
mkdir "$dir/php" "$dir/php-victim" "$dir/nginx" "$dir/nginx-victim"
# The victims stop themselves (SIGSTOP) in the middle of their first value, holding the
# shard's lock; the test then SIGKILLs them. Started in subshells: the start functions
# export what they pass on, and this script's own environment must stay clean.
stop_mid_value=(LARDER_CRASH_AT=set.mid_value LARDER_CRASH_ACTION=stop)
(fpm_start "$dir/php" 2 "LARDER_LIBRARY=$LARDER_LIBRARY")
(fpm_start "$dir/php-victim" 1 "LARDER_LIBRARY=$LARDER_LIBRARY" "${stop_mid_value[@]}")
(nginx_start "$dir/nginx")
(nginx_start "$dir/nginx-victim" "${stop_mid_value[@]}")

started=$SECONDS
LARDER_INTEROP_DIR="$dir" "$python" -m pytest -p no:cacheprovider -W error --timeout=120 \
    "$@" interop/test_three_languages.py
echo "interop/run-tests.sh: ran in $((SECONDS - started)) s" >&2
