#!/usr/bin/env bash
# lua_shared_dict and resty.larder side by side in one nginx: ops/s of get, set, incr;
# "no memory" failures with mixed value sizes; a worker stopped and killed mid-write.
# Uses the production build (target/release/liblarder.so, no crash points).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
if ! command -v nginx >/dev/null || [ ! -e /usr/lib/nginx/modules/ngx_http_lua_module.so ]; then
    echo "bench.sh: run lua/run-tests.sh first (it installs nginx and the Lua module)" >&2
    exit 1
fi
cargo build -p larder-capi --release
export LARDER_LIBRARY="$repo/target/release/liblarder.so"
cd "$here/t"
exec python3 -B bench.py "$@"
