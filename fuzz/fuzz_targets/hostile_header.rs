//! Like `hostile_file`, but the header page is writable too and checksums stay as the
//! fuzzer left them: tests the door.
#![no_main]

use larder_fuzz::hostile::{run_hostile, Door, HostileInput};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: HostileInput| run_hostile(&input, Door::AsWritten));
