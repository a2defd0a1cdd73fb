#!/usr/bin/env bash
# Writes the seed corpora into fuzz/corpus/<target>/: header pages of real cache files for
# `header`, fixed pseudo-random bytes for the structured targets. Idempotent.
set -euo pipefail
cd "$(dirname "$0")"
cargo run --quiet --release --example seed -- corpus
