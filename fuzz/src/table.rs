//! The `ops` and `scribble` harnesses: operation sequences on `larder::table::HeapTable`
//! (the whole table logic on a heap region) checked against a reference model.
//!
//! The model is a map from key to the last value stored. Eviction may drop any entry,
//! so a get may miss; but only after the shard counted an eviction or expiration, and
//! never does a get return a value that is not the key's last one (stale, removed,
//! expired or foreign). Repairs drop at most one entry per writer that died (none for a
//! consistent table), no operation finds a consistent table damaged (that would show as
//! a recovery nobody asked for), and `verify` stays clean after every step.
//!
//! The model also holds the version each key's entry was last seen with (`get_versioned`,
//! `set_if_version`), cleared by every other write: a `get_versioned` of an entry whose
//! version the model knows returns that version, any other returns a new one (never seen
//! before, and larger than every version of the shard seen before the entry was
//! written), and `set_if_version` stores exactly when the version it is given is the
//! entry's (or, once an eviction may have taken the entry, fails).
//!
//! And it counts revocations: every write of a key but a store with a ticket revokes it
//! (a `remove` or `replace` that finds nothing, an `insert_if_absent` that finds an
//! entry, an `incr` of a value that is not a counter and a `set_if_version` whose
//! version does not match included; a write refused for its size before it locks does
//! not), and `clear` revokes every key and counts as `FENCE_RING` revocations in every
//! shard. A `set_with_ticket` must be refused if its key was revoked since the ticket,
//! must store if not and its shard saw fewer than `FENCE_RING` revocations since, and
//! may do either beyond that (the model follows what it did).

use std::collections::HashMap;
use std::sync::OnceLock;

use larder::table::{FuzzTicket, HeapTable as Table};

use super::image::{
    self, key, value, How, Layout, SH_DROPPED, SH_EVICTIONS, SH_EXPIRATIONS, SH_INTENT,
    SH_RECOVERIES, SH_SEQ,
};

/// Table shapes `(capacity, max_key_len, max_value_len)`: one, two and four shards with
/// logs small enough that a few dozen operations wrap them, and one whose large values
/// go straight to the main log. (A capacity counts the 60 KiB before the shards too:
/// header, statistics, fill slots and near area.)
pub const CONFIGS: [(u64, usize, usize); 4] = [
    (86_016, 32, 300),
    (102_400, 32, 300),
    (143_360, 16, 200),
    (94_208, 40, 2_000),
];

/// Operations per input: enough to wrap the logs many times, few enough to stay fast.
pub const MAX_OPS: usize = 512;

/// Revocations a shard remembers one by one (larder's fence ring): a ticket whose shard
/// saw fewer since is judged exactly.
const FENCE_RING: u64 = 64;

/// What `verify` says about a shard whose writer "died" (`MarkDirty`, `Die`) and that
/// no operation has touched since: expected, not a problem.
const ODD_SEQ: &str = "sequence counter is odd: a write was left unfinished";
/// What it says about the intent record such a shard may hold (`Op::Die`).
const INTENT_LEFT: &str = "intent record left set";

#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Set {
        key: u8,
        len: u16,
        ttl: Option<u16>,
    },
    InsertIfAbsent {
        key: u8,
        len: u16,
        ttl: Option<u16>,
    },
    /// Sets keys `first`, `first + 1`, ... (`count % 65` of them, wrapping): fills logs
    /// and index buckets, so that short inputs reach eviction.
    SetMany {
        first: u8,
        count: u8,
        len: u16,
    },
    Get {
        key: u8,
    },
    /// `incr` with `init` 0 and no TTL.
    Incr {
        key: u8,
        delta: i16,
    },
    Replace {
        key: u8,
        len: u16,
        ttl: Option<u16>,
    },
    Remove {
        key: u8,
    },
    /// What a get that hits does to the visited bits (the table's get does not): sets
    /// bits of one bitmap word.
    Visit {
        shard: u8,
        word: u16,
        bits: u64,
    },
    /// Moves the clock forward by this many milliseconds.
    Advance {
        ms: u16,
    },
    Repair,
    /// Leaves a shard as a writer that died between operations would.
    MarkDirty {
        shard: u8,
    },
    /// Leaves a shard as a writer that died right after writing its intent record (for
    /// operation `op` on slot `slot`, wrapped into range): repair may drop that entry.
    Die {
        shard: u8,
        op: u8,
        slot: u16,
    },
    /// `get_versioned` (the locked path, which gives an entry without a version one).
    GetVersioned {
        key: u8,
    },
    /// `set_if_version` with the key's version as the model knows it (`stale: None`,
    /// or, if it knows none, the key's last one), or one of the versions the key had
    /// before (`Some(i)`, the `i`-th, wrapping); a key never seen with one uses 0, which
    /// no shard gives out.
    SetIfVersion {
        key: u8,
        len: u16,
        ttl: Option<u16>,
        stale: Option<u8>,
    },
    /// `ticket`, which the model remembers as the key's (replacing one it had).
    Ticket {
        key: u8,
    },
    /// `set_with_ticket` (no TTL) with the ticket the model remembers for the key; if it
    /// has none, with the last ticket taken of another key, which is an error. Nothing
    /// if no ticket was taken.
    SetWithTicket {
        key: u8,
        len: u16,
    },
    /// `clear`: every key revoked.
    Clear,
}

#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpsInput {
    pub config: u8,
    pub ops: Vec<Op>,
}

#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScribbleOp {
    Op(Op),
    /// A stray write to one word of a shard (its `word`-th, wrapping).
    Poke {
        shard: u8,
        word: u16,
        how: How,
    },
}

#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScribbleInput {
    pub config: u8,
    pub ops: Vec<ScribbleOp>,
}

/// The layout of each config, read from the header of a real file with the same
/// parameters (the table derives its layout exactly as a file does).
fn layouts() -> &'static [Layout] {
    static L: OnceLock<Vec<Layout>> = OnceLock::new();
    L.get_or_init(|| {
        CONFIGS
            .iter()
            .map(|&(cap, k, v)| {
                let opts = larder::Options::new()
                    .capacity(cap)
                    .max_key_len(k)
                    .max_value_len(v);
                Layout::from_header(&image::create_image(&opts, |_| {}))
            })
            .collect()
    })
}

#[derive(Debug, Clone)]
struct Expect {
    value: Vec<u8>,
    expire: u64,
    /// False once an eviction happened since the key was stored or seen: it may be gone.
    sure: bool,
    /// The entry's version, if the model saw the one it has now.
    version: Option<u64>,
    /// The largest version of the key's shard seen before the entry was written: one
    /// the model has not seen the entry with is larger.
    floor: u64,
}

impl Expect {
    fn fresh(&self, now: u64) -> bool {
        self.expire == 0 || self.expire > now
    }
}

/// The revocations of a key, the clears and the revocations of the key's shard up to
/// some instant.
#[derive(Debug, Clone, Copy)]
struct Counts {
    key: u64,
    clears: u64,
    shard: u64,
}

/// A table, its layout, and the model of what it holds.
pub struct Harness {
    pub table: Table,
    pub layout: &'static Layout,
    now: u64,
    version: u64,
    model: HashMap<u8, Expect>,
    /// Every version each key was seen with, oldest first.
    versions: HashMap<u8, Vec<u64>>,
    /// The largest version seen of each shard.
    top: HashMap<usize, u64>,
    /// Every `(shard, version)` seen: a new one must not be among them.
    given: std::collections::HashSet<(usize, u64)>,
    /// Revocations of each key (see the module docs).
    revocations: HashMap<u8, u64>,
    /// Clears: each revokes every key and counts `FENCE_RING` in every shard.
    clears: u64,
    /// Revocations of each shard's keys, clears apart.
    shard_revocations: HashMap<usize, u64>,
    /// The last ticket taken of each key, with the counts then.
    tickets: HashMap<u8, (FuzzTicket, Counts)>,
    /// The key of the last ticket taken.
    last_ticket: Option<u8>,
    /// Repairs the operations asked for; more would mean an operation found the
    /// (consistent) table damaged.
    allowed_recoveries: u64,
    /// Entries repairs may drop: one per writer that died (`Op::Die`).
    allowed_drops: u64,
    /// When false (after a stray write), results are no longer checked.
    pub checking: bool,
}

impl Harness {
    pub fn new(config: u8) -> Harness {
        let i = config as usize % CONFIGS.len();
        let (cap, k, v) = CONFIGS[i];
        let table = Table::new(cap, k, v).expect("table config");
        let layout = &layouts()[i];
        assert_eq!(table.size(), layout.total_size);
        Harness {
            table,
            layout,
            now: 1_000_000,
            version: 0,
            model: HashMap::new(),
            versions: HashMap::new(),
            top: HashMap::new(),
            given: std::collections::HashSet::new(),
            revocations: HashMap::new(),
            clears: 0,
            shard_revocations: HashMap::new(),
            tickets: HashMap::new(),
            last_ticket: None,
            allowed_recoveries: 0,
            allowed_drops: 0,
            checking: true,
        }
    }

    fn sum(&self, field: usize) -> u64 {
        self.table
            .shard_ranges()
            .iter()
            .map(|&(base, _)| self.table.peek(base + field))
            .fold(0, u64::wrapping_add)
    }

    fn evictions(&self) -> u64 {
        self.sum(SH_EVICTIONS)
            .wrapping_add(self.sum(SH_EXPIRATIONS))
    }

    fn key(&self, idx: u8) -> Vec<u8> {
        key(idx, self.layout.max_key_len)
    }

    /// A write that revokes key `idx` reached its shard's lock.
    fn revoke(&mut self, idx: u8) {
        *self.revocations.entry(idx).or_default() += 1;
        let shard = self.table.shard_of(&self.key(idx));
        *self.shard_revocations.entry(shard).or_default() += 1;
    }

    /// The revocation counts of key `idx` now.
    fn counts(&self, idx: u8) -> Counts {
        let shard = self.table.shard_of(&self.key(idx));
        Counts {
            key: self.revocations.get(&idx).copied().unwrap_or(0),
            clears: self.clears,
            shard: self.shard_revocations.get(&shard).copied().unwrap_or(0),
        }
    }

    /// Runs one operation and checks its result against the model.
    pub fn apply(&mut self, op: &Op) {
        let evictions = self.evictions();
        let stored = match *op {
            Op::Set { key, len, ttl } => self.store(key, len, ttl, false),
            Op::InsertIfAbsent { key, len, ttl } => self.store(key, len, ttl, true),
            Op::SetMany { first, count, len } => {
                // At most 64 a time, which bounds an input's work (and its run time).
                for i in 0..count % 65 {
                    let op = Op::Set {
                        key: first.wrapping_add(i),
                        len,
                        ttl: None,
                    };
                    self.apply(&op);
                }
                // Each set was checked (and its evictions accounted) on its own.
                return;
            }
            Op::Get { key } => {
                self.get(key);
                None
            }
            Op::Incr { key, delta } => self.incr(key, delta as i64),
            Op::Replace { key, len, ttl } => self.replace(key, len, ttl),
            Op::Remove { key } => {
                self.remove(key);
                None
            }
            Op::Visit { shard, word, bits } => {
                let l = self.layout;
                let off = l.shard_base(shard as usize)
                    + l.bitmap_off
                    + (word as usize % l.bitmap_words) * 8;
                self.table.poke(off, self.table.peek(off) | bits);
                None
            }
            Op::Advance { ms } => {
                self.now += ms as u64;
                None
            }
            Op::Repair => {
                self.allowed_recoveries += self.layout.shard_count as u64;
                self.table.repair_all();
                None
            }
            Op::MarkDirty { shard } => {
                self.allowed_recoveries += 1;
                self.table.mark_dirty(shard as usize);
                None
            }
            Op::Die { shard, op, slot } => {
                self.allowed_recoveries += 1;
                self.allowed_drops += 1;
                let l = self.layout;
                let slot = slot as usize % l.slots;
                let intent = (op % 8) as u64 | ((slot as u64) << 32);
                self.table
                    .poke(l.shard_base(shard as usize) + SH_INTENT, intent);
                self.table.mark_dirty(shard as usize);
                // Which key the slot holds is not modelled: any may be the one dropped.
                for e in self.model.values_mut() {
                    e.sure = false;
                }
                None
            }
            Op::GetVersioned { key } => self.get_versioned(key),
            Op::SetIfVersion {
                key,
                len,
                ttl,
                stale,
            } => self.set_if_version(key, len, ttl, stale),
            Op::Ticket { key } => {
                let t = self.table.ticket(&self.key(key));
                self.tickets.insert(key, (t, self.counts(key)));
                self.last_ticket = Some(key);
                None
            }
            Op::SetWithTicket { key, len } => self.set_with_ticket(key, len),
            Op::Clear => {
                self.clear();
                None
            }
        };
        if self.evictions() != evictions {
            // Any entry but the one just stored (eviction comes before the write) may be
            // gone now.
            for (k, e) in self.model.iter_mut() {
                if Some(*k) != stored {
                    e.sure = false;
                }
            }
        }
    }

    /// A set or insert_if_absent; the key if it stored the value.
    fn store(&mut self, idx: u8, len: u16, ttl: Option<u16>, only_if_absent: bool) -> Option<u8> {
        let k = self.key(idx);
        let max = self.layout.max_value_len;
        let len = len as usize % (max + 9);
        self.version += 1;
        let v = value(self.version, len);
        let expire = ttl.map_or(0, |t| self.now + t as u64);
        let r = self.table.set(&k, &v, expire, only_if_absent, self.now);
        if len <= max {
            // Whether or not it stores.
            self.revoke(idx);
        }
        if !self.checking {
            return None;
        }
        if len > max {
            assert_eq!(r, Err("too large".to_string()), "value of {len} bytes");
            return None;
        }
        let stored = r.unwrap_or_else(|e| panic!("set of key {idx} on a consistent table: {e}"));
        let fresh = self.model.get(&idx).filter(|e| e.fresh(self.now));
        match (fresh, stored) {
            (_, false) if !only_if_absent => panic!("set of key {idx} did not store"),
            // Not found, so it was gone before this call: only an eviction could do that.
            (Some(e), true) if only_if_absent => assert!(
                !e.sure,
                "insert_if_absent of key {idx} replaced a live entry"
            ),
            (None, false) => panic!(
                "insert_if_absent of key {idx} found an entry that was removed, expired or \
                 never stored"
            ),
            _ => {}
        }
        if stored {
            self.model.insert(
                idx,
                Expect {
                    value: v,
                    expire,
                    sure: true,
                    version: None,
                    floor: self.floor(idx),
                },
            );
            Some(idx)
        } else {
            if let Some(e) = self.model.get_mut(&idx) {
                e.sure = true;
            }
            None
        }
    }

    fn get(&mut self, idx: u8) {
        let k = self.key(idx);
        let r = self.table.get(&k, self.now);
        if !self.checking {
            return;
        }
        let got = r.unwrap_or_else(|e| panic!("get of key {idx} on a consistent table: {e}"));
        let now = self.now;
        match (self.model.get(&idx), got) {
            (Some(e), Some(v)) if e.fresh(now) => assert!(
                v == e.value,
                "get of key {idx}: wrong value ({} bytes, version {:?}; expected {} bytes, \
                 version {:?})",
                v.len(),
                v.get(..8),
                e.value.len(),
                e.value.get(..8)
            ),
            (Some(e), None) if e.fresh(now) => {
                assert!(!e.sure, "get of key {idx}: lost without an eviction");
                self.model.remove(&idx);
            }
            (_, Some(v)) => panic!(
                "get of key {idx} returned {} bytes for a key removed, expired or never stored",
                v.len()
            ),
            (_, None) => {}
        }
    }

    fn incr(&mut self, idx: u8, delta: i64) -> Option<u8> {
        let k = self.key(idx);
        let r = self.table.incr(&k, delta, 0, 0, self.now);
        // Whatever it returns.
        self.revoke(idx);
        if !self.checking {
            return None;
        }
        let got = r.unwrap_or_else(|e| panic!("incr of key {idx} on a consistent table: {e}"));
        let now = self.now;
        let fresh = self.model.get(&idx).filter(|e| e.fresh(now)).cloned();
        // What the table must answer if the entry is still there, and what it may answer
        // if an eviction took it (then the counter starts again from 0).
        let present = fresh
            .as_ref()
            .map(|e| match <[u8; 8]>::try_from(&e.value[..]) {
                Ok(w) => i64::from_le_bytes(w).checked_add(delta).ok_or("overflow"),
                Err(_) => Err("not a counter"),
            });
        let gone = Ok(delta);
        match (&fresh, present) {
            (Some(e), Some(want)) if e.sure => {
                assert_eq!(got, want, "incr of key {idx}")
            }
            (Some(_), Some(want)) => assert!(
                got == want || got == gone,
                "incr of key {idx}: {got:?}, expected {want:?} or {gone:?}"
            ),
            _ => assert_eq!(got, gone, "incr of key {idx} with no fresh entry"),
        }
        let v = got.ok()?;
        // An updated counter keeps its expiry; a new one has none.
        let expire = match (
            &fresh,
            got == gone && fresh.as_ref().is_some_and(|e| !e.sure),
        ) {
            (Some(e), false) => e.expire,
            _ => 0,
        };
        self.model.insert(
            idx,
            Expect {
                value: v.to_le_bytes().to_vec(),
                expire,
                sure: true,
                version: None,
                floor: self.floor(idx),
            },
        );
        Some(idx)
    }

    fn replace(&mut self, idx: u8, len: u16, ttl: Option<u16>) -> Option<u8> {
        let k = self.key(idx);
        let max = self.layout.max_value_len;
        let len = len as usize % (max + 9);
        self.version += 1;
        let v = value(self.version, len);
        let expire = ttl.map_or(0, |t| self.now + t as u64);
        let r = self.table.replace(&k, &v, expire, self.now);
        if len <= max {
            // Whether or not it finds an entry.
            self.revoke(idx);
        }
        if !self.checking {
            return None;
        }
        if len > max {
            assert_eq!(r, Err("too large".to_string()), "value of {len} bytes");
            return None;
        }
        let stored =
            r.unwrap_or_else(|e| panic!("replace of key {idx} on a consistent table: {e}"));
        let now = self.now;
        match self.model.get(&idx).filter(|e| e.fresh(now)) {
            Some(e) if e.sure => assert!(stored, "replace of key {idx}: live entry not found"),
            Some(_) => {}
            None => assert!(!stored, "replace of key {idx} stored over nothing"),
        }
        if !stored {
            if self.model.get(&idx).is_some_and(|e| e.fresh(now)) {
                // Evicted: the model forgets it, as a get that misses does.
                self.model.remove(&idx);
            }
            return None;
        }
        self.model.insert(
            idx,
            Expect {
                value: v,
                expire,
                sure: true,
                version: None,
                floor: self.floor(idx),
            },
        );
        Some(idx)
    }

    fn remove(&mut self, idx: u8) {
        let k = self.key(idx);
        let r = self.table.remove(&k, self.now);
        // Whether or not it finds an entry.
        self.revoke(idx);
        if !self.checking {
            return;
        }
        let removed =
            r.unwrap_or_else(|e| panic!("remove of key {idx} on a consistent table: {e}"));
        match self.model.remove(&idx) {
            Some(e) if e.fresh(self.now) => {
                assert!(
                    removed || !e.sure,
                    "remove of key {idx}: live entry not found"
                )
            }
            _ => assert!(!removed, "remove of key {idx} removed a dead entry"),
        }
    }

    /// The largest version of key `idx`'s shard seen so far.
    fn floor(&self, idx: u8) -> u64 {
        let shard = self.table.shard_of(&self.key(idx));
        self.top.get(&shard).copied().unwrap_or(0)
    }

    /// Records that key `idx` was seen with `version`: the one the model knew the entry
    /// had (`known`), or else a new one, given out since the write that left the shard's
    /// largest seen version at `floor`, and never seen before.
    fn saw_version(&mut self, idx: u8, version: u64, known: Option<u64>, floor: u64, what: &str) {
        let shard = self.table.shard_of(&self.key(idx));
        match known {
            Some(v) => assert_eq!(version, v, "{what} of key {idx}: the version changed"),
            None => {
                assert!(
                    version > floor,
                    "{what} of key {idx}: version {version}, but shard {shard} gave out \
                     {floor} before the entry was written"
                );
                assert!(
                    self.given.insert((shard, version)),
                    "{what} of key {idx}: version {version} of shard {shard} was seen before"
                );
            }
        }
        let top = self.top.entry(shard).or_insert(0);
        *top = (*top).max(version);
        let seen = self.versions.entry(idx).or_default();
        if seen.last() != Some(&version) {
            seen.push(version);
        }
    }

    /// `get_versioned`; the key if it hit (an entry without a version is written again).
    fn get_versioned(&mut self, idx: u8) -> Option<u8> {
        let k = self.key(idx);
        let r = self.table.get_versioned(&k, self.now);
        if !self.checking {
            return None;
        }
        let got =
            r.unwrap_or_else(|e| panic!("get_versioned of key {idx} on a consistent table: {e}"));
        let now = self.now;
        let fresh = self.model.get(&idx).filter(|e| e.fresh(now)).cloned();
        match (fresh, got) {
            (Some(e), Some((v, version))) => {
                assert!(
                    v == e.value,
                    "get_versioned of key {idx}: wrong value ({} bytes, expected {})",
                    v.len(),
                    e.value.len()
                );
                self.saw_version(idx, version, e.version, e.floor, "get_versioned");
                if let Some(e) = self.model.get_mut(&idx) {
                    e.version = Some(version);
                    e.sure = true;
                }
                Some(idx)
            }
            (Some(e), None) => {
                assert!(
                    !e.sure,
                    "get_versioned of key {idx}: lost without an eviction"
                );
                self.model.remove(&idx);
                None
            }
            (None, Some((v, _))) => panic!(
                "get_versioned of key {idx} returned {} bytes for a key removed, expired or \
                 never stored",
                v.len()
            ),
            (None, None) => None,
        }
    }

    /// `set_if_version`; the key if it stored the value.
    fn set_if_version(
        &mut self,
        idx: u8,
        len: u16,
        ttl: Option<u16>,
        stale: Option<u8>,
    ) -> Option<u8> {
        let k = self.key(idx);
        let max = self.layout.max_value_len;
        let len = len as usize % (max + 9);
        self.version += 1;
        let v = value(self.version, len);
        let expire = ttl.map_or(0, |t| self.now + t as u64);
        let now = self.now;
        let fresh = self.model.get(&idx).filter(|e| e.fresh(now)).cloned();
        let seen = self.versions.get(&idx).map(Vec::as_slice).unwrap_or(&[]);
        let version = match stale {
            None => fresh
                .as_ref()
                .and_then(|e| e.version)
                .or(seen.last().copied())
                .unwrap_or(0),
            Some(i) if !seen.is_empty() => seen[i as usize % seen.len()],
            Some(_) => 0,
        };
        let r = self.table.set_if_version(&k, &v, expire, version, now);
        if len <= max {
            // Whether or not the version matches.
            self.revoke(idx);
        }
        if !self.checking {
            return None;
        }
        if len > max {
            assert_eq!(r, Err("too large".to_string()), "value of {len} bytes");
            return None;
        }
        let stored =
            r.unwrap_or_else(|e| panic!("set_if_version of key {idx} on a consistent table: {e}"));
        let matches = fresh.as_ref().is_some_and(|e| e.version == Some(version));
        match (stored, &fresh) {
            (Some(_), _) if !matches => panic!(
                "set_if_version of key {idx} stored with version {version}, which the entry \
                 does not have ({:?})",
                fresh.map(|e| e.version)
            ),
            (None, Some(e)) if matches => {
                // Only an eviction (or a repair after a writer died) can have taken it.
                assert!(
                    !e.sure,
                    "set_if_version of key {idx}: its version {version} did not match"
                );
                self.model.remove(&idx);
                None
            }
            (None, _) => None,
            (Some(new), _) => {
                let floor = self.floor(idx);
                self.saw_version(idx, new, None, floor, "set_if_version");
                self.model.insert(
                    idx,
                    Expect {
                        value: v,
                        expire,
                        sure: true,
                        version: Some(new),
                        floor,
                    },
                );
                Some(idx)
            }
        }
    }

    /// `set_with_ticket`; the key if it stored the value.
    fn set_with_ticket(&mut self, idx: u8, len: u16) -> Option<u8> {
        let max = self.layout.max_value_len;
        let len = len as usize % (max + 9);
        self.version += 1;
        let v = value(self.version, len);
        let now = self.now;
        let Some(&(ticket, then)) = self.tickets.get(&idx) else {
            // A ticket of another key: refused before anything else (but the size).
            let other = self.last_ticket?;
            let (ticket, _) = self.tickets[&other];
            let r = self
                .table
                .set_with_ticket(&self.key(idx), &v, 0, ticket, now);
            if self.checking {
                let why = if len > max {
                    "too large"
                } else {
                    "a ticket of another key"
                };
                assert_eq!(
                    r,
                    Err(why.to_string()),
                    "set_with_ticket of key {idx} with key {other}'s ticket"
                );
            }
            return None;
        };
        let r = self
            .table
            .set_with_ticket(&self.key(idx), &v, 0, ticket, now);
        if !self.checking {
            return None;
        }
        if len > max {
            assert_eq!(r, Err("too large".to_string()), "value of {len} bytes");
            return None;
        }
        let stored =
            r.unwrap_or_else(|e| panic!("set_with_ticket of key {idx} on a consistent table: {e}"));
        let now_counts = self.counts(idx);
        let clears = now_counts.clears - then.clears;
        let revoked = now_counts.key != then.key || clears > 0;
        let since = now_counts.shard - then.shard + clears * FENCE_RING;
        if revoked {
            assert!(
                !stored,
                "set_with_ticket of key {idx} stored, though the key was revoked since the \
                 ticket"
            );
        } else if since < FENCE_RING {
            assert!(
                stored,
                "set_with_ticket of key {idx} refused: the key was not revoked since the \
                 ticket, and its shard saw only {since} revocations since"
            );
        }
        if !stored {
            // Refused, it changed nothing.
            return None;
        }
        let floor = self.floor(idx);
        self.model.insert(
            idx,
            Expect {
                value: v,
                expire: 0,
                sure: true,
                version: None,
                floor,
            },
        );
        Some(idx)
    }

    /// `clear`: no entry is left, and at least every entry the model is sure of was
    /// there.
    fn clear(&mut self) {
        let n = self.table.clear();
        self.clears += 1;
        let now = self.now;
        let sure = self
            .model
            .values()
            .filter(|e| e.sure && e.fresh(now))
            .count() as u64;
        self.model.clear();
        if self.checking {
            assert!(
                n >= sure,
                "clear counted {n} entries, but {sure} were certainly there"
            );
        }
    }

    /// Checks the counters and `verify` after an operation.
    pub fn check_table(&self, after: &dyn std::fmt::Debug) {
        let recoveries = self.sum(SH_RECOVERIES);
        assert!(
            recoveries <= self.allowed_recoveries,
            "after {after:?}: {recoveries} repairs, {} asked for: an operation found a \
             consistent table damaged",
            self.allowed_recoveries
        );
        let dropped = self.sum(SH_DROPPED);
        assert!(
            dropped <= self.allowed_drops,
            "after {after:?}: repairs dropped {dropped} entries, {} writers died",
            self.allowed_drops
        );
        let problems = self.problems();
        assert!(problems.is_empty(), "after {after:?}: verify: {problems:?}");
    }

    /// Problems `verify` reports, less the odd counters of shards left dirty on purpose.
    pub fn problems(&self) -> Vec<String> {
        let dirty = self
            .table
            .shard_ranges()
            .iter()
            .filter(|&&(base, _)| self.table.peek(base + SH_SEQ) & 1 == 1)
            .count();
        let mut problems = self.table.verify();
        let odd = problems.iter().filter(|p| p.as_str() == ODD_SEQ).count();
        if odd == dirty {
            problems.retain(|p| p != ODD_SEQ);
            // A writer that died (`Op::Die`) left its intent record: the next repair
            // reads and clears it.
            let intents = problems
                .iter()
                .filter(|p| p.starts_with(INTENT_LEFT))
                .count();
            if intents <= dirty {
                problems.retain(|p| !p.starts_with(INTENT_LEFT));
            }
        }
        problems
    }

    /// Every key the model is sure of, read back.
    pub fn check_all(&mut self) {
        let keys: Vec<u8> = self.model.keys().copied().collect();
        for k in keys {
            self.get(k);
        }
    }

    /// Applies a stray write to word `word` of shard `shard`.
    pub fn poke(&mut self, shard: u8, word: u16, how: How) {
        self.checking = false;
        let (base, size) = self.table.shard_ranges()[shard as usize % self.layout.shard_count];
        let words = size / 8;
        let off = base + (word as usize % words) * 8;
        let old = self.table.peek(off);
        let new = how.apply(old, |i| self.table.peek(base + (i as usize % words) * 8));
        self.table.poke(off, new);
    }
}

/// The `ops` target: every operation checked against the model, `verify` clean after
/// each.
pub fn run_ops(input: &OpsInput) {
    let mut h = Harness::new(input.config);
    for op in input.ops.iter().take(MAX_OPS) {
        h.apply(op);
        h.check_table(op);
    }
    h.check_all();
    h.check_table(&"the final reads");
}

/// The `scribble` target: operations checked against the model until the first stray
/// write, then run unchecked (they may fail, never panic). At the end a repair must
/// leave every shard consistent and working.
pub fn run_scribble(input: &ScribbleInput) {
    let mut h = Harness::new(input.config);
    for op in input.ops.iter().take(MAX_OPS) {
        match op {
            ScribbleOp::Op(op) => {
                h.apply(op);
                if h.checking {
                    h.check_table(op);
                }
            }
            ScribbleOp::Poke { shard, word, how } => h.poke(*shard, *word, *how),
        }
    }
    h.table.repair_all();
    let problems = h.problems();
    let problems: Vec<&String> = problems.iter().filter(|p| p.as_str() != ODD_SEQ).collect();
    assert!(problems.is_empty(), "verify after repair: {problems:?}");
    // A repaired table works: what is stored can be read back.
    let k = key(255, h.layout.max_key_len);
    let v = value(u64::MAX, 11);
    let now = h.now;
    assert_eq!(
        h.table.set(&k, &v, 0, false, now),
        Ok(true),
        "set after repair"
    );
    assert_eq!(h.table.get(&k, now), Ok(Some(v)), "get after repair");
}
