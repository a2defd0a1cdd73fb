#!/usr/bin/env bash
# larder vs APCu, side by side in one run: throughput in php-cli and php-fpm
# (php/tests/bench.py, release build), then the kill comparison in one php-fpm pool
# (php/tests/kill_compare.py, crash-points build). A few seconds each.
#
#   php/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -p larder-capi --release
cargo build -p larder-capi --release --features crash-points --target-dir target/crash-points
# shellcheck source-path=SCRIPTDIR/..
source php/tests/fpm.sh
fpm_forward_signals # a signal goes on to the script running, which stops its pools
echo "== throughput (target/release/liblarder.so)"
LARDER_LIBRARY=$PWD/target/release/liblarder.so fpm_run_child python3 php/tests/bench.py "$@"
echo
echo "== a worker killed while it holds the lock (target/crash-points/release/liblarder.so)"
LARDER_LIBRARY=$PWD/target/crash-points/release/liblarder.so fpm_run_child python3 php/tests/kill_compare.py --crash-points
