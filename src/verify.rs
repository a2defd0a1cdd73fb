//! `verify`: every invariant of the file, checked and reported one problem at a time.
//!
//! Invariant classes (each is seeded and caught in `tests/verify.rs`):
//! 1. header: checksum, magic, layout;
//! 2. locks: every mutex's static field is what creation wrote;
//! 3. shard state: sequence counter even, no intent left behind;
//! 4. log states: head and tail inside their log;
//! 5. records: every record between head and tail decodes and fits;
//! 6. index to records: every slot names the start of a live record whose back
//!    reference is that slot, whose key hashes to that slot's buckets and tag;
//! 7. records to index: every live record is named by its slot, and no key is live twice;
//! 8. counters: entries and live bytes match the records.

use std::fmt;

use crate::file::Attached;
use crate::layout::{
    BUCKET_SLOTS, FILL_SLOTS, HEADER_SIZE, MAX_KEY_LIMIT, RECORD_HEADER, SH_ENTRIES, SH_INTENT,
    SH_LIVE_BYTES, SH_VERSION, STATE_LIVE,
};
use crate::lock::RobustMutex;
use crate::shard::{LogId, Probe, Shard};
use crate::words::Intent;

/// One problem found by [`Cache::verify`](crate::Cache::verify).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Problem {
    /// The shard, or `None` for the file's header and shared areas.
    pub shard: Option<usize>,
    /// What is wrong.
    pub what: String,
}

/// The result of [`Cache::verify`](crate::Cache::verify); `Display` lists every problem.
///
/// ```
/// let report = larder::Report::default();
/// assert!(report.is_clean());
/// assert_eq!(report.to_string(), "clean");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// Every problem, in file order.
    pub problems: Vec<Problem>,
}

impl Report {
    /// True if nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    pub(crate) fn push(&mut self, shard: Option<usize>, what: String) {
        self.problems.push(Problem { shard, what });
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.problems.is_empty() {
            return f.write_str("clean");
        }
        writeln!(f, "{} problem(s):", self.problems.len())?;
        for p in &self.problems {
            match p.shard {
                Some(s) => writeln!(f, "  shard {s}: {}", p.what)?,
                None => writeln!(f, "  file: {}", p.what)?,
            }
        }
        Ok(())
    }
}

/// Checks the header and every mutex's static field.
pub(crate) fn header(a: &Attached, report: &mut Report) {
    let mut buf = vec![0u8; HEADER_SIZE];
    a.region.read_bytes(0, &mut buf);
    if let Err(e) = crate::header::parse_header(&a.path, &buf) {
        report.push(None, format!("header: {e}"));
    }
    let g = &a.geo;
    let locks = (0..FILL_SLOTS)
        .map(|i| ("fill slot", i, g.fill_slot(i)))
        .chain((0..g.shard_count).map(|i| ("shard lock", i, g.shard_base(i))))
        .chain([("near-cache lease", 0, g.near_off)]);
    for (what, i, off) in locks {
        if let Ok(m) = RobustMutex::at(&a.region, off, a.kind) {
            if let Err(crate::lock::LockError::Corrupt(d)) = m.check() {
                report.push(None, format!("{what} {i}: {d}"));
            }
        }
    }
}

impl Shard<'_> {
    /// Appends every problem of this shard to `out` (lock held).
    pub(crate) fn verify(&self, out: &mut Vec<String>) {
        if self.r.load(self.seq_off()) & 1 == 1 {
            out.push("sequence counter is odd: a write was left unfinished".into());
        }
        let intent = self.r.load(self.hdr(SH_INTENT));
        if intent != Intent::NONE.encode() {
            out.push(format!("intent record left set ({intent:#x})"));
        }
        // Record starts seen by the walk, one bit per 8 bytes of both logs.
        let data = self.g.small_cap + self.g.main_cap;
        let mut starts = vec![0u64; (data / 8).div_ceil(64)];
        let data_start = self.base + self.g.small_off;
        let mut live = 0u64;
        let mut live_bytes = 0u64;
        let mut key = vec![0u8; MAX_KEY_LIMIT];
        let given = self.counter(SH_VERSION);
        for which in [LogId::Small, LogId::Main] {
            let (start, cap, _) = self.log_bounds(which);
            let (head, tail) = match self.state(which) {
                Ok(ht) => ht,
                Err(e) => {
                    out.push(e.0);
                    continue;
                }
            };
            let mut pos = head;
            let mut remaining = Self::used(cap, head, tail);
            while remaining > 0 {
                if cap - pos < RECORD_HEADER {
                    remaining = remaining.saturating_sub(cap - pos);
                    pos = 0;
                    continue;
                }
                let Some(rec) = self.read_rec(start + pos, which) else {
                    out.push(format!("{which:?} log: record at {pos} does not decode"));
                    break;
                };
                if rec.size > remaining {
                    out.push(format!("{which:?} log: record at {pos} crosses the tail"));
                    break;
                }
                if let Some(v) = self.version(&rec) {
                    if v > given {
                        out.push(format!(
                            "{which:?} log: record at {pos} has version {v}, past the \
                             shard's last given out, {given}"
                        ));
                    }
                }
                if rec.state == STATE_LIVE {
                    let bit = (rec.off - data_start) / 8;
                    starts[bit / 64] |= 1 << (bit % 64);
                    live += 1;
                    live_bytes += (rec.klen + rec.vlen) as u64;
                    self.check_record(&rec, &mut key, out);
                }
                remaining -= rec.size;
                pos = (pos + rec.size) % cap;
            }
        }
        for slot in 0..self.slots() {
            let w = self.slot_word(slot);
            if w.is_empty() {
                continue;
            }
            match self.slot_target(w) {
                Some((off, which)) => {
                    let bit = (off - data_start) / 8;
                    if starts[bit / 64] & (1 << (bit % 64)) == 0 {
                        out.push(format!("slot {slot} points at no live record"));
                    } else if let Some(rec) = self.read_rec(off, which) {
                        if rec.slot != slot {
                            out.push(format!(
                                "slot {slot} names the record at {off}, whose back reference \
                                 is slot {}",
                                rec.slot
                            ));
                        }
                    }
                }
                None => out.push(format!("slot {slot} points outside the logs")),
            }
        }
        let entries = self.counter(SH_ENTRIES);
        if entries != live {
            out.push(format!(
                "entries counter is {entries}, the logs hold {live}"
            ));
        }
        let bytes = self.counter(SH_LIVE_BYTES);
        if bytes != live_bytes {
            out.push(format!(
                "live bytes counter is {bytes}, the logs hold {live_bytes}"
            ));
        }
    }

    fn check_record(&self, rec: &crate::shard::Rec, key: &mut [u8], out: &mut Vec<String>) {
        let slot = rec.slot;
        if slot >= self.slots() {
            out.push(format!(
                "record at {} names slot {slot}, outside the index",
                rec.off
            ));
            return;
        }
        let w = self.slot_word(slot);
        if w.loc != self.loc(rec.off) {
            out.push(format!(
                "record at {} is not named by its slot {slot}",
                rec.off
            ));
            return;
        }
        self.read_key(rec, key);
        let k = &key[..rec.klen];
        let h = self.hasher.hash(k);
        if self.g.shard_of(h) != self.index() {
            out.push(format!(
                "slot {slot} holds a key of shard {}, not this one",
                self.g.shard_of(h)
            ));
            return;
        }
        let kh = self.locate(h);
        let bucket = slot / BUCKET_SLOTS;
        if bucket != kh.b1 && bucket != kh.b2 {
            out.push(format!(
                "slot {slot} holds a key that hashes to other buckets"
            ));
        }
        if w.tag != kh.tag {
            out.push(format!("slot {slot} has a tag that does not match its key"));
        }
        match self.find(k, &kh) {
            Probe::Hit { rec: found, .. } if found.off == rec.off => {}
            Probe::Hit { .. } => out.push(format!("key of slot {slot} is live twice")),
            _ => out.push(format!("key of slot {slot} cannot be found")),
        }
    }
}
