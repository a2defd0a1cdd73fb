//! Test support for this crate's integration tests and benches.
