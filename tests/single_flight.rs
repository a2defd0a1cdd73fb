//! Single flight: `get_or_insert_with` computes a missing value at most once at a time
//! across processes, hands the fill on when its filler dies, caches nothing when the
//! fill fails, gives up with `Error::Timeout` after the fill timeout, and never stores
//! over a revocation of its key made while it computed.
//!
//! Multi-process tests re-run this test binary as their children (see
//! `common::self_command`); a child learns its role from the environment.

use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use larder::{Begin, Error, Options};

mod common;
use common::{
    child_env, child_role, deadline_in, long_timeouts, poll_until, self_command, small_options,
    Children, TempCache,
};

const KEY: &[u8] = b"single-flight-key";
/// What a fill computes from a token's state read before its revocation.
const CLAIMS: &[u8] = b"claims:alice";

/// Generous lock and fill timeouts: on a loaded machine a fill must never time out
/// unless the test means it to.
fn options() -> Options {
    long_timeouts(small_options())
}

/// Appends one line to a file shared by the processes of a test, with one `write` on
/// an `O_APPEND` descriptor, so lines from several processes never interleave.
fn append_line(path: &Path, line: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open shared file");
    f.write_all(format!("{line}\n").as_bytes())
        .expect("append line");
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Marks that this process reached a step, for the parent to poll.
fn mark(dir: &Path, name: &str) {
    std::fs::write(dir.join(name), b"").expect("write marker");
}

/// Where a child writes the value its `get_or_insert_with` returned.
fn result_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("result-{id}"))
}

fn child_main(role: &str) -> ! {
    let dir = PathBuf::from(child_env("LARDER_TEST_DIR"));
    let path = child_env("LARDER_TEST_PATH");
    let id = child_env("LARDER_TEST_ID");
    let cache = options().attach(&path).expect("attach");
    // The first operation claims this process's statistics slot; do it now so that the
    // only thing the fill below can wait on is the fill slot.
    cache.get(b"warm-up").expect("warm-up get");
    let runs = dir.join("runs");
    match role {
        "racer" => {
            let racers: usize = child_env("LARDER_TEST_RACERS").parse().expect("racers");
            mark(&dir, &format!("arrived-{id}"));
            let v = cache
                .get_or_insert_with(KEY, None, || {
                    append_line(&runs, &format!("racer {id}"));
                    // Keep the slot until every racer has arrived, so they contend.
                    poll_until(deadline_in(30), || {
                        (0..racers).all(|i| dir.join(format!("arrived-{i}")).exists())
                    });
                    Ok::<_, Error>(format!("filled by racer {id}").into_bytes())
                })
                .expect("get_or_insert_with");
            std::fs::write(result_path(&dir, &id), v).expect("write result");
        }
        "blocking-filler" => {
            cache
                .get_or_insert_with(KEY, None, || {
                    append_line(&runs, "blocking filler");
                    mark(&dir, "in-fill");
                    // Holds the fill slot until the parent kills it.
                    poll_until(deadline_in(120), || false);
                    Err::<Vec<u8>, _>(Error::WouldBlock)
                })
                .expect_err("the parent kills this filler");
            panic!("the blocking filler was never killed");
        }
        "revoked-filler" => {
            // Reads the token's state (valid), then pauses inside `f` until the parent
            // has revoked the token: a fill that started before the revocation.
            let v = cache
                .get_or_insert_with(KEY, Some(Duration::from_secs(300)), || {
                    mark(&dir, "in-fill");
                    let revoked = poll_until(deadline_in(60), || dir.join("revoked").exists());
                    assert!(revoked, "the parent never revoked the token");
                    Ok::<_, Error>(CLAIMS.to_vec())
                })
                .expect("get_or_insert_with");
            std::fs::write(result_path(&dir, &id), v).expect("write result");
        }
        "waiter" => {
            mark(&dir, &format!("arrived-{id}"));
            let v = cache
                .get_or_insert_with(KEY, None, || {
                    append_line(&runs, &format!("waiter {id}"));
                    Ok::<_, Error>(format!("filled by waiter {id}").into_bytes())
                })
                .expect("get_or_insert_with");
            std::fs::write(result_path(&dir, &id), v).expect("write result");
        }
        other => panic!("unknown child role {other}"),
    }
    std::process::exit(0)
}

fn spawn_child(
    kids: &mut Children,
    test: &str,
    role: &str,
    t: &TempCache,
    id: &str,
    extra: &[(&str, String)],
) -> usize {
    let err = std::fs::File::create(t.dir.join(format!("{role}-{id}.stderr"))).expect("stderr");
    let mut cmd = self_command(test, role);
    cmd.env("LARDER_TEST_DIR", &t.dir)
        .env("LARDER_TEST_PATH", t.name())
        .env("LARDER_TEST_ID", id)
        .stderr(err);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    kids.spawn(&mut cmd)
}

fn assert_exited_cleanly(kids: &mut Children, i: usize, t: &TempCache, what: &str) {
    let status = kids.wait_or_fail(i, deadline_in(60), what);
    if !status.success() {
        let mut stderr = String::new();
        for e in std::fs::read_dir(&t.dir).expect("dir").flatten() {
            if e.file_name().to_string_lossy().ends_with(".stderr") {
                stderr += &std::fs::read_to_string(e.path()).unwrap_or_default();
            }
        }
        panic!("{what} failed: {status}; children's stderr:\n{stderr}");
    }
}

/// Several processes ask for the same missing key at once: exactly one runs `f`, and
/// every one of them gets the value it computed.
#[test]
fn exactly_one_process_runs_the_fill() {
    const TEST: &str = "exactly_one_process_runs_the_fill";
    const RACERS: usize = 4;
    if let Some(role) = child_role() {
        child_main(&role);
    }
    let t = TempCache::new("sf-race");
    let cache = options().open(t.name()).expect("create");
    let mut kids = Children::new();
    let ids: Vec<usize> = (0..RACERS)
        .map(|i| {
            let racers = ("LARDER_TEST_RACERS", RACERS.to_string());
            spawn_child(&mut kids, TEST, "racer", &t, &i.to_string(), &[racers])
        })
        .collect();
    for i in ids {
        assert_exited_cleanly(&mut kids, i, &t, "racer");
    }
    let runs = lines(&t.dir.join("runs"));
    assert_eq!(runs.len(), 1, "f ran more than once: {runs:?}");
    let filler = runs[0].strip_prefix("racer ").expect("racer line");
    let expected = format!("filled by racer {filler}").into_bytes();
    for i in 0..RACERS {
        let got = std::fs::read(result_path(&t.dir, &i.to_string())).expect("result");
        assert_eq!(got, expected, "racer {i} got another value");
    }
    assert_eq!(cache.get(KEY).expect("get"), Some(expected));
    assert_eq!(cache.stats().fills, 1);
}

/// A filler SIGKILLed inside `f` hands the fill on: one of the processes waiting for
/// it computes the value instead (once), and all of them get that value.
#[test]
fn killed_filler_hands_the_fill_to_a_waiter() {
    const TEST: &str = "killed_filler_hands_the_fill_to_a_waiter";
    const WAITERS: usize = 2;
    if let Some(role) = child_role() {
        child_main(&role);
    }
    let t = TempCache::new("sf-kill");
    let cache = options().open(t.name()).expect("create");
    let mut kids = Children::new();
    let filler = spawn_child(&mut kids, TEST, "blocking-filler", &t, "f", &[]);
    assert!(
        poll_until(deadline_in(60), || t.dir.join("in-fill").exists()),
        "the filler never entered f"
    );
    let waiters: Vec<usize> = (0..WAITERS)
        .map(|i| spawn_child(&mut kids, TEST, "waiter", &t, &i.to_string(), &[]))
        .collect();
    // Each waiter is blocked on the fill slot once it has arrived and every one of its
    // threads sleeps (nothing else in it can sleep after arriving).
    for (i, &w) in waiters.iter().enumerate() {
        let pid = kids.pid(w);
        let waiting = poll_until(deadline_in(60), || {
            t.dir.join(format!("arrived-{i}")).exists()
                && common::thread_states(pid).iter().all(|&s| s == 'S')
        });
        assert!(waiting, "waiter {i} never waited for the fill");
    }
    let status = kids.kill_and_reap(filler);
    assert_eq!(status.signal(), Some(libc::SIGKILL), "filler: {status}");
    for w in waiters {
        assert_exited_cleanly(&mut kids, w, &t, "waiter");
    }
    let runs = lines(&t.dir.join("runs"));
    assert_eq!(runs.len(), 2, "runs of f: {runs:?}");
    assert_eq!(runs[0], "blocking filler");
    let second = runs[1].strip_prefix("waiter ").expect("a waiter took over");
    let expected = format!("filled by waiter {second}").into_bytes();
    for i in 0..WAITERS {
        let got = std::fs::read(result_path(&t.dir, &i.to_string())).expect("result");
        assert_eq!(got, expected, "waiter {i} got another value");
    }
    assert_eq!(cache.get(KEY).expect("get"), Some(expected));
    let s = cache.stats();
    assert_eq!(
        (s.fills, s.recoveries, s.fill_handovers),
        (1, 0, 1),
        "{s:?}"
    );
    let report = cache.verify().expect("verify");
    assert!(report.is_clean(), "{report}");
}

#[derive(Debug, PartialEq, Eq)]
enum FillError {
    Backend,
    Cache(String),
}

impl From<Error> for FillError {
    fn from(e: Error) -> Self {
        FillError::Cache(e.to_string())
    }
}

/// The kernel thread id of the calling thread.
fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}

fn own_thread_state(tid: i32) -> Option<char> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).ok()?;
    text[text.rfind(')')? + 1..].trim_start().chars().next()
}

/// A failing `f` stores nothing and its own error reaches its caller; the next caller
/// (here one that was already waiting) computes the value itself.
#[test]
fn failing_fill_caches_nothing_and_reports_its_error() {
    let t = TempCache::new("sf-fail");
    let cache = options().open(t.name()).expect("create");
    let r = cache.get_or_insert_with(KEY, None, || Err::<Vec<u8>, _>(FillError::Backend));
    assert_eq!(r, Err(FillError::Backend));
    assert_eq!(cache.get(KEY).expect("get"), None);
    assert_eq!(cache.stats().fills, 0);
    assert_eq!(cache.entries().count(), 0);
    let v = cache
        .get_or_insert_with(KEY, None, || Ok::<_, FillError>(b"second try".to_vec()))
        .expect("fill after a failed one");
    assert_eq!(v, b"second try");

    // A filler that fails while another thread waits for it.
    let key2: &[u8] = b"failing-while-watched";
    let (in_fill_tx, in_fill_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let a = cache.clone();
    let failing = std::thread::spawn(move || {
        a.get_or_insert_with(key2, None, || {
            in_fill_tx.send(()).expect("signal in fill");
            let _ = go_rx.recv_timeout(Duration::from_secs(60));
            Err::<Vec<u8>, _>(FillError::Backend)
        })
    });
    in_fill_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the failing filler never ran f");
    let b = cache.clone();
    let b_runs = std::sync::Arc::new(AtomicUsize::new(0));
    let b_runs2 = b_runs.clone();
    let (tid_tx, tid_rx) = mpsc::channel();
    let waiter = std::thread::spawn(move || {
        tid_tx.send(gettid()).expect("send tid");
        b.get_or_insert_with(key2, None, || {
            b_runs2.fetch_add(1, Ordering::SeqCst);
            Ok::<_, FillError>(b"from the waiter".to_vec())
        })
    });
    let tid = tid_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("waiter tid");
    assert!(
        poll_until(deadline_in(60), || own_thread_state(tid) == Some('S')),
        "the waiter never blocked on the fill slot"
    );
    go_tx.send(()).expect("release the failing filler");
    assert_eq!(
        failing.join().expect("failing thread"),
        Err(FillError::Backend)
    );
    assert_eq!(
        waiter.join().expect("waiter thread"),
        Ok(b"from the waiter".to_vec())
    );
    assert_eq!(b_runs.load(Ordering::SeqCst), 1);
    assert_eq!(
        cache.get(key2).expect("get").as_deref(),
        Some(&b"from the waiter"[..])
    );
    assert_eq!(cache.stats().fills, 2);
}

/// A caller whose fill timeout passes while another holds the fill gets
/// `Error::Timeout` without running `f`; once the filler is done, it gets the value.
#[test]
fn fill_timeout_gives_timeout() {
    let t = TempCache::new("sf-timeout");
    let cache = options().open(t.name()).expect("create");
    let impatient = options()
        .fill_timeout(Duration::from_millis(100))
        .attach(t.name())
        .expect("attach");
    let (in_fill_tx, in_fill_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let a = cache.clone();
    let filler = std::thread::spawn(move || {
        a.get_or_insert_with(KEY, None, || {
            in_fill_tx.send(()).expect("signal in fill");
            let _ = go_rx.recv_timeout(Duration::from_secs(60));
            Ok::<_, Error>(b"slow value".to_vec())
        })
    });
    in_fill_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the filler never ran f");
    let mut ran = false;
    let r = impatient.get_or_insert_with(KEY, None, || {
        ran = true;
        Ok::<_, Error>(b"impatient value".to_vec())
    });
    assert!(
        matches!(r, Err(Error::Timeout { .. })),
        "expected a timeout, got {r:?}"
    );
    assert!(!ran, "f ran while another process held the fill");
    assert!(impatient.stats().fill_timeouts >= 1);
    go_tx.send(()).expect("release the filler");
    assert_eq!(
        filler.join().expect("filler thread").expect("fill"),
        b"slow value"
    );
    let v = impatient
        .get_or_insert_with(KEY, None, || {
            ran = true;
            Ok::<_, Error>(b"impatient value".to_vec())
        })
        .expect("get after the fill");
    assert_eq!(v, b"slow value");
    assert!(!ran);
}

/// The writes that revoke a key, each made while another process's fill of the key is
/// computing: what the next reader must see once the fill has returned.
#[derive(Debug, Clone, Copy)]
enum Revocation {
    Remove,
    Set,
    InsertIfAbsent,
    Replace,
    Incr,
    Clear,
}

impl Revocation {
    const ALL: [Revocation; 6] = [
        Revocation::Remove,
        Revocation::Set,
        Revocation::InsertIfAbsent,
        Revocation::Replace,
        Revocation::Incr,
        Revocation::Clear,
    ];

    /// Revokes `KEY` in `cache`; returns what a get must give afterwards.
    fn apply(self, cache: &larder::Cache) -> Option<Vec<u8>> {
        let ttl = Some(Duration::from_secs(300));
        match self {
            Revocation::Remove => {
                // Nothing is cached yet: the remove finds nothing, and still revokes.
                assert!(!cache.remove(KEY).expect("remove"));
                None
            }
            Revocation::Set => {
                cache.set(KEY, b"revoked", ttl).expect("set");
                Some(b"revoked".to_vec())
            }
            Revocation::InsertIfAbsent => {
                assert!(cache.insert_if_absent(KEY, b"revoked", ttl).expect("add"));
                Some(b"revoked".to_vec())
            }
            Revocation::Replace => {
                // Nothing to replace: the cache must stay without the fill's value.
                assert!(!cache.replace(KEY, b"revoked", ttl).expect("replace"));
                None
            }
            Revocation::Incr => {
                assert_eq!(cache.incr(KEY, 1, 0, ttl).expect("incr"), 1);
                Some(1i64.to_le_bytes().to_vec())
            }
            Revocation::Clear => {
                cache.clear().expect("clear");
                None
            }
        }
    }
}

/// A fill that started before a revocation of its key (a remove that found nothing, a
/// set, an add, a replace, an incr, a clear) never stores over it: its caller gets the
/// value it computed, and the next reader sees the revocation. The filler is another
/// process, paused inside `f` until the revocation is acknowledged.
#[test]
fn a_fill_in_flight_never_stores_over_a_revocation() {
    const TEST: &str = "a_fill_in_flight_never_stores_over_a_revocation";
    if let Some(role) = child_role() {
        child_main(&role);
    }
    for revocation in Revocation::ALL {
        let t = TempCache::new("sf-revoke");
        let cache = options().open(t.name()).expect("create");
        let mut kids = Children::new();
        let filler = spawn_child(&mut kids, TEST, "revoked-filler", &t, "f", &[]);
        assert!(
            poll_until(deadline_in(60), || t.dir.join("in-fill").exists()),
            "{revocation:?}: the filler never entered f"
        );
        let expected = revocation.apply(&cache);
        mark(&t.dir, "revoked");
        assert_exited_cleanly(&mut kids, filler, &t, "revoked filler");
        let got = std::fs::read(result_path(&t.dir, "f")).expect("result");
        assert_eq!(
            got, CLAIMS,
            "{revocation:?}: the filler's caller lost its value"
        );
        assert_eq!(
            cache.get(KEY).expect("get"),
            expected,
            "{revocation:?}: the fill undid the revocation"
        );
        let stats = cache.stats();
        assert_eq!(
            (stats.fills, stats.fills_fenced),
            (0, 1),
            "{revocation:?}: {stats:?}"
        );
        let report = cache.verify().expect("verify");
        assert!(report.is_clean(), "{revocation:?}: {report}");
    }
}

/// `begin_fill` / `Fill::complete`, the two-step form of `get_or_insert_with` that
/// bindings use: a second thread (a fill slot is a thread's robust mutex, so threads
/// contend as processes do) gets `WouldBlock` from `try_begin_fill`, waits in
/// `begin_fill`, and then reads what the filler completed.
#[test]
fn a_fill_in_two_steps_is_single_flight() {
    let t = TempCache::new("fill-steps");
    let cache = options().open(t.name()).expect("open");
    let mut out = Vec::new();
    let Begin::Fill(fill) = cache.begin_fill(KEY, &mut out).expect("begin") else {
        panic!("a missing key gives its fill");
    };
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| {
            let mut v = Vec::new();
            let tried = cache.try_begin_fill(KEY, &mut v);
            assert!(matches!(tried, Err(Error::WouldBlock)), "{tried:?}");
            tx.send(()).expect("send");
            match cache.begin_fill(KEY, &mut v).expect("waiting begin") {
                Begin::Fresh => v,
                other => panic!("the waiter should read the completed fill: {other:?}"),
            }
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("waiter tried");
        // The waiter's miss is counted before it waits for the fill: complete only once
        // it is there, so that it reads the value as a waiter, not as a later hit.
        assert!(
            poll_until(deadline_in(60), || cache.stats().misses >= 2),
            "the waiter never missed"
        );
        assert!(fill.complete(CLAIMS, None).expect("complete"));
        assert_eq!(waiter.join().expect("waiter"), CLAIMS);
    });
    let st = cache.stats();
    assert_eq!((st.fills, st.fills_fenced), (1, 0));
    // The filler's miss, the waiter's miss (its `WouldBlock` counts nothing further).
    assert_eq!(st.misses, 2, "{st:?}");
    assert!(matches!(cache.begin_fill(KEY, &mut out), Ok(Begin::Fresh)));
    assert_eq!(out, CLAIMS);
}

/// A dropped fill hands the key to the next caller, and a fill completed after a
/// revocation of its key stores nothing.
#[test]
fn a_dropped_fill_hands_over_and_a_revoked_one_is_fenced() {
    let t = TempCache::new("fill-drop");
    let cache = options().open(t.name()).expect("open");
    let mut out = Vec::new();
    let first = cache.begin_fill(KEY, &mut out).expect("begin");
    assert!(matches!(first, Begin::Fill(_)));
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel();
        let cache = &cache;
        let waiter = scope.spawn(move || {
            let mut v = Vec::new();
            tx.send(()).expect("send");
            match cache.begin_fill(KEY, &mut v).expect("waiting begin") {
                Begin::Fill(fill) => {
                    // Revoked while it computes: the store is refused.
                    assert!(cache.remove(KEY).is_ok());
                    fill.complete(CLAIMS, None).expect("complete")
                }
                other => panic!("the dropped fill should pass to the waiter: {other:?}"),
            }
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("waiter started");
        drop(first);
        assert!(!waiter.join().expect("waiter"), "a revoked fill was stored");
    });
    assert_eq!(cache.get(KEY).expect("get"), None);
    assert_eq!(cache.stats().fills_fenced, 1);
}

/// While another caller refreshes an expired entry, `try_begin_fill` serves the stale
/// value at once; with nothing stale it would wait, so it says `WouldBlock`.
#[test]
fn try_begin_fill_serves_stale_values_and_never_waits() {
    let t = TempCache::new("fill-stale");
    let (cache, clock) = t.open_on_manual_clock();
    cache
        .set(KEY, b"old", Some(Duration::from_secs(1)))
        .expect("set");
    clock.advance(Duration::from_secs(2));
    let mut out = Vec::new();
    let Begin::Fill(fill) = cache.begin_fill(KEY, &mut out).expect("begin") else {
        panic!("an expired key gives its fill");
    };
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                let mut v = Vec::new();
                let got = cache.try_begin_fill(KEY, &mut v).expect("try begin");
                assert!(matches!(got, Begin::Stale), "{got:?}");
                assert_eq!(v, b"old");
            })
            .join()
            .expect("reader");
    });
    assert!(fill.complete(b"new", None).expect("complete"));
    assert_eq!(cache.get(KEY).expect("get").as_deref(), Some(&b"new"[..]));
    assert_eq!(cache.stats().stale_hits, 1);
}
