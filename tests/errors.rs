//! Every bad input gets its own `Error` variant (or a documented I/O error) whose message
//! says what to do, and nothing panics, hangs, or changes an existing file.
//!
//! Header offsets come from the byte map in `src/layout.rs`, copied in
//! `common/image.rs`, which also patches files with their checksums made right.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

mod common;
#[path = "common/image.rs"]
mod image;
use common::{repair_offline_after_close, s, TempCache};
use image::*;
use larder::{Cache, Error, Options};

/// Variables a parent sets for its helper child (`common::self_command` names its role).
const CHILD_PATH: &str = "LARDER_ERRORS_PATH";
const CHILD_KEY: &str = "LARDER_ERRORS_KEY";

// ----- helpers -----------------------------------------------------------------------

/// Creates the test's cache with a few entries and closes it; returns its bytes.
fn make_cache(t: &TempCache) -> Vec<u8> {
    let c = t.open();
    for i in 0..20u32 {
        c.set(format!("key-{i}").as_bytes(), b"value", None)
            .expect("set");
    }
    drop(c);
    read_all(&t.path)
}

/// A copy of the test's cache file beside it (mode and owner as created).
fn copy_of(t: &TempCache, name: &str) -> PathBuf {
    let dst = t.dir.join(name);
    std::fs::copy(&t.path, &dst).expect("copy cache file");
    dst
}

fn assert_unchanged(path: &Path, before: &[u8]) {
    let after = read_all(path);
    assert!(
        after == before,
        "{} changed ({} bytes before, {} after)",
        path.display(),
        before.len(),
        after.len()
    );
}

/// What each way of opening `name` gives: attaching as it is (`Cache::open`), and
/// creating or attaching with the test's options.
fn both_opens(t: &TempCache, name: &str) -> [Result<(), Error>; 2] {
    [
        Cache::open(name).map(|_| ()),
        t.options().open(name).map(|_| ()),
    ]
}

/// [`both_opens`], then an offline repair of `name`.
fn opens_and_offline_repair(t: &TempCache, name: &str) -> [Result<(), Error>; 3] {
    let [open, create] = both_opens(t, name);
    let repair = Cache::repair_offline(name, &Options::new()).map(|_| ());
    [open, create, repair]
}

/// The way out of a refused stamp: an offline repair re-stamps the file (and
/// re-initialises its locks), after which the entries of [`make_cache`] are served again.
fn repaired_offline_serves_again(t: &TempCache) -> Cache {
    repair_offline_after_close(t.name());
    let c = t.open();
    assert_eq!(c.get(b"key-7").expect("get"), Some(b"value".to_vec()));
    c
}

/// Names in `dir` other than `keep`.
fn others_in(dir: &Path, keep: &[&str]) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| !keep.contains(&n.as_str()))
        .collect()
}

fn expect_invalid_name(name: &str, reason_part: &str) {
    let checks: [(&str, Result<(), Error>); 4] = [
        ("Options::open", Options::new().open(name).map(|_| ())),
        ("Cache::open", Cache::open(name).map(|_| ())),
        ("Cache::unlink", Cache::unlink(name)),
        ("Cache::path_of", Cache::path_of(name).map(|_| ())),
    ];
    for (what, r) in checks {
        match r {
            Err(e @ Error::InvalidName { .. }) => {
                let Error::InvalidName { name: n, reason } = &e else {
                    unreachable!()
                };
                assert_eq!(n, name);
                assert!(reason.contains(reason_part), "{what}: {reason}");
                let msg = e.to_string();
                assert!(msg.contains("use [A-Za-z0-9._-]"), "{what}: {msg}");
            }
            other => panic!("{what}({name:?}): expected InvalidName, got {other:?}"),
        }
    }
}

/// The first key (of `key-0`, `key-1`, ...) that lives in shard `shard`.
fn key_in_shard(c: &Cache, shard: usize) -> Vec<u8> {
    (0..100_000u32)
        .map(|i| format!("key-{i}").into_bytes())
        .find(|k| c.shard_of(k) == shard)
        .expect("a key in the shard")
}

// ----- names -------------------------------------------------------------------------

#[test]
fn empty_name_is_invalid() {
    expect_invalid_name("", "empty");
}

#[test]
fn name_over_200_bytes_is_invalid() {
    expect_invalid_name(&"a".repeat(201), "longer than 200");
    // The limit itself is fine (only resolved: nothing is created in /dev/shm).
    let p = Cache::path_of("a".repeat(200)).expect("200 bytes is allowed");
    assert!(p.starts_with("/dev/shm"), "{}", p.display());
}

#[test]
fn name_with_leading_dot_is_invalid() {
    expect_invalid_name(".hidden", "starts with '.'");
    expect_invalid_name("..", "starts with '.'");
}

#[test]
fn name_with_bad_character_is_invalid() {
    for name in ["a b", "a:b", "caf\u{e9}", "a\0b", "a*", "tab\t"] {
        expect_invalid_name(name, "outside [A-Za-z0-9._-]");
    }
}

#[test]
fn path_ending_in_slash_is_invalid() {
    let t = TempCache::new("err-slash");
    let name = format!("{}/", t.dir.display());
    match Options::new().open(&name) {
        Err(e @ Error::InvalidName { .. }) => {
            assert!(e.to_string().contains("path must name a file"), "{e}");
        }
        other => panic!("expected InvalidName, got {other:?}"),
    }
    assert!(others_in(&t.dir, &[]).is_empty());
}

// ----- limits ------------------------------------------------------------------------

#[test]
fn key_over_limit_is_too_large_and_nothing_is_stored() {
    let t = TempCache::new("err-key");
    let c = t.open();
    let max_key = c.limits().max_key_len;
    let at_limit = vec![b'k'; max_key];
    let over = vec![b'k'; max_key + 1];
    c.set(&at_limit, b"ok", None).expect("a key at the limit");
    let before = c.stats();
    let ops: [(&str, Result<(), Error>); 9] = [
        ("set", c.set(&over, b"v", None)),
        ("try_set", c.try_set(&over, b"v", None)),
        (
            "insert_if_absent",
            c.insert_if_absent(&over, b"v", None).map(|_| ()),
        ),
        ("get", c.get(&over).map(|_| ())),
        ("try_get", c.try_get(&over).map(|_| ())),
        ("get_stale", c.get_stale(&over).map(|_| ())),
        ("remove", c.remove(&over).map(|_| ())),
        ("touch", c.touch(&over, None).map(|_| ())),
        (
            "get_or_insert_with",
            c.get_or_insert_with(&over, None, || Ok::<_, Error>(b"v".to_vec()))
                .map(|_| ()),
        ),
    ];
    for (op, r) in ops {
        match r {
            Err(e @ Error::TooLarge { .. }) => {
                let Error::TooLarge { what, len, max } = &e else {
                    unreachable!()
                };
                assert_eq!((*what, *len, *max), ("key", max_key + 1, max_key), "{op}");
                let msg = e.to_string();
                assert!(msg.contains("larger max_key_len"), "{op}: {msg}");
                assert!(msg.contains("nothing was stored"), "{op}: {msg}");
            }
            other => panic!("{op}: expected TooLarge, got {other:?}"),
        }
    }
    let after = c.stats();
    assert_eq!(after.entries, before.entries);
    assert_eq!(after.inserts, before.inserts);
    assert_eq!(after.updates, before.updates);
    let keys: Vec<Vec<u8>> = c.entries().map(|e| e.expect("entry").key).collect();
    assert_eq!(keys, vec![at_limit.clone()], "only the key at the limit");
    // No truncated prefix of the long key was stored.
    assert_eq!(c.get(&over[..max_key]).expect("get"), Some(b"ok".to_vec()));
    assert!(c.verify().expect("verify").is_clean());
}

#[test]
fn value_over_limit_is_too_large_and_nothing_is_stored() {
    let t = TempCache::new("err-value");
    let c = t.open();
    let max_value = c.limits().max_value_len;
    let at_limit = vec![7u8; max_value];
    let over = vec![9u8; max_value + 1];
    c.set(b"big", &at_limit, None)
        .expect("a value at the limit");
    let before = c.stats();
    let ops: [(&str, Result<(), Error>); 5] = [
        ("set over an entry", c.set(b"big", &over, None)),
        ("set of a new key", c.set(b"new", &over, None)),
        ("try_set", c.try_set(b"new", &over, None)),
        (
            "insert_if_absent",
            c.insert_if_absent(b"new", &over, None).map(|_| ()),
        ),
        (
            "get_or_insert_with",
            c.get_or_insert_with(b"new", None, || Ok::<_, Error>(over.clone()))
                .map(|_| ()),
        ),
    ];
    for (op, r) in ops {
        match r {
            Err(e @ Error::TooLarge { .. }) => {
                let Error::TooLarge { what, len, max } = &e else {
                    unreachable!()
                };
                assert_eq!(
                    (*what, *len, *max),
                    ("value", max_value + 1, max_value),
                    "{op}"
                );
                let msg = e.to_string();
                assert!(msg.contains("larger max_value_len"), "{op}: {msg}");
            }
            other => panic!("{op}: expected TooLarge, got {other:?}"),
        }
    }
    // The old value is intact, nothing new was stored, nothing was truncated.
    assert_eq!(c.get(b"big").expect("get"), Some(at_limit));
    assert_eq!(c.get(b"new").expect("get"), None);
    let after = c.stats();
    assert_eq!(after.entries, before.entries);
    assert_eq!(after.inserts, before.inserts);
    assert_eq!(after.updates, before.updates);
    assert_eq!(after.fills, before.fills);
    assert!(c.verify().expect("verify").is_clean());
}

#[test]
fn limits_that_do_not_fit_a_shard_are_invalid_options() {
    let cases: [(&str, Options, &str); 8] = [
        (
            "value limit as large as the capacity",
            Options::new().capacity(1 << 20).max_value_len(1 << 20),
            "raise the capacity or lower max_value_len",
        ),
        (
            "too many shards for the capacity",
            Options::new()
                .capacity(1 << 20)
                .max_value_len(1024)
                .shards(64),
            "ask for fewer shards",
        ),
        (
            "shards not a power of two",
            Options::new().capacity(4 << 20).shards(3),
            "power of two",
        ),
        (
            "key limit of zero",
            Options::new().capacity(4 << 20).max_key_len(0),
            "between 1 and 4096",
        ),
        (
            "key limit over the format's",
            Options::new().capacity(4 << 20).max_key_len(4097),
            "between 1 and 4096",
        ),
        (
            "value limit over the format's",
            Options::new().capacity(1 << 40).max_value_len(1 << 26),
            "over the format's limit",
        ),
        (
            "expected entry size too small",
            Options::new().capacity(4 << 20).expected_entry_size(8),
            "expected_entry_size",
        ),
        (
            "capacity smaller than the fixed areas",
            Options::new().capacity(4096).max_value_len(16),
            "too small",
        ),
    ];
    for (what, opts, hint) in cases {
        let t = TempCache::new("err-opts");
        match opts.open(t.name()) {
            Err(e @ Error::InvalidOptions(_)) => {
                let msg = e.to_string();
                assert!(msg.contains(hint), "{what}: {msg}");
            }
            other => panic!("{what}: expected InvalidOptions, got {other:?}"),
        }
        assert!(!t.path.exists(), "{what}: a file was created");
        assert_eq!(others_in(&t.dir, &[]), Vec::<String>::new(), "{what}");
    }
}

#[test]
fn world_writable_or_odd_mode_in_options_is_invalid_options() {
    for mode in [0o666, 0o602, 0o1600, 0o4600, 0o10600] {
        let t = TempCache::new("err-mode");
        match t.options().mode(mode).open(t.name()) {
            Err(e @ Error::InvalidOptions(_)) => {
                assert!(e.to_string().contains("not world-writable"), "{e}");
            }
            other => panic!("mode {mode:o}: expected InvalidOptions, got {other:?}"),
        }
        assert!(!t.path.exists(), "mode {mode:o}: a file was created");
    }
}

// ----- files of another kind -----------------------------------------------------------

#[test]
fn other_parameters_are_incompatible_and_name_the_field() {
    let t = TempCache::new("err-params");
    let before = make_cache(&t);
    let cases: [(&str, Options); 4] = [
        ("max_value_len", t.options().max_value_len(2048)),
        ("max_key_len", t.options().max_key_len(65)),
        ("capacity", t.options().capacity(8 << 20)),
        ("expected_entry_size", t.options().expected_entry_size(1000)),
    ];
    for (field, opts) in cases {
        match opts.open(t.name()) {
            Err(e @ Error::Incompatible { .. }) => {
                let Error::Incompatible { path, differences } = &e else {
                    unreachable!()
                };
                assert_eq!(path, &t.path);
                assert_eq!(differences.len(), 1, "{differences:?}");
                assert!(differences[0].starts_with(field), "{differences:?}");
                let msg = e.to_string();
                assert!(msg.contains(field), "{msg}");
                assert!(msg.contains("open it with Cache::open"), "{msg}");
            }
            other => panic!("{field}: expected Incompatible, got {other:?}"),
        }
        assert_unchanged(&t.path, &before);
    }
    // Two fields at once: both are named.
    match t
        .options()
        .max_value_len(2048)
        .max_key_len(32)
        .open(t.name())
    {
        Err(Error::Incompatible { differences, .. }) => {
            assert_eq!(differences.len(), 2, "{differences:?}");
            assert!(differences[0].contains("max_key_len: file 64, asked 32"));
            assert!(differences[1].contains("max_value_len: file 1024, asked 2048"));
        }
        other => panic!("expected Incompatible, got {other:?}"),
    }
    // What the message suggests works, with the file's own parameters.
    let c = Cache::open(t.name()).expect("Cache::open uses the file's parameters");
    assert_eq!(c.limits().max_value_len, 1024);
    assert_eq!(c.get(b"key-3").expect("get"), Some(b"value".to_vec()));
}

#[test]
fn other_layout_or_lock_abi_is_incompatible_and_names_it() {
    let t = TempCache::new("err-abi");
    make_cache(&t);
    for (field, off) in [
        ("layout fingerprint", H_FINGERPRINT),
        ("architecture", 120),
        ("mutex kind", 144),
    ] {
        let copy = copy_of(&t, "copy");
        let v = word(&read_all(&copy), off);
        patch_word(&copy, off, v ^ 0x5a5a);
        fix_checksum(&copy);
        let before = read_all(&copy);
        for r in both_opens(&t, s(&copy)) {
            match r {
                Err(e @ Error::Incompatible { .. }) => {
                    let msg = e.to_string();
                    assert!(msg.contains(field), "{msg}");
                }
                other => panic!("{field}: expected Incompatible, got {other:?}"),
            }
        }
        assert_unchanged(&copy, &before);
    }
}

#[test]
fn other_format_version_is_refused() {
    let t = TempCache::new("err-version");
    make_cache(&t);
    let copy = copy_of(&t, "copy");
    patch_word(&copy, H_VERSION, 1);
    fix_checksum(&copy);
    let before = read_all(&copy);
    for r in both_opens(&t, s(&copy)) {
        match r {
            Err(e @ Error::Version { .. }) => {
                let Error::Version {
                    path,
                    found,
                    expected,
                } = &e
                else {
                    unreachable!()
                };
                assert_eq!((path, *found, *expected), (&copy, 1, 4));
                let msg = e.to_string();
                assert!(msg.contains("use a build of the same version"), "{msg}");
            }
            other => panic!("expected Version, got {other:?}"),
        }
    }
    assert_unchanged(&copy, &before);
}

#[test]
fn corrupt_header_checksum_is_corrupt() {
    let t = TempCache::new("err-checksum");
    make_cache(&t);
    let copy = copy_of(&t, "copy");
    // A reserved header byte: covered by the checksum, read by nothing else.
    write_at(&copy, H_RESERVED + 3, &[0x42]);
    let before = read_all(&copy);
    for r in both_opens(&t, s(&copy)) {
        match r {
            Err(e @ Error::Corrupt { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("header checksum"), "{msg}");
                assert!(msg.contains("larder repair"), "{msg}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }
    assert_unchanged(&copy, &before);
}

#[test]
fn bad_magic_is_not_a_cache() {
    let t = TempCache::new("err-magic");
    make_cache(&t);
    let copy = copy_of(&t, "copy");
    patch_word(&copy, H_MAGIC, u64::from_le_bytes(*b"NOTLARDR"));
    // Some other file of a plausible size: all zeros.
    let zeros = t.dir.join("zeros");
    std::fs::write(&zeros, vec![0u8; 64 << 10]).expect("write");
    std::fs::set_permissions(&zeros, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    for p in [&copy, &zeros] {
        let before = read_all(p);
        for r in both_opens(&t, s(p)) {
            match r {
                Err(e @ Error::NotACache { .. }) => {
                    assert!(e.to_string().contains("not a larder cache"), "{e}");
                }
                other => panic!("{}: expected NotACache, got {other:?}", p.display()),
            }
        }
        assert_unchanged(p, &before);
    }
}

#[test]
fn changed_mutex_kind_makes_only_that_shard_corrupt() {
    let t = TempCache::new("err-kind");
    let c = t.open();
    assert!(c.shard_count() > 1);
    let k0 = key_in_shard(&c, 0);
    let k1 = key_in_shard(&c, 1);
    c.set(&k0, b"zero", None).expect("set");
    c.set(&k1, b"one", None).expect("set");
    drop(c);
    let bytes = read_all(&t.path);
    let shards_off =
        word(&bytes, H_TOTAL_SIZE) - word(&bytes, H_SHARD_COUNT) * word(&bytes, H_SHARD_SIZE);
    let kind_at = shards_off as usize + MUTEX_KIND;
    let good_kind = &bytes[kind_at..kind_at + 4];
    assert_ne!(
        good_kind,
        [0, 0, 0, 0],
        "shard 0's lock is not where expected"
    );
    write_at(&t.path, kind_at, &0x0bad_c0deu32.to_le_bytes());

    let c = t.open();
    // Every operation that takes shard 0's lock reports it; none hands the word to glibc.
    let locked_ops: [(&str, Result<(), Error>); 5] = [
        ("set", c.set(&k0, b"new", None)),
        ("remove", c.remove(&k0).map(|_| ())),
        ("touch", c.touch(&k0, None).map(|_| ())),
        ("try_set", c.try_set(&k0, b"new", None)),
        ("clear", c.clear().map(|_| ())),
    ];
    for (op, r) in locked_ops {
        match r {
            Err(e @ Error::Corrupt { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("mutex kind field is 0xbadc0de"), "{op}: {msg}");
                assert!(msg.contains("larder repair"), "{op}: {msg}");
            }
            other => panic!("{op}: expected Corrupt, got {other:?}"),
        }
    }
    match c.verify() {
        Err(Error::Corrupt { detail, .. }) => assert!(detail.contains("mutex kind"), "{detail}"),
        Ok(report) => assert!(
            report
                .problems
                .iter()
                .any(|p| p.what.contains("shard lock 0") && p.what.contains("mutex kind")),
            "{report}"
        ),
        Err(other) => panic!("verify: expected Corrupt, got {other:?}"),
    }
    // Other shards keep working.
    assert_eq!(c.get(&k1).expect("get"), Some(b"one".to_vec()));
    c.set(&k1, b"uno", None).expect("set in another shard");
    assert_eq!(c.get(&k1).expect("get"), Some(b"uno".to_vec()));
    drop(c);
    // The way out the message names: the offline repair re-initialises the locks.
    repair_offline_after_close(t.name());
    let c = t.open();
    assert_eq!(c.get(&k0).expect("get"), Some(b"zero".to_vec()));
    c.set(&k0, b"new", None).expect("set after repair");
    assert!(c.verify().expect("verify").is_clean());
}

// ----- files that may not be trusted ---------------------------------------------------

#[test]
fn symlink_is_unsafe() {
    let t = TempCache::new("err-symlink");
    let before = make_cache(&t);
    let link = t.dir.join("link");
    std::os::unix::fs::symlink(&t.path, &link).expect("symlink");
    let dangling = t.dir.join("dangling");
    let target = t.dir.join("target-that-does-not-exist");
    std::os::unix::fs::symlink(&target, &dangling).expect("symlink");
    for p in [&link, &dangling] {
        for r in opens_and_offline_repair(&t, s(p)) {
            match r {
                Err(e @ Error::UnsafeFile { .. }) => {
                    assert!(e.to_string().contains("symbolic link"), "{e}");
                }
                other => panic!("{}: expected UnsafeFile, got {other:?}", p.display()),
            }
        }
    }
    assert_unchanged(&t.path, &before);
    // Nothing was created through the dangling link.
    assert!(!target.exists());
}

#[test]
fn directory_at_path_is_unsafe() {
    let t = TempCache::new("err-dir");
    std::fs::create_dir(&t.path).expect("mkdir");
    for r in both_opens(&t, t.name()) {
        match r {
            Err(e @ Error::UnsafeFile { .. }) => {
                assert!(e.to_string().contains("not a regular file"), "{e}");
            }
            other => panic!("expected UnsafeFile, got {other:?}"),
        }
    }
    assert!(t.path.is_dir());
    assert!(others_in(&t.path, &[]).is_empty());
}

#[test]
fn fifo_at_path_is_unsafe() {
    let t = TempCache::new("err-fifo");
    let c_path = CString::new(t.path.as_os_str().as_bytes()).expect("path");
    // SAFETY: a valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
    // Opening a FIFO read-write never blocks on Linux; the check rejects it after.
    for r in both_opens(&t, t.name()) {
        match r {
            Err(e @ Error::UnsafeFile { .. }) => {
                assert!(e.to_string().contains("not a regular file"), "{e}");
            }
            other => panic!("expected UnsafeFile, got {other:?}"),
        }
    }
    let meta = std::fs::symlink_metadata(&t.path).expect("stat");
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&meta.file_type()));
}

#[test]
fn file_of_another_owner_is_unsafe_unless_allowed() {
    let t = TempCache::new("err-owner");
    make_cache(&t);
    const OTHER: u32 = 12345;
    if let Err(e) = std::os::unix::fs::chown(&t.path, Some(OTHER), None) {
        eprintln!("skipped: cannot chown as this user ({e})");
        return;
    }
    let before = read_all(&t.path);
    for r in opens_and_offline_repair(&t, t.name()) {
        match r {
            Err(e @ Error::UnsafeFile { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("owned by uid 12345"), "{msg}");
                assert!(msg.contains("Options::allow_uid(12345)"), "{msg}");
            }
            other => panic!("expected UnsafeFile, got {other:?}"),
        }
    }
    assert_unchanged(&t.path, &before);
    let c = t
        .options()
        .allow_uid(OTHER)
        .open(t.name())
        .expect("an allowed owner opens");
    assert_eq!(c.get(b"key-1").expect("get"), Some(b"value".to_vec()));
    drop(c);
    let c = Options::new()
        .allow_uid(OTHER)
        .attach(t.name())
        .expect("an allowed owner attaches");
    assert_eq!(c.get(b"key-2").expect("get"), Some(b"value".to_vec()));
    assert_eq!(std::fs::metadata(&t.path).expect("stat").uid(), OTHER);
}

#[test]
fn world_writable_file_is_unsafe() {
    let t = TempCache::new("err-ww");
    make_cache(&t);
    std::fs::set_permissions(&t.path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let before = read_all(&t.path);
    for r in both_opens(&t, t.name()) {
        match r {
            Err(e @ Error::UnsafeFile { .. }) => {
                assert!(e.to_string().contains("world-writable (mode 666)"), "{e}");
            }
            other => panic!("expected UnsafeFile, got {other:?}"),
        }
    }
    assert_unchanged(&t.path, &before);
    let mode = std::fs::metadata(&t.path)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o666, "the mode was changed");
}

#[test]
fn file_shorter_than_its_header_says_is_truncated() {
    let t = TempCache::new("err-trunc");
    let full = make_cache(&t);
    let total = word(&full, H_TOTAL_SIZE);
    assert_eq!(total, full.len() as u64);
    for (len, expected) in [
        (total - 4096, total),
        (total / 2, total),
        (100, 4096),
        (0, 4096),
    ] {
        let copy = copy_of(&t, "copy");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&copy)
            .expect("open")
            .set_len(len)
            .expect("truncate");
        let before = read_all(&copy);
        // Mapping the missing tail would raise SIGBUS on first touch: the check must
        // come first. Reaching the assertions proves it did.
        for r in opens_and_offline_repair(&t, s(&copy)) {
            match r {
                Err(e @ Error::Truncated { .. }) => {
                    let Error::Truncated {
                        len: l,
                        expected: x,
                        ..
                    } = &e
                    else {
                        unreachable!()
                    };
                    assert_eq!((*l, *x), (len, expected));
                    let msg = e.to_string();
                    assert!(msg.contains("remove it"), "{msg}");
                }
                other => panic!("len {len}: expected Truncated, got {other:?}"),
            }
        }
        assert_unchanged(&copy, &before);
        std::fs::remove_file(&copy).expect("rm");
    }
}

#[test]
fn file_from_another_boot_is_refused_until_repaired_offline() {
    let t = TempCache::new("err-boot");
    make_cache(&t);
    let bytes = read_all(&t.path);
    patch_word(&t.path, STAMP_BOOT, word(&bytes, STAMP_BOOT) ^ 0x1234_5678);
    patch_word(&t.path, STAMP_BOOT + 8, word(&bytes, STAMP_BOOT + 8) ^ 1);
    fix_stamp(&t.path);
    let before = read_all(&t.path);
    for r in both_opens(&t, t.name()) {
        match r {
            Err(e @ Error::OtherBoot { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("another boot"), "{msg}");
                assert!(msg.contains("larder repair"), "{msg}");
            }
            other => panic!("expected OtherBoot, got {other:?}"),
        }
    }
    assert_unchanged(&t.path, &before);
    let c = repaired_offline_serves_again(&t);
    assert!(c.verify().expect("verify").is_clean());
}

/// A file whose stamp names another pid or time namespace (forged here, so this runs
/// where `unshare` is refused too; tests/boundaries.rs makes real namespaces) is
/// refused by every opener with its own error, the file unchanged; an offline repair,
/// which proves nobody is attached and re-initialises every lock, adopts it.
#[test]
fn file_from_another_namespace_is_refused_until_repaired_offline() {
    for (at, what) in [(STAMP_PID_NS_INO, "pid"), (STAMP_TIME_NS_INO, "time")] {
        let t = TempCache::new("err-ns");
        make_cache(&t);
        let bytes = read_all(&t.path);
        patch_word(&t.path, at, word(&bytes, at) ^ 0x5a5a);
        fix_stamp(&t.path);
        let before = read_all(&t.path);
        for r in both_opens(&t, t.name()) {
            match (what, r) {
                ("pid", Err(e @ Error::OtherPidNamespace { .. })) => {
                    let msg = e.to_string();
                    assert!(msg.contains("--pid=container:NAME"), "{msg}");
                    assert!(msg.contains("shareProcessNamespace: true"), "{msg}");
                }
                ("time", Err(e @ Error::OtherTimeNamespace { .. })) => {
                    assert!(e.to_string().contains("time namespace"), "{e}");
                }
                (_, other) => panic!("{what}: expected its namespace error, got {other:?}"),
            }
        }
        assert_unchanged(&t.path, &before);
        let c = repaired_offline_serves_again(&t);
        assert!(c.verify().expect("verify").is_clean());
    }
}

/// A stamp whose words do not match its checksum (an offline repair died re-stamping)
/// is refused as corrupt, and the next offline repair writes it whole.
#[test]
fn torn_stamp_is_corrupt_until_repaired_offline() {
    let t = TempCache::new("err-stamp");
    make_cache(&t);
    let bytes = read_all(&t.path);
    patch_word(&t.path, STAMP_BOOT, word(&bytes, STAMP_BOOT) ^ 1);
    let before = read_all(&t.path);
    match Cache::open(t.name()) {
        Err(Error::Corrupt { detail, .. }) => assert!(detail.contains("stamp"), "{detail}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_unchanged(&t.path, &before);
    repaired_offline_serves_again(&t);
}

#[test]
fn offline_repair_while_attached_is_in_use() {
    let t = TempCache::new("err-inuse");
    let c = t.open();
    c.set(b"k", b"v", None).expect("set");
    match Cache::repair_offline(t.name(), &Options::new()) {
        Err(e @ Error::InUse { .. }) => {
            assert!(e.to_string().contains("stop them first"), "{e}");
        }
        other => panic!("expected InUse, got {other:?}"),
    }
    assert_eq!(c.get(b"k").expect("get"), Some(b"v".to_vec()));
}

/// Closing the last handle detaches at once: an offline repair right after it does not
/// find the file in use. (Another test thread spawning a child can hold a copy of every
/// descriptor between its fork and exec, so a single InUse is retried, within a deadline;
/// a handle that stayed attached would fail every retry.)
#[test]
fn offline_repair_right_after_the_last_handle_closes_is_not_in_use() {
    let t = TempCache::new("err-close-race");
    for _ in 0..500 {
        let c = t.open();
        let _ = c.get(b"k").expect("get"); // claims a statistics slot
        drop(c);
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        loop {
            match Cache::repair_offline(t.name(), &Options::new()) {
                Ok(_) => break,
                Err(Error::InUse { .. }) if std::time::Instant::now() < deadline => {
                    std::thread::yield_now()
                }
                Err(e) => panic!("offline repair after the last handle closed: {e}"),
            }
        }
    }
}

// ----- the file system ---------------------------------------------------------------

/// A tmpfs mounted for one test; unmounted on drop (lazily, so a straggling descriptor
/// cannot make the unmount fail).
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(dir: &Path, size: &str) -> std::io::Result<Mount> {
        std::fs::create_dir_all(dir)?;
        let target = CString::new(dir.as_os_str().as_bytes())?;
        let fstype = CString::new("tmpfs")?;
        let data = CString::new(format!("size={size},mode=0700"))?;
        // SAFETY: valid NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::mount(
                fstype.as_ptr(),
                target.as_ptr(),
                fstype.as_ptr(),
                0,
                data.as_ptr().cast(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mount(dir.to_path_buf()))
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Ok(target) = CString::new(self.0.as_os_str().as_bytes()) {
            // SAFETY: a valid NUL-terminated path.
            unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

#[test]
fn full_tmpfs_at_creation_is_no_space() {
    let t = TempCache::new("err-nospace");
    let mnt_dir = t.dir.join("mnt");
    // Declared after `t`, so it is unmounted before the temp dir is removed.
    let _mount = match Mount::tmpfs(&mnt_dir, "1m") {
        Ok(m) => m,
        Err(e) => {
            eprintln!("skipped: cannot mount a tmpfs here ({e})");
            return;
        }
    };
    let path = mnt_dir.join("cache");
    let capacity = 4u64 << 20;
    let err = t
        .options()
        .capacity(capacity)
        .open(s(&path))
        .expect_err("a 4 MiB cache on a 1 MiB tmpfs");
    let msg = err.to_string();
    match err {
        Error::NoSpace {
            mount,
            requested,
            free,
        } => {
            let mnt = mnt_dir.canonicalize().expect("canonical");
            assert_eq!(mount, mnt);
            assert!(requested > free, "{requested} asked, {free} free");
            assert!(requested <= capacity && requested > 3 << 20, "{requested}");
            assert!(free <= 1 << 20, "{free}");
            assert!(msg.contains(&mnt.display().to_string()), "{msg}");
            assert!(msg.contains(&format!("{requested} bytes asked")), "{msg}");
            assert!(msg.contains(&format!("{free} bytes free")), "{msg}");
            assert!(msg.contains("64 MiB"), "{msg}");
        }
        other => panic!("expected NoSpace, got {other:?}"),
    }
    // Nothing left behind on the tmpfs, and its space is free again.
    assert_eq!(others_in(&mnt_dir, &[]), Vec::<String>::new());
    // A cache that fits is created there.
    let small = t
        .options()
        .capacity(512 << 10)
        .max_value_len(256)
        .open(s(&path))
        .expect("a cache that fits");
    small.set(b"k", b"v", None).expect("set");
}

/// A replacement needs room for both files at once: where the tmpfs has none, an open
/// with `Mismatch::Replace` attaches to the old file with its own parameters rather
/// than fail (so a deploy never stops workers from starting), and leaves nothing behind.
#[test]
fn replace_without_room_for_both_files_attaches_to_the_old_one() {
    let t = TempCache::new("err-replace-nospace");
    let mnt_dir = t.dir.join("mnt");
    // Declared after `t`, so it is unmounted before the temp dir is removed.
    let _mount = match Mount::tmpfs(&mnt_dir, "6m") {
        Ok(m) => m,
        Err(e) => {
            eprintln!("skipped: cannot mount a tmpfs here ({e})");
            return;
        }
    };
    let path = mnt_dir.join("cache");
    let old = t
        .options()
        .capacity(4 << 20)
        .open(s(&path))
        .expect("the old file");
    old.set(b"k", b"v", None).expect("set");
    let c = t
        .options()
        .capacity(5 << 20)
        .on_mismatch(larder::Mismatch::Replace)
        .open(s(&path))
        .expect("attaches instead");
    assert_eq!(c.opened(), larder::Opened::Attached);
    assert_eq!(c.limits().capacity, 4 << 20);
    assert_eq!(c.get(b"k").expect("get"), Some(b"v".to_vec()));
    assert_eq!(others_in(&mnt_dir, &["cache"]), Vec::<String>::new());
}

#[test]
fn open_of_missing_cache_is_not_found() {
    let t = TempCache::new("err-missing");
    for r in [
        Cache::open(t.name()).map(|_| ()),
        Options::new().attach(t.name()).map(|_| ()),
        Cache::unlink(t.name()),
        Cache::repair_offline(t.name(), &Options::new()).map(|_| ()),
    ] {
        match r {
            Err(e @ Error::NotFound { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains(&t.path.display().to_string()), "{msg}");
                assert!(msg.contains("create it with Options::open"), "{msg}");
            }
            other => panic!("expected NotFound, got {other:?}"),
        }
    }
    assert!(!t.path.exists(), "attaching created a file");
}

#[test]
fn missing_parent_directory_is_an_io_not_found_naming_it() {
    let t = TempCache::new("err-nodir");
    let dir = t.dir.join("no-such-dir");
    let path = dir.join("cache");
    match t.options().open(s(&path)) {
        Err(Error::Io(e)) => {
            assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}");
            assert!(e.to_string().contains(&dir.display().to_string()), "{e}");
        }
        other => panic!("expected Io(NotFound), got {other:?}"),
    }
    assert!(!dir.exists());
}

// ----- locks -------------------------------------------------------------------------

/// A shard lock held by a helper thread of this process through its own mapping of the
/// file, exactly as a writer in another process holds it (the mutex is process-shared),
/// optionally with the shard's sequence counter odd as during a write. Released on drop,
/// also when the test panics.
struct HeldLock {
    release: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HeldLock {
    fn hold(path: &Path, shard: usize, mid_write: bool) -> HeldLock {
        let bytes = read_all(path);
        let count = word(&bytes, H_SHARD_COUNT) as usize;
        let size = word(&bytes, H_SHARD_SIZE) as usize;
        let base = word(&bytes, H_TOTAL_SIZE) as usize - count * size + shard * size;
        let path = path.to_path_buf();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .expect("open");
            let map = memmap2::MmapOptions::new().map_raw(&file).expect("map");
            assert!(base + 128 <= map.len());
            // SAFETY: `base` is a page-aligned shard inside the mapping; the mutex was
            // initialised by the library with process-shared, robust attributes.
            let mutex = unsafe { map.as_mut_ptr().add(base) }.cast::<libc::pthread_mutex_t>();
            // SAFETY: as above; the sequence counter is an 8-aligned word at +64 that the
            // library only accesses atomically.
            let seq = unsafe { &*map.as_mut_ptr().add(base + 64).cast::<AtomicU64>() };
            // SAFETY: a valid, initialised process-shared mutex.
            let rc = unsafe { libc::pthread_mutex_lock(mutex) };
            assert_eq!(rc, 0, "pthread_mutex_lock");
            if mid_write {
                seq.fetch_add(1, Ordering::Release);
            }
            let _ = ready_tx.send(());
            // Bounded: the test releases it long before.
            let _ = release_rx.recv_timeout(Duration::from_secs(120));
            if mid_write {
                seq.fetch_add(1, Ordering::Release);
            }
            // SAFETY: this thread locked it above.
            let rc = unsafe { libc::pthread_mutex_unlock(mutex) };
            assert_eq!(rc, 0, "pthread_mutex_unlock");
        });
        ready_rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the helper thread took the lock");
        HeldLock {
            release: Some(release_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        drop(self.release.take());
        if let Some(t) = self.thread.take() {
            let r = t.join();
            if r.is_err() && !std::thread::panicking() {
                panic!("the lock holder thread failed");
            }
        }
    }
}

/// Three keys: two in shard 0, one in shard 1.
fn lock_test_keys(c: &Cache) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let key = key_in_shard(c, 0);
    let neighbour = (0..100_000u32)
        .map(|i| format!("n-{i}").into_bytes())
        .find(|k| c.shard_of(k) == 0)
        .expect("a second key in shard 0");
    (key, neighbour, key_in_shard(c, 1))
}

/// Blocking operations on a shard whose lock is held past the deadline give `Timeout`
/// at the deadline (not before, not much after); `try_` operations give `WouldBlock`
/// at once; other shards are unaffected.
fn assert_held_shard_times_out(c: &Cache, timeout: Duration, neighbour: &[u8], other: &[u8]) {
    let timeouts_before = c.stats().lock_timeouts;
    type Op<'a> = Box<dyn Fn() -> Result<(), Error> + 'a>;
    let blocking: [(&str, Op); 6] = [
        ("get", Box::new(|| c.get(neighbour).map(|_| ()))),
        ("set", Box::new(|| c.set(neighbour, b"x", None))),
        ("remove", Box::new(|| c.remove(neighbour).map(|_| ()))),
        ("touch", Box::new(|| c.touch(neighbour, None).map(|_| ()))),
        ("verify", Box::new(|| c.verify().map(|_| ()))),
        ("clear", Box::new(|| c.clear().map(|_| ()))),
    ];
    for (op, f) in &blocking {
        let start = Instant::now();
        let r = f();
        let took = start.elapsed();
        match r {
            Err(e @ Error::Timeout { .. }) => {
                let Error::Timeout { what, waited } = &e else {
                    unreachable!()
                };
                assert_eq!(*waited, timeout, "{op}");
                assert!(what.contains("shard lock"), "{op}: {what}");
                assert!(
                    e.to_string().contains("retry, or raise the timeout"),
                    "{op}: {e}"
                );
            }
            other => panic!("{op}: expected Timeout, got {other:?}"),
        }
        assert!(took >= timeout, "{op} gave up early: {took:?}");
        assert!(
            took < timeout * 50,
            "{op} waited far past the deadline: {took:?}"
        );
    }
    let mut out = Vec::new();
    for (op, r) in [
        ("try_get", c.try_get(neighbour).map(|_| ())),
        (
            "try_get_into",
            c.try_get_into(neighbour, &mut Vec::new()).map(|_| ()),
        ),
        ("try_set", c.try_set(neighbour, b"x", None)),
        (
            "try_insert_if_absent",
            c.try_insert_if_absent(neighbour, b"x", None).map(|_| ()),
        ),
        ("try_remove", c.try_remove(neighbour).map(|_| ())),
        ("try_incr", c.try_incr(neighbour, 1, 0, None).map(|_| ())),
        ("try_touch", c.try_touch(neighbour, None).map(|_| ())),
        ("try_get_stale", c.try_get_stale(neighbour).map(|_| ())),
        (
            "try_replace",
            c.try_replace(neighbour, b"x", None).map(|_| ()),
        ),
        ("try_ttl", c.try_ttl(neighbour).map(|_| ())),
        ("try_clear_shard", c.try_clear_shard(0).map(|_| ())),
        (
            "try_begin_fill",
            c.try_begin_fill(neighbour, &mut out).map(|_| ()),
        ),
    ] {
        match r {
            Err(e @ Error::WouldBlock) => {
                assert!(e.to_string().contains("would block"), "{e}");
            }
            other => panic!("{op}: expected WouldBlock, got {other:?}"),
        }
    }
    // WouldBlock only when a lock is busy: another shard answers both.
    assert_eq!(c.try_get(other).expect("try_get"), Some(b"other".to_vec()));
    let mut buf = Vec::new();
    assert!(c.try_get_into(other, &mut buf).expect("try_get_into"));
    assert_eq!(buf, b"other");
    c.try_set(other, b"other2", None).expect("try_set");
    assert!(!c
        .try_insert_if_absent(other, b"x", None)
        .expect("try_insert_if_absent"));
    assert!(c.try_touch(other, None).expect("try_touch"));
    let stale = c.try_get_stale(other).expect("try_get_stale").expect("hit");
    assert_eq!(
        (stale.value.as_slice(), stale.expired),
        (&b"other2"[..], false)
    );
    assert!(c.try_replace(other, b"other3", None).expect("try_replace"));
    assert_eq!(c.try_ttl(other).expect("try_ttl"), Some(None));
    assert!(matches!(
        c.try_clear_shard(c.shard_count()),
        Err(Error::InvalidArgument(_))
    ));
    let more = common::keys_in_shard(c, c.shard_of(other), "unheld", 2);
    assert!(!c.try_remove(&more[0]).expect("try_remove"));
    assert_eq!(c.try_incr(&more[1], 2, 40, None).expect("try_incr"), 42);
    assert!(c.try_remove(&more[1]).expect("try_remove"));
    // Clearing the unheld shard removes its entries; the held shard keeps its own.
    let other_shard = c.shard_of(other);
    assert!(c.try_clear_shard(other_shard).expect("try_clear_shard") >= 1);
    assert_eq!(c.try_get(other).expect("try_get"), None);
    c.set(other, b"other", None).expect("set");
    assert!(c.stats().lock_timeouts >= timeouts_before + blocking.len() as u64);
}

/// A writer holding a shard lock past the deadline (mid-write: the sequence counter is
/// odd, so reads cannot be served optimistically either).
#[test]
fn lock_held_past_deadline_times_out_and_try_ops_would_block() {
    let t = TempCache::new("err-timeout");
    let timeout = Duration::from_millis(100);
    let c = t
        .options()
        .lock_timeout(timeout)
        .open(t.name())
        .expect("open");
    let (key, neighbour, other) = lock_test_keys(&c);
    c.set(&key, b"key", None).expect("set");
    c.set(&neighbour, b"neighbour", None).expect("set");
    c.set(&other, b"other", None).expect("set");
    let held = HeldLock::hold(&t.path, 0, true);
    assert_held_shard_times_out(&c, timeout, &neighbour, &other);
    // Released: everything proceeds, nothing was lost, nothing needed repair.
    drop(held);
    assert_eq!(c.try_get(&key).expect("try_get"), Some(b"key".to_vec()));
    assert_eq!(c.get(&neighbour).expect("get"), Some(b"neighbour".to_vec()));
    c.try_set(&neighbour, b"n2", None).expect("try_set");
    assert_eq!(c.stats().recoveries, 0);
    assert!(c.verify().expect("verify").is_clean());
}

/// The `try_` forms of versions, tickets and fills give `WouldBlock` while a writer
/// holds the shard lock mid-write, change nothing, and succeed once it lets go; a
/// ticket takes no lock at all.
#[test]
fn try_forms_of_versions_tickets_and_fills_would_block() {
    let t = TempCache::new("err-try-forms");
    let c = t
        .options()
        .lock_timeout(Duration::from_millis(100))
        .open(t.name())
        .expect("open");
    let (key, neighbour, _) = lock_test_keys(&c);
    c.set(&key, b"key", None).expect("set");
    let (_, version) = c.get_versioned(&key).expect("get_versioned").expect("hit");
    let ticket = c.ticket(&neighbour).expect("ticket");
    let mut out = Vec::new();
    let fill = match c.begin_fill(&neighbour, &mut out).expect("begin_fill") {
        larder::Begin::Fill(fill) => fill,
        other => panic!("expected a fill, got {other:?}"),
    };
    let held = HeldLock::hold(&t.path, 0, true);
    let would_block = |op: &str, r: Result<(), Error>| match r {
        Err(Error::WouldBlock) => {}
        other => panic!("{op}: expected WouldBlock, got {other:?}"),
    };
    would_block("try_get_versioned", c.try_get_versioned(&key).map(|_| ()));
    would_block(
        "try_set_if_version",
        c.try_set_if_version(&key, b"v2", None, version).map(|_| ()),
    );
    would_block(
        "try_set_with_ticket",
        c.try_set_with_ticket(&neighbour, b"t", None, ticket)
            .map(|_| ()),
    );
    would_block(
        "Fill::try_complete",
        fill.try_complete(b"f", None).map(|_| ()),
    );
    // A ticket takes no lock.
    let second = c.try_ticket(&neighbour).expect("try_ticket");
    drop(held);
    // The fill was kept: completing it now stores its value.
    assert!(fill.try_complete(b"f", None).expect("try_complete"));
    drop(fill);
    assert_eq!(c.get(&neighbour).expect("get"), Some(b"f".to_vec()));
    // Tickets taken before that fill's store are still admitted (a store does not
    // revoke); the version still matches, nothing having changed the entry.
    assert!(c
        .try_set_with_ticket(&neighbour, b"t", None, second)
        .expect("try_set_with_ticket"));
    let (value, now) = c
        .try_get_versioned(&key)
        .expect("try_get_versioned")
        .expect("hit");
    assert_eq!((value.as_slice(), now), (&b"key"[..], version));
    assert!(c
        .try_set_if_version(&key, b"v2", None, version)
        .expect("try_set_if_version"));
    assert_eq!(c.get(&key).expect("get"), Some(b"v2".to_vec()));
    assert!(c.verify().expect("verify").is_clean());
}

/// With the lock held but no write in progress (counter even), reads are still served
/// optimistically: only a busy lock that a read actually needs gives `WouldBlock`.
#[test]
fn reads_do_not_wait_for_a_lock_held_outside_a_write() {
    let t = TempCache::new("err-held-read");
    let timeout = Duration::from_millis(100);
    let c = t
        .options()
        .lock_timeout(timeout)
        .open(t.name())
        .expect("open");
    let (key, neighbour, _) = lock_test_keys(&c);
    c.set(&key, b"key", None).expect("set");
    let held = HeldLock::hold(&t.path, 0, false);
    let start = Instant::now();
    assert_eq!(c.try_get(&key).expect("try_get"), Some(b"key".to_vec()));
    assert_eq!(c.get(&key).expect("get"), Some(b"key".to_vec()));
    assert_eq!(c.try_get(&neighbour).expect("try_get of a miss"), None);
    assert!(start.elapsed() < timeout, "a read waited for the lock");
    assert!(matches!(
        c.try_set(&neighbour, b"x", None),
        Err(Error::WouldBlock)
    ));
    drop(held);
    c.try_set(&neighbour, b"x", None).expect("try_set");
}

/// A helper child playing `role`, its output logged in the test's directory.
#[cfg(feature = "crash-points")]
fn spawn_child(t: &TempCache, role: &str, envs: &[(&str, &str)]) -> common::ChildGuard {
    let mut cmd = common::self_command("child_process_entry", role);
    cmd.envs(envs.iter().copied());
    common::ChildGuard::spawn_logged(&mut cmd, t.dir.join(format!("child-{role}.log")))
}

/// Entry point of helper children (a no-op when run as an ordinary test).
#[test]
fn child_process_entry() {
    let Some(role) = common::child_role() else {
        return;
    };
    let path = common::child_env(CHILD_PATH);
    let key = common::child_env(CHILD_KEY);
    match role.as_str() {
        // Sets a key; the crash point configured by the parent stops it mid-write.
        "writer" => {
            let c = Cache::open(&path).expect("child attach");
            c.set(key.as_bytes(), b"from-child", None)
                .expect("child set");
        }
        other => panic!("unknown child role {other}"),
    }
}

/// The same through a real process stopped (SIGSTOP) at a pause point inside `set`,
/// with the shard lock held and the counter odd; it finishes its write after SIGCONT.
#[cfg(feature = "crash-points")]
#[test]
fn writer_stopped_mid_write_makes_others_time_out_then_proceed() {
    let t = TempCache::new("err-stopped");
    let timeout = Duration::from_millis(100);
    let c = t
        .options()
        .lock_timeout(timeout)
        .open(t.name())
        .expect("open");
    let (key, neighbour, other) = lock_test_keys(&c);
    c.set(&key, b"before", None).expect("set");
    c.set(&neighbour, b"neighbour", None).expect("set");
    c.set(&other, b"other", None).expect("set");
    let key_text = String::from_utf8(key.clone()).expect("utf-8");
    let mut child = spawn_child(
        &t,
        "writer",
        &[
            (CHILD_PATH, t.name()),
            (CHILD_KEY, &key_text),
            ("LARDER_CRASH_AT", "set.after_intent"),
            ("LARDER_CRASH_ACTION", "stop"),
        ],
    );
    let stopped = common::poll_until(common::deadline_in(60), || {
        common::proc_state(child.pid()) == Some('T')
    });
    assert!(
        stopped,
        "child did not stop at its pause point within 60 s; log:\n{}",
        child.log()
    );
    assert_held_shard_times_out(&c, timeout, &neighbour, &other);
    // SAFETY: kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(child.pid(), libc::SIGCONT) };
    assert_eq!(rc, 0);
    let status = child.wait_or_fail(common::deadline_in(60), "the resumed writer");
    assert!(
        status.success(),
        "child failed: {status:?}\n{}",
        child.log()
    );
    assert_eq!(c.get(&key).expect("get"), Some(b"from-child".to_vec()));
    assert_eq!(c.get(&neighbour).expect("get"), Some(b"neighbour".to_vec()));
    c.try_set(&neighbour, b"n2", None).expect("try_set");
    assert_eq!(c.stats().recoveries, 0, "a resumed holder needs no repair");
    assert!(c.verify().expect("verify").is_clean());
}

// ----- messages ----------------------------------------------------------------------

/// Refusals name a remedy, not only the problem.
#[test]
fn refusal_messages_say_what_to_do() {
    let p = PathBuf::from("/dev/shm/x.larder4");
    let cases: [(Error, &[&str]); 5] = [
        (
            Error::NotACache { path: p.clone() },
            &["remove", "another name"],
        ),
        (
            Error::UnsafeFile {
                path: p.clone(),
                reason: "it is a symbolic link".into(),
            },
            &["remove", "real path", "the file it points to"],
        ),
        (
            Error::UnsafeFile {
                path: p.clone(),
                reason: "it is not a regular file".into(),
            },
            &["remove", "another name"],
        ),
        (
            Error::UnsafeFile {
                path: p.clone(),
                reason: "it is world-writable (mode 666)".into(),
            },
            &["chmod", "remove"],
        ),
        (Error::WouldBlock, &["retry", "blocking"]),
    ];
    let mut missing = Vec::new();
    for (e, remedies) in cases {
        let msg = e.to_string();
        if !remedies.iter().any(|r| msg.contains(r)) {
            missing.push(msg);
        }
    }
    assert!(missing.is_empty(), "no remedy in: {missing:#?}");
}

/// Each error's summary says what happened in no front end's terms; the remedy is a
/// kind each front end words (the `larder` command and the Python package name their own
/// calls), and `Display`, this crate's own wording, names the Rust call.
#[test]
fn summaries_name_no_rust_call_and_display_adds_the_rust_remedy() {
    use larder::Remedy;
    let t = TempCache::new("err-words");
    make_cache(&t);
    let mut errors: Vec<(Error, Remedy, &str)> = Vec::new();
    // Missing.
    let missing = t.file("missing");
    errors.push((
        Cache::open(&missing).expect_err("missing"),
        Remedy::Create,
        "Options::open",
    ));
    // Other parameters.
    errors.push((
        t.options()
            .capacity(8 << 20)
            .open(t.name())
            .expect_err("other capacity"),
        Remedy::UseOrRemove,
        "Cache::unlink",
    ));
    // Too large.
    let c = t.open();
    errors.push((
        c.set(&[b'k'; 65], b"v", None).expect_err("long key"),
        Remedy::RaiseLimit { what: "key" },
        "Options::max_key_len",
    ));
    drop(c);
    // Corrupt header.
    let corrupt = copy_of(&t, "corrupt");
    write_at(&corrupt, H_RESERVED + 3, &[0x42]);
    errors.push((
        Cache::open(s(&corrupt)).expect_err("corrupt"),
        Remedy::Repair,
        "Cache::repair_offline",
    ));
    // Another boot.
    let boot = copy_of(&t, "boot");
    let bytes = read_all(&boot);
    patch_word(&boot, STAMP_BOOT, word(&bytes, STAMP_BOOT) ^ 0x77);
    fix_stamp(&boot);
    errors.push((
        Cache::open(s(&boot)).expect_err("other boot"),
        Remedy::RepairOffline,
        "Cache::repair_offline",
    ));
    // Another owner (where this user may chown).
    let foreign = copy_of(&t, "foreign");
    if std::os::unix::fs::chown(&foreign, Some(12345), None).is_ok() {
        errors.push((
            Cache::open(s(&foreign)).expect_err("other owner"),
            Remedy::AllowOwner { uid: 12345 },
            "Options::allow_uid(12345)",
        ));
    }
    for (e, remedy, rust) in &errors {
        let summary = e.summary();
        let display = e.to_string();
        assert_eq!(e.remedy(), Some(*remedy), "{display}");
        for api in ["Cache::", "Options::"] {
            assert!(!summary.contains(api), "{summary}");
        }
        assert!(display.starts_with(&summary), "{display}");
        assert!(display.contains(rust), "{display}");
    }
    assert_eq!(errors[0].0.name().as_deref(), Some(missing.as_str()));
    // A file of /dev/shm is named by its bare name, as a user gives it.
    let bare = Error::NotFound {
        path: Cache::path_of("authz").expect("path"),
    };
    assert_eq!(bare.name().as_deref(), Some("authz"));
    // A layout from another build is no parameter a caller chooses: no such remedy.
    let layout = Error::Incompatible {
        path: t.path.clone(),
        differences: vec!["architecture: file arm, this build x86_64".into()],
    };
    assert_eq!(layout.remedy(), None);
    assert!(!layout.to_string().contains("Cache::open"), "{layout}");
}
