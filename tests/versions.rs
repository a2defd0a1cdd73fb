//! Versioned compare-and-swap: `get_versioned` and `set_if_version`.
//!
//! A compare-and-swap loop from several processes never loses an update, also while
//! its processes are SIGKILLed at random instants; a version is never given out twice
//! for a file (across removals, clears, online and offline repairs and increments); every
//! write but `touch` ends an entry's version, as does its expiry or the file's
//! replacement; the first `get_versioned` of an entry gives it a version without
//! changing its value or TTL; and a process killed inside a versioning rewrite (the
//! first `get_versioned`, `set_if_version`) of the oldest entry of a full shard never
//! costs the entry.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use larder::{Cache, Options, Version};

mod common;
use common::{
    child_env, child_role, deadline_in, disable_core_dumps, keys_in_shard, long_timeouts,
    poll_until, repair_offline_after_close, self_command, small_options, ChildGuard, Children, Rng,
    TempCache,
};

/// Options of the multi-process tests: far more room than their few keys need (nothing
/// is evicted), and lock timeouts no loaded machine reaches.
fn options() -> Options {
    long_timeouts(small_options())
}

/// A counter's value: a little-endian `u64`.
fn count(v: &[u8]) -> u64 {
    u64::from_le_bytes(v.try_into().expect("a counter is 8 bytes"))
}

/// The value and version of `key`'s fresh entry, which must exist.
fn versioned(c: &Cache, key: &[u8]) -> (Vec<u8>, Version) {
    c.get_versioned(key)
        .expect("get_versioned")
        .unwrap_or_else(|| panic!("no entry for {:?}", String::from_utf8_lossy(key)))
}

/// How one compare-and-swap increment ended.
enum Cas {
    /// Stored after this many failed attempts.
    Stored { retries: u64 },
    /// The counter was not there.
    Missing,
}

/// Whether a compare-and-swap loop yields the CPU between its read and its write.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Between {
    Nothing,
    /// Another process gets to run in the window, so that the loops of processes that
    /// share a core race too (the processes of a short test otherwise each run their
    /// increments within one time slice).
    Yield,
}

/// Adds 1 to the counter `key` with a compare-and-swap loop: read it with its version,
/// store the next count only if the version still matches, else read again. Gives up
/// (panicking) at `deadline`, so that a loop that never wins cannot hang its test.
fn cas_increment(c: &Cache, key: &[u8], between: Between, deadline: Instant) -> Cas {
    let mut retries = 0;
    loop {
        let Some((v, version)) = c.get_versioned(key).expect("get_versioned") else {
            return Cas::Missing;
        };
        let next = count(&v) + 1;
        if between == Between::Yield {
            std::thread::yield_now();
        }
        if c.set_if_version(key, &next.to_le_bytes(), None, version)
            .expect("set_if_version")
        {
            return Cas::Stored { retries };
        }
        retries += 1;
        assert!(
            Instant::now() < deadline,
            "no compare-and-swap of {:?} won before the deadline ({retries} tries)",
            String::from_utf8_lossy(key)
        );
    }
}

// ----- compare-and-swap from several processes --------------------------------------

/// The counter the processes of the first test share.
const SHARED: &[u8] = b"cas-counter";
/// Processes of the first test, and the increments each makes.
const PROCS: usize = 4;
const EACH: u64 = 300;

/// A child of `cas_increments_from_many_processes_are_never_lost`: says it is ready,
/// waits for the parent's go (so that the children contend), makes `EACH` increments
/// and writes how many retries they took.
fn cas_incrementer(me: &str) -> ! {
    let c = options()
        .attach(child_env("LARDER_TEST_PATH"))
        .expect("attach");
    c.set(format!("ready/{me}").as_bytes(), b"1", None)
        .expect("ready");
    let go = poll_until(deadline_in(60), || c.get(b"go").expect("get go").is_some());
    assert!(go, "no go from the parent before the deadline");
    let deadline = deadline_in(120);
    let mut retries = 0;
    for i in 0..EACH {
        match cas_increment(&c, SHARED, Between::Yield, deadline) {
            Cas::Stored { retries: r } => retries += r,
            Cas::Missing => panic!("the counter is gone after {i} increments"),
        }
    }
    let out = PathBuf::from(child_env("LARDER_TEST_OUT"));
    let tmp = out.with_extension("tmp");
    std::fs::write(&tmp, retries.to_string()).expect("write retries");
    std::fs::rename(&tmp, &out).expect("publish retries");
    std::process::exit(0)
}

/// Four processes each make 300 compare-and-swap increments of one counter, retrying
/// whenever another process changed it in between: the counter ends at exactly 1200,
/// so no update was lost to a race and none applied twice.
#[test]
fn cas_increments_from_many_processes_are_never_lost() {
    const TEST: &str = "cas_increments_from_many_processes_are_never_lost";
    if let Some(role) = child_role() {
        cas_incrementer(&role);
    }
    let t = TempCache::new("cas-procs");
    let c = options().open(t.name()).expect("create");
    c.set(SHARED, &0u64.to_le_bytes(), None).expect("set");
    let mut kids: Vec<ChildGuard> = (0..PROCS)
        .map(|i| {
            let mut cmd = self_command(TEST, &i.to_string());
            cmd.env("LARDER_TEST_PATH", &t.path)
                .env("LARDER_TEST_OUT", t.dir.join(format!("retries-{i}")));
            ChildGuard::spawn_logged(&mut cmd, t.dir.join(format!("child-{i}.log")))
        })
        .collect();
    for (i, kid) in kids.iter_mut().enumerate() {
        let ready = poll_until(deadline_in(60), || {
            if let Some(status) = kid.try_status() {
                panic!(
                    "child {i} exited before it was ready ({status}):\n{}",
                    kid.log()
                );
            }
            c.get(format!("ready/{i}").as_bytes())
                .expect("get")
                .is_some()
        });
        assert!(ready, "child {i} was not ready before the deadline");
    }
    let started = Instant::now();
    c.set(b"go", b"1", None).expect("go");
    let deadline = deadline_in(180);
    for (i, kid) in kids.iter_mut().enumerate() {
        let status = kid.wait_or_fail(deadline, &format!("cas incrementer {i}"));
        assert!(
            status.success(),
            "child {i} failed ({status}):\n{}",
            kid.log()
        );
    }
    let elapsed = started.elapsed();
    let (v, _) = versioned(&c, SHARED);
    assert_eq!(
        count(&v),
        PROCS as u64 * EACH,
        "compare-and-swap increments lost or applied twice"
    );
    let retries: u64 = (0..PROCS)
        .map(|i| {
            std::fs::read_to_string(t.dir.join(format!("retries-{i}")))
                .expect("retries")
                .parse::<u64>()
                .expect("a number")
        })
        .sum();
    eprintln!(
        "cas_increments: {} increments by {PROCS} processes in {elapsed:?}, {retries} retries",
        PROCS as u64 * EACH
    );
    let report = c.verify().expect("verify");
    assert!(report.is_clean(), "{report}");
    assert_eq!(c.stats().evictions, 0);
}

// ----- a kill storm ---------------------------------------------------------------------

/// Counters the storm's children increment.
const KEYS: usize = 2;
/// Children alive at once in a kill round.
const WRITERS: usize = 3;
/// Increments a child makes before it exits on its own.
const MAX_OPS: u64 = 20_000;
/// Kills land at random instants this long after the child's first acknowledged one.
const KILL_WINDOW_US: u64 = 3000;
/// Kills in a default run (a few seconds on two cores); `LARDER_CAS_KILLS` overrides.
const DEFAULT_KILLS: u64 = 500;
/// What a storm child logs, besides the index of a counter it incremented, when it
/// found a counter missing and created it again at 0.
const RECREATED: u8 = 0x80;

fn storm_key(i: usize) -> Vec<u8> {
    format!("cas-{i}").into_bytes()
}

/// A storm child: compare-and-swap increments of random counters; after each one
/// `set_if_version` acknowledged, appends the counter's index to its log (one byte, one
/// `write`), so the log holds exactly the acknowledged increments, less at most the one
/// a kill lands between the two. A counter it finds missing (which only a repair that
/// dropped it can cause) it creates again at 0, and logs that.
fn storm_child() -> ! {
    disable_core_dumps();
    let c = options()
        .attach(child_env("LARDER_TEST_PATH"))
        .expect("attach");
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(child_env("LARDER_TEST_LOG"))
        .expect("log");
    let mut rng = Rng::new(Rng::seed_from_time());
    let deadline = deadline_in(120);
    for _ in 0..MAX_OPS {
        let k = rng.below(KEYS as u64) as usize;
        let key = storm_key(k);
        loop {
            match cas_increment(&c, &key, Between::Nothing, deadline) {
                Cas::Stored { .. } => break,
                Cas::Missing => {
                    c.insert_if_absent(&key, &0u64.to_le_bytes(), None)
                        .expect("insert_if_absent");
                    log.write_all(&[RECREATED | k as u8]).expect("log write");
                }
            }
        }
        log.write_all(&[k as u8]).expect("log write");
    }
    std::process::exit(0)
}

/// Compare-and-swap incrementers SIGKILLed at random instants, hundreds of times: every
/// increment `set_if_version` acknowledged is in its counter exactly once, and one in
/// flight at a kill at most once, so each counter is between its acknowledged total and
/// that plus the kills; no counter is ever lost (and started again); the file verifies
/// clean.
///
/// This holds because a versioned set never overwrites in place and marks the old
/// record dead only once the new one is published and indexed: a crash in between leaves
/// the old value or the new one for the repair, never neither.
#[test]
fn killed_cas_incrementers_count_every_acknowledged_increment_once() {
    const TEST: &str = "killed_cas_incrementers_count_every_acknowledged_increment_once";
    if child_role().as_deref() == Some("storm") {
        storm_child();
    }
    let kills: u64 = std::env::var("LARDER_CAS_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_KILLS);
    let seed = Rng::seed_from_time();
    eprintln!("killed_cas_incrementers: {kills} kills, seed {seed}");
    let mut rng = Rng::new(seed);
    let t = TempCache::new("cas-kill");
    let c = options().open(t.name()).expect("create");
    for k in 0..KEYS {
        c.set(&storm_key(k), &0u64.to_le_bytes(), None)
            .expect("set");
    }
    let started = Instant::now();
    let end = deadline_in(300);
    let mut logs: Vec<PathBuf> = Vec::new();
    let mut killed = 0u64;
    let mut round = 0;
    while killed < kills {
        assert!(
            Instant::now() < end,
            "{killed} kills before the deadline: the children finish before they are killed"
        );
        let mut kids = Children::new();
        let mut live = Vec::new();
        for w in 0..WRITERS {
            let log = t.dir.join(format!("log-{round}-{w}"));
            let mut cmd = self_command(TEST, "storm");
            cmd.env("LARDER_TEST_PATH", &t.path)
                .env("LARDER_TEST_LOG", &log);
            live.push((kids.spawn(&mut cmd), log.clone()));
            logs.push(log);
        }
        for (i, log) in &live {
            // The child's first acknowledged increment, then a random instant.
            let acked = |p: &Path| std::fs::metadata(p).map(|m| m.len() > 0).unwrap_or(false);
            let started = poll_until(deadline_in(60), || {
                acked(log) || kids.try_status(*i).is_some()
            });
            assert!(started, "a child never acknowledged an increment");
            // Then the kill's random instant: a polled wait whose deadline is that instant
            // (it ends early only if the child exits on its own).
            let instant = Instant::now() + Duration::from_micros(rng.below(KILL_WINDOW_US));
            poll_until(instant, || kids.try_status(*i).is_some());
            let status = kids.kill_and_reap(*i);
            match (status.code(), status.signal()) {
                (Some(_), _) => assert!(status.success(), "a child failed: {status:?}"),
                (None, Some(libc::SIGKILL)) => killed += 1,
                _ => panic!("a child died on its own: {status:?}"),
            }
        }
        round += 1;
    }
    let elapsed = started.elapsed();
    let mut acked = [0u64; KEYS];
    let mut recreated = [0u64; KEYS];
    for log in &logs {
        for b in std::fs::read(log).unwrap_or_default() {
            if b & RECREATED != 0 {
                recreated[(b & !RECREATED) as usize] += 1;
            } else {
                acked[b as usize] += 1;
            }
        }
    }
    let s = c.stats();
    eprintln!(
        "killed_cas_incrementers: {killed} kills in {round} rounds in {elapsed:?}, {} \
         acknowledged increments, {} recoveries, {} entries dropped by repairs",
        acked.iter().sum::<u64>(),
        s.recoveries,
        s.repair_dropped
    );
    assert_eq!(
        recreated, [0; KEYS],
        "counters found missing (and started again from 0) by the children: a repair \
         after a kill dropped a counter, and every acknowledged increment in it ({} \
         repairs dropped {} entries)",
        s.recoveries, s.repair_dropped
    );
    let mut extra = 0;
    for (k, n) in acked.iter().enumerate() {
        let v = c.get(&storm_key(k)).expect("get").map_or(0, |v| count(&v));
        assert!(
            v >= *n,
            "counter {k}: {v} < {n} acknowledged: an increment was lost"
        );
        extra += v - n;
    }
    assert!(
        extra <= killed,
        "{extra} increments beyond the acknowledged ones, with {killed} kills"
    );
    let report = c.verify().expect("verify");
    assert!(report.is_clean(), "{report}");
    assert_eq!(s.evictions, 0, "the setup evicted: {s:?}");
}

// ----- versions are never reused ------------------------------------------------------

/// One key's versions, collected across every way an entry can lose its version or the
/// shard its records: a new `set_if_version`, a removal and a new set, a clear, an online
/// repair, an offline repair (with every handle closed), and increments of a counter in
/// the same shard. Each new version is larger than every one before it in the shard
/// (`Version::number`), and no old one matches again: every `set_if_version` with one
/// fails, while the current ones still succeed.
#[test]
fn a_version_is_never_given_out_twice() {
    let t = TempCache::new("ver-unique");
    let mut c = t.open();
    let key: &[u8] = b"versioned";
    let shard = c.shard_of(key);
    let counter = keys_in_shard(&c, shard, "counter", 1).remove(0);
    let mut seen: Vec<(&str, Version)> = Vec::new();
    let mut push = |what: &'static str, v: Version| {
        if let Some((before, last)) = seen.last() {
            assert!(
                v.number() > last.number(),
                "{what}: version {} after {} ({before})",
                v.number(),
                last.number()
            );
        }
        seen.push((what, v));
        v
    };

    c.set(key, b"v0", None).expect("set");
    let v = push("first get_versioned", versioned(&c, key).1);
    assert!(c.set_if_version(key, b"v1", None, v).expect("cas"));
    push("set_if_version", versioned(&c, key).1);

    assert!(c.remove(key).expect("remove"));
    c.set(key, b"v2", None).expect("set");
    push("remove, set", versioned(&c, key).1);

    c.clear().expect("clear");
    c.set(key, b"v3", None).expect("set");
    push("clear, set", versioned(&c, key).1);

    // A repair keeps an entry's version, and never lowers the shard's: the record that
    // carried the last one is removed (dead) first.
    let last = versioned(&c, key).1;
    c.repair().expect("online repair");
    assert_eq!(
        versioned(&c, key).1,
        last,
        "an online repair changed the version"
    );
    assert!(c.remove(key).expect("remove"));
    c.repair().expect("online repair");
    c.set(key, b"v4", None).expect("set");
    push("remove, online repair, set", versioned(&c, key).1);

    // The same offline, twice: with the entry there, then with it removed.
    let last = versioned(&c, key).1;
    drop(c);
    repair_offline_after_close(t.name());
    c = t.open();
    assert_eq!(
        versioned(&c, key).1,
        last,
        "an offline repair changed the version"
    );
    assert!(c.remove(key).expect("remove"));
    drop(c);
    repair_offline_after_close(t.name());
    c = t.open();
    c.set(key, b"v5", None).expect("set");
    push("remove, offline repair, set", versioned(&c, key).1);

    c.incr(&counter, 1, 0, None).expect("incr");
    push("incr of a new counter", versioned(&c, &counter).1);
    c.incr(&counter, 1, 0, None).expect("incr");
    let counted = push("incr of a versioned counter", versioned(&c, &counter).1);
    c.incr(&counter, 0, 0, None).expect("incr");
    let counted_now = push(
        "incr by 0 of a versioned counter",
        versioned(&c, &counter).1,
    );
    assert_ne!(counted_now, counted);

    let current = versioned(&c, key).1;
    for &(what, v) in &seen {
        for k in [key, &counter[..]] {
            if v == current && k == key || v == counted_now && k == &counter[..] {
                continue;
            }
            assert!(
                !c.set_if_version(k, &7u64.to_le_bytes(), None, v)
                    .expect("set_if_version"),
                "the version from {what} matched {:?} again",
                String::from_utf8_lossy(k)
            );
        }
    }
    assert!(c.set_if_version(key, b"v6", None, current).expect("cas"));
    assert!(c
        .set_if_version(&counter, &7u64.to_le_bytes(), None, counted_now)
        .expect("cas"));
    let report = c.verify().expect("verify");
    assert!(report.is_clean(), "{report}");
}

// ----- what ends a version --------------------------------------------------------------

/// Every write but `set_if_version` with the matching version leaves the entry without
/// its version: `set` (of the same length, which overwrites in place, and of another),
/// `replace`, `insert_if_absent` over an expired entry, `incr` of a versioned counter,
/// and a successful `set_if_version` (its own version is used up). An expired entry's
/// version matches nothing either.
///
/// `touch` keeps the version: it changes when the entry expires, not its value, so a
/// compare-and-swap after it still succeeds. This is the chosen semantics (memcached's
/// `touch` keeps the CAS unique as well); the test pins it down.
#[test]
fn every_write_but_touch_ends_a_version() {
    let t = TempCache::new("ver-writes");
    let (c, clock) = t.open_on_manual_clock();
    let fresh = |key: &[u8], value: &[u8], ttl: Option<Duration>| {
        c.set(key, value, ttl).expect("set");
        versioned(&c, key).1
    };
    let cas = |key: &[u8], v: Version| {
        c.set_if_version(key, b"cas", None, v)
            .expect("set_if_version")
    };

    let v = fresh(b"same", b"1234", None);
    c.set(b"same", b"5678", None).expect("set");
    assert!(
        !cas(b"same", v),
        "a set of the same length kept the version"
    );

    let v = fresh(b"other", b"1234", None);
    c.set(b"other", b"a longer value", None).expect("set");
    assert!(
        !cas(b"other", v),
        "a set of another length kept the version"
    );

    let v = fresh(b"replaced", b"1234", None);
    assert!(c.replace(b"replaced", b"5678", None).expect("replace"));
    assert!(!cas(b"replaced", v), "a replace kept the version");

    let v = fresh(b"used", b"1234", None);
    assert!(cas(b"used", v));
    assert!(
        !cas(b"used", v),
        "set_if_version left its own version usable"
    );

    let v = fresh(b"expired", b"1234", Some(Duration::from_secs(1)));
    let w = fresh(b"reinserted", b"1234", Some(Duration::from_secs(1)));
    clock.advance(Duration::from_secs(2));
    assert!(!cas(b"expired", v), "an expired entry's version matched");
    assert_eq!(c.get_versioned(b"expired").expect("get_versioned"), None);
    assert!(c
        .insert_if_absent(b"reinserted", b"1234", None)
        .expect("insert_if_absent"));
    assert!(
        !cas(b"reinserted", w),
        "insert_if_absent over an expired entry kept its version"
    );

    let v = fresh(b"counter", &0i64.to_le_bytes(), None);
    assert_eq!(c.incr(b"counter", 1, 0, None).expect("incr"), 1);
    assert!(
        !cas(b"counter", v),
        "an incr of a versioned counter kept the version"
    );

    let v = fresh(b"touched", b"1234", Some(Duration::from_secs(10)));
    assert!(c
        .touch(b"touched", Some(Duration::from_secs(100)))
        .expect("touch"));
    assert_eq!(versioned(&c, b"touched").1, v, "touch changed the version");
    assert!(cas(b"touched", v), "touch ended the version");
}

/// A version read from a file that another one then replaced (renamed over its path)
/// matches nothing once the handle has moved to the replacement, even where the
/// replacement's entry has the same version number.
#[test]
fn a_version_from_a_replaced_file_matches_nothing() {
    let t = TempCache::new("ver-replaced");
    let a = t.open();
    a.set(b"k", b"value", None).expect("set");
    a.set(b"marker", b"original", None).expect("set");
    let old = versioned(&a, b"k").1;

    let other = t.file("other");
    let o = t.options().open(&other).expect("other cache");
    o.set(b"k", b"value", None).expect("set");
    o.set(b"marker", b"replacement", None).expect("set");
    let new = versioned(&o, b"k").1;
    drop(o);
    // Both are the first version their shard gave out: only the file tells them apart.
    assert_eq!(new.number(), old.number());
    assert_ne!(new, old);

    std::fs::rename(&other, &t.path).expect("rename over");
    // The handle checks its path every 250 ms: poll, with a deadline, until it moved.
    let moved = poll_until(deadline_in(10), || {
        a.get(b"marker").expect("get").as_deref() == Some(&b"replacement"[..])
    });
    assert!(moved, "the handle did not move to the replacement");
    assert!(
        !a.set_if_version(b"k", b"cas", None, old)
            .expect("set_if_version"),
        "a version of the replaced file matched"
    );
    assert!(
        a.set_if_version(b"k", b"cas", None, new)
            .expect("set_if_version"),
        "the replacement's own version did not match"
    );
}

// ----- giving an entry a version --------------------------------------------------------

/// The remaining TTL of `key`, as `entries()` lists it.
fn ttl_of(c: &Cache, key: &[u8]) -> Option<Duration> {
    c.entries()
        .map(|e| e.expect("entry"))
        .find(|e| e.key == key)
        .unwrap_or_else(|| panic!("{:?} not listed", String::from_utf8_lossy(key)))
        .ttl
}

/// The first `get_versioned` of an entry written by `set` gives it a version (it is
/// written again under the lock) and keeps its value and its expiry: the remaining TTL
/// is what it was, an entry without a TTL still has none, and the entry expires on
/// time. Later reads return the same version without taking a lock.
#[test]
fn get_versioned_gives_an_entry_a_version_and_keeps_its_value_and_ttl() {
    let t = TempCache::new("ver-first");
    let (c, clock) = t.open_on_manual_clock();
    c.set(b"k", b"value", Some(Duration::from_secs(100)))
        .expect("set");
    c.set(b"forever", b"v", None).expect("set");
    clock.advance(Duration::from_secs(30));
    let before = ttl_of(&c, b"k").expect("a TTL");

    let (v, version) = versioned(&c, b"k");
    assert_eq!(v, b"value");
    let after = ttl_of(&c, b"k").expect("get_versioned dropped the TTL");
    // The manual clock also runs with the system's: a little real time passes between
    // the two listings, never a TTL's worth.
    assert!(
        after <= before && before - after < Duration::from_secs(1),
        "TTL {before:?} before get_versioned, {after:?} after"
    );
    let (v, _) = versioned(&c, b"forever");
    assert_eq!(v, b"v");
    assert_eq!(ttl_of(&c, b"forever"), None, "get_versioned gave a TTL");
    assert_eq!(c.get(b"k").expect("get").as_deref(), Some(&b"value"[..]));
    assert_eq!(c.entries().count(), 2, "the rewrite left another entry");
    assert_eq!(c.stats().entries, 2);

    let locks = c.stats().locks;
    assert_eq!(versioned(&c, b"k"), (b"value".to_vec(), version));
    assert_eq!(
        c.stats().locks,
        locks,
        "reading a versioned entry took a lock"
    );

    clock.advance(Duration::from_secs(71));
    assert_eq!(
        c.get(b"k").expect("get"),
        None,
        "the entry outlived its TTL"
    );
    assert_eq!(c.get_versioned(b"k").expect("get_versioned"), None);
    let report = c.verify().expect("verify");
    assert!(report.is_clean(), "{report}");
}

// ----- a kill inside a versioning rewrite in a full shard -------------------------------

/// Bytes of every value of the full-shard tests: more than a quarter of the small log,
/// so each record goes straight to the main log.
#[cfg(feature = "crash-points")]
const FULL_VALUE: usize = 100 << 10;

/// One shard of a 4 MiB file, whose main log holds a few dozen [`FULL_VALUE`] values.
#[cfg(feature = "crash-points")]
fn full_shard_options() -> Options {
    long_timeouts(
        small_options()
            .capacity(4 << 20)
            .shards(1)
            .max_value_len(128 << 10),
    )
}

/// The key the full-shard tests rewrite: the oldest entry of its main log.
#[cfg(feature = "crash-points")]
const OLDEST: &[u8] = b"oldest";

/// A whole value of [`FULL_VALUE`] bytes for `key` (`version` tells the writes apart).
#[cfg(feature = "crash-points")]
fn full_value(key: &[u8], version: u64) -> Vec<u8> {
    let v = common::make_value(key, version, FULL_VALUE - 18 - key.len());
    assert_eq!(v.len(), FULL_VALUE);
    v
}

/// The operation a child of the full-shard test is killed in.
#[cfg(feature = "crash-points")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rewrite {
    /// The first `get_versioned` of an entry written by `set`: it writes the entry again,
    /// with a version.
    FirstGetVersioned,
    /// `set_if_version` with the entry's version, a value of the same length.
    SetIfVersion,
}

#[cfg(feature = "crash-points")]
impl Rewrite {
    fn parse(s: &str) -> Rewrite {
        match s {
            "FirstGetVersioned" => Rewrite::FirstGetVersioned,
            "SetIfVersion" => Rewrite::SetIfVersion,
            other => panic!("unknown rewrite {other}"),
        }
    }

    /// Writes [`OLDEST`] first (given a version at once, while the shard is empty, for
    /// `SetIfVersion`), then `fillers` other values; returns how many of those it wrote
    /// before the first eviction (all of them if none evicted).
    fn fill(self, c: &Cache, fillers: usize) -> usize {
        c.set(OLDEST, &full_value(OLDEST, 1), None).expect("set");
        if self == Rewrite::SetIfVersion {
            let (v, _) = versioned(c, OLDEST);
            assert_eq!(v, full_value(OLDEST, 1));
        }
        for i in 0..fillers {
            let key = format!("fill-{i:03}").into_bytes();
            c.set(&key, &full_value(&key, 1), None).expect("set");
            if c.stats().evictions > 0 {
                return i;
            }
        }
        fillers
    }
}

/// A child of the full-shard test: runs its rewrite of [`OLDEST`] (a crash point armed
/// by the parent may kill it inside), and exits 0 if the rewrite finished.
#[cfg(feature = "crash-points")]
fn rewrite_child() -> ! {
    disable_core_dumps();
    let rewrite = Rewrite::parse(&child_env("LARDER_TEST_REWRITE"));
    let c = full_shard_options()
        .attach(child_env("LARDER_TEST_PATH"))
        .expect("attach");
    let (v, version) = versioned(&c, OLDEST);
    assert_eq!(v, full_value(OLDEST, 1), "get_versioned read another value");
    if rewrite == Rewrite::SetIfVersion {
        assert!(
            c.set_if_version(OLDEST, &full_value(OLDEST, 2), None, version)
                .expect("set_if_version"),
            "no one else wrote the entry"
        );
    }
    std::process::exit(0)
}

/// A process SIGKILLed inside a versioning rewrite of the oldest entry of a full shard
/// (one shard whose main log holds a few dozen 100 KiB values and has no room for
/// another) never costs the entry: after the first `get_versioned` (a read, which gives
/// the entry a version by writing it again) the entry holds its value, and after
/// `set_if_version` its old value or its new one, never neither. The kill lands at each
/// step of making room and of the rewrite (a step the rewrite does not reach lets it
/// finish); the repair drops nothing and `verify` is clean.
///
/// Making room in a full main log pops its oldest record, which here is the entry's
/// own: the rewrite must publish its new record while the old one is still live.
#[cfg(feature = "crash-points")]
#[test]
fn killed_versioning_rewrite_in_a_full_shard_keeps_the_entry() {
    const TEST: &str = "killed_versioning_rewrite_in_a_full_shard_keeps_the_entry";
    const POINTS: &[&str] = &[
        "move.after_pop",
        "move.after_copy",
        "move.after_publish",
        "evict.after_pop",
        "evict.after_cut",
        "set.after_make_room",
        "set.after_intent",
        "set.after_value",
        "set.before_publish",
        "set.after_publish",
        "versioned_set.before_old_dead",
        "set.after_slot",
    ];
    if child_role().as_deref() == Some("rewrite") {
        rewrite_child();
    }
    for rewrite in [Rewrite::FirstGetVersioned, Rewrite::SetIfVersion] {
        // How many fillers fit: found on a file of its own, filled the same way until
        // it evicts.
        let fillers = {
            let t = TempCache::new("ver-full-probe");
            let probe = full_shard_options().open(t.name()).expect("create");
            rewrite.fill(&probe, 1000)
        };
        let mut reached = Vec::new();
        for &point in POINTS {
            let ctx = format!("{rewrite:?} killed at {point}");
            let t = TempCache::new("ver-full");
            let c = full_shard_options().open(t.name()).expect("create");
            assert_eq!(
                rewrite.fill(&c, fillers),
                fillers,
                "{ctx}: the setup evicted"
            );
            let before = c.stats();
            assert_eq!(before.evictions, 0, "{ctx}: the setup evicted");

            let mut cmd = self_command(TEST, "rewrite");
            cmd.env("LARDER_TEST_PATH", &t.path)
                .env("LARDER_TEST_REWRITE", format!("{rewrite:?}"))
                .env("LARDER_CRASH_AT", point)
                .env("LARDER_CRASH_ACTION", "kill");
            let mut kid = ChildGuard::spawn_logged(&mut cmd, t.dir.join("child.log"));
            let status = kid.wait_or_fail(deadline_in(60), &ctx);
            let killed = match (status.code(), status.signal()) {
                (Some(0), _) => false,
                (None, Some(libc::SIGKILL)) => true,
                _ => panic!("{ctx}: the child failed ({status}):\n{}", kid.log()),
            };
            if killed {
                reached.push(point);
            }

            let got = c.get(OLDEST).expect("get");
            let after = c.stats();
            let mut allowed = vec![full_value(OLDEST, 1)];
            if rewrite == Rewrite::SetIfVersion {
                allowed.push(full_value(OLDEST, 2));
            }
            assert!(
                got.as_ref().is_some_and(|v| allowed.contains(v)),
                "{ctx}: the entry holds {:?} ({} recoveries, {} entries dropped by \
                 repairs)",
                got.as_ref().map(|v| common::check_value(OLDEST, v)),
                after.recoveries - before.recoveries,
                after.repair_dropped - before.repair_dropped
            );
            if !killed {
                assert!(
                    after.evictions > 0,
                    "{ctx}: the rewrite finished without evicting: the shard was not full"
                );
                if rewrite == Rewrite::SetIfVersion {
                    assert_eq!(got, Some(full_value(OLDEST, 2)), "{ctx}: finished");
                }
            }
            assert_eq!(
                after.repair_dropped, before.repair_dropped,
                "{ctx}: a repair dropped an entry"
            );
            if killed {
                assert!(
                    after.recoveries > before.recoveries,
                    "{ctx}: the shard was not repaired"
                );
            }
            let report = c.verify().expect("verify");
            assert!(report.is_clean(), "{ctx}: {report}");
            // The entry can still be compare-and-swapped.
            let (v, version) = versioned(&c, OLDEST);
            assert!(allowed.contains(&v), "{ctx}");
            assert!(
                c.set_if_version(OLDEST, &full_value(OLDEST, 3), None, version)
                    .expect("set_if_version"),
                "{ctx}: the entry's version did not match"
            );
        }
        eprintln!("{rewrite:?} ({fillers} fillers): killed at {reached:?}");
        assert!(
            reached.contains(&"set.before_publish") && reached.contains(&"set.after_publish"),
            "{rewrite:?}: the rewrite never reached its own steps ({reached:?})"
        );
    }
}

/// A version handed out as words (a binding's CAS token) and taken back is the same
/// version; words no version had match nothing.
#[test]
fn a_version_survives_its_round_trip_through_words() {
    let t = TempCache::new("ver-words");
    let c = t.open();
    c.set(b"k", b"v1", None).unwrap();
    let (_, v) = versioned(&c, b"k");
    let words = v.to_words();
    assert_eq!(Version::from_words(words), v);
    for forged in [
        [words[0], words[1], words[2] + 1],
        [words[0] ^ 1, words[1], words[2]],
        [words[0], u64::MAX, words[2]],
    ] {
        assert!(!c
            .set_if_version(b"k", b"forged", None, Version::from_words(forged))
            .unwrap());
    }
    assert!(c
        .set_if_version(b"k", b"v2", None, Version::from_words(words))
        .unwrap());
    assert_eq!(c.get(b"k").unwrap().as_deref(), Some(&b"v2"[..]));
}
