//! Statistics: per-shard counters written under the shard lock, and per-process counter
//! slots for everything a lock-free read counts.
//!
//! A get must not write a cache line other processes write, so hits and misses go to a
//! slot owned by the counting process. A process claims slot `i` with an open file
//! description lock (`F_OFD_SETLK`) on byte `i` of the file, taken through a file
//! description of its own (a fresh open of the mapped file), held for as long as its
//! mapping lives. No thread is needed to hold it: the lock belongs to the description,
//! not to a thread, and the kernel drops it when the description's last descriptor
//! closes, whether the process closed the handle, exited, was killed or was stopped for
//! ever and then killed. So a slot is never lost to a dead owner and never compared by
//! pid (pids repeat, and differ across namespaces). The next process to claim the slot
//! keeps adding to the counters it finds, so a dead process's counts stay in the totals.
//! A process that finds no free slot counts in slot 0, shared by all such processes
//! (atomic adds, so nothing is lost there either).
//!
//! A process's threads take stripes in turn (`mapping::stripe`), and each stripe claims
//! a slot of its own when it first counts ([`STAT_STRIPES`] at most per process and
//! file): two threads counting hits at once then add to lines of their own instead of
//! passing one line between their cores, which cost a second thread as much CPU per hit
//! as the whole get (2.10x one thread's, against 1.01x with stripes, by
//! `cargo bench -p larder-bench --bench scaling`). Threads beyond the stripes share
//! slots, with atomic adds.
//!
//! After `fork` the child shares its parent's description, and so its parent's claim: a
//! `pthread_atfork` child handler bumps a generation number, and the next counting
//! operation in the child claims a slot of its own through a new description and closes
//! its copy of the parent's (one relaxed load per operation, no `getpid`). Claiming
//! never waits: each slot is one non-blocking lock attempt.

use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

use crate::file::Attached;

/// Counters of the whole cache, from [`Cache::stats`](crate::Cache::stats).
///
/// Entry and byte counts are read without locks and may be a moment old under writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Live entries (expired entries count until their space is reclaimed).
    pub entries: u64,
    /// Bytes of keys and values of live entries.
    pub bytes_live: u64,
    /// Bytes of the logs in use (live, dead and padding records with their headers).
    pub bytes_used: u64,
    /// Bytes of the logs free.
    pub bytes_free: u64,
    /// Bytes of the file.
    pub file_size: u64,
    /// Number of shards.
    pub shard_count: u64,
    /// Lookups that found a fresh entry. A lookup is a `get`, `get_into`, `try_get`, a
    /// key of `get_many`, a `get_versioned`, or a `get_or_insert_with`, which counts
    /// once: a hit, a stale hit or a miss, whatever it then waited for or computed.
    pub hits: u64,
    /// Lookups that found nothing (or only an expired entry), including every
    /// `get_or_insert_with` that was not a hit or a stale hit (its caller computed the
    /// value, or waited for another process's fill).
    pub misses: u64,
    /// Expired values served by `get_stale`, or by `get_or_insert_with` while another
    /// process refreshed them.
    pub stale_hits: u64,
    /// Sets of a new key.
    pub inserts: u64,
    /// Sets that replaced an entry.
    pub updates: u64,
    /// Entries removed by `remove` or `clear`.
    pub removals: u64,
    /// Entries evicted to make room.
    pub evictions: u64,
    /// Of `evictions`, those made because both of a new key's index buckets were full
    /// while the logs may still have had room: many of them mean the entries are smaller
    /// than the `expected_entry_size` the index was sized for.
    pub index_evictions: u64,
    /// Bytes of records appended by sets (headers and padding included).
    pub bytes_written: u64,
    /// Bytes of records moved within the logs by eviction and cleaning: entries read
    /// since they entered (S3-FIFO's moves), and live entries moved on from a log's head
    /// so that the dead records around them can be dropped. The write amplification is
    /// `(bytes_written + bytes_moved) / bytes_written`.
    pub bytes_moved: u64,
    /// Expired entries whose space was reclaimed.
    pub expirations: u64,
    /// Operations that gave up on a shard lock at its deadline.
    pub lock_timeouts: u64,
    /// Shard repairs: after a lock owner died, or a writer panicked, mid-write.
    pub recoveries: u64,
    /// Entries dropped by those repairs (at most one per repair).
    pub repair_dropped: u64,
    /// Values computed by `get_or_insert_with` and stored.
    pub fills: u64,
    /// `get_or_insert_with` calls that gave up waiting for another process's fill.
    pub fill_timeouts: u64,
    /// Fills taken over from a process that died while computing.
    pub fill_handovers: u64,
    /// Fills whose value was returned to their caller but not stored, because a write
    /// revoked the key while it was computed (see [`Cache::ticket`](crate::Cache::ticket)).
    pub fills_fenced: u64,
    /// Shard lock acquisitions attempted (a debug counter: read-only hits take none).
    pub locks: u64,
    /// Per-shard counters.
    pub shards: Vec<ShardStats>,
}

/// Counters of one shard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShardStats {
    /// Live entries.
    pub entries: u64,
    /// Bytes of keys and values of live entries.
    pub bytes_live: u64,
    /// Bytes of the logs in use.
    pub bytes_used: u64,
    /// Bytes of the logs free.
    pub bytes_free: u64,
    /// Sets of a new key.
    pub inserts: u64,
    /// Sets that replaced an entry.
    pub updates: u64,
    /// Entries removed.
    pub removals: u64,
    /// Entries evicted.
    pub evictions: u64,
    /// Of `evictions`, those made because a key's two index buckets were full.
    pub index_evictions: u64,
    /// Bytes of records appended by sets.
    pub bytes_written: u64,
    /// Bytes of records moved by eviction and cleaning.
    pub bytes_moved: u64,
    /// Expired entries reclaimed.
    pub expirations: u64,
    /// Repairs.
    pub recoveries: u64,
    /// Entries dropped by repairs.
    pub repair_dropped: u64,
}

/// Reads every counter of `a`: each shard's (a moment old under writes: no lock is
/// taken) and every statistics slot's, summed with wrapping arithmetic (the counters
/// come from the file, so any value must be summable).
pub(crate) fn gather(a: &Attached) -> Stats {
    use crate::layout::{
        SH_DROPPED, SH_ENTRIES, SH_EVICTIONS, SH_EXPIRATIONS, SH_INDEX_EVICTIONS, SH_INSERTS,
        SH_LIVE_BYTES, SH_MOVED, SH_RECOVERIES, SH_REMOVALS, SH_UPDATES, SH_WRITTEN, SS_FILLS,
        SS_FILLS_FENCED, SS_FILL_HANDOVERS, SS_FILL_TIMEOUTS, SS_HITS, SS_LOCKS, SS_LOCK_TIMEOUTS,
        SS_MISSES, SS_STALE_HITS, STATS_SLOTS,
    };
    use crate::shard::{LogId, Shard};
    let r = &a.region;
    let mut s = Stats {
        file_size: a.geo.total_size as u64,
        shard_count: a.geo.shard_count as u64,
        ..Stats::default()
    };
    for idx in 0..a.geo.shard_count {
        let sh = Shard::new(r, &a.geo, idx, &a.hasher);
        let mut used = 0u64;
        let mut cap = 0u64;
        for which in [LogId::Small, LogId::Main] {
            let (_, c, _) = sh.log_bounds(which);
            cap = cap.wrapping_add(c as u64);
            if let Ok((head, tail)) = sh.state(which) {
                used = used.wrapping_add(Shard::used(c, head, tail) as u64);
            }
        }
        let ss = ShardStats {
            entries: sh.counter(SH_ENTRIES),
            bytes_live: sh.counter(SH_LIVE_BYTES),
            bytes_used: used,
            bytes_free: cap.saturating_sub(used),
            inserts: sh.counter(SH_INSERTS),
            updates: sh.counter(SH_UPDATES),
            removals: sh.counter(SH_REMOVALS),
            evictions: sh.counter(SH_EVICTIONS),
            index_evictions: sh.counter(SH_INDEX_EVICTIONS),
            bytes_written: sh.counter(SH_WRITTEN),
            bytes_moved: sh.counter(SH_MOVED),
            expirations: sh.counter(SH_EXPIRATIONS),
            recoveries: sh.counter(SH_RECOVERIES),
            repair_dropped: sh.counter(SH_DROPPED),
        };
        ss.add_to(&mut s);
        s.shards.push(ss);
    }
    for slot in 0..STATS_SLOTS {
        let base = a.geo.stats_slot(slot);
        let add = |total: &mut u64, field: usize| *total = total.wrapping_add(r.load(base + field));
        add(&mut s.hits, SS_HITS);
        add(&mut s.misses, SS_MISSES);
        add(&mut s.stale_hits, SS_STALE_HITS);
        add(&mut s.lock_timeouts, SS_LOCK_TIMEOUTS);
        add(&mut s.fills, SS_FILLS);
        add(&mut s.fill_timeouts, SS_FILL_TIMEOUTS);
        add(&mut s.locks, SS_LOCKS);
        add(&mut s.fill_handovers, SS_FILL_HANDOVERS);
        add(&mut s.fills_fenced, SS_FILLS_FENCED);
    }
    s
}

impl ShardStats {
    /// Adds this shard's counters to the totals.
    fn add_to(&self, s: &mut Stats) {
        let add = |total: &mut u64, v: u64| *total = total.wrapping_add(v);
        add(&mut s.entries, self.entries);
        add(&mut s.bytes_live, self.bytes_live);
        add(&mut s.bytes_used, self.bytes_used);
        add(&mut s.bytes_free, self.bytes_free);
        add(&mut s.inserts, self.inserts);
        add(&mut s.updates, self.updates);
        add(&mut s.removals, self.removals);
        add(&mut s.evictions, self.evictions);
        add(&mut s.index_evictions, self.index_evictions);
        add(&mut s.bytes_written, self.bytes_written);
        add(&mut s.bytes_moved, self.bytes_moved);
        add(&mut s.expirations, self.expirations);
        add(&mut s.recoveries, self.recoveries);
        add(&mut s.repair_dropped, self.repair_dropped);
    }
}

/// Fork generation: bumped in every child.
static FORK_GEN: AtomicU64 = AtomicU64::new(1);
/// 0: the fork handler is not registered, 1: a thread is registering it, 2: registered.
static ATFORK: AtomicU8 = AtomicU8::new(0);

extern "C" fn after_fork_in_child() {
    // Async-signal-safe: one atomic add.
    FORK_GEN.fetch_add(1, Ordering::Relaxed);
}

/// Registers the fork handler (once per process). Never waits: a thread that finds
/// another registering returns at once. (A `Once` here would hang a child forked while
/// another thread was inside it. If a fork lands inside the registration, the child
/// shares its parent's statistics slot, which its atomic adds keep exact.)
pub(crate) fn register_atfork() {
    if ATFORK.load(Ordering::Acquire) == 2 {
        return;
    }
    if ATFORK
        .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
    {
        crash_point!("open.register_atfork");
        let _ = crate::lock::register_atfork_child(after_fork_in_child);
        ATFORK.store(2, Ordering::Release);
    }
}

pub(crate) fn fork_gen() -> u64 {
    FORK_GEN.load(Ordering::Relaxed) & 0xffff_ffff
}

/// A fresh description of the file `a` maps, with the lock of a free slot on it.
fn claim_slot(a: &Attached) -> Option<(usize, OwnedFd)> {
    let fd = rustix::fs::open(
        format!("/proc/self/fd/{}", a.file_fd()),
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .ok()?;
    (1..crate::layout::STATS_SLOTS)
        .find(|&slot| crate::lock::ofd_try_lock(&fd, slot))
        .map(|slot| (slot, fd))
}

/// Statistics slots a process may claim in a file, one per stripe of its threads, so
/// that threads counting at once mostly write lines of their own: a thread uses the
/// slot of its stripe (`mapping::stripe`), claimed when that stripe first counts.
pub(crate) const STAT_STRIPES: usize = 4;

/// The offset of the statistics slot this thread counts in, in `a`, claiming one if
/// needed.
#[inline]
pub(crate) fn slot_base(a: &Attached) -> usize {
    let i = crate::mapping::stripe() % STAT_STRIPES;
    let v = a.stats_slots[i].load(Ordering::Relaxed);
    let gen = fork_gen();
    if v != 0 && v >> 32 == gen {
        return a.geo.stats_slot(((v & 0xffff_ffff) - 1) as usize);
    }
    claim(a, i, v, gen)
}

#[cold]
fn claim(a: &Attached, i: usize, old: u64, gen: u64) -> usize {
    register_atfork();
    let (slot, fd) = match claim_slot(a) {
        Some((slot, fd)) => (slot, Some(fd)),
        None => (0, None),
    };
    let new = (gen << 32) | (slot as u64 + 1);
    match a.stats_slots[i].compare_exchange(old, new, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => {
            if let Some(fd) = fd {
                keep_claim(a, i, fd);
            }
            a.geo.stats_slot(slot)
        }
        Err(current) => {
            // Another thread claimed first: ours is given back as `fd` drops.
            if current != 0 && current >> 32 == gen {
                a.geo.stats_slot(((current & 0xffff_ffff) - 1) as usize)
            } else {
                a.geo.stats_slot(0)
            }
        }
    }
}

/// Keeps the claim's description open for the mapping's life, closing the previous one
/// (in a forked child, its copy of the parent's: the parent's claim stays the parent's).
/// Never waits: the record is locked only for this swap and by the mapping's drop, so it
/// is busy only in a child forked while a parent thread held it.
fn keep_claim(a: &Attached, i: usize, fd: OwnedFd) {
    match a.stats_claims.try_lock() {
        Ok(mut c) => c[i] = Some(fd),
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner()[i] = Some(fd),
        // Keep the claim for the process's life rather than lose the slot's lock.
        Err(std::sync::TryLockError::WouldBlock) => std::mem::forget(fd),
    }
}

/// Adds one to a counter of this process's slot.
#[inline]
pub(crate) fn bump(a: &Attached, field: usize) {
    let base = slot_base(a);
    a.region.fetch_add(base + field, 1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::file::{self, OpenSpec};
    use crate::layout::STATS_SLOTS;
    use std::time::Duration;

    /// A slot's claim is its description's lock: every slot but the shared one can be
    /// claimed once, and closing a claim's description frees exactly that slot.
    #[test]
    fn a_slot_is_held_by_its_description_until_it_closes() {
        let dir = std::env::temp_dir().join(format!(
            "larder-unit-slots-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).expect("dir");
        struct Cleanup(std::path::PathBuf);
        impl Drop for Cleanup {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let _cleanup = Cleanup(dir.clone());
        let opts = crate::Options::new().capacity(4 << 20);
        let spec = OpenSpec {
            params: Some(opts.params),
            mode: 0o600,
            allow_uids: Vec::new(),
            lock_timeout: Duration::from_secs(1),
        };
        let a = file::open(&dir.join("cache"), &spec).expect("create");
        let mut held = Vec::new();
        while let Some(claim) = claim_slot(&a) {
            held.push(claim);
            assert!(held.len() < STATS_SLOTS, "more claims than slots");
        }
        let mut slots: Vec<usize> = held.iter().map(|(s, _)| *s).collect();
        slots.sort_unstable();
        assert_eq!(slots, (1..STATS_SLOTS).collect::<Vec<_>>());
        let (freed, fd) = held.remove(17);
        drop(fd);
        assert_eq!(claim_slot(&a).map(|(s, _)| s), Some(freed));
    }
}
