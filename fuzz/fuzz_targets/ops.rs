//! Operation sequences on the in-memory table against a reference model.
#![no_main]

use larder_fuzz::table::{run_ops, OpsInput};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: OpsInput| run_ops(&input));
