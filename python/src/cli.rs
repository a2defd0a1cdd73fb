//! The `larder` command inside the wheel: the console script `larder`
//! (`larder._cli:main`) runs [`larder_cli::main_from`], the command of `cli/`, with
//! its arguments, so a Python deployment needs nothing else installed.

use std::ffi::OsString;
use std::panic::{catch_unwind, AssertUnwindSafe};

use pyo3::prelude::*;

/// The exit status of a command that ended in a bug (a panic), as Rust's own.
const PANICKED: u8 = 101;

/// Runs the command with `args` (the program name first) and returns its exit status.
/// For the console script's process only: it installs the command's panic hook, which
/// is process-wide.
#[pyfunction]
fn _run_cli(py: Python<'_>, args: Vec<OsString>) -> u8 {
    py.detach(|| {
        larder_cli::install_panic_hook();
        // The hook has printed the one line; no unwinding crosses into Python.
        catch_unwind(AssertUnwindSafe(|| larder_cli::main_from(args))).unwrap_or(PANICKED)
    })
}

/// Registers `_run_cli` in the native module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(_run_cli, m)?)
}
