#!/usr/bin/env bash
# Tests of resty.larder under Debian's nginx with the Lua module: installs what it
# needs (apt), builds liblarder.so with the crash points, runs lua/t/test_nginx.py.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)

need=()
command -v nginx >/dev/null || need+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_http_lua_module.so ] || need+=(libnginx-mod-http-lua)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
command -v cargo >/dev/null || { echo "run-tests.sh: cargo is required" >&2; exit 1; }
if [ ${#need[@]} -gt 0 ]; then
    sudo=()
    [ "$(id -u)" = 0 ] || sudo=(sudo)
    apt=("${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300)
    "${apt[@]}" install -y "${need[@]}" ||
        { "${apt[@]}" update && "${apt[@]}" install -y "${need[@]}"; }
fi
# Installing the nginx package starts the system's nginx; these tests never use it.

# The tests stop workers inside a write (LARDER_CRASH_AT), which needs the crash points:
# a build of its own (target/crash-points, shared with the PHP and three-language
# suites), so target/release keeps the production build.
cargo build -p larder-capi --release --features crash-points --target-dir "$repo/target/crash-points"
export LARDER_LIBRARY="$repo/target/crash-points/release/liblarder.so"

cd "$here/t"
exec python3 -B test_nginx.py "$@"
