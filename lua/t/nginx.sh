# shellcheck shell=bash
# nginx with the Lua module and resty.larder, on a private unix socket; source it:
#
#   source lua/t/nginx.sh
#   nginx_start DIR [NAME=VALUE ...]  # config in DIR, NGINX_WORKERS (default 2)
#                                     # workers on DIR/nginx.sock
#   nginx_worker_pids DIR             # the workers' pids, one a line
#   nginx_stop DIR                    # QUIT, then KILL after a deadline; waits
#                                     # (safe under set -euo pipefail, e.g. in a trap)
#
# Each NAME=VALUE is exported and passed to the workers (`env NAME;`). LARDER_LIBRARY
# (the liblarder.so the workers load) defaults to the repository's
# target/release/liblarder.so. Files DIR/conf.d/http/*.conf and
# DIR/conf.d/server/*.conf, when present, are included in the http and server blocks.
#
# GET /op?cache=NAME&op=OP&key=K[&value=V][&ttl=SECONDS][&capacity=BYTES]
#   OP: get, set, add, delete, incr (value = the delta, default 1; init 0), stats.
#   Raw mode: values byte for byte. A POST body, when present, is the value.
#   Answers one JSON object: {"ok":true,"found":true,"value":"...","value_hex":"..."}
#   (see lua/t/larder_op.lua and lua/README.md).

NGINX_SH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
NGINX_LUA_DIR=$(cd "$NGINX_SH_DIR/.." && pwd)
NGINX_REPO_DIR=$(cd "$NGINX_LUA_DIR/.." && pwd)
NGINX_MODULES=${NGINX_MODULES:-/usr/lib/nginx/modules}
NGINX_START_DEADLINE=${NGINX_START_DEADLINE:-20}
NGINX_STOP_DEADLINE=${NGINX_STOP_DEADLINE:-10}

_nginx_master_pid() {
    local pid
    [ -s "$1/nginx.pid" ] || return 1
    pid=$(cat "$1/nginx.pid") || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

nginx_worker_pids() {
    local master
    master=$(_nginx_master_pid "$1") || return 1
    ps -o pid= --ppid "$master" | tr -d ' '
}

_nginx_answers() {
    curl -sf --max-time 2 --unix-socket "$1/nginx.sock" http://localhost/ping >/dev/null 2>&1
}

nginx_start() {
    local dir=$1 kv name envs="" user=""
    shift || { echo "nginx_start DIR [NAME=VALUE ...]" >&2; return 2; }
    dir=$(cd "$dir" && pwd) || return 1
    export LARDER_LIBRARY=${LARDER_LIBRARY:-$NGINX_REPO_DIR/target/release/liblarder.so}
    for kv in "$@"; do
        name=${kv%%=*}
        case $name in
            '' | *[!A-Za-z0-9_]*) echo "nginx_start: bad NAME=VALUE: $kv" >&2; return 2 ;;
        esac
        export "${kv?}"
        envs="$envs
env $name;"
    done
    # A root master would run its workers as nobody; keep them the caller's, so that
    # the cache files they create belong to the same user as the tests' own.
    [ "$(id -u)" = 0 ] && user="user root root;"
    mkdir -p "$dir/conf.d/http" "$dir/conf.d/server" "$dir/tmp" "$dir/logs"
    cat >"$dir/nginx.conf" <<CONF
load_module $NGINX_MODULES/ndk_http_module.so;
load_module $NGINX_MODULES/ngx_http_lua_module.so;
$user
worker_processes ${NGINX_WORKERS:-2};
daemon on;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
env LARDER_LIBRARY;$envs

events {
    worker_connections 1024;
}

http {
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    client_body_buffer_size 1m;
    client_max_body_size 8m;
    lua_package_path "$NGINX_LUA_DIR/lib/?.lua;$NGINX_SH_DIR/?.lua;;";
    include $dir/conf.d/http/*.conf;

    server {
        listen unix:$dir/nginx.sock;

        location = /ping {
            return 200 "ok\n";
        }

        location = /op {
            content_by_lua_block {
                require("larder_op").handle()
            }
        }

        include $dir/conf.d/server/*.conf;
    }
}
CONF
    rm -f "$dir/nginx.sock"
    nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" || {
        echo "nginx_start: nginx failed to start; $dir/error.log:" >&2
        tail -n 20 "$dir/error.log" >&2
        return 1
    }
    local deadline=$((SECONDS + NGINX_START_DEADLINE))
    until _nginx_answers "$dir"; do
        if [ $SECONDS -ge $deadline ]; then
            echo "nginx_start: no answer on $dir/nginx.sock within ${NGINX_START_DEADLINE}s" >&2
            tail -n 20 "$dir/error.log" >&2
            nginx_stop "$dir"
            return 1
        fi
        sleep 0.05
    done
}

nginx_stop() {
    local dir=$1 master pid deadline sig alive state
    local -a pids
    master=$(_nginx_master_pid "$dir") || return 0
    pids=("$master")
    while read -r pid; do
        [ -n "$pid" ] && pids+=("$pid")
    done < <(ps -o pid= --ppid "$master" 2>/dev/null || true)
    for sig in QUIT KILL; do
        kill -s "$sig" "${pids[@]}" 2>/dev/null || true
        # A stopped worker (a crash point's stop) handles QUIT only once continued.
        if [ "$sig" = QUIT ]; then
            kill -s CONT "${pids[@]}" 2>/dev/null || true
        fi
        deadline=$((SECONDS + NGINX_STOP_DEADLINE))
        while [ "$SECONDS" -lt "$deadline" ]; do
            alive=""
            for pid in "${pids[@]}"; do
                # ps prints a zombie's state as Z, Zs, Z+...: a zombie is gone.
                state=$(ps -o stat= -p "$pid" 2>/dev/null || true)
                if [ -n "$state" ] && [[ $state != Z* ]]; then
                    alive=1
                fi
            done
            if [ -z "$alive" ]; then
                rm -f "$dir/nginx.sock" "$dir/nginx.pid"
                return 0
            fi
            sleep 0.05
        done
        while read -r pid; do
            [ -n "$pid" ] && pids+=("$pid")
        done < <(ps -o pid= --ppid "$master" 2>/dev/null || true)
    done
    echo "nginx_stop: processes still alive after KILL: ${pids[*]}" >&2
    return 1
}
