//! The file's lifecycle and the table's everyday semantics: race-free creation by
//! threads and processes, a creator killed mid-creation, the mode, removal and
//! replacement while in use, reopening, statistics, iteration, TTLs, `touch`,
//! `insert_if_absent`, `clear`, lock-free read hits, and 2 MiB pages on a tmpfs that
//! gives them.
//!
//! Multi-process tests re-execute this test binary (`--exact child_process_entry`, see
//! `common::self_command`), the environment naming the child's role. Every wait has a
//! deadline, and every child is killed and reaped on drop, also when the test panics.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Barrier;
use std::time::{Duration, Instant};

mod common;
use common::{child_env, poll_until, s, small_options, ChildGuard, TempCache};
use larder::{Cache, Error, Mismatch, Opened, Options, StaleValue};

const CHILD_PATH: &str = "LARDER_LIFECYCLE_PATH";
const CHILD_SIG: &str = "LARDER_LIFECYCLE_SIG";
const CHILD_ID: &str = "LARDER_LIFECYCLE_ID";

/// Generous: the machine may be busy with other tests.
const DEADLINE: Duration = Duration::from_secs(60);
/// How long a handle may take to notice that its file was removed or replaced (it checks
/// every 250 ms).
const REATTACH_DEADLINE: Duration = Duration::from_secs(10);

const THREADS: usize = 8;
const PROCS: usize = 4;

// ----- helpers -----------------------------------------------------------------------

/// Polls `f` every few milliseconds until it returns `Some`, or panics at the deadline.
fn poll<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < end, "{what}: not within {deadline:?}");
        std::thread::sleep(Duration::from_millis(3)); // poll interval; the deadline is checked in this loop
    }
}

fn wait_for_file(p: &Path, deadline: Duration) {
    poll(&format!("{} to appear", p.display()), deadline, || {
        p.exists().then_some(())
    });
}

fn touch_file(p: &Path) {
    std::fs::write(p, b"").expect("signal file");
}

/// A helper child playing `role`, its output logged in `log_dir`.
fn spawn_child(log_dir: &Path, role: &str, id: usize, envs: &[(&str, &str)]) -> ChildGuard {
    let mut cmd = common::self_command("child_process_entry", role);
    cmd.env(CHILD_ID, id.to_string()).envs(envs.iter().copied());
    ChildGuard::spawn_logged(&mut cmd, log_dir.join(format!("child-{role}-{id}.log")))
}

/// Waits for a helper child to exit; panics with its log if it does not in time.
fn wait_exit(child: &mut ChildGuard) -> ExitStatus {
    child.wait_or_fail(Instant::now() + DEADLINE, "child")
}

fn all_keys() -> Vec<String> {
    (0..THREADS)
        .map(|i| format!("thread-{i}"))
        .chain((0..PROCS).map(|i| format!("proc-{i}")))
        .collect()
}

/// Entry point of helper children (a no-op when run as an ordinary test).
#[test]
fn child_process_entry() {
    let Some(role) = common::child_role() else {
        return;
    };
    let path = child_env(CHILD_PATH);
    match role.as_str() {
        // Opens the missing cache at the same moment as the parent's threads, writes its
        // key, then (when told) checks that it sees every participant's key.
        "racer" => {
            let sig = PathBuf::from(child_env(CHILD_SIG));
            let id = child_env(CHILD_ID);
            touch_file(&sig.join(format!("ready-{id}")));
            let go = sig.join("go");
            let end = Instant::now() + DEADLINE;
            while !go.exists() {
                assert!(Instant::now() < end, "no go signal");
                std::thread::sleep(Duration::from_micros(100)); // poll interval; the deadline is checked in this loop
            }
            let c = race_options().open(&path).expect("child open");
            let key = format!("proc-{id}");
            c.set(key.as_bytes(), key.as_bytes(), None)
                .expect("child set");
            touch_file(&sig.join(format!("wrote-{id}")));
            wait_for_file(&sig.join("check"), DEADLINE);
            for k in all_keys() {
                assert_eq!(
                    c.get(k.as_bytes()).expect("child get"),
                    Some(k.clone().into_bytes()),
                    "child {id} does not see {k}"
                );
            }
        }
        // Creates the cache; a crash point configured by the parent ends it mid-creation.
        "creator" => {
            let _ = race_options().open(&path);
            panic!("the crash point did not end the creator");
        }
        // A worker of one version of a deploy (`old` or `new` options) starting at the
        // same moment as the others: opens, says how (`opened-<id>`), writes its key,
        // then (when told) checks that it sees every worker's key with the new
        // version's parameters.
        "deployer" => {
            let sig = PathBuf::from(child_env(CHILD_SIG));
            let id = child_env(CHILD_ID);
            let version = child_env(CHILD_VERSION);
            let deploy = Deploy::from_name(&child_env(CHILD_DEPLOY));
            touch_file(&sig.join(format!("ready-{id}")));
            wait_for_file(&sig.join("go"), DEADLINE);
            let c = deploy
                .options(&version)
                .open(&path)
                .unwrap_or_else(|e| panic!("{version} worker {id}: open: {e}"));
            std::fs::write(sig.join(format!("opened-{id}")), opened(&c)).expect("write");
            let key = format!("deployer-{id}");
            c.set(key.as_bytes(), b"1", None).expect("set");
            touch_file(&sig.join(format!("wrote-{id}")));
            wait_for_file(&sig.join("check"), DEADLINE);
            let n: usize = child_env(CHILD_COUNT).parse().expect("count");
            // A worker that attached to the old file follows the replacement within a
            // check period; the keys written to the old file before it was replaced are
            // gone with it, so each worker writes its key again until all are seen.
            poll("every worker's key", REATTACH_DEADLINE, || {
                c.set(key.as_bytes(), b"1", None).expect("set");
                (0..n)
                    .all(|i| {
                        c.get(format!("deployer-{i}").as_bytes())
                            .expect("get")
                            .is_some()
                    })
                    .then_some(())
            });
            let l = c.limits();
            assert_eq!(
                (l.capacity, l.generation),
                deploy.new,
                "{version} worker {id}"
            );
        }
        // Creates caches under a restrictive umask with the modes the parent expects.
        "umask" => {
            // SAFETY: umask(2) has no memory effects; this process is the child alone.
            unsafe { libc::umask(0o077) };
            let dir = PathBuf::from(&path);
            for (name, mode) in [("m600", None), ("m640", Some(0o640)), ("m660", Some(0o660))] {
                let mut opts = race_options();
                if let Some(m) = mode {
                    opts = opts.mode(m);
                }
                opts.open(s(&dir.join(name))).expect("create");
            }
        }
        // A worker of a multi-uid pool: drops to the uid it is given (its id), with the
        // pool's group, attaches to the master's file with the options a worker has
        // (the same parameters, its default mode, the master's uid allowed), then
        // answers the parent's pings until told to stop: it copies `ping` to
        // `pong-<uid>`, so the parent sees which file it is on. A `Detached` error is
        // written to `detached-<uid>`.
        "pool-worker" => {
            let uid: u32 = child_env(CHILD_ID).parse().expect("uid");
            become_user(uid, POOL_GROUP);
            let sig = PathBuf::from(child_env(CHILD_SIG));
            let c = pool_options()
                .allow_uid(0)
                .open(&path)
                .unwrap_or_else(|e| panic!("worker {uid}: open: {e}"));
            touch_file(&sig.join(format!("ready-{uid}")));
            let stop = sig.join("stop");
            let end = Instant::now() + DEADLINE;
            let pong = format!("pong-{uid}");
            while !stop.exists() {
                assert!(Instant::now() < end, "worker {uid}: never told to stop");
                match c.get(b"ping") {
                    Ok(Some(v)) => match c.set(pong.as_bytes(), &v, None) {
                        Ok(()) | Err(Error::Detached { .. }) => {}
                        Err(e) => panic!("worker {uid}: set: {e}"),
                    },
                    Ok(None) => {}
                    Err(e @ Error::Detached { .. }) => {
                        let tmp = sig.join(format!(".detached-{uid}"));
                        std::fs::write(&tmp, e.to_string()).expect("write");
                        std::fs::rename(&tmp, sig.join(format!("detached-{uid}"))).expect("rename");
                    }
                    Err(e) => panic!("worker {uid}: get: {e}"),
                }
                // Between pings, wait for the stop signal (bounded, so the next ping is
                // answered within a couple of milliseconds).
                poll_until(Instant::now() + Duration::from_millis(2), || stop.exists());
            }
        }
        other => panic!("unknown child role {other}"),
    }
}

/// The group a multi-uid pool shares its file through, and its workers' uids.
const POOL_GROUP: u32 = 4240;
const POOL_UIDS: [u32; 2] = [4242, 4243];

/// The creation parameters of the multi-uid pool's file, as master and workers give
/// them (a worker leaves the mode at its default).
fn pool_options() -> Options {
    race_options()
}

/// Drops this process's privileges to `uid`, with `group` as its one supplementary group
/// (and its primary group numbered as its uid, so group access comes from `group`).
fn become_user(uid: u32, group: u32) {
    // SAFETY: setgroups(2) reads one gid from a valid pointer; it changes only this
    // process's credentials (glibc applies it to every thread).
    let rc = unsafe { libc::setgroups(1, &group) };
    assert_eq!(rc, 0, "setgroups: {}", std::io::Error::last_os_error());
    // SAFETY: setgid(2) and setuid(2) take plain integers and change only credentials.
    let rc = unsafe { libc::setgid(uid) };
    assert_eq!(rc, 0, "setgid: {}", std::io::Error::last_os_error());
    // SAFETY: as above.
    let rc = unsafe { libc::setuid(uid) };
    assert_eq!(rc, 0, "setuid: {}", std::io::Error::last_os_error());
}

fn is_root() -> bool {
    // SAFETY: geteuid(2) has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

const CHILD_VERSION: &str = "LARDER_LIFECYCLE_VERSION";
const CHILD_COUNT: &str = "LARDER_LIFECYCLE_COUNT";
const CHILD_DEPLOY: &str = "LARDER_LIFECYCLE_DEPLOY";

/// A deploy that changes creation parameters: the old version's and the new one's
/// capacity and generation.
#[derive(Clone, Copy, Debug)]
struct Deploy {
    old: (u64, u64),
    new: (u64, u64),
}

impl Deploy {
    /// A growth: a larger file, the generation left as it was.
    const GROW: Deploy = Deploy {
        old: (2 << 20, 0),
        new: (3 << 20, 0),
    };
    /// A shrink, which the new version marks with a higher generation.
    const SHRINK: Deploy = Deploy {
        old: (3 << 20, 4),
        new: (2 << 20, 5),
    };

    fn name(self) -> &'static str {
        if self.new.0 > self.old.0 {
            "grow"
        } else {
            "shrink"
        }
    }

    fn from_name(name: &str) -> Deploy {
        match name {
            "grow" => Deploy::GROW,
            "shrink" => Deploy::SHRINK,
            other => panic!("unknown deploy {other}"),
        }
    }

    /// The options of a version's workers: their own parameters; a file of other
    /// parameters is replaced if it is older, attached to otherwise.
    fn options(self, version: &str) -> Options {
        let (capacity, generation) = match version {
            "old" => self.old,
            "new" => self.new,
            other => panic!("unknown version {other}"),
        };
        small_options()
            .capacity(capacity)
            .generation(generation)
            .on_mismatch(Mismatch::Replace)
    }
}

/// How the open that made `c` went, in a word.
fn opened(c: &Cache) -> &'static str {
    match c.opened() {
        Opened::Created => "created",
        Opened::Attached => "attached",
        Opened::Replaced => "replaced",
        other => panic!("unknown {other:?}"),
    }
}

/// Options shared by the racing participants (a small file, so creation is quick).
fn race_options() -> Options {
    small_options().capacity(2 << 20)
}

/// `THREADS` threads that pass `barrier` together, then each open `name` and set its key
/// `thread-{i}`; `start` runs once they are all spawned (it may be the barrier's last
/// party). Returns their handles; a failed open names `what` and the thread.
fn race_threads(name: &str, barrier: &Barrier, what: &str, start: impl FnOnce()) -> Vec<Cache> {
    std::thread::scope(|scope| {
        let joins: Vec<_> = (0..THREADS)
            .map(|i| {
                scope.spawn(move || {
                    barrier.wait();
                    let c = race_options()
                        .open(name)
                        .unwrap_or_else(|e| panic!("{what}thread {i}: {e}"));
                    let key = format!("thread-{i}");
                    c.set(key.as_bytes(), key.as_bytes(), None).expect("set");
                    c
                })
            })
            .collect();
        start();
        joins
            .into_iter()
            .map(|j| j.join().expect("thread"))
            .collect()
    })
}

// ----- creation ----------------------------------------------------------------------

/// Threads of one process race to create the same missing file, many times over: all
/// succeed, and all share one file.
#[test]
fn threads_racing_to_create_all_attach_to_one_file() {
    for round in 0..10 {
        let t = TempCache::new("life-race-threads");
        let barrier = Barrier::new(THREADS);
        let handles = race_threads(t.name(), &barrier, &format!("round {round} "), || {});
        for c in &handles {
            for i in 0..THREADS {
                let key = format!("thread-{i}");
                assert_eq!(
                    c.get(key.as_bytes()).expect("get"),
                    Some(key.clone().into_bytes()),
                    "round {round}: a handle does not see {key}"
                );
            }
        }
        let names: Vec<_> = std::fs::read_dir(&t.dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["cache"], "round {round}: stray files");
        assert!(handles[0].verify().expect("verify").is_clean());
    }
}

/// 8 threads and 4 child processes open the same missing path at once: all succeed and
/// all see one file (a key set by any one is a hit for all).
#[test]
fn threads_and_processes_racing_to_create_all_share_one_file() {
    let t = TempCache::new("life-race-procs");
    let sig = t.dir.join("sig");
    std::fs::create_dir(&sig).expect("sig dir");
    let path = t.path.clone();
    let mut children: Vec<ChildGuard> = (0..PROCS)
        .map(|i| {
            spawn_child(
                &sig,
                "racer",
                i,
                &[(CHILD_PATH, s(&path)), (CHILD_SIG, s(&sig))],
            )
        })
        .collect();
    for i in 0..PROCS {
        wait_for_file(&sig.join(format!("ready-{i}")), DEADLINE);
    }
    assert!(!path.exists());
    let barrier = Barrier::new(THREADS + 1);
    let handles = race_threads(t.name(), &barrier, "", || {
        touch_file(&sig.join("go"));
        barrier.wait();
    });
    for i in 0..PROCS {
        wait_for_file(&sig.join(format!("wrote-{i}")), DEADLINE);
    }
    for c in &handles {
        for k in all_keys() {
            assert_eq!(
                c.get(k.as_bytes()).expect("get"),
                Some(k.clone().into_bytes()),
                "a thread's handle does not see {k}"
            );
        }
    }
    touch_file(&sig.join("check"));
    for (i, child) in children.iter_mut().enumerate() {
        let st = wait_exit(child);
        assert!(st.success(), "child {i}: {st:?}\n{}", child.log());
    }
    let mut names: Vec<_> = std::fs::read_dir(&t.dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["cache", "sig"], "stray files");
    let s = handles[0].stats();
    assert_eq!(s.entries, (THREADS + PROCS) as u64);
    assert_eq!(s.inserts, (THREADS + PROCS) as u64);
    assert!(handles[0].verify().expect("verify").is_clean());
}

/// A creator that dies after building the file but before giving it its name leaves
/// nothing at the path; the next open creates a working cache.
#[cfg(feature = "crash-points")]
#[test]
fn creator_killed_mid_creation_leaves_nothing_behind() {
    use std::os::unix::process::ExitStatusExt;
    for (action, signal) in [("abort", libc::SIGABRT), ("kill", libc::SIGKILL)] {
        let t = TempCache::new("life-creator");
        let logs = t.dir.join("logs");
        std::fs::create_dir(&logs).expect("logs dir");
        let mut child = spawn_child(
            &logs,
            "creator",
            0,
            &[
                (CHILD_PATH, t.name()),
                ("LARDER_CRASH_AT", "create.after_init"),
                ("LARDER_CRASH_ACTION", action),
            ],
        );
        let st = wait_exit(&mut child);
        assert_eq!(
            st.signal(),
            Some(signal),
            "{action}: the creator was not ended by its crash point: {st:?}\n{}",
            child.log()
        );
        assert!(!t.path.exists(), "{action}: a file was left at the path");
        // An unnamed file vanishes with its creator; where O_TMPFILE is unsupported the
        // fallback may leave a `.cache.tmp.*` file, never a cache at the path.
        let stray: Vec<String> = std::fs::read_dir(&t.dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n != "logs" && !n.starts_with(".cache.tmp."))
            .collect();
        assert!(stray.is_empty(), "{action}: stray files {stray:?}");
        let c = race_options()
            .open(t.name())
            .expect("a normal open creates it");
        c.set(b"k", b"v", None).expect("set");
        assert_eq!(c.get(b"k").expect("get"), Some(b"v".to_vec()));
        assert!(c.verify().expect("verify").is_clean());
    }
}

/// The file's mode is exactly what `Options::mode` says, whatever the umask.
#[test]
fn file_mode_is_exactly_the_option_despite_umask() {
    let t = TempCache::new("life-mode");
    let logs = t.dir.join("logs");
    std::fs::create_dir(&logs).expect("logs dir");
    let mut child = spawn_child(&logs, "umask", 0, &[(CHILD_PATH, s(&t.dir))]);
    let st = wait_exit(&mut child);
    assert!(st.success(), "{st:?}\n{}", child.log());
    for (name, mode) in [("m600", 0o600), ("m640", 0o640), ("m660", 0o660)] {
        let meta = std::fs::metadata(t.dir.join(name)).expect("stat");
        assert_eq!(
            meta.permissions().mode() & 0o7777,
            mode,
            "{name} under umask 077"
        );
    }
    // And in this process, under its own umask.
    let c = t.options().mode(0o660).open(t.name()).expect("open");
    let meta = std::fs::metadata(&t.path).expect("stat");
    assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
    drop(c);
}

// ----- removal and replacement -------------------------------------------------------

#[test]
fn unlink_removes_the_file() {
    let t = TempCache::new("life-unlink");
    let c = t.open();
    c.set(b"k", b"v", None).expect("set");
    drop(c);
    Cache::unlink(t.name()).expect("unlink");
    assert!(!t.path.exists());
    match Cache::unlink(t.name()) {
        Err(Error::NotFound { path }) => assert_eq!(path, t.path),
        other => panic!("expected NotFound, got {other:?}"),
    }
    match Cache::open(t.name()) {
        Err(Error::NotFound { .. }) => {}
        other => panic!("expected NotFound, got {other:?}"),
    }
    // A new cache at the name starts empty.
    let c = t.open();
    assert_eq!(c.get(b"k").expect("get"), None);
}

/// Polls until `to` reads what `from` writes under `key` (a new value each try): both
/// handles then map the same file.
fn writes_reach(what: &str, from: &Cache, to: &Cache, key: &[u8]) {
    let mut i = 0u64;
    poll(what, REATTACH_DEADLINE, || {
        i += 1;
        from.set(key, &i.to_le_bytes(), None).expect("set");
        (to.get(key).expect("get") == Some(i.to_le_bytes().to_vec())).then_some(())
    });
}

/// Handles A and B share a file; it is unlinked and B's process opens the name again,
/// creating a new file. A notices and moves to the new file, so A's writes reach B (and
/// B's reach A): the two never split into two caches.
#[test]
fn handles_follow_a_removed_and_recreated_file_together() {
    let t = TempCache::new("life-recreate");
    let a = t.open();
    let b = t.open();
    a.set(b"old", b"1", None).expect("set");
    assert_eq!(b.get(b"old").expect("get"), Some(b"1".to_vec()));
    Cache::unlink(t.name()).expect("unlink");
    let b2 = t.open();
    assert_eq!(b2.get(b"old").expect("get"), None, "a new file");
    let start = Instant::now();
    writes_reach("A's writes reaching the new file", &a, &b2, b"from-a");
    let took = start.elapsed();
    // The old handle B moves too.
    writes_reach("B's old handle reaching the new file", &b, &a, b"from-b");
    b2.set(b"from-b2", b"x", None).expect("set");
    assert_eq!(a.get(b"from-b2").expect("get"), Some(b"x".to_vec()));
    assert_eq!(b.get(b"from-b2").expect("get"), Some(b"x".to_vec()));
    assert_eq!(a.get(b"old").expect("get"), None);
    eprintln!("reattached after {took:?}");
    assert!(b2.verify().expect("verify").is_clean());
}

/// A handle whose file was removed, with nobody recreating it, recreates it itself with
/// its own parameters, so a process opening the name later shares its writes.
#[test]
fn handle_recreates_a_removed_file_with_its_parameters() {
    let t = TempCache::new("life-removed");
    let a = t.options().shards(4).open(t.name()).expect("open");
    a.set(b"k", b"old", None).expect("set");
    Cache::unlink(t.name()).expect("unlink");
    let mut i = 0u64;
    poll("the handle recreating its file", REATTACH_DEADLINE, || {
        i += 1;
        a.set(b"k", &i.to_le_bytes(), None).expect("set");
        t.path.exists().then_some(())
    });
    a.set(b"k", b"new", None).expect("set");
    let b = Cache::open(t.name()).expect("attach");
    assert_eq!(b.limits(), a.limits());
    assert_eq!(b.limits().shards, 4);
    assert_eq!(b.get(b"k").expect("get"), Some(b"new".to_vec()));
}

/// A removed file is created again with its own mode (and owner and group), not the
/// mode of the open that made the handle: a worker that left the mode at its default
/// keeps the pool's group access.
#[test]
fn a_removed_file_is_created_again_with_its_own_mode() {
    use std::os::unix::fs::MetadataExt;
    let t = TempCache::new("life-remode");
    let creator = t.options().mode(0o640).open(t.name()).expect("create");
    let worker = t.open(); // default mode 0600
    drop(creator);
    Cache::unlink(t.name()).expect("unlink");
    poll(
        "the worker creating the file again",
        REATTACH_DEADLINE,
        || {
            worker.set(b"k", b"v", None).expect("set");
            t.path.exists().then_some(())
        },
    );
    let meta = std::fs::metadata(&t.path).expect("stat");
    assert_eq!(meta.mode() & 0o7777, 0o640);
}

/// A root handle on a file of another owner creates it again for that owner (owner,
/// group and mode as they were), so that the owner's processes still accept it.
#[test]
fn a_root_handle_creates_a_removed_file_again_for_its_owner() {
    use std::os::unix::fs::MetadataExt;
    if !is_root() {
        eprintln!("skipped: giving a file another owner needs root");
        return;
    }
    let t = TempCache::new("life-root-owner");
    drop(t.options().mode(0o640).open(t.name()).expect("create"));
    std::os::unix::fs::chown(&t.path, Some(POOL_UIDS[0]), Some(POOL_GROUP)).expect("chown");
    let h = t
        .options()
        .allow_uid(POOL_UIDS[0])
        .open(t.name())
        .expect("open");
    Cache::unlink(t.name()).expect("unlink");
    poll(
        "the root handle creating the file again",
        REATTACH_DEADLINE,
        || {
            h.set(b"k", b"v", None).expect("set");
            t.path.exists().then_some(())
        },
    );
    let meta = std::fs::metadata(&t.path).expect("stat");
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (POOL_UIDS[0], POOL_GROUP, 0o640)
    );
    let other = Options::new()
        .allow_uid(POOL_UIDS[0])
        .attach(t.name())
        .expect("attach");
    assert_eq!(other.get(b"k").expect("get"), Some(b"v".to_vec()));
}

/// A file replaced by another one (renamed over the name) while in use: the handle moves
/// to the replacement.
#[test]
fn handle_follows_a_replaced_file() {
    let t = TempCache::new("life-replace");
    let a = t.open();
    a.set(b"marker", b"original", None).expect("set");
    let other = t.dir.join("other");
    let o = t.options().open(s(&other)).expect("other cache");
    o.set(b"marker", b"replacement", None).expect("set");
    drop(o);
    std::fs::rename(&other, &t.path).expect("rename over");
    poll(
        "the handle moving to the replacement",
        REATTACH_DEADLINE,
        || (a.get(b"marker").expect("get") == Some(b"replacement".to_vec())).then_some(()),
    );
    a.set(b"after", b"1", None).expect("set");
    let b = Cache::open(t.name()).expect("attach");
    assert_eq!(b.get(b"after").expect("get"), Some(b"1".to_vec()));
}

/// How the master gives the pool's file its group.
#[derive(Clone, Copy)]
enum Group {
    AtCreation,
    Chgrp,
}

/// A multi-uid pool as README sets it up: a root master creates the file (mode 0660,
/// the pool's group), workers of two other uids attach to it with the master's uid
/// allowed. Spawned with `tag`'s directory made like /dev/shm (sticky, world-writable);
/// returns the directory of signal files and the workers, once both are attached.
struct Pool {
    t: TempCache,
    sig: PathBuf,
    workers: Vec<ChildGuard>,
}

impl Pool {
    fn start(tag: &str, group: Group) -> (Pool, Cache) {
        let t = TempCache::new(tag);
        std::fs::set_permissions(&t.dir, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        let sig = t.dir.join("sig");
        std::fs::create_dir(&sig).expect("sig dir");
        std::fs::set_permissions(&sig, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        let master = Pool::master(&t, group);
        let workers = POOL_UIDS
            .iter()
            .map(|&uid| {
                spawn_child(
                    &sig,
                    "pool-worker",
                    uid as usize,
                    &[(CHILD_PATH, t.name()), (CHILD_SIG, s(&sig))],
                )
            })
            .collect();
        for uid in POOL_UIDS {
            wait_for_file(&sig.join(format!("ready-{uid}")), DEADLINE);
        }
        (Pool { t, sig, workers }, master)
    }

    /// The master's open: it creates the file (or attaches to it), mode 0660, with the
    /// pool's group: given at creation, or (`Group::Chgrp`) set by `chgrp` afterwards.
    fn master(t: &TempCache, group: Group) -> Cache {
        match group {
            Group::AtCreation => pool_options()
                .mode(0o660)
                .group(POOL_GROUP)
                .open(t.name())
                .expect("master open"),
            Group::Chgrp => {
                let c = pool_options()
                    .mode(0o660)
                    .open(t.name())
                    .expect("master open");
                std::os::unix::fs::chown(&t.path, None, Some(POOL_GROUP)).expect("chgrp");
                c
            }
        }
    }

    /// Polls until every worker answers `token` in the file at the path, where only the
    /// master writes the ping: the master and every worker are on that file. (The
    /// master's handle may itself be creating it again.)
    fn answers(&self, master: &Cache, token: &[u8], what: &str) {
        let mut last = String::new();
        let end = Instant::now() + REATTACH_DEADLINE * 2;
        loop {
            let at_path = Cache::open(self.t.name());
            let all = match (master.set(b"ping", token, None), &at_path) {
                (Ok(()), Ok(probe)) => POOL_UIDS.iter().all(|uid| {
                    probe
                        .get(format!("pong-{uid}").as_bytes())
                        .ok()
                        .flatten()
                        .as_deref()
                        == Some(token)
                }),
                (Err(e), _) => {
                    last = e.to_string();
                    false
                }
                (_, Err(e)) => {
                    last = e.to_string();
                    false
                }
            };
            if all {
                return;
            }
            let detached: Vec<String> = POOL_UIDS
                .iter()
                .filter_map(|uid| {
                    std::fs::read_to_string(self.sig.join(format!("detached-{uid}"))).ok()
                })
                .collect();
            assert!(
                Instant::now() < end,
                "{what}: the pool did not converge on one file (last error: {last:?}; workers: \
                 {detached:?}; file: {:?})",
                std::fs::metadata(&self.t.path).map(|m| {
                    use std::os::unix::fs::MetadataExt;
                    (m.uid(), m.gid(), m.mode() & 0o7777)
                })
            );
            std::thread::sleep(Duration::from_millis(5)); // poll interval; the deadline is checked in this loop
        }
    }

    fn stop(mut self) {
        touch_file(&self.sig.join("stop"));
        for (child, uid) in self.workers.iter_mut().zip(POOL_UIDS) {
            let st = wait_exit(child);
            assert!(st.success(), "worker {uid}: {st:?}\n{}", child.log());
        }
    }
}

/// After `larder rm` (an unlink) of a multi-uid pool's file, the one handle whose uid
/// owned the file (the master's) creates it again as it was: owner, group and mode. The
/// workers of the other uids, which may not create it for the pool, attach to it: the
/// whole pool ends on one file, never one uid working while the others are locked out.
#[test]
fn a_multi_uid_pool_ends_on_one_file_after_removal() {
    if !is_root() {
        eprintln!("skipped: starting workers of other uids needs root");
        return;
    }
    // An operator's chgrp after creation counts: the file is created again with the
    // group it had when it was removed.
    let (pool, master) = Pool::start("life-uids", Group::Chgrp);
    pool.answers(&master, b"before", "before the removal");
    Cache::unlink(pool.t.name()).expect("unlink");
    pool.answers(&master, b"after", "after the removal");
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&pool.t.path).expect("stat");
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o7777),
        (0, POOL_GROUP, 0o660),
        "the file was not created again as it was"
    );
    pool.stop();
}

/// When the owner of a multi-uid pool's file is not there to create it again (a master
/// that does not use the cache), every worker fails alike with `Detached`, saying who
/// must create it; no worker creates a file the others would refuse. Once the master
/// restarts and creates it, the pool ends on that file.
#[test]
fn a_multi_uid_pool_without_its_owner_fails_alike_until_the_owner_creates_the_file() {
    if !is_root() {
        eprintln!("skipped: starting workers of other uids needs root");
        return;
    }
    let (pool, master) = Pool::start("life-uids-owner", Group::AtCreation);
    pool.answers(&master, b"before", "before the removal");
    drop(master);
    Cache::unlink(pool.t.name()).expect("unlink");
    let mut said = Vec::new();
    let end = Instant::now() + REATTACH_DEADLINE;
    while said.len() < POOL_UIDS.len() {
        assert!(
            !pool.t.path.exists(),
            "a worker created the file, owned by {:?}, which the other uids refuse",
            std::fs::metadata(&pool.t.path).map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        );
        said = POOL_UIDS
            .iter()
            .filter_map(|uid| {
                std::fs::read_to_string(pool.sig.join(format!("detached-{uid}"))).ok()
            })
            .filter(|text| text.contains("uid 0"))
            .collect();
        assert!(
            Instant::now() < end,
            "the workers did not all report Detached naming uid 0: {said:?}"
        );
        std::thread::sleep(Duration::from_millis(5)); // poll interval; the deadline is checked in this loop
    }
    for text in &said {
        assert!(text.contains("restart"), "{text}");
    }
    // The master restarts: it creates the file, and the workers attach to it.
    let master = Pool::master(&pool.t, Group::AtCreation);
    pool.answers(&master, b"restarted", "after the master restarted");
    pool.stop();
}

/// A deploy that changes creation parameters, as it happens under a prefork server:
/// the old version's file exists, and workers of the old and the new version start at
/// the same moment, with `Mismatch::Replace`. No worker fails; they all end on one file,
/// with the new version's parameters; and it is replaced exactly once (no flapping
/// between the versions). For a growth, and for a shrink marked by a generation.
#[test]
fn two_versions_of_a_pool_starting_together_end_on_one_file_without_flapping() {
    for deploy in [Deploy::GROW, Deploy::SHRINK] {
        two_versions_start_together(deploy);
    }
}

fn two_versions_start_together(deploy: Deploy) {
    const PER_VERSION: usize = 3;
    let t = TempCache::new("life-deploy");
    let sig = t.dir.join("sig");
    std::fs::create_dir(&sig).expect("sig dir");
    let old = deploy
        .options("old")
        .open(t.name())
        .expect("the old version's file");
    assert_eq!(old.opened(), Opened::Created);
    old.set(b"old", b"1", None).expect("set");
    let n = 2 * PER_VERSION;
    let count = n.to_string();
    let mut children: Vec<ChildGuard> = (0..n)
        .map(|i| {
            let version = if i % 2 == 0 { "old" } else { "new" };
            spawn_child(
                &sig,
                "deployer",
                i,
                &[
                    (CHILD_PATH, t.name()),
                    (CHILD_SIG, s(&sig)),
                    (CHILD_VERSION, version),
                    (CHILD_COUNT, &count),
                    (CHILD_DEPLOY, deploy.name()),
                ],
            )
        })
        .collect();
    for i in 0..n {
        wait_for_file(&sig.join(format!("ready-{i}")), DEADLINE);
    }
    touch_file(&sig.join("go"));
    for (i, child) in children.iter_mut().enumerate() {
        poll(&format!("worker {i} to write its key"), DEADLINE, || {
            if let Some(st) = child.try_status() {
                panic!("worker {i} exited early: {st:?}\n{}", child.log());
            }
            sig.join(format!("wrote-{i}")).exists().then_some(())
        });
    }
    touch_file(&sig.join("check"));
    for (i, child) in children.iter_mut().enumerate() {
        let st = wait_exit(child);
        assert!(st.success(), "worker {i}: {st:?}\n{}", child.log());
    }
    let how: Vec<String> = (0..n)
        .map(|i| std::fs::read_to_string(sig.join(format!("opened-{i}"))).expect("opened"))
        .collect();
    assert_eq!(
        how.iter().filter(|h| *h == "replaced").count(),
        1,
        "{deploy:?}: the file was not replaced exactly once: {how:?}"
    );
    // The old version's first handle followed the replacement too (on its next
    // operation: `limits` alone does not check the path).
    poll(
        "the old handle following the replacement",
        REATTACH_DEADLINE,
        || {
            old.get(b"old").expect("get");
            (old.limits().capacity == deploy.new.0).then_some(())
        },
    );
    let now = Cache::open(t.name()).expect("attach");
    let l = now.limits();
    assert_eq!((l.capacity, l.generation), deploy.new, "{deploy:?}");
    for i in 0..n {
        assert!(now
            .get(format!("deployer-{i}").as_bytes())
            .expect("get")
            .is_some());
    }
    // Nothing left beside it (a replacement is built under no name).
    let mut names: Vec<_> = std::fs::read_dir(&t.dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["cache", "sig"], "{deploy:?}: stray files");
}

/// What an open does with a file of other parameters, by policy: `Fail` refuses,
/// `Attach` uses the file's own, `Replace` replaces only an older file (a lower
/// generation, or at the same generation smaller limits) and attaches to any other;
/// a replacement keeps the file's mode, and a handle on the old file follows it.
#[test]
fn mismatch_policies_attach_or_replace_only_an_older_file() {
    use std::os::unix::fs::MetadataExt;
    let t = TempCache::new("life-mismatch");
    let base = || small_options().capacity(2 << 20).generation(3);
    let first = base().mode(0o640).open(t.name()).expect("create");
    first.set(b"k", b"v", None).expect("set");
    let bigger = || base().capacity(3 << 20);
    assert!(matches!(
        bigger().open(t.name()),
        Err(Error::Incompatible { .. })
    ));
    let attached = bigger()
        .on_mismatch(Mismatch::Attach)
        .open(t.name())
        .expect("attach");
    assert_eq!(attached.opened(), Opened::Attached);
    assert_eq!(attached.limits().capacity, 2 << 20, "the file's own");
    // Same generation, limits not all at least as large: not older, attached to.
    let mixed = base()
        .capacity(3 << 20)
        .max_value_len(512)
        .on_mismatch(Mismatch::Replace)
        .open(t.name())
        .expect("open");
    assert_eq!(mixed.opened(), Opened::Attached);
    // A lower generation never replaces, even with larger limits.
    let stale = bigger()
        .generation(2)
        .on_mismatch(Mismatch::Replace)
        .open(t.name())
        .expect("open");
    assert_eq!(stale.opened(), Opened::Attached);
    assert_eq!(stale.limits().capacity, 2 << 20);
    // Larger limits at the same generation replace it, keeping its mode.
    let grown = bigger()
        .on_mismatch(Mismatch::Replace)
        .open(t.name())
        .expect("replace");
    assert_eq!(grown.opened(), Opened::Replaced);
    let meta = std::fs::metadata(&t.path).expect("stat");
    assert_eq!(meta.mode() & 0o7777, 0o640);
    assert_eq!(grown.get(b"k").expect("get"), None, "a new, empty file");
    grown.set(b"new", b"1", None).expect("set");
    poll(
        "the first handle following the replacement",
        REATTACH_DEADLINE,
        || (first.get(b"new").expect("get") == Some(b"1".to_vec())).then_some(()),
    );
    assert_eq!(first.limits().capacity, 3 << 20);
    // And back down only with a higher generation.
    let back = base()
        .on_mismatch(Mismatch::Replace)
        .open(t.name())
        .expect("open");
    assert_eq!(back.opened(), Opened::Attached);
    let shrunk = base()
        .generation(4)
        .on_mismatch(Mismatch::Replace)
        .open(t.name())
        .expect("replace");
    assert_eq!(shrunk.opened(), Opened::Replaced);
    let l = shrunk.limits();
    assert_eq!((l.capacity, l.generation), (2 << 20, 4));
    // A file removed and created again by a handle keeps its generation.
    drop((first, attached, mixed, stale, grown, back));
    Cache::unlink(t.name()).expect("unlink");
    poll(
        "the handle creating the file again",
        REATTACH_DEADLINE,
        || {
            shrunk.set(b"k", b"v", None).expect("set");
            t.path.exists().then_some(())
        },
    );
    assert_eq!(
        Cache::open(t.name()).expect("attach").limits().generation,
        4
    );
}

// ----- reopening ---------------------------------------------------------------------

#[test]
fn reopen_uses_the_files_parameters() {
    let t = TempCache::new("life-reopen");
    let creator = Options::new()
        .capacity(2 << 20)
        .max_key_len(100)
        .max_value_len(2000)
        .shards(8)
        .open(t.name())
        .expect("create");
    let l = creator.limits();
    assert_eq!(
        (l.capacity, l.max_key_len, l.max_value_len, l.shards),
        (2 << 20, 100, 2000, 8)
    );
    creator.set(b"k", b"v", None).expect("set");
    let reopened = Cache::open(t.name()).expect("Cache::open");
    assert_eq!(reopened.limits(), creator.limits());
    assert_eq!(reopened.shard_count(), 8);
    assert_eq!(reopened.get(b"k").expect("get"), Some(b"v".to_vec()));
    // Attaching ignores the builder's creation parameters, keeps its runtime settings.
    let attached = Options::new()
        .capacity(64 << 20)
        .max_value_len(10)
        .attach(t.name())
        .expect("attach");
    assert_eq!(attached.limits(), creator.limits());
    attached
        .set(b"big", &[1u8; 2000], None)
        .expect("the file's limit applies");
    match attached.set(b"big", &[1u8; 2001], None) {
        Err(Error::TooLarge { max: 2000, .. }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    drop((creator, reopened, attached));
    let again = Cache::open(t.name()).expect("reopen after every handle closed");
    assert_eq!(again.get(b"big").expect("get"), Some(vec![1u8; 2000]));
}

// ----- statistics and iteration --------------------------------------------------------

#[test]
fn shard_stats_sum_to_the_totals() {
    let t = TempCache::new("life-stats");
    let c = t.open();
    for i in 0..500u32 {
        c.set(format!("k{i}").as_bytes(), &[b'v'; 20], None)
            .expect("set");
    }
    for i in 0..100u32 {
        c.set(format!("k{i}").as_bytes(), &[b'w'; 30], None)
            .expect("update");
    }
    for i in 400..450u32 {
        assert!(c.remove(format!("k{i}").as_bytes()).expect("remove"));
    }
    for i in 0..200u32 {
        let _ = c.get(format!("k{i}").as_bytes()).expect("get");
        let _ = c.get(format!("missing{i}").as_bytes()).expect("get");
    }
    let s = c.stats();
    assert_eq!(s.shards.len() as u64, s.shard_count);
    assert_eq!(s.shard_count, c.shard_count() as u64);
    assert_eq!(s.file_size, std::fs::metadata(&t.path).expect("stat").len());
    let sum = |f: fn(&larder::ShardStats) -> u64| s.shards.iter().map(f).sum::<u64>();
    assert_eq!(s.entries, sum(|x| x.entries));
    assert_eq!(s.bytes_live, sum(|x| x.bytes_live));
    assert_eq!(s.bytes_used, sum(|x| x.bytes_used));
    assert_eq!(s.bytes_free, sum(|x| x.bytes_free));
    assert_eq!(s.inserts, sum(|x| x.inserts));
    assert_eq!(s.updates, sum(|x| x.updates));
    assert_eq!(s.removals, sum(|x| x.removals));
    assert_eq!(s.evictions, sum(|x| x.evictions));
    assert_eq!(s.expirations, sum(|x| x.expirations));
    assert_eq!(s.recoveries, sum(|x| x.recoveries));
    assert_eq!(s.repair_dropped, sum(|x| x.repair_dropped));
    // And the totals are right.
    assert_eq!(s.evictions, 0, "the test's data fits");
    assert_eq!(s.entries, 450);
    assert_eq!(s.inserts, 500);
    assert_eq!(s.updates, 100);
    assert_eq!(s.removals, 50);
    assert_eq!(s.hits, 200);
    assert_eq!(s.misses, 200);
    let k = |i: u32| format!("k{i}").len() as u64;
    let live: u64 = (0..100).map(|i| k(i) + 30).sum::<u64>()
        + (100..400).chain(450..500).map(|i| k(i) + 20).sum::<u64>();
    assert_eq!(s.bytes_live, live);
    assert!(s.bytes_used >= live);
    assert_eq!(s.recoveries, 0);
}

#[test]
fn entries_lists_every_key_with_its_size_and_ttl() {
    let t = TempCache::new("life-entries");
    let (c, clock) = t.open_on_manual_clock();
    let mut want: BTreeMap<Vec<u8>, (usize, Option<Duration>)> = BTreeMap::new();
    for i in 0..300usize {
        let key = format!("key-{i}").into_bytes();
        let len = i % 50;
        let ttl = (i % 3 == 0).then(|| Duration::from_secs(100 + i as u64));
        c.set(&key, &vec![b'x'; len], ttl).expect("set");
        want.insert(key, (len, ttl));
    }
    assert!(c.remove(b"key-7").expect("remove"));
    want.remove(&b"key-7"[..]);
    c.set(b"empty", b"", None).expect("set");
    want.insert(b"empty".to_vec(), (0, None));
    clock.advance(Duration::from_secs(10));
    let listed: Vec<larder::EntryInfo> = c.entries().map(|e| e.expect("entry")).collect();
    assert!(
        listed.windows(2).all(|w| w[0].shard <= w[1].shard),
        "shard by shard"
    );
    let mut got = BTreeMap::new();
    for e in &listed {
        assert_eq!(e.shard, c.shard_of(&e.key), "{:?}", e.key);
        assert!(
            got.insert(e.key.clone(), (e.value_len, e.ttl)).is_none(),
            "{:?} listed twice",
            e.key
        );
    }
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (key, (len, ttl)) in &want {
        let (glen, gttl) = got[key];
        assert_eq!(glen, *len, "{key:?}");
        match (ttl, gttl) {
            (None, None) => {}
            (Some(ttl), Some(left)) => {
                // 10 s have passed on the manual clock, plus a little real time.
                let expect = *ttl - Duration::from_secs(10);
                assert!(
                    left <= expect && left + Duration::from_secs(5) >= expect,
                    "{key:?}: {left:?} left, about {expect:?} expected"
                );
            }
            other => panic!("{key:?}: ttl {other:?}"),
        }
    }
    // An expired entry not yet reclaimed is listed with no time left.
    c.set(b"short", b"s", Some(Duration::from_secs(1)))
        .expect("set");
    clock.advance(Duration::from_secs(2));
    let short = c
        .entries()
        .map(|e| e.expect("entry"))
        .find(|e| e.key == b"short")
        .expect("listed until reclaimed");
    assert_eq!(short.ttl, Some(Duration::ZERO));
}

// ----- TTLs --------------------------------------------------------------------------

#[test]
fn ttl_expiry_hides_entries_from_get_but_not_get_stale() {
    let t = TempCache::new("life-ttl");
    let (c, clock) = t.open_on_manual_clock();
    c.set(b"k", b"v", Some(Duration::from_secs(10)))
        .expect("set");
    c.set(b"forever", b"f", None).expect("set");
    clock.advance(Duration::from_secs(5));
    assert_eq!(c.get(b"k").expect("get"), Some(b"v".to_vec()));
    assert_eq!(
        c.get_stale(b"k").expect("get_stale"),
        Some(StaleValue {
            value: b"v".to_vec(),
            expired: false
        })
    );
    clock.advance(Duration::from_secs(6));
    let before = c.stats();
    assert_eq!(c.get(b"k").expect("get"), None);
    let mut buf = Vec::new();
    assert!(!c.get_into(b"k", &mut buf).expect("get_into"));
    assert_eq!(c.try_get(b"k").expect("try_get"), None);
    assert_eq!(
        c.get_stale(b"k").expect("get_stale"),
        Some(StaleValue {
            value: b"v".to_vec(),
            expired: true
        })
    );
    let after = c.stats();
    assert_eq!(after.misses, before.misses + 3);
    assert_eq!(after.stale_hits, before.stale_hits + 1);
    assert_eq!(after.hits, before.hits);
    assert_eq!(c.get_stale(b"missing").expect("get_stale"), None);
    // No TTL: never expires.
    clock.advance(Duration::from_secs(1_000_000));
    assert_eq!(c.get(b"forever").expect("get"), Some(b"f".to_vec()));
    // Removing an expired entry reports that no fresh entry was removed.
    assert!(!c.remove(b"k").expect("remove"));
    assert_eq!(c.get_stale(b"k").expect("get_stale"), None);
}

#[test]
fn expiry_is_per_handle_clock_but_stored_in_the_file() {
    let t = TempCache::new("life-ttl-shared");
    let (a, clock) = t.open_on_manual_clock();
    let b = t.open();
    a.set(b"k", b"v", Some(Duration::from_secs(30)))
        .expect("set");
    assert_eq!(b.get(b"k").expect("get"), Some(b"v".to_vec()));
    clock.advance(Duration::from_secs(31));
    assert_eq!(a.get(b"k").expect("get"), None, "expired on A's clock");
    assert_eq!(
        b.get(b"k").expect("get"),
        Some(b"v".to_vec()),
        "B's clock has not moved"
    );
}

#[test]
fn touch_extends_or_clears_a_ttl() {
    let t = TempCache::new("life-touch");
    let (c, clock) = t.open_on_manual_clock();
    c.set(b"k", b"v", Some(Duration::from_secs(10)))
        .expect("set");
    clock.advance(Duration::from_secs(8));
    assert!(c.touch(b"k", Some(Duration::from_secs(10))).expect("touch"));
    clock.advance(Duration::from_secs(8));
    assert_eq!(
        c.get(b"k").expect("get"),
        Some(b"v".to_vec()),
        "past the first TTL, within the new one"
    );
    clock.advance(Duration::from_secs(3));
    assert_eq!(c.get(b"k").expect("get"), None, "past the new TTL");
    // An expired or missing entry cannot be touched back to life.
    assert!(!c
        .touch(b"k", Some(Duration::from_secs(100)))
        .expect("touch"));
    assert_eq!(c.get(b"k").expect("get"), None);
    assert!(!c.touch(b"missing", None).expect("touch"));
    // Touch with no TTL: never expires.
    c.set(b"k2", b"v2", Some(Duration::from_secs(1)))
        .expect("set");
    assert!(c.touch(b"k2", None).expect("touch"));
    clock.advance(Duration::from_secs(1_000));
    assert_eq!(c.get(b"k2").expect("get"), Some(b"v2".to_vec()));
    let e = c
        .entries()
        .map(|e| e.expect("entry"))
        .find(|e| e.key == b"k2")
        .expect("listed");
    assert_eq!(e.ttl, None);
    // Touch can also shorten.
    assert!(c.touch(b"k2", Some(Duration::from_secs(1))).expect("touch"));
    clock.advance(Duration::from_secs(2));
    assert_eq!(c.get(b"k2").expect("get"), None);
    assert!(c.verify().expect("verify").is_clean());
}

#[test]
fn insert_if_absent_stores_only_over_nothing_or_an_expired_entry() {
    let t = TempCache::new("life-insert");
    let (c, clock) = t.open_on_manual_clock();
    assert!(c.insert_if_absent(b"k", b"first", None).expect("insert"));
    assert!(!c.insert_if_absent(b"k", b"second", None).expect("insert"));
    assert_eq!(c.get(b"k").expect("get"), Some(b"first".to_vec()));
    // Over an expired entry: stored, with its own TTL.
    c.set(b"e", b"old", Some(Duration::from_secs(1)))
        .expect("set");
    assert!(!c.insert_if_absent(b"e", b"new", None).expect("insert"));
    clock.advance(Duration::from_secs(2));
    assert!(c.insert_if_absent(b"e", b"new", None).expect("insert"));
    assert_eq!(c.get(b"e").expect("get"), Some(b"new".to_vec()));
    clock.advance(Duration::from_secs(1_000));
    assert_eq!(c.get(b"e").expect("get"), Some(b"new".to_vec()));
    // After a remove.
    assert!(c.remove(b"k").expect("remove"));
    assert!(c.insert_if_absent(b"k", b"third", None).expect("insert"));
    assert_eq!(c.get(b"k").expect("get"), Some(b"third".to_vec()));
    // An entry stored by insert_if_absent is an ordinary entry (a set replaces it).
    c.set(b"k", b"fourth", None).expect("set");
    assert_eq!(c.get(b"k").expect("get"), Some(b"fourth".to_vec()));
    let s = c.stats();
    assert_eq!(s.entries, 2);
    assert!(c.verify().expect("verify").is_clean());
}

#[test]
fn clear_empties_every_shard() {
    let t = TempCache::new("life-clear");
    let c = t.open();
    let n = 1000u32;
    for i in 0..n {
        c.set(format!("k{i}").as_bytes(), b"v", None).expect("set");
    }
    let shards_used = c.stats().shards.iter().filter(|s| s.entries > 0).count();
    assert!(shards_used > 1, "the keys span shards");
    let removals = c.stats().removals;
    assert_eq!(c.clear().expect("clear"), n as u64);
    let s = c.stats();
    assert_eq!(s.entries, 0);
    assert_eq!(s.bytes_live, 0);
    assert_eq!(s.bytes_used, 0);
    assert_eq!(s.removals, removals + n as u64);
    assert_eq!(c.entries().count(), 0);
    for i in 0..n {
        assert_eq!(c.get(format!("k{i}").as_bytes()).expect("get"), None);
    }
    // Another handle sees it empty too, and the cache works after.
    let other = Cache::open(t.name()).expect("attach");
    assert_eq!(other.get(b"k1").expect("get"), None);
    c.set(b"k1", b"again", None).expect("set");
    assert_eq!(other.get(b"k1").expect("get"), Some(b"again".to_vec()));
    assert_eq!(c.clear().expect("clear"), 1);
    assert_eq!(c.clear().expect("clear"), 0);
    assert!(c.verify().expect("verify").is_clean());
}

// ----- lock-free reads ---------------------------------------------------------------

/// The debug counter `stats().locks` proves read-only hits (and misses) take no lock.
#[test]
fn read_only_hits_take_no_lock() {
    let t = TempCache::new("life-locks");
    let c = t.open();
    for i in 0..10u32 {
        c.set(format!("k{i}").as_bytes(), b"value", None)
            .expect("set");
    }
    // Warm up: the first read of an entry sets its visited bit (no lock either).
    for i in 0..10u32 {
        let _ = c.get(format!("k{i}").as_bytes()).expect("get");
    }
    let before = c.stats();
    let mut buf = Vec::with_capacity(64);
    for i in 0..1000u32 {
        let key = format!("k{}", i % 10);
        if i % 2 == 0 {
            assert_eq!(c.get(key.as_bytes()).expect("get"), Some(b"value".to_vec()));
        } else {
            assert!(c.get_into(key.as_bytes(), &mut buf).expect("get_into"));
        }
    }
    let after = c.stats();
    assert_eq!(after.hits, before.hits + 1000);
    assert_eq!(after.locks, before.locks, "read-only hits took a lock");
    for i in 0..100u32 {
        assert_eq!(c.get(format!("nope{i}").as_bytes()).expect("get"), None);
    }
    let misses = c.stats();
    assert_eq!(misses.misses, after.misses + 100);
    assert_eq!(misses.locks, before.locks, "misses took a lock");
    // The counter does count: a write takes one lock.
    c.set(b"k0", b"new", None).expect("set");
    assert_eq!(c.stats().locks, before.locks + 1);
}

/// The `huge=` option of the tmpfs mounted at `mount_point`, if it is one.
fn tmpfs_huge_option(mount_point: &str) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    // The last match is the mount on top, the one paths resolve through.
    info.lines().rev().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if left.split(' ').nth(4)? != mount_point || !right.starts_with("tmpfs ") {
            return None;
        }
        let opts = right.split(' ').nth(2)?;
        Some(
            opts.split(',')
                .find_map(|o| o.strip_prefix("huge="))
                .unwrap_or("never")
                .to_string(),
        )
    })
}

/// Kilobytes of `path`'s mappings in this process that are mapped by 2 MiB entries.
fn pmd_mapped_kb(path: &Path) -> u64 {
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("smaps");
    let target = path.to_str().expect("UTF-8 path");
    let mut inside = false;
    let mut kb = 0;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            inside = line.trim_end().ends_with(target);
        } else if inside {
            if let Some(v) = line
                .strip_prefix("ShmemPmdMapped:")
                .or_else(|| line.strip_prefix("FilePmdMapped:"))
            {
                kb += v
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap_or(0);
            }
        }
    }
    kb
}

#[test]
fn file_is_backed_by_huge_pages_where_the_mount_allows_them() {
    let Some(huge) = tmpfs_huge_option("/dev/shm") else {
        eprintln!("skipped: /dev/shm is not a tmpfs here");
        return;
    };
    if !["within_size", "always"].contains(&huge.as_str()) {
        eprintln!(
            "skipped: /dev/shm has huge={huge} (mount -o remount,huge=within_size /dev/shm \
             to run this)"
        );
        return;
    }
    let name = format!("/dev/shm/{}", common::unique_name("test-huge"));
    let _guard = common::UnlinkOnDrop(name.clone());
    let creator = Options::new()
        .capacity(8 << 20)
        .open(&name)
        .expect("create");
    creator.set(b"k", b"v", None).expect("set");
    // A second handle maps the file by its name (the creator's mapping predates the
    // name), and its statistics read every shard's header, faulting the file in.
    let cache = Cache::open(&name).expect("open");
    assert_eq!(cache.get(b"k").expect("get"), Some(b"v".to_vec()));
    assert_eq!(cache.stats().entries, 1);
    let kb = pmd_mapped_kb(cache.path());
    assert!(
        kb >= 2048,
        "huge={huge} on /dev/shm, yet no 2 MiB page maps {}",
        cache.path().display()
    );
}
