//! The header parser and layout validation on arbitrary bytes (as given, and with the
//! checksum made right).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| larder_fuzz::hostile::run_header(data));
