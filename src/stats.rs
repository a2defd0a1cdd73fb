//! Statistics: per-shard counters written under the shard lock, and per-process counter
//! slots for everything a lock-free read counts.
//!
//! A get must not write a cache line other processes write, so hits and misses go to a
//! slot owned by the counting process. A process claims a slot by locking the slot's
//! robust mutex and holding it for as long as it is attached; a small keeper thread owns
//! those locks (a robust mutex belongs to a thread, and the thread that opened the cache
//! may exit long before the process does). When the process dies the kernel marks the
//! mutex owner-dead, and the next process to claim the slot keeps adding to the counters
//! it finds, so a dead process's counts stay in the totals. A process that finds no free
//! slot counts in slot 0, shared by all such processes.
//!
//! After `fork` the child has no keeper thread and does not own its parent's slot: a
//! `pthread_atfork` child handler bumps a generation number, and the next counting
//! operation in the child claims a slot of its own (one relaxed load per operation, no
//! `getpid`).
#![deny(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use crate::file::Attached;
use crate::lock::{Acquired, RobustMutex};

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
    /// Gets that found a fresh entry.
    pub hits: u64,
    /// Gets that found nothing (or only an expired entry).
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
    /// Expired entries whose space was reclaimed.
    pub expirations: u64,
    /// Operations that gave up on a shard lock at its deadline.
    pub lock_timeouts: u64,
    /// Shard repairs: after a lock owner died, or a writer panicked, mid-write.
    pub recoveries: u64,
    /// Entries dropped by those repairs (at most one per repair).
    pub repair_dropped: u64,
    /// Values computed by `get_or_insert_with`.
    pub fills: u64,
    /// `get_or_insert_with` calls that gave up waiting for another process's fill.
    pub fill_timeouts: u64,
    /// Fills taken over from a process that died while computing.
    pub fill_handovers: u64,
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
    /// Expired entries reclaimed.
    pub expirations: u64,
    /// Repairs.
    pub recoveries: u64,
    /// Entries dropped by repairs.
    pub repair_dropped: u64,
}

/// Fork generation: bumped in every child.
static FORK_GEN: AtomicU64 = AtomicU64::new(1);
static ATFORK: Once = Once::new();

extern "C" fn after_fork_in_child() {
    // Async-signal-safe: one atomic add.
    FORK_GEN.fetch_add(1, Ordering::Relaxed);
}

/// Registers the fork handler (once per process).
pub(crate) fn register_atfork() {
    ATFORK.call_once(|| {
        #[allow(unsafe_code)]
        // SAFETY: registering a handler that only performs an atomic add, which is
        // async-signal-safe and so allowed in a forked child.
        let _ = unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
    });
}

pub(crate) fn fork_gen() -> u64 {
    FORK_GEN.load(Ordering::Relaxed) & 0xffff_ffff
}

enum Cmd {
    Claim(Arc<Attached>, mpsc::Sender<Option<usize>>),
    Release(Arc<Attached>, usize, mpsc::Sender<()>),
}

struct Keeper {
    gen: u64,
    tx: mpsc::Sender<Cmd>,
}

static KEEPER: Mutex<Option<Keeper>> = Mutex::new(None);

/// How long a caller waits for the keeper thread to answer.
const KEEPER_WAIT: Duration = Duration::from_secs(2);

fn keeper_loop(rx: mpsc::Receiver<Cmd>) {
    let mut held: Vec<(Arc<Attached>, usize)> = Vec::new();
    while let Ok(cmd) = rx.recv() {
        match cmd {
            Cmd::Claim(a, reply) => {
                let mut got = None;
                for slot in 1..crate::layout::STATS_SLOTS {
                    let Ok(m) = RobustMutex::at(&a.region, a.geo.stats_slot(slot), a.kind) else {
                        break;
                    };
                    match m.try_lock() {
                        Ok(acq) => {
                            if acq == Acquired::OwnerDied {
                                // The slot's counters are plain totals: nothing to repair.
                                m.mark_consistent();
                            }
                            got = Some(slot);
                            break;
                        }
                        Err(_) => continue,
                    }
                }
                match got {
                    // The caller gave up waiting (it counts in the shared slot instead):
                    // give the slot back at once rather than hold it, and the mapping,
                    // for a handle that will never release it.
                    Some(slot) if reply.send(got).is_err() => {
                        if let Ok(m) = RobustMutex::at(&a.region, a.geo.stats_slot(slot), a.kind) {
                            m.unlock();
                        }
                    }
                    Some(slot) => held.push((a, slot)),
                    // Unmap before answering, so a caller that closes right after holds
                    // no mapping (and no flock) through this thread.
                    None => {
                        drop(a);
                        let _ = reply.send(got);
                    }
                }
            }
            Cmd::Release(a, slot, reply) => {
                if let Some(i) = held
                    .iter()
                    .position(|(h, s)| Arc::ptr_eq(h, &a) && *s == slot)
                {
                    let (h, s) = held.swap_remove(i);
                    if let Ok(m) = RobustMutex::at(&h.region, h.geo.stats_slot(s), h.kind) {
                        m.unlock();
                    }
                    drop(h);
                }
                // As above: the caller may be closing the file and expects it released.
                drop(a);
                let _ = reply.send(());
            }
        }
    }
}

fn keeper_tx() -> Option<mpsc::Sender<Cmd>> {
    let gen = fork_gen();
    // In a forked child this mutex may have been copied locked from a parent thread that
    // does not exist here: never wait for it without a deadline. A live holder keeps it
    // for microseconds.
    let deadline = std::time::Instant::now() + Duration::from_millis(200);
    let mut guard = loop {
        match KEEPER.try_lock() {
            Ok(g) => break g,
            Err(std::sync::TryLockError::Poisoned(p)) => break p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                if std::time::Instant::now() >= deadline {
                    return None;
                }
                std::thread::yield_now();
            }
        }
    };
    if let Some(k) = guard.as_ref() {
        if k.gen == gen {
            return Some(k.tx.clone());
        }
    }
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("larder-keeper".into())
        .spawn(move || keeper_loop(rx))
        .ok()?;
    *guard = Some(Keeper {
        gen,
        tx: tx.clone(),
    });
    Some(tx)
}

/// The offset of this process's statistics slot in `a`, claiming one if needed.
#[inline]
pub(crate) fn slot_base(a: &Arc<Attached>) -> usize {
    let v = a.stats_slot.load(Ordering::Relaxed);
    let gen = fork_gen();
    if v != 0 && v >> 32 == gen {
        return a.geo.stats_slot(((v & 0xffff_ffff) - 1) as usize);
    }
    claim(a, v, gen)
}

#[cold]
fn claim(a: &Arc<Attached>, old: u64, gen: u64) -> usize {
    register_atfork();
    let slot = keeper_tx()
        .and_then(|tx| {
            let (rtx, rrx) = mpsc::channel();
            tx.send(Cmd::Claim(a.clone(), rtx)).ok()?;
            rrx.recv_timeout(KEEPER_WAIT).ok()?
        })
        .unwrap_or(0);
    let new = (gen << 32) | (slot as u64 + 1);
    match a
        .stats_slot
        .compare_exchange(old, new, Ordering::Relaxed, Ordering::Relaxed)
    {
        Ok(_) => a.geo.stats_slot(slot),
        Err(current) => {
            // Another thread claimed first: give ours back and use theirs.
            if slot != 0 {
                release_slot(a, slot);
            }
            if current >> 32 == gen {
                a.geo
                    .stats_slot(((current & 0xffff_ffff).max(1) - 1) as usize)
            } else {
                a.geo.stats_slot(0)
            }
        }
    }
}

fn release_slot(a: &Arc<Attached>, slot: usize) {
    if let Some(tx) = keeper_tx() {
        let (rtx, rrx) = mpsc::channel();
        if tx.send(Cmd::Release(a.clone(), slot, rtx)).is_ok() {
            let _ = rrx.recv_timeout(KEEPER_WAIT);
        }
    }
}

/// Gives back this process's slot in `a` (when the handle closes or reattaches).
pub(crate) fn release(a: &Arc<Attached>) {
    let v = a.stats_slot.swap(0, Ordering::Relaxed);
    if v != 0 && v >> 32 == fork_gen() && v & 0xffff_ffff > 1 {
        release_slot(a, ((v & 0xffff_ffff) - 1) as usize);
    }
}

/// Adds one to a counter of this process's slot.
#[inline]
pub(crate) fn bump(a: &Arc<Attached>, field: usize) {
    let base = slot_base(a);
    a.region.fetch_add(base + field, 1);
}
