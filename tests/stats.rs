//! What the lookup and fill counters of `Cache::stats` count: every lookup counts once,
//! as a hit, a miss or a stale hit, whichever path it took, so that a pool's hit ratio
//! is the one its clients see. (The entry, byte, eviction and repair counters are
//! checked where those happen: tests/lifecycle.rs, tests/churn.rs, tests/crash.rs.)

use std::sync::mpsc;
use std::time::Duration;

use larder::{Begin, Cache, Error, Stats};

mod common;
use common::{long_timeouts, small_options, TempCache};

/// The lookup and fill counters, for comparing before and after one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Lookups {
    hits: u64,
    misses: u64,
    stale_hits: u64,
    fills: u64,
    fills_fenced: u64,
    fill_timeouts: u64,
}

impl Lookups {
    fn of(s: &Stats) -> Lookups {
        Lookups {
            hits: s.hits,
            misses: s.misses,
            stale_hits: s.stale_hits,
            fills: s.fills,
            fills_fenced: s.fills_fenced,
            fill_timeouts: s.fill_timeouts,
        }
    }

    /// What changed from `before` to now.
    fn since(c: &Cache, before: Lookups) -> Lookups {
        let now = Lookups::of(&c.stats());
        Lookups {
            hits: now.hits - before.hits,
            misses: now.misses - before.misses,
            stale_hits: now.stale_hits - before.stale_hits,
            fills: now.fills - before.fills,
            fills_fenced: now.fills_fenced - before.fills_fenced,
            fill_timeouts: now.fill_timeouts - before.fill_timeouts,
        }
    }
}

fn open(t: &TempCache) -> (Cache, larder::Clock) {
    let clock = larder::Clock::manual();
    let c = long_timeouts(small_options())
        .clock(clock.clone())
        .open(t.name())
        .expect("open");
    (c, clock)
}

/// Runs `op` and returns the counters it moved.
fn counted(c: &Cache, op: impl FnOnce(&Cache)) -> Lookups {
    let before = Lookups::of(&c.stats());
    op(c);
    Lookups::since(c, before)
}

fn fill(c: &Cache, key: &[u8], value: &'static [u8]) -> Vec<u8> {
    c.get_or_insert_with(key, Some(Duration::from_secs(60)), || {
        Ok::<_, Error>(value.to_vec())
    })
    .expect("get_or_insert_with")
}

const ONE_HIT: Lookups = Lookups {
    hits: 1,
    misses: 0,
    stale_hits: 0,
    fills: 0,
    fills_fenced: 0,
    fill_timeouts: 0,
};
const ONE_MISS: Lookups = Lookups {
    misses: 1,
    hits: 0,
    stale_hits: 0,
    fills: 0,
    fills_fenced: 0,
    fill_timeouts: 0,
};

#[test]
fn gets_count_one_hit_or_one_miss() {
    let t = TempCache::new("stats-get");
    let (c, _) = open(&t);
    c.set(b"k", b"v", None).expect("set");
    assert_eq!(
        counted(&c, |c| assert!(c.get(b"k").unwrap().is_some())),
        ONE_HIT
    );
    assert_eq!(
        counted(&c, |c| assert!(c.get(b"x").unwrap().is_none())),
        ONE_MISS
    );
    let two = counted(&c, |c| {
        c.get_many(&[&b"k"[..], b"x"]).expect("get_many");
    });
    assert_eq!((two.hits, two.misses), (1, 1), "get_many: {two:?}");
    assert_eq!(
        counted(&c, |c| assert!(c.get_versioned(b"k").unwrap().is_some())),
        ONE_HIT
    );
    assert_eq!(
        counted(&c, |c| assert!(c.get_versioned(b"x").unwrap().is_none())),
        ONE_MISS
    );
}

/// A `get_or_insert_with` is one lookup: a hit, or one miss and one fill (the issue's
/// report: the miss was counted twice, so a pool's ratio read lower than its clients').
#[test]
fn a_fill_counts_one_miss_and_one_fill() {
    let t = TempCache::new("stats-fill");
    let (c, _) = open(&t);
    let fill_one = Lookups {
        fills: 1,
        ..ONE_MISS
    };
    assert_eq!(
        counted(&c, |c| assert_eq!(fill(c, b"k", b"v"), b"v")),
        fill_one
    );
    assert_eq!(
        counted(&c, |c| assert_eq!(fill(c, b"k", b"w"), b"v")),
        ONE_HIT
    );
    // A failing fill: one miss, no fill.
    let failed = counted(&c, |c| {
        let r = c.get_or_insert_with(b"f", None, || Err::<Vec<u8>, _>(Error::WouldBlock));
        assert!(r.is_err());
    });
    assert_eq!(failed, ONE_MISS);
    // A fill whose key is revoked while it computes: one miss, one fenced fill.
    let fenced = counted(&c, |c| {
        let v = c
            .get_or_insert_with(b"r", None, || {
                c.remove(b"r").expect("remove");
                Ok::<_, Error>(b"stale".to_vec())
            })
            .expect("fill");
        assert_eq!(v, b"stale");
    });
    assert_eq!(
        fenced,
        Lookups {
            fills_fenced: 1,
            ..ONE_MISS
        }
    );
}

/// An expired entry: refreshed by this caller, a miss and a fill; served while another
/// refreshes it, one stale hit.
#[test]
fn an_expired_entry_counts_a_miss_when_refreshed_and_a_stale_hit_when_served() {
    let t = TempCache::new("stats-stale");
    let (c, clock) = open(&t);
    c.set(b"k", b"old", Some(Duration::from_secs(1)))
        .expect("set");
    clock.advance(Duration::from_secs(2));
    let refreshed = counted(&c, |c| assert_eq!(fill(c, b"k", b"new"), b"new"));
    assert_eq!(
        refreshed,
        Lookups {
            fills: 1,
            ..ONE_MISS
        }
    );

    c.set(b"s", b"old", Some(Duration::from_secs(1)))
        .expect("set");
    clock.advance(Duration::from_secs(2));
    // Another thread holds the key's fill: this caller is served the stale value.
    let (in_fill_tx, in_fill_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let other = c.clone();
    let refresher = std::thread::spawn(move || {
        other
            .get_or_insert_with(b"s", None, || {
                in_fill_tx.send(()).expect("signal");
                let _ = go_rx.recv_timeout(Duration::from_secs(60));
                Ok::<_, Error>(b"new".to_vec())
            })
            .expect("refresh")
    });
    in_fill_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the refresher never ran f");
    let served = counted(&c, |c| assert_eq!(fill(c, b"s", b"unused"), b"old"));
    go_tx.send(()).expect("release");
    assert_eq!(refresher.join().expect("refresher"), b"new");
    assert_eq!(
        served,
        Lookups {
            stale_hits: 1,
            ..Lookups::default()
        }
    );
    // get_stale counts a stale hit too; a plain get of an expired entry is a miss.
    c.set(b"e", b"old", Some(Duration::from_secs(1)))
        .expect("set");
    clock.advance(Duration::from_secs(2));
    let stale = counted(&c, |c| assert!(c.get_stale(b"e").unwrap().is_some()));
    assert_eq!(
        stale,
        Lookups {
            stale_hits: 1,
            ..Lookups::default()
        }
    );
    assert_eq!(
        counted(&c, |c| assert!(c.get(b"e").unwrap().is_none())),
        ONE_MISS
    );
}

/// A caller that waited for another's fill and got its value: one miss (it did not find
/// the value), no fill of its own.
#[test]
fn a_caller_served_by_anothers_fill_counts_one_miss() {
    let t = TempCache::new("stats-wait");
    let (c, _) = open(&t);
    let (in_fill_tx, in_fill_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let other = c.clone();
    let filler = std::thread::spawn(move || {
        other
            .get_or_insert_with(b"k", None, || {
                in_fill_tx.send(()).expect("signal");
                let _ = go_rx.recv_timeout(Duration::from_secs(60));
                Ok::<_, Error>(b"v".to_vec())
            })
            .expect("fill")
    });
    in_fill_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the filler never ran f");
    let before = Lookups::of(&c.stats());
    let waiter = {
        let c = c.clone();
        std::thread::spawn(move || fill(&c, b"k", b"unused"))
    };
    // The waiter counts its miss before it blocks on the fill slot; release the filler
    // once it has (or after the deadline, which fails the assertion below).
    common::poll_until(common::deadline_in(60), || c.stats().misses > before.misses);
    go_tx.send(()).expect("release");
    assert_eq!(filler.join().expect("filler"), b"v");
    assert_eq!(waiter.join().expect("waiter"), b"v");
    let both = Lookups::since(&c, before);
    // The filler's miss was counted before `before`; its fill after.
    assert_eq!(
        both,
        Lookups {
            fills: 1,
            ..ONE_MISS
        },
        "the waiter counted more than one lookup"
    );
}

/// A fill in two steps (`try_get_into_counting_hits` inline, then `begin_fill`) counts
/// one lookup: a hit, or one miss.
#[test]
fn a_two_step_fill_counts_one_lookup() {
    let t = TempCache::new("stats-two-step");
    let (c, _) = open(&t);
    let mut out = Vec::new();
    let missed = counted(&c, |c| {
        assert!(!c.try_get_into_counting_hits(b"k", &mut out).unwrap());
        match c.begin_fill(b"k", &mut out).expect("begin_fill") {
            Begin::Fill(fill) => assert!(fill.complete(b"v", None).expect("complete")),
            other => panic!("expected the fill, got {other:?}"),
        }
    });
    assert_eq!(
        missed,
        Lookups {
            fills: 1,
            ..ONE_MISS
        }
    );
    let hit = counted(&c, |c| {
        assert!(c.try_get_into_counting_hits(b"k", &mut out).unwrap());
    });
    assert_eq!(hit, ONE_HIT);
    assert_eq!(out, b"v");
}

/// `fill_slot_of` names the slot a fill holds: while a fill of one key is held, a key of
/// the same slot finds its fill busy, and a key of another slot does not.
#[test]
fn fill_slot_of_names_the_slot_a_fill_holds() {
    let t = TempCache::new("stats-fill-slot");
    let (c, _) = open(&t);
    let slot = c.fill_slot_of(b"k");
    assert!(slot < 256);
    let keys: Vec<Vec<u8>> = (0..4096)
        .map(|i| format!("other-{i}").into_bytes())
        .collect();
    let same = keys
        .iter()
        .find(|k| c.fill_slot_of(k) == slot)
        .expect("a key of the slot");
    let other = keys
        .iter()
        .find(|k| c.fill_slot_of(k) != slot)
        .expect("a key of another");
    let mut out = Vec::new();
    let Begin::Fill(held) = c.begin_fill(b"k", &mut out).expect("begin_fill") else {
        panic!("expected the fill");
    };
    let busy = std::thread::scope(|s| {
        s.spawn(|| {
            let mut out = Vec::new();
            let same = matches!(c.try_begin_fill(same, &mut out), Err(Error::WouldBlock));
            let other = matches!(c.try_begin_fill(other, &mut out), Ok(Begin::Fill(_)));
            (same, other)
        })
        .join()
        .expect("join")
    });
    drop(held);
    assert_eq!(busy, (true, true));
}
