//! Operation sequences on the in-memory table with stray writes to its shards between
//! them; a repair must leave every shard consistent and working.
#![no_main]

use larder_fuzz::table::{run_scribble, ScribbleInput};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: ScribbleInput| run_scribble(&input));
