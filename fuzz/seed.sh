#!/usr/bin/env bash
# Writes the seed corpora into fuzz/corpus/<target>/: header pages of real cache files for
# `header`, fixed pseudo-random bytes for the structured targets. Idempotent.
set -euo pipefail
cd "$(dirname "$0")"
# The harness reaches larder's table through `larder::table`, public under cfg(fuzzing)
# only: build the seeder with that cfg, as cargo-fuzz builds the targets (in a target
# directory of its own, so the flags do not rebuild the targets' crates).
RUSTFLAGS="--cfg fuzzing" CARGO_TARGET_DIR=target/seed \
    cargo run --quiet --release --example seed -- corpus
