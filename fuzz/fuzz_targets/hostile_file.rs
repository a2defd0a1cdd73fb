//! A valid cache image with fuzzer-chosen word writes to its data regions (header
//! checksum recomputed), opened through the real open path and operated on.
#![no_main]

use larder_fuzz::hostile::{run_hostile, Door, HostileInput};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: HostileInput| run_hostile(&input, Door::Checksummed));
