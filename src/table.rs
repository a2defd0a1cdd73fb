//! The table of a cache file: its memory region, geometry and key hasher, and the
//! locked-section protocol every mutation and locked read runs under.
//!
//! [`Table::section`] is what happens once a shard's lock is held: a shard whose last
//! owner died, or whose sequence counter a writer left odd, is repaired before anything
//! else touches it; then the operation runs (with the counter odd around it if it
//! writes); if the operation finds the shard damaged, the shard is repaired again and
//! the operation retried once. [`Cache`](crate::Cache) runs it under a shard's robust
//! mutex; the fuzz harness (below, `cfg(fuzzing)`) runs the same code over a heap
//! region, with its single caller standing in for the lock, so the fuzzer exercises
//! the protocol that ships rather than a copy of it.

use crate::fence::Fences;
use crate::layout::Geometry;
use crate::layout::SH_VERSION;
use crate::region::Region;
use crate::seqlock;
use crate::shard::{Damaged, Hasher, Probe, Put, Shard};

/// Whether the shard's lock came back owner-dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owner {
    /// The last owner unlocked it.
    Clean,
    /// The last owner died holding it: the shard must be repaired first.
    Died,
}

/// Whether an operation writes the shard (the sequence counter is odd around it), and
/// whether it revokes keys (see `fence`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    /// A write that revokes nothing: a `touch`, a fill's store, the version a
    /// `get_versioned` gives an entry, a repair.
    Write,
    /// A write that revokes the key of this hash: every fill of it in flight is fenced
    /// off.
    Revoke(u64),
    /// A write that revokes every key of the shard (`clear`, a near-cache flush).
    RevokeAll,
}

impl Access {
    fn writes(self) -> bool {
        self != Access::Read
    }
}

/// A view of a cache's table.
#[derive(Clone, Copy)]
pub(crate) struct Table<'a> {
    pub region: &'a Region,
    pub geo: &'a Geometry,
    pub hasher: &'a Hasher,
}

impl<'a> Table<'a> {
    pub(crate) fn new(region: &'a Region, geo: &'a Geometry, hasher: &'a Hasher) -> Table<'a> {
        Table {
            region,
            geo,
            hasher,
        }
    }

    /// Shard `idx`.
    #[inline]
    pub(crate) fn shard(&self, idx: usize) -> Shard<'a> {
        Shard::new(self.region, self.geo, idx, self.hasher)
    }

    /// Runs `f` on shard `idx`, whose lock the caller holds (see the module docs). An
    /// error is the damage `f` found again after a repair; the shard is left repaired.
    pub(crate) fn section<R>(
        &self,
        idx: usize,
        owner: Owner,
        access: Access,
        mut f: impl FnMut(&Shard<'_>) -> Result<R, Damaged>,
    ) -> Result<R, Damaged> {
        let shard = self.shard(idx);
        let seq = self
            .region
            .atomic(shard.seq_off())
            .ok_or_else(|| Damaged("shard outside the file".into()))?;
        if owner == Owner::Died || seqlock::is_dirty(seq) {
            seqlock::write_begin(seq);
            shard.repair();
            seqlock::write_end(seq);
        }
        let mut retried = false;
        loop {
            if access.writes() {
                seqlock::write_begin(seq);
            }
            // The first store of a revocation (see `fence`): a crash after it costs a
            // fill its store at worst; a crash before it changed nothing.
            let fences = || Fences::of(self.region, self.geo, idx);
            match access {
                Access::Revoke(h) => fences().revoke(self.region, self.geo, h),
                Access::RevokeAll => fences().revoke_all(self.region, self.geo, idx),
                Access::Read | Access::Write => {}
            }
            if matches!(access, Access::Revoke(_) | Access::RevokeAll) {
                crash_point!("fence.after_bump");
            }
            match f(&shard) {
                Ok(r) => {
                    if access.writes() {
                        seqlock::write_end(seq);
                    }
                    return Ok(r);
                }
                Err(d) => {
                    seqlock::write_begin(seq);
                    shard.repair();
                    seqlock::write_end(seq);
                    if retried {
                        return Err(d);
                    }
                    retried = true;
                }
            }
        }
    }
}

/// Bytes of a counter's value (`Cache::incr`): a little-endian `i64`.
pub(crate) const COUNTER_LEN: usize = 8;

/// How an increment ended inside its locked section.
pub(crate) enum Counted {
    To(i64),
    NotACounter(usize),
    Overflow(i64),
}

/// `incr` inside its shard's locked section (see `Cache::incr`): the counter of `key`
/// (hash `h`) plus `delta`, or, for an absent or expired key, `init + delta` expiring at
/// `expire`. `buf` is allocated by the caller, outside the section.
#[allow(clippy::too_many_arguments)] // the operation's own arguments, plus the section's
pub(crate) fn incr(
    s: &Shard<'_>,
    key: &[u8],
    h: u64,
    delta: i64,
    init: i64,
    expire: u64,
    now: u64,
    buf: &mut Vec<u8>,
) -> Result<Counted, Damaged> {
    let kh = s.locate(h);
    match s.find(key, &kh) {
        Probe::Hit { slot, rec } if !rec.expired(now) => {
            if rec.vlen != COUNTER_LEN {
                return Ok(Counted::NotACounter(rec.vlen));
            }
            // A counter in use is as hot as a key that is read: eviction must see it
            // (S3-FIFO moves a visited entry on instead of dropping it).
            s.mark_visited(slot);
            s.read_value(&rec, buf);
            let mut word = [0u8; COUNTER_LEN];
            word.copy_from_slice(&buf[..COUNTER_LEN]);
            let value = i64::from_le_bytes(word);
            let Some(next) = value.checked_add(delta) else {
                return Ok(Counted::Overflow(value));
            };
            // In place, one atomic store: a crash here never drops the counter.
            s.store_counter(&rec, next);
            Ok(Counted::To(next))
        }
        Probe::Hit { .. } | Probe::Miss => {
            let Some(next) = init.checked_add(delta) else {
                return Ok(Counted::Overflow(init));
            };
            // A new counter: a crash may drop it, but nothing was counted in it yet.
            s.set(key, &kh, &next.to_le_bytes(), expire, Put::Always, now)?;
            Ok(Counted::To(next))
        }
        Probe::Bad => Err(Damaged("index slot points at no live record".into())),
    }
}

/// `replace` inside its shard's locked section: stores `value` only over a fresh entry.
pub(crate) fn replace(
    s: &Shard<'_>,
    key: &[u8],
    h: u64,
    value: &[u8],
    expire: u64,
    now: u64,
) -> Result<bool, Damaged> {
    let kh = s.locate(h);
    match s.find(key, &kh) {
        Probe::Hit { rec, .. } if !rec.expired(now) => {
            s.set(key, &kh, value, expire, Put::Always, now)?;
            Ok(true)
        }
        Probe::Hit { .. } | Probe::Miss => Ok(false),
        Probe::Bad => Err(Damaged("index slot points at no live record".into())),
    }
}

/// `set_if_version` inside its shard's locked section: stores `value` with a new version
/// only over a fresh entry whose version is `version`; the new version, or `None`. The
/// old record stays live until the new one is published, also where making room for it
/// must evict (see `shard`): a crash leaves the old value or the new one.
pub(crate) fn set_if_version(
    s: &Shard<'_>,
    key: &[u8],
    h: u64,
    value: &[u8],
    expire: u64,
    version: u64,
    now: u64,
) -> Result<Option<u64>, Damaged> {
    let kh = s.locate(h);
    match s.find(key, &kh) {
        Probe::Hit { rec, .. } if !rec.expired(now) && s.version(&rec) == Some(version) => {
            s.set(key, &kh, value, expire, Put::Versioned, now)?;
            Ok(Some(s.counter(SH_VERSION)))
        }
        Probe::Hit { .. } | Probe::Miss => Ok(None),
        Probe::Bad => Err(Damaged("index slot points at no live record".into())),
    }
}

/// `get_versioned` inside its shard's locked section: the value of a fresh entry into
/// `out` and its version. An entry without a version is given one first (rewritten
/// with its value and expiry, as a versioned set would, so a crash never costs the
/// entry: a read must not destroy what it reads, in a full shard either).
pub(crate) fn read_versioned(
    s: &Shard<'_>,
    key: &[u8],
    h: u64,
    out: &mut Vec<u8>,
    now: u64,
) -> Result<Option<u64>, Damaged> {
    let kh = s.locate(h);
    match s.find(key, &kh) {
        Probe::Hit { slot, rec } if !rec.expired(now) => {
            s.read_value(&rec, out);
            s.mark_visited(slot);
            if let Some(v) = s.version(&rec) {
                return Ok(Some(v));
            }
            s.set(key, &kh, out, rec.expire, Put::Versioned, now)?;
            // The rewrite cleared the visited bit the read had just set: set it again.
            if let Probe::Hit { slot, .. } = s.find(key, &kh) {
                s.mark_visited(slot);
            }
            Ok(Some(s.counter(SH_VERSION)))
        }
        Probe::Hit { .. } | Probe::Miss => Ok(None),
        Probe::Bad => Err(Damaged("index slot points at no live record".into())),
    }
}

/// A store that respects revocations (a fill's, a ticket's), inside its shard's locked
/// section: stores `value` as a set would, only if `admits` says no revocation of the
/// key fenced it off (see `fence`); true if it stored it.
#[allow(clippy::too_many_arguments)] // the store's own arguments, plus the section's
pub(crate) fn store_fenced(
    s: &Shard<'_>,
    fences: &Fences<'_>,
    admits: impl Fn(&Fences<'_>) -> bool,
    key: &[u8],
    h: u64,
    value: &[u8],
    expire: u64,
    now: u64,
) -> Result<bool, Damaged> {
    if !admits(fences) {
        return Ok(false);
    }
    let kh = s.locate(h);
    s.set(key, &kh, value, expire, Put::Always, now)?;
    Ok(true)
}

/// Removes every live entry of the shard whose key starts with one of `prefixes` (the
/// near cache's flush of its scope); returns how many were fresh. No allocation: each
/// key is read into a buffer on the stack, as repair does.
pub(crate) fn remove_prefixed(
    s: &Shard<'_>,
    hasher: &Hasher,
    prefixes: &[&[u8]],
    now: u64,
) -> Result<u64, Damaged> {
    let mut key = [0u8; crate::layout::MAX_KEY_LIMIT];
    let mut removed = 0;
    let mut damage = None;
    // `remove` empties the slot it reads and marks its record dead; `for_each` reads
    // each slot word afresh, so what it visits next is still whole.
    s.for_each(|rec| {
        if damage.is_some() || rec.klen > key.len() {
            return;
        }
        let k = &mut key[..rec.klen];
        s.read_key(rec, k);
        if !prefixes.iter().any(|p| k.starts_with(p)) {
            return;
        }
        let kh = s.locate(hasher.hash(k));
        match s.remove(k, &kh, now) {
            Ok(fresh) => removed += u64::from(fresh),
            Err(d) => damage = Some(d),
        }
    });
    match damage {
        Some(d) => Err(d),
        None => Ok(removed),
    }
}

#[cfg(fuzzing)]
pub use harness::{FuzzTicket, HeapTable};

/// The fuzz harness's table: a whole cache layout on the heap, driven through
/// [`Table::section`] exactly as `Cache` drives a mapping. Not a stable API.
#[cfg(fuzzing)]
mod harness {
    use super::{Access, Owner, Table};
    use crate::error::{Error, Result};
    use crate::layout::{Geometry, Params, SECRET_SIZE};
    use crate::region::Region;
    use crate::seqlock;
    use crate::shard::{Damaged, Hasher, Probe, SetOutcome, Shard};

    /// A ticket of the fuzz harness: the cache's own.
    pub type FuzzTicket = crate::fence::Ticket;

    /// A heap region laid out as a cache file of the given limits.
    pub struct HeapTable {
        region: Region,
        geo: Geometry,
        hasher: Hasher,
    }

    impl HeapTable {
        /// A table of `capacity` bytes with the given limits.
        pub fn new(capacity: u64, max_key_len: usize, max_value_len: usize) -> Result<HeapTable> {
            let geo = Geometry::compute(&Params {
                capacity,
                max_key_len,
                max_value_len,
                shards: 0,
                expected_entry: crate::options::DEFAULT_EXPECTED_ENTRY,
            })
            .map_err(Error::InvalidOptions)?;
            // A fixed secret, so an input replays the same way in every process.
            let secret: Vec<u8> = (0..SECRET_SIZE as u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect();
            Ok(HeapTable {
                region: Region::heap(geo.total_size),
                hasher: Hasher::new(&secret),
                geo,
            })
        }

        fn table(&self) -> Table<'_> {
            Table::new(&self.region, &self.geo, &self.hasher)
        }

        /// Bytes of the region.
        pub fn size(&self) -> usize {
            self.geo.total_size
        }

        /// `(offset, length)` of every shard, for targeted mutations.
        pub fn shard_ranges(&self) -> Vec<(usize, usize)> {
            (0..self.geo.shard_count)
                .map(|i| (self.geo.shard_base(i), self.geo.shard_size))
                .collect()
        }

        /// Writes one 8-byte word (the offset is aligned down and wrapped into the region).
        pub fn poke(&self, off: usize, value: u64) {
            let off = (off % self.geo.total_size) & !7;
            self.region.store(off, value);
        }

        /// Reads one 8-byte word.
        pub fn peek(&self, off: usize) -> u64 {
            let off = (off % self.geo.total_size) & !7;
            self.region.load(off)
        }

        /// Runs `f` on `key`'s shard; `access` says how, from the key's hash.
        fn with_shard<R>(
            &self,
            key: &[u8],
            access: fn(u64) -> Access,
            f: impl Fn(&Shard<'_>, u64) -> std::result::Result<R, Damaged>,
        ) -> std::result::Result<R, String> {
            let h = self.hasher.hash(key);
            self.table()
                .section(self.geo.shard_of(h), Owner::Clean, access(h), |s| f(s, h))
                .map_err(|d| d.0)
        }

        fn check(&self, key: &[u8], value: usize) -> std::result::Result<(), String> {
            if key.len() > self.geo.params.max_key_len || value > self.geo.params.max_value_len {
                return Err("too large".into());
            }
            Ok(())
        }

        /// `set` (or `insert_if_absent`); true if it stored the value.
        pub fn set(
            &self,
            key: &[u8],
            value: &[u8],
            expire: u64,
            only_if_absent: bool,
            now: u64,
        ) -> std::result::Result<bool, String> {
            self.check(key, value.len())?;
            self.with_shard(key, Access::Revoke, |s, h| {
                let kh = s.locate(h);
                let put = if only_if_absent {
                    crate::shard::Put::IfAbsent
                } else {
                    crate::shard::Put::Always
                };
                s.set(
                    key,
                    &kh,
                    value,
                    expire.min(crate::shard::MAX_EXPIRE),
                    put,
                    now,
                )
                .map(|o| o != SetOutcome::Exists)
            })
        }

        /// `get`: the value if present and not expired at `now` (the locked path).
        pub fn get(&self, key: &[u8], now: u64) -> std::result::Result<Option<Vec<u8>>, String> {
            self.check(key, 0)?;
            self.with_shard(
                key,
                |_| Access::Read,
                |s, h| {
                    let kh = s.locate(h);
                    match s.find(key, &kh) {
                        Probe::Hit { rec, .. } if !rec.expired(now) => {
                            let mut out = Vec::new();
                            s.read_value(&rec, &mut out);
                            Ok(Some(out))
                        }
                        Probe::Hit { .. } | Probe::Miss => Ok(None),
                        Probe::Bad => Err(Damaged("bad slot".into())),
                    }
                },
            )
        }

        /// `incr`: the counter's new value, or `Err` with what `Cache::incr` reports.
        pub fn incr(
            &self,
            key: &[u8],
            delta: i64,
            init: i64,
            expire: u64,
            now: u64,
        ) -> std::result::Result<std::result::Result<i64, &'static str>, String> {
            self.check(key, super::COUNTER_LEN)?;
            let expire = expire.min(crate::shard::MAX_EXPIRE);
            let counted = self.with_shard(key, Access::Revoke, |s, h| {
                let mut buf = Vec::with_capacity(super::COUNTER_LEN);
                super::incr(s, key, h, delta, init, expire, now, &mut buf)
            })?;
            Ok(match counted {
                super::Counted::To(v) => Ok(v),
                super::Counted::NotACounter(_) => Err("not a counter"),
                super::Counted::Overflow(_) => Err("overflow"),
            })
        }

        /// `replace`; true if it stored the value.
        pub fn replace(
            &self,
            key: &[u8],
            value: &[u8],
            expire: u64,
            now: u64,
        ) -> std::result::Result<bool, String> {
            self.check(key, value.len())?;
            let expire = expire.min(crate::shard::MAX_EXPIRE);
            self.with_shard(key, Access::Revoke, |s, h| {
                super::replace(s, key, h, value, expire, now)
            })
        }

        /// `get_versioned` (the locked path): the value of a fresh entry and its version,
        /// giving an entry without one a version first.
        pub fn get_versioned(
            &self,
            key: &[u8],
            now: u64,
        ) -> std::result::Result<Option<(Vec<u8>, u64)>, String> {
            self.check(key, 0)?;
            self.with_shard(
                key,
                |_| Access::Write,
                |s, h| {
                    let mut out = Vec::new();
                    let v = super::read_versioned(s, key, h, &mut out, now)?;
                    Ok(v.map(|v| (out, v)))
                },
            )
        }

        /// `set_if_version`: the entry's new version if it stored the value.
        pub fn set_if_version(
            &self,
            key: &[u8],
            value: &[u8],
            expire: u64,
            version: u64,
            now: u64,
        ) -> std::result::Result<Option<u64>, String> {
            self.check(key, value.len())?;
            let expire = expire.min(crate::shard::MAX_EXPIRE);
            self.with_shard(key, Access::Revoke, |s, h| {
                super::set_if_version(s, key, h, value, expire, version, now)
            })
        }

        /// A ticket for `key` (as `Cache::ticket`).
        pub fn ticket(&self, key: &[u8]) -> FuzzTicket {
            let h = self.hasher.hash(key);
            FuzzTicket::take(&self.region, &self.geo, self.hasher.file_id(), h)
        }

        /// `set_with_ticket`: stores only if no revocation of `key` came since `ticket`
        /// (checked in the section); true if it stored the value.
        pub fn set_with_ticket(
            &self,
            key: &[u8],
            value: &[u8],
            expire: u64,
            ticket: FuzzTicket,
            now: u64,
        ) -> std::result::Result<bool, String> {
            self.check(key, value.len())?;
            if self.hasher.hash(key) != ticket.hash {
                return Err("a ticket of another key".into());
            }
            let expire = expire.min(crate::shard::MAX_EXPIRE);
            self.with_shard(
                key,
                |_| Access::Write,
                |s, h| {
                    let fences = crate::fence::Fences::of(&self.region, &self.geo, s.index());
                    let admits = |f: &crate::fence::Fences<'_>| ticket.admitted(f);
                    super::store_fenced(s, &fences, admits, key, h, value, expire, now)
                },
            )
        }

        /// `clear` of every shard (fencing off every ticket).
        pub fn clear(&self) -> u64 {
            (0..self.geo.shard_count)
                .map(|i| {
                    self.table()
                        .section(i, Owner::Clean, Access::RevokeAll, |s| Ok(s.clear()))
                        .unwrap_or(0)
                })
                .sum()
        }

        /// The shard `key` lives in (versions are numbered per shard).
        pub fn shard_of(&self, key: &[u8]) -> usize {
            self.geo.shard_of(self.hasher.hash(key))
        }

        /// `remove`.
        pub fn remove(&self, key: &[u8], now: u64) -> std::result::Result<bool, String> {
            self.check(key, 0)?;
            self.with_shard(key, Access::Revoke, |s, h| {
                let kh = s.locate(h);
                s.remove(key, &kh, now)
            })
        }

        /// Rebuilds every shard, as an offline repair does; returns entries dropped.
        pub fn repair_all(&self) -> u64 {
            (0..self.geo.shard_count)
                .map(|i| self.table().shard(i).repair())
                .sum()
        }

        /// Marks a shard mid-write, as a writer that died would leave it.
        pub fn mark_dirty(&self, shard: usize) {
            let s = self.table().shard(shard % self.geo.shard_count);
            if let Some(seq) = self.region.atomic(s.seq_off()) {
                seqlock::write_begin(seq);
            }
        }

        /// Every problem of every shard as it is now (a shard a writer left mid-write is
        /// reported as such, not repaired first), for the harness's own checks.
        pub fn verify(&self) -> Vec<String> {
            let mut out = Vec::new();
            for i in 0..self.geo.shard_count {
                self.table().shard(i).verify(&mut out);
            }
            out
        }
    }

    /// Parses and checks a header page as `open` does (everything but the stamp and
    /// the file size).
    pub fn check_header(bytes: &[u8]) -> Result<()> {
        crate::header::parse_header(std::path::Path::new("<fuzz>"), bytes).map(|_| ())
    }
}

#[cfg(fuzzing)]
pub use harness::check_header;
