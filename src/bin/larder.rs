//! The `larder` command line (placeholder replaced by the CLI).
fn main() {}
