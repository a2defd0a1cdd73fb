//! Revocation fencing: a value computed from state read before a revocation of its key
//! is never stored after it.
//!
//! The race it closes: a worker misses `token:abc`, reads the token's state (valid) and
//! computes its claims; meanwhile another worker revokes the token at the source and
//! removes (or overwrites) the cache entry, which may not even exist yet. Without a
//! fence the first worker then stores its claims, and every worker serves the revoked
//! token for the entry's whole TTL.
//!
//! Every write that revokes a key leaves a fence, under the shard lock, as the first
//! stores of its critical section ([`Table::section`](crate::table::Table::section) does
//! it for every [`Access::Revoke`](crate::table::Access::Revoke)); a store that must
//! respect revocations checks the fences under the same lock. There are two kinds of
//! stores, and the fences serve both (byte map: "Fences" in `layout`):
//!
//! - **A ticket** ([`Cache::ticket`](crate::Cache::ticket)): the shard's revocation
//!   count and the key's class counter, read without a lock before the value is
//!   computed. At the store, if the shard saw fewer than [`FENCE_RING`] revocations
//!   since, each of their hashes is still in the ring and the check is exact: refused
//!   only if one is the key's. Otherwise the key's class counter decides: refused if any
//!   key of the class was revoked (a store skipped, never a wrong value).
//! - **A fill of `get_or_insert_with`**, which holds its fill slot while it computes:
//!   it writes the key's hash, marked in flight, into the slot's word before it computes,
//!   and a revocation of that hash unmarks it. The store checks the mark: exact, however
//!   many revocations came in between.
//!
//! Why a check under the lock is enough: if the revocation's critical section comes
//! first, the store's check sees its fence; if the store comes first, the revocation
//! removes or overwrites what it stored. A fence the ticket (or the fill's word) already
//! saw belongs to a revocation whose writer had changed the source before (it revokes
//! the source, then the cache), so the value is computed from the revoked state. The
//! fill's word is written and the revocation's read of it are sequentially consistent:
//! either the revocation reads the mark (and clears it), or its read came before the
//! mark was written, so its change at the source came before the fill read the source
//! (a `SeqCst` fence after the mark and before the revocation's read of it orders that
//! store-load pattern on every architecture, whatever ordering the source's reads use).
//!
//! A crash changes none of this: fences are written before anything they guard (the
//! class counter first, then the ring entry, then the count that makes it current, so a
//! write cut short leaves the counters conservative), and nothing lowers them (repair
//! and clear leave them). A filler that dies holds nothing: a ticket is only numbers,
//! and a fill slot's word is rewritten by the slot's next holder.
//!
//! This is memcached's lease (Nishtala et al., "Scaling Memcache at Facebook", NSDI '13,
//! section 3.2.1: a delete invalidates the outstanding lease tokens of its key).

use core::sync::atomic::{AtomicU64, Ordering};

use crate::layout::{
    Geometry, FENCE_CLASSES, FENCE_RING, FILL_SLOTS, FILL_WORD, SH_FENCE_CLASSES, SH_FENCE_RING,
    SH_FENCE_SEQ,
};
use crate::region::Region;

/// A claim to store one key's value, taken before computing it: see
/// [`Cache::ticket`](crate::Cache::ticket). Storing with it
/// ([`Cache::set_with_ticket`](crate::Cache::set_with_ticket)) succeeds only if no
/// write revoked the key since the ticket was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ticket {
    /// The file the ticket was taken in (a ticket of a replaced file matches nothing).
    pub(crate) file: u64,
    /// The key's hash under that file's secret.
    pub(crate) hash: u64,
    /// The shard's revocations when the ticket was taken.
    pub(crate) seq: u64,
    /// The key's class counter then.
    pub(crate) count: u64,
}

impl Ticket {
    /// A ticket for the key of hash `h` in the file of id `file` that `r` and `g` lay
    /// out (no lock).
    pub(crate) fn take(r: &Region, g: &Geometry, file: u64, h: u64) -> Ticket {
        let (seq, count) = Fences::of(r, g, g.shard_of(h)).read(h);
        Ticket {
            file,
            hash: h,
            seq,
            count,
        }
    }

    /// The ticket as four words, for a binding to hand it to its caller and back
    /// through [`Ticket::from_words`].
    pub fn to_words(&self) -> [u64; 4] {
        [self.file, self.hash, self.seq, self.count]
    }

    /// A ticket from [`Ticket::to_words`]. Words of a real ticket are that ticket,
    /// fenced by every revocation since it was taken. Other words are harmless: they
    /// store nothing (another file), fail as a ticket of another key does, or store as a
    /// ticket taken at some moment would, never more than a plain
    /// [`Cache::set`](crate::Cache::set) of the key could.
    pub fn from_words(words: [u64; 4]) -> Ticket {
        Ticket {
            file: words[0],
            hash: words[1],
            seq: words[2],
            count: words[3],
        }
    }

    /// Whether the store this ticket was taken for may happen (the shard lock is held).
    pub(crate) fn admitted(&self, fences: &Fences<'_>) -> bool {
        fences.admits(self.hash, self.seq, self.count)
    }
}

/// The fences of one shard.
pub(crate) struct Fences<'r> {
    /// The shard's revocation count (`fence_seq` in its header).
    seq: &'r AtomicU64,
    /// Its ring, then its class counters.
    words: &'r [AtomicU64; FENCE_WORDS],
}

const FENCE_WORDS: usize = FENCE_RING + FENCE_CLASSES;
const _: () = assert!(SH_FENCE_CLASSES == SH_FENCE_RING + FENCE_RING * 8);

/// Bit 0 of a fill slot's word: the fill of the hash in the other bits is in flight and
/// nothing revoked it.
const IN_FLIGHT: u64 = 1;

impl<'r> Fences<'r> {
    /// The fences of shard `shard`.
    pub(crate) fn of(r: &'r Region, g: &Geometry, shard: usize) -> Fences<'r> {
        let base = g.shard_base(shard);
        let inside = "the geometry keeps every shard's fences inside the file";
        Fences {
            seq: r.atomic(base + SH_FENCE_SEQ).expect(inside),
            words: r.atomic_array(base + SH_FENCE_RING).expect(inside),
        }
    }

    fn seq(&self) -> &'r AtomicU64 {
        self.seq
    }

    fn ring(&self, seq: u64) -> &'r AtomicU64 {
        &self.words[(seq % FENCE_RING as u64) as usize]
    }

    fn class(&self, h: u64) -> &'r AtomicU64 {
        &self.words[FENCE_RING + (h % FENCE_CLASSES as u64) as usize]
    }

    /// What a ticket for hash `h` records (no lock).
    pub(crate) fn read(&self, h: u64) -> (u64, u64) {
        // In either order: a fence the ticket sees belongs to a revocation whose change
        // at the source the caller's later read of the source sees.
        let seq = self.seq().load(Ordering::Acquire);
        (seq, self.class(h).load(Ordering::Acquire))
    }

    /// Revokes hash `h` (the shard lock is held). `r` and `g` locate a fill of `h` that
    /// may be in flight.
    pub(crate) fn revoke(&self, r: &Region, g: &Geometry, h: u64) {
        bump(self.class(h), 1);
        let seq = self.seq().load(Ordering::Relaxed).wrapping_add(1);
        self.ring(seq).store(h, Ordering::Release);
        self.seq().store(seq, Ordering::Release);
        unmark_fill(r, g, h);
    }

    /// Revokes every key of shard `shard` (the shard lock is held): every class, a
    /// whole ring's worth of revocations (so every ticket falls back on its class), and
    /// every fill in flight of a key of the shard.
    pub(crate) fn revoke_all(&self, r: &Region, g: &Geometry, shard: usize) {
        for c in 0..FENCE_CLASSES as u64 {
            bump(self.class(c), 1);
        }
        bump(self.seq(), FENCE_RING as u64);
        core::sync::atomic::fence(Ordering::SeqCst); // as in `unmark_fill`
        for slot in 0..FILL_SLOTS {
            if let Some(w) = fill_word(r, g, slot) {
                let v = w.load(Ordering::SeqCst);
                if v & IN_FLIGHT != 0 && g.shard_of(v) == shard {
                    let _ =
                        w.compare_exchange(v, v & !IN_FLIGHT, Ordering::SeqCst, Ordering::SeqCst);
                }
            }
        }
    }

    /// Whether a ticket of hash `h` that recorded `(seq, count)` may store (the shard
    /// lock is held): no revocation of `h` since.
    pub(crate) fn admits(&self, h: u64, seq: u64, count: u64) -> bool {
        let now = self.seq().load(Ordering::Relaxed);
        let since = now.wrapping_sub(seq);
        // `< FENCE_RING`, not `<=`: a revoker that died between its ring entry and its
        // count overwrote the entry of count `now + 1 - FENCE_RING`.
        if since < FENCE_RING as u64 {
            return (1..=since)
                .all(|i| self.ring(seq.wrapping_add(i)).load(Ordering::Relaxed) != h);
        }
        self.class(h).load(Ordering::Relaxed) == count
    }
}

/// Adds `n` to a fence word. Only holders of the shard lock write fences, so a load and
/// a store do (no read-modify-write). Release: a ticket that reads the new value
/// (Acquire) also sees what the revoker did before it.
fn bump(w: &AtomicU64, n: u64) {
    w.store(w.load(Ordering::Relaxed).wrapping_add(n), Ordering::Release);
}

/// The word of fill slot `slot`.
fn fill_word<'r>(r: &'r Region, g: &Geometry, slot: usize) -> Option<&'r AtomicU64> {
    r.atomic(g.fill_slot(slot) + FILL_WORD)
}

/// The fill slot of hash `h` (`get_or_insert_with` holds it while it fills).
pub(crate) fn fill_slot_of(h: u64) -> usize {
    (h % FILL_SLOTS as u64) as usize
}

fn fill_mark(h: u64) -> u64 {
    h | IN_FLIGHT
}

/// Marks the fill of hash `h` in flight in its slot (the slot's mutex is held), before
/// the value is computed.
pub(crate) fn mark_fill(r: &Region, g: &Geometry, h: u64) {
    if let Some(w) = fill_word(r, g, fill_slot_of(h)) {
        w.store(fill_mark(h), Ordering::SeqCst);
    }
    // The mark before any read of the source, whatever its ordering (a store-load
    // pattern: only a fence orders it on machines weaker than x86).
    core::sync::atomic::fence(Ordering::SeqCst);
}

/// Whether the fill of hash `h` marked in its slot may store (the slot's mutex and the
/// shard lock are held): nothing revoked `h` since it was marked.
pub(crate) fn fill_admits(r: &Region, g: &Geometry, h: u64) -> bool {
    fill_word(r, g, fill_slot_of(h)).is_some_and(|w| w.load(Ordering::SeqCst) == fill_mark(h))
}

/// Ends the fill marked in `h`'s slot (the slot's mutex is held).
pub(crate) fn end_fill(r: &Region, g: &Geometry, h: u64) {
    if let Some(w) = fill_word(r, g, fill_slot_of(h)) {
        w.store(0, Ordering::SeqCst);
    }
}

/// A revocation of hash `h` unmarks its fill in flight, if any (a compare-and-swap, so
/// another hash's fill that holds the slot now is left alone).
fn unmark_fill(r: &Region, g: &Geometry, h: u64) {
    // The revoker's change at the source before its read of the mark (see `mark_fill`).
    core::sync::atomic::fence(Ordering::SeqCst);
    if let Some(w) = fill_word(r, g, fill_slot_of(h)) {
        let mark = fill_mark(h);
        if w.load(Ordering::SeqCst) == mark {
            let _ = w.compare_exchange(mark, mark & !IN_FLIGHT, Ordering::SeqCst, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Params;

    fn one_shard() -> (Region, Geometry) {
        let geo = Geometry::compute(&Params {
            capacity: 1 << 20,
            max_key_len: 32,
            max_value_len: 256,
            shards: 1,
            expected_entry: 64,
        })
        .expect("geometry");
        (Region::heap(geo.total_size), geo)
    }

    /// A hash of another class than `KEY`'s (its low six bits differ), `i` of many.
    fn other_class(i: u64) -> u64 {
        (KEY ^ 1) + (i << 6)
    }
    /// A hash of `KEY`'s class that is not `KEY`.
    fn same_class(i: u64) -> u64 {
        KEY + ((i + 1) << 6)
    }
    const KEY: u64 = 0x1234_5678_9abc_def0;

    #[test]
    fn tickets_are_exact_within_the_ring_and_go_by_class_beyond_it() {
        let (r, g) = one_shard();
        let f = Fences::of(&r, &g, 0);
        // The key itself, just after the ticket: refused.
        let (seq, count) = f.read(KEY);
        f.revoke(&r, &g, KEY);
        assert!(!f.admits(KEY, seq, count));
        // 63 revocations of other keys of its class: exact, admitted.
        let (seq, count) = f.read(KEY);
        for i in 0..63 {
            f.revoke(&r, &g, same_class(i));
        }
        assert!(f.admits(KEY, seq, count));
        // The 64th: past the ring, the class decides: refused.
        f.revoke(&r, &g, same_class(63));
        assert!(!f.admits(KEY, seq, count));
        // Past the ring with no revocation of its class: admitted.
        let (seq, count) = f.read(KEY);
        for i in 0..200 {
            f.revoke(&r, &g, other_class(i));
        }
        assert!(f.admits(KEY, seq, count));
        // The key 63 revocations back: still in the ring, refused.
        let (seq, count) = f.read(KEY);
        f.revoke(&r, &g, KEY);
        for i in 0..62 {
            f.revoke(&r, &g, other_class(i));
        }
        assert!(!f.admits(KEY, seq, count));
        // A clear: every older ticket refused.
        let (seq, count) = f.read(KEY);
        f.revoke_all(&r, &g, 0);
        assert!(!f.admits(KEY, seq, count));
    }

    /// A revoker killed after its ring entry and before its count overwrote the entry
    /// of the revocation `FENCE_RING - 1` back: a ticket old enough to need that entry
    /// goes by its class instead, so the key's revocation still refuses it.
    #[test]
    fn a_revoker_killed_between_its_ring_entry_and_its_count_never_admits_a_revoked_key() {
        let (r, g) = one_shard();
        let f = Fences::of(&r, &g, 0);
        let (seq, count) = f.read(KEY);
        f.revoke(&r, &g, KEY);
        for i in 0..63 {
            f.revoke(&r, &g, other_class(i));
        }
        // The killed revoker: its class bump and ring entry, not its count.
        let now = f.seq().load(Ordering::Relaxed);
        bump(f.class(other_class(99)), 1);
        f.ring(now + 1).store(other_class(99), Ordering::Release);
        assert_eq!(now - seq, FENCE_RING as u64);
        assert!(
            !f.admits(KEY, seq, count),
            "the overwritten entry was trusted"
        );
        // One revocation fewer since the ticket: its entry is intact and checked.
        let (r2, g2) = one_shard();
        let f2 = Fences::of(&r2, &g2, 0);
        let (seq, count) = f2.read(KEY);
        f2.revoke(&r2, &g2, KEY);
        for i in 0..62 {
            f2.revoke(&r2, &g2, other_class(i));
        }
        let now = f2.seq().load(Ordering::Relaxed);
        f2.ring(now + 1).store(other_class(99), Ordering::Release);
        assert!(!f2.admits(KEY, seq, count));
    }

    /// A fill's mark is unmarked by a revocation of its key only, and a clear of its
    /// shard.
    #[test]
    fn a_fill_is_fenced_by_its_own_key_only() {
        let (r, g) = one_shard();
        let f = Fences::of(&r, &g, 0);
        mark_fill(&r, &g, KEY);
        for i in 0..500 {
            f.revoke(&r, &g, same_class(i));
        }
        assert!(fill_admits(&r, &g, KEY));
        f.revoke(&r, &g, KEY);
        assert!(!fill_admits(&r, &g, KEY));
        mark_fill(&r, &g, KEY);
        f.revoke_all(&r, &g, 0);
        assert!(!fill_admits(&r, &g, KEY));
        end_fill(&r, &g, KEY);
        assert!(!fill_admits(&r, &g, KEY));
    }
}
