//! The guarantee of `larder-redis` (the crate docs), checked end to end against a
//! private redis-server: a write made in Redis by any client stops being served by the
//! near cache, through listener death (SIGKILL), listener stop (SIGSTOP), a killed
//! connection, a Redis restart, `FLUSHALL`, racing readers and a half-open connection;
//! a change tracking does not report (`SWAPDB`, also in a transaction, a script,
//! behind a `CONFIG RESETSTAT` or on a replica; `DEBUG RELOAD … MERGE`) stops being
//! served within the bound; a server in cluster mode is refused; and near-cache TTLs
//! never exceed what Redis has left on the key.
//!
//! Each test has its own redis-server and its own larder file in a temp directory
//! removed on drop, so the tests run in parallel. The listener runs in a thread of the
//! test, or, where the test kills or stops it, in a child process that re-executes
//! this test binary for one test with [`ROLE_ENV`] set. Children are killed when their
//! guard drops (also on panic) and end themselves if their parent goes away. Every wait
//! polls against a deadline; timings are printed, never asserted beyond the deadlines.
//! Run with `cargo test --release -p larder-redis --test guarantee -- --nocapture` to
//! see them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use larder::near::{Moment, NearStats};
use larder::Cache;
use larder_redis::testing::{connect, Proxy, RedisServer};
use larder_redis::{Config, Event, Listener, NearCache};

/// `P`: the listener's ping interval in these tests.
const PING_EVERY: Duration = Duration::from_millis(20);
/// `H`: the readers' bound in these tests.
const BOUND: Duration = Duration::from_millis(200);
/// How long the listener waits for a `PING`'s reply.
const REPLY_TIMEOUT: Duration = Duration::from_millis(100);
/// Connect and I/O timeout of every Redis connection the crate opens in these tests:
/// short, so a listener reconnecting through a blackhole retries soon after it lifts.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// The deadline of a wait for something that takes milliseconds on an idle host: long,
/// so a loaded host (tests in parallel) never fails a test that is right.
const SETTLE: Duration = Duration::from_secs(10);
/// A standing-by listener retries the lease every ping interval: it must have the dead
/// holder's lease well within this (the crate's promise to operators).
const TAKEOVER_DEADLINE: Duration = Duration::from_secs(1);
/// How long a child listener lives at most, whatever happens to its parent's guard.
const CHILD_LIFETIME: Duration = Duration::from_secs(120);

/// Tells a re-executed test binary to be a listener (its value: the role).
const ROLE_ENV: &str = "LARDER_REDIS_GUARANTEE_ROLE";
/// The larder file a child listener attaches to.
const PATH_ENV: &str = "LARDER_REDIS_GUARANTEE_PATH";
/// The Redis URL a child listener tracks.
const URL_ENV: &str = "LARDER_REDIS_GUARANTEE_URL";

fn config() -> Config {
    config_for("k:")
}

/// The test settings, tracking `prefix`.
fn config_for(prefix: &str) -> Config {
    Config::new([prefix])
        .ping_every(PING_EVERY)
        .bound(BOUND)
        .reply_timeout(REPLY_TIMEOUT)
        .io_timeout(IO_TIMEOUT)
}

fn cache_options() -> larder::Options {
    larder::Options::new()
        .capacity(4 << 20)
        .max_key_len(64)
        .max_value_len(1024)
}

// ----- waiting -----------------------------------------------------------------------

/// Polls `cond` until it holds (true) or `deadline` passes (false).
fn poll_until(deadline: Instant, mut cond: impl FnMut() -> bool) -> bool {
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_micros(200)); // poll interval; the deadline is checked in this loop
    }
}

fn settle() -> Instant {
    Instant::now() + SETTLE
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Joins `handle` once it has finished, waiting until `deadline`; panics if it is still
/// running then or if it panicked.
fn join_by<T>(handle: JoinHandle<T>, deadline: Instant, what: &str) -> T {
    assert!(
        poll_until(deadline, || handle.is_finished()),
        "{what} did not finish before its deadline"
    );
    handle.join().unwrap_or_else(|_| panic!("{what} panicked"))
}

// ----- files -------------------------------------------------------------------------

/// A fresh directory under the temp dir holding one test's larder file, removed with
/// its contents on drop (also when the test panics).
struct TempDir {
    dir: PathBuf,
}

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "larder-guarantee-{tag}-{}-{n}-{nanos:x}",
            std::process::id()
        ));
        fs::create_dir_all(&dir).expect("temp dir");
        TempDir { dir }
    }

    fn cache_path(&self) -> PathBuf {
        self.dir.join("cache")
    }

    /// Creates the test's larder file.
    fn open(&self) -> Cache {
        cache_options()
            .open(self.cache_path())
            .expect("create the larder file")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

// ----- Redis helpers -----------------------------------------------------------------

/// A plain Redis connection: another client, not the near cache.
fn plain(url: &str) -> redis::Connection {
    connect(url, Duration::from_secs(5)).expect("plain redis connection")
}

fn redis_set(con: &mut redis::Connection, key: &str, value: &str) {
    redis::cmd("SET")
        .arg(key)
        .arg(value)
        .exec(con)
        .expect("SET");
}

fn redis_get(con: &mut redis::Connection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query(con).expect("GET")
}

fn redis_pttl(con: &mut redis::Connection, key: &str) -> i64 {
    redis::cmd("PTTL").arg(key).query(con).expect("PTTL")
}

/// `NearCache::get`, as a string.
fn get(near: &mut NearCache, key: &str) -> Option<String> {
    near.get(key.as_bytes())
        .unwrap_or_else(|e| panic!("NearCache::get({key}): {e}"))
        .map(|v| String::from_utf8(v).expect("utf-8 value"))
}

/// Reads `key` through `near` until a get is a hit (filling it on the way), each get
/// returning `want`; returns how long that took.
fn fill_until_hit(near: &mut NearCache, key: &str, want: &str) -> Duration {
    let start = Instant::now();
    let mut wrong = None;
    let hit = poll_until(settle(), || {
        let hits = near.stats().hits;
        let got = get(near, key);
        if got.as_deref() != Some(want) {
            wrong = Some(got);
            return true;
        }
        near.stats().hits > hits
    });
    assert_eq!(wrong, None, "{key}: wanted {want:?}");
    assert!(
        hit,
        "{key} never became a near-cache hit: {:?}, {:?}",
        near.stats(),
        near.cache().near().stats()
    );
    start.elapsed()
}

/// Waits until the near cache is guarded (its listener is current), and, with
/// `holder`, held by that process; returns how long that took.
fn wait_current(cache: &Cache, holder: Option<u32>, what: &str) -> Duration {
    let start = Instant::now();
    let near = cache.near();
    let ok = poll_until(settle(), || {
        near.guarded(BOUND).expect("guarded")
            && holder.is_none_or(|pid| near.stats().holder == Some(pid))
    });
    assert!(
        ok,
        "{what}: the listener never became current: {:?}",
        near.stats()
    );
    start.elapsed()
}

/// Waits until the near cache holds no entry; returns how long that took.
fn wait_emptied(cache: &Cache, what: &str) -> Duration {
    let start = Instant::now();
    let ok = poll_until(settle(), || cache.entries().next().is_none());
    let left: Vec<_> = cache
        .entries()
        .filter_map(Result::ok)
        .map(|e| e.key)
        .collect();
    assert!(ok, "{what}: the near cache still holds {left:?}");
    start.elapsed()
}

/// Waits until `stat` of the near stats is above `before`; returns the stats then.
fn wait_stat(cache: &Cache, what: &str, before: u64, stat: fn(&NearStats) -> u64) -> NearStats {
    let near = cache.near();
    let mut last = near.stats();
    let ok = poll_until(settle(), || {
        last = near.stats();
        stat(&last) > before
    });
    assert!(ok, "{what} never grew past {before}: {last:?}");
    last
}

// ----- listeners ---------------------------------------------------------------------

/// A listener run by a thread of the test (`Listener::run` with a stop flag). The
/// listener (and the lease it takes, which is not `Send`) is made inside the thread.
struct ThreadListener {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<larder_redis::Result<()>>>,
    name: String,
    events: Arc<Mutex<Vec<(Instant, Event)>>>,
}

impl ThreadListener {
    fn start(path: &Path, url: &str, config: Config) -> ThreadListener {
        let stop = Arc::new(AtomicBool::new(false));
        let events = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let (s, ev, path, url) = (
            Arc::clone(&stop),
            Arc::clone(&events),
            path.to_path_buf(),
            url.to_string(),
        );
        let handle = thread::Builder::new()
            .name("listener".into())
            .spawn(move || {
                let cache = cache_options().attach(&path)?;
                let listener = Listener::new(cache, &url, config)?;
                let _ = tx.send(listener.client_name().to_string());
                listener.run(&s, |e| lock(&ev).push((Instant::now(), e)))
            })
            .expect("spawn the listener thread");
        let mut me = ThreadListener {
            stop,
            handle: Some(handle),
            name: String::new(),
            events,
        };
        match rx.recv_timeout(SETTLE) {
            Ok(name) => me.name = name,
            Err(_) => {
                let r = join_by(me.handle.take().expect("handle"), settle(), "the listener");
                panic!("the listener thread ended before it ran: {r:?}");
            }
        }
        me
    }

    /// The events so far, with how long before now each came.
    fn events(&self) -> Vec<(Duration, Event)> {
        lock(&self.events)
            .iter()
            .map(|(at, e)| (at.elapsed(), e.clone()))
            .collect()
    }

    /// Stops the listener and joins its thread (within a deadline); it must have run
    /// without an error.
    fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let handle = self.handle.take().expect("running");
        join_by(handle, settle(), "the listener thread").expect("the listener's run");
    }
}

impl Drop for ThreadListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take() {
            // Unwinding from a failed assertion: end the thread, don't add a panic.
            if poll_until(settle(), || handle.is_finished()) {
                let _ = handle.join();
            }
        }
    }
}

/// The role this process was started to play, if it is a child listener.
fn child_role() -> Option<String> {
    std::env::var(ROLE_ENV).ok()
}

/// The body of a child listener: runs `Listener::run` on the file and URL its parent
/// gave until it is killed; ends itself if its parent goes away or after
/// [`CHILD_LIFETIME`].
fn child_listener() -> ! {
    let born = Instant::now();
    let parent = std::os::unix::process::parent_id();
    thread::spawn(move || loop {
        if std::os::unix::process::parent_id() != parent || born.elapsed() > CHILD_LIFETIME {
            eprintln!("child listener: parent gone or lifetime over, exiting");
            std::process::exit(3);
        }
        thread::sleep(Duration::from_millis(10)); // poll: deadline CHILD_LIFETIME above
    });
    let var = |name| std::env::var(name).unwrap_or_else(|_| panic!("no {name}"));
    let cache = cache_options().attach(var(PATH_ENV)).expect("attach");
    let listener = Listener::new(cache, &var(URL_ENV), config()).expect("listener");
    let me = std::process::id();
    eprintln!("child listener {me}: running");
    let stop = AtomicBool::new(false);
    let result = listener.run(&stop, |e| {
        eprintln!("child listener {me} at {:?}: {e:?}", born.elapsed())
    });
    eprintln!("child listener {me}: run returned {result:?}");
    std::process::exit(if result.is_ok() { 0 } else { 1 })
}

/// A listener in a child process (this test binary re-executed for test `test` only),
/// SIGKILLed and reaped when dropped unless reaped before, also on panic.
struct ChildListener {
    child: Child,
    reaped: bool,
    log: PathBuf,
}

impl ChildListener {
    fn spawn(test: &str, dir: &TempDir, url: &str) -> ChildListener {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let log = dir.dir.join(format!(
            "listener-{}.log",
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let out = fs::File::create(&log).expect("child log");
        let err = out.try_clone().expect("child log");
        let exe = std::env::current_exe().expect("path of the test binary");
        let child = Command::new(exe)
            .args(["--exact", test, "--nocapture", "--test-threads=1"])
            .env(ROLE_ENV, "listener")
            .env(PATH_ENV, dir.cache_path())
            .env(URL_ENV, url)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn a child listener");
        let me = ChildListener {
            child,
            reaped: false,
            log,
        };
        let running = format!("child listener {}: running", me.pid());
        assert!(
            poll_until(settle(), || me.log().contains(&running)),
            "the child listener never started; its log:\n{}",
            me.log()
        );
        me
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `sig` (a name kill(1) knows) to the child; kill(1) needs no unsafe code.
    fn signal(&self, sig: &str) {
        assert!(!self.reaped, "signal to a reaped child");
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .stdin(Stdio::null())
            .status()
            .expect("run kill(1)");
        assert!(status.success(), "kill -{sig} {}: {status}", self.pid());
    }

    /// Waits until the child is (or is no longer) in the stopped state.
    fn wait_stopped(&self, stopped: bool) {
        let stat = format!("/proc/{}/stat", self.pid());
        let ok = poll_until(settle(), || {
            let text = fs::read_to_string(&stat).unwrap_or_default();
            // The state letter follows the command name, which is in parentheses.
            let state = text
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            (state == Some('T')) == stopped
        });
        assert!(ok, "child {} never became stopped={stopped}", self.pid());
    }

    /// SIGKILLs the child and reaps it.
    fn kill(&mut self) {
        if !self.reaped {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.reaped = true;
        }
    }
}

impl Drop for ChildListener {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            eprintln!("log of child listener {}:\n{}", self.pid(), self.log());
        }
    }
}

// ----- the tests ---------------------------------------------------------------------

/// Once another client's `SET` has returned, the near cache stops serving the old
/// value within about a ping interval plus a round trip.
#[test]
fn a_write_by_another_client_stops_being_served_within_a_ping_and_a_round_trip() {
    let server = RedisServer::start().expect("redis-server");
    let dir = TempDir::new("write");
    let cache = dir.open();
    let listener = ThreadListener::start(&dir.cache_path(), &server.unix_url(), config());
    wait_current(&cache, None, "start");
    let mut w = plain(&server.tcp_url());
    let mut near = NearCache::new(cache.clone(), &server.tcp_url(), config()).expect("near");

    redis_set(&mut w, "k:1", "v1");
    fill_until_hit(&mut near, "k:1", "v1");
    let before = near.stats();
    assert_eq!(get(&mut near, "k:1").as_deref(), Some("v1"));
    assert!(near.stats().hits > before.hits, "{:?}", near.stats());

    redis_set(&mut w, "k:1", "v2");
    let written = Instant::now();
    let mut served_old = 0u64;
    let ok = poll_until(settle(), || match get(&mut near, "k:1").as_deref() {
        Some("v1") => {
            served_old += 1;
            false
        }
        Some("v2") => true,
        other => panic!("k:1 read as {other:?}"),
    });
    let took = written.elapsed();
    assert!(
        ok,
        "v1 still served {took:?} after the write: {:?}",
        near.stats()
    );
    // Never the old value again.
    for _ in 0..100 {
        assert_eq!(get(&mut near, "k:1").as_deref(), Some("v2"));
    }
    eprintln!(
        "a_write_by_another_client: v1 served {served_old} times, for {took:?} after the \
         SET returned (P = {PING_EVERY:?}); {:?}",
        near.stats()
    );
    listener.stop();
}

/// A listener SIGKILLed while holding the lease: the listener standing by takes the
/// lease within a second and flushes; a write made after the kill and before the
/// takeover is served by no one once the new listener is current. Then the same with
/// the successor started only after the kill and the write.
#[test]
fn a_killed_listeners_successor_flushes_and_never_serves_a_write_made_in_the_gap() {
    const TEST: &str =
        "a_killed_listeners_successor_flushes_and_never_serves_a_write_made_in_the_gap";
    if child_role().is_some() {
        child_listener();
    }
    let server = RedisServer::start().expect("redis-server");
    let dir = TempDir::new("sigkill");
    let cache = dir.open();
    let near_area = cache.near();
    let url = server.tcp_url();
    let mut a = ChildListener::spawn(TEST, &dir, &url);
    wait_current(&cache, Some(a.pid()), "listener a");
    let mut b = ChildListener::spawn(TEST, &dir, &url);
    let mut w = plain(&url);
    let mut near = NearCache::new(cache.clone(), &url, config()).expect("near");

    // Round 1: b stands by while a is killed.
    redis_set(&mut w, "k:1", "v1");
    fill_until_hit(&mut near, "k:1", "v1");
    let before = near_area.stats();
    a.kill();
    let killed = Instant::now();
    redis_set(&mut w, "k:1", "v2");
    let in_gap = near_area.stats().takeovers == before.takeovers;
    let mut last = near_area.stats();
    let took_over = poll_until(killed + TAKEOVER_DEADLINE, || {
        last = near_area.stats();
        last.takeovers > before.takeovers && last.holder == Some(b.pid())
    });
    let takeover = killed.elapsed();
    assert!(
        took_over,
        "b did not take the dead holder's lease within {TAKEOVER_DEADLINE:?}: {last:?}; \
         b's log:\n{}",
        b.log()
    );
    assert_eq!(last.leases, before.leases + 1, "{last:?}");
    let emptied = wait_emptied(&cache, "after b's takeover");
    let current = wait_current(&cache, Some(b.pid()), "listener b");
    for _ in 0..100 {
        assert_eq!(
            get(&mut near, "k:1").as_deref(),
            Some("v2"),
            "{:?}",
            near.stats()
        );
    }
    let s = near_area.stats();
    assert!(s.flushes_lease > before.flushes_lease, "{s:?}");
    eprintln!(
        "sigkill round 1: write in the gap: {in_gap}; takeover {takeover:?} after the \
         kill, emptied within {emptied:?} more, current {current:?} later; {s:?}"
    );
    fill_until_hit(&mut near, "k:1", "v2");

    // Round 2: b is killed with no one standing by; the successor c starts after the
    // write.
    let before = near_area.stats();
    b.kill();
    let killed = Instant::now();
    redis_set(&mut w, "k:1", "v3");
    let c = ChildListener::spawn(TEST, &dir, &url);
    let s = wait_stat(&cache, "takeovers", before.takeovers, |s| s.takeovers);
    let takeover = killed.elapsed();
    wait_emptied(&cache, "after c's takeover");
    wait_current(&cache, Some(c.pid()), "listener c");
    for _ in 0..100 {
        assert_eq!(
            get(&mut near, "k:1").as_deref(),
            Some("v3"),
            "{:?}",
            near.stats()
        );
    }
    fill_until_hit(&mut near, "k:1", "v3");
    eprintln!("sigkill round 2: c took over {takeover:?} after the kill (a process start); {s:?}");
    drop(c);
}

/// A listener SIGSTOPped: once its heartbeat is older than the bound readers go to
/// Redis, so a write made during the stop is served at once; after SIGCONT the
/// listener flushes or catches up and is current again, and the old value is never
/// served.
#[test]
fn a_stopped_listener_makes_readers_bypass_and_catches_up_when_continued() {
    const TEST: &str = "a_stopped_listener_makes_readers_bypass_and_catches_up_when_continued";
    if child_role().is_some() {
        child_listener();
    }
    let server = RedisServer::start().expect("redis-server");
    let dir = TempDir::new("sigstop");
    let cache = dir.open();
    let near_area = cache.near();
    let a = ChildListener::spawn(TEST, &dir, &server.unix_url());
    wait_current(&cache, Some(a.pid()), "listener a");
    let mut w = plain(&server.tcp_url());
    let mut near = NearCache::new(cache.clone(), &server.unix_url(), config()).expect("near");

    redis_set(&mut w, "k:1", "v1");
    fill_until_hit(&mut near, "k:1", "v1");
    let before = near_area.stats();
    a.signal("STOP");
    a.wait_stopped(true);
    let stopped = Instant::now();
    assert!(
        poll_until(settle(), || !near_area.guarded(BOUND).expect("guarded")),
        "the stopped listener's heartbeat still guards: {:?}",
        near_area.stats()
    );
    let unguarded = stopped.elapsed();
    redis_set(&mut w, "k:1", "v2");
    let r = near.stats();
    for _ in 0..20 {
        assert_eq!(
            get(&mut near, "k:1").as_deref(),
            Some("v2"),
            "{:?}",
            near.stats()
        );
    }
    let r2 = near.stats();
    assert!(r2.bypasses >= r.bypasses + 20, "{r:?} -> {r2:?}");
    assert_eq!((r2.hits, r2.fills), (r.hits, r.fills), "{r:?} -> {r2:?}");

    a.signal("CONT");
    a.wait_stopped(false);
    let continued = Instant::now();
    let current = wait_current(&cache, Some(a.pid()), "the continued listener");
    for _ in 0..100 {
        assert_eq!(
            get(&mut near, "k:1").as_deref(),
            Some("v2"),
            "{:?}",
            near.stats()
        );
    }
    fill_until_hit(&mut near, "k:1", "v2");
    let s = near_area.stats();
    eprintln!(
        "sigstop: unguarded {unguarded:?} after the stop (H = {BOUND:?}); current again \
         {current:?} after SIGCONT ({:?} stopped); flushes_stale {} -> {}; {s:?}",
        continued - stopped,
        before.flushes_stale,
        s.flushes_stale
    );
    drop(a);
}

/// The id of the connection named `name` in `CLIENT LIST`.
fn client_id(w: &mut redis::Connection, name: &str) -> Option<i64> {
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(w)
        .expect("CLIENT LIST");
    list.lines().find_map(|line| {
        let mut fields = line.split(' ');
        let id = fields.clone().find_map(|f| f.strip_prefix("id="))?;
        fields
            .any(|f| f == format!("name={name}"))
            .then(|| id.parse().expect("numeric client id"))
    })
}

/// `CLIENT KILL` of the listener's connection: it reconnects, flushes (writes may have
/// gone unreported meanwhile), and serves current values again, invalidations
/// included.
#[test]
fn a_killed_listener_connection_reconnects_flushes_and_serves_current_values() {
    let server = RedisServer::start().expect("redis-server");
    let dir = TempDir::new("client-kill");
    let cache = dir.open();
    let url = server.tcp_url();
    let listener = ThreadListener::start(&dir.cache_path(), &url, config());
    assert!(
        listener.name.starts_with("larder-listener-"),
        "{}",
        listener.name
    );
    wait_current(&cache, None, "start");
    let mut w = plain(&url);
    let mut near = NearCache::new(cache.clone(), &url, config()).expect("near");
    redis_set(&mut w, "k:1", "v1");
    redis_set(&mut w, "k:2", "x1");
    fill_until_hit(&mut near, "k:1", "v1");
    fill_until_hit(&mut near, "k:2", "x1");

    let before = cache.near().stats();
    let id = client_id(&mut w, &listener.name).expect("the listener's connection");
    let killed: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(id)
        .query(&mut w)
        .expect("CLIENT KILL");
    assert_eq!(killed, 1);
    let t = Instant::now();
    redis_set(&mut w, "k:1", "v2");
    let s = wait_stat(&cache, "flushes_reconnect", before.flushes_reconnect, |s| {
        s.flushes_reconnect
    });
    let flushed = t.elapsed();
    wait_emptied(&cache, "after the reconnect");
    let current = wait_current(&cache, None, "after the reconnect");
    let new_id = client_id(&mut w, &listener.name).expect("the listener's new connection");
    assert_ne!(new_id, id);
    for _ in 0..100 {
        assert_eq!(
            get(&mut near, "k:1").as_deref(),
            Some("v2"),
            "{:?}",
            near.stats()
        );
    }
    fill_until_hit(&mut near, "k:1", "v2");
    fill_until_hit(&mut near, "k:2", "x1");
    // The new connection tracks: a later write is invalidated as before.
    redis_set(&mut w, "k:2", "x2");
    let t2 = Instant::now();
    assert!(
        poll_until(settle(), || get(&mut near, "k:2").as_deref() == Some("x2")),
        "k:2 never read as x2 after the reconnect"
    );
    eprintln!(
        "client kill: reconnect flush {flushed:?} after the kill, current {current:?} \
         later; a later write unserved after {:?}; {s:?}; events {:?}",
        t2.elapsed(),
        listener.events()
    );
    listener.stop();
}

/// `RedisServer::restart` (SIGKILL, then an empty server on the same socket and port):
/// the listener reconnects and flushes, and the near cache serves current values again
/// (Redis has none of the old ones).
#[test]
fn a_redis_restart_makes_the_listener_reconnect_flush_and_serve_current_values() {
    let mut server = RedisServer::start().expect("redis-server");
    let dir = TempDir::new("restart");
    let cache = dir.open();
    let listener = ThreadListener::start(&dir.cache_path(), &server.unix_url(), config());
    wait_current(&cache, None, "start");
    let mut near = NearCache::new(cache.clone(), &server.tcp_url(), config()).expect("near");
    {
        let mut w = plain(&server.tcp_url());
        redis_set(&mut w, "k:1", "v1");
    }
    fill_until_hit(&mut near, "k:1", "v1");

    let before = cache.near().stats();
    let t = Instant::now();
    server.restart().expect("restart redis-server");
    let restarted = t.elapsed();
    let s = wait_stat(&cache, "flushes_reconnect", before.flushes_reconnect, |s| {
        s.flushes_reconnect
    });
    wait_emptied(&cache, "after the restart");
    let current = wait_current(&cache, None, "after the restart");
    let flushed = t.elapsed();
    let mut w = plain(&server.tcp_url());
    redis_set(&mut w, "k:1", "v2");

    // The reader's own connection died with the old server: a get may fail while it
    // finds out, but it must come back and read the new server.
    let mut errors = Vec::new();
    let back = poll_until(settle(), || match near.get(b"k:1") {
        Ok(v) => {
            assert_eq!(v.as_deref(), Some(&b"v2"[..]), "{:?}", near.stats());
            true
        }
        Err(e) => {
            if errors.len() < 3 {
                errors.push(e.to_string());
            }
            false
        }
    });
    assert!(
        back,
        "the NearCache never read Redis again after its restart; first errors: {errors:?}"
    );
    fill_until_hit(&mut near, "k:1", "v2");
    redis_set(&mut w, "k:1", "v3");
    assert!(
        poll_until(settle(), || get(&mut near, "k:1").as_deref() == Some("v3")),
        "k:1 never read as v3 after the restart"
    );
    eprintln!(
        "restart: took {restarted:?}; listener flushed and current {flushed:?} after it \
         began ({current:?} waited); reader errors {errors:?}; {s:?}; events {:?}",
        listener.events()
    );
    listener.stop();
}

/// `FLUSHALL` by another client empties the near cache.
#[test]
fn flushall_empties_the_near_cache() {
    let server = RedisServer::start().expect("redis-server");
    let dir = TempDir::new("flushall");
    let cache = dir.open();
    let listener = ThreadListener::start(&dir.cache_path(), &server.tcp_url(), config());
    wait_current(&cache, None, "start");
    let mut w = plain(&server.unix_url());
    let mut near = NearCache::new(cache.clone(), &server.tcp_url(), config()).expect("near");
    for i in 0..10 {
        redis_set(&mut w, &format!("k:{i}"), &format!("v{i}"));
    }
    for i in 0..10 {
        fill_until_hit(&mut near, &format!("k:{i}"), &format!("v{i}"));
    }
    assert_eq!(cache.entries().count(), 10);

    let before = cache.near().stats();
    redis::cmd("FLUSHALL").exec(&mut w).expect("FLUSHALL");
    let t = Instant::now();
    let s = wait_stat(&cache, "flushes_server", before.flushes_server, |s| {
        s.flushes_server
    });
    let emptied = wait_emptied(&cache, "after FLUSHALL") + t.elapsed();
    wait_current(&cache, None, "after FLUSHALL");
    for i in 0..10 {
        assert_eq!(get(&mut near, &format!("k:{i}")), None);
    }
    eprintln!("flushall: near cache emptied within {emptied:?}; {s:?}");
    listener.stop();
}

// ----- changes tracking does not report ----------------------------------------------

/// Reads `key` through `near` from `changed` on (an instant by which Redis had
/// replaced `old` with `new` in a way tracking does not report) until it reads `new`,
/// asserting that no read that began more than the bound after `changed` served `old`;
/// then that `old` is never served again. Returns how many reads served `old` and how
/// long after `changed` the last of them began.
fn assert_old_stops_within_the_bound(
    near: &mut NearCache,
    key: &str,
    old: &str,
    new: &str,
    changed: Instant,
    what: &str,
) -> (u64, Option<Duration>) {
    let mut served_old = 0u64;
    let mut last_old = None;
    let ok = poll_until(settle(), || {
        let began = Instant::now();
        let got = get(near, key);
        if got.as_deref() == Some(old) {
            let late = began - changed;
            assert!(
                late <= BOUND,
                "{what}: {key} = {old:?} served {late:?} after the change (H = {BOUND:?}), \
                 {served_old} times before: {:?}, {:?}",
                near.stats(),
                near.cache().near().stats()
            );
            served_old += 1;
            last_old = Some(late);
            return false;
        }
        assert_eq!(got.as_deref(), Some(new), "{what}: {key}");
        true
    });
    assert!(ok, "{what}: {key} never read as {new:?}");
    for _ in 0..100 {
        assert_eq!(get(near, key).as_deref(), Some(new), "{what}: {key}");
    }
    (served_old, last_old)
}

fn select(con: &mut redis::Connection, db: u32) {
    redis::cmd("SELECT").arg(db).exec(con).expect("SELECT");
}

/// Waits until the listener has published a heartbeat sent after now: every write
/// that completed before this call is then applied.
fn wait_caught_up(cache: &Cache, what: &str) {
    let now = Moment::now();
    let near = cache.near();
    let ok = poll_until(settle(), || {
        let since = now.elapsed();
        near.stats().heartbeat_age.is_some_and(|age| age < since)
    });
    assert!(ok, "{what}: no heartbeat sent after it: {:?}", near.stats());
}

/// The values of `k:1` before and after a swap: `old` in db 0 (cached), `new` in db 1.
/// The write to db 1 invalidates `k:1` too (tracking goes by key name, whatever the
/// db), so `old` is cached again after it, from db 0.
fn stage_a_swap(w: &mut redis::Connection, near: &mut NearCache, old: &str, new: &str) {
    redis_set(w, "k:1", old);
    wait_caught_up(near.cache(), "the write to db 0");
    fill_until_hit(near, "k:1", old);
    select(w, 1);
    redis_set(w, "k:1", new);
    select(w, 0);
    wait_caught_up(near.cache(), "the write to db 1");
    fill_until_hit(near, "k:1", old);
}

/// `SWAPDB 0 1` (a dataset reload: build the new data in db 1, swap) sends no
/// invalidation. The listener sees it in the server's command counters before it
/// publishes the next heartbeat and flushes, so the old value is served at most the
/// bound after the swap returned, and then never again.
#[test]
fn a_swapdb_stops_the_old_value_being_served_within_the_bound() {
    let server = RedisServer::start().expect("redis-server");
    let dir = TempDir::new("swapdb");
    let cache = dir.open();
    let listener = ThreadListener::start(&dir.cache_path(), &server.unix_url(), config());
    wait_current(&cache, None, "start");
    let mut w = plain(&server.tcp_url());
    let mut near = NearCache::new(cache.clone(), &server.tcp_url(), config()).expect("near");
    stage_a_swap(&mut w, &mut near, "old", "new");

    let before = cache.near().stats();
    redis::cmd("SWAPDB")
        .arg(0)
        .arg(1)
        .exec(&mut w)
        .expect("SWAPDB");
    let swapped = Instant::now();
    let (served_old, last_old) =
        assert_old_stops_within_the_bound(&mut near, "k:1", "old", "new", swapped, "SWAPDB");
    let s = wait_stat(&cache, "flushes_server", before.flushes_server, |s| {
        s.flushes_server
    });
    fill_until_hit(&mut near, "k:1", "new");
    // The listener counts the flush as it starts it and tells its event once it is done:
    // wait for the event (within the deadline).
    let mut events = Vec::new();
    let told = poll_until(settle(), || {
        events = listener.events();
        events
            .iter()
            .any(|(_, e)| matches!(e, Event::UnreportedChange(why) if why.contains("SWAPDB")))
    });
    assert!(told, "{events:?}");
    eprintln!(
        "swapdb: the old value served {served_old} times, the last read beginning \
         {last_old:?} after the swap (H = {BOUND:?}, P = {PING_EVERY:?}); {s:?}; events \
         {events:?}"
    );
    listener.stop();
}

/// The same unreported replacement of the dataset in other forms: `SWAPDB` in a
/// transaction and in a script, a `SWAPDB` behind a `CONFIG RESETSTAT` that leaves
/// the swap counter where it was, and `DEBUG RELOAD NOSAVE NOFLUSH MERGE` (the RDB
/// file's values over the dataset). Each stops the old value being served within the
/// bound.
#[test]
fn swaps_in_transactions_scripts_behind_a_stats_reset_and_debug_reload_merge_are_caught() {
    let server = RedisServer::start_with(&["--enable-debug-command", "yes"]).expect("redis-server");
    let dir = TempDir::new("unreported");
    let cache = dir.open();
    let listener = ThreadListener::start(&dir.cache_path(), &server.tcp_url(), config());
    wait_current(&cache, None, "start");
    let mut w = plain(&server.unix_url());
    let mut near = NearCache::new(cache.clone(), &server.tcp_url(), config()).expect("near");
    let swap_in_multi = |w: &mut redis::Connection| {
        redis::pipe()
            .atomic()
            .cmd("SWAPDB")
            .arg(0)
            .arg(1)
            .exec(w)
            .expect("MULTI SWAPDB EXEC");
    };
    let swap_in_script = |w: &mut redis::Connection| {
        redis::cmd("EVAL")
            .arg("redis.call('swapdb', 0, 1)")
            .arg(0)
            .exec(w)
            .expect("EVAL swapdb");
    };
    // Both counters stay at 1 across it: only their sum going down shows the reset.
    let reset_and_swap = |w: &mut redis::Connection| {
        redis::pipe()
            .atomic()
            .cmd("CONFIG")
            .arg("RESETSTAT")
            .cmd("SWAPDB")
            .arg(0)
            .arg(1)
            .exec(w)
            .expect("MULTI CONFIG RESETSTAT SWAPDB EXEC");
    };
    // The listener's account of the last change, once it has one after `seen` events.
    let told = |seen: usize, what: &str, needle: &str| {
        let mut events = Vec::new();
        let ok = poll_until(settle(), || {
            events = listener.events();
            events[seen..]
                .iter()
                .any(|(_, e)| matches!(e, Event::UnreportedChange(why) if why.contains(needle)))
        });
        assert!(
            ok,
            "{what}: no UnreportedChange naming {needle:?}: {events:?}"
        );
    };
    let mut report = Vec::new();
    type Change<'a> = &'a dyn Fn(&mut redis::Connection);
    let changes: [(&str, Change<'_>, &str); 3] = [
        ("SWAPDB in MULTI", &swap_in_multi, "SWAPDB"),
        ("SWAPDB in EVAL", &swap_in_script, "SWAPDB"),
        ("CONFIG RESETSTAT then SWAPDB", &reset_and_swap, "reset"),
    ];
    for (i, (what, change, needle)) in changes.iter().enumerate() {
        if i == 2 {
            // So that `config|resetstat` and `swapdb` count 1 each before the change.
            reset_and_swap(&mut w);
        }
        let (old, new) = (format!("old {i}"), format!("new {i}"));
        stage_a_swap(&mut w, &mut near, &old, &new);
        let seen = listener.events().len();
        change(&mut w);
        let changed = Instant::now();
        report.push((
            *what,
            assert_old_stops_within_the_bound(&mut near, "k:1", &old, &new, changed, what),
        ));
        told(seen, what, needle);
    }

    // DEBUG RELOAD NOSAVE NOFLUSH MERGE: the saved value comes back over the newer one.
    redis_set(&mut w, "k:1", "saved");
    redis::cmd("SAVE").exec(&mut w).expect("SAVE");
    redis_set(&mut w, "k:1", "newer");
    wait_caught_up(&cache, "the write of the newer value");
    fill_until_hit(&mut near, "k:1", "newer");
    let seen = listener.events().len();
    redis::cmd("DEBUG")
        .arg(&["RELOAD", "NOSAVE", "NOFLUSH", "MERGE"])
        .exec(&mut w)
        .expect("DEBUG RELOAD");
    let changed = Instant::now();
    assert_eq!(redis_get(&mut w, "k:1").as_deref(), Some("saved"));
    let what = "DEBUG RELOAD NOSAVE NOFLUSH MERGE";
    report.push((
        what,
        assert_old_stops_within_the_bound(&mut near, "k:1", "newer", "saved", changed, what),
    ));
    told(seen, what, "DEBUG");
    eprintln!(
        "unreported changes: (change, (old value served, the last read beginning this \
         long after the change)): {report:?} (H = {BOUND:?}); {:?}",
        cache.near().stats()
    );
    listener.stop();
}

/// The listener and the readers on a replica: a `SWAPDB` run on the primary reaches
/// the replica through replication, unreported there too, and is caught in the
/// replica's own counters.
#[test]
fn a_swapdb_on_the_primary_is_caught_by_a_listener_on_a_replica() {
    let primary = RedisServer::start_with(&["--repl-diskless-sync-delay", "0"]).expect("primary");
    let replica = RedisServer::start().expect("replica");
    let mut r = plain(&replica.tcp_url());
    let at = primary.tcp_addr();
    redis::cmd("REPLICAOF")
        .arg(at.ip().to_string())
        .arg(at.port())
        .exec(&mut r)
        .expect("REPLICAOF");
    let mut w = plain(&primary.tcp_url());
    redis_set(&mut w, "k:synced", "yes");
    assert!(
        poll_until(settle(), || redis_get(&mut r, "k:synced").is_some()),
        "the replica never synced"
    );
    let dir = TempDir::new("replica");
    let cache = dir.open();
    let listener = ThreadListener::start(&dir.cache_path(), &replica.unix_url(), config());
    wait_current(&cache, None, "start");
    let mut near = NearCache::new(cache.clone(), &replica.tcp_url(), config()).expect("near");

    redis_set(&mut w, "k:1", "old");
    select(&mut w, 1);
    redis_set(&mut w, "k:1", "new");
    select(&mut w, 0);
    let mut r1 = plain(&replica.tcp_url());
    select(&mut r1, 1);
    assert!(
        poll_until(settle(), || redis_get(&mut r1, "k:1").as_deref()
            == Some("new")),
        "db 1's write never reached the replica"
    );
    wait_caught_up(&cache, "the writes on the replica");
    fill_until_hit(&mut near, "k:1", "old");
    redis::cmd("SWAPDB")
        .arg(0)
        .arg(1)
        .exec(&mut w)
        .expect("SWAPDB");
    // The bound counts from when the replica had applied it: by the time it shows.
    assert!(
        poll_until(settle(), || redis_get(&mut r, "k:1").as_deref()
            == Some("new")),
        "the swap never reached the replica"
    );
    let applied = Instant::now();
    let (served_old, last_old) = assert_old_stops_within_the_bound(
        &mut near,
        "k:1",
        "old",
        "new",
        applied,
        "SWAPDB on the primary",
    );
    eprintln!(
        "replica: the old value served {served_old} times after the swap showed on the \
         replica, the last read beginning {last_old:?} after; {:?}",
        cache.near().stats()
    );
    listener.stop();
}

/// Runs a listener on `url` (in a thread, stopped after the deadline if it still
/// runs) and asserts that it refuses the server with `Error::Unsupported` mentioning
/// `needle`, having let the lease go so that readers go to Redis.
fn assert_refused(url: &str, needle: &str) {
    let dir = TempDir::new("refused");
    let cache = dir.open();
    let stop = Arc::new(AtomicBool::new(false));
    let (path, url, s) = (dir.cache_path(), url.to_string(), Arc::clone(&stop));
    let t = Instant::now();
    let handle = thread::spawn(move || {
        let cache = cache_options().attach(&path)?;
        let mut events = Vec::new();
        let r = Listener::new(cache, &url, config())?.run(&s, |e| events.push(e));
        r.map(|()| events)
    });
    let refused = poll_until(settle(), || handle.is_finished());
    let took = t.elapsed();
    stop.store(true, Ordering::SeqCst);
    let r = join_by(handle, settle(), "the listener");
    assert!(
        refused,
        "{needle}: the listener still ran {took:?} after it started: {:?}",
        cache.near().stats()
    );
    match r {
        Err(e @ larder_redis::Error::Unsupported(_)) => {
            assert!(e.to_string().contains(needle), "{e}")
        }
        other => panic!("{needle}: expected a refusal, got {other:?}"),
    }
    let s = cache.near().stats();
    assert_eq!((s.heartbeat_age, s.holder), (None, None), "{s:?}");
    assert!(!cache.near().guarded(BOUND).expect("guarded"));
    eprintln!("refused ({needle}) {took:?} after the start; {s:?}");
}

/// A listener refuses a Redis in cluster mode (tracking there reports one node's
/// writes only): `Listener::run` returns `Error::Unsupported` saying so, having let
/// the lease go, so readers go to Redis.
#[test]
fn a_listener_refuses_a_server_in_cluster_mode() {
    let server = RedisServer::start_with(&["--cluster-enabled", "yes"]).expect("redis-server");
    assert_refused(&server.tcp_url(), "cluster mode");
}

/// A listener whose Redis user may not run `INFO` cannot see what tracking does not
/// report: it refuses, saying which permission to grant.
#[test]
fn a_listener_refuses_a_server_that_denies_it_info() {
    let server = RedisServer::start().expect("redis-server");
    let mut admin = plain(&server.tcp_url());
    redis::cmd("ACL")
        .arg(&[
            "SETUSER", "noinfo", "on", ">pw", "~*", "&*", "+@all", "-info",
        ])
        .exec(&mut admin)
        .expect("ACL SETUSER");
    let url = format!("redis://noinfo:pw@{}", server.tcp_addr());
    assert_refused(&url, "+info");
}

/// Both clocks behind TTLs count whole milliseconds, and larder's is the coarse
/// monotonic clock (a few milliseconds of resolution): TTLs read from the two are
/// compared with this allowance.
const CLOCK_SLACK: Duration = Duration::from_millis(10);

/// The remaining TTL of `key`'s near-cache entry (`None`: no entry; `Some(None)`: no
/// TTL).
fn entry_ttl(cache: &Cache, key: &str) -> Option<Option<Duration>> {
    cache
        .entries()
        .map(|e| e.expect("entries"))
        .find(|e| e.key == key.as_bytes())
        .map(|e| e.ttl)
}

/// A near-cache TTL never exceeds what Redis has left on the key (read before the get,
/// with an allowance for the clocks' resolution) nor the configured cap, also when
/// another client sets the expiry (`PEXPIRE`, `SET … PX`) after the key was cached.
#[test]
fn near_cache_ttls_never_exceed_the_servers_nor_the_cap() {
    const CAP: Duration = Duration::from_secs(2);
    let server = RedisServer::start().expect("redis-server");
    let dir = TempDir::new("ttl");
    let cache = dir.open();
    let listener = ThreadListener::start(&dir.cache_path(), &server.tcp_url(), config());
    wait_current(&cache, None, "start");
    let mut w = plain(&server.tcp_url());
    let mut near =
        NearCache::new(cache.clone(), &server.tcp_url(), config().ttl_cap(CAP)).expect("near");

    // No expiry in Redis: the cap.
    redis_set(&mut w, "k:x", "forever");
    fill_until_hit(&mut near, "k:x", "forever");
    let ttl = entry_ttl(&cache, "k:x").expect("an entry").expect("a TTL");
    assert!(ttl <= CAP, "{ttl:?} above the cap {CAP:?}");
    // An expiry longer than the cap: the cap.
    redis::cmd("SET")
        .arg("k:long")
        .arg("long")
        .arg("PX")
        .arg(60_000)
        .exec(&mut w)
        .expect("SET PX");
    fill_until_hit(&mut near, "k:long", "long");
    let long = entry_ttl(&cache, "k:long")
        .expect("an entry")
        .expect("a TTL");
    assert!(long <= CAP, "{long:?} above the cap {CAP:?}");

    // PEXPIRE on the cached key: it is invalidated, and the next fill takes what Redis
    // has left.
    let pexpire: i64 = redis::cmd("PEXPIRE")
        .arg("k:x")
        .arg(300)
        .query(&mut w)
        .expect("PEXPIRE");
    assert_eq!(pexpire, 1);
    assert!(
        poll_until(settle(), || entry_ttl(&cache, "k:x").is_none()),
        "PEXPIRE did not invalidate k:x: {:?}",
        entry_ttl(&cache, "k:x")
    );
    let server_before = redis_pttl(&mut w, "k:x");
    assert!(
        (0..=300).contains(&server_before),
        "PTTL k:x = {server_before}"
    );
    assert_eq!(get(&mut near, "k:x").as_deref(), Some("forever"));
    let near_ttl = entry_ttl(&cache, "k:x");
    let server_after = redis_pttl(&mut w, "k:x");
    if let Some(ttl) = near_ttl {
        // Filled (unless the heartbeat lagged just then): within what Redis had left.
        let ttl = ttl.expect("a TTL");
        let limit = Duration::from_millis(server_before as u64) + CLOCK_SLACK;
        assert!(
            ttl <= limit,
            "near TTL {ttl:?} above Redis's {server_before} ms"
        );
        assert!(ttl <= CAP);
    }

    // SET … PX by another client on a cached key.
    redis_set(&mut w, "k:y", "y1");
    fill_until_hit(&mut near, "k:y", "y1");
    redis::cmd("SET")
        .arg("k:y")
        .arg("y2")
        .arg("PX")
        .arg(300)
        .exec(&mut w)
        .expect("SET PX");
    let server_y = redis_pttl(&mut w, "k:y");
    assert!(
        poll_until(settle(), || get(&mut near, "k:y").as_deref() == Some("y2")),
        "k:y never read as y2"
    );
    if let Some(ttl) = entry_ttl(&cache, "k:y") {
        let ttl = ttl.expect("a TTL");
        let limit = Duration::from_millis(server_y as u64) + CLOCK_SLACK;
        assert!(ttl <= limit, "near TTL {ttl:?} above Redis's {server_y} ms");
    }
    // Once Redis has expired the key, the near cache stops serving it within the bound.
    // (Not at once: the entry's TTL is what Redis had left when it answered, counted
    // from the fill, a round trip later, on a clock of a few milliseconds'
    // resolution.)
    let mut gone = None;
    let expired = poll_until(settle(), || {
        let none = redis_get(&mut w, "k:y").is_none();
        gone = none.then(Instant::now);
        none
    });
    assert!(expired, "Redis never expired k:y");
    let gone = gone.expect("expired");
    let mut served_after_expiry = 0u64;
    let stopped_serving = poll_until(settle(), || {
        let began = Instant::now();
        match get(&mut near, "k:y") {
            None => true,
            Some(v) => {
                assert_eq!(v, "y2");
                assert!(
                    began <= gone + BOUND,
                    "k:y still served {:?} after Redis expired it: {:?}",
                    began - gone,
                    near.stats()
                );
                served_after_expiry += 1;
                false
            }
        }
    });
    let expiry_lag = gone.elapsed();
    assert!(stopped_serving, "k:y still served after Redis expired it");
    eprintln!(
        "ttl: cap {CAP:?}: no-expiry entry {ttl:?}, 60 s entry {long:?}; after PEXPIRE \
         300: Redis {server_before} ms before the fill, near {near_ttl:?}, Redis \
         {server_after} ms after; SET PX 300: Redis {server_y} ms; once Redis had \
         expired it, served {served_after_expiry} more times, for {expiry_lag:?}"
    );
    listener.stop();
}

/// The writes of the race: per key, when each version's `SET` had returned.
struct Written {
    keys: Vec<Mutex<Vec<(Instant, u64)>>>,
}

impl Written {
    /// The newest version of key `k` whose `SET` had returned before `t`.
    fn completed_before(&self, k: usize, t: Instant) -> Option<u64> {
        let list = lock(&self.keys[k]);
        let n = list.partition_point(|(at, _)| *at < t);
        n.checked_sub(1).map(|i| list[i].1)
    }
}

fn race_key(k: usize) -> String {
    format!("k:{k}")
}

/// Readers whose replies come late (a proxy delays them) race a writer that keeps
/// overwriting a few keys. Every read reflects each write that had returned before the
/// read began minus the bound; once the writes stop and the listener has published a
/// heartbeat sent after the last one, every near-cache entry equals Redis.
#[test]
fn racing_readers_and_a_writer_leave_only_current_entries() {
    const KEYS: usize = 8;
    const READERS: usize = 4;
    const WRITES: u64 = 20_000;
    let server = RedisServer::start().expect("redis-server");
    let dir = TempDir::new("race");
    let cache = dir.open();
    let proxy = Proxy::start(server.tcp_addr()).expect("proxy");
    proxy.set_delay(Duration::from_millis(2));
    let listener = ThreadListener::start(&dir.cache_path(), &server.tcp_url(), config());
    wait_current(&cache, None, "start");
    let mut w = plain(&server.tcp_url());
    let written = Arc::new(Written {
        keys: (0..KEYS).map(|_| Mutex::new(Vec::new())).collect(),
    });
    for k in 0..KEYS {
        redis_set(&mut w, &race_key(k), "0");
        lock(&written.keys[k]).push((Instant::now(), 0));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..READERS)
        .map(|r| {
            let (cache, url) = (cache.clone(), proxy.url());
            let (stop, reads, written) =
                (Arc::clone(&stop), Arc::clone(&reads), Arc::clone(&written));
            thread::spawn(move || -> Result<larder_redis::ReaderStats, String> {
                let mut near = NearCache::new(cache, &url, config()).map_err(|e| e.to_string())?;
                let mut i = r;
                while !stop.load(Ordering::SeqCst) {
                    let k = i % KEYS;
                    i += 1;
                    let began = Instant::now();
                    let v = near
                        .get(race_key(k).as_bytes())
                        .map_err(|e| e.to_string())?
                        .ok_or_else(|| format!("{} missing", race_key(k)))?;
                    let v: u64 = String::from_utf8_lossy(&v)
                        .parse()
                        .map_err(|e| format!("{}: {e}", race_key(k)))?;
                    // The guarantee: a read reflects every write done before it began - H.
                    if let Some(due) = began
                        .checked_sub(BOUND)
                        .and_then(|t| written.completed_before(k, t))
                    {
                        if v < due {
                            return Err(format!(
                                "reader {r}: {} read as {v}, but {due} was written more \
                                 than {BOUND:?} before the read began; {:?}",
                                race_key(k),
                                near.stats()
                            ));
                        }
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                }
                Ok(near.stats())
            })
        })
        .collect();

    let writer = {
        let (url, written) = (server.tcp_url(), Arc::clone(&written));
        thread::spawn(move || {
            let mut w = plain(&url);
            for version in 1..=WRITES {
                let k = (version as usize * 7) % KEYS;
                redis_set(&mut w, &race_key(k), &version.to_string());
                lock(&written.keys[k]).push((Instant::now(), version));
            }
        })
    };
    let began = Instant::now();
    join_by(
        writer,
        Instant::now() + Duration::from_secs(60),
        "the writer",
    );
    let wrote_for = began.elapsed();
    let last_write = Moment::now();

    // A heartbeat sent after the last write has been published: every invalidation is
    // applied. Readers go on reading meanwhile, and until the near cache holds entries.
    let near_area = cache.near();
    let fresh = poll_until(settle(), || {
        let since = last_write.elapsed();
        near_area
            .stats()
            .heartbeat_age
            .is_some_and(|age| age < since)
    });
    assert!(
        fresh,
        "no heartbeat after the last write: {:?}",
        near_area.stats()
    );
    let reads_then = reads.load(Ordering::Relaxed);
    assert!(
        poll_until(settle(), || {
            reads.load(Ordering::Relaxed) > reads_then + 100 && cache.entries().next().is_some()
        }),
        "the readers stopped or never filled: {:?}",
        near_area.stats()
    );
    stop.store(true, Ordering::SeqCst);
    let mut stats = Vec::new();
    for (r, h) in readers.into_iter().enumerate() {
        match join_by(h, settle(), &format!("reader {r}")) {
            Ok(s) => stats.push(s),
            Err(e) => panic!("{e}"),
        }
    }

    let mut compared = 0;
    for e in cache.entries() {
        let e = e.expect("entries");
        let key = String::from_utf8(e.key.clone()).expect("utf-8 key");
        let Some(v) = cache.get(&e.key).expect("larder get") else {
            continue; // expired since the listing
        };
        assert_eq!(
            Some(String::from_utf8(v).expect("utf-8 value")),
            redis_get(&mut w, &key),
            "near-cache entry {key} differs from Redis"
        );
        compared += 1;
    }
    assert!(compared > 0);
    let total = |f: fn(&larder_redis::ReaderStats) -> u64| stats.iter().map(f).sum::<u64>();
    eprintln!(
        "race: {WRITES} writes in {wrote_for:?}; {} reads: {} hits, {} Redis reads, {} \
         bypasses, {} fills, {} fills refused; {compared} entries equal Redis; {:?}",
        reads.load(Ordering::Relaxed),
        total(|s| s.hits),
        total(|s| s.redis_reads),
        total(|s| s.bypasses),
        total(|s| s.fills),
        total(|s| s.fills_refused),
        near_area.stats()
    );
    listener.stop();
    drop(proxy);
}

/// The listener's connection goes half-open (a proxy drops everything, closing
/// nothing): within the bound plus the reply timeout its heartbeat stops guarding, and
/// a write made meanwhile is never served (readers bypass). Once the path works again
/// the listener reconnects, flushes and serves the new value.
#[test]
fn a_blackholed_listener_connection_stops_guarding_within_the_bound_and_recovers() {
    let server = RedisServer::start().expect("redis-server");
    let dir = TempDir::new("blackhole");
    let cache = dir.open();
    let near_area = cache.near();
    let proxy = Proxy::start(server.tcp_addr()).expect("proxy");
    let listener = ThreadListener::start(&dir.cache_path(), &proxy.url(), config());
    wait_current(&cache, None, "start");
    let mut w = plain(&server.tcp_url());
    let mut near = NearCache::new(cache.clone(), &server.tcp_url(), config()).expect("near");
    redis_set(&mut w, "k:1", "v1");
    fill_until_hit(&mut near, "k:1", "v1");

    let before = near_area.stats();
    proxy.blackhole(true);
    let holed = Instant::now();
    redis_set(&mut w, "k:1", "v2");
    // Until the listener notices, v1 may be served (the write is younger than H).
    assert!(
        poll_until(settle(), || !near_area.guarded(BOUND).expect("guarded")),
        "the blackholed listener still guards: {:?}",
        near_area.stats()
    );
    let unguarded = holed.elapsed();
    let r = near.stats();
    // While the path stays dark: v2 every time, from Redis.
    let window = Instant::now() + Duration::from_millis(300);
    let mut reads = 0u64;
    poll_until(window, || {
        assert_eq!(
            get(&mut near, "k:1").as_deref(),
            Some("v2"),
            "{:?}",
            near.stats()
        );
        reads += 1;
        false
    });
    let r2 = near.stats();
    assert!(r2.bypasses >= r.bypasses + reads, "{r:?} -> {r2:?}");
    assert_eq!(r2.hits, r.hits, "{r:?} -> {r2:?}");

    proxy.blackhole(false);
    let lifted = Instant::now();
    let s = wait_stat(&cache, "flushes_reconnect", before.flushes_reconnect, |s| {
        s.flushes_reconnect
    });
    let current = wait_current(&cache, None, "after the blackhole");
    let recovered = lifted.elapsed();
    for _ in 0..100 {
        assert_eq!(
            get(&mut near, "k:1").as_deref(),
            Some("v2"),
            "{:?}",
            near.stats()
        );
    }
    fill_until_hit(&mut near, "k:1", "v2");
    redis_set(&mut w, "k:1", "v3");
    assert!(
        poll_until(settle(), || get(&mut near, "k:1").as_deref() == Some("v3")),
        "k:1 never read as v3 after the blackhole"
    );
    eprintln!(
        "blackhole: unguarded {unguarded:?} after it began (H + reply timeout = {:?}); \
         {reads} reads during it, all from Redis; current {recovered:?} after it lifted \
         ({current:?} waited); {s:?}; events {:?}",
        BOUND + REPLY_TIMEOUT,
        listener.events()
    );
    listener.stop();
    drop(proxy);
}

/// A reader whose prefixes are not the listener's never serves or fills from the near
/// cache (the listener would never invalidate its keys): it bypasses, and a write by
/// another client is seen at once.
#[test]
fn a_reader_with_other_prefixes_than_the_listener_bypasses_the_near_cache() {
    let server = RedisServer::start().expect("redis-server");
    let dir = TempDir::new("scope");
    let cache = dir.open();
    let listener = ThreadListener::start(&dir.cache_path(), &server.tcp_url(), config());
    wait_current(&cache, None, "start");
    let mut w = plain(&server.unix_url());
    let mut near =
        NearCache::new(cache.clone(), &server.tcp_url(), config_for("o:")).expect("near");
    redis_set(&mut w, "o:1", "v1");
    for _ in 0..3 {
        assert_eq!(get(&mut near, "o:1").as_deref(), Some("v1"));
    }
    redis_set(&mut w, "o:1", "v2");
    assert_eq!(get(&mut near, "o:1").as_deref(), Some("v2"));
    let s = near.stats();
    assert_eq!((s.hits, s.fills), (0, 0), "{s:?}");
    assert_eq!(s.bypasses, 4, "{s:?}");
    assert_eq!(cache.entries().count(), 0);
    listener.stop();
}

/// Configurations that cannot work are refused when the reader or listener is made:
/// overlapping prefixes (Redis refuses them in one CLIENT TRACKING), a ping interval over
/// half the bound, and a listener URL asking for RESP2 (no invalidation pushes).
#[test]
fn configurations_that_cannot_work_are_refused() {
    let dir = TempDir::new("config");
    let cache = dir.open();
    let url = "redis://127.0.0.1:1/";
    for (config, needle) in [
        (Config::new(["k:", "k:a"]), "overlaps"),
        (Config::new(["", "k:"]), "overlaps"),
        (
            Config::new(["k:"])
                .ping_every(Duration::from_millis(600))
                .bound(Duration::from_secs(1)),
            "half the bound",
        ),
        (Config::new(Vec::<&str>::new()), "no prefix"),
    ] {
        match Listener::new(cache.clone(), url, config) {
            Err(e @ larder_redis::Error::Config(_)) => {
                assert!(e.to_string().contains(needle), "{e}")
            }
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }
    for url in [
        "redis://127.0.0.1:1/?protocol=resp2",
        "redis://127.0.0.1:1/?protocol=2",
    ] {
        match Listener::new(cache.clone(), url, Config::new(["k:"])) {
            Err(e @ larder_redis::Error::Config(_)) => {
                assert!(e.to_string().contains("RESP3"), "{e}")
            }
            other => panic!("{url}: expected a configuration error, got {other:?}"),
        }
    }
    assert!(Listener::new(
        cache,
        "redis://127.0.0.1:1/?protocol=resp3",
        Config::new(["k:"])
    )
    .is_ok());
}
