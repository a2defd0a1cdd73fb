//! The mappings of one handle: the one operations use now, and the ones a replacement
//! of the file left behind until the last operation inside them ends.
//!
//! A handle moves to a new file when its path is replaced (see `cache`). Another thread
//! may still be inside an operation on the old mapping, holding a lock in it (so its
//! robust list points into it), so the old mapping can be unmapped only once no
//! operation is inside it. Each mapping sits in one of a few cells; an operation enters
//! the current cell by adding one to an in-flight counter (one of several, picked by
//! thread, each on its own cache line, so threads of one process do not share a line),
//! checks that the cell is still current, and subtracts one when it ends. No lock is
//! taken and nothing is allocated on that path.
//!
//! Why that is enough: the counter increment, the re-check of the current cell, the
//! retiring thread's switch of the current cell and its reads of the counters are all
//! `SeqCst`, so they fall in one total order. If the retiring thread reads a counter as
//! zero before an operation's increment, that operation's re-check comes after the
//! switch and sees another cell, so it backs out without touching the mapping. If the
//! increment came first, the retiring thread sees it and keeps the mapping. The
//! decrement is a release that the retiring thread's read acquires, so everything the
//! operation did in the mapping happens before the unmap.
//!
//! A cell is reused for a later mapping only after its mapping was freed; an operation
//! that re-checks and finds its cell current again reads the cell's new mapping, stored
//! before the cell was published.
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::file::Attached;

/// Cells per handle: the current mapping and up to this many minus one that still have
/// operations inside them. A replacement that finds none free waits for the next check.
const CELLS: usize = 8;
/// In-flight counters per cell.
const STRIPES: usize = 8;

/// A flag that one thread of a process holds at a time, and that a forked child can take
/// over: the word records its holder's fork generation (and when it was taken), so a
/// holder that a fork left behind (a parent thread, absent in the child) never blocks
/// the child. Taking it never waits.
pub(crate) struct Claim(AtomicU64);

const HELD: u64 = 1 << 63;
const GEN_SHIFT: u32 = 40;
const GEN_MASK: u64 = (1 << 23) - 1;
const TIME_MASK: u64 = (1 << GEN_SHIFT) - 1;

impl Claim {
    pub(crate) const fn new() -> Claim {
        Claim(AtomicU64::new(0))
    }

    /// Takes the flag at `now_ms`; if a thread of this process holds it, gives back when
    /// that thread took it.
    pub(crate) fn take(&self, now_ms: u64) -> Result<(), u64> {
        self.take_as(crate::stats::fork_gen(), now_ms)
    }

    fn take_as(&self, gen: u64, now_ms: u64) -> Result<(), u64> {
        let gen = gen & GEN_MASK;
        let cur = self.0.load(Ordering::Acquire);
        if cur & HELD != 0 && (cur >> GEN_SHIFT) & GEN_MASK == gen {
            return Err(cur & TIME_MASK);
        }
        let mine = HELD | (gen << GEN_SHIFT) | (now_ms & TIME_MASK);
        self.0
            .compare_exchange(cur, mine, Ordering::Acquire, Ordering::Relaxed)
            .map(|_| ())
            .map_err(|v| v & TIME_MASK)
    }

    pub(crate) fn release(&self) {
        self.0.store(0, Ordering::Release);
    }
}

#[repr(align(64))]
struct Stripe(AtomicU64);

struct Cell {
    inflight: [Stripe; STRIPES],
    /// A `Box<Attached>` turned into a raw pointer, or null when the cell is free.
    attached: AtomicPtr<Attached>,
}

impl Cell {
    fn empty() -> Cell {
        Cell {
            inflight: std::array::from_fn(|_| Stripe(AtomicU64::new(0))),
            attached: AtomicPtr::new(core::ptr::null_mut()),
        }
    }

    fn idle(&self) -> bool {
        self.inflight
            .iter()
            .all(|s| s.0.load(Ordering::SeqCst) == 0)
    }
}

/// The mappings of one handle.
pub(crate) struct Mappings {
    cells: [Cell; CELLS],
    current: AtomicUsize,
    /// Held by the thread that publishes or retires, so those two never run at once.
    busy: Claim,
}

// The cells hold `Box<Attached>`es shared by reference between threads.
static_assertions::assert_impl_all!(Attached: Send, Sync);

/// An operation inside a mapping: the mapping stays mapped until this drops.
pub(crate) struct Entered<'a> {
    counter: &'a AtomicU64,
    attached: &'a Attached,
}

impl core::ops::Deref for Entered<'_> {
    type Target = Attached;
    #[inline]
    fn deref(&self) -> &Attached {
        self.attached
    }
}

impl Drop for Entered<'_> {
    #[inline]
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::Release);
    }
}

/// An operation inside a mapping that keeps alive, through `owner`, the [`Mappings`] it
/// entered: an [`Entered`] not tied to a borrow of the handle, for a state held across
/// calls (a fill a binding begins in one call and completes in another).
pub(crate) struct Held<T> {
    /// Declared first, so dropped (leaving the mapping) before `owner`.
    entered: Entered<'static>,
    owner: Arc<T>,
}

impl<T> Held<T> {
    /// Enters the current mapping of the `Mappings` that `maps` finds in `owner`.
    pub(crate) fn enter(owner: Arc<T>, maps: fn(&T) -> &Mappings) -> Held<T> {
        let entered = maps(&owner).enter();
        // `entered` borrows the `Mappings` inside `owner`'s allocation, which the `Arc`
        // stored beside it keeps alive and in place for as long as this value lives (an
        // `Arc`'s allocation never moves), and fields drop in declaration order, so
        // `entered` ends before `owner` can free it.
        // SAFETY: the borrow outlives every use (above); the `'static` never escapes,
        // since `Held` hands out only references bound to its own borrow.
        let entered = unsafe { core::mem::transmute::<Entered<'_>, Entered<'static>>(entered) };
        Held { entered, owner }
    }

    /// What keeps the mappings alive.
    pub(crate) fn owner(&self) -> &Arc<T> {
        &self.owner
    }
}

impl<T> core::ops::Deref for Held<T> {
    type Target = Attached;
    fn deref(&self) -> &Attached {
        &self.entered
    }
}

/// This thread's stripe (threads take stripes in turn, `0..STRIPES`).
#[inline]
pub(crate) fn stripe() -> usize {
    use std::cell::Cell as StdCell;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: StdCell<usize> = const { StdCell::new(usize::MAX) };
    }
    MINE.with(|m| {
        let v = m.get();
        if v != usize::MAX {
            return v;
        }
        let v = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
        m.set(v);
        v
    })
}

impl Mappings {
    pub(crate) fn new(first: Attached) -> Mappings {
        let m = Mappings {
            cells: std::array::from_fn(|_| Cell::empty()),
            current: AtomicUsize::new(0),
            busy: Claim::new(),
        };
        m.cells[0]
            .attached
            .store(Box::into_raw(Box::new(first)), Ordering::Release);
        m
    }

    /// Enters the current mapping.
    #[inline]
    pub(crate) fn enter(&self) -> Entered<'_> {
        let s = stripe();
        loop {
            let idx = self.current.load(Ordering::SeqCst);
            let cell = &self.cells[idx % CELLS];
            let counter = &cell.inflight[s].0;
            counter.fetch_add(1, Ordering::SeqCst);
            if self.current.load(Ordering::SeqCst) == idx {
                let p = cell.attached.load(Ordering::Acquire);
                // The current cell always holds a mapping (a cell is published only
                // after its pointer is stored, and a cell is freed only while it is not
                // current and its counters read zero after the switch: the module docs
                // give the argument). The increment above keeps it from being freed
                // until `Entered` drops, and the pointer came from `Box::into_raw`.
                // SAFETY: so `p` is valid and aligned for as long as the returned
                // reference lives, and only shared references are ever made from it.
                let attached = unsafe { &*p };
                return Entered { counter, attached };
            }
            counter.fetch_sub(1, Ordering::Release);
        }
    }

    /// Makes `fresh` the mapping operations use. The replaced one stays until no
    /// operation is inside it (see [`Mappings::retire_idle`]). Gives `fresh` back if no
    /// cell is free, or if another thread is publishing or retiring (the handle's
    /// callers serialise those, so that is a caller's bug, not a wait).
    pub(crate) fn publish(&self, fresh: Box<Attached>) -> Result<(), Box<Attached>> {
        if self.busy.take(0).is_err() {
            return Err(fresh);
        }
        let cur = self.current.load(Ordering::SeqCst);
        let free = (1..CELLS)
            .map(|d| (cur + d) % CELLS)
            .find(|&i| self.cells[i].attached.load(Ordering::Acquire).is_null());
        let result = match free {
            Some(i) => {
                self.cells[i]
                    .attached
                    .store(Box::into_raw(fresh), Ordering::Release);
                self.current.store(i, Ordering::SeqCst);
                Ok(())
            }
            None => Err(fresh),
        };
        self.busy.release();
        result
    }

    /// Unmaps every replaced mapping that no operation is inside; returns how many are
    /// left mapped besides the current one.
    pub(crate) fn retire_idle(&self) -> usize {
        if self.busy.take(0).is_err() {
            return 0;
        }
        let cur = self.current.load(Ordering::SeqCst);
        let mut left = 0;
        for (i, cell) in self.cells.iter().enumerate() {
            if i == cur || cell.attached.load(Ordering::Acquire).is_null() {
                continue;
            }
            if !cell.idle() {
                left += 1;
                continue;
            }
            let p = cell.attached.swap(core::ptr::null_mut(), Ordering::AcqRel);
            if !p.is_null() {
                // `p` came from `Box::into_raw` in `new` or `publish`, and the swap took
                // it out of the cell. No operation holds a reference into it: the cell
                // is not current and its counters read zero after the switch (module
                // docs), and later entrants back out before loading the pointer.
                // SAFETY: so `p` is a live Box's pointer, freed here once, unaliased.
                drop(unsafe { Box::from_raw(p) });
            }
        }
        self.busy.release();
        left
    }
}

impl Drop for Mappings {
    fn drop(&mut self) {
        for cell in &self.cells {
            let p = cell.attached.swap(core::ptr::null_mut(), Ordering::AcqRel);
            if !p.is_null() {
                // SAFETY: `p` came from `Box::into_raw` and is taken out of its cell here,
                // so it is freed once; `&mut self` proves no operation is inside it.
                drop(unsafe { Box::from_raw(p) });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A claim is exclusive within one fork generation, and a child (the next
    /// generation) takes over one its parent's thread left held.
    #[test]
    fn a_claim_left_held_by_a_parent_thread_is_taken_over_by_the_child() {
        let c = Claim::new();
        assert_eq!(c.take_as(7, 100), Ok(()));
        assert_eq!(
            c.take_as(7, 200),
            Err(100),
            "held by a thread of this process"
        );
        assert_eq!(c.take_as(8, 300), Ok(()), "the holder is a parent's thread");
        assert_eq!(c.take_as(8, 400), Err(300));
        c.release();
        assert_eq!(c.take_as(8, 500), Ok(()));
    }

    #[test]
    fn stripes_are_a_cache_line_each() {
        assert_eq!(core::mem::align_of::<Stripe>(), 64);
        assert_eq!(core::mem::size_of::<Stripe>(), 64);
    }
}
