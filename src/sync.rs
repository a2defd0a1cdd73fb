//! The one switch between std's atomics and loom's, under the crate's own cfg
//! `larder_loom` (a cfg named `loom` would also switch dependencies that read it).
//!
//! Process-local atomics and the loom models use these. The shared region does not: it
//! is real memory shared with other processes, which loom cannot model (see `region`).

#[cfg(larder_loom)]
#[allow(unused_imports)] // used by the loom models only
pub(crate) use loom::sync::atomic::{fence, AtomicU64, Ordering};
#[cfg(not(larder_loom))]
#[allow(unused_imports)] // used by the loom models only
pub(crate) use std::sync::atomic::{fence, AtomicU64, Ordering};
