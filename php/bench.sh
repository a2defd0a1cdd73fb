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
echo "== throughput (target/release/liblarder.so)"
LARDER_LIBRARY=$PWD/target/release/liblarder.so python3 php/tests/bench.py "$@"
echo
echo "== a worker killed while it holds the lock (target/crash-points/release/liblarder.so)"
LARDER_LIBRARY=$PWD/target/crash-points/release/liblarder.so python3 php/tests/kill_compare.py --crash-points
