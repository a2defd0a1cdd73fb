//! One shard's table: index, logs and records, over a [`Region`].
//!
//! The logic here works on a region, not a file: it runs over a heap buffer in unit tests
//! and under Miri, and over the mapping in production. It takes no locks itself: read
//! functions are safe to run optimistically (every value they read is bounds-checked, and
//! the caller validates the snapshot with the shard's sequence counter); mutating
//! functions require the caller to hold the shard lock with the counter odd.
//!
//! Crash consistency comes from the order of stores, each a single 8-byte word that a
//! crash cannot split, so that the logs alone always describe the shard:
//! - a record is written in free space past the log's tail, then published by one store
//!   of the log state; an entry it replaces is marked dead *before* that store, so a
//!   crash can lose the entry being written but never resurrect an overwritten one (a
//!   versioned set instead marks the old record dead after the new one is published and
//!   indexed, and making room for it never pops the old record unpublished, below: a
//!   crash leaves the old value or the new one, never neither, in a full shard too);
//! - a removal marks the record dead before clearing its slot;
//! - eviction advances the head past a record with one store, or, for a versioned set
//!   whose own old record is main's head, moves the tail back over main's newest
//!   records with one store before it forgets their entries;
//! - a record moved by eviction or cleaning is copied and published in its new place
//!   before it is popped from the old one, so a crash leaves two copies, of which repair
//!   keeps the first the logs hold; only a move within a full main, into the room its
//!   own record frees, pops first, so that a crash there drops it instead. That move is
//!   never made of the old record of a versioned set: making room for the set keeps
//!   that record live (see `Shard::make_room_keeping`), cutting the room from main's
//!   tail where the record is main's head and main has no room for its copy.
//!
//! Repair therefore rebuilds the index from the logs (see [`Shard::repair`]).

use crate::layout::{
    align8, record_size, Geometry, BUCKET_SLOTS, INTENT_CLEAR, INTENT_MOVE, INTENT_OVERWRITE,
    INTENT_REMOVE, INTENT_SET, INTENT_TOUCH, MAX_KEY_LIMIT, RECORD_HEADER, SH_DROPPED, SH_ENTRIES,
    SH_INSERTS, SH_INTENT, SH_LIVE_BYTES, SH_MAIN, SH_RECOVERIES, SH_REMOVALS, SH_SEQ, SH_SMALL,
    SH_UPDATES, SH_VERSION, SH_WRITTEN, STATE_DEAD, STATE_LIVE, STATE_PAD,
};
use crate::region::Region;
use crate::words::{Intent, LogState, RecordWord0, RecordWord1, SlotWord};

/// Bytes of a record's version word.
pub(crate) const VERSION_WORD: usize = 8;

/// Keyed xxh3 over the file's random secret.
pub(crate) struct Hasher {
    secret: Vec<u8>,
    id: u64,
}

impl Hasher {
    pub(crate) fn new(secret: &[u8]) -> Hasher {
        Hasher {
            secret: secret.to_vec(),
            id: xxhash_rust::xxh3::xxh3_64(secret),
        }
    }

    /// A number that tells this file from others: a hash of its random secret.
    pub(crate) fn file_id(&self) -> u64 {
        self.id
    }

    /// The key's 64-bit hash: a full custom secret, not a seed, so collision families of
    /// seeded xxh3 do not apply.
    #[inline]
    pub(crate) fn hash(&self, key: &[u8]) -> u64 {
        xxhash_rust::xxh3::xxh3_64_with_secret(key, &self.secret)
    }
}

/// Where a hash lives in a shard.
#[derive(Debug, Clone, Copy)]
pub(crate) struct KeyHash {
    pub tag: u32,
    pub b1: usize,
    pub b2: usize,
}

/// The two logs of a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogId {
    Small,
    Main,
}

/// A decoded, bounds-checked record header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rec {
    /// Absolute offset in the region.
    pub off: usize,
    pub klen: usize,
    pub vlen: usize,
    pub expire: u64,
    pub state: u64,
    pub slot: usize,
    pub size: usize,
    /// Whether word 2 is the entry's version.
    pub versioned: bool,
    pub w0: u64,
    pub w1: u64,
}

impl Rec {
    pub(crate) fn expired(&self, now: u64) -> bool {
        self.expire != 0 && self.expire <= now
    }
    /// Where the key starts: after the header and the version word, if any.
    #[inline]
    pub(crate) fn key_off(&self) -> usize {
        self.off + RECORD_HEADER + if self.versioned { VERSION_WORD } else { 0 }
    }
    #[inline]
    fn value_off(&self) -> usize {
        self.key_off() + align8(self.klen)
    }
    /// Where the version word is (meaningful only if `versioned`).
    pub(crate) fn version_off(&self) -> usize {
        self.off + RECORD_HEADER
    }
}

/// Outcome of a lookup.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Probe {
    Hit {
        slot: usize,
        rec: Rec,
    },
    Miss,
    /// Something read does not make sense: torn (if racing a writer) or corrupt.
    Bad,
}

/// How a set stores its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Put {
    /// Over anything, without a version.
    Always,
    /// Only if no fresh entry exists (`insert_if_absent`), without a version.
    IfAbsent,
    /// Over anything, with a version the shard has never given out.
    Versioned,
}

/// What a set did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SetOutcome {
    Inserted,
    Updated,
    /// `insert_if_absent` found a live entry.
    Exists,
}

/// What putting a record back in the index did (repair).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reindexed {
    Yes,
    /// Its key is indexed already, from an earlier record.
    Duplicate,
    /// It cannot be indexed: it is dropped.
    No,
}

/// A mutation found the shard inconsistent: it must be repaired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Damaged(pub String);

/// One shard of a region.
pub(crate) struct Shard<'a> {
    pub(crate) r: &'a Region,
    pub(crate) g: &'a Geometry,
    pub(crate) base: usize,
    pub(crate) hasher: &'a Hasher,
}

/// Largest expiry the record can hold (48 bits of milliseconds).
pub(crate) const MAX_EXPIRE: u64 = RecordWord0::MAX_EXPIRE;

impl<'a> Shard<'a> {
    pub(crate) fn new(r: &'a Region, g: &'a Geometry, index: usize, hasher: &'a Hasher) -> Self {
        Shard {
            r,
            g,
            base: g.shard_base(index),
            hasher,
        }
    }

    // ----- addresses -------------------------------------------------------------------

    /// This shard's number.
    pub(crate) fn index(&self) -> usize {
        (self.base - self.g.shards_off) / self.g.shard_size
    }

    pub(crate) fn hdr(&self, field: usize) -> usize {
        self.base + field
    }

    pub(crate) fn seq_off(&self) -> usize {
        self.base + SH_SEQ
    }

    pub(crate) fn slots(&self) -> usize {
        self.g.buckets * BUCKET_SLOTS
    }

    pub(crate) fn slot_off(&self, slot: usize) -> usize {
        self.base + crate::layout::SHARD_HEADER + slot * 8
    }

    /// The index word of `slot`.
    #[inline]
    pub(crate) fn slot_word(&self, slot: usize) -> SlotWord {
        SlotWord::decode(self.r.load(self.slot_off(slot)))
    }

    /// Stores the index word of `slot`.
    pub(crate) fn set_slot_word(&self, slot: usize, w: SlotWord) {
        self.r.store(self.slot_off(slot), w.encode());
    }

    fn data_off(&self) -> usize {
        self.base + self.g.small_off
    }

    pub(crate) fn log_bounds(&self, which: LogId) -> (usize, usize, usize) {
        match which {
            LogId::Small => (
                self.base + self.g.small_off,
                self.g.small_cap,
                self.hdr(SH_SMALL),
            ),
            LogId::Main => (
                self.base + self.g.main_off,
                self.g.main_cap,
                self.hdr(SH_MAIN),
            ),
        }
    }

    /// Starts loading the key's two buckets, so that their misses overlap.
    #[inline]
    pub(crate) fn prefetch_buckets(&self, kh: &KeyHash) {
        self.r.prefetch(self.slot_off(kh.b1 * BUCKET_SLOTS));
        self.r.prefetch(self.slot_off(kh.b2 * BUCKET_SLOTS));
    }

    pub(crate) fn locate(&self, h: u64) -> KeyHash {
        let n = self.g.buckets as u64;
        let b1 = (((h >> 40) & 0xff_ffff) * n) >> 24;
        let m = (h ^ (h >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        let mut b2 = (((m >> 40) & 0xff_ffff) * n) >> 24;
        if b2 == b1 {
            b2 = (b1 + 1) % n;
        }
        KeyHash {
            tag: h as u32,
            b1: b1 as usize,
            b2: b2 as usize,
        }
    }

    /// The location of a record at `off` (the geometry keeps every one under 2^32).
    fn loc_of(&self, off: usize) -> u32 {
        ((off - self.data_off()) / 8 + 1) as u32
    }

    /// The record offset and its log for a slot word, if the location is inside a log.
    #[inline]
    pub(crate) fn off_of(&self, w: SlotWord) -> Option<(usize, LogId)> {
        let rel = (w.loc as usize).checked_sub(1)? * 8;
        if rel < self.g.small_cap {
            Some((self.data_off() + rel, LogId::Small))
        } else if rel < self.g.small_cap + self.g.main_cap {
            Some((self.data_off() + rel, LogId::Main))
        } else {
            None
        }
    }

    /// Reads and checks a record header at `off` in log `which`. `None` if any field is
    /// out of range or the record would cross the log's end.
    pub(crate) fn read_rec(&self, off: usize, which: LogId) -> Option<Rec> {
        let (start, cap, _) = self.log_bounds(which);
        if off < start || off >= start + cap || off % 8 != 0 {
            return None;
        }
        let end = start + cap;
        if end - off < RECORD_HEADER {
            return None;
        }
        let w0 = self.r.load(off);
        let w1 = self.r.load(off + 8);
        let RecordWord0 {
            key_len: klen,
            expire,
        } = RecordWord0::decode(w0);
        let RecordWord1 {
            state,
            value_len: vlen,
            versioned,
            back_ref: slot,
        } = RecordWord1::decode(w1);
        let size = match state {
            STATE_PAD => end - off,
            STATE_LIVE | STATE_DEAD => {
                if klen > self.g.params.max_key_len || vlen > self.g.params.max_value_len {
                    return None;
                }
                let s = record_size(klen, vlen) + if versioned { VERSION_WORD } else { 0 };
                if s > end - off {
                    return None;
                }
                s
            }
            _ => return None,
        };
        Some(Rec {
            off,
            klen,
            vlen,
            expire,
            state,
            slot,
            size,
            versioned: versioned && state != STATE_PAD,
            w0,
            w1,
        })
    }

    // ----- reads (safe optimistically) ---------------------------------------------------

    /// Finds `key`. Runs without the lock: the caller validates the snapshot.
    pub(crate) fn find(&self, key: &[u8], kh: &KeyHash) -> Probe {
        for b in [kh.b1, kh.b2] {
            for i in 0..BUCKET_SLOTS {
                let slot = b * BUCKET_SLOTS + i;
                let w = self.slot_word(slot);
                if w.is_empty() || w.tag != kh.tag {
                    continue;
                }
                let Some((off, which)) = self.off_of(w) else {
                    return Probe::Bad;
                };
                let Some(rec) = self.read_rec(off, which) else {
                    return Probe::Bad;
                };
                if rec.state != STATE_LIVE {
                    return Probe::Bad;
                }
                if rec.klen == key.len() && self.r.bytes_eq(rec.key_off(), key) {
                    return Probe::Hit { slot, rec };
                }
            }
        }
        Probe::Miss
    }

    /// Copies a record's value into `out` (replacing its contents).
    pub(crate) fn read_value(&self, rec: &Rec, out: &mut Vec<u8>) {
        // Zero-filling first and copying over it measured faster than growing the
        // buffer word by word.
        out.clear();
        out.resize(rec.vlen, 0);
        self.r.read_bytes(rec.value_off(), out);
    }

    /// Copies a record's key into `out`.
    pub(crate) fn read_key(&self, rec: &Rec, out: &mut [u8]) {
        self.r.read_bytes(rec.key_off(), &mut out[..rec.klen]);
    }

    fn visited_word(&self, slot: usize) -> (usize, u64) {
        (
            self.base + self.g.bitmap_off + (slot / 64) * 8,
            1u64 << (slot % 64),
        )
    }

    /// Marks a slot as visited for eviction: test first, and set only if not set, so a
    /// hot key stops causing writes. No checksum or counter covers this word.
    #[inline]
    pub(crate) fn mark_visited(&self, slot: usize) {
        let (off, bit) = self.visited_word(slot);
        if self.r.load(off) & bit == 0 {
            self.r.fetch_or(off, bit);
        }
    }

    pub(crate) fn is_visited(&self, slot: usize) -> bool {
        let (off, bit) = self.visited_word(slot);
        self.r.load(off) & bit != 0
    }

    pub(crate) fn clear_visited(&self, slot: usize) {
        let (off, bit) = self.visited_word(slot);
        let w = self.r.load(off);
        if w & bit != 0 {
            self.r.store(off, w & !bit);
        }
    }

    // ----- log state -------------------------------------------------------------------

    /// `(head, tail)` in bytes, or `Damaged` if out of range.
    pub(crate) fn state(&self, which: LogId) -> Result<(usize, usize), Damaged> {
        let (_, cap, st) = self.log_bounds(which);
        let w = LogState::decode(self.r.load(st));
        let (head, tail) = (w.head_bytes(), w.tail_bytes());
        if head >= cap || tail >= cap {
            return Err(Damaged(format!(
                "{which:?} log state head {head} tail {tail} outside its {cap} bytes"
            )));
        }
        Ok((head, tail))
    }

    pub(crate) fn set_state(&self, which: LogId, head: usize, tail: usize) {
        let (_, _, st) = self.log_bounds(which);
        self.r.store(st, LogState::from_bytes(head, tail).encode());
    }

    pub(crate) fn used(cap: usize, head: usize, tail: usize) -> usize {
        (tail + cap - head) % cap
    }

    /// Whether a record of `need` bytes can be appended now (with a pad to the log's end
    /// if it does not fit before it). 8 bytes always stay free so full and empty differ.
    pub(crate) fn fits(&self, which: LogId, head: usize, tail: usize, need: usize) -> bool {
        let (_, cap, _) = self.log_bounds(which);
        let free = cap.saturating_sub(8 + Self::used(cap, head, tail));
        if tail + need <= cap {
            need <= free
        } else {
            (cap - tail) + need <= free
        }
    }

    /// Writes a pad if needed and returns where a record of `size` bytes goes and the
    /// tail after it. The caller has checked [`Shard::fits`].
    pub(crate) fn place(&self, which: LogId, tail: usize, size: usize) -> (usize, usize) {
        let (start, cap, _) = self.log_bounds(which);
        let (dst, end) = if tail + size <= cap {
            (tail, tail + size)
        } else {
            if cap - tail >= RECORD_HEADER {
                self.r.store(start + tail, RecordWord0::PAD.encode());
                self.r.store(start + tail + 8, RecordWord1::PAD.encode());
            }
            (0, size)
        };
        (start + dst, if end == cap { 0 } else { end })
    }

    // ----- counters and intent ---------------------------------------------------------

    pub(crate) fn add(&self, field: usize, delta: i64) {
        let off = self.hdr(field);
        let v = self.r.load(off);
        self.r.store(off, v.wrapping_add(delta as u64));
    }

    pub(crate) fn counter(&self, field: usize) -> u64 {
        self.r.load(self.hdr(field))
    }

    pub(crate) fn set_intent(&self, op: u64, slot: usize) {
        self.r
            .store(self.hdr(SH_INTENT), Intent { op, slot }.encode());
    }

    pub(crate) fn clear_intent(&self) {
        self.r.store(self.hdr(SH_INTENT), Intent::NONE.encode());
    }

    /// Marks a record dead in place (its lengths stay, so walks can skip it).
    pub(crate) fn mark_dead(&self, rec: &Rec) {
        self.r
            .store(rec.off + 8, RecordWord1::with_state(rec.w1, STATE_DEAD));
    }

    /// Drops a live entry's accounting after its record is gone or dead.
    pub(crate) fn forget(&self, slot: usize, rec: &Rec) {
        self.set_slot_word(slot, SlotWord::EMPTY);
        self.clear_visited(slot);
        self.add(SH_ENTRIES, -1);
        self.add(SH_LIVE_BYTES, -((rec.klen + rec.vlen) as i64));
    }

    // ----- mutations (lock held, counter odd) ------------------------------------------

    /// Stores a counter (an 8-byte value, see `Cache::incr`) over `rec`'s value in
    /// place, with one atomic store of its one word (a value starts 8-aligned): a crash
    /// leaves the old or the new counter, never a torn one, so there is nothing to
    /// repair and no intent is set. An overwrite by `set` may cost its entry on a crash;
    /// an increment must not, or every acknowledged increment before it would go with it.
    /// (Like any entry, a counter can still be evicted, or lost with a writer that dies
    /// while eviction moves it within a full main log: the one entry such a crash may
    /// cost.)
    ///
    /// A versioned counter gets a new version first: a crash between the two stores
    /// leaves a new version over the old count, which only fails a compare-and-swap that
    /// would have succeeded.
    pub(crate) fn store_counter(&self, rec: &Rec, value: i64) {
        debug_assert_eq!(rec.vlen, 8);
        if rec.versioned {
            let v = self.next_version();
            self.r.store(rec.version_off(), v);
            crash_point!("incr.after_version");
        }
        self.r
            .store(rec.value_off(), u64::from_le_bytes(value.to_le_bytes()));
        crash_point!("incr.after_store");
        self.add(SH_UPDATES, 1);
    }

    /// The next version of this shard, stored as given out before anything carries it,
    /// so that no crash can give it out twice.
    pub(crate) fn next_version(&self) -> u64 {
        let v = self.counter(SH_VERSION).wrapping_add(1).max(1);
        self.r.store(self.hdr(SH_VERSION), v);
        crash_point!("version.after_bump");
        v
    }

    /// The version of a live record, or `None` if it has none.
    pub(crate) fn version(&self, rec: &Rec) -> Option<u64> {
        rec.versioned.then(|| self.r.load(rec.version_off()))
    }

    /// Inserts or replaces `key` (see [`Put`]). With [`Put::IfAbsent`], a live entry is
    /// left alone; with [`Put::Versioned`], the entry gets a new version (read it back
    /// with [`Shard::counter`]`(SH_VERSION)`).
    pub(crate) fn set(
        &self,
        key: &[u8],
        kh: &KeyHash,
        value: &[u8],
        expire: u64,
        put: Put,
        now: u64,
    ) -> Result<SetOutcome, Damaged> {
        let versioned = put == Put::Versioned;
        let vword = if versioned { VERSION_WORD } else { 0 };
        let size = record_size(key.len(), value.len()) + vword;
        let existing = match self.find(key, kh) {
            Probe::Hit { slot, rec } => Some((slot, rec)),
            Probe::Miss => None,
            Probe::Bad => return Err(Damaged("index slot points at no live record".into())),
        };
        if put == Put::IfAbsent {
            if let Some((_, rec)) = existing {
                if !rec.expired(now) {
                    return Ok(SetOutcome::Exists);
                }
            }
        }
        if let Some((slot, old)) = existing {
            // Not for a versioned set: an overwrite in place that a crash cuts short costs
            // the entry, which a compare-and-swap must not.
            if old.klen == key.len() && old.vlen == value.len() && !old.versioned && !versioned {
                // Same lengths: overwrite in place. No log space, no eviction, and the
                // entry keeps its place and visited bit. Readers are kept out by the odd
                // sequence counter; a crash mid-copy is repaired by dropping this entry,
                // which the intent record names.
                self.set_intent(INTENT_OVERWRITE, slot);
                crash_point!("overwrite.after_intent");
                let at = old.value_off();
                // In two halves, with a crash point between, so the tests can crash with
                // the value half old and half new (the state the intent record repairs).
                let half = (value.len() / 2) & !7;
                self.r.write_bytes(at, &value[..half]);
                crash_point!("overwrite.mid_value");
                self.r.write_bytes(at + half, &value[half..]);
                crash_point!("overwrite.after_value");
                let w0 = RecordWord0 {
                    key_len: key.len(),
                    expire,
                };
                self.r.store(old.off, w0.encode());
                crash_point!("overwrite.after_expiry");
                self.add(SH_UPDATES, 1);
                self.clear_intent();
                return Ok(SetOutcome::Updated);
            }
        }
        let big = size > self.g.small_cap / 4;
        let target = match existing {
            Some((_, rec)) if rec.off >= self.base + self.g.main_off => LogId::Main,
            Some(_) => LogId::Small,
            None if big || self.ghost_take(kh) => LogId::Main,
            None => LogId::Small,
        };
        let target = if big { LogId::Main } else { target };
        match existing {
            // A versioned set keeps the old record live until the new one is published
            // (below), so making room must not pop it either.
            Some((slot, _)) if versioned => self.make_room_keeping(target, size, now, slot)?,
            _ => self.make_room(target, size, now)?,
        }
        crash_point!("set.after_make_room");
        // Eviction may have moved or dropped the entry: look again.
        let existing = match self.find(key, kh) {
            Probe::Hit { slot, rec } => Some((slot, rec)),
            Probe::Miss => None,
            Probe::Bad => return Err(Damaged("index slot points at no live record".into())),
        };
        let slot = match existing {
            Some((slot, _)) => slot,
            None => self.free_slot(kh, now)?,
        };
        self.set_intent(INTENT_SET, slot);
        crash_point!("set.after_intent");
        let (head, tail) = self.state(target)?;
        let (dst, new_tail) = self.place(target, tail, size);
        self.add(SH_WRITTEN, size as i64);
        let w0 = RecordWord0 {
            key_len: key.len(),
            expire,
        };
        let w1 = RecordWord1 {
            state: STATE_LIVE,
            value_len: value.len(),
            versioned,
            back_ref: slot,
        };
        self.r.store(dst, w0.encode());
        self.r.store(dst + 8, w1.encode());
        if versioned {
            let v = self.next_version();
            self.r.store(dst + RECORD_HEADER, v);
        }
        self.r.write_bytes(dst + RECORD_HEADER + vword, key);
        crash_point!("set.after_key");
        // In two halves too, like an overwrite: a crash can leave the value half written
        // here as well (unpublished, so repair ignores it).
        let at = dst + RECORD_HEADER + vword + align8(key.len());
        let half = (value.len() / 2) & !7;
        self.r.write_bytes(at, &value[..half]);
        crash_point!("set.mid_value");
        self.r.write_bytes(at + half, &value[half..]);
        crash_point!("set.after_value");
        // A versioned set keeps the old record live until the new one is published and
        // indexed (a compare-and-swap, or the first `get_versioned`, must never lose the
        // entry: a crash leaves the old value or the new one; making room above kept it
        // too). A crash in between leaves two live records of the key, and repair keeps
        // the first the logs hold (small log first): one of the two, never neither.
        // Any other set marks the old record dead first, so that a crash never brings
        // back an overwritten value.
        let outcome = match existing {
            Some((slot, old)) if !versioned => {
                self.mark_dead(&old);
                crash_point!("set.after_mark_old_dead");
                self.forget(slot, &old);
                SetOutcome::Updated
            }
            Some(_) => SetOutcome::Updated,
            None => SetOutcome::Inserted,
        };
        crash_point!("set.before_publish");
        self.set_state(target, head, new_tail);
        crash_point!("set.after_publish");
        self.set_slot_word(
            slot,
            SlotWord {
                loc: self.loc_of(dst),
                tag: kh.tag,
            },
        );
        self.clear_visited(slot);
        if let (true, Some((_, old))) = (versioned, existing) {
            crash_point!("versioned_set.before_old_dead");
            self.mark_dead(&old);
            self.add(SH_ENTRIES, -1);
            self.add(SH_LIVE_BYTES, -((old.klen + old.vlen) as i64));
        }
        self.add(SH_ENTRIES, 1);
        self.add(SH_LIVE_BYTES, (key.len() + value.len()) as i64);
        self.add(
            if outcome == SetOutcome::Updated {
                SH_UPDATES
            } else {
                SH_INSERTS
            },
            1,
        );
        crash_point!("set.after_slot");
        self.clear_intent();
        Ok(outcome)
    }

    /// Removes `key`; true if a live (unexpired) entry was removed.
    pub(crate) fn remove(&self, key: &[u8], kh: &KeyHash, now: u64) -> Result<bool, Damaged> {
        match self.find(key, kh) {
            Probe::Hit { slot, rec } => {
                self.set_intent(INTENT_REMOVE, slot);
                crash_point!("remove.after_intent");
                self.mark_dead(&rec);
                crash_point!("remove.after_mark_dead");
                self.forget(slot, &rec);
                crash_point!("remove.after_forget");
                self.add(SH_REMOVALS, 1);
                self.clear_intent();
                Ok(!rec.expired(now))
            }
            Probe::Miss => Ok(false),
            Probe::Bad => Err(Damaged("index slot points at no live record".into())),
        }
    }

    /// Sets a live entry's expiry; false if absent or already expired.
    pub(crate) fn touch(
        &self,
        key: &[u8],
        kh: &KeyHash,
        expire: u64,
        now: u64,
    ) -> Result<bool, Damaged> {
        match self.find(key, kh) {
            Probe::Hit { slot, rec } if !rec.expired(now) => {
                self.set_intent(INTENT_TOUCH, slot);
                crash_point!("touch.after_intent");
                let w0 = RecordWord0 {
                    key_len: rec.klen,
                    expire,
                };
                self.r.store(rec.off, w0.encode());
                crash_point!("touch.after_store");
                self.clear_intent();
                Ok(true)
            }
            Probe::Hit { .. } | Probe::Miss => Ok(false),
            Probe::Bad => Err(Damaged("index slot points at no live record".into())),
        }
    }

    /// Empties the shard; returns how many entries it held.
    pub(crate) fn clear(&self) -> u64 {
        let n = self.counter(SH_ENTRIES);
        self.set_intent(INTENT_CLEAR, 0);
        crash_point!("clear.after_intent");
        self.set_state(LogId::Small, 0, 0);
        crash_point!("clear.after_small");
        self.set_state(LogId::Main, 0, 0);
        crash_point!("clear.after_main");
        self.clear_index();
        self.r.store(self.hdr(SH_ENTRIES), 0);
        self.r.store(self.hdr(SH_LIVE_BYTES), 0);
        self.add(SH_REMOVALS, n as i64);
        self.clear_intent();
        n
    }

    fn clear_index(&self) {
        self.r.zero(self.slot_off(0), self.slots() * 8);
        self.r
            .zero(self.base + self.g.bitmap_off, self.g.bitmap_words * 8);
    }

    // ----- repair ----------------------------------------------------------------------

    /// Rebuilds the shard from its logs after its last writer died or panicked mid-write
    /// (or after corruption was found). Returns how many entries it dropped.
    ///
    /// The logs are the truth (see the module docs): each is walked from head to tail, a
    /// record that does not decode ends the log there, and the index is rebuilt from the
    /// live records, each put back in the slot its back reference names. The intent
    /// record names the entry the dead writer had in flight; if it is gone after the
    /// rebuild, it is the one entry the crash cost. Idempotent: a repairer that dies is
    /// followed by another repair from the same logs.
    pub(crate) fn repair(&self) -> u64 {
        let intent = Intent::decode(self.r.load(self.hdr(SH_INTENT)));
        crash_point!("repair.start");
        self.clear_index();
        self.r.store(self.hdr(SH_ENTRIES), 0);
        self.r.store(self.hdr(SH_LIVE_BYTES), 0);
        crash_point!("repair.after_clear_index");
        let mut dropped = 0;
        let mut key = [0u8; MAX_KEY_LIMIT];
        let mut top = self.counter(SH_VERSION);
        for which in [LogId::Small, LogId::Main] {
            dropped += self.rebuild_log(which, &mut key, &mut top);
        }
        // Never lower: a version given out must not come back, even if the record that
        // carried it is gone.
        if top > self.counter(SH_VERSION) {
            self.r.store(self.hdr(SH_VERSION), top);
        }
        crash_point!("repair.after_rebuild");
        let Intent { op, slot } = intent;
        if op == INTENT_OVERWRITE && slot < self.slots() {
            // The value may be torn: drop the entry (its old value must not come back
            // either, and it is gone).
            if let Some(rec) = self
                .off_of(self.slot_word(slot))
                .and_then(|(off, which)| self.read_rec(off, which))
                .filter(|r| r.state == STATE_LIVE)
            {
                self.mark_dead(&rec);
                self.forget(slot, &rec);
                dropped += 1;
            }
        }
        if (op == INTENT_SET || op == INTENT_MOVE)
            && slot < self.slots()
            && self.slot_word(slot).is_empty()
        {
            dropped += 1;
        }
        crash_point!("repair.after_in_flight");
        self.add(SH_RECOVERIES, 1);
        self.add(SH_DROPPED, dropped as i64);
        self.clear_intent();
        dropped
    }

    /// Rebuilds one log's entries into the index; raises `top` to the largest version
    /// of any record walked.
    fn rebuild_log(&self, which: LogId, key: &mut [u8; MAX_KEY_LIMIT], top: &mut u64) -> u64 {
        let (start, cap, _) = self.log_bounds(which);
        let (head, tail) = match self.state(which) {
            Ok(ht) => ht,
            Err(_) => {
                self.set_state(which, 0, 0);
                return 0;
            }
        };
        let mut dropped = 0;
        let mut pos = head;
        let mut remaining = Self::used(cap, head, tail);
        while remaining > 0 {
            if cap - pos < RECORD_HEADER {
                let skip = cap - pos;
                if skip > remaining {
                    break;
                }
                remaining -= skip;
                pos = 0;
                continue;
            }
            let Some(rec) = self.read_rec(start + pos, which) else {
                break;
            };
            if rec.size > remaining {
                break;
            }
            if let Some(v) = self.version(&rec) {
                *top = (*top).max(v);
            }
            if rec.state == STATE_LIVE {
                match self.reindex(&rec, key) {
                    Reindexed::Yes => {}
                    // A second live copy of a key (a crash mid-move or mid-versioned-set
                    // leaves one): the key keeps the first, nothing is lost.
                    Reindexed::Duplicate => self.mark_dead(&rec),
                    Reindexed::No => {
                        self.mark_dead(&rec);
                        dropped += 1;
                    }
                }
            }
            remaining -= rec.size;
            pos = (pos + rec.size) % cap;
        }
        if remaining > 0 {
            // The rest does not decode: end the log at the last good record.
            self.set_state(which, head, pos);
        }
        dropped
    }

    /// Puts a live record back in the index, unless its key is already there (a
    /// duplicate) or it cannot be (no room in its buckets, or a key of another shard).
    fn reindex(&self, rec: &Rec, key: &mut [u8; MAX_KEY_LIMIT]) -> Reindexed {
        self.read_key(rec, key);
        let k = &key[..rec.klen];
        let h = self.hasher.hash(k);
        if self.g.shard_of(h) != self.index() {
            // A key that belongs to another shard (its bytes were damaged) could never be
            // found here: drop it rather than keep an unreachable entry.
            return Reindexed::No;
        }
        let kh = self.locate(h);
        if !matches!(self.find(k, &kh), Probe::Miss) {
            return Reindexed::Duplicate;
        }
        let in_pair = |s: usize| s / BUCKET_SLOTS == kh.b1 || s / BUCKET_SLOTS == kh.b2;
        let slot = if in_pair(rec.slot) && self.slot_word(rec.slot).is_empty() {
            Some(rec.slot)
        } else {
            (0..2 * BUCKET_SLOTS)
                .map(|i| {
                    let b = if i < BUCKET_SLOTS { kh.b1 } else { kh.b2 };
                    b * BUCKET_SLOTS + i % BUCKET_SLOTS
                })
                .find(|&s| self.slot_word(s).is_empty())
        };
        let Some(slot) = slot else {
            return Reindexed::No;
        };
        if slot != rec.slot {
            self.r
                .store(rec.off + 8, RecordWord1::with_back_ref(rec.w1, slot));
        }
        self.set_slot_word(
            slot,
            SlotWord {
                loc: self.loc_of(rec.off),
                tag: kh.tag,
            },
        );
        self.add(SH_ENTRIES, 1);
        self.add(SH_LIVE_BYTES, (rec.klen + rec.vlen) as i64);
        Reindexed::Yes
    }

    /// Calls `f` for every live entry (lock held).
    pub(crate) fn for_each(&self, mut f: impl FnMut(&Rec)) {
        for slot in 0..self.slots() {
            let w = self.slot_word(slot);
            if w.is_empty() {
                continue;
            }
            if let Some(rec) = self
                .off_of(w)
                .and_then(|(off, which)| self.read_rec(off, which))
                .filter(|r| r.state == STATE_LIVE)
            {
                f(&rec);
            }
        }
    }

    /// The location encoding of an offset, for verify.
    pub(crate) fn loc(&self, off: usize) -> u32 {
        self.loc_of(off)
    }

    /// Decodes a slot word's record offset, for verify.
    pub(crate) fn slot_target(&self, w: SlotWord) -> Option<(usize, LogId)> {
        self.off_of(w)
    }
}
