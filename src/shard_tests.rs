//! Table logic on an in-memory region (also run under Miri).
