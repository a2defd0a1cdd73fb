#!/usr/bin/env bash
# The PHP suite: builds liblarder.so with the crash points (a separate target dir, so the
# release library is untouched), then runs the php-cli unit tests and the php-fpm suite.
#
#   php/run-tests.sh
#
# Installs what it needs with apt (php8.2-cli, php8.2-fpm, php8.2-apcu; FFI and opcache
# come with php8.2-cli/-fpm on Debian) when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v php8.2 >/dev/null || need+=(php8.2-cli)
command -v php-fpm8.2 >/dev/null || need+=(php8.2-fpm)
[ -f /usr/lib/php/20220829/apcu.so ] || need+=(php8.2-apcu)
command -v python3 >/dev/null || need+=(python3)
if ((${#need[@]})); then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y "${need[@]}" ||
        { $sudo apt-get -o DPkg::Lock::Timeout=300 update &&
            $sudo env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y "${need[@]}"; }
fi

# The crash-points build the OpenResty and three-language suites use too.
cargo build -p larder-capi --release --features crash-points --target-dir target/crash-points
export LARDER_LIBRARY=$PWD/target/crash-points/release/liblarder.so

# php-fpm daemonizes out of this process group: a SIGTERM, SIGINT or SIGHUP (a CI
# timeout or cancel) goes on to the suite, which stops its pools before this exits.
# shellcheck source-path=SCRIPTDIR/..
source php/tests/fpm.sh
fpm_forward_signals

start=$SECONDS
echo "== php-cli unit tests (ffi.enable=1, FFI::cdef)"
fpm_run_child php8.2 -n -d extension=ffi -d ffi.enable=1 php/tests/unit.php
echo "== php-fpm suite (ffi.enable=preload, opcache.preload)"
fpm_run_child python3 php/tests/test_fpm.py
echo "== PHP suite passed in $((SECONDS - start)) s (after the build)"
