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
