//! `fork(2)` with live handles: a child forked while another thread of its parent is in
//! the middle of writing (holding a shard lock) uses the inherited handle and exits;
//! forked children and the parent's threads share one cache.
//!
//! These tests call `fork` directly, because fork is what is under test. A forked child
//! of this multi-threaded test harness runs only simple cache operations, reports by its
//! exit code (it never panics on purpose, prints, or unwinds into the harness) and leaves
//! with `_exit`.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use larder::{Cache, Error, Options};

mod common;
use common::{check_value, deadline_in, make_value, poll_until, small_options, TempCache};

/// Fork tests in this binary run one at a time, so that a child is never forked while
/// another test's threads are inside the test harness or the allocator in ways this
/// file does not control.
static SERIAL: Mutex<()> = Mutex::new(());

/// Exit code of a forked child whose body panicked.
const EXIT_PANICKED: i32 = 70;

fn options() -> Options {
    // Long: a child may wait for a parent thread that holds the shard lock in a tight
    // loop until it is told to stop.
    small_options().lock_timeout(Duration::from_secs(30))
}

/// A forked child: SIGKILLed and reaped on drop unless already reaped.
struct Forked {
    pid: libc::pid_t,
    reaped: bool,
}

impl Forked {
    /// Forks; the child runs `body` and `_exit`s with the code it returns.
    fn spawn(body: impl FnOnce() -> i32) -> Forked {
        // SAFETY: fork has no memory-safety preconditions. The child below only runs
        // `body` (cache operations on an inherited handle, no locks of the harness) and
        // then `_exit`s without running destructors or atexit handlers.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
        if pid == 0 {
            let code = std::panic::catch_unwind(AssertUnwindSafe(body)).unwrap_or(EXIT_PANICKED);
            // SAFETY: _exit ends the process at once; nothing runs after it.
            unsafe { libc::_exit(code) }
        }
        Forked { pid, reaped: false }
    }

    /// The child's exit code, waiting until `deadline`; panics (the guard then kills it)
    /// if it has not exited by then or died of a signal.
    fn exit_code(&mut self, deadline: Instant) -> i32 {
        let mut status = 0;
        let done = poll_until(deadline, || {
            // SAFETY: waitpid on our own unreaped child, writing into a local int.
            let rc = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            assert!(rc >= 0, "waitpid: {}", std::io::Error::last_os_error());
            rc == self.pid
        });
        assert!(
            done,
            "forked child {} hung (no exit before its deadline)",
            self.pid
        );
        self.reaped = true;
        assert!(
            libc::WIFEXITED(status),
            "forked child died of signal {}",
            libc::WTERMSIG(status)
        );
        libc::WEXITSTATUS(status)
    }
}

impl Drop for Forked {
    fn drop(&mut self) {
        if !self.reaped {
            let mut status = 0;
            // SAFETY: kill and waitpid on our own unreaped child.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                libc::waitpid(self.pid, &mut status, 0);
            }
        }
    }
}

/// Checks in a forked child: `Err(code)` names the first check that failed.
fn expect(ok: bool, code: i32) -> Result<(), i32> {
    if ok {
        Ok(())
    } else {
        Err(code)
    }
}

fn value_is(c: &Cache, key: &[u8], want: &[u8]) -> bool {
    matches!(c.get(key), Ok(Some(v)) if v == want)
}

fn value_is_whole(c: &Cache, key: &[u8]) -> bool {
    matches!(c.get(key), Ok(Some(v)) if check_value(key, &v).is_ok())
}

/// Exit code of a child that found the shard lock held on its first try.
const EXIT_LOCK_WAS_HELD: i32 = 10;

/// One word of memory shared with forked children (an anonymous shared mapping made
/// before the fork), for a child to tell its parent it has reached a step.
struct SharedWord {
    ptr: *mut libc::c_void,
}

impl SharedWord {
    fn new() -> SharedWord {
        // SAFETY: a fresh anonymous mapping; no existing memory is affected.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap");
        SharedWord { ptr }
    }

    fn word(&self) -> &AtomicU64 {
        // SAFETY: the mapping is page-aligned, zero-filled, lives as long as `self`, and
        // is only ever accessed through this atomic.
        unsafe { &*(self.ptr as *const AtomicU64) }
    }
}

impl Drop for SharedWord {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping made in `new`; no reference to it outlives `self`.
        unsafe {
            libc::munmap(self.ptr, 4096);
        }
    }
}

/// A child forked while a parent thread is inside long operations on the only shard
/// (`verify()` holds the shard lock while it checks thousands of entries, and sets in
/// between), so the lock is held by a thread the child does not have: the child reads
/// the parent's data, writes with the inherited handle (waiting for the parent's thread
/// to let go, never hanging), and exits in time; the parent sees what it wrote.
#[test]
fn child_forked_while_a_thread_holds_a_shard_lock_uses_the_handle() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let t = TempCache::new("fork-held");
    let cache = options().shards(1).open(t.name()).expect("create");
    cache
        .set(b"parent-key", b"parent-value", None)
        .expect("set");
    // Enough entries that one verify() holds the lock for a while.
    for i in 0..3000u64 {
        let k = format!("filler-{i}").into_bytes();
        cache.set(&k, &make_value(&k, i, 40), None).expect("set");
    }
    let busy_keys = Arc::new(common::keys_in_shard(&cache, 0, "busy", 2));
    let started = Instant::now();
    let (mut rounds, mut held_at_fork) = (0, 0);
    // Rounds until the lock was seen held at the child's first try a few times.
    while rounds < 10 || (held_at_fork < 3 && rounds < 200) {
        rounds += 1;
        let stop = Arc::new(AtomicBool::new(false));
        let ops = Arc::new(AtomicU64::new(0));
        let writer = {
            let (c, stop, ops, keys) =
                (cache.clone(), stop.clone(), ops.clone(), busy_keys.clone());
            std::thread::spawn(move || {
                let mut version = 0;
                while !stop.load(Ordering::Relaxed) {
                    version += 1;
                    c.set(&keys[0], &make_value(&keys[0], version, 32), None)
                        .expect("parent thread set");
                    let report = c.verify().expect("parent thread verify");
                    assert!(report.is_clean(), "{report}");
                    ops.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        assert!(
            poll_until(deadline_in(30), || ops.load(Ordering::Relaxed) >= 2),
            "the writer thread never got going"
        );
        let tried = SharedWord::new();
        let child_key = format!("child-{rounds}").into_bytes();
        let child_value = make_value(&child_key, rounds, 16);
        let mut child = {
            let (c, keys, ck, cv, tried) = (&cache, &busy_keys, &child_key, &child_value, &tried);
            Forked::spawn(move || {
                let run = || -> Result<i32, i32> {
                    // Is the shard lock held right now, by a thread this process lacks?
                    let held = match c.try_set(&keys[1], &make_value(&keys[1], 0, 8), None) {
                        Err(Error::WouldBlock) => true,
                        Ok(()) => false,
                        Err(_) => return Err(2),
                    };
                    tried.word().store(1, Ordering::SeqCst);
                    expect(value_is(c, b"parent-key", b"parent-value"), 3)?;
                    // Waits for the parent's thread to let go of the lock, then writes.
                    expect(c.set(ck, cv, None).is_ok(), 4)?;
                    expect(value_is(c, ck, cv), 5)?;
                    let mine = make_value(&keys[1], 1_000_000, 8);
                    expect(c.set(&keys[1], &mine, None).is_ok(), 6)?;
                    expect(value_is(c, &keys[1], &mine), 7)?;
                    expect(value_is_whole(c, &keys[0]), 8)?;
                    Ok(if held { EXIT_LOCK_WAS_HELD } else { 0 })
                };
                run().unwrap_or_else(|code| code)
            })
        };
        // Keep the parent's thread busy until the child has made its first try.
        poll_until(deadline_in(60), || tried.word().load(Ordering::SeqCst) == 1);
        stop.store(true, Ordering::Relaxed);
        writer.join().expect("writer thread");
        let code = child.exit_code(deadline_in(60));
        assert!(
            code == 0 || code == EXIT_LOCK_WAS_HELD,
            "round {rounds}: forked child failed check {code}"
        );
        held_at_fork += usize::from(code == EXIT_LOCK_WAS_HELD);
        assert_eq!(
            cache.get(&child_key).expect("get"),
            Some(child_value),
            "round {rounds}: the parent does not see the child's write"
        );
        assert_eq!(
            cache.get(&busy_keys[1]).expect("get"),
            Some(make_value(&busy_keys[1], 1_000_000, 8))
        );
    }
    eprintln!(
        "fork with a held lock: {rounds} rounds, lock held at the child's first try in \
         {held_at_fork}, {:.1?}",
        started.elapsed()
    );
    assert!(
        held_at_fork >= 1,
        "in {rounds} rounds no child found the lock held: the test did not test it"
    );
    let report = cache.verify().expect("verify");
    assert!(report.is_clean(), "{report}");
    assert_eq!(cache.stats().recoveries, 0, "nobody died holding a lock");
}

/// Threads and processes mixed: while two parent threads write and read their own
/// keys, forked children (each also running a thread of its own on a clone of the
/// inherited handle) read the parent's data and write theirs. Afterwards every key holds
/// exactly its last write, and `verify()` is clean.
#[test]
fn forked_children_and_threads_share_one_cache() {
    const THREADS: usize = 2;
    const CHILDREN: usize = 4;
    const KEYS: u64 = 32;
    /// Passes over its keys a parent thread makes at most.
    const MAX_PASSES: u64 = 2_000;
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let t = TempCache::new("fork-mixed");
    let cache = options().open(t.name()).expect("create");
    let parent_keys: Vec<(Vec<u8>, Vec<u8>)> = (0..KEYS)
        .map(|i| {
            let k = format!("parent-{i}").into_bytes();
            let v = make_value(&k, i, 24);
            cache.set(&k, &v, None).expect("set");
            (k, v)
        })
        .collect();
    let parent_keys = Arc::new(parent_keys);
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..THREADS)
        .map(|j| {
            let (c, stop) = (cache.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut last = vec![0u64; KEYS as usize];
                let mut version = 0;
                // Bounded too: glibc mutexes are not fair, so a thread relocking in a
                // tight loop could starve a child's lock wait on a loaded machine.
                while (!stop.load(Ordering::Relaxed) && version < MAX_PASSES) || version < 2 {
                    version += 1;
                    for (i, l) in last.iter_mut().enumerate() {
                        let k = format!("thread-{j}-{i}").into_bytes();
                        c.set(&k, &make_value(&k, version, 24), None)
                            .expect("thread set");
                        *l = version;
                        let v = c.get(&k).expect("thread get").expect("own write");
                        assert_eq!(check_value(&k, &v), Ok(version));
                    }
                }
                last
            })
        })
        .collect();

    let mut children: Vec<Forked> = (0..CHILDREN)
        .map(|n| {
            let (c, pk) = (&cache, &parent_keys);
            Forked::spawn(move || {
                let write = |c: &Cache, prefix: &str| -> Result<(), i32> {
                    for i in 0..KEYS {
                        let k = format!("{prefix}-{i}").into_bytes();
                        let v = make_value(&k, i + 1, 16);
                        expect(c.set(&k, &v, None).is_ok(), 4)?;
                        expect(value_is(c, &k, &v), 5)?;
                    }
                    Ok(())
                };
                let run = || -> Result<(), i32> {
                    expect(pk.iter().all(|(k, v)| value_is(c, k, v)), 2)?;
                    let clone = c.clone();
                    let prefix = format!("child-{n}-thread");
                    let helper = std::thread::spawn(move || write(&clone, &prefix));
                    write(c, &format!("child-{n}"))?;
                    helper.join().map_err(|_| 6)??;
                    for j in 0..THREADS {
                        for i in 0..KEYS {
                            let k = format!("thread-{j}-{i}").into_bytes();
                            // Present once the thread's first pass is done; whole always.
                            if let Ok(Some(v)) = c.get(&k) {
                                expect(check_value(&k, &v).is_ok(), 7)?;
                            }
                        }
                    }
                    Ok(())
                };
                run().err().unwrap_or(0)
            })
        })
        .collect();
    for (n, child) in children.iter_mut().enumerate() {
        let code = child.exit_code(deadline_in(60));
        assert_eq!(code, 0, "forked child {n} failed check {code}");
    }
    stop.store(true, Ordering::Relaxed);
    let finals: Vec<Vec<u64>> = threads
        .into_iter()
        .map(|h| h.join().expect("parent thread"))
        .collect();

    for (k, v) in parent_keys.iter() {
        assert_eq!(cache.get(k).expect("get").as_ref(), Some(v));
    }
    for n in 0..CHILDREN {
        for prefix in [format!("child-{n}"), format!("child-{n}-thread")] {
            for i in 0..KEYS {
                let k = format!("{prefix}-{i}").into_bytes();
                assert_eq!(
                    cache.get(&k).expect("get"),
                    Some(make_value(&k, i + 1, 16)),
                    "the parent does not see a child's write"
                );
            }
        }
    }
    for (j, last) in finals.iter().enumerate() {
        for (i, &version) in last.iter().enumerate() {
            let k = format!("thread-{j}-{i}").into_bytes();
            let v = cache.get(&k).expect("get").expect("thread key");
            assert_eq!(check_value(&k, &v), Ok(version));
        }
    }
    let s = cache.stats();
    assert_eq!((s.evictions, s.recoveries), (0, 0), "{s:?}");
    let report = cache.verify().expect("verify");
    assert!(report.is_clean(), "{report}");
}

/// Exit code of a re-executed child whose forked grandchild hung inside an open.
#[cfg(feature = "crash-points")]
const EXIT_GRANDCHILD_HUNG: i32 = 20;

/// The re-executed child of `fork_during_another_threads_first_open_never_hangs_the_child`:
/// a thread of this fresh process is held inside its first open at the crash point named
/// by the parent (`pause`); this thread forks meanwhile, and the forked grandchild opens
/// a cache of its own. Exits 0 if the grandchild finished, [`EXIT_GRANDCHILD_HUNG`] if
/// it was still inside its open at the deadline.
#[cfg(feature = "crash-points")]
fn first_open_fork_child() -> ! {
    let dir = std::path::PathBuf::from(std::env::var("LARDER_TEST_DIR").expect("dir"));
    let pause = std::path::PathBuf::from(std::env::var("LARDER_CRASH_PAUSE_FILE").expect("f"));
    let first = dir.join("first");
    let held = std::thread::spawn(move || options().open(first.to_str().unwrap()).is_ok());
    assert!(
        poll_until(deadline_in(30), || pause.exists()),
        "the thread never reached the pause point"
    );
    let second = dir.join("second");
    let mut child = Forked::spawn(move || {
        let c = match options().open(second.to_str().unwrap()) {
            Ok(c) => c,
            Err(_) => return 2,
        };
        if c.set(b"k", b"v", None).is_err() || !value_is(&c, b"k", b"v") {
            return 3;
        }
        0
    });
    let mut status = 0;
    let done = poll_until(deadline_in(10), || {
        // SAFETY: waitpid on our own unreaped child, writing into a local int.
        unsafe { libc::waitpid(child.pid, &mut status, libc::WNOHANG) == child.pid }
    });
    let code = if done {
        child.reaped = true;
        if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            1
        }
    } else {
        EXIT_GRANDCHILD_HUNG
    };
    drop(child);
    let _ = std::fs::remove_file(&pause);
    let opened = held.join().unwrap_or(false);
    std::process::exit(if code == 0 && !opened { 4 } else { code })
}

/// A child forked while another thread of its parent is inside its first open (reading
/// the boot id, registering the fork handler) never waits for that thread, which does
/// not exist in the child: the window is held open with a pause point, not by timing.
#[cfg(feature = "crash-points")]
#[test]
fn fork_during_another_threads_first_open_never_hangs_the_child() {
    if common::child_role().as_deref() == Some("first-open") {
        first_open_fork_child();
    }
    const TEST: &str = "fork_during_another_threads_first_open_never_hangs_the_child";
    for point in ["open.register_atfork", "open.read_boot_id"] {
        let t = TempCache::new("fork-first-open");
        let mut cmd = common::self_command(TEST, "first-open");
        cmd.env("LARDER_TEST_DIR", &t.dir)
            .env("LARDER_CRASH_AT", point)
            .env("LARDER_CRASH_ACTION", "pause")
            .env("LARDER_CRASH_PAUSE_FILE", t.dir.join("paused"))
            .stderr(std::process::Stdio::inherit());
        let mut kids = common::Children::new();
        let i = kids.spawn(&mut cmd);
        let status = kids.wait_or_fail(i, deadline_in(90), point);
        assert_eq!(
            status.code(),
            Some(0),
            "{point}: a child forked during another thread's first open: {status:?} \
             ({EXIT_GRANDCHILD_HUNG}: it hung)"
        );
    }
}
