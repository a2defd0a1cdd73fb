//! Sharing boundaries: a file is shared by the processes of one host, one pid namespace
//! and one time namespace; a handle follows its path when the file there is replaced
//! (with the new file's own parameters), unmaps what it left, and fails rather than
//! answer from a file no one else sees; `try_` operations never wait on any of this;
//! the library starts no threads.
//!
//! The namespace tests run a child of this test binary under `unshare`; where the
//! machine refuses that (no privilege, no kernel support), they say so and skip.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use larder::{Cache, Error, Options};

mod common;
use common::{child_role, deadline_in, poll_until, self_command, Children, TempCache};

/// Exit codes of the namespace children.
const EXIT_REFUSED: i32 = 10;
const EXIT_ATTACHED: i32 = 11;
const EXIT_OTHER_ERROR: i32 = 12;

/// A test child's job, chosen by its role.
fn child_main(role: &str) -> ! {
    let path = std::env::var("LARDER_TEST_PATH").expect("child needs LARDER_TEST_PATH");
    let code = match role {
        // Attaches to the parent's file from inside another namespace.
        "attach-pid" | "attach-time" => match Cache::open(&path) {
            Ok(_) => EXIT_ATTACHED,
            Err(e @ Error::OtherPidNamespace { .. }) if role == "attach-pid" => {
                let text = e.to_string();
                assert!(text.contains("--pid=container:"), "{text}");
                assert!(text.contains("shareProcessNamespace"), "{text}");
                EXIT_REFUSED
            }
            Err(Error::OtherTimeNamespace { .. }) if role == "attach-time" => EXIT_REFUSED,
            Err(e) => {
                eprintln!("attach: {e}");
                EXIT_OTHER_ERROR
            }
        },
        // Creates a file inside a time namespace and stores a session in it.
        "create-time" => {
            let c = Options::new()
                .capacity(4 << 20)
                .open(&path)
                .expect("create in the namespace");
            c.set(b"session", b"alice", Some(Duration::from_secs(60)))
                .expect("set");
            0
        }
        // Hides /proc (a tmpfs over it, in this child's own mount namespace), then
        // creates a cache and attaches to the parent's: each is refused with the error
        // that names /proc; never a bare I/O error or a false OtherBoot.
        "no-proc" => {
            // SAFETY: mount(2) with valid NUL-terminated strings and no data; it changes
            // only this process's private mount namespace (made by `unshare --mount`).
            let rc = unsafe {
                libc::mount(
                    c"none".as_ptr(),
                    c"/proc".as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    std::ptr::null(),
                )
            };
            if rc != 0 {
                eprintln!(
                    "mount tmpfs over /proc: {}",
                    std::io::Error::last_os_error()
                );
                std::process::exit(EXIT_OTHER_ERROR);
            }
            assert!(!Path::new("/proc/self").exists(), "/proc is still there");
            let fresh = format!("{path}-fresh");
            let results = [
                (
                    "create",
                    Options::new().capacity(4 << 20).open(&fresh).map(drop),
                ),
                ("attach", Cache::open(&path).map(drop)),
            ];
            let mut code = EXIT_REFUSED;
            for (what, r) in results {
                match r {
                    Err(e @ Error::ProcUnavailable { .. }) => {
                        let text = e.to_string();
                        assert!(text.contains("mount /proc"), "{text}");
                    }
                    other => {
                        eprintln!("{what} without /proc: {other:?}");
                        code = EXIT_OTHER_ERROR;
                    }
                }
            }
            assert!(
                !Path::new(&fresh).exists(),
                "a refused creation left a file"
            );
            code
        }
        // Counts this process's threads before and after using a cache.
        "threads" => {
            let before = threads();
            let c = Options::new().capacity(4 << 20).open(&path).expect("open");
            c.set(b"k", b"v", None).expect("set");
            assert_eq!(c.get(b"k").expect("get"), Some(b"v".to_vec()));
            assert_eq!(c.try_get(b"k").expect("try_get"), Some(b"v".to_vec()));
            c.get_or_insert_with(b"f", None, || Ok::<_, Error>(b"x".to_vec()))
                .expect("fill");
            let s = c.stats();
            assert!(s.hits >= 2, "{s:?}");
            c.verify().expect("verify");
            let during = threads();
            drop(c);
            let after = threads();
            if before == during && during == after {
                0
            } else {
                eprintln!("threads: {before:?} before, {during:?} while open, {after:?} after");
                1
            }
        }
        other => panic!("unknown role {other}"),
    };
    std::process::exit(code)
}

/// The names of this process's threads.
fn threads() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/proc/self/task")
        .expect("list threads")
        .map(|e| {
            let p = e.expect("task").path().join("comm");
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .trim()
                .to_string()
        })
        .collect();
    names.sort();
    names
}

/// Runs this test binary as `role` under `unshare ARGS`; `None` (with the reason
/// printed) if this machine cannot make the namespace.
fn run_in_namespace(test: &str, role: &str, unshare: &[&str], path: &Path) -> Option<i32> {
    let probe = Command::new("unshare")
        .args(unshare)
        .arg("true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => {
            eprintln!(
                "skipping {test}: `unshare {}` is refused here: {}",
                unshare.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Err(e) => {
            eprintln!("skipping {test}: cannot run unshare: {e}");
            return None;
        }
    }
    let inner = self_command(test, role);
    let mut cmd = Command::new("unshare");
    cmd.args(unshare).arg("--").arg(inner.get_program());
    cmd.args(inner.get_args());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.env("LARDER_TEST_PATH", path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let mut kids = Children::new();
    let i = kids.spawn(&mut cmd);
    let status = kids.wait_or_fail(i, deadline_in(60), role);
    Some(
        status
            .code()
            .unwrap_or_else(|| panic!("{role} child died of signal {:?}", status.signal())),
    )
}

#[test]
fn a_process_of_another_pid_namespace_is_refused() {
    if let Some(role) = child_role() {
        child_main(&role);
    }
    let t = TempCache::new("pidns");
    let c = t.open();
    c.set(b"k", b"v", None).expect("set");
    let Some(code) = run_in_namespace(
        "a_process_of_another_pid_namespace_is_refused",
        "attach-pid",
        &["--pid", "--fork"],
        &t.path,
    ) else {
        return;
    };
    assert_eq!(
        code, EXIT_REFUSED,
        "a process of another pid namespace was not refused with OtherPidNamespace"
    );
    // The refusal changed nothing.
    assert_eq!(c.get(b"k").expect("get"), Some(b"v".to_vec()));
    assert!(c.verify().expect("verify").is_clean());
}

#[test]
fn a_process_of_another_time_namespace_is_refused() {
    if let Some(role) = child_role() {
        child_main(&role);
    }
    let t = TempCache::new("timens");
    let c = t.open();
    c.set(b"session", b"host", Some(Duration::from_secs(60)))
        .expect("set");
    let Some(code) = run_in_namespace(
        "a_process_of_another_time_namespace_is_refused",
        "attach-time",
        &["--time", "--monotonic=86400", "--fork"],
        &t.path,
    ) else {
        return;
    };
    assert_eq!(
        code, EXIT_REFUSED,
        "a process whose monotonic clock is a day ahead was not refused"
    );
    assert_eq!(c.get(b"session").expect("get"), Some(b"host".to_vec()));
}

#[test]
fn a_file_made_in_another_time_namespace_is_refused_here() {
    if let Some(role) = child_role() {
        child_main(&role);
    }
    let t = TempCache::new("timens-create");
    let Some(code) = run_in_namespace(
        "a_file_made_in_another_time_namespace_is_refused_here",
        "create-time",
        &["--time", "--monotonic=86400", "--fork"],
        &t.path,
    ) else {
        return;
    };
    assert_eq!(code, 0, "the child could not create its cache");
    match Cache::open(t.name()) {
        Err(Error::OtherTimeNamespace { path }) => assert_eq!(path, t.path),
        Ok(c) => panic!(
            "attached to a file whose TTLs are a day off (session: {:?})",
            c.get(b"session")
        ),
        Err(e) => panic!("expected OtherTimeNamespace, got {e}"),
    }
}

#[test]
fn a_process_using_the_cache_has_only_the_threads_it_started() {
    if let Some(role) = child_role() {
        child_main(&role);
    }
    let t = TempCache::new("threads");
    let mut cmd = self_command(
        "a_process_using_the_cache_has_only_the_threads_it_started",
        "threads",
    );
    cmd.env("LARDER_TEST_PATH", &t.path)
        .stderr(Stdio::inherit());
    let mut kids = Children::new();
    let i = kids.spawn(&mut cmd);
    let status = kids.wait_or_fail(i, deadline_in(60), "threads");
    assert_eq!(
        status.code(),
        Some(0),
        "the cache started threads: {status:?}"
    );
}

/// Where /proc is not mounted (minimal containers, sandboxes), larder cannot read the
/// boot id or the namespaces that make sharing safe: creating and attaching are refused
/// with an error that names /proc, never a bare I/O error or a false `OtherBoot` (whose
/// advice, a repair or a removal, would split the pool).
#[test]
fn without_proc_opens_are_refused_naming_proc() {
    if let Some(role) = child_role() {
        child_main(&role);
    }
    let t = TempCache::new("noproc");
    let c = t.open();
    c.set(b"k", b"v", None).expect("set");
    let Some(code) = run_in_namespace(
        "without_proc_opens_are_refused_naming_proc",
        "no-proc",
        &["--mount", "--fork"],
        &t.path,
    ) else {
        return;
    };
    assert_eq!(
        code, EXIT_REFUSED,
        "without /proc, an open failed with an error that does not name /proc"
    );
    // The refusal changed nothing.
    assert_eq!(c.get(b"k").expect("get"), Some(b"v".to_vec()));
    assert!(c.verify().expect("verify").is_clean());
}

/// How long a handle may take to notice a replaced file: its check period is 250 ms.
fn notice_deadline() -> Instant {
    deadline_in(10)
}

#[test]
fn a_handle_follows_a_replacement_with_other_parameters() {
    let t = TempCache::new("replace-params");
    let old = t.open();
    old.set(b"token", b"valid", None).expect("set");
    Cache::unlink(t.name()).expect("unlink");
    let fresh = t
        .options()
        .capacity(8 << 20)
        .max_value_len(2048)
        .open(t.name())
        .expect("re-create with another capacity");
    // The revocation happens in the new file (where the token is not even present).
    assert!(!fresh.remove(b"token").expect("revoke"));
    fresh.set(b"marker", b"new", None).expect("set");
    let followed = poll_until(notice_deadline(), || {
        old.get(b"marker").expect("get") == Some(b"new".to_vec())
    });
    assert!(followed, "the old handle never moved to the new file");
    assert_eq!(
        old.limits().capacity,
        8 << 20,
        "the new file's own parameters"
    );
    for _ in 0..100 {
        assert_eq!(
            old.get(b"token").expect("get"),
            None,
            "a revoked token served"
        );
    }
    old.set(b"from-old", b"1", None).expect("set");
    assert_eq!(fresh.get(b"from-old").expect("get"), Some(b"1".to_vec()));
}

#[test]
fn a_handle_that_cannot_attach_fails_instead_of_answering() {
    let t = TempCache::new("replace-junk");
    let old = t.open();
    old.set(b"token", b"valid", None).expect("set");
    Cache::unlink(t.name()).expect("unlink");
    std::fs::write(&t.path, vec![0x55u8; 8192]).expect("write a file that is no cache");
    let mut last = None;
    let failed = poll_until(notice_deadline(), || match old.get(b"token") {
        Err(Error::Detached { path, cause, .. }) => {
            last = Some((path, cause));
            true
        }
        Ok(Some(_)) => false,
        other => panic!("expected the value or Detached, got {other:?}"),
    });
    assert!(
        failed,
        "the handle kept answering from a file nobody else sees"
    );
    let (path, cause) = last.expect("detached");
    assert_eq!(path, t.path);
    assert!(cause.contains("not a larder cache"), "{cause}");
    // Every operation fails while detached, not only gets.
    assert!(matches!(
        old.set(b"k", b"v", None),
        Err(Error::Detached { .. })
    ));
    assert!(matches!(old.try_get(b"token"), Err(Error::Detached { .. })));
    // Once the path is usable again, the handle recovers on its own.
    std::fs::remove_file(&t.path).expect("remove the junk");
    let back = poll_until(notice_deadline(), || old.get(b"token").is_ok());
    assert!(back, "the handle did not attach again");
    assert_eq!(old.get(b"token").expect("get"), None, "a new, empty file");
    assert!(t.path.exists(), "the handle re-created its file");
}

/// Distinct inodes of this process's mappings of files in `dir`: by the file's name, or
/// (a file created unnamed with `O_TMPFILE`, then removed) as `dir/#<inode> (deleted)`.
fn mapped_inodes(dir: &Path) -> Vec<u64> {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("maps");
    let want = format!("{}/", dir.to_str().expect("utf-8"));
    let mut inodes: Vec<u64> = maps
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 6 && f[5].starts_with(&want)).then(|| f[4].parse().ok())?
        })
        .collect();
    inodes.sort_unstable();
    inodes.dedup();
    inodes
}

#[test]
fn replaced_files_are_unmapped_once_no_operation_is_inside() {
    use std::os::unix::fs::MetadataExt;
    let t = TempCache::new("unmap");
    let h = t.open();
    h.set(b"k", b"v", None).expect("set");
    for round in 0..10u64 {
        Cache::unlink(t.name()).expect("unlink");
        let marker = round.to_string().into_bytes();
        {
            let creator = t.open();
            creator.set(b"round", &marker, None).expect("set");
        }
        let followed = poll_until(notice_deadline(), || {
            h.get(b"round").expect("get").as_deref() == Some(&marker[..])
        });
        assert!(followed, "round {round}: the handle did not follow");
    }
    let current = std::fs::metadata(&t.path).expect("stat").ino();
    let mut seen = Vec::new();
    let unmapped = poll_until(notice_deadline(), || {
        h.get(b"k").expect("get");
        seen = mapped_inodes(&t.dir);
        seen == [current]
    });
    assert!(
        unmapped,
        "after 10 replacements the handle still maps {} files ({seen:?}; current {current})",
        seen.len()
    );
}

#[test]
fn try_operations_never_wait_for_a_replacements_file_lock() {
    let t = TempCache::new("try-flock");
    let opts = t.options().lock_timeout(Duration::from_secs(5));
    let h = opts.open(t.name()).expect("open");
    h.set(b"k", b"v", None).expect("set");
    Cache::unlink(t.name()).expect("unlink");
    drop(t.open());
    // A repair in progress on the replacement: its file lock held exclusively.
    let f = std::fs::File::open(&t.path).expect("open the replacement");
    {
        use std::os::fd::AsRawFd;
        // SAFETY: flock(2) on a descriptor this test owns; no memory effects.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
    }
    let mut slowest = Duration::ZERO;
    let blocked = poll_until(notice_deadline(), || {
        let started = Instant::now();
        let r = h.try_get(b"k");
        slowest = slowest.max(started.elapsed());
        match r {
            Err(Error::WouldBlock) => true,
            Ok(_) => false,
            Err(e) => panic!("try_get: {e}"),
        }
    });
    assert!(blocked, "try_get never reported the locked replacement");
    assert!(
        slowest < Duration::from_secs(1),
        "a try_get waited {slowest:?} (the lock timeout is 5 s)"
    );
    assert!(matches!(
        h.try_set(b"k", b"w", None),
        Err(Error::WouldBlock)
    ));
    drop(f);
    let moved = poll_until(notice_deadline(), || matches!(h.try_get(b"k"), Ok(None)));
    assert!(
        moved,
        "try_get did not move to the replacement once it was free"
    );
}

#[test]
fn try_operations_never_create_a_removed_file() {
    let t = TempCache::new("try-create");
    let h = t.open();
    h.set(b"k", b"v", None).expect("set");
    Cache::unlink(t.name()).expect("unlink");
    let blocked = poll_until(notice_deadline(), || match h.try_get(b"k") {
        Err(Error::WouldBlock) => true,
        Ok(_) => false,
        Err(e) => panic!("try_get: {e}"),
    });
    assert!(blocked, "try_get kept answering from the removed file");
    assert!(!t.path.exists(), "a try_ operation created the file");
    // A blocking operation re-creates it.
    assert_eq!(h.get(b"k").expect("get"), None);
    assert!(t.path.exists());
}
