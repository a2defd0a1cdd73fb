#!/usr/bin/env bash
# Instructions per hot operation, larder beside the ceiling (an in-process
# Mutex<HashMap>), counted by callgrind: deterministic where wall-clock figures on a
# shared machine swing by 2x. Each figure is (instructions of 2N operations - of N) / N,
# so setup and process start cancel out. Needs valgrind; valgrind 3.19 needs rustix's
# libc backend (--cfg rustix_use_libc), which this script selects in a target directory
# of its own.
#
#   benches/instructions.sh [N]        (default N = 20000)
#   OPS="set_existing remove" benches/instructions.sh   (some operations only)
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-20000}"
command -v valgrind >/dev/null || { echo "valgrind not found (apt-get install valgrind)" >&2; exit 1; }
export CARGO_TARGET_DIR=target/callgrind
RUSTFLAGS="--cfg rustix_use_libc" cargo build --release -q -p larder-bench --bin hot_ops
bin="$CARGO_TARGET_DIR/release/hot_ops"
count() { # impl op n -> instructions collected
    valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$1" "$2" "$3" 2>&1 \
        | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
per_op() {
    local a b
    a=$(count "$1" "$2" "$n")
    b=$(count "$1" "$2" $((2 * n)))
    echo $(( (b - a) * 10 / n )) | sed 's/\(.\)$/.\1/'
}
printf '| op | ceiling instr | larder instr | larder/ceiling |\n|---|---|---|---|\n'
for op in ${OPS:-get_hit get_miss set_existing set_evicting remove fill_hit fill_miss}; do
    c=$(per_op ceiling "$op")
    l=$(per_op larder "$op")
    ratio=$(awk -v l="$l" -v c="$c" 'BEGIN { printf "%.2fx", l / c }')
    printf '| %s | %s | %s | %s |\n' "$op" "$c" "$l" "$ratio"
done
