//! Revocation fencing through tickets (`Cache::ticket`, `Cache::set_with_ticket`): a
//! value computed from state read before a revocation of its key is never stored after
//! it, whichever write revoked it, across repairs, and whatever process made it.
//! (`get_or_insert_with` is fenced the same way: tests/single_flight.rs.)

use std::time::Duration;

use larder::{Cache, Error};

mod common;
use common::{
    child_env, child_role, deadline_in, long_timeouts, repair_offline_after_close, self_command,
    small_options, ChildGuard, TempCache,
};

const KEY: &[u8] = b"token:abc";
const CLAIMS: &[u8] = b"claims:alice";
const TTL: Option<Duration> = Some(Duration::from_secs(300));

fn open(t: &TempCache) -> Cache {
    long_timeouts(small_options())
        .open(t.name())
        .expect("open cache")
}

/// A write of `KEY` made between a ticket and its store, with what `KEY` holds after it
/// (the fenced store must leave exactly that).
struct Revocation {
    name: &'static str,
    /// Whether `KEY` holds a value before the ticket is taken.
    cached_before: bool,
    revoke: fn(&Cache),
    after: Option<&'static [u8]>,
}

const REVOCATIONS: &[Revocation] = &[
    Revocation {
        name: "remove that finds nothing",
        cached_before: false,
        revoke: |c| assert!(!c.remove(KEY).expect("remove")),
        after: None,
    },
    Revocation {
        name: "remove",
        cached_before: true,
        revoke: |c| assert!(c.remove(KEY).expect("remove")),
        after: None,
    },
    Revocation {
        name: "set",
        cached_before: false,
        revoke: |c| c.set(KEY, b"revoked", TTL).expect("set"),
        after: Some(b"revoked"),
    },
    Revocation {
        name: "insert_if_absent",
        cached_before: false,
        revoke: |c| assert!(c.insert_if_absent(KEY, b"revoked", TTL).expect("add")),
        after: Some(b"revoked"),
    },
    Revocation {
        name: "replace",
        cached_before: true,
        revoke: |c| assert!(c.replace(KEY, b"revoked", TTL).expect("replace")),
        after: Some(b"revoked"),
    },
    Revocation {
        name: "replace that finds nothing",
        cached_before: false,
        revoke: |c| assert!(!c.replace(KEY, b"revoked", TTL).expect("replace")),
        after: None,
    },
    Revocation {
        name: "incr",
        cached_before: false,
        revoke: |c| assert_eq!(c.incr(KEY, 1, 0, TTL).expect("incr"), 1),
        after: Some(&[1, 0, 0, 0, 0, 0, 0, 0]),
    },
    Revocation {
        name: "set_if_version",
        cached_before: true,
        revoke: |c| {
            let (_, version) = c.get_versioned(KEY).expect("gets").expect("cached");
            assert!(c
                .set_if_version(KEY, b"revoked", TTL, version)
                .expect("cas"));
        },
        after: Some(b"revoked"),
    },
    Revocation {
        name: "clear",
        cached_before: true,
        revoke: |c| assert_eq!(c.clear().expect("clear"), 1),
        after: None,
    },
];

/// Every write of a key but `touch` fences off the tickets taken before it: the store
/// is refused and the key keeps what the revocation left.
#[test]
fn every_revoking_write_fences_off_earlier_tickets() {
    for r in REVOCATIONS {
        let t = TempCache::new("fence-each");
        let c = open(&t);
        if r.cached_before {
            c.set(KEY, b"old claims", TTL).expect("set");
        }
        let ticket = c.ticket(KEY).expect("ticket");
        (r.revoke)(&c);
        let stored = c.set_with_ticket(KEY, CLAIMS, TTL, ticket);
        assert!(!stored.expect("set_with_ticket"), "{}: stored", r.name);
        assert_eq!(
            c.get(KEY).expect("get").as_deref(),
            r.after,
            "{}: the store undid the revocation",
            r.name
        );
        // A ticket taken after the revocation stores: the fence is not a tombstone.
        let ticket = c.ticket(KEY).expect("ticket");
        assert!(c.set_with_ticket(KEY, CLAIMS, TTL, ticket).expect("store"));
        assert_eq!(
            c.get(KEY).expect("get").as_deref(),
            Some(CLAIMS),
            "{}",
            r.name
        );
    }
}

/// What does not revoke does not fence: reads (a `get_versioned` that gives the entry
/// a version included), `touch`, other fills' stores, and writes of other shards.
#[test]
fn reads_touch_and_stores_with_tickets_do_not_fence() {
    let t = TempCache::new("fence-not");
    let c = open(&t);
    c.set(KEY, b"old claims", TTL).expect("set");
    let ticket = c.ticket(KEY).expect("ticket");
    let other = c.ticket(KEY).expect("ticket");
    assert_eq!(
        c.get(KEY).expect("get").as_deref(),
        Some(&b"old claims"[..])
    );
    assert!(c.get_versioned(KEY).expect("gets").is_some());
    assert!(c.touch(KEY, TTL).expect("touch"));
    assert!(c.get_stale(KEY).expect("get_stale").is_some());
    // Another fill's store does not fence this one: both computed after the last
    // revocation.
    assert!(c.set_with_ticket(KEY, b"first", TTL, other).expect("store"));
    // A key of another shard.
    let elsewhere = (0u32..)
        .map(|i| format!("other:{i}").into_bytes())
        .find(|k| c.shard_of(k) != c.shard_of(KEY))
        .expect("a key of another shard");
    c.remove(&elsewhere).expect("remove");
    c.set(&elsewhere, b"x", None).expect("set");
    assert!(c.set_with_ticket(KEY, CLAIMS, TTL, ticket).expect("store"));
    assert_eq!(c.get(KEY).expect("get").as_deref(), Some(CLAIMS));
    assert!(c.verify().expect("verify").is_clean());
}

/// A ticket stores only the key it was taken for ([`Error::InvalidArgument`]), and
/// nothing in another file.
#[test]
fn a_ticket_is_for_its_key_and_its_file() {
    let t = TempCache::new("fence-wrong");
    let c = open(&t);
    let ticket = c.ticket(b"token:one").expect("ticket");
    let err = c
        .set_with_ticket(b"token:two", CLAIMS, TTL, ticket)
        .expect_err("a ticket of another key");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert!(err.to_string().contains("another key"), "{err}");
    assert_eq!(c.get(b"token:two").expect("get"), None);

    let other = long_timeouts(small_options())
        .open(t.file("other"))
        .expect("open another cache");
    let foreign = other.ticket(KEY).expect("ticket");
    assert!(!c.set_with_ticket(KEY, CLAIMS, TTL, foreign).expect("store"));
    assert_eq!(c.get(KEY).expect("get"), None);
    // Checked before the lock, like every key and value.
    let long = vec![b'k'; 65];
    assert!(matches!(c.ticket(&long), Err(Error::TooLarge { .. })));
}

/// No repair lowers a fence: a ticket taken before a revocation stays fenced off after
/// an online repair, and after an offline one.
#[test]
fn repairs_keep_fences() {
    let t = TempCache::new("fence-repair");
    let c = open(&t);
    let ticket = c.ticket(KEY).expect("ticket");
    c.remove(KEY).expect("remove");
    c.repair().expect("repair");
    assert!(!c.set_with_ticket(KEY, CLAIMS, TTL, ticket).expect("store"));
    drop(c);
    repair_offline_after_close(t.name());
    let c = open(&t);
    assert!(!c.set_with_ticket(KEY, CLAIMS, TTL, ticket).expect("store"));
    assert_eq!(c.get(KEY).expect("get"), None);
}

/// A revocation by another process fences off this one's ticket, also when that
/// process is SIGKILLed right after the fence, before its write changed anything (the
/// crash point `fence.after_bump`): the store is refused, the shard is repaired, and
/// the cache is sound.
#[test]
fn a_revoker_killed_after_its_fence_still_fences() {
    const TEST: &str = "a_revoker_killed_after_its_fence_still_fences";
    if let Some(role) = child_role() {
        let c = long_timeouts(small_options())
            .attach(child_env("LARDER_TEST_PATH"))
            .expect("attach");
        match role.as_str() {
            "remover" => {
                c.remove(KEY).expect("remove");
            }
            other => panic!("unknown role {other}"),
        }
        std::process::exit(0);
    }
    common::disable_core_dumps();
    for (action, killed) in [("none", false), ("kill", true)] {
        let t = TempCache::new("fence-kill");
        let c = open(&t);
        c.set(KEY, b"old claims", TTL).expect("set");
        let ticket = c.ticket(KEY).expect("ticket");
        let mut cmd = self_command(TEST, "remover");
        cmd.env("LARDER_TEST_PATH", t.name());
        if killed {
            cmd.env("LARDER_CRASH_AT", "fence.after_bump")
                .env("LARDER_CRASH_ACTION", action);
        }
        let status = ChildGuard::spawn(&mut cmd).wait_or_fail(deadline_in(60), "remover");
        assert_eq!(status.success(), !killed, "{action}: {status}");
        assert!(
            !c.set_with_ticket(KEY, CLAIMS, TTL, ticket).expect("store"),
            "{action}: stored over a revocation"
        );
        // Killed before its remove changed anything: the old entry is still there.
        let expected: Option<&[u8]> = if killed { Some(b"old claims") } else { None };
        assert_eq!(c.get(KEY).expect("get").as_deref(), expected, "{action}");
        if killed {
            assert_eq!(c.stats().recoveries, 1, "{action}");
        }
        assert!(c.verify().expect("verify").is_clean(), "{action}");
    }
}

/// A ticket handed out as words (a binding's token) and taken back is the same ticket:
/// it stores while nothing revoked its key, and is fenced off by a revocation.
#[test]
fn a_ticket_survives_its_round_trip_through_words() {
    let t = TempCache::new("fence-words");
    let c = open(&t);
    let words = c.ticket(KEY).unwrap().to_words();
    assert_eq!(larder::Ticket::from_words(words).to_words(), words);
    assert!(c
        .set_with_ticket(KEY, CLAIMS, TTL, larder::Ticket::from_words(words))
        .unwrap());
    let words = c.ticket(KEY).unwrap().to_words();
    assert!(c.remove(KEY).unwrap());
    assert!(!c
        .set_with_ticket(KEY, CLAIMS, TTL, larder::Ticket::from_words(words))
        .unwrap());
    assert_eq!(c.get(KEY).unwrap(), None);
}
