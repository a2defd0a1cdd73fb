//! The near-cache protocol of `larder::near`: the lease (one holder, its death seen at
//! once), the heartbeat that guards reads, and tickets that refuse a fill which raced an
//! invalidation or a flush.

use std::time::Duration;

use larder::near::{FlushReason, Moment};

mod common;
use common::{child_env, child_role, deadline_in, poll_until, self_command, ChildGuard, TempCache};

const BOUND: Duration = Duration::from_secs(3600);

#[test]
fn without_a_heartbeat_the_near_cache_is_unguarded() {
    let t = TempCache::new("near-unguarded");
    let c = t.open();
    let near = c.near();
    assert!(!near.guarded(BOUND).expect("guarded"));
    assert_eq!(near.ticket(b"k", BOUND).expect("ticket"), None);
    let s = near.stats();
    assert_eq!((s.epoch, s.heartbeat_age, s.holder), (0, None, None));
}

#[test]
fn a_heartbeat_guards_reads_until_it_is_older_than_the_bound() {
    let t = TempCache::new("near-heartbeat");
    let c = t.open();
    let near = c.near();
    let lease = near.try_lease(&[""]).expect("try_lease").expect("free");
    let sent = Moment::now();
    assert!(lease.publish_heartbeat(sent).expect("publish"));
    assert!(near.guarded(BOUND).expect("guarded"));
    assert!(near.ticket(b"k", BOUND).expect("ticket").is_some());
    // Older than a bound of zero as soon as any time has passed.
    assert!(poll_until(deadline_in(5), || sent.elapsed() > Duration::ZERO));
    assert!(!near.guarded(Duration::ZERO).expect("guarded"));
    assert_eq!(near.ticket(b"k", Duration::ZERO).expect("ticket"), None);
    let age = near.stats().heartbeat_age.expect("an age");
    assert!(age < BOUND, "{age:?}");
    assert_eq!(near.stats().holder, Some(std::process::id()));
    lease.suspend();
    assert!(!near.guarded(BOUND).expect("guarded"));
    assert_eq!(lease.heartbeat(), None);
    assert!(lease.publish_heartbeat(Moment::now()).expect("publish"));
    drop(lease);
    assert!(!near.guarded(BOUND).expect("guarded"), "a stopped listener");
    assert_eq!(near.stats().holder, None);
}

#[test]
fn a_fill_that_raced_an_invalidation_or_a_flush_is_refused() {
    let t = TempCache::new("near-race");
    let c = t.open();
    let near = c.near();
    let lease = near.try_lease(&[""]).expect("try_lease").expect("free");
    assert!(lease.publish_heartbeat(Moment::now()).expect("publish"));

    // No race: stored.
    let ticket = near
        .ticket(b"user:1", BOUND)
        .expect("ticket")
        .expect("guarded");
    assert!(near.fill(b"user:1", b"v1", None, ticket).expect("fill"));
    assert_eq!(c.get(b"user:1").expect("get").as_deref(), Some(&b"v1"[..]));

    // An invalidation of the key between the ticket and the fill.
    let ticket = near
        .ticket(b"user:1", BOUND)
        .expect("ticket")
        .expect("guarded");
    assert!(near.invalidate(b"user:1").expect("invalidate"));
    assert!(!near.fill(b"user:1", b"stale", None, ticket).expect("fill"));
    assert_eq!(c.get(b"user:1").expect("get"), None);
    // A ticket taken after it stores again.
    let ticket = near
        .ticket(b"user:1", BOUND)
        .expect("ticket")
        .expect("guarded");
    assert!(near.fill(b"user:1", b"v2", None, ticket).expect("fill"));

    // A ticket of one key is not moved by another key's invalidation (unless the two
    // share a counter: keys are spread over 1024 by hash, so find one that does not).
    let other = (0..)
        .map(|i| format!("other:{i}").into_bytes())
        .find(|k| {
            let before = near
                .ticket(b"user:2", BOUND)
                .expect("ticket")
                .expect("guarded");
            near.invalidate(k).expect("invalidate");
            near.ticket(b"user:2", BOUND).expect("ticket") == Some(before)
        })
        .expect("a key of another class");
    let ticket = near
        .ticket(b"user:2", BOUND)
        .expect("ticket")
        .expect("guarded");
    near.invalidate(&other).expect("invalidate");
    assert!(near.fill(b"user:2", b"w", None, ticket).expect("fill"));

    // A flush between the ticket and the fill.
    let ticket = near
        .ticket(b"user:3", BOUND)
        .expect("ticket")
        .expect("guarded");
    assert_eq!(lease.flush(FlushReason::ServerFlush).expect("flush"), 2);
    assert!(!near.fill(b"user:3", b"stale", None, ticket).expect("fill"));
    assert_eq!(c.stats().entries, 0);

    let s = near.stats();
    assert_eq!(s.flushes_lease, 1, "{s:?}");
    assert_eq!(s.flushes_server, 1, "{s:?}");
    assert_eq!(s.epoch, 2, "{s:?}");
    assert!(s.invalidations >= 3, "{s:?}");
    // Keys the file cannot hold cannot be cached: nothing to invalidate.
    let long = vec![b'x'; c.limits().max_key_len + 1];
    assert!(!near.invalidate(&long).expect("invalidate"));
    assert!(c.verify().expect("verify").is_clean());
}

#[test]
fn a_fill_keeps_the_ttl_it_is_given() {
    let t = TempCache::new("near-ttl");
    let (c, clock) = t.open_on_manual_clock();
    let near = c.near();
    let lease = near.try_lease(&[""]).expect("try_lease").expect("free");
    assert!(lease.publish_heartbeat(Moment::now()).expect("publish"));
    let ticket = near.ticket(b"k", BOUND).expect("ticket").expect("guarded");
    assert!(near
        .fill(b"k", b"v", Some(Duration::from_secs(5)), ticket)
        .expect("fill"));
    clock.advance(Duration::from_secs(6));
    assert_eq!(c.get(b"k").expect("get"), None);
}

#[test]
fn one_holder_at_a_time_and_every_new_holder_flushes() {
    let t = TempCache::new("near-one");
    let c = t.open();
    let other = t.open();
    let near = c.near();
    let lease = near.try_lease(&[""]).expect("try_lease").expect("free");
    assert!(other.near().try_lease(&[""]).expect("try_lease").is_none());
    c.set(b"k", b"v", None).expect("set");
    drop(lease);
    let lease = other
        .near()
        .try_lease(&[""])
        .expect("try_lease")
        .expect("free now");
    assert_eq!(c.get(b"k").expect("get"), None, "the new holder flushed");
    let s = near.stats();
    assert_eq!((s.leases, s.takeovers, s.flushes_lease), (2, 0, 2), "{s:?}");
    drop(lease);
}

/// A listener SIGKILLed while it holds the lease: another process takes it at once
/// (no timeout to wait out), counts the takeover, and empties the cache.
#[test]
fn a_killed_holders_lease_is_taken_at_once() {
    const TEST: &str = "a_killed_holders_lease_is_taken_at_once";
    if child_role().as_deref() == Some("holder") {
        let c = larder::Options::new()
            .attach(child_env("LARDER_TEST_PATH"))
            .expect("attach");
        let lease = c.near().try_lease(&[""]).expect("try_lease").expect("free");
        assert!(lease.publish_heartbeat(Moment::now()).expect("publish"));
        std::fs::write(child_env("LARDER_TEST_READY"), b"1").expect("ready");
        // Held until killed; the parent's deadline bounds this child.
        loop {
            std::thread::park();
        }
    }
    let t = TempCache::new("near-kill");
    let c = t.open();
    let ready = t.dir.join("ready");
    let mut cmd = self_command(TEST, "holder");
    cmd.env("LARDER_TEST_PATH", &t.path)
        .env("LARDER_TEST_READY", &ready);
    let mut holder = ChildGuard::spawn(&mut cmd);
    assert!(
        poll_until(deadline_in(30), || ready.exists()),
        "the holder never took the lease"
    );
    let near = c.near();
    assert!(near.guarded(BOUND).expect("guarded"));
    assert!(near.try_lease(&[""]).expect("try_lease").is_none(), "held");
    c.set(b"filled-before", b"v", None).expect("set");
    holder.signal(libc::SIGKILL);
    holder.wait_or_fail(deadline_in(30), "the killed holder");
    let taken = std::time::Instant::now();
    let lease = near
        .try_lease(&[""])
        .expect("try_lease")
        .expect("the dead holder's lease");
    let waited = taken.elapsed();
    let s = near.stats();
    assert_eq!((s.leases, s.takeovers), (2, 1), "{s:?}");
    assert_eq!(c.get(b"filled-before").expect("get"), None, "not flushed");
    assert!(
        !near.guarded(BOUND).expect("guarded"),
        "the dead holder's heartbeat still guards reads"
    );
    eprintln!("a_killed_holders_lease_is_taken_at_once: try_lease took {waited:?}");
    drop(lease);
}

/// A lease guards the file it was taken in: once the handle has moved to a file that
/// replaced it, publishing says so, and the new file's lease is free.
#[test]
fn a_lease_in_a_replaced_file_says_it_is_not_current() {
    let t = TempCache::new("near-replaced");
    let c = t.open();
    let near = c.near();
    let lease = near.try_lease(&[""]).expect("try_lease").expect("free");
    assert!(lease.publish_heartbeat(Moment::now()).expect("publish"));
    // Another file, moved over this one's path.
    let other = t.dir.join("other");
    {
        let replacement = t
            .options()
            .open(common::s(&other))
            .expect("create the replacement");
        replacement
            .set(b"user:1", b"in the new file", None)
            .expect("set");
    }
    std::fs::rename(&other, &t.path).expect("rename over");
    assert!(
        poll_until(deadline_in(10), || !lease.is_current().expect("is_current")),
        "the handle never moved to the replacement"
    );
    // Its invalidations and flushes still go to its own file, the one its heartbeat
    // vouches for: the new file is the new lease holder's to flush.
    assert!(!lease.invalidate(b"user:1").expect("invalidate"));
    assert_eq!(lease.flush(FlushReason::Requested).expect("flush"), 0);
    assert_eq!(
        c.get(b"user:1").expect("get").as_deref(),
        Some(&b"in the new file"[..])
    );
    assert!(!lease.publish_heartbeat(Moment::now()).expect("publish"));
    assert!(
        !near.guarded(BOUND).expect("guarded"),
        "the new file has no heartbeat"
    );
    let new_lease = near
        .try_lease(&[""])
        .expect("try_lease")
        .expect("the new file's lease");
    assert!(new_lease.is_current().expect("is_current"));
    drop(lease);
    drop(new_lease);
}

/// A flush covers the near cache's scope, the prefixes its listener tracks: a
/// listener's start (which flushes) and a server flush leave local entries outside
/// them, such as rate-limit counters, where they are.
#[test]
fn a_flush_covers_the_tracked_prefixes_only() {
    let t = TempCache::new("near-scope");
    let c = t.open();
    assert_eq!(c.incr(b"ratelimit:alice", 3, 0, None).expect("incr"), 3);
    for k in [&b"token:a"[..], b"token:b", b"user:x"] {
        c.set(k, b"from redis", None).expect("set");
    }
    let near = c.near();
    let lease = near
        .try_lease(&["token:", "user:"])
        .expect("try_lease")
        .expect("free");
    assert_eq!(near.stats().flushes_lease, 1);
    assert_eq!(
        near.scope().expect("scope"),
        larder::near::scope_of(&["user:", "token:"])
    );
    for k in [&b"token:a"[..], b"token:b", b"user:x"] {
        assert_eq!(
            c.get(k).expect("get"),
            None,
            "{:?}",
            String::from_utf8_lossy(k)
        );
    }
    assert_eq!(
        c.get(b"ratelimit:alice").expect("get"),
        Some(3i64.to_le_bytes().to_vec()),
        "a listener's start lost a local counter"
    );
    c.set(b"token:c", b"from redis", None).expect("set");
    assert_eq!(lease.flush(FlushReason::ServerFlush).expect("flush"), 1);
    assert!(c.get(b"ratelimit:alice").expect("get").is_some());
    assert_eq!(lease.prefixes(), [b"token:".to_vec(), b"user:".to_vec()]);
    // A flush of other prefixes, asked for by an operator.
    assert_eq!(
        near.flush(&["ratelimit:"], FlushReason::Requested)
            .expect("flush"),
        1
    );
    assert_eq!(c.get(b"ratelimit:alice").expect("get"), None);
    assert!(c.verify().expect("verify").is_clean());
}
