//! `verify` finds a seeded corruption of each invariant class listed in `src/verify.rs`,
//! and after a repair the file verifies clean again, with no panic on the way.
//!
//! Each test creates a cache, closes it, patches bytes of the file at offsets taken from
//! the byte map in `src/layout.rs` (the header words give the geometry), reopens it and
//! calls `verify` before anything else touches the damaged shard. The test decodes the
//! file itself, and first checks that its decoding agrees with what the cache holds, so a
//! wrong offset fails loudly instead of seeding nothing.

use std::path::Path;

mod common;
#[path = "common/image.rs"]
mod image;
use common::{repair_offline_after_close, small_options, Rng, TempCache};
use image::*;
use larder::{Cache, Error, Options, Report};

// Statistics slots (counters only) and fill slots (a robust mutex each).
const STATS_OFF: usize = 4096;
const STATS_SLOT_SIZE: usize = 128;
const FILL_SLOT_SIZE: usize = 128;
const FILL_SLOTS_BYTES: usize = 256 * FILL_SLOT_SIZE;
/// The near area after the fill slots (format 4): 256 bytes, page-aligned.
const NEAR_AREA_BYTES: usize = PAGE;
const PAGE: usize = 4096;
// Shard header words.
const SH_SEQ: usize = 64;
const SH_INTENT: usize = 72;
const SH_SMALL: usize = 80;
const SH_ENTRIES: usize = 96;
const SH_LIVE_BYTES: usize = 104;
/// The shard header (256 bytes) and the shard's fences (a ring of 64 words, 64 class
/// counters).
const SHARD_HEADER: usize = 1280;
const BUCKET_SLOTS: usize = 8;
const RECORD_HEADER: usize = 16;
const STATE_LIVE: u64 = 1;
const STATE_DEAD: u64 = 2;
const STATE_PAD: u64 = 3;

/// The shard the tests damage (shard 0 stays intact, to show problems are attributed).
const SHARD: usize = 1;

// ----- the file, decoded -------------------------------------------------------------

fn align8(n: usize) -> usize {
    (n + 7) & !7
}

#[derive(Debug)]
struct Layout {
    shards_off: usize,
    shard_size: usize,
    shard_count: usize,
    buckets: usize,
    small_cap: usize,
    main_cap: usize,
    ghost_len: usize,
    max_key: usize,
    max_value: usize,
    secret: Vec<u8>,
}

#[derive(Debug, Clone)]
struct Rec {
    /// Absolute offset in the file.
    off: usize,
    key: Vec<u8>,
    vlen: usize,
    state: u64,
    slot: usize,
    size: usize,
}

impl Layout {
    fn read(img: &[u8]) -> Layout {
        let w = |off| word(img, off) as usize;
        let shard_count = w(H_SHARD_COUNT);
        let shard_size = w(H_SHARD_SIZE);
        Layout {
            shards_off: w(H_TOTAL_SIZE) - shard_count * shard_size,
            shard_size,
            shard_count,
            buckets: w(H_BUCKETS),
            small_cap: w(H_SMALL_CAP),
            main_cap: w(H_MAIN_CAP),
            ghost_len: w(H_GHOST_LEN),
            max_key: w(H_MAX_KEY_LEN),
            max_value: w(H_MAX_VALUE_LEN),
            secret: img[H_SECRET..H_CHECKSUM].to_vec(),
        }
    }

    fn base(&self, shard: usize) -> usize {
        self.shards_off + shard * self.shard_size
    }

    fn slots(&self) -> usize {
        self.buckets * BUCKET_SLOTS
    }

    fn slot_off(&self, shard: usize, slot: usize) -> usize {
        self.base(shard) + SHARD_HEADER + slot * 8
    }

    /// Start of the small log (the data area) within a shard.
    fn small_rel(&self) -> usize {
        let slots = self.slots();
        SHARD_HEADER + slots * 8 + slots.div_ceil(64) * 8 + self.ghost_len * 8
    }

    fn data_start(&self, shard: usize) -> usize {
        self.base(shard) + self.small_rel()
    }

    /// The slot word's location field for a record at `off`.
    fn loc(&self, shard: usize, off: usize) -> u64 {
        ((off - self.data_start(shard)) / 8 + 1) as u64
    }

    /// Keyed xxh3 with the file's secret, as the cache hashes keys.
    fn hash(&self, key: &[u8]) -> u64 {
        xxhash_rust::xxh3::xxh3_64_with_secret(key, &self.secret)
    }

    fn shard_of(&self, key: &[u8]) -> usize {
        ((self.hash(key) >> 32) as usize) & (self.shard_count - 1)
    }

    /// `(tag, b1, b2)`: the key's tag and its two buckets.
    fn locate(&self, key: &[u8]) -> (u32, usize, usize) {
        let h = self.hash(key);
        let n = self.buckets as u64;
        let b1 = (((h >> 40) & 0xff_ffff) * n) >> 24;
        let m = (h ^ (h >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        let mut b2 = (((m >> 40) & 0xff_ffff) * n) >> 24;
        if b2 == b1 {
            b2 = (b1 + 1) % n;
        }
        (h as u32, b1 as usize, b2 as usize)
    }

    /// Every record of the small log from head to tail.
    fn small_log(&self, img: &[u8], shard: usize) -> Vec<Rec> {
        let start = self.data_start(shard);
        let cap = self.small_cap;
        let st = word(img, self.base(shard) + SH_SMALL);
        let head = (st & 0xffff_ffff) as usize * 8;
        let tail = (st >> 32) as usize * 8;
        assert!(head < cap && tail < cap, "small log state {st:#x}");
        let mut out = Vec::new();
        let mut pos = head;
        let mut remaining = (tail + cap - head) % cap;
        while remaining > 0 {
            if cap - pos < RECORD_HEADER {
                remaining -= cap - pos;
                pos = 0;
                continue;
            }
            let off = start + pos;
            let w0 = word(img, off);
            let w1 = word(img, off + 8);
            let state = w1 & 3;
            let klen = (w0 & 0xffff) as usize;
            let vlen = ((w1 >> 2) & ((1 << 26) - 1)) as usize;
            let size = match state {
                STATE_PAD => cap - pos,
                STATE_LIVE | STATE_DEAD => RECORD_HEADER + align8(klen) + align8(vlen),
                _ => panic!("record at {pos} has state {state}"),
            };
            assert!(klen <= self.max_key && vlen <= self.max_value);
            out.push(Rec {
                off,
                key: img[off + RECORD_HEADER..off + RECORD_HEADER + klen].to_vec(),
                vlen,
                state,
                slot: (w1 >> 32) as usize,
                size,
            });
            remaining -= size;
            pos = (pos + size) % cap;
        }
        out
    }

    fn live(&self, img: &[u8], shard: usize) -> Vec<Rec> {
        self.small_log(img, shard)
            .into_iter()
            .filter(|r| r.state == STATE_LIVE)
            .collect()
    }

    fn bucket_has_free_slot(&self, img: &[u8], shard: usize, bucket: usize) -> Option<usize> {
        (bucket * BUCKET_SLOTS..(bucket + 1) * BUCKET_SLOTS)
            .find(|&s| word(img, self.slot_off(shard, s)) == 0)
    }

    /// Moves record `r`'s slot word to `to` and points the record's back reference there.
    fn move_slot(&self, img: &mut [u8], shard: usize, r: &Rec, to: usize) {
        let w = word(img, self.slot_off(shard, r.slot));
        put(img, self.slot_off(shard, r.slot), 0);
        put(img, self.slot_off(shard, to), w);
        let w1 = word(img, r.off + 8);
        put(img, r.off + 8, (w1 & 0xffff_ffff) | ((to as u64) << 32));
    }
}

// ----- seeding -----------------------------------------------------------------------

fn options() -> Options {
    small_options().capacity(1 << 20).shards(2)
}

/// A closed cache with entries in both shards (keys `key-10` to `key-99`, all of one
/// length), some overwritten (leaving dead records), one removed. Returns the test dir
/// and the file's decoded layout, after checking that the decoding agrees with the cache.
fn seeded_cache(tag: &str) -> (TempCache, Layout) {
    let t = TempCache::new(tag);
    let c = options().open(t.name()).expect("create");
    for i in 10..100u32 {
        c.set(
            format!("key-{i}").as_bytes(),
            &vec![b'v'; (i % 40) as usize],
            None,
        )
        .expect("set");
    }
    for i in 10..40u32 {
        c.set(format!("key-{i}").as_bytes(), b"updated", None)
            .expect("update");
    }
    assert!(c.remove(b"key-40").expect("remove"));
    let report = c.verify().expect("verify");
    assert!(report.is_clean(), "{report}");
    let live_in_shard = c.stats().shards[SHARD].entries as usize;
    let keys_in_shard: Vec<Vec<u8>> = c
        .entries()
        .map(|e| e.expect("entry"))
        .filter(|e| e.shard == SHARD)
        .map(|e| e.key)
        .collect();
    drop(c);

    let img = read_all(&t.path);
    let l = Layout::read(&img);
    assert_eq!(l.shard_count, 2);
    // The decoding agrees with the cache: same live keys, each named by its slot, in
    // one of its two buckets, under its tag, in its shard.
    let live = l.live(&img, SHARD);
    assert_eq!(live.len(), live_in_shard, "every entry is in the small log");
    let mut decoded: Vec<Vec<u8>> = live.iter().map(|r| r.key.clone()).collect();
    let mut listed = keys_in_shard;
    decoded.sort();
    listed.sort();
    assert_eq!(decoded, listed);
    assert!(
        l.small_log(&img, SHARD)
            .iter()
            .any(|r| r.state == STATE_DEAD),
        "overwrites left dead records"
    );
    for r in &live {
        assert_eq!(l.shard_of(&r.key), SHARD);
        let (tag, b1, b2) = l.locate(&r.key);
        let w = word(&img, l.slot_off(SHARD, r.slot));
        assert_eq!(w & 0xffff_ffff, l.loc(SHARD, r.off), "{r:?}");
        assert_eq!((w >> 32) as u32, tag, "{r:?}");
        assert!(r.slot / BUCKET_SLOTS == b1 || r.slot / BUCKET_SLOTS == b2);
    }
    assert!(live.len() >= 10, "enough entries to damage: {}", live.len());
    (t, l)
}

/// Whether `report` has a problem in `shard` whose text contains `needle`.
fn found(report: &Report, shard: Option<usize>, needle: &str) -> bool {
    report
        .problems
        .iter()
        .any(|p| p.shard == shard && p.what.contains(needle))
}

/// Patches the closed cache with `damage`, reopens it and checks that `verify` reports
/// `needle` in the damaged shard (and nothing in the other), then that `repair` leaves
/// it clean and working. Returns the verify report.
fn seed_and_find(tag: &str, needle: &str, damage: impl FnOnce(&Layout, &mut Vec<u8>)) -> Report {
    let (t, l) = seeded_cache(tag);
    let mut img = read_all(&t.path);
    damage(&l, &mut img);
    write_at(&t.path, 0, &img);
    let c = options().open(t.name()).expect("reopen");
    let report = c.verify().expect("verify");
    assert!(
        found(&report, Some(SHARD), needle),
        "{needle:?} not reported:\n{report}"
    );
    assert!(
        report.problems.iter().all(|p| p.shard == Some(SHARD)),
        "problems outside the damaged shard:\n{report}"
    );
    repair_and_check(&c);
    report
}

/// `repair` leaves the cache verifying clean, and working.
fn repair_and_check(c: &Cache) {
    c.repair().expect("repair");
    let after = c.verify().expect("verify after repair");
    assert!(after.is_clean(), "not clean after repair:\n{after}");
    c.set(b"after-repair", b"ok", None).expect("set");
    assert_eq!(c.get(b"after-repair").expect("get"), Some(b"ok".to_vec()));
    for i in 10..100u32 {
        let _ = c.get(format!("key-{i}").as_bytes()).expect("get");
    }
    assert!(c.verify().expect("verify").is_clean());
}

// ----- 1. header ---------------------------------------------------------------------

/// Header damage while attached (the handle keeps its geometry; verify re-reads the
/// header). Repair rebuilds shards and leaves the header alone: a damaged header means
/// the file must be removed, and repair must not guess. So here: found, and repair runs
/// without panicking but does not hide it.
fn header_damage_is_found(tag: &str, needle: &str, damage: impl FnOnce(&Path)) {
    let (t, _) = seeded_cache(tag);
    let c = options().open(t.name()).expect("reopen");
    damage(&t.path);
    let report = c.verify().expect("verify");
    assert!(
        found(&report, None, needle),
        "{needle:?} not reported:\n{report}"
    );
    assert!(
        report.problems.iter().all(|p| p.shard.is_none()),
        "{report}"
    );
    c.repair().expect("repair");
    let after = c.verify().expect("verify after repair");
    assert!(found(&after, None, needle), "{after}");
    assert_eq!(
        c.get(b"key-50").expect("get"),
        Some(vec![b'v'; 10]),
        "the data is still served"
    );
}

#[test]
fn header_checksum_mismatch_is_found() {
    header_damage_is_found("v-hdr-sum", "header checksum", |p| {
        write_at(p, H_RESERVED + 5, &[0x77]);
    });
}

#[test]
fn header_magic_damage_is_found() {
    header_damage_is_found("v-hdr-magic", "not a larder cache", |p| {
        write_at(p, H_MAGIC, b"XXXXXXXX");
    });
}

#[test]
fn header_layout_field_damage_is_found() {
    header_damage_is_found("v-hdr-layout", "header field buckets", |p| {
        let img = read_all(p);
        write_at(p, H_BUCKETS, &(word(&img, H_BUCKETS) + 1).to_le_bytes());
        fix_checksum(p);
    });
}

// ----- 2. locks ----------------------------------------------------------------------

/// A mutex whose static field changed (a fill slot): reported by verify; the online
/// repair cannot re-initialise a lock others may hold, the offline repair (exclusive)
/// can, and then the file verifies clean. (Statistics slots hold no mutex since format
/// 2: their words are counters, which any value leaves valid.)
#[test]
fn changed_mutex_kind_of_a_slot_is_found() {
    let (t, _) = seeded_cache("v-lock");
    let fill_off = (STATS_OFF + 129 * STATS_SLOT_SIZE).div_ceil(PAGE) * PAGE;
    let mut img = read_all(&t.path);
    let fill_kind = fill_off + 5 * FILL_SLOT_SIZE + MUTEX_KIND;
    assert_eq!(
        fill_off + FILL_SLOTS_BYTES + NEAR_AREA_BYTES,
        Layout::read(&img).shards_off
    );
    assert_ne!(img[fill_kind..fill_kind + 4], [0, 0, 0, 0]);
    img[fill_kind..fill_kind + 4].copy_from_slice(&0x2bad_u32.to_le_bytes());
    write_at(&t.path, 0, &img);
    let c = options().open(t.name()).expect("reopen");
    let report = c.verify().expect("verify");
    assert_eq!(report.problems.len(), 1, "{report}");
    assert!(
        found(&report, None, "fill slot 5: mutex kind field is 0x2bad"),
        "{report}"
    );
    c.repair().expect("online repair");
    drop(c);
    repair_offline_after_close(t.name());
    let c = options().open(t.name()).expect("reopen");
    let after = c.verify().expect("verify");
    assert!(after.is_clean(), "{after}");
}

/// The near-cache lease's mutex whose static field changed: reported by verify,
/// refused by `try_lease` as `Corrupt` (never locked as if it were sound), and
/// re-initialised by the offline repair.
#[test]
fn changed_mutex_kind_of_the_lease_is_found() {
    let (t, l) = seeded_cache("v-lease");
    let lease = l.shards_off - NEAR_AREA_BYTES;
    let kind = lease + MUTEX_KIND;
    let img = read_all(&t.path);
    assert_ne!(
        img[kind..kind + 4],
        [0, 0, 0, 0],
        "the lease is not where expected"
    );
    write_at(&t.path, kind, &0x4bad_u32.to_le_bytes());
    let c = options().open(t.name()).expect("reopen");
    let report = c.verify().expect("verify");
    assert!(
        found(
            &report,
            None,
            "near-cache lease 0: mutex kind field is 0x4bad"
        ),
        "{report}"
    );
    assert!(
        matches!(c.near().try_lease(&[""]), Err(Error::Corrupt { .. })),
        "a damaged lease was taken"
    );
    drop(c);
    repair_offline_after_close(t.name());
    let c = options().open(t.name()).expect("reopen");
    let after = c.verify().expect("verify");
    assert!(after.is_clean(), "{after}");
    assert!(c.near().try_lease(&[""]).expect("try_lease").is_some());
}

/// A shard lock whose static field changed: verify cannot take that lock, and says so
/// (`Corrupt`, or a report naming the lock); the offline repair restores it.
#[test]
fn changed_mutex_kind_of_a_shard_lock_is_found() {
    let (t, l) = seeded_cache("v-shard-lock");
    let kind = l.base(SHARD) + MUTEX_KIND;
    write_at(&t.path, kind, &0x3bad_u32.to_le_bytes());
    let c = options().open(t.name()).expect("reopen");
    match c.verify() {
        Err(Error::Corrupt { detail, .. }) => {
            assert!(detail.contains("mutex kind field is 0x3bad"), "{detail}")
        }
        Ok(report) => assert!(
            found(
                &report,
                None,
                &format!("shard lock {SHARD}: mutex kind field is 0x3bad")
            ),
            "{report}"
        ),
        Err(other) => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(matches!(c.repair(), Err(Error::Corrupt { .. })));
    drop(c);
    repair_offline_after_close(t.name());
    let c = options().open(t.name()).expect("reopen");
    let after = c.verify().expect("verify");
    assert!(after.is_clean(), "{after}");
    repair_and_check(&c);
}

// ----- 3. shard state ----------------------------------------------------------------

/// An odd sequence counter is a write left unfinished: the first locked operation
/// (verify's own) repairs the shard, so verify is clean and the recovery is counted.
#[test]
fn odd_sequence_counter_is_repaired_before_verifying() {
    let (t, l) = seeded_cache("v-seq");
    let mut img = read_all(&t.path);
    let seq = l.base(SHARD) + SH_SEQ;
    let v = word(&img, seq);
    assert_eq!(v % 2, 0);
    put(&mut img, seq, v + 1);
    write_at(&t.path, 0, &img);
    let c = options().open(t.name()).expect("reopen");
    assert_eq!(c.stats().shards[SHARD].recoveries, 0);
    let report = c.verify().expect("verify");
    assert!(report.is_clean(), "{report}");
    let s = c.stats();
    assert_eq!(s.shards[SHARD].recoveries, 1);
    assert_eq!(s.shards[SHARD].repair_dropped, 0);
    assert_eq!(s.shards[1 - SHARD].recoveries, 0);
    assert_eq!(s.recoveries, 1);
    let img = read_all(&t.path);
    assert_eq!(word(&img, seq) % 2, 0, "the counter is even again");
    for i in 41..100u32 {
        assert!(c.get(format!("key-{i}").as_bytes()).expect("get").is_some());
    }
    repair_and_check(&c);
}

#[test]
fn intent_left_set_is_found() {
    seed_and_find(
        "v-intent",
        "intent record left set (0x300000002)",
        |l, img| {
            // "remove, slot 3": what a writer that died mid-remove leaves.
            put(img, l.base(SHARD) + SH_INTENT, 2 | (3 << 32));
        },
    );
}

// ----- 4. log states -----------------------------------------------------------------

#[test]
fn log_state_outside_its_log_is_found() {
    seed_and_find("v-logstate", "Small log state head", |l, img| {
        let st = l.base(SHARD) + SH_SMALL;
        let tail = word(img, st) >> 32;
        put(img, st, (l.small_cap as u64 / 8 + 3) | (tail << 32));
    });
}

#[test]
fn log_tail_outside_its_log_is_found() {
    seed_and_find("v-logtail", "outside its", |l, img| {
        let st = l.base(SHARD) + SH_SMALL;
        let head = word(img, st) & 0xffff_ffff;
        put(img, st, head | ((l.small_cap as u64 / 8 + 1) << 32));
    });
}

// ----- 5. records --------------------------------------------------------------------

#[test]
fn record_that_does_not_decode_is_found() {
    seed_and_find("v-rec-state", "does not decode", |l, img| {
        let live = l.live(img, SHARD);
        let r = &live[live.len() / 2];
        let w1 = word(img, r.off + 8);
        put(img, r.off + 8, w1 & !3); // state 0: no such state
    });
}

#[test]
fn record_with_key_length_over_the_limit_is_found() {
    seed_and_find("v-rec-klen", "does not decode", |l, img| {
        let live = l.live(img, SHARD);
        let r = &live[live.len() / 3];
        let w0 = word(img, r.off);
        put(img, r.off, (w0 & !0xffff) | (l.max_key as u64 + 1));
    });
}

#[test]
fn record_crossing_the_tail_is_found() {
    seed_and_find("v-rec-tail", "crosses the tail", |l, img| {
        let last = l.small_log(img, SHARD).pop().expect("a record");
        assert!(last.size > 8);
        let st = l.base(SHARD) + SH_SMALL;
        let head = word(img, st) & 0xffff_ffff;
        let rel = (last.off - l.data_start(SHARD)) as u64;
        put(img, st, head | ((rel / 8 + 1) << 32));
    });
}

#[test]
fn record_naming_a_slot_outside_the_index_is_found() {
    seed_and_find("v-rec-slot", "outside the index", |l, img| {
        let r = l.live(img, SHARD)[2].clone();
        let w1 = word(img, r.off + 8);
        let bad = (l.slots() + 5) as u64;
        put(img, r.off + 8, (w1 & 0xffff_ffff) | (bad << 32));
    });
}

// ----- 6. index to records -------------------------------------------------------------

#[test]
fn slot_pointing_outside_the_logs_is_found() {
    seed_and_find("v-slot-out", "points outside the logs", |l, img| {
        let free = (0..l.slots())
            .find(|&s| word(img, l.slot_off(SHARD, s)) == 0)
            .expect("a free slot");
        put(img, l.slot_off(SHARD, free), (0x1234 << 32) | 0xffff_fff0);
    });
}

#[test]
fn slot_pointing_into_the_middle_of_a_record_is_found() {
    seed_and_find("v-slot-mid", "points at no live record", |l, img| {
        let r = l.live(img, SHARD)[4].clone();
        let w = word(img, l.slot_off(SHARD, r.slot));
        put(img, l.slot_off(SHARD, r.slot), w + 1);
    });
}

#[test]
fn slot_pointing_at_a_dead_record_is_found() {
    seed_and_find("v-slot-dead", "points at no live record", |l, img| {
        let dead = l
            .small_log(img, SHARD)
            .into_iter()
            .find(|r| r.state == STATE_DEAD)
            .expect("a dead record");
        let free = (0..l.slots())
            .find(|&s| word(img, l.slot_off(SHARD, s)) == 0)
            .expect("a free slot");
        let (tag, _, _) = l.locate(&dead.key);
        put(
            img,
            l.slot_off(SHARD, free),
            ((tag as u64) << 32) | l.loc(SHARD, dead.off),
        );
    });
}

#[test]
fn slot_with_a_wrong_tag_is_found() {
    let report = seed_and_find("v-slot-tag", "tag that does not match its key", |l, img| {
        let r = l.live(img, SHARD)[1].clone();
        let off = l.slot_off(SHARD, r.slot);
        let w = word(img, off);
        put(img, off, w ^ (1 << 40));
    });
    assert!(found(&report, Some(SHARD), "cannot be found"), "{report}");
}

/// A damaged key byte (the key still belongs to this shard): the record no longer
/// matches the tag its slot holds.
#[test]
fn record_whose_key_changed_is_found() {
    seed_and_find("v-rec-key", "does not match its key", |l, img| {
        let r = l.live(img, SHARD)[3].clone();
        let mut key = r.key.clone();
        let changed = (0..key.len())
            .flat_map(|i| (0..8).map(move |bit| (i, bit)))
            .find(|&(i, bit)| {
                key[i] ^= 1 << bit;
                let ok = l.shard_of(&key) == SHARD;
                if !ok {
                    key[i] ^= 1 << bit;
                }
                ok
            });
        assert!(
            changed.is_some(),
            "a one-bit change that stays in the shard"
        );
        let at = r.off + RECORD_HEADER;
        img[at..at + key.len()].copy_from_slice(&key);
    });
}

/// A record whose key belongs to another shard: it could never be found here.
#[test]
fn record_holding_another_shards_key_is_found() {
    let needle = format!("holds a key of shard {}", 1 - SHARD);
    seed_and_find("v-rec-foreign", &needle, |l, img| {
        let r = l.live(img, SHARD)[2].clone();
        let foreign = (10..100u32)
            .map(|i| format!("key-{i}").into_bytes())
            .find(|k| l.shard_of(k) != SHARD)
            .expect("a key of the other shard");
        assert_eq!(foreign.len(), r.key.len());
        let at = r.off + RECORD_HEADER;
        img[at..at + foreign.len()].copy_from_slice(&foreign);
    });
}

#[test]
fn slot_in_a_bucket_its_key_does_not_hash_to_is_found() {
    seed_and_find("v-slot-bucket", "hashes to other buckets", |l, img| {
        let r = l.live(img, SHARD)[0].clone();
        let (_, b1, b2) = l.locate(&r.key);
        let (bucket, to) = (0..l.buckets)
            .filter(|&b| b != b1 && b != b2)
            .find_map(|b| l.bucket_has_free_slot(img, SHARD, b).map(|s| (b, s)))
            .expect("a free slot in another bucket");
        assert_ne!(bucket, r.slot / BUCKET_SLOTS);
        l.move_slot(img, SHARD, &r, to);
    });
}

/// A second slot pointing at a live record that its own slot already names: the record
/// is reachable twice, and removing its key through one slot leaves the other pointing
/// at a dead record. Class 6 says every slot names a record "whose back reference is
/// that slot"; the slot pass of `Shard::verify` does not check the back reference.
#[test]
fn second_slot_naming_a_live_record_is_found() {
    let (t, l) = seeded_cache("v-slot-dup");
    let mut img = read_all(&t.path);
    let r = l.live(&img, SHARD)[0].clone();
    let bucket = r.slot / BUCKET_SLOTS;
    let free = l
        .bucket_has_free_slot(&img, SHARD, bucket)
        .expect("a free slot in the record's bucket");
    let w = word(&img, l.slot_off(SHARD, r.slot));
    put(&mut img, l.slot_off(SHARD, free), w);
    write_at(&t.path, 0, &img);
    let c = options().open(t.name()).expect("reopen");
    let report = c.verify().expect("verify");
    // What the stray slot does if left alone: remove goes through one of the two slots.
    let after_remove = {
        assert!(c.remove(&r.key).expect("remove"));
        c.verify().expect("verify")
    };
    assert!(
        !report.is_clean(),
        "stray slot {free} (copy of slot {}) not reported; after a remove of its key \
         verify says:\n{after_remove}",
        r.slot
    );
    repair_and_check(&c);
}

// ----- 7. records to index -------------------------------------------------------------

#[test]
fn live_record_no_slot_names_is_found() {
    seed_and_find("v-rec-orphan", "is not named by its slot", |l, img| {
        let r = l.live(img, SHARD)[5].clone();
        put(img, l.slot_off(SHARD, r.slot), 0);
    });
}

/// An overwritten (dead) record made live again: the old value of a key would come
/// back. Its slot names the newer record, so the resurrected one is found.
#[test]
fn resurrected_dead_record_is_found() {
    seed_and_find("v-rec-undead", "is not named by its slot", |l, img| {
        let dead = l
            .small_log(img, SHARD)
            .into_iter()
            .find(|r| r.state == STATE_DEAD)
            .expect("a dead record");
        let w1 = word(img, dead.off + 8);
        put(img, dead.off + 8, (w1 & !3) | STATE_LIVE);
        let bytes = word(img, l.base(SHARD) + SH_LIVE_BYTES);
        put(
            img,
            l.base(SHARD) + SH_LIVE_BYTES,
            bytes + (dead.key.len() + dead.vlen) as u64,
        );
        let n = word(img, l.base(SHARD) + SH_ENTRIES);
        put(img, l.base(SHARD) + SH_ENTRIES, n + 1);
    });
}

/// Two live records of one key, each named by its own slot in the key's bucket under
/// the key's tag: a key live twice.
#[test]
fn key_live_twice_is_found() {
    seed_and_find("v-rec-twice", "live twice", |l, img| {
        let live = l.live(img, SHARD);
        let first = live[0].clone();
        let (tag, _, _) = l.locate(&first.key);
        let second = live
            .iter()
            .skip(1)
            .find(|r| r.key.len() == first.key.len())
            .expect("a record with a key of the same length")
            .clone();
        let bucket = first.slot / BUCKET_SLOTS;
        let to = l
            .bucket_has_free_slot(img, SHARD, bucket)
            .expect("a free slot in the first key's bucket");
        let at = second.off + RECORD_HEADER;
        img[at..at + first.key.len()].copy_from_slice(&first.key);
        l.move_slot(img, SHARD, &second, to);
        put(
            img,
            l.slot_off(SHARD, to),
            ((tag as u64) << 32) | l.loc(SHARD, second.off),
        );
    });
}

// ----- 8. counters -------------------------------------------------------------------

#[test]
fn entries_counter_mismatch_is_found() {
    seed_and_find("v-cnt-entries", "entries counter is", |l, img| {
        let off = l.base(SHARD) + SH_ENTRIES;
        let v = word(img, off);
        put(img, off, v + 1);
    });
}

#[test]
fn live_bytes_counter_mismatch_is_found() {
    seed_and_find("v-cnt-bytes", "live bytes counter is", |l, img| {
        let off = l.base(SHARD) + SH_LIVE_BYTES;
        let v = word(img, off);
        put(img, off, v.wrapping_sub(3));
    });
}

// ----- repair is safe on arbitrary damage -------------------------------------------------

/// Garbage over a whole shard's data area: verify reports without panicking, repair
/// leaves a clean, working shard.
#[test]
fn garbage_over_a_shard_is_found_and_repaired() {
    seed_and_find("v-garbage", "", |l, img| {
        let start = l.base(SHARD) + SHARD_HEADER;
        let end = l.base(SHARD) + l.small_rel() + l.small_cap + l.main_cap;
        let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
        for off in (start..end).step_by(8) {
            put(img, off, rng.next_u64());
        }
    });
}
