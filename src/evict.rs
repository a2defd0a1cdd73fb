//! The eviction policy: S3-FIFO over the shard's two logs.
//!
//! S3-FIFO (Yang et al., SOSP 2023) keeps a small FIFO (here 10% of the shard's data),
//! a main FIFO (90%) and a ghost FIFO of recently evicted keys:
//! - a new key enters the small log, unless the ghost remembers it (then main);
//! - when the small log needs room, its oldest entry moves to main if it was read since
//!   it entered or if main has free room (the cache is not full yet), and is otherwise
//!   evicted and remembered in the ghost;
//! - when main needs room, its oldest entry is moved to main's tail if it was read since
//!   it was last considered (its visited bit is cleared), and is otherwise evicted.
//!
//! The index can fill before the logs do: a new key whose two buckets are both full
//! evicts one of their sixteen entries (`Shard::free_slot`), an expired one first, then
//! one not read since it was last considered, then the one nearest its log's head. The
//! last rule keeps FIFO order and frees the dropped record's space soonest, since a
//! record dropped mid-log stays as dead space until the head reaches it.
//!
//! One-hit wonders leave through the small log quickly, which is what makes S3-FIFO beat
//! LRU on skewed (Zipf) workloads and resist scans; a hit costs at most one atomic
//! fetch-or, and none once the bit is set. Every log is FIFO, so space is reclaimed at
//! the head only and mixed value sizes cannot fragment a shard.
//!
//! Work is bounded: each call to make room moves at most [`MAX_REINSERTS`] entries
//! within main before it evicts regardless, and expired entries at the head are dropped
//! (counted as expirations) without a scan of the shard.

use crate::layout::{
    BUCKET_SLOTS, RECORD_HEADER, SH_EVICTIONS, SH_EXPIRATIONS, SH_LIVE_BYTES, STATE_LIVE,
};
use crate::shard::{Damaged, KeyHash, LogId, Rec, Shard};
use crate::words::SlotWord;

/// Most entries moved within the main log per room-making call.
pub(crate) const MAX_REINSERTS: usize = 32;

impl Shard<'_> {
    /// Evicts from the head of `which` until a record of `need` bytes fits at its tail.
    pub(crate) fn make_room(&self, which: LogId, need: usize, now: u64) -> Result<(), Damaged> {
        let (_, cap, _) = self.log_bounds(which);
        let mut budget = MAX_REINSERTS;
        // Every step frees a record or wraps the head: bounded by the log's record count.
        let mut steps = cap / RECORD_HEADER + 4;
        loop {
            let (head, tail) = self.state(which)?;
            if self.fits(which, head, tail, need) {
                return Ok(());
            }
            if head == tail || steps == 0 {
                return Err(Damaged(format!(
                    "{which:?} log cannot make room for {need} bytes"
                )));
            }
            steps -= 1;
            self.pop_head(which, head, tail, now, &mut budget)?;
        }
    }

    /// Pops the head of `which` (its state is `head`, `tail`): evicts or moves the
    /// record there, or skips it if it is dead or no slot names it.
    pub(crate) fn pop_head(
        &self,
        which: LogId,
        head: usize,
        tail: usize,
        now: u64,
        budget: &mut usize,
    ) -> Result<(), Damaged> {
        let (start, cap, _) = self.log_bounds(which);
        if cap - head < RECORD_HEADER {
            // Implicit pad at the end of the log.
            self.set_state(which, 0, tail);
            return Ok(());
        }
        let rec = self
            .read_rec(start + head, which)
            .ok_or_else(|| Damaged(format!("{which:?} log head does not decode")))?;
        if rec.size > Self::used(cap, head, tail) {
            return Err(Damaged(format!("{which:?} log head crosses its tail")));
        }
        let new_head = (head + rec.size) % cap;
        if rec.state != STATE_LIVE {
            self.set_state(which, new_head, tail);
            return Ok(());
        }
        let slot = rec.slot;
        let owned = slot < self.slots() && self.slot_word(slot).loc == self.loc(rec.off);
        if !owned {
            // No slot points here (a record whose slot was lost to a repair): garbage.
            self.set_state(which, new_head, tail);
            return Ok(());
        }
        if rec.expired(now) {
            self.drop_head(which, new_head, tail, slot, &rec, SH_EXPIRATIONS);
            return Ok(());
        }
        match which {
            LogId::Small if self.is_visited(slot) => {
                self.clear_visited(slot);
                self.move_to_main(which, new_head, tail, &rec, now)
            }
            // While main has free room the cache is not full: nothing is evicted, the
            // entry just moves on (S3-FIFO evicts only when the whole cache is full).
            LogId::Small if self.main_has_room(rec.size)? => {
                self.move_to_main(which, new_head, tail, &rec, now)
            }
            LogId::Small => {
                self.ghost_insert(slot, self.slot_word(slot).tag);
                self.drop_head(which, new_head, tail, slot, &rec, SH_EVICTIONS);
                Ok(())
            }
            LogId::Main if *budget > 0 && self.is_visited(slot) => {
                *budget -= 1;
                self.clear_visited(slot);
                self.move_to_main(which, new_head, tail, &rec, now)
            }
            // Much of main is dead records (overwritten or removed): the cache is not
            // full, so compact this entry forward instead of evicting it.
            LogId::Main if *budget > 0 && self.underfull() => {
                *budget -= 1;
                self.move_to_main(which, new_head, tail, &rec, now)
            }
            LogId::Main => {
                self.drop_head(which, new_head, tail, slot, &rec, SH_EVICTIONS);
                Ok(())
            }
        }
    }

    /// Whether live keys and values fill less than 70% of main: the rest of a full log is
    /// then dead records, whose space a forward move reclaims.
    fn underfull(&self) -> bool {
        self.counter(SH_LIVE_BYTES).saturating_mul(10) < self.g.main_cap as u64 * 7
    }

    fn main_has_room(&self, size: usize) -> Result<bool, Damaged> {
        let (head, tail) = self.state(LogId::Main)?;
        Ok(self.fits(LogId::Main, head, tail, size))
    }

    fn drop_head(
        &self,
        which: LogId,
        new_head: usize,
        tail: usize,
        slot: usize,
        rec: &Rec,
        counter: usize,
    ) {
        self.set_intent(crate::layout::INTENT_EVICT, slot);
        self.set_state(which, new_head, tail);
        crash_point!("evict.after_pop");
        self.forget(slot, rec);
        self.add(counter, 1);
        self.clear_intent();
    }

    /// Moves the record at the head of `from` to the tail of main. The record is popped
    /// first and published last, so a crash in between drops it rather than leaving two
    /// copies; the copy runs forwards, which is correct even where the new place overlaps
    /// the old one (it is always at or before it).
    fn move_to_main(
        &self,
        from: LogId,
        new_head: usize,
        tail: usize,
        rec: &Rec,
        now: u64,
    ) -> Result<(), Damaged> {
        let slot = rec.slot;
        if from == LogId::Small {
            self.make_room(LogId::Main, rec.size, now)?;
        }
        self.set_intent(crate::layout::INTENT_MOVE, slot);
        self.set_state(from, new_head, tail);
        crash_point!("move.after_pop");
        let (mhead, mtail) = self.state(LogId::Main)?;
        if !self.fits(LogId::Main, mhead, mtail, rec.size) {
            // Only possible for a move within main whose pad does not fit: evict instead.
            self.forget(slot, rec);
            self.add(SH_EVICTIONS, 1);
            self.clear_intent();
            return Ok(());
        }
        let (dst, new_tail) = self.place(LogId::Main, mtail, rec.size);
        self.r.move_forward(
            dst + RECORD_HEADER,
            rec.off + RECORD_HEADER,
            rec.size - RECORD_HEADER,
        );
        crash_point!("move.after_copy");
        self.r.store(dst, rec.w0);
        self.r.store(dst + 8, rec.w1);
        self.set_state(LogId::Main, mhead, new_tail);
        crash_point!("move.after_publish");
        let moved = SlotWord {
            loc: self.loc(dst),
            ..self.slot_word(slot)
        };
        self.set_slot_word(slot, moved);
        self.clear_intent();
        Ok(())
    }
}

// ----- the ghost queue and the index's victim ------------------------------------------

impl Shard<'_> {
    fn ghost_index(&self, fp: u64) -> usize {
        let m = fp.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
        ((m * self.g.ghost_len as u64) >> 32) as usize
    }

    fn ghost_fp(bucket: usize, tag: u32) -> u64 {
        (1 << 63) | ((bucket as u64) << 32) | tag as u64
    }

    /// Remembers an entry evicted from the small log (S3-FIFO's ghost queue, kept as a
    /// direct-mapped table of fingerprints: a newer ghost replaces an older one).
    pub(crate) fn ghost_insert(&self, slot: usize, tag: u32) {
        let fp = Self::ghost_fp(slot / BUCKET_SLOTS, tag);
        let off = self.base + self.g.ghost_off + self.ghost_index(fp) * 8;
        self.r.store(off, fp);
    }

    /// Whether `kh` was recently evicted from the small log; forgets it if so.
    pub(crate) fn ghost_take(&self, kh: &KeyHash) -> bool {
        for b in [kh.b1, kh.b2] {
            let fp = Self::ghost_fp(b, kh.tag);
            let off = self.base + self.g.ghost_off + self.ghost_index(fp) * 8;
            if self.r.load(off) == fp {
                self.r.store(off, 0);
                return true;
            }
        }
        false
    }

    /// A free slot in the key's two buckets (the emptier one), evicting an entry of the
    /// pair if both are full: this bounds every probe at two buckets.
    pub(crate) fn free_slot(&self, kh: &KeyHash, now: u64) -> Result<usize, Damaged> {
        let mut best: Option<usize> = None;
        let mut best_free = 0;
        for b in [kh.b1, kh.b2] {
            let mut first = None;
            let mut free = 0;
            for i in 0..BUCKET_SLOTS {
                let slot = b * BUCKET_SLOTS + i;
                if self.slot_word(slot).is_empty() {
                    free += 1;
                    first.get_or_insert(slot);
                }
            }
            if free > best_free {
                best_free = free;
                best = first;
            }
        }
        if let Some(slot) = best {
            return Ok(slot);
        }
        // Both buckets full: evict one of their entries, preferring an expired one, then
        // one not visited since it was last considered, then the one nearest its log's
        // head: the oldest, whose record the head reclaims soonest (a record dropped
        // mid-log stays as dead space until the head passes it).
        let heads = [self.state(LogId::Small)?.0, self.state(LogId::Main)?.0];
        let mut victim = kh.b1 * BUCKET_SLOTS;
        let mut victim_key = (0u8, u64::MAX);
        for b in [kh.b1, kh.b2] {
            for i in 0..BUCKET_SLOTS {
                let slot = b * BUCKET_SLOTS + i;
                let rec = self
                    .off_of(self.slot_word(slot))
                    .and_then(|(off, which)| Some((self.read_rec(off, which)?, which)));
                let (rank, age) = match rec {
                    Some((rec, which)) => {
                        let (start, cap, _) = self.log_bounds(which);
                        let head = heads[which as usize];
                        // Position after the head, in 1/1024ths of the log.
                        let ahead = (rec.off - start + cap - head) % cap;
                        let pos = (ahead as u64).saturating_mul(1024) / cap.max(1) as u64;
                        let rank = if rec.expired(now) {
                            3
                        } else if !self.is_visited(slot) {
                            2
                        } else {
                            1
                        };
                        (rank, pos)
                    }
                    None => (1, u64::MAX),
                };
                if rank > victim_key.0 || (rank == victim_key.0 && age < victim_key.1) {
                    victim_key = (rank, age);
                    victim = slot;
                }
            }
        }
        let rec = self
            .off_of(self.slot_word(victim))
            .and_then(|(off, which)| self.read_rec(off, which))
            .filter(|r| r.state == STATE_LIVE)
            .ok_or_else(|| Damaged("index slot points at no live record".into()))?;
        self.set_intent(crate::layout::INTENT_EVICT, victim);
        self.mark_dead(&rec);
        crash_point!("evict_slot.after_mark_dead");
        self.forget(victim, &rec);
        if rec.expired(now) {
            self.add(crate::layout::SH_EXPIRATIONS, 1);
        } else {
            self.add(SH_EVICTIONS, 1);
            self.add(crate::layout::SH_INDEX_EVICTIONS, 1);
        }
        self.clear_intent();
        Ok(victim)
    }
}
