//! Counters and conditional writes: `incr`, `replace`, `get_many`.
//!
//! Semantics first (initial values, fixed windows, values that are not counters,
//! overflow), then the promise that matters for rate limits: increments from many
//! threads and processes are never lost, and a process SIGKILLed at a random instant
//! inside an increment costs at most the one increment it had in flight, over a
//! thousand kills (with no eviction: a counter evicted, or lost with a writer killed
//! while moving it, starts again, as any entry may be lost then).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use larder::{Error, Options};

mod common;
use common::{
    child_role, deadline_in, disable_core_dumps, poll_until, self_command, Children, Rng, TempCache,
};

fn counter(v: Option<Vec<u8>>) -> Option<i64> {
    v.map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
}

#[test]
fn incr_creates_from_init_and_adds_delta() {
    let t = TempCache::new("incr");
    let c = t.open();
    assert_eq!(c.incr(b"n", 5, 100, None).expect("incr"), 105);
    assert_eq!(c.incr(b"n", -7, 100, None).expect("incr"), 98);
    assert_eq!(c.incr(b"n", 0, 100, None).expect("incr"), 98);
    assert_eq!(counter(c.get(b"n").expect("get")), Some(98));
    // A counter written by set is a counter too.
    c.set(b"m", &41i64.to_le_bytes(), None).expect("set");
    assert_eq!(c.incr(b"m", 1, 0, None).expect("incr"), 42);
    assert!(c.verify().expect("verify").is_clean());
}

#[test]
fn incr_keeps_the_first_increments_expiry_so_a_window_ends_on_time() {
    let t = TempCache::new("incr-ttl");
    let (c, clock) = t.open_on_manual_clock();
    let window = Some(Duration::from_secs(60));
    assert_eq!(c.incr(b"rate", 1, 0, window).expect("incr"), 1);
    clock.advance(Duration::from_secs(40));
    // A later increment asks for a new window, but the entry keeps its first one.
    assert_eq!(c.incr(b"rate", 1, 0, window).expect("incr"), 2);
    clock.advance(Duration::from_secs(21));
    assert_eq!(c.get(b"rate").expect("get"), None, "the window ended");
    // An expired counter starts again from init.
    assert_eq!(c.incr(b"rate", 1, 0, window).expect("incr"), 1);
    let left = c
        .entries()
        .map(|e| e.expect("entry"))
        .find(|e| e.key == b"rate")
        .and_then(|e| e.ttl)
        .expect("a ttl");
    assert!(left > Duration::from_secs(59), "{left:?}");
}

#[test]
fn incr_of_a_value_that_is_not_a_counter_changes_nothing() {
    let t = TempCache::new("incr-nan");
    let c = t.open();
    c.set(b"name", b"alice", None).expect("set");
    match c.incr(b"name", 1, 0, None) {
        Err(e @ Error::NotACounter { len: 5 }) => {
            assert!(e.to_string().contains("not a counter"), "{e}")
        }
        other => panic!("expected NotACounter, got {other:?}"),
    }
    assert_eq!(c.get(b"name").expect("get"), Some(b"alice".to_vec()));
}

#[test]
fn incr_that_overflows_changes_nothing() {
    let t = TempCache::new("incr-overflow");
    let c = t.open();
    assert_eq!(c.incr(b"n", 1, i64::MAX - 1, None).expect("incr"), i64::MAX);
    match c.incr(b"n", 1, 0, None) {
        Err(Error::Overflow { value, delta }) => assert_eq!((value, delta), (i64::MAX, 1)),
        other => panic!("expected Overflow, got {other:?}"),
    }
    assert_eq!(counter(c.get(b"n").expect("get")), Some(i64::MAX));
    // An absent key whose init + delta overflows is not created.
    assert!(matches!(
        c.incr(b"fresh", -1, i64::MIN, None),
        Err(Error::Overflow { .. })
    ));
    assert_eq!(c.get(b"fresh").expect("get"), None);
}

#[test]
fn replace_stores_only_over_a_fresh_entry() {
    let t = TempCache::new("replace");
    let (c, clock) = t.open_on_manual_clock();
    assert!(!c.replace(b"k", b"v", None).expect("replace"));
    assert_eq!(c.get(b"k").expect("get"), None, "replace created an entry");
    c.set(b"k", b"v1", Some(Duration::from_secs(10)))
        .expect("set");
    assert!(c.replace(b"k", b"v2", None).expect("replace"));
    assert_eq!(c.get(b"k").expect("get"), Some(b"v2".to_vec()));
    c.set(b"old", b"v", Some(Duration::from_secs(1)))
        .expect("set");
    clock.advance(Duration::from_secs(2));
    assert!(
        !c.replace(b"old", b"w", None).expect("replace"),
        "over an expired entry"
    );
    assert!(c.remove(b"k").expect("remove"));
    assert!(
        !c.replace(b"k", b"v3", None).expect("replace"),
        "over a removed entry"
    );
    assert_eq!(c.get(b"k").expect("get"), None);
    let long = vec![0u8; 4096];
    assert!(matches!(
        c.replace(b"k", &long, None),
        Err(Error::TooLarge { .. })
    ));
}

#[test]
fn get_many_reads_every_key_without_a_lock() {
    let t = TempCache::new("many");
    let c = t.open();
    let keys: Vec<Vec<u8>> = (0..40).map(|i| format!("key-{i}").into_bytes()).collect();
    for (i, k) in keys.iter().enumerate().filter(|(i, _)| i % 3 != 0) {
        c.set(k, format!("value-{i}").as_bytes(), None)
            .expect("set");
    }
    let locks = c.stats().locks;
    let mut bufs: Vec<Vec<u8>> = keys.iter().map(|_| Vec::with_capacity(32)).collect();
    let mut found = vec![false; keys.len()];
    let hits = c
        .get_many_into(&keys, &mut bufs, &mut found)
        .expect("get_many_into");
    assert_eq!(hits, keys.len() - keys.len().div_ceil(3));
    for (i, (hit, v)) in found.iter().zip(&bufs).enumerate() {
        assert_eq!(*hit, i % 3 != 0, "key {i}");
        if *hit {
            assert_eq!(v, format!("value-{i}").as_bytes());
        }
    }
    assert_eq!(c.stats().locks, locks, "hits took a lock");
    let again = c.get_many(&keys).expect("get_many");
    for (i, v) in again.iter().enumerate() {
        assert_eq!(v.is_some(), i % 3 != 0);
    }
    assert!(matches!(
        c.get_many_into(&keys, &mut bufs[..3], &mut found),
        Err(Error::InvalidArgument(_))
    ));
    let long = [b'x'; 100];
    assert!(matches!(
        c.get_many(&[&b"ok"[..], &long[..]]),
        Err(Error::TooLarge { .. })
    ));
}

/// A counter that is only ever incremented is in use, like a key that is read: churn of
/// other keys through a full cache must not evict it as a one-hit wonder (which would
/// reset a rate limit's window).
#[test]
fn a_counter_in_use_survives_churn_of_other_keys() {
    let t = TempCache::new("incr-churn");
    let c = t
        .options()
        .capacity(1 << 20)
        .shards(1)
        .open(t.name())
        .expect("open");
    let filler = vec![7u8; 200];
    let mut counted = 0;
    for i in 0..100_000u32 {
        c.set(format!("filler-{i}").as_bytes(), &filler, None)
            .expect("set");
        if i % 50 == 0 {
            counted += 1;
            let n = c.incr(b"logins", 1, 0, None).expect("incr");
            assert_eq!(n, counted, "after {i} fillers the counter started again");
        }
    }
    assert!(c.stats().evictions > 10_000, "the churn evicted little");
}

#[test]
fn increments_from_many_threads_are_never_lost() {
    let t = TempCache::new("incr-threads");
    let c = t.open();
    const THREADS: i64 = 4;
    const EACH: i64 = 2_000;
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            let c = c.clone();
            s.spawn(move || {
                for _ in 0..EACH {
                    c.incr(b"shared", 1, 0, None).expect("incr");
                }
            });
        }
    });
    assert_eq!(
        counter(c.get(b"shared").expect("get")),
        Some(THREADS * EACH)
    );
}

// ----- processes, with and without kills --------------------------------------------

/// Counters the children increment.
const KEYS: usize = 4;
/// Children alive at once in a kill round.
const WRITERS: usize = 3;
/// Increments a child makes before it exits on its own.
const MAX_OPS: u64 = 20_000;
/// Kills land at random instants this long after the child's first acknowledged one.
const KILL_WINDOW_US: u64 = 3000;
/// Kills in a default run; `LARDER_COUNTER_KILLS` overrides.
const DEFAULT_KILLS: u64 = 1000;

fn options() -> Options {
    Options::new()
        .capacity(1 << 20)
        .max_key_len(32)
        .max_value_len(64)
        .lock_timeout(Duration::from_secs(10))
}

fn key(i: usize) -> Vec<u8> {
    format!("counter-{i}").into_bytes()
}

/// A child: increments random counters; after each acknowledged increment, appends the
/// counter's index to its log (one byte, one `write`), so the log holds exactly the
/// acknowledged increments, plus at most none: a kill between the two loses the entry.
fn incrementer() -> ! {
    disable_core_dumps();
    let path = std::env::var("LARDER_TEST_PATH").expect("path");
    let log = std::env::var("LARDER_TEST_LOG").expect("log");
    let ops: u64 = std::env::var("LARDER_TEST_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(MAX_OPS);
    let mut rng = Rng::new(Rng::seed_from_time());
    let c = options().attach(&path).expect("attach");
    let mut out = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&log)
        .expect("log");
    for _ in 0..ops {
        let k = rng.below(KEYS as u64) as usize;
        c.incr(&key(k), 1, 0, None).expect("incr");
        out.write_all(&[k as u8]).expect("log write");
    }
    std::process::exit(0)
}

fn spawn_incrementer(kids: &mut Children, test: &str, path: &Path, log: &Path, ops: u64) -> usize {
    let mut cmd = self_command(test, "incrementer");
    cmd.env("LARDER_TEST_PATH", path)
        .env("LARDER_TEST_LOG", log)
        .env("LARDER_TEST_OPS", ops.to_string());
    kids.spawn(&mut cmd)
}

/// Acknowledged increments per counter, from every log in `dir`.
fn logged(logs: &[PathBuf]) -> [i64; KEYS] {
    let mut n = [0i64; KEYS];
    for log in logs {
        for b in std::fs::read(log).unwrap_or_default() {
            n[b as usize] += 1;
        }
    }
    n
}

#[test]
fn increments_from_many_processes_are_never_lost() {
    const TEST: &str = "increments_from_many_processes_are_never_lost";
    if child_role().as_deref() == Some("incrementer") {
        incrementer();
    }
    let t = TempCache::new("incr-procs");
    let c = options().open(t.name()).expect("create");
    let mut kids = Children::new();
    let logs: Vec<PathBuf> = (0..WRITERS)
        .map(|i| t.dir.join(format!("log-{i}")))
        .collect();
    let ids: Vec<usize> = logs
        .iter()
        .map(|log| spawn_incrementer(&mut kids, TEST, &t.path, log, 3_000))
        .collect();
    for i in ids {
        let status = kids.wait_or_fail(i, deadline_in(120), "incrementer");
        assert!(status.success(), "incrementer failed: {status:?}");
    }
    let acked = logged(&logs);
    assert_eq!(acked.iter().sum::<i64>(), 3 * 3_000);
    for (k, n) in acked.iter().enumerate() {
        assert_eq!(
            counter(c.get(&key(k)).expect("get")),
            Some(*n),
            "counter {k}"
        );
    }
}

/// Incrementing processes SIGKILLed at random instants, a thousand times: every
/// acknowledged increment is counted exactly once and an increment in flight at a kill
/// at most once, so each counter is between its acknowledged total and that plus the
/// kills; the file verifies clean.
#[test]
fn killed_incrementers_count_every_acknowledged_increment_once() {
    const TEST: &str = "killed_incrementers_count_every_acknowledged_increment_once";
    if child_role().as_deref() == Some("incrementer") {
        incrementer();
    }
    let kills: u64 = std::env::var("LARDER_COUNTER_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_KILLS);
    let seed = Rng::seed_from_time();
    eprintln!("killed_incrementers: {kills} kills, seed {seed}");
    let mut rng = Rng::new(seed);
    let t = TempCache::new("incr-kill");
    let c = options().open(t.name()).expect("create");
    let mut logs = Vec::new();
    let mut killed = 0u64;
    let mut round = 0;
    let end = deadline_in(600);
    while killed < kills {
        assert!(
            std::time::Instant::now() < end,
            "{killed} kills in 600 s: the incrementers finish before they are killed"
        );
        let mut kids = Children::new();
        let mut live = Vec::new();
        for w in 0..WRITERS {
            let log = t.dir.join(format!("log-{round}-{w}"));
            let i = spawn_incrementer(&mut kids, TEST, &t.path, &log, MAX_OPS);
            live.push((i, log.clone()));
            logs.push(log);
        }
        for (i, log) in &live {
            // The child's first acknowledged increment, then a random instant.
            let started = poll_until(deadline_in(60), || {
                std::fs::metadata(log).map(|m| m.len() > 0).unwrap_or(false)
                    || kids.try_status(*i).is_some()
            });
            assert!(started, "an incrementer never acknowledged an increment");
            let instant = Duration::from_micros(rng.below(KILL_WINDOW_US));
            std::thread::sleep(instant); // the kill's random instant, not a wait: poll_until's deadline above is the wait
            let status = kids.kill_and_reap(*i);
            match (status.code(), status.signal()) {
                (Some(_), _) => assert!(status.success(), "incrementer failed: {status:?}"),
                (None, Some(libc::SIGKILL)) => killed += 1,
                _ => panic!("an incrementer died on its own: {status:?}"),
            }
        }
        round += 1;
    }
    let acked = logged(&logs);
    let mut extra = 0;
    for (k, n) in acked.iter().enumerate() {
        let v = counter(c.get(&key(k)).expect("get")).unwrap_or(0);
        assert!(
            v >= *n,
            "counter {k}: {v} < {n} acknowledged: an increment was lost"
        );
        extra += v - n;
    }
    assert!(
        extra as u64 <= killed,
        "{extra} increments beyond the acknowledged ones, with {killed} kills"
    );
    let report = c.verify().expect("verify");
    assert!(report.is_clean(), "{report}");
    let s = c.stats();
    assert_eq!(s.evictions, 0, "the setup evicted: {s:?}");
    eprintln!(
        "killed_incrementers: {killed} kills in {round} rounds, {} increments, {extra} in \
         flight at a kill applied, {} recoveries",
        acked.iter().sum::<i64>(),
        s.recoveries
    );
}
