//! The optimistic-read protocol: one sequence counter per shard.
//!
//! A writer holds the shard lock and makes the counter odd before it changes anything,
//! then even again when the shard is consistent:
//!
//! ```text
//! writer:  s = seq (even); seq = s + 1; fence(Release); ..writes..; seq = s + 2 (Release)
//! reader:  s = seq (Acquire), odd -> give up; ..reads..; fence(Acquire); seq == s -> ok
//! ```
//!
//! Every byte a reader may read concurrently is written and read with relaxed atomics of
//! one width, so a reader that races a writer reads stale or mixed words but never
//! causes undefined behaviour, and the re-check of the counter throws such a read away
//! (Boehm, "Can seqlocks get along with programming language memory models?", 2012).
//!
//! A writer that dies or panics mid-write leaves the counter odd. Readers then fall back
//! to the lock, whose next owner sees the odd counter (or `EOWNERDEAD`), repairs the
//! shard and makes the counter even again. Reads never write the counter, so hits cost
//! no shared-memory writes.

use core::sync::atomic::Ordering;

/// A word the protocol runs on: the region's `core` atomic, or loom's in the models.
pub(crate) trait SeqWord {
    fn load(&self, order: Ordering) -> u64;
    fn store(&self, v: u64, order: Ordering);
    fn fence(order: Ordering);
}

impl SeqWord for core::sync::atomic::AtomicU64 {
    #[inline]
    fn load(&self, order: Ordering) -> u64 {
        core::sync::atomic::AtomicU64::load(self, order)
    }
    #[inline]
    fn store(&self, v: u64, order: Ordering) {
        core::sync::atomic::AtomicU64::store(self, v, order)
    }
    #[inline]
    fn fence(order: Ordering) {
        core::sync::atomic::fence(order)
    }
}

#[cfg(larder_loom)]
impl SeqWord for loom::sync::atomic::AtomicU64 {
    fn load(&self, order: Ordering) -> u64 {
        loom::sync::atomic::AtomicU64::load(self, order)
    }
    fn store(&self, v: u64, order: Ordering) {
        loom::sync::atomic::AtomicU64::store(self, v, order)
    }
    fn fence(order: Ordering) {
        loom::sync::atomic::fence(order)
    }
}

/// Starts an optimistic read: the counter, or `None` while a write is in progress (or a
/// writer died mid-write).
#[inline]
pub(crate) fn read_begin<W: SeqWord>(seq: &W) -> Option<u64> {
    let s = seq.load(Ordering::Acquire);
    (s & 1 == 0).then_some(s)
}

/// Whether everything read since `read_begin` returned `s` is a consistent snapshot.
#[inline]
pub(crate) fn read_validate<W: SeqWord>(seq: &W, s: u64) -> bool {
    W::fence(Ordering::Acquire);
    seq.load(Ordering::Relaxed) == s
}

/// Whether the counter says a write was left unfinished (the writer died or panicked).
#[inline]
pub(crate) fn is_dirty<W: SeqWord>(seq: &W) -> bool {
    seq.load(Ordering::Relaxed) & 1 == 1
}

/// Starts a write (the caller holds the lock). Idempotent: a counter left odd by a dead
/// writer stays odd.
#[inline]
pub(crate) fn write_begin<W: SeqWord>(seq: &W) {
    let s = seq.load(Ordering::Relaxed);
    if s & 1 == 0 {
        seq.store(s.wrapping_add(1), Ordering::Relaxed);
    }
    W::fence(Ordering::Release);
}

/// Ends a write: the shard is consistent again.
#[inline]
pub(crate) fn write_end<W: SeqWord>(seq: &W) {
    let s = seq.load(Ordering::Relaxed);
    seq.store((s | 1).wrapping_add(1), Ordering::Release);
}

#[cfg(all(test, larder_loom))]
mod loom_tests {
    //! Models of the protocol on loom's atomics. They cover the protocol, not the
    //! syscalls: loom cannot model processes, futexes or pthread mutexes, so "the lock"
    //! is the single writer thread, and "a writer that dies" is one that stops after
    //! `write_begin`.
    use super::*;
    use crate::sync::AtomicU64;
    use loom::sync::Arc;

    /// The counter as the lock holder uses it, its loads made `fetch_add(0)`.
    ///
    /// The holder is the counter's only writer and has a happens-before edge from every
    /// earlier write to it (program order, or the lock handed over), so a plain load
    /// and an RMW read the same value there. But loom 0.7's DPOR keeps one "last
    /// access" per atomic: the holder's own load just before its store hides a racing
    /// reader's load from that store, and loom then never runs the reader after the
    /// store (tokio-rs/loom#392, #166): the models pass having explored one
    /// interleaving. An RMW counts as a write, so the race is seen and explored.
    /// Readers keep plain loads, whose stale values are what the models are about.
    struct Holder<'a>(&'a AtomicU64);

    impl SeqWord for Holder<'_> {
        fn load(&self, order: Ordering) -> u64 {
            self.0.fetch_add(0, order)
        }
        fn store(&self, v: u64, order: Ordering) {
            self.0.store(v, order)
        }
        fn fence(order: Ordering) {
            loom::sync::atomic::fence(order)
        }
    }

    struct Cell {
        seq: AtomicU64,
        a: AtomicU64,
        b: AtomicU64,
    }

    fn cell() -> Arc<Cell> {
        Arc::new(Cell {
            seq: AtomicU64::new(0),
            a: AtomicU64::new(1),
            b: AtomicU64::new(1),
        })
    }

    /// Loom's preemption bound when `LOOM_MAX_PREEMPTIONS` does not set one.
    /// Unbounded, the torn-pair model alone runs for more than 20 minutes; three
    /// preemptions take seconds, and every protocol bug these models are known to catch
    /// (a missing fence, a validate that does not re-check, a `write_begin` that is not
    /// idempotent) shows within two. The nightly run raises it.
    const DEFAULT_PREEMPTIONS: usize = 3;

    fn model(f: impl Fn() + Sync + Send + 'static) {
        let mut builder = loom::model::Builder::new();
        if builder.preemption_bound.is_none() {
            builder.preemption_bound = Some(DEFAULT_PREEMPTIONS);
        }
        builder.check(f);
    }

    /// A validated read never sees half of a write: `a == b` always holds for values the
    /// writer publishes together.
    #[test]
    fn loom_reader_never_accepts_a_torn_pair() {
        model(|| {
            let c = cell();
            let w = c.clone();
            let writer = loom::thread::spawn(move || {
                for v in 2..4 {
                    write_begin(&Holder(&w.seq));
                    w.a.store(v, Ordering::Relaxed);
                    w.b.store(v, Ordering::Relaxed);
                    write_end(&Holder(&w.seq));
                }
            });
            for _ in 0..2 {
                if let Some(s) = read_begin(&c.seq) {
                    let a = c.a.load(Ordering::Relaxed);
                    let b = c.b.load(Ordering::Relaxed);
                    if read_validate(&c.seq, s) {
                        assert_eq!(a, b, "validated read saw a torn pair");
                    }
                }
            }
            writer.join().unwrap();
        });
    }

    /// A writer that dies after starting leaves the counter odd: no reader validates a
    /// read of its half-written state, and the next owner sees it as dirty.
    #[test]
    fn loom_writer_dying_mid_write_is_never_read() {
        model(|| {
            let c = cell();
            let w = c.clone();
            let writer = loom::thread::spawn(move || {
                write_begin(&Holder(&w.seq));
                w.a.store(7, Ordering::Relaxed);
                // dies here: b is never written, the counter stays odd
            });
            if let Some(s) = read_begin(&c.seq) {
                let a = c.a.load(Ordering::Relaxed);
                let b = c.b.load(Ordering::Relaxed);
                if read_validate(&c.seq, s) {
                    assert_eq!((a, b), (1, 1), "validated read saw the dead writer's state");
                }
            }
            writer.join().unwrap();
            assert!(is_dirty(&Holder(&c.seq)));
            assert!(read_begin(&c.seq).is_none());
        });
    }

    /// A read that spans a writer's death and the next owner's repair never validates a
    /// mix: `write_begin` leaves the odd counter as it is and `write_end` moves it past
    /// every value a reader can have started from. The join stands for the lock passing
    /// from the dead owner to the next (a robust mutex hands over with the same
    /// happens-before edge).
    #[test]
    fn loom_read_spanning_a_death_and_its_repair_is_never_accepted() {
        model(|| {
            let c = cell();
            let r = c.clone();
            let reader = loom::thread::spawn(move || {
                if let Some(s) = read_begin(&r.seq) {
                    let a = r.a.load(Ordering::Relaxed);
                    let b = r.b.load(Ordering::Relaxed);
                    if read_validate(&r.seq, s) {
                        assert!(
                            (a, b) == (1, 1) || (a, b) == (3, 3),
                            "validated read saw ({a}, {b})"
                        );
                    }
                }
            });
            let w = c.clone();
            loom::thread::spawn(move || {
                write_begin(&Holder(&w.seq));
                w.a.store(7, Ordering::Relaxed);
                // dies here, counter odd
            })
            .join()
            .unwrap();
            let holder = Holder(&c.seq);
            assert!(is_dirty(&holder));
            write_begin(&holder);
            c.a.store(3, Ordering::Relaxed);
            c.b.store(3, Ordering::Relaxed);
            write_end(&holder);
            assert!(!is_dirty(&holder));
            reader.join().unwrap();
        });
    }
}
