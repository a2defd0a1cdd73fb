//! The status mapping and the header agree, and the mapping is one-to-one.

use std::collections::{BTreeMap, HashSet};
use std::ffi::{c_int, CStr};
use std::time::{Duration, Instant};

use crate::status::{self, *};
use crate::test_support::TempDir;
use crate::{larder_last_error, larder_strerror};
use larder_core::{Error, Options};

/// A `Detached` error, which only the library makes: the file under an open handle is
/// replaced by one that is not a cache, and the handle, after its periodic check, cannot
/// attach.
fn detached_error(dir: &TempDir) -> Error {
    let path = dir.0.join("moved");
    let cache = Options::new().capacity(4 << 20).open(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    std::fs::write(&path, vec![0x5a_u8; 8192]).unwrap();
    let start = Instant::now();
    loop {
        match cache.get(b"k") {
            Err(e @ Error::Detached { .. }) => return e,
            Ok(_) => {}
            Err(e) => panic!("expected Detached, got {e}"),
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the handle never noticed its file was replaced"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One error of every variant the library has today.
fn every_error(dir: &TempDir) -> Vec<Error> {
    let p = || dir.0.join("f");
    vec![
        Error::InvalidName {
            name: "x y".into(),
            reason: "a space",
        },
        Error::InvalidOptions("x".into()),
        Error::TooLarge {
            what: "key",
            len: 300,
            max: 256,
        },
        Error::Incompatible {
            path: p(),
            differences: vec!["capacity: file 1, expected 2".into()],
        },
        Error::Version {
            path: p(),
            found: 1,
            expected: 2,
        },
        Error::NotACache { path: p() },
        Error::Corrupt {
            path: p(),
            detail: "x".into(),
        },
        Error::UnsafeFile {
            path: p(),
            reason: "it is owned by uid 7, not by this process's uid 0 or an allowed one".into(),
        },
        Error::Truncated {
            path: p(),
            len: 1,
            expected: 2,
        },
        Error::OtherBoot { path: p() },
        Error::OtherPidNamespace { path: p() },
        Error::OtherTimeNamespace { path: p() },
        detached_error(dir),
        Error::NotACounter { len: 3 },
        Error::Overflow {
            value: i64::MAX,
            delta: 1,
        },
        Error::InvalidArgument("x".into()),
        Error::NoSpace {
            mount: "/dev/shm".into(),
            requested: 2,
            free: 1,
        },
        Error::Timeout {
            what: "a shard lock",
            waited: Duration::from_millis(500),
        },
        Error::WouldBlock,
        Error::InUse { path: p() },
        Error::NotFound { path: p() },
        Error::ProcUnavailable {
            read: "/proc/self/ns/pid".into(),
        },
        Error::Io(std::io::Error::from_raw_os_error(libc::EACCES)),
    ]
}

#[test]
fn every_error_variant_has_its_own_error_status() {
    let dir = TempDir::new("variants");
    let errors = every_error(&dir);
    let mut seen = HashSet::new();
    let boundary = [LARDER_E_NULL, LARDER_E_INTERNAL, LARDER_E_WRONG_THREAD];
    for e in errors {
        let s = status_of(&e);
        assert!(s >= 100, "{e:?} maps to {s}, not an error status");
        assert!(
            !boundary.contains(&s),
            "{e:?} maps to a boundary status {s}"
        );
        assert_ne!(s, LARDER_E_UNSUPPORTED, "{e:?} is unnamed");
        assert!(
            seen.insert(s),
            "{e:?} shares status {s} with another variant"
        );
        assert!(ALL.iter().any(|&(c, _)| c == s), "{s} is not in the header");
        // Failure::Core reports the same status: one mapping everywhere.
        assert_eq!(Failure::Core(e).status(), s);
    }
    // Every error status but the boundary's own and the reserved one belongs to exactly
    // one variant.
    let expected: HashSet<Status> = ALL
        .iter()
        .map(|&(c, _)| c)
        .filter(|&c| c >= 100 && !boundary.contains(&c) && c != LARDER_E_UNSUPPORTED)
        .collect();
    assert_eq!(seen, expected);
}

#[test]
fn boundary_failures_have_their_statuses() {
    assert_eq!(Failure::Null("key").status(), LARDER_E_NULL);
    assert_eq!(Failure::WrongThread.status(), LARDER_E_WRONG_THREAD);
    assert!(Failure::Null("key").message().contains("key"));
}

#[test]
fn strerror_is_never_null_nor_empty() {
    let unknown = status::strerror(-1).to_bytes();
    let mut values: Vec<c_int> = (-300..300).collect();
    values.extend([c_int::MIN, c_int::MAX, 99, 127, 1000]);
    for s in values {
        let p = larder_strerror(s);
        assert!(!p.is_null());
        // SAFETY: a static, NUL-terminated string from the library.
        let text = unsafe { CStr::from_ptr(p) }.to_bytes();
        assert!(!text.is_empty(), "empty text for {s}");
        let known = ALL.iter().any(|&(c, _)| c == s);
        assert_eq!(text != unknown, known, "status {s}");
    }
    // Every known status has its own text.
    let texts: HashSet<&[u8]> = ALL
        .iter()
        .map(|&(c, _)| status::strerror(c).to_bytes())
        .collect();
    assert_eq!(texts.len(), ALL.len());
}

/// The header's enum, as `name -> value`.
fn header_enum() -> BTreeMap<String, Status> {
    let h =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/include/larder.h")).unwrap();
    let body = h
        .split_once("typedef enum larder_status {")
        .unwrap()
        .1
        .split_once("} larder_status;")
        .unwrap()
        .0;
    let mut out = BTreeMap::new();
    for line in body.lines() {
        let code = line
            .split("/*")
            .next()
            .unwrap()
            .trim()
            .trim_end_matches(',');
        if let Some((name, value)) = code.split_once('=') {
            out.insert(name.trim().to_string(), value.trim().parse().unwrap());
        }
    }
    out
}

#[test]
fn header_enum_matches_the_library_constants() {
    let ours: BTreeMap<String, Status> = ALL.iter().map(|&(c, n)| (n.to_string(), c)).collect();
    assert_eq!(header_enum(), ours);
    let distinct: HashSet<Status> = ALL.iter().map(|&(c, _)| c).collect();
    assert_eq!(distinct.len(), ALL.len());
}

#[test]
fn messages_name_the_file_and_speak_in_c_terms() {
    let dir = TempDir::new("msg");
    let path = dir.0.join("authz");
    let e = Error::NotFound { path: path.clone() };
    let m = Failure::Core(e).message();
    assert!(m.contains(path.to_str().unwrap()), "{m}");
    assert!(m.contains("attach_only"), "{m}");
    assert!(!m.contains("Options::"), "{m}");
    let e = Error::TooLarge {
        what: "value",
        len: 10,
        max: 5,
    };
    assert!(Failure::Core(e).message().contains("max_value_len"));
}

#[test]
fn last_error_is_per_thread_and_never_null() {
    set_last_error("first\0with a nul");
    // SAFETY: the library's NUL-terminated string, read before the next error here.
    let here = unsafe { CStr::from_ptr(larder_last_error()) }
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(here, "first?with a nul");
    let other = std::thread::spawn(|| {
        // SAFETY: as above.
        unsafe { CStr::from_ptr(larder_last_error()) }
            .to_bytes()
            .to_vec()
    })
    .join()
    .unwrap();
    assert!(other.is_empty());
}
