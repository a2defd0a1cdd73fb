use std::time::Duration;

mod common;
use common::TempCache;

#[test]
fn set_get_remove_round_trip() {
    let t = TempCache::new("basic");
    let c = t.open();
    assert_eq!(c.get(b"a").unwrap(), None);
    c.set(b"a", b"1", None).unwrap();
    assert_eq!(c.get(b"a").unwrap().as_deref(), Some(&b"1"[..]));
    c.set(b"a", b"22", None).unwrap();
    assert_eq!(c.get(b"a").unwrap().as_deref(), Some(&b"22"[..]));
    c.set(b"empty", b"", None).unwrap();
    assert_eq!(c.get(b"empty").unwrap().as_deref(), Some(&b""[..]));
    assert!(c.remove(b"a").unwrap());
    assert!(!c.remove(b"a").unwrap());
    assert_eq!(c.get(b"a").unwrap(), None);
    assert!(c.verify().unwrap().is_clean());
}

#[test]
fn many_keys_with_eviction_stay_consistent() {
    let t = TempCache::new("evict");
    let c = t.open();
    let value = vec![7u8; 256];
    for i in 0..50_000u32 {
        let key = format!("key-{i:08}");
        c.set(key.as_bytes(), &value, None).unwrap();
        if i % 3 == 0 {
            let _ = c.get(format!("key-{:08}", i / 2).as_bytes()).unwrap();
        }
    }
    let s = c.stats();
    assert!(s.evictions > 0, "{s:?}");
    let report = c.verify().unwrap();
    assert!(report.is_clean(), "{report}");
    let last = c.get(b"key-00049999").unwrap();
    assert_eq!(last.as_deref(), Some(&value[..]));
    let _ = Duration::ZERO;
}

/// Every entry point takes a path the way std and redb do (`impl AsRef<Path>`): a
/// `&str`, a `PathBuf`, a path that is not UTF-8; a bare name means /dev/shm.
#[test]
fn names_and_paths_are_accepted_as_any_as_ref_path() {
    use std::os::unix::ffi::OsStrExt;
    let t = common::TempCache::new("paths");
    let odd = t.dir.join(std::ffi::OsStr::from_bytes(b"caf\xe9"));
    let c = t.options().open(&odd).expect("open a non-UTF-8 path");
    c.set(b"k", b"v", None).expect("set");
    let again = larder::Cache::open(odd.clone()).expect("attach by PathBuf");
    assert_eq!(again.get(b"k").expect("get"), Some(b"v".to_vec()));
    assert_eq!(larder::Cache::path_of(&odd).expect("path"), odd);
    assert_eq!(
        larder::Cache::path_of(std::path::Path::new("authz")).expect("bare"),
        std::path::Path::new("/dev/shm/authz.larder4")
    );
    let bad = std::ffi::OsStr::from_bytes(b"caf\xe9");
    assert!(matches!(
        larder::Cache::path_of(bad),
        Err(larder::Error::InvalidName { .. })
    ));
    drop((c, again));
    larder::Cache::unlink(&odd).expect("unlink");
    assert!(!odd.exists());
}

/// Timeouts as long as `Duration` holds (or any TTL) never overflow a deadline: open,
/// attach and every waiting operation work, as with any long timeout.
#[test]
fn huge_timeouts_and_ttls_never_panic() {
    let t = TempCache::new("huge");
    let opts = t
        .options()
        .lock_timeout(Duration::MAX)
        .fill_timeout(Duration::MAX);
    let c = opts
        .open(t.name())
        .expect("open with Duration::MAX timeouts");
    let attached = opts.attach(t.name()).expect("attach");
    c.set(b"k", b"v", Some(Duration::MAX)).unwrap();
    assert_eq!(attached.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(attached.incr(b"n", 1, 0, Some(Duration::MAX)).unwrap(), 1);
    let v = attached
        .get_or_insert_with(b"f", Some(Duration::MAX), || {
            Ok::<_, larder::Error>(b"filled".to_vec())
        })
        .unwrap();
    assert_eq!(v, b"filled");
    assert!(attached.touch(b"k", Some(Duration::MAX)).unwrap());
    drop(attached);
    drop(c);
    assert_eq!(
        larder::Options::new()
            .lock_timeout(Duration::MAX)
            .attach(t.name())
            .unwrap()
            .get(b"f")
            .unwrap()
            .as_deref(),
        Some(&b"filled"[..])
    );
}

/// `ttl` says how long a fresh entry has left: nothing for a missing or expired key,
/// `Some(None)` for an entry without expiry, and the time left otherwise, moving with
/// the clock and with `touch`.
#[test]
fn ttl_gives_the_time_a_fresh_entry_has_left() {
    let t = TempCache::new("ttl");
    let (c, clock) = t.open_on_manual_clock();
    assert_eq!(c.ttl(b"missing").unwrap(), None);
    c.set(b"forever", b"v", None).unwrap();
    assert_eq!(c.ttl(b"forever").unwrap(), Some(None));
    c.set(b"brief", b"v", Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(
        c.ttl(b"brief").unwrap(),
        Some(Some(Duration::from_secs(10)))
    );
    clock.advance(Duration::from_secs(4));
    assert_eq!(c.ttl(b"brief").unwrap(), Some(Some(Duration::from_secs(6))));
    assert!(c.touch(b"brief", Some(Duration::from_secs(60))).unwrap());
    assert_eq!(
        c.ttl(b"brief").unwrap(),
        Some(Some(Duration::from_secs(60)))
    );
    clock.advance(Duration::from_secs(60));
    assert_eq!(c.ttl(b"brief").unwrap(), None);
    assert!(matches!(
        c.ttl(&vec![b'k'; 1 << 20]),
        Err(larder::Error::TooLarge { .. })
    ));
}
