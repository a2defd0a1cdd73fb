//! larder as each host's near cache in front of Redis: values read through
//! Redis are kept in larder, and Redis client-side caching in broadcast mode
//! tells every host which keys to drop.
//!
//! For now the crate holds the test support its tests and benches share
//! ([`testing`]).

#[doc(hidden)]
pub mod testing;
