//! The `larder` binary: the command of the `larder_cli` library.
#![deny(unsafe_code)]

use std::process::ExitCode;

fn main() -> ExitCode {
    // `larder bench` runs its workers by starting this binary again: in a worker this
    // runs the workload and exits, before any argument is parsed.
    #[cfg(feature = "bench")]
    larder_bench::worker_main_if_requested();
    larder_cli::install_panic_hook();
    ExitCode::from(larder_cli::main_from(std::env::args_os()))
}
