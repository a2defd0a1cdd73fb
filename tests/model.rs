//! Model tests through the public API: random operation sequences against a reference
//! model, in one process (exact, and with eviction) and split across several processes
//! (per-key monotonic versions, so a stale or resurrected value is caught).
//!
//! Both models also know each key's `get_versioned` version (larder's [`larder::Version`],
//! not the versions inside the values): it stays until the next write of the key other
//! than `touch`, and a `set_if_version` stores exactly while it stays (and the entry is
//! fresh). A version the model does not know is new: given out after the key's last
//! write began, so larger than any version of the shard seen before that write, and
//! never seen before.
//!
//! The one-process model also knows the fences (larder's revocation fencing): every
//! write of a key but `touch` revokes it (a `remove` or `replace` that finds nothing,
//! an `insert_if_absent` that finds an entry and an `incr` of a value that is not a
//! counter included; a fill's store and a store with a ticket revoke nothing), and a
//! `clear` revokes every key and counts as a whole ring of revocations in every shard.
//! A `set_with_ticket` must be refused if its key was revoked since the ticket, must
//! store if not and its shard saw fewer revocations than the ring holds, and may do
//! either beyond that (the model follows). A fill whose function revokes its key is
//! fenced off exactly: its caller gets the value, the cache keeps the revocation.
//!
//! TTLs run on a manual test clock in ticks of 1000 s. The manual clock also runs with
//! the system's, so real time adds a few milliseconds to every expiry and every "now";
//! with TTLs and advances in whole ticks that drift can never move an entry across its
//! expiry, and the model stays exact.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

mod common;
use common::{child_role, poll_until, self_command, ChildGuard, TempCache};

/// One tick of the test clock.
const TICK: Duration = Duration::from_secs(1000);

fn key(i: u32) -> Vec<u8> {
    let mut k = format!("key-{i}").into_bytes();
    k.resize(k.len() + (i as usize % 7) * 3, b'~');
    k
}

/// A value that names its key and version in its first bytes and derives the rest from
/// both, so a value of another key or an older version never equals it.
fn value(key_id: u32, version: u32, len: usize) -> Vec<u8> {
    let mut head = [0u8; 8];
    head[..4].copy_from_slice(&version.to_le_bytes());
    head[4..].copy_from_slice(&key_id.to_le_bytes());
    (0..len)
        .map(|i| {
            if i < 8 {
                head[i]
            } else {
                (key_id.wrapping_mul(131) ^ version.wrapping_mul(29)).wrapping_add(i as u32) as u8
            }
        })
        .collect()
}

fn ttl(ticks: u8) -> Option<Duration> {
    (ticks != 0).then(|| TICK * u32::from(ticks))
}

/// The error of the fill functions here: theirs, or the cache's.
#[derive(Debug)]
enum FillError {
    Refused,
    Cache(larder::Error),
}

impl From<larder::Error> for FillError {
    fn from(e: larder::Error) -> Self {
        FillError::Cache(e)
    }
}

// ----- one process ---------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    Set {
        key: u32,
        len: usize,
        ttl: u8,
    },
    Get {
        key: u32,
    },
    GetInto {
        key: u32,
    },
    GetStale {
        key: u32,
    },
    InsertIfAbsent {
        key: u32,
        len: usize,
        ttl: u8,
    },
    Remove {
        key: u32,
    },
    Touch {
        key: u32,
        ttl: u8,
    },
    Clear,
    /// `get_or_insert_with`; if it computes, its function first runs `inner` (never a
    /// fill) on the same handle: a revocation of the key there fences the fill off.
    Fill {
        key: u32,
        len: usize,
        ttl: u8,
        fail: bool,
        inner: Option<Box<Op>>,
    },
    Advance {
        ticks: u8,
    },
    Incr {
        key: u32,
        delta: i8,
        ttl: u8,
    },
    Replace {
        key: u32,
        len: usize,
        ttl: u8,
    },
    GetMany {
        keys: Vec<u32>,
    },
    GetVersioned {
        key: u32,
    },
    /// `set_if_version` with the version the model knows an entry has (`stale: None`: of
    /// the `pick`-th key, wrapping, of those it knows one of), or with one a key ever had
    /// (`Some(i)`: the `i`-th of the `pick`-th key seen with one). Nothing if no key
    /// qualifies.
    SetIfVersion {
        pick: u32,
        len: usize,
        ttl: u8,
        stale: Option<u8>,
    },
    /// `ticket`, which the model remembers as the key's (replacing one it had).
    Ticket {
        key: u32,
    },
    /// `set_with_ticket` of the `pick`-th key (wrapping) of those the model remembers a
    /// ticket for, with that ticket; with `wrong`, of the next such key (if there is
    /// another), which is an invalid argument. Nothing if the model remembers none.
    SetWithTicket {
        pick: u32,
        len: usize,
        ttl: u8,
        wrong: bool,
    },
}

impl Op {
    /// The same operation on key `id` instead (those without a key are left as they
    /// are).
    fn on_key(self, id: u32) -> Op {
        match self {
            Op::Set { len, ttl, .. } => Op::Set { key: id, len, ttl },
            Op::Get { .. } => Op::Get { key: id },
            Op::GetInto { .. } => Op::GetInto { key: id },
            Op::GetStale { .. } => Op::GetStale { key: id },
            Op::InsertIfAbsent { len, ttl, .. } => Op::InsertIfAbsent { key: id, len, ttl },
            Op::Remove { .. } => Op::Remove { key: id },
            Op::Touch { ttl, .. } => Op::Touch { key: id, ttl },
            Op::Incr { delta, ttl, .. } => Op::Incr {
                key: id,
                delta,
                ttl,
            },
            Op::Replace { len, ttl, .. } => Op::Replace { key: id, len, ttl },
            Op::GetVersioned { .. } => Op::GetVersioned { key: id },
            Op::Ticket { .. } => Op::Ticket { key: id },
            other => other,
        }
    }
}

/// What a fill's function does before it returns (`Op::Fill`'s `inner`): mostly
/// revocations, but also writes that revoke nothing (`touch`, a store with a ticket)
/// and reads; of the fill's own key with `same`, else of any key.
fn inner_strategy(
    keys: u32,
    len: BoxedStrategy<usize>,
    t: BoxedStrategy<u8>,
) -> impl Strategy<Value = Op> {
    let k = 0..keys;
    prop_oneof![
        3 => (k.clone(), len.clone(), t.clone())
            .prop_map(|(key, len, ttl)| Op::Set { key, len, ttl }),
        3 => k.clone().prop_map(|key| Op::Remove { key }),
        2 => (k.clone(), len.clone(), t.clone())
            .prop_map(|(key, len, ttl)| Op::InsertIfAbsent { key, len, ttl }),
        2 => (k.clone(), len.clone(), t.clone())
            .prop_map(|(key, len, ttl)| Op::Replace { key, len, ttl }),
        2 => (k.clone(), any::<i8>(), t.clone())
            .prop_map(|(key, delta, ttl)| Op::Incr { key, delta, ttl }),
        1 => (k.clone(), len.clone(), t.clone(), prop::option::weighted(0.25, any::<u8>()))
            .prop_map(|(pick, len, ttl, stale)| Op::SetIfVersion { pick, len, ttl, stale }),
        2 => (k.clone(), t.clone()).prop_map(|(key, ttl)| Op::Touch { key, ttl }),
        1 => k.clone().prop_map(|key| Op::Get { key }),
        1 => k.clone().prop_map(|key| Op::GetVersioned { key }),
        1 => k.prop_map(|key| Op::Ticket { key }),
        2 => (any::<u32>(), len, t, prop::bool::weighted(0.1))
            .prop_map(|(pick, len, ttl, wrong)| Op::SetWithTicket { pick, len, ttl, wrong }),
        1 => Just(Op::Clear),
    ]
}

/// Operations on `keys` keys. Values are mostly short; with `big` (the eviction
/// mode), of any length up to `max_len`, and `clear` is rarer so that a case fills the
/// cache between two clears.
fn op_strategy(keys: u32, max_len: usize, big: bool) -> impl Strategy<Value = Op> {
    let k = 0..keys;
    let len = if big {
        (0usize..=max_len).boxed()
    } else {
        prop_oneof![3 => 8usize..96, 1 => 0usize..=max_len].boxed()
    };
    let t = prop_oneof![2 => Just(0u8), 1 => 1u8..5].boxed();
    let (clear, others) = if big { (1, 8) } else { (1, 1) };
    let inner = prop::option::weighted(
        0.3,
        (
            inner_strategy(keys, len.clone(), t.clone()),
            prop::bool::weighted(0.7),
        ),
    );
    prop_oneof![
        12 * others => (k.clone(), len.clone(), t.clone())
            .prop_map(|(key, len, ttl)| Op::Set { key, len, ttl }),
        8 * others => k.clone().prop_map(|key| Op::Get { key }),
        4 * others => k.clone().prop_map(|key| Op::GetInto { key }),
        4 * others => k.clone().prop_map(|key| Op::GetStale { key }),
        4 * others => (k.clone(), len.clone(), t.clone())
            .prop_map(|(key, len, ttl)| Op::InsertIfAbsent { key, len, ttl }),
        4 * others => k.clone().prop_map(|key| Op::Remove { key }),
        3 * others => (k.clone(), t.clone()).prop_map(|(key, ttl)| Op::Touch { key, ttl }),
        clear => Just(Op::Clear),
        4 * others => (k.clone(), len.clone(), t.clone(), prop::bool::weighted(0.25), inner)
            .prop_map(|(key, len, ttl, fail, inner)| Op::Fill {
                key,
                len,
                ttl,
                fail,
                inner: inner.map(|(op, same)| Box::new(if same { op.on_key(key) } else { op })),
            }),
        3 * others => (1u8..4).prop_map(|ticks| Op::Advance { ticks }),
        4 * others => (k.clone(), any::<i8>(), t.clone())
            .prop_map(|(key, delta, ttl)| Op::Incr { key, delta, ttl }),
        3 * others => (k.clone(), len.clone(), t.clone())
            .prop_map(|(key, len, ttl)| Op::Replace { key, len, ttl }),
        2 * others => prop::collection::vec(k.clone(), 0..12)
            .prop_map(|keys| Op::GetMany { keys }),
        6 * others => k.clone().prop_map(|key| Op::GetVersioned { key }),
        6 * others => (k.clone(), len.clone(), t.clone(), prop::option::weighted(0.25, any::<u8>()))
            .prop_map(|(pick, len, ttl, stale)| Op::SetIfVersion { pick, len, ttl, stale }),
        3 * others => k.prop_map(|key| Op::Ticket { key }),
        4 * others => (any::<u32>(), len, t, prop::bool::weighted(0.1))
            .prop_map(|(pick, len, ttl, wrong)| Op::SetWithTicket { pick, len, ttl, wrong }),
    ]
}

/// Revocations a shard remembers one by one (larder's fence ring): a store with a
/// ticket whose shard saw fewer since the ticket is judged exactly, by whether one of
/// them was its key's.
const FENCE_RING: u64 = 64;

/// The revocations of a key, the clears and the revocations of the key's shard up to
/// some instant.
#[derive(Debug, Clone, Copy)]
struct Counts {
    key: u64,
    clears: u64,
    shard: u64,
}

/// How the stores with a ticket of a run came out.
#[derive(Debug, Default, Clone, Copy)]
struct TicketOutcomes {
    /// Refused, as they had to be: their key was revoked since the ticket.
    refused: u64,
    /// Stored, as they had to be: no revocation of their key, and fewer than
    /// `FENCE_RING` in its shard.
    stored: u64,
    /// Beyond the ring (no revocation of their key, but `FENCE_RING` or more in its
    /// shard), where either answer is right: stored, and refused.
    beyond_stored: u64,
    beyond_refused: u64,
}

impl std::ops::AddAssign for TicketOutcomes {
    fn add_assign(&mut self, o: TicketOutcomes) {
        self.refused += o.refused;
        self.stored += o.stored;
        self.beyond_stored += o.beyond_stored;
        self.beyond_refused += o.beyond_refused;
    }
}

/// The reference: key -> (value, expiry tick; `None` = no TTL). With `evicting`, the
/// cache may have dropped any entry (reads then remove it here), but what it returns
/// must be exactly what is here.
struct Model {
    entries: BTreeMap<Vec<u8>, (Vec<u8>, Option<u64>)>,
    /// The version each key's entry has, where the model saw it: from a
    /// `get_versioned` with no write of the key since but `touch`.
    versions: BTreeMap<Vec<u8>, larder::Version>,
    /// Every version each key (by number) was seen with, oldest first.
    history: BTreeMap<u32, Vec<larder::Version>>,
    /// The largest version number seen in each shard.
    top: BTreeMap<usize, u64>,
    /// For each key, the largest version number of its shard seen before its last write
    /// (but `touch`): a version of the entry the model has not seen is larger.
    floors: BTreeMap<Vec<u8>, u64>,
    /// Every `(shard, version number)` seen.
    given: std::collections::BTreeSet<(usize, u64)>,
    /// Revocations of each key: every write of it but `touch` (a fill's store and a
    /// store with a ticket revoke nothing either), whether it found an entry or not and
    /// whatever it returned.
    revocations: BTreeMap<Vec<u8>, u64>,
    /// Clears: each revokes every key, and counts `FENCE_RING` revocations in every
    /// shard.
    clears: u64,
    /// Revocations of each shard's keys, clears apart.
    shard_revocations: BTreeMap<usize, u64>,
    /// The last ticket taken of each key (by number), with the counts then.
    tickets: BTreeMap<u32, (larder::Ticket, Counts)>,
    outcomes: TicketOutcomes,
    /// The cache, for the shard of a key.
    cache: larder::Cache,
    now: u64,
    version: u32,
    evicting: bool,
}

impl Model {
    fn expire(&self, ticks: u8) -> Option<u64> {
        (ticks != 0).then(|| self.now + u64::from(ticks))
    }

    fn fresh(&self, k: &[u8]) -> Option<&Vec<u8>> {
        self.entries
            .get(k)
            .filter(|(_, e)| !matches!(e, Some(e) if *e <= self.now))
            .map(|(v, _)| v)
    }

    /// The cache reports no fresh entry where the model has one: allowed only when it
    /// may evict, and the model then forgets it.
    fn lost(&mut self, k: &[u8], what: &str) {
        if self.fresh(k).is_some() {
            assert!(self.evicting, "{what}: the fresh entry is missing");
            self.forget(k);
        }
    }

    /// A write of `k` that revokes it (see `revocations`).
    fn revoke(&mut self, k: &[u8]) {
        *self.revocations.entry(k.to_vec()).or_default() += 1;
        *self
            .shard_revocations
            .entry(self.cache.shard_of(k))
            .or_default() += 1;
    }

    /// The revocation counts of `k` now.
    fn counts(&self, k: &[u8]) -> Counts {
        Counts {
            key: self.revocations.get(k).copied().unwrap_or(0),
            clears: self.clears,
            shard: self
                .shard_revocations
                .get(&self.cache.shard_of(k))
                .copied()
                .unwrap_or(0),
        }
    }

    /// Whether `k` was revoked since `then`, and how many revocations its shard saw
    /// since.
    fn since(&self, k: &[u8], then: &Counts) -> (bool, u64) {
        let now = self.counts(k);
        let clears = now.clears - then.clears;
        (
            now.key != then.key || clears > 0,
            now.shard - then.shard + clears * FENCE_RING,
        )
    }

    /// A write of `k` (any but `touch`): the entry's version, if any, is not known.
    fn put(&mut self, k: Vec<u8>, v: Vec<u8>, expire: Option<u64>) {
        self.versions.remove(&k);
        let top = self.top.get(&self.cache.shard_of(&k)).copied().unwrap_or(0);
        self.floors.insert(k.clone(), top);
        self.entries.insert(k, (v, expire));
    }

    fn forget(&mut self, k: &[u8]) {
        self.versions.remove(k);
        self.entries.remove(k);
    }

    /// `get_versioned` of key `id` returned `version`: the one the model knows the entry
    /// has, or else a new one (see the module docs).
    fn saw_version(&mut self, id: u32, version: larder::Version) {
        let k = &key(id)[..];
        let shard = self.cache.shard_of(k);
        let n = version.number();
        match self.versions.get(k) {
            Some(known) => assert_eq!(
                version, *known,
                "get_versioned {id}: the version changed with no write"
            ),
            None => {
                let floor = self.floors.get(k).copied().unwrap_or(0);
                assert!(
                    n > floor,
                    "get_versioned {id}: version {n}, but shard {shard} gave out {floor} \
                     before the key's last write"
                );
                assert!(
                    self.given.insert((shard, n)),
                    "get_versioned {id}: version {n} of shard {shard} was seen before"
                );
            }
        }
        let top = self.top.entry(shard).or_insert(0);
        *top = (*top).max(n);
        self.versions.insert(k.to_vec(), version);
        let seen = self.history.entry(id).or_default();
        if seen.last() != Some(&version) {
            seen.push(version);
        }
    }
}

/// Runs `ops` against the model; returns how its stores with a ticket came out.
fn run_one_process(
    cache: &larder::Cache,
    clock: &larder::Clock,
    ops: &[Op],
    evicting: bool,
) -> TicketOutcomes {
    let mut m = Model {
        entries: BTreeMap::new(),
        versions: BTreeMap::new(),
        history: BTreeMap::new(),
        top: BTreeMap::new(),
        floors: BTreeMap::new(),
        given: std::collections::BTreeSet::new(),
        revocations: BTreeMap::new(),
        clears: 0,
        shard_revocations: BTreeMap::new(),
        tickets: BTreeMap::new(),
        outcomes: TicketOutcomes::default(),
        cache: cache.clone(),
        now: 0,
        version: 0,
        evicting,
    };
    for op in ops {
        step(cache, clock, &mut m, op);
    }
    // Everything the cache holds, the model holds, with the same length and TTL.
    let listed: Vec<larder::EntryInfo> =
        cache.entries().collect::<Result<_, _>>().expect("entries");
    for e in &listed {
        let (v, exp) = m
            .entries
            .get(&e.key)
            .unwrap_or_else(|| panic!("the cache holds an unknown key {:?}", e.key));
        assert_eq!(e.value_len, v.len());
        assert_eq!(e.ttl.is_some(), exp.is_some(), "TTL of {:?}", e.key);
    }
    if !evicting {
        assert_eq!(listed.len(), m.entries.len(), "entries listed");
    }
    let report = cache.verify().expect("verify");
    assert!(report.is_clean(), "{report}");
    m.outcomes
}

/// Runs one operation and checks its result against the model.
fn step(cache: &larder::Cache, clock: &larder::Clock, m: &mut Model, op: &Op) {
    m.version += 1;
    match *op {
        Op::Set {
            key: id,
            len,
            ttl: t,
        } => {
            let v = value(id, m.version, len);
            cache.set(&key(id), &v, ttl(t)).expect("set");
            m.revoke(&key(id));
            let e = m.expire(t);
            m.put(key(id), v, e);
        }
        Op::Get { key: id } => {
            let k = key(id);
            match cache.get(&k).expect("get") {
                Some(v) => assert_eq!(Some(&v), m.fresh(&k), "get {id}"),
                None => m.lost(&k, "get"),
            }
        }
        Op::GetInto { key: id } => {
            let k = key(id);
            let mut buf = b"left over from before".to_vec();
            if cache.get_into(&k, &mut buf).expect("get_into") {
                assert_eq!(Some(&buf), m.fresh(&k), "get_into {id}");
            } else {
                m.lost(&k, "get_into");
            }
        }
        Op::GetStale { key: id } => {
            let k = key(id);
            let got = cache.get_stale(&k).expect("get_stale");
            match (&got, m.entries.get(&k)) {
                (Some(s), Some((v, _))) => {
                    assert_eq!(&s.value, v, "get_stale {id}");
                    assert_eq!(s.expired, m.fresh(&k).is_none(), "get_stale {id} flag");
                }
                (Some(s), None) => panic!("get_stale {id}: unknown value {s:?}"),
                (None, Some(_)) => {
                    // An expired entry may be reclaimed, a fresh one only evicted.
                    assert!(m.evicting, "get_stale {id}: entry missing");
                    m.forget(&k);
                }
                (None, None) => {}
            }
        }
        Op::InsertIfAbsent {
            key: id,
            len,
            ttl: t,
        } => {
            let k = key(id);
            let v = value(id, m.version, len);
            let stored = cache
                .insert_if_absent(&k, &v, ttl(t))
                .expect("insert_if_absent");
            // Whether or not it stores.
            m.revoke(&k);
            if stored {
                m.lost(&k, "insert_if_absent");
                let e = m.expire(t);
                m.put(k, v, e);
            } else {
                assert!(
                    m.fresh(&k).is_some(),
                    "insert_if_absent {id} kept a non-fresh entry"
                );
            }
        }
        Op::Remove { key: id } => {
            let k = key(id);
            let removed = cache.remove(&k).expect("remove");
            // Whether or not it found an entry.
            m.revoke(&k);
            if removed {
                assert!(
                    m.fresh(&k).is_some(),
                    "remove {id} removed an unknown entry"
                );
            } else {
                m.lost(&k, "remove");
            }
            m.forget(&k);
        }
        Op::Touch { key: id, ttl: t } => {
            let k = key(id);
            if cache.touch(&k, ttl(t)).expect("touch") {
                assert!(m.fresh(&k).is_some(), "touch {id} found an unknown entry");
                let e = m.expire(t);
                if let Some(entry) = m.entries.get_mut(&k) {
                    entry.1 = e;
                }
            } else {
                m.lost(&k, "touch");
            }
        }
        Op::Clear => {
            let n = cache.clear().expect("clear");
            if m.evicting {
                assert!(n as usize <= m.entries.len(), "clear counted {n}");
            } else {
                assert_eq!(n as usize, m.entries.len(), "clear count");
            }
            m.entries.clear();
            m.versions.clear();
            m.clears += 1;
        }
        Op::Fill {
            key: id,
            len,
            ttl: t,
            fail,
            ref inner,
        } => {
            let k = key(id);
            let v = value(id, m.version, len);
            let mut called = false;
            // Whether `inner` revoked the key while the fill computed.
            let mut revoked = false;
            let before = cache.stats();
            let got = cache.get_or_insert_with(&k, ttl(t), || {
                called = true;
                // The fill found no fresh entry.
                m.lost(&k, "get_or_insert_with");
                if let Some(inner) = inner {
                    let then = m.counts(&k);
                    step(cache, clock, m, inner);
                    revoked = m.since(&k, &then).0;
                }
                if fail {
                    Err(FillError::Refused)
                } else {
                    Ok(v.clone())
                }
            });
            if called {
                match got {
                    Ok(got) => {
                        assert!(!fail);
                        // Stored or fenced off, its caller gets what it computed.
                        assert_eq!(got, v, "fill {id} returned another value");
                        let after = cache.stats();
                        let counted = (
                            after.fills - before.fills,
                            after.fills_fenced - before.fills_fenced,
                        );
                        if revoked {
                            // Fenced exactly: the key keeps what the revocation left.
                            assert_eq!(
                                counted,
                                (0, 1),
                                "fill {id} revoked by {inner:?} while it computed: \
                                 (fills, fills_fenced) counted"
                            );
                        } else {
                            // However many revocations of other keys came in between.
                            assert_eq!(
                                counted,
                                (1, 0),
                                "fill {id} with {inner:?} while it computed, which does \
                                 not revoke it: (fills, fills_fenced) counted"
                            );
                            let e = m.expire(t);
                            m.put(k, v, e);
                        }
                    }
                    // A failed fill caches nothing: the model keeps what it had.
                    Err(FillError::Refused) => assert!(fail),
                    Err(FillError::Cache(e)) => panic!("fill {id}: {e}"),
                }
            } else {
                let got = got.unwrap_or_else(|e| panic!("fill {id} without f: {e:?}"));
                assert_eq!(Some(&got), m.fresh(&k), "fill {id} served a wrong value");
            }
        }
        Op::Advance { ticks } => {
            clock.advance(TICK * u32::from(ticks));
            m.now += u64::from(ticks);
        }
        Op::Incr {
            key: id,
            delta,
            ttl: t,
        } => {
            let k = key(id);
            let delta = i64::from(delta);
            let fresh = m.fresh(&k).cloned();
            let got = cache.incr(&k, delta, 0, ttl(t));
            // Whatever it returns, even an error of the value's.
            m.revoke(&k);
            let expect = |v: &Vec<u8>| match <[u8; 8]>::try_from(&v[..]) {
                Ok(w) => i64::from_le_bytes(w).checked_add(delta).ok_or("overflow"),
                Err(_) => Err("not a counter"),
            };
            let got_text = match &got {
                Ok(n) => Ok(*n),
                Err(larder::Error::Overflow { .. }) => Err("overflow"),
                Err(larder::Error::NotACounter { .. }) => Err("not a counter"),
                Err(e) => panic!("incr {id}: {e}"),
            };
            let as_new = Ok(delta);
            match &fresh {
                Some(v) if got_text == expect(v) => {
                    if let Ok(n) = got_text {
                        // An update keeps the entry's expiry.
                        let e = m.entries.get(&k).and_then(|(_, e)| *e);
                        m.put(k, n.to_le_bytes().to_vec(), e);
                    }
                }
                Some(v) => {
                    // Only an evicted entry starts again from init.
                    assert!(
                        m.evicting && got_text == as_new,
                        "incr {id}: {got_text:?}, expected {:?}",
                        expect(v)
                    );
                    let e = m.expire(t);
                    m.put(k, delta.to_le_bytes().to_vec(), e);
                }
                None => {
                    assert_eq!(got_text, as_new, "incr {id} of no fresh entry");
                    let e = m.expire(t);
                    m.put(k, delta.to_le_bytes().to_vec(), e);
                }
            }
        }
        Op::Replace {
            key: id,
            len,
            ttl: t,
        } => {
            let k = key(id);
            let v = value(id, m.version, len);
            let replaced = cache.replace(&k, &v, ttl(t)).expect("replace");
            // Whether or not it found an entry.
            m.revoke(&k);
            if replaced {
                assert!(m.fresh(&k).is_some(), "replace {id} stored over nothing");
                let e = m.expire(t);
                m.put(k, v, e);
            } else {
                m.lost(&k, "replace");
            }
        }
        Op::GetMany { ref keys } => {
            let ks: Vec<Vec<u8>> = keys.iter().map(|&id| key(id)).collect();
            let got = cache.get_many(&ks).expect("get_many");
            assert_eq!(got.len(), ks.len());
            for (k, v) in ks.iter().zip(got) {
                match v {
                    Some(v) => assert_eq!(Some(&v), m.fresh(k), "get_many {k:?}"),
                    None => m.lost(k, "get_many"),
                }
            }
        }
        Op::GetVersioned { key: id } => {
            let k = key(id);
            match cache.get_versioned(&k).expect("get_versioned") {
                Some((v, version)) => {
                    assert_eq!(Some(&v), m.fresh(&k), "get_versioned {id}");
                    m.saw_version(id, version);
                }
                None => m.lost(&k, "get_versioned"),
            }
        }
        Op::SetIfVersion {
            pick,
            len,
            ttl: t,
            stale,
        } => {
            let (id, version) = match stale {
                None => {
                    let known: Vec<u32> = m
                        .history
                        .keys()
                        .copied()
                        .filter(|&id| m.versions.contains_key(&key(id)))
                        .collect();
                    let Some(&id) = known.get(pick as usize % known.len().max(1)) else {
                        return;
                    };
                    (id, m.versions[&key(id)])
                }
                Some(i) => {
                    let n = pick as usize % m.history.len().max(1);
                    let Some((&id, seen)) = m.history.iter().nth(n) else {
                        return;
                    };
                    (id, seen[i as usize % seen.len()])
                }
            };
            let k = key(id);
            let v = value(id, m.version, len);
            let current = m.fresh(&k).is_some() && m.versions.get(&k) == Some(&version);
            let stored = cache
                .set_if_version(&k, &v, ttl(t), version)
                .expect("set_if_version");
            // Whether or not the version matched (a version of the key's own shard).
            m.revoke(&k);
            if stored {
                assert!(
                    current,
                    "set_if_version {id} stored with version {}, not the entry's",
                    version.number()
                );
                // The new version is the next get_versioned's to find out.
                let e = m.expire(t);
                m.put(k, v, e);
            } else if current {
                m.lost(&k, "set_if_version with the entry's version");
            }
        }
        Op::Ticket { key: id } => {
            let k = key(id);
            let ticket = cache.ticket(&k).expect("ticket");
            let then = m.counts(&k);
            m.tickets.insert(id, (ticket, then));
        }
        Op::SetWithTicket {
            pick,
            len,
            ttl: t,
            wrong,
        } => {
            let ids: Vec<u32> = m.tickets.keys().copied().collect();
            let Some(&id) = ids.get(pick as usize % ids.len().max(1)) else {
                return;
            };
            let (ticket, then) = m.tickets[&id];
            let other = ids[(pick as usize + 1) % ids.len()];
            if wrong && other != id {
                let r = cache.set_with_ticket(
                    &key(other),
                    &value(other, m.version, len),
                    ttl(t),
                    ticket,
                );
                assert!(
                    matches!(r, Err(larder::Error::InvalidArgument(_))),
                    "set_with_ticket of key {other} with key {id}'s ticket: {r:?}"
                );
                return;
            }
            let k = key(id);
            let v = value(id, m.version, len);
            let stored = cache
                .set_with_ticket(&k, &v, ttl(t), ticket)
                .expect("set_with_ticket");
            let (revoked, since) = m.since(&k, &then);
            if revoked {
                assert!(
                    !stored,
                    "set_with_ticket {id} stored, though its key was revoked since the ticket"
                );
                m.outcomes.refused += 1;
            } else if since < FENCE_RING {
                assert!(
                    stored,
                    "set_with_ticket {id} refused: its key was not revoked since the ticket, \
                     and its shard saw only {since} revocations since"
                );
                m.outcomes.stored += 1;
            } else if stored {
                m.outcomes.beyond_stored += 1;
            } else {
                m.outcomes.beyond_refused += 1;
            }
            if stored {
                let e = m.expire(t);
                m.put(k, v, e);
            } else {
                // Refused, it changed nothing: the key keeps what it had.
                match cache.get(&k).expect("get") {
                    Some(got) => assert_eq!(
                        Some(&got),
                        m.fresh(&k),
                        "set_with_ticket {id} refused, yet the key changed"
                    ),
                    None => m.lost(&k, "get after a refused set_with_ticket"),
                }
            }
        }
    }
}

fn model_config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Failing inputs are printed, shrunk; no regression files in the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// The stores with a ticket of a test's cases met both rules: some had to be refused,
/// some had to store.
fn assert_tickets_tested(o: TicketOutcomes) {
    assert!(
        o.refused > 0 && o.stored > 0,
        "stores with a ticket: {o:?}: the test proves nothing of them"
    );
}

/// Every operation, with TTLs on the test clock, against an exact model: the cache is
/// sized so that nothing is evicted or reclaimed, which the stats confirm.
#[test]
fn one_process_matches_an_exact_model() {
    let outcomes = std::cell::Cell::new(TicketOutcomes::default());
    let mut runner = TestRunner::new(model_config(48));
    runner
        .run(
            &prop::collection::vec(op_strategy(48, 1024, false), 1..300),
            |ops| {
                let t = TempCache::new("model-exact");
                let clock = larder::Clock::manual();
                // Four shards of 2 MiB: every record of a case fits in any one small log.
                let cache = t
                    .options()
                    .capacity(8 << 20)
                    .shards(4)
                    .clock(clock.clone())
                    .open(t.name())
                    .expect("open");
                let mut o = outcomes.get();
                o += run_one_process(&cache, &clock, &ops, false);
                outcomes.set(o);
                let s = cache.stats();
                prop_assert_eq!(s.evictions, 0, "sized so nothing is evicted: {:?}", s);
                prop_assert_eq!(s.expirations, 0, "sized so nothing is reclaimed: {:?}", s);
                prop_assert_eq!(s.recoveries, 0);
                Ok(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_tickets_tested(outcomes.get());
}

/// The same operations on a cache a fraction of the keys' size, where entries are
/// evicted all the time: a read may find nothing, but never a wrong or stale value.
#[test]
fn one_process_with_eviction_never_returns_a_wrong_or_stale_value() {
    let evictions = std::cell::Cell::new(0);
    let outcomes = std::cell::Cell::new(TicketOutcomes::default());
    let mut runner = TestRunner::new(model_config(48));
    runner
        .run(
            &prop::collection::vec(op_strategy(160, 1024, true), 100..500),
            |ops| {
                let t = TempCache::new("model-evict");
                let clock = larder::Clock::manual();
                // One shard of 24 KiB: about 22 KiB of logs, for some 80 KiB of values
                // (the rest of the 84 KiB: headers, statistics, fill slots, near area;
                // the shard's own header and fences take 1.25 KiB of its 24).
                let cache = t
                    .options()
                    .capacity(84 << 10)
                    .shards(1)
                    .clock(clock.clone())
                    .open(t.name())
                    .expect("open");
                let mut o = outcomes.get();
                o += run_one_process(&cache, &clock, &ops, true);
                outcomes.set(o);
                let s = cache.stats();
                evictions.set(evictions.get() + s.evictions);
                prop_assert_eq!(s.recoveries, 0);
                Ok(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        evictions.get() > 0,
        "no case evicted anything: the test proves nothing"
    );
    assert_tickets_tested(outcomes.get());
}

// ----- several processes ----------------------------------------------------------------

/// Keys each process owns (the only process that writes them); every process reads
/// every key.
const OWN_KEYS: u32 = 12;
/// Times each child runs through its list of operations.
const ROUNDS: usize = 300;
/// Longest wait of any step (children starting, the barrier, finishing).
const DEADLINE: Duration = Duration::from_secs(30);
/// Long enough never to expire during the test, on any process's clock.
const MP_TTL: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone)]
enum MpOp {
    Set {
        key: u32,
        len: usize,
        ttl: bool,
    },
    InsertIfAbsent {
        key: u32,
        len: usize,
    },
    Remove {
        key: u32,
    },
    Touch {
        key: u32,
        ttl: bool,
    },
    Fill {
        key: u32,
        len: usize,
        fail: bool,
    },
    Get {
        owner: u32,
        key: u32,
    },
    GetInto {
        owner: u32,
        key: u32,
    },
    GetStale {
        owner: u32,
        key: u32,
    },
    /// Adds 1 to a counter every process shares.
    Incr {
        key: u32,
    },
    GetVersioned {
        owner: u32,
        key: u32,
    },
    /// `set_if_version` of an own key with the version this process knows its entry has
    /// (the `pick`-th key, wrapping, of those it knows one of), or with `stale`, the first
    /// version it saw of the `pick`-th key it saw one of. Nothing if no key qualifies.
    SetIfVersion {
        pick: u32,
        len: usize,
        stale: bool,
    },
    /// `ticket` of `owner`'s key `key`, which this process remembers (with the last
    /// `MP_TICKETS` it took). A ticket of another process's key is followed by a read of
    /// the key.
    Ticket {
        owner: u32,
        key: u32,
    },
    /// `set_with_ticket` with the `pick`-th ticket this process remembers (wrapping).
    /// Of an own key: refused if this process revoked the key since the ticket; else
    /// either (other processes' revocations of the shard may have outrun the ring),
    /// and the model follows. Of another process's key, only where this process can
    /// prove that the owner revoked the key since the ticket (so that it must be
    /// refused and never clobbers the owner's key): the key's value read now comes
    /// after a revocation that the read after the ticket did not see (see
    /// `REVOKED_SHIFT`), or, where nothing is evicted, the key is gone since.
    SetWithTicket {
        pick: u32,
        len: usize,
    },
}

/// Tickets a process remembers (`MpOp::Ticket`).
const MP_TICKETS: usize = 4;

/// Versions of an own key count the owner's writes that revoked it and changed it (a
/// `set`, an `insert_if_absent` or `set_if_version` that stored, a `remove` that
/// removed) above this bit: each such write starts a new block, and a write that
/// revokes nothing (a fill, a store with a ticket) counts on within the last one. So
/// a reader that sees a value of a later block than one it read before knows that a
/// revocation of the key came after that read. (No case writes a key 2^16 times.)
const REVOKED_SHIFT: u32 = 16;

/// Counters shared by every process of a case (`MpOp::Incr`).
const MP_COUNTERS: u32 = 3;

fn mp_counter(k: u32) -> Vec<u8> {
    format!("counter/{k}").into_bytes()
}

/// The operations of one process; values of `lens` bytes.
fn mp_op_strategy(procs: u32, lens: std::ops::Range<usize>) -> impl Strategy<Value = MpOp> {
    let k = 0..OWN_KEYS;
    let len = lens;
    prop_oneof![
        6 => (k.clone(), len.clone(), any::<bool>())
            .prop_map(|(key, len, ttl)| MpOp::Set { key, len, ttl }),
        2 => (k.clone(), len.clone()).prop_map(|(key, len)| MpOp::InsertIfAbsent { key, len }),
        2 => k.clone().prop_map(|key| MpOp::Remove { key }),
        1 => (k.clone(), any::<bool>()).prop_map(|(key, ttl)| MpOp::Touch { key, ttl }),
        2 => (k.clone(), len.clone(), prop::bool::weighted(0.25))
            .prop_map(|(key, len, fail)| MpOp::Fill { key, len, fail }),
        8 => (0..procs, k.clone()).prop_map(|(owner, key)| MpOp::Get { owner, key }),
        3 => (0..procs, k.clone()).prop_map(|(owner, key)| MpOp::GetInto { owner, key }),
        3 => (0..procs, k.clone()).prop_map(|(owner, key)| MpOp::GetStale { owner, key }),
        3 => (0..MP_COUNTERS).prop_map(|key| MpOp::Incr { key }),
        3 => (0..procs, k.clone()).prop_map(|(owner, key)| MpOp::GetVersioned { owner, key }),
        3 => (k.clone(), len.clone(), prop::bool::weighted(0.2))
            .prop_map(|(pick, len, stale)| MpOp::SetIfVersion { pick, len, stale }),
        3 => (0..procs, k).prop_map(|(owner, key)| MpOp::Ticket { owner, key }),
        3 => (any::<u32>(), len).prop_map(|(pick, len)| MpOp::SetWithTicket { pick, len }),
    ]
}

impl MpOp {
    fn encode(&self) -> String {
        match *self {
            MpOp::Set { key, len, ttl } => format!("set {key} {len} {}", u8::from(ttl)),
            MpOp::InsertIfAbsent { key, len } => format!("ins {key} {len}"),
            MpOp::Remove { key } => format!("rm {key}"),
            MpOp::Incr { key } => format!("incr {key}"),
            MpOp::Touch { key, ttl } => format!("touch {key} {}", u8::from(ttl)),
            MpOp::Fill { key, len, fail } => format!("fill {key} {len} {}", u8::from(fail)),
            MpOp::Get { owner, key } => format!("get {owner} {key}"),
            MpOp::GetInto { owner, key } => format!("into {owner} {key}"),
            MpOp::GetStale { owner, key } => format!("stale {owner} {key}"),
            MpOp::GetVersioned { owner, key } => format!("gv {owner} {key}"),
            MpOp::SetIfVersion { pick, len, stale } => {
                format!("cas {pick} {len} {}", u8::from(stale))
            }
            MpOp::Ticket { owner, key } => format!("ticket {owner} {key}"),
            MpOp::SetWithTicket { pick, len } => format!("swt {pick} {len}"),
        }
    }

    fn decode(line: &str) -> MpOp {
        let w: Vec<&str> = line.split(' ').collect();
        let n = |i: usize| -> u32 { w[i].parse().expect("number in plan") };
        match w[0] {
            "set" => MpOp::Set {
                key: n(1),
                len: n(2) as usize,
                ttl: n(3) == 1,
            },
            "ins" => MpOp::InsertIfAbsent {
                key: n(1),
                len: n(2) as usize,
            },
            "rm" => MpOp::Remove { key: n(1) },
            "touch" => MpOp::Touch {
                key: n(1),
                ttl: n(2) == 1,
            },
            "fill" => MpOp::Fill {
                key: n(1),
                len: n(2) as usize,
                fail: n(3) == 1,
            },
            "get" => MpOp::Get {
                owner: n(1),
                key: n(2),
            },
            "into" => MpOp::GetInto {
                owner: n(1),
                key: n(2),
            },
            "stale" => MpOp::GetStale {
                owner: n(1),
                key: n(2),
            },
            "incr" => MpOp::Incr { key: n(1) },
            "gv" => MpOp::GetVersioned {
                owner: n(1),
                key: n(2),
            },
            "cas" => MpOp::SetIfVersion {
                pick: n(1),
                len: n(2) as usize,
                stale: n(3) == 1,
            },
            "ticket" => MpOp::Ticket {
                owner: n(1),
                key: n(2),
            },
            "swt" => MpOp::SetWithTicket {
                pick: n(1),
                len: n(2) as usize,
            },
            other => panic!("unknown plan op {other:?}"),
        }
    }
}

fn mp_key(owner: u32, k: u32) -> Vec<u8> {
    format!("p{owner}/k{k}").into_bytes()
}

/// `<key>#<version>#` then filler derived from both, `len` bytes at least as long as
/// the header: a torn value, another key's value or another version's never decodes
/// as this one.
fn mp_value(key: &[u8], version: u32, len: usize) -> Vec<u8> {
    let mut v = key.to_vec();
    v.extend_from_slice(format!("#{version}#").as_bytes());
    let seed = key
        .iter()
        .fold(version.wrapping_mul(2_654_435_761), |h, &b| {
            h.rotate_left(5) ^ u32::from(b)
        });
    let head = v.len();
    v.extend((head..len.max(head)).map(|i| b'a' + (seed.wrapping_add(i as u32 * 13) % 26) as u8));
    v
}

/// The version of a value read for `key`, after checking it is whole and its own.
fn mp_version(key: &[u8], v: &[u8]) -> u32 {
    let text = String::from_utf8_lossy(v);
    let mut parts = text.splitn(3, '#');
    let (k, ver) = (parts.next(), parts.next());
    assert_eq!(
        k.map(str::as_bytes),
        Some(key),
        "value of another key: {text:?}"
    );
    let version: u32 = ver
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("value without a version: {text:?}"));
    assert_eq!(
        v,
        &mp_value(key, version, v.len())[..],
        "torn value for {key:?}"
    );
    version
}

fn mp_options() -> larder::Options {
    larder::Options::new()
        .lock_timeout(Duration::from_secs(10))
        .fill_timeout(Duration::from_secs(10))
}

fn wait_for(what: &str, ready: impl FnMut() -> bool) {
    assert!(
        poll_until(Instant::now() + DEADLINE, ready),
        "timed out waiting for {what}"
    );
}

/// One child's view: what it last wrote to each of its own keys, and the highest
/// version it has read of every key.
struct Writer {
    me: u32,
    evicting: bool,
    version: Vec<u32>,
    present: Vec<bool>,
    seen: Vec<Vec<u32>>,
    /// Increments this process made of each shared counter, and the last value one
    /// returned: with no eviction, each is above the one before (others only add).
    increments: Vec<u64>,
    last_count: Vec<i64>,
    /// The version each own key's entry has, where this process saw it: from its
    /// `get_versioned`, with no write of the key since but `touch`.
    token: Vec<Option<larder::Version>>,
    /// Every version this process saw of each own key, oldest first.
    tokens: Vec<Vec<larder::Version>>,
    /// This process's writes of each own key that revoked it and changed it: the
    /// block of its next versions (see `REVOKED_SHIFT`).
    blocks: Vec<u32>,
    /// This process's writes of each own key that revoked it, whatever they found.
    revocations: Vec<u64>,
    /// The last `MP_TICKETS` tickets this process took.
    tickets: std::collections::VecDeque<Held>,
    counts: MpTicketCounts,
}

/// A ticket a process took (`MpOp::Ticket`), with what it knew then.
#[derive(Debug, Clone, Copy)]
struct Held {
    owner: u32,
    key: u32,
    ticket: larder::Ticket,
    /// Of an own key: this process's revocations of it when it took the ticket.
    revocations: u64,
    /// Of another's: the version the read right after the ticket found, if any.
    read: Option<u32>,
}

/// How a case's stores with a ticket came out, over all its processes.
#[derive(Debug, Default, Clone, Copy)]
struct MpTicketCounts {
    /// Of other processes' keys, refused (as they must be: see `MpOp::SetWithTicket`).
    others_refused: u64,
    /// Of own keys revoked since, refused (as they must be).
    own_revoked: u64,
    /// Of own keys not revoked since: stored, and refused (either is right).
    own_stored: u64,
    own_refused: u64,
}

impl MpTicketCounts {
    fn encode(&self) -> String {
        format!(
            "tickets {} {} {} {}",
            self.others_refused, self.own_revoked, self.own_stored, self.own_refused
        )
    }

    fn add_decoded(&mut self, line: &str) {
        let n: Vec<u64> = line
            .split(' ')
            .skip(1)
            .map(|w| w.parse().expect("ticket count"))
            .collect();
        self.others_refused += n[0];
        self.own_revoked += n[1];
        self.own_stored += n[2];
        self.own_refused += n[3];
    }
}

impl Writer {
    /// The version of the next write of own key `i` (see `REVOKED_SHIFT`): the first of
    /// a new block if the write revokes the key (it is then committed with
    /// `wrote(.., true)`), else the one after the key's last version in the block of
    /// its last revocation.
    fn next_version(&self, i: usize, revokes: bool) -> u32 {
        let block = self.blocks[i] + u32::from(revokes);
        let first = block
            .checked_shl(REVOKED_SHIFT)
            .filter(|f| f >> REVOKED_SHIFT == block)
            .expect("fewer revocations of a key than blocks of versions");
        let v = if revokes {
            first
        } else {
            self.version[i].max(first) + 1
        };
        assert_eq!(v >> REVOKED_SHIFT, block, "a block of versions overflowed");
        v
    }

    /// This process stored `version` (from `next_version(i, revoked)`) in own key `i`.
    fn wrote(&mut self, i: usize, version: u32, revoked: bool) {
        if revoked {
            self.blocks[i] += 1;
        }
        self.version[i] = version;
        self.present[i] = true;
        self.token[i] = None;
    }

    /// The cache no longer holds an own key this process last wrote: eviction, which
    /// is allowed only in the evicting mode.
    fn lost(&mut self, k: u32, what: &str) {
        let i = k as usize;
        if self.present[i] {
            assert!(self.evicting, "{what} p{}/k{k}: own entry missing", self.me);
            self.present[i] = false;
        }
        self.token[i] = None;
    }

    /// This process read own key `k` with `version`: the one it knows the entry has, or
    /// else a newer one than any it saw of the key (another process's `get_versioned`
    /// may have given the entry one since this process last wrote it).
    fn saw_version(&mut self, k: u32, version: larder::Version) {
        let i = k as usize;
        match (self.token[i], self.tokens[i].last()) {
            (Some(known), _) => assert_eq!(
                version, known,
                "get_versioned p{}/k{k}: the version changed with no write",
                self.me
            ),
            (None, Some(last)) => assert!(
                version.number() > last.number(),
                "get_versioned p{}/k{k}: version {} after {}",
                self.me,
                version.number(),
                last.number()
            ),
            (None, None) => {}
        }
        self.token[i] = Some(version);
        if self.tokens[i].last() != Some(&version) {
            self.tokens[i].push(version);
        }
    }

    /// Checks a read of `owner`'s key `k`: whole, its own, never older than a version
    /// read before; for an own key, exactly the version last written. Returns the
    /// version read.
    fn read(&mut self, owner: u32, k: u32, got: Option<&[u8]>) -> Option<u32> {
        let key = mp_key(owner, k);
        let ver = got.map(|v| mp_version(&key, v));
        if let Some(ver) = ver {
            let seen = &mut self.seen[owner as usize][k as usize];
            assert!(
                ver >= *seen,
                "process {} read {:?} at version {ver} after version {}",
                self.me,
                String::from_utf8_lossy(&key),
                *seen
            );
            *seen = ver;
        }
        if owner == self.me {
            let i = k as usize;
            match ver {
                Some(ver) => {
                    assert!(self.present[i], "own key {key:?} back after removal");
                    assert_eq!(ver, self.version[i], "own key {key:?}");
                }
                None => self.lost(k, "read"),
            }
        }
        ver
    }

    fn run(&mut self, cache: &larder::Cache, op: &MpOp) {
        let me = self.me;
        match *op {
            MpOp::Incr { key: k } => {
                let i = k as usize;
                let n = cache.incr(&mp_counter(k), 1, 0, None).expect("incr");
                assert!(
                    self.evicting || n > self.last_count[i],
                    "counter {k} went from {} to {n}",
                    self.last_count[i]
                );
                self.last_count[i] = n;
                self.increments[i] += 1;
            }
            MpOp::Set { key: k, len, ttl } => {
                let i = k as usize;
                let key = mp_key(me, k);
                let version = self.next_version(i, true);
                let v = mp_value(&key, version, len);
                cache.set(&key, &v, ttl.then_some(MP_TTL)).expect("set");
                self.revocations[i] += 1;
                self.wrote(i, version, true);
            }
            MpOp::InsertIfAbsent { key: k, len } => {
                let i = k as usize;
                let key = mp_key(me, k);
                let version = self.next_version(i, true);
                let v = mp_value(&key, version, len);
                let stored = cache
                    .insert_if_absent(&key, &v, None)
                    .expect("insert_if_absent");
                // Whether or not it stores.
                self.revocations[i] += 1;
                if stored {
                    self.lost(k, "insert_if_absent");
                    self.wrote(i, version, true);
                } else {
                    assert!(
                        self.present[i],
                        "insert_if_absent p{me}/k{k} found an entry"
                    );
                }
            }
            MpOp::Remove { key: k } => {
                let removed = cache.remove(&mp_key(me, k)).expect("remove");
                // Whether or not it finds an entry; one that does changes the key too.
                self.revocations[k as usize] += 1;
                if removed {
                    assert!(self.present[k as usize], "remove p{me}/k{k} found an entry");
                    self.blocks[k as usize] += 1;
                } else {
                    self.lost(k, "remove");
                }
                self.present[k as usize] = false;
                self.token[k as usize] = None;
            }
            MpOp::Touch { key: k, ttl } => {
                let touched = cache
                    .touch(&mp_key(me, k), ttl.then_some(MP_TTL))
                    .expect("touch");
                if touched {
                    assert!(self.present[k as usize], "touch p{me}/k{k} found an entry");
                } else {
                    self.lost(k, "touch");
                }
            }
            MpOp::Fill { key: k, len, fail } => {
                let i = k as usize;
                let key = mp_key(me, k);
                let version = self.next_version(i, false);
                let fresh = mp_value(&key, version, len);
                let mut called = false;
                let got = cache.get_or_insert_with(&key, Some(MP_TTL), || {
                    called = true;
                    if fail {
                        Err(FillError::Refused)
                    } else {
                        Ok(fresh.clone())
                    }
                });
                if called {
                    self.lost(k, "get_or_insert_with");
                }
                match got {
                    // Stored: nothing revokes an own key but this process, which
                    // does not while it fills (fills are fenced exactly).
                    Ok(v) if called => {
                        assert_eq!(v, fresh);
                        self.wrote(i, version, false);
                    }
                    Ok(v) => {
                        self.read(me, k, Some(&v));
                    }
                    Err(FillError::Refused) => assert!(fail && called),
                    Err(FillError::Cache(e)) => panic!("fill p{me}/k{k}: {e}"),
                }
            }
            MpOp::Get { owner, key: k } => {
                let got = cache.get(&mp_key(owner, k)).expect("get");
                self.read(owner, k, got.as_deref());
            }
            MpOp::GetInto { owner, key: k } => {
                let mut buf = b"junk".to_vec();
                let found = cache
                    .get_into(&mp_key(owner, k), &mut buf)
                    .expect("get_into");
                self.read(owner, k, found.then_some(&buf[..]));
            }
            MpOp::GetStale { owner, key: k } => {
                let got = cache.get_stale(&mp_key(owner, k)).expect("get_stale");
                assert!(
                    !got.as_ref().is_some_and(|s| s.expired),
                    "nothing expires here"
                );
                self.read(owner, k, got.as_ref().map(|s| &s.value[..]));
            }
            MpOp::GetVersioned { owner, key: k } => {
                let got = cache
                    .get_versioned(&mp_key(owner, k))
                    .expect("get_versioned");
                self.read(owner, k, got.as_ref().map(|(v, _)| &v[..]));
                if let (true, Some((_, version))) = (owner == me, got) {
                    self.saw_version(k, version);
                }
            }
            MpOp::SetIfVersion { pick, len, stale } => {
                let keys: Vec<usize> = (0..OWN_KEYS as usize)
                    .filter(|&i| {
                        if stale {
                            !self.tokens[i].is_empty()
                        } else {
                            self.token[i].is_some()
                        }
                    })
                    .collect();
                let Some(&i) = keys.get(pick as usize % keys.len().max(1)) else {
                    return;
                };
                let version = if stale {
                    self.tokens[i][0]
                } else {
                    self.token[i].expect("a known version")
                };
                let k = i as u32;
                let key = mp_key(me, k);
                let next = self.next_version(i, true);
                let v = mp_value(&key, next, len);
                // Only this process writes the key: its version is the entry's exactly
                // while this process has not written it since.
                let current = self.present[i] && self.token[i] == Some(version);
                let stored = cache
                    .set_if_version(&key, &v, None, version)
                    .expect("set_if_version");
                // Whether or not it stores (a version of the key's own shard).
                self.revocations[i] += 1;
                if stored {
                    assert!(
                        current,
                        "set_if_version p{me}/k{k} stored with version {}, not the entry's",
                        version.number()
                    );
                    self.wrote(i, next, true);
                } else if current {
                    self.lost(k, "set_if_version with the entry's version");
                }
            }
            MpOp::Ticket { owner, key: k } => {
                let key = mp_key(owner, k);
                let ticket = cache.ticket(&key).expect("ticket");
                let (revocations, read) = if owner == me {
                    (self.revocations[k as usize], None)
                } else {
                    let got = cache.get(&key).expect("get");
                    (0, self.read(owner, k, got.as_deref()))
                };
                if self.tickets.len() == MP_TICKETS {
                    self.tickets.pop_front();
                }
                self.tickets.push_back(Held {
                    owner,
                    key: k,
                    ticket,
                    revocations,
                    read,
                });
            }
            MpOp::SetWithTicket { pick, len } => {
                let Some(&held) = self.tickets.get(pick as usize % self.tickets.len().max(1))
                else {
                    return;
                };
                let (owner, k) = (held.owner, held.key);
                let key = mp_key(owner, k);
                if owner == me {
                    let i = k as usize;
                    let version = self.next_version(i, false);
                    let v = mp_value(&key, version, len);
                    let stored = cache
                        .set_with_ticket(&key, &v, None, held.ticket)
                        .expect("set_with_ticket");
                    if self.revocations[i] != held.revocations {
                        assert!(
                            !stored,
                            "set_with_ticket p{me}/k{k} stored, though this process revoked \
                             the key since the ticket"
                        );
                        self.counts.own_revoked += 1;
                    } else if stored {
                        self.counts.own_stored += 1;
                    } else {
                        self.counts.own_refused += 1;
                    }
                    if stored {
                        self.wrote(i, version, false);
                    } else {
                        // Refused, it changed nothing.
                        let got = cache.get(&key).expect("get");
                        self.read(me, k, got.as_deref());
                    }
                    return;
                }
                let got = cache.get(&key).expect("get");
                let now = self.read(owner, k, got.as_deref());
                let revoked = match (held.read, now) {
                    (Some(then), Some(now)) => now >> REVOKED_SHIFT > then >> REVOKED_SHIFT,
                    (Some(_), None) => !self.evicting,
                    (None, _) => false,
                };
                if !revoked {
                    // Not provably revoked: a store might clobber the owner's key.
                    return;
                }
                let v = mp_value(&key, u32::MAX, len);
                let stored = cache
                    .set_with_ticket(&key, &v, None, held.ticket)
                    .expect("set_with_ticket");
                assert!(
                    !stored,
                    "p{me} stored {key:?} with a ticket taken before a read of version \
                     {:?}, though it then read {now:?}: a revocation came in between",
                    held.read
                );
                self.counts.others_refused += 1;
            }
        }
    }
}

/// A child: waits at the barrier, runs its plan `ROUNDS` times, then writes the final
/// version and presence of each of its keys for the parent. Its role (`spec`) is
/// `<dir>|<index>|<evicting: 0 or 1>`.
fn child_main(spec: &str) {
    let parts: Vec<&str> = spec.split('|').collect();
    let dir = PathBuf::from(parts[0]);
    let me: u32 = parts[1].parse().expect("child index");
    let plan = fs::read_to_string(dir.join(format!("plan-{me}"))).expect("plan");
    let mut lines = plan.lines();
    let procs: usize = lines.next().and_then(|l| l.parse().ok()).expect("count");
    let ops: Vec<MpOp> = lines.map(MpOp::decode).collect();
    let cache = mp_options()
        .attach(dir.join("cache").to_str().expect("utf-8"))
        .expect("attach");
    // Files, not entries: once the first child starts, a small cache may evict any
    // entry, "go" included, before a slower child has read it.
    fs::write(dir.join(format!("ready-{me}")), b"1").expect("ready");
    wait_for("the parent's go", || dir.join("go").exists());
    let mut w = Writer {
        me,
        evicting: parts[2] == "1",
        version: vec![0; OWN_KEYS as usize],
        present: vec![false; OWN_KEYS as usize],
        seen: vec![vec![0; OWN_KEYS as usize]; procs],
        increments: vec![0; MP_COUNTERS as usize],
        last_count: vec![0; MP_COUNTERS as usize],
        token: vec![None; OWN_KEYS as usize],
        tokens: vec![Vec::new(); OWN_KEYS as usize],
        blocks: vec![0; OWN_KEYS as usize],
        revocations: vec![0; OWN_KEYS as usize],
        tickets: std::collections::VecDeque::new(),
        counts: MpTicketCounts::default(),
    };
    for _ in 0..ROUNDS {
        for op in &ops {
            w.run(&cache, op);
        }
    }
    let mut out = String::new();
    for k in 0..OWN_KEYS as usize {
        out.push_str(&format!("{} {}\n", w.version[k], u8::from(w.present[k])));
    }
    for n in &w.increments {
        out.push_str(&format!("incr {n}\n"));
    }
    out.push_str(&w.counts.encode());
    out.push('\n');
    let tmp = dir.join(format!("final-{me}.tmp"));
    fs::write(&tmp, out).expect("write final");
    fs::rename(&tmp, dir.join(format!("final-{me}"))).expect("publish final");
}

/// Runs one case: a child per plan, re-executing `test`; returns the cache's stats and
/// how the children's stores with a ticket came out.
fn run_processes(
    test: &str,
    plans: &[Vec<MpOp>],
    evicting: bool,
) -> (larder::Stats, MpTicketCounts) {
    let procs = plans.len();
    let t = TempCache::new("model-mp");
    let opts = if evicting {
        // One shard of 20 KiB, the smallest there is (80 KiB of capacity, 60 of them
        // before the shards): 18 KiB of logs, which a case's live values of up to 1,000
        // bytes overfill: eviction, not only cleaning, all the time.
        mp_options().capacity(80 << 10).shards(1)
    } else {
        // Four shards of 16 MiB: a case never writes more than a small log holds.
        mp_options().capacity(64 << 20).shards(4)
    };
    let cache = opts
        .max_key_len(64)
        .max_value_len(1024)
        .open(t.name())
        .expect("create");
    // Killed and reaped on drop, so a failing parent leaves none.
    let mut children = Vec::new();
    for (i, plan) in plans.iter().enumerate() {
        let mut text = format!("{procs}\n");
        for op in plan {
            text.push_str(&op.encode());
            text.push('\n');
        }
        fs::write(t.dir.join(format!("plan-{i}")), text).expect("plan");
        let spec = format!("{}|{i}|{}", t.dir.display(), u8::from(evicting));
        children.push(ChildGuard::spawn_logged(
            &mut self_command(test, &spec),
            t.dir.join(format!("child-{i}.log")),
        ));
    }
    // Start everyone at once, so the operations interleave.
    for (i, child) in children.iter_mut().enumerate() {
        wait_for("children to attach", || {
            if let Some(status) = child.try_status() {
                panic!("child {i} exited early ({status}):\n{}", child.log());
            }
            t.dir.join(format!("ready-{i}")).exists()
        });
    }
    fs::write(t.dir.join("go"), b"1").expect("go");
    let deadline = Instant::now() + DEADLINE;
    for (i, child) in children.iter_mut().enumerate() {
        let status = child.wait_or_fail(deadline, &format!("child {i}"));
        assert!(
            status.success(),
            "child {i} failed ({status}):\n{}",
            child.log()
        );
    }
    // Every process's last acknowledged write or remove of each of its keys holds
    // (or, where eviction is allowed, the entry is gone).
    let mut increments = vec![0u64; MP_COUNTERS as usize];
    let mut tickets = MpTicketCounts::default();
    for i in 0..procs as u32 {
        let text = fs::read_to_string(t.dir.join(format!("final-{i}"))).expect("final");
        let (ticket_counts, text): (Vec<&str>, Vec<&str>) =
            text.lines().partition(|l| l.starts_with("tickets "));
        ticket_counts.iter().for_each(|l| tickets.add_decoded(l));
        let (own, counts): (Vec<&str>, Vec<&str>) =
            text.into_iter().partition(|l| !l.starts_with("incr "));
        for (c, line) in counts.iter().enumerate() {
            increments[c] += line["incr ".len()..].parse::<u64>().expect("count");
        }
        for (k, line) in own.iter().enumerate() {
            let (ver, present) = line.split_once(' ').expect("final line");
            let key = mp_key(i, k as u32);
            let got = cache.get(&key).expect("get").map(|v| mp_version(&key, &v));
            let want = (present == "1").then(|| ver.parse::<u32>().expect("version"));
            if !(evicting && got.is_none()) {
                assert_eq!(got, want, "final value of {key:?}");
            }
        }
    }
    // Every increment of every process is in its counter, exactly (with eviction, a
    // counter may have started again, so at most).
    for (c, n) in increments.iter().enumerate() {
        let got = cache
            .get(&mp_counter(c as u32))
            .expect("get")
            .map(|v| i64::from_le_bytes(v.try_into().expect("a counter is 8 bytes")) as u64);
        if evicting {
            assert!(
                got.unwrap_or(0) <= *n,
                "counter {c}: {got:?} of {n} increments"
            );
        } else {
            assert_eq!(
                got.unwrap_or(0),
                *n,
                "counter {c}: increments lost or doubled"
            );
        }
    }
    let s = cache.stats();
    assert_eq!(s.recoveries, 0, "no process died: {s:?}");
    let report = cache.verify().expect("verify");
    assert!(report.is_clean(), "{report}");
    (s, tickets)
}

/// Runs the cases of a multi-process test (or, in a child, the child's part): each
/// case's stats and ticket counts.
fn multi_process(test: &str, evicting: bool) -> Vec<(larder::Stats, MpTicketCounts)> {
    if let Some(spec) = child_role() {
        child_main(&spec);
        return Vec::new();
    }
    // With eviction, values and plans large enough that every case's live entries fill
    // the one small shard past the fraction below which it only cleans (see
    // `run_processes`), even with two processes.
    let (lens, ops) = if evicting {
        (300..1000, 40..120)
    } else {
        (0..300, 10..80)
    };
    let plans = (2u32..=4).prop_flat_map(|procs| {
        prop::collection::vec(
            prop::collection::vec(mp_op_strategy(procs, lens.clone()), ops.clone()),
            procs as usize,
        )
    });
    let mut runner = TestRunner::new(Config {
        cases: 8,
        failure_persistence: None,
        // Each case starts processes: shrink a little, not for minutes.
        max_shrink_iters: 24,
        ..Config::default()
    });
    let stats = std::cell::RefCell::new(Vec::new());
    runner
        .run(&plans, |plans| {
            let s = run_processes(test, &plans, evicting);
            stats.borrow_mut().push(s);
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    stats.into_inner()
}

/// The operations split across 2 to 4 processes, each the only writer of its keys with
/// per-key increasing versions, on a cache sized so nothing is evicted: no process
/// ever reads a key at an older version than it read before (no stale or resurrected
/// value), every value read is whole and its key's, each process sees its own keys
/// exactly, and at the end every key holds its writer's last acknowledged version (or
/// nothing, if that was a remove). A store with a ticket taken before a revocation of
/// its key is refused: one this process made, or one of another process's key that
/// this process saw come after the ticket.
#[test]
fn processes_never_see_a_value_go_back_in_version() {
    let cases = multi_process("processes_never_see_a_value_go_back_in_version", false);
    for (s, _) in &cases {
        assert_eq!(s.evictions, 0, "sized so nothing is evicted: {s:?}");
    }
    if child_role().is_none() {
        assert_stale_tickets_tested(&cases);
    }
}

/// Some case caught a stale ticket of another process's key (refused, as it must be):
/// otherwise the test proves nothing of them.
fn assert_stale_tickets_tested(cases: &[(larder::Stats, MpTicketCounts)]) {
    let refused: u64 = cases.iter().map(|(_, t)| t.others_refused).sum();
    assert!(
        refused > 0,
        "no store with a stale ticket of another process's key: the test proves nothing \
         of them"
    );
}

/// The same on a cache much smaller than the keys: entries are evicted all the time,
/// so a read may find nothing, but never a stale, resurrected or torn value.
#[test]
fn processes_with_eviction_never_see_a_value_go_back_in_version() {
    let stats = multi_process(
        "processes_with_eviction_never_see_a_value_go_back_in_version",
        true,
    );
    if child_role().is_none() {
        let evictions: u64 = stats.iter().map(|(s, _)| s.evictions).sum();
        assert!(
            evictions > 0,
            "nothing was evicted: the test proves nothing"
        );
        assert_stale_tickets_tested(&stats);
    }
}
