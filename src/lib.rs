//! larder: a cache that many processes on one Linux host share through one
//! memory-mapped file in /dev/shm, guarded by robust process-shared mutexes that recover
//! when their owner dies.
//!
//! ```
//! # fn main() -> Result<(), larder::Error> {
//! # let dir = std::env::temp_dir().join(format!("larder-doc-lib-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! # let name = dir.join("authz");
//! # let name = name.to_str().unwrap();
//! use std::time::Duration;
//! // Every worker runs this; exactly one creates the file, the others attach.
//! let cache = larder::Options::new()
//!     .capacity(8 << 20)
//!     .max_key_len(256)
//!     .max_value_len(16 << 10)
//!     .lock_timeout(Duration::from_millis(200))
//!     .open(name)?; // a bare name such as "authz" lives in /dev/shm
//! cache.set(b"token:abc", b"claims", Some(Duration::from_secs(300)))?;
//! assert_eq!(cache.get(b"token:abc")?, Some(b"claims".to_vec()));
//! let mut buf = Vec::with_capacity(256);
//! assert!(cache.get_into(b"token:abc", &mut buf)?); // no allocation
//! assert!(cache.insert_if_absent(b"k", b"v", None)?);
//! assert!(cache.remove(b"token:abc")?);
//! let v = cache.get_or_insert_with(b"token:xyz", Some(Duration::from_secs(60)), || {
//!     Ok::<_, larder::Error>(b"validated".to_vec())
//! })?;
//! assert_eq!(v, b"validated");
//! assert!(cache.verify()?.is_clean());
//! # drop(cache);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok(()) }
//! ```
//!
//! # How it works
//!
//! - **The file** (`file`, `header`, `layout`): fixed size and layout, chosen at
//!   creation and reserved with `posix_fallocate`; built under no name and linked into
//!   place, so concurrent openers race safely and a dying creator leaves nothing. The
//!   header holds a magic number, the format version, every layout parameter, the lock
//!   ABI, a random hash secret and a checksum; a mismatch is an error that names what
//!   differs. Beside it, outside the checksum, a stamp records the boot, pid namespace
//!   and time namespace the file may be used in. Attached processes hold a shared
//!   `flock`. A handle checks every 250 ms that its path still names its file, and moves to the new one if it was replaced,
//!   with that file's own parameters (a removed file is created again as it was, owner,
//!   group and mode included, by a handle of its owner's uid or root's, which the other
//!   uids of a pool wait for); the old mapping is unmapped once no operation is
//!   inside it (`mapping`). A handle that cannot attach fails with [`Error::Detached`]
//!   rather than answer from a file no other process sees.
//! - **Shards** (`shard`, `evict`): the table is split into a power-of-two number of
//!   shards (by default up to 256, each at least 512 KiB), each with its own
//!   lock, index and memory. Keys hash with keyed xxh3 (the file's 192-byte secret) to
//!   a shard, two buckets of eight slots, and a 32-bit tag; every probe reads at most
//!   those two buckets, both prefetched at once. Records live in two circular logs per
//!   shard, and eviction is S3-FIFO over them: no fragmentation, no write on a hit once
//!   its visited bit is set, and a better hit ratio than LRU on skewed workloads.
//! - **Locks** (`lock`): each shard has a robust, process-shared, NORMAL glibc mutex;
//!   every acquisition has a deadline (`pthread_mutex_clocklock` on
//!   `CLOCK_MONOTONIC`), so a stopped holder costs its peers an [`Error::Timeout`], never
//!   a hang.
//! - **Optimistic reads** (`seqlock`): a get reads the shard's sequence counter, copies
//!   the entry with relaxed atomic loads, and re-checks the counter; after a few failed
//!   tries it takes the lock. Hits write no shared memory beyond one visited bit (once)
//!   and the process's own statistics slot.
//! - **Crash recovery**: every mutation is ordered so that the logs alone describe the
//!   shard at any instant (see `shard`). A writer that dies or panics leaves the
//!   sequence counter odd (and, if it died, the mutex owner-dead); the next owner
//!   rebuilds the index from the logs, which drops at most the entry that was being
//!   written and never brings back a removed or overwritten one, counts the recovery,
//!   and marks the mutex consistent. Repair is idempotent.
//! - **Single flight** ([`Cache::get_or_insert_with`]): robust fill-slot mutexes, with
//!   their own timeout.
//! - **Revocation fencing** (`fence`, [`Cache::ticket`]): every write of a key but
//!   `touch` bumps a counter of the key's class under the shard lock; a fill, and
//!   cache-aside code with a [`Ticket`], stores only if the counter has not moved since
//!   it began, checked under the same lock. A value computed from state read before a
//!   revocation is never stored after it.
//! - **Statistics** (`stats`): per-shard counters under the shard lock, and per-process
//!   slots for read counters, so gets share no cache line across processes. A slot is
//!   claimed with an open file description lock, so larder starts no threads.
//!
//! # Which calls wait, and for how long
//!
//! No call waits on another process without a deadline, and a call that would wait on
//! an event loop's thread has a `try_` form that never does ([`Error::WouldBlock`]):
//!
//! | calls | wait for | at most |
//! |---|---|---|
//! | [`Cache::get`], `get_into`, `get_many`, `get_stale`, `get_versioned` | a shard lock, only when the optimistic read fails (a writer mid-write, or a stopped or dead one) | the lock timeout (`Options::lock_timeout`, 500 ms by default) |
//! | `set`, `insert_if_absent`, `replace`, `remove`, `incr`, `touch`, `ttl`, `set_if_version`, `set_with_ticket`, `Fill::complete` | the key's shard lock | the lock timeout |
//! | `clear`, `verify`, `repair` | every shard's lock in turn | the lock timeout per shard |
//! | [`Cache::stats`] | nothing (it reads counters without locks) | no wait |
//! | [`Cache::get_or_insert_with`], [`Cache::begin_fill`] | the shard lock, then another process's fill of a key of the same fill slot (unless a stale value can be served) | the lock timeout, then the fill timeout (`Options::fill_timeout`, 5 s by default) |
//! | any call, once per 250 ms per handle | the check that the path still names the file; after a replacement, a replacer's file lock; after a removal by another uid, the owner's re-creation | the lock timeout; 200 ms for the owner |
//! | `try_get`, `try_get_into`, `try_get_stale`, `try_set`, `try_insert_if_absent`, `try_replace`, `try_remove`, `try_incr`, `try_touch`, `try_ttl`, `try_clear_shard`, `try_begin_fill`, `try_get_versioned`, `try_set_if_version`, `try_ticket`, `try_set_with_ticket`, `Fill::try_complete` | nothing: [`Error::WouldBlock`] instead | no wait |
//!
//! # Limits
//!
//! Linux with glibc only. Processes sharing a file must run the same format version
//! (the file name carries it). Peers that can write the file are trusted: larder checks
//! everything it reads, but a peer can always destroy the data. Truncating the file
//! makes every process that maps it die of SIGBUS. One host, one pid namespace and one
//! time namespace: the header's stamp records the creator's, and an opener from another
//! is refused ([`Error::OtherPidNamespace`], [`Error::OtherTimeNamespace`]), because
//! robust futexes name owners by thread ids of one pid namespace and TTLs are readings
//! of one monotonic clock. /proc must be mounted, since the boot id and the namespaces
//! are read there: without it creating and attaching are refused with
//! [`Error::ProcUnavailable`], never with a guess (a made-up boot id would call every
//! file one of another boot).
// `unsafe` is allowed only in `region` (the memory the table lives in), `lock` (glibc's
// mutexes, the statistics slot's file lock and the fork handler) and `mapping` (the
// cells' pointers to attached files), plus one signal call of the crash-point test
// machinery (`crashpoint`).
#![deny(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(clippy::multiple_unsafe_ops_per_block)]
#![deny(clippy::missing_safety_doc)]
#![warn(missing_docs)]

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
compile_error!("larder needs Linux with glibc (robust process-shared pthread mutexes)");

// The numbered crash points: public with the `crash-points` feature (for crash test
// suites, which list them), private otherwise, where each point compiles to nothing.
#[cfg(feature = "crash-points")]
#[macro_use]
pub mod crashpoint;
#[cfg(not(feature = "crash-points"))]
#[macro_use]
mod crashpoint;

mod cache;
mod clock;
mod error;
mod evict;
mod fence;
mod file;
mod header;
mod layout;
mod lock;
mod mapping;
pub mod near;
mod options;
mod region;
mod seqlock;
mod shard;
mod stats;
mod sync;
// The fuzz harness (fuzz/, built with `--cfg fuzzing`) drives the table's locked-section
// protocol through this module; in every other build it is private.
#[cfg(fuzzing)]
pub mod table;
#[cfg(not(fuzzing))]
mod table;
mod verify;
mod words;

#[cfg(test)]
#[path = "shard_tests.rs"]
mod shard_tests;

pub use cache::{
    Begin, Cache, Entries, EntryInfo, Fill, Limits, RepairReport, StaleValue, Version,
};
pub use clock::Clock;
pub use error::{Error, Remedy, Result};
pub use fence::Ticket;
pub use options::{
    Mismatch, Opened, Options, DEFAULT_CAPACITY, DEFAULT_EXPECTED_ENTRY, DEFAULT_FILL_TIMEOUT,
    DEFAULT_LOCK_TIMEOUT, DEFAULT_MAX_KEY_LEN, DEFAULT_MAX_VALUE_LEN,
};
pub use stats::{ShardStats, Stats};
pub use verify::{Problem, Report};

#[cfg(test)]
mod send_sync {
    fn assert_send_sync<T: Send + Sync>() {}
    #[test]
    fn cache_is_send_and_sync() {
        assert_send_sync::<crate::Cache>();
    }
}
