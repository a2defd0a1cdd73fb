//! Table logic on an in-memory region (also run under Miri).
//!
//! These tests drive [`Shard`] directly over [`Region::heap`] with a stand-in for the
//! shard lock: a `std::sync::Mutex` around every write section and every locked read.
//! The stand-in follows what `Cache::locked` does once it holds the real lock: a shard
//! whose sequence counter was left odd is repaired before anything else touches it.
//! Reads take the optimistic path first, exactly as `Cache::read` does.
//!
//! What Miri cannot run, and so what stays with the integration suites under `tests/`:
//! - the shard locks: robust, process-shared glibc mutexes rely on the kernel's robust
//!   futex list (`set_robust_list`, `FUTEX_OWNER_DIED`) and on futex waits on memory
//!   shared between processes, which Miri does not model;
//! - the file: `open`, `posix_fallocate`, `flock` and `mmap` of the cache file are
//!   foreign calls that Miri cannot execute, hence the heap region;
//! - processes: Miri runs one process, so a writer killed mid-write is simulated here.
//!   The helpers named `crash_*` (and `kill_repairer`) run the crate's own mutation
//!   (`Shard::set`, `remove`, `touch`, `clear`, eviction's `pop_head`, or the next
//!   owner's `repair`) in a write section with one of
//!   its crash points (`crashpoint::POINTS`) armed on the test's thread
//!   (`crashpoint::armed`). Reaching it panics; the panic unwinds out of the mutation
//!   and out of the section before it ends the write, and the helper catches it. The
//!   region is then exactly what a writer killed at that step leaves: the sequence
//!   counter odd, the intent record set, every store before the point made and none
//!   after. What the repair must make of it is worked out from the same code run on a
//!   twin of the shard (a copy of its region) killed where the mutation's own stores
//!   begin, so that evictions the mutation made first are counted in. Real kills are
//!   the crash suite's.

use core::sync::atomic::AtomicU64;
use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use proptest::prelude::*;

use crate::crashpoint::armed::{self, Killed};
use crate::evict::{Budget, Evict};
use crate::layout::{
    align8, record_size, Geometry, Params, BUCKET_SLOTS, INTENT_EVICT, INTENT_MOVE, RECORD_HEADER,
    SECRET_SIZE, SH_DROPPED, SH_ENTRIES, SH_EVICTIONS, SH_EXPIRATIONS, SH_INTENT, SH_LIVE_BYTES,
    SH_RECOVERIES, STATE_LIVE,
};
use crate::region::Region;
use crate::seqlock;
use crate::shard::{Damaged, Hasher, KeyHash, LogId, Probe, Put, Rec, SetOutcome, Shard};
use crate::words::Intent;

/// The test clock's start (ms); any non-zero time works, expiry 0 means "none".
const START_MS: u64 = 1_000_000;
/// One tick of the test clock.
const TICK_MS: u64 = 1_000;
/// Optimistic tries before a read takes the lock, as in `Cache`.
const OPTIMISTIC_TRIES: usize = 4;
/// Under Miri (a few thousand times slower) tests run fewer combinations and shorter
/// sequences; natively they run them all.
const MIRI: bool = cfg!(miri);

/// One shard of 28 KiB, so that eviction and wrap-around come quickly (and Miri stays
/// fast).
fn small_params() -> Params {
    Params {
        // 60 KiB of header, statistics and fill slots and near area (format 4), then
        // one shard of 28 KiB.
        capacity: 61_440 + 28_672,
        max_key_len: 32,
        max_value_len: 256,
        shards: 1,
        expected_entry: 64,
    }
}

/// Like [`small_params`], but values up to 1 KiB, so some go straight to main.
fn big_value_params() -> Params {
    Params {
        max_value_len: 1024,
        ..small_params()
    }
}

/// The smallest index a geometry can have: two buckets, 16 slots, so every key shares
/// one bucket pair and the 17th key evicts within the pair.
fn two_bucket_params() -> Params {
    Params {
        expected_entry: 1 << 26,
        ..small_params()
    }
}

/// Every entry a shard holds, live or expired: key -> (value, expiry ms, 0 = none).
type Contents = BTreeMap<Vec<u8>, (Vec<u8>, u64)>;

/// What a read found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Found {
    Fresh(Vec<u8>),
    Expired(Vec<u8>),
    Missing,
}

/// A shard over a heap region, with the stand-in lock.
struct Fixture {
    r: Region,
    g: Geometry,
    h: Hasher,
    lock: Mutex<()>,
}

fn splitmix(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn hit(p: Probe) -> Option<(usize, Rec)> {
    match p {
        Probe::Hit { slot, rec } => Some((slot, rec)),
        Probe::Miss => None,
        Probe::Bad => panic!("index slot points at no live record in a consistent shard"),
    }
}

impl Fixture {
    fn new(p: Params) -> Fixture {
        let g = Geometry::compute(&p).expect("test geometry");
        assert_eq!(g.shard_count, 1);
        let mut secret = [0u8; SECRET_SIZE];
        let mut x = 0x5eed;
        for b in secret.iter_mut() {
            *b = splitmix(&mut x) as u8;
        }
        Fixture {
            r: Region::heap(g.total_size),
            h: Hasher::new(&secret),
            g,
            lock: Mutex::new(()),
        }
    }

    fn shard(&self) -> Shard<'_> {
        Shard::new(&self.r, &self.g, 0, &self.h)
    }

    fn kh(&self, key: &[u8]) -> KeyHash {
        self.shard().locate(self.h.hash(key))
    }

    fn seq(&self) -> &AtomicU64 {
        self.r
            .atomic(self.shard().seq_off())
            .expect("sequence counter inside the region")
    }

    /// Takes the stand-in lock (a panicking test thread must not hide the next failure).
    fn guard(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// What the next lock owner does first (lock held): repairs the shard if its last
    /// writer left it mid-write. The entries the repair dropped, if it ran.
    fn recover_locked(&self) -> Option<u64> {
        let seq = self.seq();
        if !seqlock::is_dirty(seq) {
            return None;
        }
        seqlock::write_begin(seq);
        let dropped = self.shard().repair();
        seqlock::write_end(seq);
        Some(dropped)
    }

    /// Takes the stand-in lock and recovers, as any locked operation would.
    fn recover(&self) -> Option<u64> {
        let _g = self.guard();
        self.recover_locked()
    }

    /// One write section, as `Cache::locked` runs it. A healthy shard never reports
    /// damage, so damage fails the test instead of being repaired.
    fn write<R>(&self, f: impl FnOnce(&Shard<'_>) -> Result<R, Damaged>) -> R {
        let _g = self.guard();
        self.recover_locked();
        let seq = self.seq();
        seqlock::write_begin(seq);
        let r = f(&self.shard())
            .unwrap_or_else(|d| panic!("a consistent shard reported damage: {}", d.0));
        seqlock::write_end(seq);
        r
    }

    fn set(&self, key: &[u8], value: &[u8], expire: u64, now: u64) -> SetOutcome {
        let kh = self.kh(key);
        self.write(|s| s.set(key, &kh, value, expire, Put::Always, now))
    }

    fn insert_if_absent(&self, key: &[u8], value: &[u8], expire: u64, now: u64) -> SetOutcome {
        let kh = self.kh(key);
        self.write(|s| s.set(key, &kh, value, expire, Put::IfAbsent, now))
    }

    fn remove(&self, key: &[u8], now: u64) -> bool {
        let kh = self.kh(key);
        self.write(|s| s.remove(key, &kh, now))
    }

    fn touch(&self, key: &[u8], expire: u64, now: u64) -> bool {
        let kh = self.kh(key);
        self.write(|s| s.touch(key, &kh, expire, now))
    }

    fn clear(&self) -> u64 {
        self.write(|s| Ok(s.clear()))
    }

    /// A get as `Cache::read` does it: optimistic tries, then the lock (which repairs a
    /// shard left mid-write). Marks a fresh hit visited.
    fn get(&self, key: &[u8], now: u64) -> Found {
        let sh = self.shard();
        let kh = self.kh(key);
        let seq = self.seq();
        let mut out = Vec::new();
        let mut found = None;
        for _ in 0..OPTIMISTIC_TRIES {
            let Some(s) = seqlock::read_begin(seq) else {
                std::hint::spin_loop();
                continue;
            };
            let probe = match sh.find(key, &kh) {
                Probe::Hit { slot, rec } => {
                    sh.read_value(&rec, &mut out);
                    Some(Some((slot, rec.expired(now))))
                }
                Probe::Miss => Some(None),
                Probe::Bad => None,
            };
            if seqlock::read_validate(seq, s) {
                found = probe;
                break;
            }
        }
        let found = match found {
            Some(f) => f,
            None => {
                let _g = self.guard();
                self.recover_locked();
                hit(sh.find(key, &kh)).map(|(slot, rec)| {
                    sh.read_value(&rec, &mut out);
                    (slot, rec.expired(now))
                })
            }
        };
        match found {
            Some((slot, false)) => {
                sh.mark_visited(slot);
                Found::Fresh(out)
            }
            Some((_, true)) => Found::Expired(out),
            None => Found::Missing,
        }
    }

    /// Every entry (lock held).
    fn contents_locked(&self) -> Contents {
        let sh = self.shard();
        let mut m = Contents::new();
        sh.for_each(|rec| {
            let mut k = vec![0u8; rec.klen];
            sh.read_key(rec, &mut k);
            let mut v = Vec::new();
            sh.read_value(rec, &mut v);
            let dup = m.insert(k.clone(), (v, rec.expire));
            assert!(
                dup.is_none(),
                "key {:?} is live twice",
                String::from_utf8_lossy(&k)
            );
        });
        m
    }

    fn contents(&self) -> Contents {
        let _g = self.guard();
        self.contents_locked()
    }

    fn assert_clean(&self) {
        let _g = self.guard();
        let mut problems = Vec::new();
        self.shard().verify(&mut problems);
        assert!(problems.is_empty(), "verify found: {problems:#?}");
    }

    fn counter(&self, field: usize) -> u64 {
        self.shard().counter(field)
    }

    /// The log holding `key`'s record.
    fn log_of(&self, key: &[u8]) -> Option<LogId> {
        let _g = self.guard();
        let sh = self.shard();
        hit(sh.find(key, &self.kh(key))).map(|(_, rec)| {
            if rec.off >= sh.base + self.g.main_off {
                LogId::Main
            } else {
                LogId::Small
            }
        })
    }
}

fn key(i: u32) -> Vec<u8> {
    let mut k = format!("key{i}").into_bytes();
    k.resize(k.len() + (i as usize % 5), b'.');
    k
}

/// A value that names its key and version in its first bytes and derives the rest from
/// both, so a value from another key or an older version is never equal to it.
fn value(key_id: u32, version: u32, len: usize) -> Vec<u8> {
    let mut head = [0u8; 8];
    head[..4].copy_from_slice(&version.to_le_bytes());
    head[4..].copy_from_slice(&key_id.to_le_bytes());
    (0..len)
        .map(|i| {
            if i < 8 {
                head[i]
            } else {
                (key_id.wrapping_mul(31) ^ version.wrapping_mul(17)).wrapping_add(i as u32) as u8
            }
        })
        .collect()
}

fn expiry(now: u64, ttl_ticks: u8) -> u64 {
    if ttl_ticks == 0 {
        0
    } else {
        now + u64::from(ttl_ticks) * TICK_MS
    }
}

fn is_expired(expire: u64, now: u64) -> bool {
    expire != 0 && expire <= now
}

// ----- basic operations ------------------------------------------------------------

#[test]
fn set_get_update_remove_round_trip() {
    let fx = Fixture::new(small_params());
    let now = START_MS;
    assert_eq!(fx.get(b"a", now), Found::Missing);
    assert_eq!(fx.set(b"a", b"1", 0, now), SetOutcome::Inserted);
    assert_eq!(fx.get(b"a", now), Found::Fresh(b"1".to_vec()));
    assert_eq!(fx.set(b"a", b"twenty-two", 0, now), SetOutcome::Updated);
    assert_eq!(fx.get(b"a", now), Found::Fresh(b"twenty-two".to_vec()));
    assert_eq!(fx.set(b"empty", b"", 0, now), SetOutcome::Inserted);
    assert_eq!(fx.get(b"empty", now), Found::Fresh(Vec::new()));
    let big_key = vec![b'k'; 32];
    let big_value = value(9, 1, 256);
    assert_eq!(fx.set(&big_key, &big_value, 0, now), SetOutcome::Inserted);
    assert_eq!(fx.get(&big_key, now), Found::Fresh(big_value));
    assert!(fx.remove(b"a", now));
    assert!(!fx.remove(b"a", now));
    assert_eq!(fx.get(b"a", now), Found::Missing);
    assert_eq!(fx.counter(SH_ENTRIES), 2);
    fx.assert_clean();
}

#[test]
fn insert_if_absent_keeps_a_fresh_entry_and_replaces_an_expired_one() {
    let fx = Fixture::new(small_params());
    let mut now = START_MS;
    assert_eq!(
        fx.insert_if_absent(b"k", b"first", expiry(now, 2), now),
        SetOutcome::Inserted
    );
    assert_eq!(
        fx.insert_if_absent(b"k", b"second", 0, now),
        SetOutcome::Exists
    );
    assert_eq!(fx.get(b"k", now), Found::Fresh(b"first".to_vec()));
    now += 2 * TICK_MS;
    assert_eq!(fx.get(b"k", now), Found::Expired(b"first".to_vec()));
    assert_eq!(
        fx.insert_if_absent(b"k", b"third", 0, now),
        SetOutcome::Updated
    );
    assert_eq!(fx.get(b"k", now), Found::Fresh(b"third".to_vec()));
    fx.assert_clean();
}

#[test]
fn ttl_expires_touch_extends_and_remove_of_expired_reports_false() {
    let fx = Fixture::new(small_params());
    let mut now = START_MS;
    fx.set(b"t", b"v", expiry(now, 1), now);
    fx.set(b"u", b"w", expiry(now, 1), now);
    assert!(fx.touch(b"t", expiry(now, 5), now));
    assert!(!fx.touch(b"missing", 0, now));
    now += TICK_MS;
    assert_eq!(fx.get(b"t", now), Found::Fresh(b"v".to_vec()));
    assert_eq!(fx.get(b"u", now), Found::Expired(b"w".to_vec()));
    // An expired entry cannot be touched back to life.
    assert!(!fx.touch(b"u", 0, now));
    assert_eq!(fx.get(b"u", now), Found::Expired(b"w".to_vec()));
    // Removing it reports false (nothing fresh was removed) but removes it.
    assert!(!fx.remove(b"u", now));
    assert_eq!(fx.get(b"u", now), Found::Missing);
    // Touch with no TTL makes the entry permanent.
    assert!(fx.touch(b"t", 0, now));
    now += 100 * TICK_MS;
    assert_eq!(fx.get(b"t", now), Found::Fresh(b"v".to_vec()));
    fx.assert_clean();
}

#[test]
fn clear_empties_the_shard_and_counts_what_it_held() {
    let fx = Fixture::new(small_params());
    for i in 0..30 {
        fx.set(&key(i), &value(i, 1, 40), 0, START_MS);
    }
    let n = fx.contents().len() as u64;
    assert!(n > 0);
    assert_eq!(fx.clear(), n);
    assert!(fx.contents().is_empty());
    assert_eq!(fx.counter(SH_ENTRIES), 0);
    assert_eq!(fx.counter(SH_LIVE_BYTES), 0);
    for i in 0..30 {
        assert_eq!(fx.get(&key(i), START_MS), Found::Missing);
    }
    fx.assert_clean();
    fx.set(b"after", b"clear", 0, START_MS);
    assert_eq!(fx.get(b"after", START_MS), Found::Fresh(b"clear".to_vec()));
    fx.assert_clean();
}

// ----- eviction --------------------------------------------------------------------

#[test]
fn small_entry_read_once_is_promoted_to_main() {
    let fx = Fixture::new(small_params());
    let now = START_MS;
    // While main has room nothing is evicted: fill the cache first.
    let mut i = fill_until_evicting(&fx, 0);
    let hot = value(1000, 1, 24);
    fx.set(b"hot", &hot, 0, now);
    assert_eq!(fx.log_of(b"hot"), Some(LogId::Small));
    assert_eq!(fx.get(b"hot", now), Found::Fresh(hot.clone()));
    let evictions = fx.counter(SH_EVICTIONS);
    let start = i;
    while fx.log_of(b"hot") == Some(LogId::Small) {
        assert!(i < start + 100, "the hot entry never left the small log");
        fx.set(&key(i), &value(i, 1, 64), 0, now);
        i += 1;
    }
    // Read once while in the small log: moved to main although the cache is full.
    assert_eq!(fx.log_of(b"hot"), Some(LogId::Main));
    assert_eq!(fx.get(b"hot", now), Found::Fresh(hot));
    assert!(
        fx.counter(SH_EVICTIONS) > evictions,
        "a full cache made room"
    );
    fx.assert_clean();
}

#[test]
fn unread_small_entry_is_evicted_and_its_ghost_sends_it_to_main() {
    let fx = Fixture::new(small_params());
    let now = START_MS;
    let mut i = fill_until_evicting(&fx, 0);
    // Never read, so never visited: once the cache is full it leaves the small log by
    // eviction, unless main happens to have room at that moment (a promotion just
    // evicted from main): then try another.
    for attempt in 0..20u32 {
        let cold = format!("cold{attempt}").into_bytes();
        fx.set(&cold, b"once", 0, now);
        let start = i;
        while fx.log_of(&cold) == Some(LogId::Small) {
            assert!(i < start + 100, "the cold entry never left the small log");
            fx.set(&key(i), &value(i, 1, 64), 0, now);
            i += 1;
        }
        if fx.log_of(&cold).is_some() {
            continue;
        }
        assert_eq!(fx.get(&cold, now), Found::Missing);
        // The ghost remembers it: inserted again, it goes straight to main.
        fx.set(&cold, b"twice", 0, now);
        assert_eq!(fx.log_of(&cold), Some(LogId::Main));
        assert_eq!(fx.get(&cold, now), Found::Fresh(b"twice".to_vec()));
        fx.assert_clean();
        return;
    }
    panic!("no unread entry was ever evicted from the small log of a full cache");
}

/// Sets new keys from `key(from)` on until the shard evicts (the cache is full);
/// returns the next unused key number.
fn fill_until_evicting(fx: &Fixture, from: u32) -> u32 {
    let mut i = from;
    while fx.counter(SH_EVICTIONS) == 0 {
        assert!(i < from + 1000, "the shard never filled up");
        fx.set(&key(i), &value(i, 1, 200), 0, START_MS);
        i += 1;
    }
    i
}

#[test]
fn read_main_entry_is_reinserted_once_then_evicted() {
    let fx = Fixture::new(big_value_params());
    let now = START_MS;
    // Values over a quarter of the small log go straight to main.
    let big = |i: u32| value(i, 1, 600);
    assert!(record_size(8, 600) > fx.g.small_cap / 4);
    // An unread filler first: a move out of the head at offset 0 can never fit (the
    // log keeps 8 bytes between tail and head), so that entry is evicted even if read.
    fx.set(b"filler", &big(99), 0, now);
    fx.set(&key(0), &big(0), 0, now);
    fx.set(&key(1), &big(1), 0, now);
    assert_eq!(fx.log_of(&key(0)), Some(LogId::Main));
    assert_eq!(fx.get(&key(0), now), Found::Fresh(big(0)));
    let mut i = 2;
    while fx.log_of(&key(1)).is_some() {
        assert!(i < 200, "main never evicted its unread head");
        fx.set(&key(i), &big(i), 0, now);
        i += 1;
    }
    // key1 (unread) was evicted; key0 (read) got a second chance at main's tail.
    assert_eq!(fx.log_of(b"filler"), None);
    assert_eq!(fx.log_of(&key(0)), Some(LogId::Main));
    assert_eq!(fx.get(&key(0), now), Found::Fresh(big(0)));
    // That read set its bit again; clear it by reading nothing more and going round
    // twice: the first pass moves it (clearing the bit), the second evicts it.
    let mut j = i;
    while fx.log_of(&key(0)).is_some() {
        assert!(j < i + 200, "a reinserted entry was never evicted");
        fx.set(&key(j), &big(j), 0, now);
        j += 1;
    }
    fx.assert_clean();
}

#[test]
fn big_value_goes_straight_to_main() {
    let fx = Fixture::new(big_value_params());
    let v = value(3, 1, 900);
    fx.set(b"big", &v, 0, START_MS);
    assert_eq!(fx.log_of(b"big"), Some(LogId::Main));
    assert_eq!(fx.get(b"big", START_MS), Found::Fresh(v));
    fx.assert_clean();
}

#[test]
fn expired_entries_are_reclaimed_as_expirations() {
    let fx = Fixture::new(small_params());
    let mut now = START_MS;
    for i in 0..8 {
        fx.set(&key(i), &value(i, 1, 64), expiry(now, 1), now);
    }
    now += TICK_MS;
    for i in 0..8 {
        assert_eq!(fx.get(&key(i), now), Found::Expired(value(i, 1, 64)));
    }
    for i in 100..140 {
        fx.set(&key(i), &value(i, 1, 64), 0, now);
    }
    assert!(
        fx.counter(SH_EXPIRATIONS) >= 8,
        "expirations {}",
        fx.counter(SH_EXPIRATIONS)
    );
    for i in 0..8 {
        assert_eq!(fx.get(&key(i), now), Found::Missing);
    }
    fx.assert_clean();
}

#[test]
fn full_bucket_pair_evicts_an_expired_entry_first_then_an_unread_one() {
    let fx = Fixture::new(two_bucket_params());
    assert_eq!(fx.g.buckets, 2);
    let slots = 2 * BUCKET_SLOTS as u32;
    let mut now = START_MS;
    for i in 0..slots {
        let ttl = if i == 3 { 1 } else { 0 };
        fx.set(&key(i), &value(i, 1, 8), expiry(now, ttl), now);
    }
    assert_eq!(fx.counter(SH_ENTRIES), u64::from(slots));
    now += TICK_MS;
    for i in 0..slots {
        if i != 3 {
            let _ = fx.get(&key(i), now);
        }
    }
    fx.set(b"newcomer", b"x", 0, now);
    assert_eq!(fx.get(&key(3), now), Found::Missing);
    assert_eq!(fx.counter(SH_EXPIRATIONS), 1);
    // Every other entry was read (visited) except key7: it is the next victim.
    fx.set(b"second", b"y", 0, now);
    for i in 0..slots {
        let want = if i == 3 {
            Found::Missing
        } else {
            Found::Fresh(value(i, 1, 8))
        };
        if i != 3 && fx.get(&key(i), now) == Found::Missing {
            assert_eq!(fx.counter(SH_EVICTIONS), 1);
            continue;
        }
        assert_eq!(fx.get(&key(i), now), want, "key {i}");
    }
    assert_eq!(fx.get(b"newcomer", now), Found::Missing);
    assert_eq!(fx.get(b"second", now), Found::Fresh(b"y".to_vec()));
    assert_eq!(fx.counter(SH_EVICTIONS), 1);
    fx.assert_clean();
}

#[test]
#[cfg_attr(miri, ignore = "thousands of sets: minutes under Miri")]
fn logs_wrap_around_many_times_and_stay_consistent() {
    wrap_around(4_000, 1);
}

/// A shorter run of the same, for Miri.
#[test]
fn logs_wrap_around_and_stay_consistent() {
    wrap_around(160, 30);
}

fn wrap_around(ops: u32, verify_every: u32) {
    let fx = Fixture::new(small_params());
    let now = START_MS;
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut last_tail = [0usize; 2];
    let mut wraps = [0u32; 2];
    let mut x = 7;
    for op in 0..ops {
        let r = splitmix(&mut x);
        let id = (r % 97) as u32;
        let k = key(id);
        let v = value(id, op, 64 + (r >> 8) as usize % 193);
        fx.set(&k, &v, 0, now);
        model.insert(k.clone(), v.clone());
        if r & (1 << 40) != 0 {
            let other = key((r >> 20) as u32 % 97);
            match fx.get(&other, now) {
                Found::Fresh(got) => assert_eq!(Some(&got), model.get(&other)),
                Found::Missing => {
                    model.remove(&other);
                }
                Found::Expired(_) => panic!("no entry here has a TTL"),
            }
        }
        assert_eq!(fx.get(&k, now), Found::Fresh(v));
        for (i, which) in [LogId::Small, LogId::Main].into_iter().enumerate() {
            let (_, tail) = fx.shard().state(which).expect("log state");
            if tail < last_tail[i] {
                wraps[i] += 1;
            }
            last_tail[i] = tail;
        }
        if op % verify_every == 0 {
            fx.assert_clean();
            for (k, v) in fx.contents() {
                assert_eq!(model.get(&k), Some(&v.0), "stale or unknown value");
            }
        }
    }
    fx.assert_clean();
    assert!(wraps[0] >= 2, "the small log wrapped {} times", wraps[0]);
    assert!(wraps[1] >= 1, "the main log wrapped {} times", wraps[1]);
}

// ----- simulated crashes -----------------------------------------------------------

/// Where a writer of `Shard::set` is killed: the crash point armed for each stage is in
/// [`crash_set`] (`set.*` points, or `overwrite.*` where the value is overwritten in
/// place).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum SetCrash {
    AfterMakeRoom,
    AfterIntent,
    AfterKey,
    MidValue,
    AfterValue,
    AfterMarkOldDead,
    AfterForget,
    AfterPublish,
    AfterSlot,
}

const SET_CRASHES: [SetCrash; 9] = [
    SetCrash::AfterMakeRoom,
    SetCrash::AfterIntent,
    SetCrash::AfterKey,
    SetCrash::MidValue,
    SetCrash::AfterValue,
    SetCrash::AfterMarkOldDead,
    SetCrash::AfterForget,
    SetCrash::AfterPublish,
    SetCrash::AfterSlot,
];

/// Where a writer of `Shard::remove` is killed: right after the step each variant
/// names (`remove.after_intent`, `remove.after_mark_dead`, `remove.after_forget`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RemoveCrash {
    Intent,
    MarkDead,
    Forget,
}

/// Where a writer of `Shard::touch` is killed (`touch.after_intent`,
/// `touch.after_store`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TouchCrash {
    Intent,
    Store,
}

/// Where a writer of `Shard::clear` is killed (`clear.after_intent`,
/// `clear.after_small`, `clear.after_main`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClearCrash {
    Intent,
    SmallReset,
    MainReset,
}

/// Where a writer is killed while eviction pops a log's head: an evicted head dies at
/// `evict.after_pop`; a moved one at `move.after_pop`, `move.after_copy` or
/// `move.after_publish`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HeadCrash {
    Pop,
    Copy,
    Publish,
}

/// Whether the repairer is killed too, and where (`repair.*` crash points).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RepairCrash {
    No,
    AfterClearIndex,
    AfterRebuild,
}

const REPAIR_CRASHES: [RepairCrash; 3] = [
    RepairCrash::No,
    RepairCrash::AfterClearIndex,
    RepairCrash::AfterRebuild,
];

/// Where a killed writer stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kill {
    /// Right after its write section began (the counter odd), before the mutation ran:
    /// a death before the mutation's first store, where it has no crash point.
    AtStart,
    /// At a crash point, once the given number of earlier hits of it have passed.
    At(&'static str, u64),
}

/// The first hit of a crash point.
fn at(point: &'static str) -> Kill {
    Kill::At(point, 0)
}

/// A mutation of the shard, run by a test's write section (and again on a twin).
type Mutation<'m> = &'m dyn Fn(&Shard<'_>) -> Result<(), Damaged>;

impl Fixture {
    /// A copy of this shard, to run a mutation on ahead of the real run.
    fn twin(&self) -> Fixture {
        let twin = Fixture::new(self.g.params);
        let mut bytes = vec![0u8; self.g.total_size];
        {
            let _g = self.guard();
            self.r.read_bytes(0, &mut bytes);
        }
        twin.r.write_bytes(0, &bytes);
        twin
    }

    /// Runs `m` in one write section, as [`Fixture::write`] does, and kills the writer
    /// at `at`: true if it died there. The panic then unwound out of the real code and
    /// out of the section before its `write_end`, so the counter stays odd, and the
    /// region is as the crate's code left it at that step. False if `m` returned
    /// without reaching the point (the section then ended normally).
    fn write_killed(&self, at: Kill, m: Mutation<'_>) -> bool {
        assert!(
            self.recover().is_none(),
            "a shard must be clean before a simulated crash"
        );
        let section = || {
            self.write(|s| {
                if at == Kill::AtStart {
                    armed::kill("the start of a write section");
                }
                m(s)
            })
        };
        let result = match at {
            Kill::AtStart => armed::catch(section),
            Kill::At(point, skip) => {
                let _armed = armed::arm(point, skip);
                armed::catch(section)
            }
        };
        match result {
            Ok(()) => {
                assert!(!seqlock::is_dirty(self.seq()), "a finished write is closed");
                false
            }
            Err(killed) => {
                if let Kill::At(point, _) = at {
                    assert_eq!(killed, Killed(point));
                }
                assert!(
                    seqlock::is_dirty(self.seq()),
                    "a writer killed mid-write leaves the counter odd"
                );
                true
            }
        }
    }

    /// The entries as a writer of `m` killed at `at` leaves them, as its index names
    /// them: found on a twin, so this shard is untouched.
    fn contents_if_killed(&self, at: Kill, m: Mutation<'_>) -> Contents {
        let twin = self.twin();
        assert!(
            twin.write_killed(at, m),
            "the mutation never reached {at:?}"
        );
        twin.contents()
    }

    /// The intent record.
    fn intent(&self) -> Intent {
        Intent::decode(self.r.load(self.shard().hdr(SH_INTENT)))
    }
}

/// What a simulated crash leaves to check: the entries when the dead writer began the
/// stores of its own entry, and what the repair must make of that entry.
struct Crashed {
    before: Contents,
    key: Vec<u8>,
    /// The entry after repair: `None` if it must be gone.
    after: Option<(Vec<u8>, u64)>,
    /// Entries the repair must report dropped (the entry in flight, if lost).
    dropped: u64,
}

/// Runs `Shard::set` and kills it at `stage`.
///
/// `before` comes from a twin killed where the set's own stores begin: after it made
/// room in its log (which may evict other entries) and, past `AfterMakeRoom`, after it
/// found its slot (which may evict within a full bucket pair).
fn crash_set(fx: &Fixture, k: &[u8], v: &[u8], expire: u64, now: u64, stage: SetCrash) -> Crashed {
    let kh = fx.kh(k);
    let set = |s: &Shard<'_>| s.set(k, &kh, v, expire, Put::Always, now).map(drop);
    let found = {
        let _g = fx.guard();
        hit(fx.shard().find(k, &kh))
    };
    if found.is_some_and(|(_, old)| old.klen == k.len() && old.vlen == v.len()) {
        // Same lengths: the value is overwritten in place under its own intent record
        // (`overwrite.*` points), and repair drops the entry whatever was written.
        let before = fx.contents();
        let kept = before.get(k).cloned();
        let (kill, after, dropped) = match stage {
            // Killed before its first store (only a lookup runs before the intent
            // record): nothing happened.
            SetCrash::AfterMakeRoom => (Kill::AtStart, kept, 0),
            SetCrash::AfterIntent => (at("overwrite.after_intent"), None, 1),
            SetCrash::AfterKey | SetCrash::MidValue => (at("overwrite.mid_value"), None, 1),
            SetCrash::AfterValue => (at("overwrite.after_value"), None, 1),
            _ => (at("overwrite.after_expiry"), None, 1),
        };
        assert!(
            fx.write_killed(kill, &set),
            "the overwrite never reached {kill:?}"
        );
        return Crashed {
            before,
            key: k.to_vec(),
            after,
            dropped,
        };
    }
    let start = if stage == SetCrash::AfterMakeRoom {
        "set.after_make_room"
    } else {
        "set.after_intent"
    };
    let before = fx.contents_if_killed(at(start), &set);
    let kept = before.get(k).cloned();
    // Until the record is published the old entry stays, and a new key is lost (and
    // counted); once the old one is dead, both are gone; once published, it is new.
    let old = (kept.clone(), u64::from(kept.is_none()));
    let new = (Some((v.to_vec(), expire)), 0);
    let (point, (after, dropped)) = match stage {
        // The intent record is not set yet (make_room's own steps cleared theirs).
        SetCrash::AfterMakeRoom => ("set.after_make_room", (kept.clone(), 0)),
        SetCrash::AfterIntent => ("set.after_intent", old),
        SetCrash::AfterKey => ("set.after_key", old),
        SetCrash::MidValue => ("set.mid_value", old),
        SetCrash::AfterValue => ("set.after_value", old),
        SetCrash::AfterMarkOldDead if kept.is_some() => ("set.after_mark_old_dead", (None, 1)),
        // With an old entry, after it is forgotten too; a new key has none, and this
        // is the state of `set.after_value`.
        SetCrash::AfterMarkOldDead | SetCrash::AfterForget => ("set.before_publish", (None, 1)),
        SetCrash::AfterPublish => ("set.after_publish", new),
        SetCrash::AfterSlot => ("set.after_slot", new),
    };
    assert!(
        fx.write_killed(at(point), &set),
        "the set never reached {point}"
    );
    Crashed {
        before,
        key: k.to_vec(),
        after,
        dropped,
    }
}

/// Runs `Shard::remove` and kills it at `stage`; `None` if the key is absent (the
/// remove then reaches no point and finishes).
fn crash_remove(fx: &Fixture, k: &[u8], now: u64, stage: RemoveCrash) -> Option<Crashed> {
    let kh = fx.kh(k);
    let before = fx.contents();
    let kept = before.get(k).cloned();
    let (point, after) = match stage {
        RemoveCrash::Intent => ("remove.after_intent", kept.clone()),
        RemoveCrash::MarkDead => ("remove.after_mark_dead", None),
        RemoveCrash::Forget => ("remove.after_forget", None),
    };
    let killed = fx.write_killed(at(point), &|s| s.remove(k, &kh, now).map(drop));
    assert_eq!(killed, kept.is_some(), "remove of a key present: {point}");
    killed.then(|| Crashed {
        before,
        key: k.to_vec(),
        after,
        dropped: 0,
    })
}

/// Runs `Shard::touch` and kills it at `stage`; `None` if the key is absent or expired
/// (the touch then reaches no point and finishes).
fn crash_touch(
    fx: &Fixture,
    k: &[u8],
    expire: u64,
    now: u64,
    stage: TouchCrash,
) -> Option<Crashed> {
    let kh = fx.kh(k);
    let before = fx.contents();
    let fresh = before.get(k).filter(|(_, e)| !is_expired(*e, now)).cloned();
    let (point, after) = match stage {
        TouchCrash::Intent => ("touch.after_intent", fresh.clone()),
        TouchCrash::Store => ("touch.after_store", fresh.clone().map(|(v, _)| (v, expire))),
    };
    let killed = fx.write_killed(at(point), &|s| s.touch(k, &kh, expire, now).map(drop));
    assert_eq!(killed, fresh.is_some(), "touch of a fresh key: {point}");
    killed.then(|| Crashed {
        before,
        key: k.to_vec(),
        after,
        dropped: 0,
    })
}

/// Runs `Shard::clear` and kills it at `stage`: returns the entries as they were and
/// the ones the repair must keep.
fn crash_clear(fx: &Fixture, stage: ClearCrash) -> (Contents, Contents) {
    let before = fx.contents();
    let (point, kept) = match stage {
        ClearCrash::Intent => ("clear.after_intent", before.clone()),
        // The small log is empty, the main log not yet.
        ClearCrash::SmallReset => (
            "clear.after_small",
            before
                .iter()
                .filter(|(k, _)| fx.log_of(k) == Some(LogId::Main))
                .map(|(k, e)| (k.clone(), e.clone()))
                .collect(),
        ),
        ClearCrash::MainReset => ("clear.after_main", Contents::new()),
    };
    assert!(
        fx.write_killed(at(point), &|s| {
            s.clear();
            Ok(())
        }),
        "the clear never reached {point}"
    );
    (before, kept)
}

/// Runs eviction's pop of the head of `which` (`Shard::pop_head`, as making room runs
/// it) and kills it at `stage`: the head is moved to main's tail or evicted, as the
/// policy decides (an evicted head dies at `evict.after_pop`, whatever the stage).
/// `None` if the head is not a live, fresh entry that its slot names (the pop then
/// skips or drops it).
fn crash_head(fx: &Fixture, which: LogId, stage: HeadCrash, now: u64) -> Option<Crashed> {
    let (slot, k) = {
        let _g = fx.guard();
        let sh = fx.shard();
        let (start, cap, _) = sh.log_bounds(which);
        let (head, tail) = sh.state(which).expect("log state");
        let rec = (head != tail && cap - head >= RECORD_HEADER)
            .then(|| sh.read_rec(start + head, which))
            .flatten()
            .filter(|rec| {
                rec.state == STATE_LIVE
                    && !rec.expired(now)
                    && rec.slot < sh.slots()
                    && sh.slot_word(rec.slot).loc == sh.loc(rec.off)
            })?;
        let mut k = vec![0u8; rec.klen];
        sh.read_key(&rec, &mut k);
        (rec.slot, k)
    };
    let pop = |s: &Shard<'_>| {
        let (head, tail) = s.state(which)?;
        let mut budget = Budget::new(s.g.main_cap);
        s.pop_head(which, head, tail, now, &mut budget, Evict::IfFull)
            .map(drop)
    };
    // The points the pop reaches, in order, on a twin. A head moved out of the small
    // log first makes room in main, whose own moves come first: the head's own steps
    // are the last ones. A move with room for its copy runs copy, publish, pop (a crash
    // anywhere keeps the entry: two copies, of which repair keeps one); a move into the
    // room its own record frees runs pop, copy, publish (a crash before the publish
    // drops it), or pop alone if it does not fit even then (evicted). An evicted head
    // reaches `evict.after_pop` alone.
    let ((), trace) = {
        let twin = fx.twin();
        armed::trace(|| twin.write(pop))
    };
    let n = trace.len();
    let ends = |tail: &[&str]| n >= tail.len() && trace[n - tail.len()..] == *tail;
    let copy_first = ends(&["move.after_copy", "move.after_publish", "move.after_pop"]);
    let pop_first = ends(&["move.after_pop", "move.after_copy", "move.after_publish"]);
    let point = match stage {
        HeadCrash::Pop => "move.after_pop",
        HeadCrash::Copy => "move.after_copy",
        HeadCrash::Publish => "move.after_publish",
    };
    let (kill, op, before, after, dropped) = if copy_first || pop_first {
        let own = n - 3;
        let earlier = |p: &str| trace[..own].iter().filter(|q| **q == p).count() as u64;
        let first = trace[own];
        // The entries as the move begins: its first step changes nothing a repair keeps.
        let before = fx.contents_if_killed(Kill::At(first, earlier(first)), &pop);
        let kept = before.get(&k).cloned();
        let kill = Kill::At(point, earlier(point));
        if copy_first || stage == HeadCrash::Publish {
            // Two live copies (or the slot still naming the old place): kept.
            (kill, INTENT_MOVE, before, kept, 0)
        } else {
            (kill, INTENT_MOVE, before, None, 1)
        }
    } else if ends(&["move.after_pop"]) {
        // Popped first, then no room even so: evicted, lost either way.
        let own = n - 1;
        let earlier = trace[..own]
            .iter()
            .filter(|q| **q == "move.after_pop")
            .count() as u64;
        let popped = Kill::At("move.after_pop", earlier);
        let before = fx.contents_if_killed(popped, &pop);
        (popped, INTENT_MOVE, before, None, 1)
    } else {
        assert_eq!(trace, ["evict.after_pop"], "{which:?} head");
        (at("evict.after_pop"), INTENT_EVICT, fx.contents(), None, 0)
    };
    assert!(
        fx.write_killed(kill, &pop),
        "{which:?} head: the pop never reached {kill:?}"
    );
    // Killed in the head's own steps, not in those of a pop of main before them.
    assert_eq!(fx.intent(), Intent { op, slot }, "{which:?} head, {kill:?}");
    Some(Crashed {
        before,
        key: k,
        after,
        dropped,
    })
}

/// Kills the next lock owner's repair (the real `Shard::repair`) at `point`: the
/// counter stays odd, for the owner after it.
fn kill_repairer(fx: &Fixture, point: &'static str) {
    let _g = fx.guard();
    let _armed = armed::arm(point, 0);
    let result = armed::catch(|| fx.recover_locked());
    assert_eq!(
        result,
        Err(Killed(point)),
        "the repair never reached {point}"
    );
    assert!(seqlock::is_dirty(fx.seq()));
}

/// Kills the first repair after a crash at `how`, if at all.
fn kill_repair(fx: &Fixture, how: RepairCrash) {
    match how {
        RepairCrash::No => {}
        RepairCrash::AfterClearIndex => kill_repairer(fx, "repair.after_clear_index"),
        RepairCrash::AfterRebuild => kill_repairer(fx, "repair.after_rebuild"),
    }
}

/// After a simulated crash: the next reader finds the counter odd, falls back to the
/// lock and repairs. Checks every entry other than the one in flight is exactly as it
/// was, the one in flight is as `c.after` says (never an overwritten or removed value),
/// the repair reports exactly the entries it dropped (at most one), counts itself, and
/// leaves a shard that verifies clean.
fn check_recovery(fx: &Fixture, c: Crashed, repair: RepairCrash, now: u64) {
    let recoveries = fx.counter(SH_RECOVERIES);
    let dropped = fx.counter(SH_DROPPED);
    kill_repair(fx, repair);
    let read = fx.get(&c.key, now);
    let want = match &c.after {
        Some((v, e)) if is_expired(*e, now) => Found::Expired(v.clone()),
        Some((v, _)) => Found::Fresh(v.clone()),
        None => Found::Missing,
    };
    assert_eq!(read, want, "the entry in flight after repair");
    assert_eq!(
        fx.counter(SH_RECOVERIES),
        recoveries + 1,
        "recovery not counted"
    );
    let d = fx.counter(SH_DROPPED) - dropped;
    assert!(d <= 1, "repair dropped {d} entries");
    assert_eq!(d, c.dropped, "entries reported dropped");
    let mut expected = c.before;
    match c.after {
        Some(e) => expected.insert(c.key, e),
        None => expected.remove(&c.key),
    };
    assert_eq!(fx.contents(), expected, "entries after repair");
    fx.assert_clean();
}

/// A shard holding `n` entries, some in each log, none visited.
fn populated(p: Params, n: u32) -> Fixture {
    let fx = Fixture::new(p);
    for i in 0..n {
        fx.set(
            &key(i),
            &value(i, 1, 24 + (i as usize * 7) % 40),
            0,
            START_MS,
        );
    }
    fx
}

#[test]
fn killed_set_loses_at_most_the_entry_in_flight_and_never_resurrects() {
    for stage in SET_CRASHES {
        for existing in [false, true] {
            for repair in REPAIR_CRASHES {
                // Under Miri: one stage per kind of outcome (old value, gone, new value),
                // and the killed repairers at the one that loses the entry.
                let miri_stages = [
                    SetCrash::MidValue,
                    SetCrash::AfterMarkOldDead,
                    SetCrash::AfterPublish,
                ];
                if MIRI
                    && (!miri_stages.contains(&stage)
                        || (repair != RepairCrash::No && stage != SetCrash::AfterMarkOldDead))
                {
                    continue;
                }
                let fx = populated(small_params(), if MIRI { 6 } else { 12 });
                let k = if existing {
                    key(5)
                } else {
                    b"new-key".to_vec()
                };
                let v = value(77, 2, 50);
                let c = crash_set(&fx, &k, &v, 0, START_MS, stage);
                let what = format!("set {stage:?}, existing {existing}, repair {repair:?}");
                match stage {
                    SetCrash::AfterMarkOldDead | SetCrash::AfterForget => {
                        assert_eq!(c.after, None, "{what}")
                    }
                    SetCrash::AfterPublish | SetCrash::AfterSlot => {
                        assert_eq!(c.after, Some((v.clone(), 0)), "{what}")
                    }
                    _ => assert_eq!(c.after, c.before.get(&k).cloned(), "{what}"),
                }
                check_recovery(&fx, c, repair, START_MS);
            }
        }
    }
}

#[test]
fn killed_set_that_had_to_make_room_keeps_every_other_entry() {
    for stage in SET_CRASHES {
        if MIRI && stage != SetCrash::AfterForget {
            continue;
        }
        let fx = Fixture::new(small_params());
        fill_until_evicting(&fx, 0);
        let before = fx.counter(SH_EVICTIONS);
        let v = value(88, 3, 150);
        let c = crash_set(&fx, &key(3), &v, 0, START_MS, stage);
        assert!(fx.counter(SH_EVICTIONS) > before, "the set did not evict");
        check_recovery(&fx, c, RepairCrash::No, START_MS);
    }
}

#[test]
fn killed_remove_never_resurrects_the_removed_value() {
    for stage in [
        RemoveCrash::Intent,
        RemoveCrash::MarkDead,
        RemoveCrash::Forget,
    ] {
        for repair in REPAIR_CRASHES {
            if MIRI && repair != RepairCrash::No && stage != RemoveCrash::MarkDead {
                continue;
            }
            let fx = populated(small_params(), if MIRI { 6 } else { 12 });
            let c = crash_remove(&fx, &key(4), START_MS, stage).expect("present");
            check_recovery(&fx, c, repair, START_MS);
            if stage != RemoveCrash::Intent {
                assert_eq!(fx.get(&key(4), START_MS), Found::Missing);
            }
        }
    }
}

#[test]
fn killed_touch_keeps_the_value_with_one_of_the_two_expiries() {
    for stage in [TouchCrash::Intent, TouchCrash::Store] {
        let fx = populated(small_params(), if MIRI { 6 } else { 12 });
        let c =
            crash_touch(&fx, &key(2), START_MS + 5 * TICK_MS, START_MS, stage).expect("present");
        check_recovery(&fx, c, RepairCrash::No, START_MS);
    }
}

#[test]
fn killed_clear_keeps_only_what_it_had_not_reached() {
    for stage in [
        ClearCrash::Intent,
        ClearCrash::SmallReset,
        ClearCrash::MainReset,
    ] {
        let fx = Fixture::new(big_value_params());
        for i in 0..6 {
            fx.set(&key(i), &value(i, 1, 30), 0, START_MS);
            fx.set(&key(100 + i), &value(100 + i, 1, 600), 0, START_MS);
        }
        let (before, kept) = crash_clear(&fx, stage);
        assert!(kept.len() <= before.len());
        let recoveries = fx.counter(SH_RECOVERIES);
        assert_eq!(
            fx.get(&key(0), START_MS) == Found::Missing,
            !kept.contains_key(&key(0))
        );
        assert_eq!(fx.counter(SH_RECOVERIES), recoveries + 1);
        assert_eq!(fx.contents(), kept, "clear {stage:?}");
        fx.assert_clean();
    }
}

#[test]
fn killed_eviction_drops_or_keeps_the_moved_entry_whole() {
    for stage in [HeadCrash::Pop, HeadCrash::Copy, HeadCrash::Publish] {
        for which in [LogId::Small, LogId::Main] {
            for visited in [false, true] {
                if !visited && stage != HeadCrash::Pop {
                    continue; // an unread head is evicted: evict.after_pop is its only point
                }
                // Under Miri: an eviction, a move out of the small log killed mid-copy
                // and a move within main killed after publishing (the rest are the same
                // code paths; killed_move_with_a_killed_repairer_is_repaired_the_same has
                // the killed pop).
                let miri_cases = [
                    (LogId::Small, false, HeadCrash::Pop),
                    (LogId::Small, true, HeadCrash::Copy),
                    (LogId::Main, true, HeadCrash::Publish),
                ];
                if MIRI && !miri_cases.contains(&(which, visited, stage)) {
                    continue;
                }
                let fx = Fixture::new(small_params());
                if visited {
                    // Entries leave the small log for main as it fills; then read all.
                    let keys = if MIRI { 30 } else { 40 };
                    for i in 0..keys {
                        fx.set(&key(i), &value(i, 1, 48), 0, START_MS);
                    }
                    for i in 0..keys {
                        let _ = fx.get(&key(i), START_MS);
                    }
                } else {
                    // A full cache evicts unread heads (a cache with room moves them).
                    fill_until_evicting(&fx, 0);
                }
                let what = format!("{which:?} head, visited {visited}, {stage:?}");
                let c = crash_head(&fx, which, stage, START_MS)
                    .unwrap_or_else(|| panic!("{what}: no live head"));
                if !visited {
                    assert_eq!(c.after, None, "{what}");
                    assert_eq!(c.dropped, 0, "{what}");
                }
                check_recovery(&fx, c, RepairCrash::No, START_MS);
            }
        }
    }
}

#[test]
fn killed_move_with_a_killed_repairer_is_repaired_the_same() {
    for repair in REPAIR_CRASHES {
        for stage in [HeadCrash::Pop, HeadCrash::Publish] {
            if MIRI && stage != HeadCrash::Pop {
                continue;
            }
            let fx = Fixture::new(small_params());
            for i in 0..10 {
                fx.set(&key(i), &value(i, 1, 48), 0, START_MS);
                let _ = fx.get(&key(i), START_MS);
            }
            let c = crash_head(&fx, LogId::Small, stage, START_MS).expect("live head");
            check_recovery(&fx, c, repair, START_MS);
        }
    }
}

/// A read head moved out of the small log of a full cache: main first makes room for
/// it, moving and evicting its own heads, and the kill lands in the head's own move
/// after those (`crash_head` checks the intent record names it).
#[test]
fn killed_move_after_main_made_room_for_it_keeps_every_other_entry() {
    for stage in [HeadCrash::Pop, HeadCrash::Copy, HeadCrash::Publish] {
        if MIRI && stage != HeadCrash::Copy {
            continue;
        }
        let fx = Fixture::new(small_params());
        let n = fill_until_evicting(&fx, 0);
        for i in 0..n {
            let _ = fx.get(&key(i), START_MS);
        }
        let evictions = fx.counter(SH_EVICTIONS);
        let c = crash_head(&fx, LogId::Small, stage, START_MS).expect("live head");
        assert!(
            fx.counter(SH_EVICTIONS) > evictions,
            "{stage:?}: main did not make room"
        );
        check_recovery(&fx, c, RepairCrash::No, START_MS);
    }
}

/// Where the old record of a versioned rewrite is when making room for it reaches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OldAt {
    /// Main's head, in a main without room for its copy beside it.
    MainHeadNoRoom,
    /// Main's head, in a main with room for its copy but not for the new record.
    MainHeadRoomForCopy,
    /// The small log's head, unread, with both logs full.
    SmallHeadUnread,
}

/// The key of the `i`th entry [`fill_main_leaving`] writes: all of one length, so all
/// its records have one header and key size.
fn main_key(i: u32) -> Vec<u8> {
    format!("main{i:04}").into_bytes()
}

/// Fills main, from its start and without wrapping, with entries of values too big for
/// the small log (keys from `main_key(from)` on), until exactly `free` bytes are left for
/// one more record; returns the next unused key number.
fn fill_main_leaving(fx: &Fixture, free: usize, from: u32) -> u32 {
    let min_value = align8(fx.g.small_cap / 4 + 1);
    let mut i = from;
    loop {
        let (head, tail) = {
            let _g = fx.guard();
            fx.shard().state(LogId::Main).expect("main state")
        };
        assert_eq!(head, 0, "main wrapped or popped while it was filled");
        // Bytes a record fits in: the log keeps 8 free between its tail and its head.
        let left = fx.g.main_cap - 8 - tail - free;
        if left == 0 {
            return i;
        }
        let k = main_key(i);
        let over = record_size(k.len(), 0);
        let (min, max) = (over + min_value, over + (fx.g.params.max_value_len & !7));
        let rec = if left <= max {
            left
        } else if left - max >= min {
            max
        } else {
            left - min
        };
        assert!(rec >= min, "cannot leave exactly {free} bytes free");
        fx.set(&k, &value(i, 1, rec - over), 0, START_MS);
        assert_eq!(fx.log_of(&k), Some(LogId::Main));
        i += 1;
    }
}

/// A shard whose logs are full and whose oldest entry, `oldest`, has its record where
/// `at` says, written with `old` (with a version if `versioned`); nothing evicted yet.
fn full_with_oldest(at: OldAt, oldest: &[u8], old: &[u8], versioned: bool) -> Fixture {
    let fx = Fixture::new(big_value_params());
    let kh = fx.kh(oldest);
    let put = if versioned {
        Put::Versioned
    } else {
        Put::Always
    };
    fx.write(|s| s.set(oldest, &kh, old, 0, put, START_MS));
    let size = record_size(oldest.len(), old.len()) + if versioned { 8 } else { 0 };
    match at {
        OldAt::MainHeadNoRoom => {
            fill_main_leaving(&fx, size - 8, 0);
        }
        OldAt::MainHeadRoomForCopy => {
            fill_main_leaving(&fx, size, 0);
        }
        OldAt::SmallHeadUnread => {
            let mut i = fill_main_leaving(&fx, 0, 0);
            // Then the small log, until one more entry would pop its head.
            loop {
                let (k, v) = (key(i), value(i, 1, old.len()));
                let twin = fx.twin();
                twin.set(&k, &v, 0, START_MS);
                let popped = {
                    let _g = twin.guard();
                    twin.shard().state(LogId::Small).expect("small state").0 != 0
                };
                if popped {
                    break;
                }
                fx.set(&k, &v, 0, START_MS);
                assert_eq!(fx.log_of(&k), Some(LogId::Small));
                i += 1;
            }
        }
    }
    let log = if at == OldAt::SmallHeadUnread {
        LogId::Small
    } else {
        LogId::Main
    };
    assert_eq!(fx.log_of(oldest), Some(log), "{at:?}");
    assert_eq!(fx.counter(SH_EVICTIONS), 0, "{at:?}: the setup evicted");
    fx
}

/// A versioned rewrite of the oldest entry of a full shard (the first `get_versioned`
/// of an entry, which writes its value again with a version, or `set_if_version`)
/// never costs the entry when its writer is killed, at any step, also the steps of
/// making room: its old record is never evicted (even unread), moved only with its
/// copy published first, and where it is main's head with no room for that copy, room
/// is cut from main's tail instead. The repair keeps the old value or the new one and
/// drops nothing.
#[test]
fn killed_versioned_rewrite_of_a_full_shards_oldest_entry_keeps_it() {
    let k = b"oldest".to_vec();
    for at in [
        OldAt::MainHeadNoRoom,
        OldAt::MainHeadRoomForCopy,
        OldAt::SmallHeadUnread,
    ] {
        // An entry without a version written again with its value (`get_versioned`),
        // and a versioned one given a longer value (`set_if_version`).
        for versioned in [false, true] {
            if MIRI && (at, versioned) != (OldAt::MainHeadNoRoom, false) {
                continue;
            }
            let len = if at == OldAt::SmallHeadUnread {
                40
            } else {
                600
            };
            let old = value(1, 1, len);
            let new = if versioned {
                value(1, 2, len + 64)
            } else {
                old.clone()
            };
            let fx = full_with_oldest(at, &k, &old, versioned);
            let kh = fx.kh(&k);
            let rewrite =
                |s: &Shard<'_>| s.set(&k, &kh, &new, 0, Put::Versioned, START_MS).map(drop);
            let what = format!("{at:?}, versioned {versioned}");
            let ((), trace) = {
                let twin = fx.twin();
                let done = armed::trace(|| twin.write(rewrite));
                assert_eq!(twin.get(&k, START_MS), Found::Fresh(new.clone()), "{what}");
                assert!(twin.counter(SH_EVICTIONS) > 0, "{what}: no room was made");
                twin.assert_clean();
                done
            };
            let first_move = trace.iter().find(|p| p.starts_with("move."));
            match at {
                OldAt::MainHeadNoRoom => {
                    assert!(trace.contains(&"evict.after_cut"), "{what}: {trace:?}");
                    assert_eq!(first_move, None, "{what}: {trace:?}");
                }
                OldAt::MainHeadRoomForCopy | OldAt::SmallHeadUnread => {
                    assert!(!trace.contains(&"evict.after_cut"), "{what}: {trace:?}");
                    assert_eq!(first_move, Some(&"move.after_copy"), "{what}: {trace:?}");
                }
            }
            for (n, &point) in trace.iter().enumerate() {
                if MIRI && !matches!(point, "evict.after_cut" | "set.before_publish") {
                    continue;
                }
                let earlier = trace[..n].iter().filter(|p| **p == point).count() as u64;
                let twin = fx.twin();
                assert!(
                    twin.write_killed(Kill::At(point, earlier), &rewrite),
                    "{what}: never reached {point}"
                );
                let dropped = twin.counter(SH_DROPPED);
                let got = twin.get(&k, START_MS);
                assert!(
                    got == Found::Fresh(old.clone()) || got == Found::Fresh(new.clone()),
                    "{what}, killed at {point} ({earlier} earlier): {got:?}"
                );
                assert_eq!(
                    twin.counter(SH_DROPPED),
                    dropped,
                    "{what}, killed at {point}: the repair dropped an entry"
                );
                twin.assert_clean();
            }
        }
    }
}

#[test]
fn full_bucket_pair_of_read_entries_evicts_the_oldest() {
    let fx = Fixture::new(two_bucket_params());
    let slots = 2 * BUCKET_SLOTS as u32;
    for i in 0..slots {
        fx.set(&key(i), &value(i, 1, 8), 0, START_MS);
    }
    for i in 0..slots {
        assert_eq!(fx.get(&key(i), START_MS), Found::Fresh(value(i, 1, 8)));
    }
    // All read alike: the victim is the one nearest its log's head, key 0, then key 1.
    fx.set(b"newcomer", b"n", 0, START_MS);
    assert_eq!(fx.get(&key(0), START_MS), Found::Missing);
    // Read too, or the unread newcomer would be the next victim.
    assert_eq!(fx.get(b"newcomer", START_MS), Found::Fresh(b"n".to_vec()));
    fx.set(b"second", b"s", 0, START_MS);
    assert_eq!(fx.get(&key(1), START_MS), Found::Missing);
    for i in 2..slots {
        assert_eq!(
            fx.get(&key(i), START_MS),
            Found::Fresh(value(i, 1, 8)),
            "key {i}"
        );
    }
    assert_eq!(fx.counter(SH_EVICTIONS), 2);
    fx.assert_clean();
}

#[test]
fn killed_slot_eviction_in_a_full_bucket_pair_loses_only_the_victim() {
    let fx = Fixture::new(two_bucket_params());
    let slots = 2 * BUCKET_SLOTS as u32;
    for i in 0..slots {
        fx.set(&key(i), &value(i, 1, 8), 0, START_MS);
    }
    // Every entry but the victim is read, so the victim is the one a set of a new key
    // evicts from the full pair (free_slot's eviction), killed at
    // `evict_slot.after_mark_dead`.
    let victim = key(6);
    for i in (0..slots).filter(|&i| key(i) != victim) {
        assert_eq!(fx.get(&key(i), START_MS), Found::Fresh(value(i, 1, 8)));
    }
    let (slot, _) = {
        let _g = fx.guard();
        hit(fx.shard().find(&victim, &fx.kh(&victim))).expect("present")
    };
    let kh = fx.kh(b"newcomer");
    let set = |s: &Shard<'_>| {
        s.set(b"newcomer", &kh, b"n", 0, Put::Always, START_MS)
            .map(drop)
    };
    // The entries when the eviction begins: after the set made room in its log.
    let before = fx.contents_if_killed(at("set.after_make_room"), &set);
    assert!(fx.write_killed(at("evict_slot.after_mark_dead"), &set));
    assert_eq!(
        fx.intent(),
        Intent {
            op: INTENT_EVICT,
            slot
        },
        "the victim"
    );
    let c = Crashed {
        before,
        key: victim,
        after: None,
        dropped: 0,
    };
    check_recovery(&fx, c, RepairCrash::No, START_MS);
    // The freed slot is usable again.
    fx.set(b"newcomer", b"n", 0, START_MS);
    assert_eq!(fx.get(b"newcomer", START_MS), Found::Fresh(b"n".to_vec()));
    assert_eq!(fx.counter(SH_ENTRIES), u64::from(slots));
    fx.assert_clean();
}

#[test]
fn killed_overwrite_in_place_drops_the_entry_whatever_was_written() {
    for stage in SET_CRASHES {
        for repair in REPAIR_CRASHES {
            let miri_stages = [SetCrash::MidValue, SetCrash::AfterSlot];
            if MIRI
                && (!miri_stages.contains(&stage)
                    || (repair != RepairCrash::No && stage != SetCrash::MidValue))
            {
                continue;
            }
            let fx = populated(small_params(), if MIRI { 6 } else { 12 });
            let k = key(4);
            let old = fx.contents()[&k].0.clone();
            // Same key and value lengths: the set overwrites in place.
            let v = value(4, 2, old.len());
            let c = crash_set(&fx, &k, &v, 0, START_MS, stage);
            let what = format!("overwrite {stage:?}, repair {repair:?}");
            if stage == SetCrash::AfterMakeRoom {
                assert_eq!(c.after, Some((old, 0)), "{what}");
            } else {
                assert_eq!((c.after.clone(), c.dropped), (None, 1), "{what}");
            }
            check_recovery(&fx, c, repair, START_MS);
        }
    }
}

/// A repairer killed after it dropped the entry of an interrupted overwrite, before it
/// added the drop to the counter: the next repair finds the record already dead and
/// counts nothing, so the statistics say no entry was lost although one was.
#[test]
#[ignore = "bug: Shard::repair counts an INTENT_OVERWRITE drop only if the entry is still \
            live; a repeated repair reports 0 dropped (count it when the slot is empty \
            after the rebuild, as for INTENT_SET/INTENT_MOVE)"]
fn repair_killed_after_dropping_an_overwrite_still_counts_the_drop() {
    let fx = populated(small_params(), 6);
    let k = key(4);
    let len = fx.contents()[&k].0.len();
    let c = crash_set(&fx, &k, &value(4, 2, len), 0, START_MS, SetCrash::MidValue);
    // The first repair runs to its end but is killed before it counts.
    kill_repairer(&fx, "repair.after_in_flight");
    check_recovery(&fx, c, RepairCrash::No, START_MS);
}

#[test]
fn repair_of_a_consistent_shard_changes_nothing_and_is_idempotent() {
    let fx = populated(small_params(), if MIRI { 20 } else { 50 });
    let _ = fx.get(&key(1), START_MS);
    let before = fx.contents();
    for _ in 0..2 {
        let dropped = fx.write(|s| Ok(s.repair()));
        assert_eq!(dropped, 0);
        assert_eq!(fx.contents(), before);
        fx.assert_clean();
    }
    assert_eq!(fx.counter(SH_RECOVERIES), 2);
    assert_eq!(fx.counter(SH_DROPPED), 0);
}

// ----- optimistic reads racing a writer ---------------------------------------------

/// Readers on other threads read optimistically while one writer (holding the stand-in
/// lock) overwrites in place, sets, removes and evicts: a read returns the key's own
/// value of some version no older than any it saw before, or nothing, never a torn,
/// foreign or stale value.
/// Under Miri this also checks the protocol has no data race and no UB under weak
/// memory.
#[test]
fn optimistic_reads_racing_a_writer_never_see_torn_or_stale_values() {
    let (max_writes, reads) = if MIRI {
        (200, 60)
    } else {
        (5_000_000, 200_000)
    };
    let fx = Fixture::new(small_params());
    let keys = 24u32;
    // The writer runs until both readers are done, so that they overlap throughout.
    let readers_done = std::sync::atomic::AtomicU32::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut x = 11;
            for version in 1..=max_writes {
                if readers_done.load(std::sync::atomic::Ordering::Relaxed) == 2 {
                    break;
                }
                let r = splitmix(&mut x);
                let id = (r % u64::from(keys)) as u32;
                if r & 0xf == 0 {
                    fx.remove(&key(id), START_MS);
                } else {
                    // Mostly the key's own length, so most updates overwrite in place
                    // (the riskiest write for a racing reader); sometimes another,
                    // which appends a record and moves the slot.
                    let len = if r & 0x30 != 0 {
                        16 + id as usize * 5
                    } else {
                        8 + (r >> 8) as usize % 120
                    };
                    fx.set(&key(id), &value(id, version, len), 0, START_MS);
                }
            }
        });
        for t in 0..2u64 {
            let (fx, readers_done) = (&fx, &readers_done);
            s.spawn(move || {
                let mut seen = vec![0u32; keys as usize];
                let mut x = 100 + t;
                for _ in 0..reads {
                    let id = (splitmix(&mut x) % u64::from(keys)) as u32;
                    match fx.get(&key(id), START_MS) {
                        Found::Fresh(v) => {
                            assert!(v.len() >= 8, "short value {v:?}");
                            let version = u32::from_le_bytes(v[..4].try_into().expect("4"));
                            assert_eq!(v, value(id, version, v.len()), "torn or foreign value");
                            assert!(
                                version >= seen[id as usize],
                                "key {id}: version {version} after {}",
                                seen[id as usize]
                            );
                            seen[id as usize] = version;
                        }
                        Found::Missing => {}
                        Found::Expired(_) => panic!("no entry here has a TTL"),
                    }
                }
                readers_done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            });
        }
    });
    fx.assert_clean();
}

// ----- model-based random sequences -------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Set {
        key: u32,
        len: usize,
        ttl: u8,
    },
    InsertIfAbsent {
        key: u32,
        len: usize,
        ttl: u8,
    },
    Get {
        key: u32,
    },
    Remove {
        key: u32,
    },
    Touch {
        key: u32,
        ttl: u8,
    },
    Clear,
    Advance {
        ticks: u8,
    },
    CrashSet {
        key: u32,
        len: usize,
        ttl: u8,
        stage: SetCrash,
        repair: RepairCrash,
    },
    CrashRemove {
        key: u32,
        stage: RemoveCrash,
        repair: RepairCrash,
    },
    CrashTouch {
        key: u32,
        ttl: u8,
        stage: TouchCrash,
    },
    CrashClear {
        stage: ClearCrash,
    },
    CrashHead {
        main: bool,
        stage: HeadCrash,
        repair: RepairCrash,
    },
}

const KEYS: u32 = 40;

fn op_strategy() -> impl Strategy<Value = Op> {
    let k = 0..KEYS;
    // Mostly short values, sometimes up to the limit.
    let len = prop_oneof![3 => 8usize..64, 1 => 0usize..=256];
    let ttl = prop_oneof![3 => Just(0u8), 1 => 1u8..5];
    let set_stage = prop::sample::select(SET_CRASHES.to_vec());
    let repair = prop::sample::select(REPAIR_CRASHES.to_vec());
    let remove_stage = prop::sample::select(vec![
        RemoveCrash::Intent,
        RemoveCrash::MarkDead,
        RemoveCrash::Forget,
    ]);
    let touch_stage = prop::sample::select(vec![TouchCrash::Intent, TouchCrash::Store]);
    let clear_stage = prop::sample::select(vec![
        ClearCrash::Intent,
        ClearCrash::SmallReset,
        ClearCrash::MainReset,
    ]);
    let head_stage =
        prop::sample::select(vec![HeadCrash::Pop, HeadCrash::Copy, HeadCrash::Publish]);
    prop_oneof![
        20 => (k.clone(), len.clone(), ttl.clone())
            .prop_map(|(key, len, ttl)| Op::Set { key, len, ttl }),
        4 => (k.clone(), len.clone(), ttl.clone())
            .prop_map(|(key, len, ttl)| Op::InsertIfAbsent { key, len, ttl }),
        20 => k.clone().prop_map(|key| Op::Get { key }),
        4 => k.clone().prop_map(|key| Op::Remove { key }),
        3 => (k.clone(), ttl.clone()).prop_map(|(key, ttl)| Op::Touch { key, ttl }),
        1 => Just(Op::Clear),
        2 => (1u8..4).prop_map(|ticks| Op::Advance { ticks }),
        3 => (k.clone(), len, ttl.clone(), set_stage, repair.clone()).prop_map(
            |(key, len, ttl, stage, repair)| Op::CrashSet { key, len, ttl, stage, repair }
        ),
        1 => (k.clone(), remove_stage, repair.clone())
            .prop_map(|(key, stage, repair)| Op::CrashRemove { key, stage, repair }),
        1 => (k, ttl, touch_stage).prop_map(|(key, ttl, stage)| Op::CrashTouch { key, ttl, stage }),
        1 => clear_stage.prop_map(|stage| Op::CrashClear { stage }),
        2 => (any::<bool>(), head_stage, repair)
            .prop_map(|(main, stage, repair)| Op::CrashHead { main, stage, repair }),
    ]
}

/// The reference: every entry the shard may hold, with its value and expiry. The shard
/// may have evicted any of them (it then must not hold it), but what it holds must be
/// here, exactly.
struct Model {
    entries: Contents,
    now: u64,
    version: u32,
}

impl Model {
    fn fresh(&self, k: &[u8]) -> bool {
        self.entries
            .get(k)
            .is_some_and(|(_, e)| !is_expired(*e, self.now))
    }

    /// A read found nothing: whatever the model had is evicted or reclaimed.
    fn gone(&mut self, k: &[u8]) {
        self.entries.remove(k);
    }
}

fn run_ops(fx: &Fixture, ops: &[Op], verify_every: usize) {
    let mut m = Model {
        entries: Contents::new(),
        now: START_MS,
        version: 0,
    };
    for (n, op) in ops.iter().enumerate() {
        m.version += 1;
        let now = m.now;
        match *op {
            Op::Set { key: id, len, ttl } => {
                let (k, v, e) = (key(id), value(id, m.version, len), expiry(now, ttl));
                let out = fx.set(&k, &v, e, now);
                if !m.entries.contains_key(&k) {
                    assert_eq!(out, SetOutcome::Inserted, "set of an unknown key updated");
                }
                m.entries.insert(k, (v, e));
            }
            Op::InsertIfAbsent { key: id, len, ttl } => {
                let (k, v, e) = (key(id), value(id, m.version, len), expiry(now, ttl));
                match fx.insert_if_absent(&k, &v, e, now) {
                    SetOutcome::Exists => assert!(m.fresh(&k), "kept an entry that is not fresh"),
                    _ => {
                        m.entries.insert(k, (v, e));
                    }
                }
            }
            Op::Get { key: id } => {
                let k = key(id);
                match fx.get(&k, now) {
                    Found::Fresh(v) => {
                        assert!(m.fresh(&k), "fresh value for {id} the model lacks");
                        assert_eq!(Some(&v), m.entries.get(&k).map(|e| &e.0), "key {id}");
                    }
                    Found::Expired(v) => {
                        assert!(!m.fresh(&k), "expired value of a fresh entry");
                        assert_eq!(Some(&v), m.entries.get(&k).map(|e| &e.0), "key {id}");
                    }
                    Found::Missing => m.gone(&k),
                }
            }
            Op::Remove { key: id } => {
                let k = key(id);
                if fx.remove(&k, now) {
                    assert!(m.fresh(&k), "removed a fresh entry the model lacks");
                }
                m.entries.remove(&k);
            }
            Op::Touch { key: id, ttl } => {
                let (k, e) = (key(id), expiry(now, ttl));
                if fx.touch(&k, e, now) {
                    assert!(m.fresh(&k), "touched an entry that is not fresh");
                    if let Some(entry) = m.entries.get_mut(&k) {
                        entry.1 = e;
                    }
                } else if m.fresh(&k) {
                    m.gone(&k);
                }
            }
            Op::Clear => {
                let n = fx.clear();
                assert!(n as usize <= m.entries.len(), "cleared {n} entries");
                m.entries.clear();
            }
            Op::Advance { ticks } => m.now += u64::from(ticks) * TICK_MS,
            Op::CrashSet {
                key: id,
                len,
                ttl,
                stage,
                repair,
            } => {
                let (k, v, e) = (key(id), value(id, m.version, len), expiry(now, ttl));
                check_recovery(fx, crash_set(fx, &k, &v, e, now, stage), repair, now);
            }
            Op::CrashRemove {
                key: id,
                stage,
                repair,
            } => {
                if let Some(c) = crash_remove(fx, &key(id), now, stage) {
                    check_recovery(fx, c, repair, now);
                }
            }
            Op::CrashTouch {
                key: id,
                ttl,
                stage,
            } => {
                if let Some(c) = crash_touch(fx, &key(id), expiry(now, ttl), now, stage) {
                    check_recovery(fx, c, RepairCrash::No, now);
                }
            }
            Op::CrashClear { stage } => {
                let (_, kept) = crash_clear(fx, stage);
                fx.recover().expect("the dead writer left the counter odd");
                assert_eq!(fx.contents(), kept);
            }
            Op::CrashHead {
                main,
                stage,
                repair,
            } => {
                let which = if main { LogId::Main } else { LogId::Small };
                if let Some(c) = crash_head(fx, which, stage, now) {
                    check_recovery(fx, c, repair, now);
                }
            }
        }
        let held = fx.contents();
        if matches!(
            op,
            Op::CrashSet { .. }
                | Op::CrashRemove { .. }
                | Op::CrashTouch { .. }
                | Op::CrashClear { .. }
                | Op::CrashHead { .. }
        ) {
            // check_recovery proved the shard holds exactly what the crash allows:
            // that is the model from here on.
            m.entries = held;
        } else {
            for (k, e) in &held {
                assert_eq!(
                    m.entries.get(k),
                    Some(e),
                    "the shard holds {:?} with a value or expiry the model does not",
                    String::from_utf8_lossy(k)
                );
            }
        }
        if n % verify_every == 0 {
            fx.assert_clean();
        }
    }
    fx.assert_clean();
}

fn model_config() -> ProptestConfig {
    ProptestConfig {
        cases: if MIRI { 1 } else { 256 },
        // Miri has no file system (isolation); the seed is printed on failure instead.
        failure_persistence: None,
        max_shrink_iters: if MIRI { 0 } else { 4096 },
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(model_config())]

    /// Random sequences of every operation and of simulated crashes at every crash point
    /// against the model: never a wrong, stale or resurrected value, repair drops at
    /// most the entry in flight, and the shard always verifies clean.
    #[test]
    fn random_operations_and_crashes_match_the_model(
        ops in prop::collection::vec(op_strategy(), 1..if MIRI { 24 } else { 300 })
    ) {
        let fx = Fixture::new(small_params());
        run_ops(&fx, &ops, if MIRI { 6 } else { 1 });
    }

    /// The same with the two-bucket index, where sets evict within the bucket pair.
    #[test]
    fn random_operations_on_a_tiny_index_match_the_model(
        ops in prop::collection::vec(op_strategy(), 1..if MIRI { 20 } else { 200 })
    ) {
        let fx = Fixture::new(two_bucket_params());
        run_ops(&fx, &ops, if MIRI { 6 } else { 1 });
    }
}
