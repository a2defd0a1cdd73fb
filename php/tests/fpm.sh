# shellcheck shell=bash
# Private php-fpm masters for tests: source this file, then
#
#   fpm_start DIR WORKERS [NAME=VALUE ...]
#       Starts a php-fpm master (Debian's php-fpm8.2, or $FPM_BIN) with one pool of WORKERS
#       workers (pm = static) listening on the unix socket DIR/fpm.sock, serving the
#       scripts of php/tests/www/ (send SCRIPT_FILENAME as their absolute path). Each
#       NAME=VALUE becomes a pool env[NAME] entry (clear_env is on). The library is
#       $LARDER_LIBRARY (default: target/release/liblarder.so of this repository), loaded
#       at start with ffi.preload and opcache.preload as in production; the pool also gets
#       env[LARDER_LIBRARY]. APCu is loaded too (apc.shm_size 64M). Waits (10 s deadline)
#       until the pool answers; returns non-zero, with the log, if it does not.
#       Everything lives in DIR: php.ini, php-fpm.conf, fpm.pid, fpm.log, fpm.sock.
#   fpm_stop DIR
#       SIGTERM to the master (and SIGCONT to its workers, so stopped ones die too); after
#       5 s, SIGKILL to the master and the workers it had. Waits until they are gone.
#       Safe in a trap under `set -euo pipefail`: no failing step aborts it; non-zero
#       only if processes outlive SIGKILL.
#   fpm_worker_pids DIR
#       Prints the pids of the master's live workers, one a line.
#   fpm_forward_signals
#       For a script that runs the Python suites (which stop their own pools): traps
#       SIGTERM, SIGINT and SIGHUP so that the child fpm_run_child is waiting for gets the
#       signal and is waited for (its pools stop), then the script exits 128 + N.
#   fpm_run_child COMMAND [ARG ...]
#       Runs COMMAND in the background and waits for it (so the trap runs at once); its
#       exit status.
#
# Runs as any user; as root it passes -R and sets opcache.preload_user to root.

_FPM_SH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
_FPM_REPO=$(cd "$_FPM_SH_DIR/../.." && pwd)
FPM_BIN=${FPM_BIN:-php-fpm8.2}

fpm_start() {
    local dir=$1 workers=$2
    shift 2 || { echo "usage: fpm_start DIR WORKERS [NAME=VALUE ...]" >&2; return 2; }
    local lib=${LARDER_LIBRARY:-$_FPM_REPO/target/release/liblarder.so}
    local user root_flag="" preload_user=""
    user=$(id -un)
    if [ "$(id -u)" = 0 ]; then
        root_flag=-R
        preload_user="opcache.preload_user = $user"
    fi
    mkdir -p "$dir" || return 1
    if [ ! -f "$lib" ]; then
        echo "fpm_start: no library at $lib (build it: cargo build -p larder-capi --release)" >&2
        return 1
    fi
    php8.2 -n "$_FPM_SH_DIR/../bin/ffi-header.php" "$lib" >"$dir/larder.ffi.h" || return 1
    cat >"$dir/php.ini" <<EOF
extension = ffi
extension = posix
extension = apcu
zend_extension = opcache
ffi.enable = preload
ffi.preload = $dir/larder.ffi.h
opcache.enable = 1
opcache.preload = $_FPM_REPO/php/preload.php
$preload_user
apc.enabled = 1
apc.shm_size = 64M
display_errors = Off
log_errors = On
max_execution_time = 60
EOF
    local pool_env="env[LARDER_LIBRARY] = \"$lib\""$'\n' pair
    for pair in "$@"; do
        case $pair in
            *=*) ;;
            *) echo "fpm_start: not NAME=VALUE: $pair" >&2; return 2 ;;
        esac
        case $pair in
            *'"'* | *$'\n'*) echo "fpm_start: a quote or newline in $pair" >&2; return 2 ;;
        esac
        pool_env+="env[${pair%%=*}] = \"${pair#*=}\""$'\n'
    done
    cat >"$dir/php-fpm.conf" <<EOF
[global]
pid = $dir/fpm.pid
error_log = $dir/fpm.log
daemonize = yes
process_control_timeout = 5

[test]
listen = $dir/fpm.sock
listen.mode = 0600
pm = static
pm.max_children = $workers
pm.status_path = /fpm-status
ping.path = /fpm-ping
clear_env = yes
catch_workers_output = yes
decorate_workers_output = no
request_terminate_timeout = 60
$pool_env
EOF
    # PHP_INI_SCAN_DIR empty: only this php.ini, never the system's conf.d.
    if ! PHP_INI_SCAN_DIR='' LARDER_LIBRARY="$lib" "$FPM_BIN" $root_flag -y "$dir/php-fpm.conf" \
        -c "$dir/php.ini" >"$dir/fpm.start.log" 2>&1; then
        echo "fpm_start: $FPM_BIN failed:" >&2
        cat "$dir/fpm.start.log" "$dir/fpm.log" >&2 2>/dev/null
        fpm_stop "$dir" # in case a master daemonized before the failure
        return 1
    fi
    local deadline=$((SECONDS + 10))
    while ((SECONDS < deadline)); do
        if python3 "$_FPM_SH_DIR/fcgi.py" --timeout 2 "$dir/fpm.sock" /fpm-ping "" >/dev/null 2>&1 &&
            [ "$(fpm_worker_pids "$dir" | wc -l)" -ge "$workers" ]; then
            return 0
        fi
        sleep 0.05 # poll interval; the deadline bounds the wait
    done
    echo "fpm_start: the pool at $dir/fpm.sock did not answer within 10 s:" >&2
    cat "$dir/fpm.start.log" "$dir/fpm.log" >&2 2>/dev/null
    fpm_stop "$dir"
    return 1
}

fpm_worker_pids() {
    local master line rest stat
    local -a fields
    master=$(cat "$1/fpm.pid" 2>/dev/null) || return 1
    for stat in /proc/[0-9]*/stat; do
        { read -r line <"$stat"; } 2>/dev/null || continue
        rest=${line##*) } # after "pid (comm) ": comm may hold spaces
        read -ra fields <<<"$rest"
        # fields[0] is the state, fields[1] the parent's pid; a zombie is no worker
        if [ "${fields[1]}" = "$master" ] && [ "${fields[0]}" != Z ]; then
            stat=${stat#/proc/}
            echo "${stat%/stat}"
        fi
    done
}

# Whether any of the pids is still a live (non-zombie) process.
_fpm_any_alive() {
    local pid line rest
    for pid in "$@"; do
        { read -r line <"/proc/$pid/stat"; } 2>/dev/null || continue
        rest=${line##*) }
        [ "${rest%% *}" != Z ] && return 0
    done
    return 1
}

fpm_stop() {
    # Every step tolerates failure (a worker may exit between two signals): this runs from
    # callers' traps under `set -euo pipefail`, where one failing command would end the
    # cleanup early.
    local dir=$1 master deadline
    local -a workers=()
    master=$(cat "$dir/fpm.pid" 2>/dev/null) || return 0
    if ! [[ $master =~ ^[0-9]+$ ]]; then
        rm -f "$dir/fpm.pid" || true
        return 0
    fi
    mapfile -t workers < <(fpm_worker_pids "$dir" || true)
    kill -TERM "$master" 2>/dev/null || true
    if ((${#workers[@]} > 0)); then
        kill -CONT "${workers[@]}" 2>/dev/null || true
    fi
    deadline=$((SECONDS + 5))
    while _fpm_any_alive "$master" "${workers[@]}" && ((SECONDS < deadline)); do
        sleep 0.05 || true # poll interval; the deadline bounds the wait
    done
    if _fpm_any_alive "$master" "${workers[@]}"; then
        mapfile -t -O "${#workers[@]}" workers < <(fpm_worker_pids "$dir" || true)
        kill -KILL "$master" "${workers[@]}" 2>/dev/null || true
        deadline=$((SECONDS + 5))
        while _fpm_any_alive "$master" "${workers[@]}" && ((SECONDS < deadline)); do
            sleep 0.05 || true
        done
    fi
    rm -f "$dir/fpm.pid" || true
    if _fpm_any_alive "$master" "${workers[@]}"; then
        echo "fpm_stop: processes of $dir still alive after SIGKILL" >&2 || true
        return 1
    fi
    return 0
}

_FPM_CHILD=""

_fpm_on_signal() {
    local name=$1 number=$2
    trap '' TERM INT HUP # once: the child's cleanup is not interrupted
    if [ -n "$_FPM_CHILD" ]; then
        kill -"$name" "$_FPM_CHILD" 2>/dev/null || true
        wait "$_FPM_CHILD" 2>/dev/null || true
    fi
    exit $((128 + number))
}

fpm_forward_signals() {
    trap '_fpm_on_signal TERM 15' TERM
    trap '_fpm_on_signal INT 2' INT
    trap '_fpm_on_signal HUP 1' HUP
}

fpm_run_child() {
    local status=0
    "$@" &
    _FPM_CHILD=$!
    wait "$_FPM_CHILD" || status=$?
    _FPM_CHILD=""
    return "$status"
}
