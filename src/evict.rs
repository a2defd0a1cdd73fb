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
//! Eviction is for a cache that is really full. While a shard is *underfull* (its live
//! keys and values, plus 30 bytes per entry for its header and padding, fill less than
//! 70% of its main log, which is 63% of both logs), making room does not evict a live
//! entry: the head of main is cleaned instead (dead records are dropped, live ones are
//! moved on to the tail, keeping their visited bit), and the small log moves its unread
//! entries on to main rather than evicting them. While underfull, main also keeps a
//! reserve of one largest record free, so that the record at its very start can always
//! be moved on (a log keeps 8 bytes free to tell full from empty, so a full log whose
//! head is at its start could not move that record anywhere). Two cases still evict:
//! a call whose budget of one lap is spent (possible only if the live records are
//! counted low: a versioned entry's word is not in the 30 bytes), and that record at
//! main's start in a shard that became underfull (by removals) before its reserve was
//! free.
//!
//! A versioned set (`set_if_version`, or the first `get_versioned` of an entry, which
//! writes it again with a version) keeps its old record live until its new one is
//! published, and the room made for it keeps that record too
//! ([`Shard::make_room_keeping`]): a pop that reaches it never evicts it, even unread,
//! and moves it only with its copy published before it is popped (out of the small
//! log, main first makes room for the copy; within main, only where main has room for
//! the copy beside it). Where the record is main's head and main has no such room, the
//! only bytes a pop could free are the record's own, so the room is made at the other
//! end: main's newest records are cut off from its tail (evicted), as few as the new
//! record needs, with one store of the log state, and the old record leaves the head
//! later, dead, like any overwritten one. Those few records leave out of FIFO order;
//! it happens only when the entry being written is among the oldest of a full main.
//!
//! Work is bounded in bytes: one call to make room moves at most one main log's worth
//! of records (a lap: enough to reach every dead record, since an underfull main is at
//! least 30% dead or free), at most [`MAX_REINSERTS`] read entries within main, and
//! each record of the small log once; a cut from main's tail reads main's record
//! headers at most twice. In a steady state where live records are a
//! fraction f of main, every byte a set appends makes the cleaner pass 1/(1-f) bytes of
//! log and move f/(1-f) of them, so the log writes per byte written are 1/(1-f)
//! (`Stats::bytes_moved` against `Stats::bytes_written`). Expired entries at the head
//! are dropped (counted as expirations) without a scan of the shard.

use crate::layout::{
    BUCKET_SLOTS, RECORD_HEADER, SH_ENTRIES, SH_EVICTIONS, SH_EXPIRATIONS, SH_LIVE_BYTES, SH_MOVED,
    STATE_LIVE, STATE_PAD,
};
use crate::shard::{Damaged, KeyHash, LogId, Rec, Shard};
use crate::words::SlotWord;

/// Most read entries moved within the main log (S3-FIFO's reinsertion) per
/// room-making call.
pub(crate) const MAX_REINSERTS: usize = 32;

/// What one room-making call may still do without evicting, and the record it must
/// never pop unpublished.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    /// Read entries it may still move within main.
    pub reinserts: usize,
    /// Bytes of live records it may still move on from main's head while the shard is
    /// underfull.
    pub compact_bytes: usize,
    /// The index slot of the entry whose record must stay live until its new record is
    /// published (a versioned set's old record; see [`Shard::make_room_keeping`]), or
    /// [`Budget::KEEP_NONE`]. A plain number rather than an `Option`: every pop of a full
    /// shard compares it, and this is one comparison.
    pub keep: usize,
}

impl Budget {
    /// [`Budget::keep`] when the call keeps no record: no slot has this number.
    pub(crate) const KEEP_NONE: usize = usize::MAX;

    /// The budget of one call in a shard whose main log holds `main_cap` bytes.
    pub(crate) fn new(main_cap: usize) -> Budget {
        Budget {
            reinserts: MAX_REINSERTS,
            compact_bytes: main_cap,
            keep: Budget::KEEP_NONE,
        }
    }
}

/// Whether popping a live entry may evict it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Evict {
    /// When the shard is full (not underfull), or the budget is spent.
    IfFull,
    /// Never: the caller only wants room it can have without losing an entry.
    Never,
}

/// What popping a log's head did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Popped {
    /// Freed or moved a record (or skipped dead space).
    Done,
    /// Would have evicted a live entry, and was told not to: nothing changed.
    WouldEvict,
    /// The head is the record the call must keep ([`Budget::keep`]) and main has no
    /// room for its copy beside it: nothing changed.
    Kept,
}

impl Shard<'_> {
    /// Frees the head of `which` until a record of `need` bytes fits at its tail,
    /// evicting only if the shard is not underfull (see the module docs).
    pub(crate) fn make_room(&self, which: LogId, need: usize, now: u64) -> Result<(), Damaged> {
        let mut budget = Budget::new(self.g.main_cap);
        self.make_room_with(which, need, now, &mut budget)
    }

    /// [`Shard::make_room`] for a set that writes the entry in `keep` again and must keep
    /// its old record live until the new one is published (a versioned set): that
    /// record is never evicted, and moved only where its copy is published before it is
    /// popped. Where it is main's head and main has no room for its copy, the room is
    /// made at main's tail instead (see the module docs).
    // Not inlined: inlined into `Shard::set`, it cost a set over an existing key (which
    // makes no room at all) 7 instructions more (benches/instructions.sh, set_existing).
    #[inline(never)]
    pub(crate) fn make_room_keeping(
        &self,
        which: LogId,
        need: usize,
        now: u64,
        keep: usize,
    ) -> Result<(), Damaged> {
        let mut budget = Budget::new(self.g.main_cap);
        budget.keep = keep;
        self.make_room_with(which, need, now, &mut budget)
    }

    /// The bytes an underfull main keeps free beyond what a set needs: one largest
    /// record (with a version word).
    fn reserve(&self) -> usize {
        crate::layout::record_size(self.g.params.max_key_len, self.g.params.max_value_len)
            + crate::shard::VERSION_WORD
    }

    fn make_room_with(
        &self,
        which: LogId,
        need: usize,
        now: u64,
        budget: &mut Budget,
    ) -> Result<(), Damaged> {
        let (_, cap, _) = self.log_bounds(which);
        // Every step frees a record, moves one on (within one lap's budget) or wraps
        // the head: bounded by twice the log's record count.
        let mut steps = 2 * (cap / RECORD_HEADER) + MAX_REINSERTS + 4;
        loop {
            let (head, tail) = self.state(which)?;
            if !self.fits(which, head, tail, need) {
                if head == tail || steps == 0 {
                    return Err(Damaged(format!(
                        "{which:?} log cannot make room for {need} bytes"
                    )));
                }
                steps -= 1;
                if self.pop_head(which, head, tail, now, budget, Evict::IfFull)? == Popped::Kept {
                    self.cut_tail(which, need, now)?;
                }
                continue;
            }
            // It fits. An underfull main also cleans until its reserve is free, but never
            // by evicting.
            let reserved = need.saturating_add(self.reserve());
            if which == LogId::Small
                || self.fits(which, head, tail, reserved)
                || steps == 0
                || !self.underfull()
            {
                return Ok(());
            }
            steps -= 1;
            // WouldEvict, or Kept: the head stays, and what the set needs fits already.
            if self.pop_head(which, head, tail, now, budget, Evict::Never)? != Popped::Done {
                return Ok(());
            }
        }
    }

    /// Pops the head of `which` (its state is `head`, `tail`): evicts or moves the
    /// record there, or skips it if it is dead or no slot names it. With
    /// [`Evict::Never`], a live entry that would be evicted is left alone. The record
    /// of [`Budget::keep`] is never evicted, and moved only with its copy published
    /// first ([`Popped::Kept`] where that cannot be).
    pub(crate) fn pop_head(
        &self,
        which: LogId,
        head: usize,
        tail: usize,
        now: u64,
        budget: &mut Budget,
        evict: Evict,
    ) -> Result<Popped, Damaged> {
        let (start, cap, _) = self.log_bounds(which);
        if cap - head < RECORD_HEADER {
            // Implicit pad at the end of the log.
            self.set_state(which, 0, tail);
            return Ok(Popped::Done);
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
            return Ok(Popped::Done);
        }
        let slot = rec.slot;
        let owned = slot < self.slots() && self.slot_word(slot).loc == self.loc(rec.off);
        if !owned {
            // No slot points here (a record whose slot was lost to a repair): garbage.
            self.set_state(which, new_head, tail);
            return Ok(Popped::Done);
        }
        if rec.expired(now) {
            self.drop_head(which, new_head, tail, slot, &rec, SH_EXPIRATIONS);
            return Ok(Popped::Done);
        }
        if slot == budget.keep {
            return self.pop_kept(which, head, tail, &rec, now, budget, evict);
        }
        // A move within a main without room for the copy beside the old record may end
        // in an eviction (see `move_to_main`): not when told never to evict.
        if which == LogId::Main && evict == Evict::Never && !self.fits(which, head, tail, rec.size)
        {
            return Ok(Popped::WouldEvict);
        }
        match which {
            LogId::Small if self.is_visited(slot) => {
                self.clear_visited(slot);
                self.move_to_main(which, new_head, tail, &rec, now, budget)?;
            }
            // While main has free room, or can make it by cleaning, the cache is not
            // full: nothing is evicted, the entry just moves on (S3-FIFO evicts only
            // when the whole cache is full).
            LogId::Small if self.main_has_room(rec.size)? || self.underfull() => {
                self.move_to_main(which, new_head, tail, &rec, now, budget)?;
            }
            LogId::Small => {
                self.ghost_insert(slot, self.slot_word(slot).tag);
                self.drop_head(which, new_head, tail, slot, &rec, SH_EVICTIONS);
            }
            LogId::Main if budget.reinserts > 0 && self.is_visited(slot) => {
                budget.reinserts -= 1;
                self.clear_visited(slot);
                self.move_to_main(which, new_head, tail, &rec, now, budget)?;
            }
            // Much of main is dead records (overwritten or removed): the cache is not
            // full, so move this entry on (its visited bit kept) instead of evicting it.
            LogId::Main if budget.compact_bytes >= rec.size && self.underfull() => {
                budget.compact_bytes -= rec.size;
                self.move_to_main(which, new_head, tail, &rec, now, budget)?;
            }
            LogId::Main if evict == Evict::Never => return Ok(Popped::WouldEvict),
            LogId::Main => {
                self.drop_head(which, new_head, tail, slot, &rec, SH_EVICTIONS);
            }
        }
        Ok(Popped::Done)
    }

    /// [`Shard::pop_head`] of the record [`Budget::keep`] names (`rec`, live, fresh and
    /// owned): never evicted, and moved only with its copy published first (a move out
    /// of the small log makes room in main for it before it begins; within main, only
    /// where main has room for the copy beside it). [`Popped::Kept`] where it stays.
    #[cold]
    #[allow(clippy::too_many_arguments)] // pop_head's own, which it continues
    fn pop_kept(
        &self,
        which: LogId,
        head: usize,
        tail: usize,
        rec: &Rec,
        now: u64,
        budget: &mut Budget,
        evict: Evict,
    ) -> Result<Popped, Damaged> {
        let copy_fits = which == LogId::Small || self.fits(which, head, tail, rec.size);
        if evict == Evict::IfFull && copy_fits {
            let (_, cap, _) = self.log_bounds(which);
            self.move_to_main(which, (head + rec.size) % cap, tail, rec, now, budget)?;
            return Ok(Popped::Done);
        }
        Ok(Popped::Kept)
    }

    /// Whether the shard's live records (keys and values, with their headers and at
    /// most 14 bytes of padding each) fill less than 70% of main: the rest of a full main
    /// is then dead records, whose space moving live ones on reclaims.
    pub(crate) fn underfull(&self) -> bool {
        let per_entry = (RECORD_HEADER + 14) as u64;
        let live = self
            .counter(SH_LIVE_BYTES)
            .saturating_add(self.counter(SH_ENTRIES).saturating_mul(per_entry));
        live.saturating_mul(10) < self.g.main_cap as u64 * 7
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

    /// Makes room for `need` bytes at the tail of `which` by evicting its newest
    /// records, for a set whose own old record is the log's head with no room for its
    /// copy beside it ([`Popped::Kept`]): the set then publishes its new record while
    /// the old one is still live. The records are cut off with one store of the log
    /// state, its tail moved back to the last record boundary from which `need` fits
    /// (the fewest records), and only then are their entries forgotten: a crash in
    /// between leaves an index that names records past the tail, which repair rebuilds
    /// from the shortened log. Reads record headers only, in two walks: one from the
    /// head to the tail for the boundary, one over the records cut.
    // Rare (the entry being written is main's oldest): kept out of the eviction loop.
    #[cold]
    #[inline(never)]
    fn cut_tail(&self, which: LogId, need: usize, now: u64) -> Result<(), Damaged> {
        let (start, cap, _) = self.log_bounds(which);
        let (head, tail) = self.state(which)?;
        let mut cut = None;
        let mut pos = head;
        let mut remaining = Self::used(cap, head, tail);
        while remaining > 0 {
            let (size, _) = self.walk_step(which, pos, remaining)?;
            remaining -= size;
            pos = (pos + size) % cap;
            if remaining > 0 && self.fits(which, head, pos, need) {
                cut = Some(pos);
            }
        }
        let cut = cut.ok_or_else(|| {
            Damaged(format!(
                "{which:?} log cannot make room for {need} bytes beside its head"
            ))
        })?;
        // The intent names the oldest record cut off (repair has nothing to redo).
        let first = self.read_rec(start + cut, which).map_or(0, |r| r.slot);
        self.set_intent(crate::layout::INTENT_EVICT, first);
        self.set_state(which, head, cut);
        crash_point!("evict.after_cut");
        let mut pos = cut;
        let mut remaining = Self::used(cap, cut, tail);
        while remaining > 0 {
            let (size, rec) = self.walk_step(which, pos, remaining)?;
            if let Some(rec) = rec.filter(|r| r.state == STATE_LIVE) {
                if rec.slot < self.slots() && self.slot_word(rec.slot).loc == self.loc(rec.off) {
                    self.forget(rec.slot, &rec);
                    let counter = if rec.expired(now) {
                        SH_EXPIRATIONS
                    } else {
                        SH_EVICTIONS
                    };
                    self.add(counter, 1);
                }
            }
            remaining -= size;
            pos = (pos + size) % cap;
        }
        self.clear_intent();
        Ok(())
    }

    /// One step of a walk of `which` from its head: the size of the record (or pad) at
    /// `pos`, which lies `remaining` bytes before the tail, and the record unless it is
    /// a pad.
    fn walk_step(
        &self,
        which: LogId,
        pos: usize,
        remaining: usize,
    ) -> Result<(usize, Option<Rec>), Damaged> {
        let (start, cap, _) = self.log_bounds(which);
        let (size, rec) = if cap - pos < RECORD_HEADER {
            // Implicit pad at the end of the log.
            (cap - pos, None)
        } else {
            let rec = self
                .read_rec(start + pos, which)
                .ok_or_else(|| Damaged(format!("{which:?} log record does not decode")))?;
            (rec.size, (rec.state != STATE_PAD).then_some(rec))
        };
        if size > remaining {
            return Err(Damaged(format!("{which:?} log record crosses its tail")));
        }
        Ok((size, rec))
    }

    /// Moves the record at the head of `from` to the tail of main.
    ///
    /// Where main has room for the copy with the old record still in place (for a move
    /// within main, the old record is main's head and counts as used), the copy is
    /// written and published first and the old record popped last: a crash in between
    /// leaves two live copies, of which repair keeps the first the logs hold, so no
    /// crash costs the entry. Otherwise (a move within a full main, into the room its
    /// own record frees) the record is popped first and published last, so a crash in
    /// between drops it rather than leaving two copies; that copy runs forwards, which is
    /// correct even where the new place overlaps the old one (it is always at or before
    /// it). The record a versioned set must keep never takes that second way
    /// (`pop_head`).
    fn move_to_main(
        &self,
        from: LogId,
        new_head: usize,
        tail: usize,
        rec: &Rec,
        now: u64,
        budget: &mut Budget,
    ) -> Result<(), Damaged> {
        let slot = rec.slot;
        if from == LogId::Small {
            self.make_room_with(LogId::Main, rec.size, now, budget)?;
        }
        self.set_intent(crate::layout::INTENT_MOVE, slot);
        let (mhead, mtail) = self.state(LogId::Main)?;
        if self.fits(LogId::Main, mhead, mtail, rec.size) {
            // No overlap: the free space lies outside the old record.
            let new_tail = self.publish_copy(rec, mhead, mtail);
            if from == LogId::Main {
                self.set_state(LogId::Main, new_head, new_tail);
            } else {
                self.set_state(from, new_head, tail);
            }
            crash_point!("move.after_pop");
            self.clear_intent();
            return Ok(());
        }
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
        self.publish_copy(rec, mhead, mtail);
        self.clear_intent();
        Ok(())
    }

    /// Writes `rec` at main's tail (its state is `mhead`, `mtail`; the caller checked
    /// that it fits), publishes it, and points its slot there; returns main's new tail.
    /// The copy runs forwards (see `move_to_main`).
    fn publish_copy(&self, rec: &Rec, mhead: usize, mtail: usize) -> usize {
        let (dst, new_tail) = self.place(LogId::Main, mtail, rec.size);
        self.add(SH_MOVED, rec.size as i64);
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
            ..self.slot_word(rec.slot)
        };
        self.set_slot_word(rec.slot, moved);
        new_tail
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
