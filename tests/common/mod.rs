//! Shared test helpers: unique cache files in a private temp dir, removed on drop (also
//! when the test panics); the options most tests start from; child processes that never
//! outlive a test; deadlines; a deterministic RNG and self-checking values.
//!
//! Included by every integration test (`mod common;`) and by cli/tests/cli.rs (by path),
//! so it uses nothing but std, larder and libc. Helpers that patch cache files byte by
//! byte need xxhash-rust as well and live in `image.rs` beside this file.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Nanoseconds since the Unix epoch (0 if the clock is before it).
pub fn nanos_since_epoch() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// A name no other test, process or earlier run uses: `larder-{tag}-{pid}-{n}-{nanos}`.
pub fn unique_name(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!(
        "larder-{tag}-{}-{n}-{:x}",
        std::process::id(),
        nanos_since_epoch()
    )
}

/// A path as the `&str` that cache names are.
pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// The options most tests start from: a 4 MiB file, keys up to 64 bytes, values up to
/// 1 KiB. Tests change what they need on top.
pub fn small_options() -> larder::Options {
    larder::Options::new()
        .capacity(4 << 20)
        .max_key_len(64)
        .max_value_len(1024)
}

/// `opts` with lock and fill timeouts of 30 s: on a loaded machine no lock or fill may
/// time out unless the test means it to (a stopped holder still costs a bounded wait).
pub fn long_timeouts(opts: larder::Options) -> larder::Options {
    opts.lock_timeout(std::time::Duration::from_secs(30))
        .fill_timeout(std::time::Duration::from_secs(30))
}

/// A temp directory holding one test's cache file; removed on drop.
pub struct TempCache {
    pub dir: PathBuf,
    pub path: PathBuf,
}

impl TempCache {
    pub fn new(tag: &str) -> TempCache {
        let dir = std::env::temp_dir().join(unique_name(&format!("test-{tag}")));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("cache");
        TempCache { dir, path }
    }

    pub fn name(&self) -> &str {
        s(&self.path)
    }

    /// The path of another file in this directory, as a cache name (it has a '/', so it
    /// never names a file in /dev/shm).
    pub fn file(&self, name: &str) -> String {
        s(&self.dir.join(name)).to_string()
    }

    pub fn options(&self) -> larder::Options {
        small_options()
    }

    pub fn open(&self) -> larder::Cache {
        self.options().open(self.name()).expect("open cache")
    }

    /// The test's cache on a manual clock, and the clock.
    pub fn open_on_manual_clock(&self) -> (larder::Cache, larder::Clock) {
        let clock = larder::Clock::manual();
        let c = self
            .options()
            .clock(clock.clone())
            .open(self.name())
            .expect("open cache");
        (c, clock)
    }
}

impl Drop for TempCache {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Removes the cache `name` (a bare name, in /dev/shm, or a path) when dropped, also when
/// the test panics: for a test whose file cannot live in a [`TempCache`]'s directory.
pub struct UnlinkOnDrop(pub String);

impl Drop for UnlinkOnDrop {
    fn drop(&mut self) {
        let _ = larder::Cache::unlink(&self.0);
    }
}

/// `Cache::repair_offline` once this process's last handle on the file has closed: the
/// handle holds nothing after `drop` returns (no thread of larder's keeps a mapping), so
/// the repair never finds the file in use (tests/errors.rs,
/// `offline_repair_right_after_the_last_handle_closes_is_not_in_use`).
pub fn repair_offline_after_close(name: &str) -> larder::RepairReport {
    larder::Cache::repair_offline(name, &larder::Options::new()).expect("offline repair")
}

// ----- processes, deadlines and self-checking values (crash, single-flight, fork tests) --

use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Environment variable that tells a re-executed test binary which child role to play.
pub const CHILD_ROLE_ENV: &str = "LARDER_TEST_CHILD";

/// The role this process was started to play, if it is a child of a multi-process test.
pub fn child_role() -> Option<String> {
    std::env::var(CHILD_ROLE_ENV).ok()
}

/// A command that re-runs this test binary for one test only, as a child playing `role`.
/// Works under `cargo test` and `cargo nextest run` alike (both run libtest binaries).
/// Crash-point settings are cleared; a caller that wants one sets it on the command.
pub fn self_command(test_name: &str, role: &str) -> Command {
    let exe = std::env::current_exe().expect("path of the test binary");
    let mut cmd = Command::new(exe);
    cmd.args([
        "--exact",
        test_name,
        "--nocapture",
        "--test-threads=1",
        "--include-ignored",
    ])
    .env(CHILD_ROLE_ENV, role)
    .env_remove("LARDER_CRASH_AT")
    .env_remove("LARDER_CRASH_ACTION")
    .env_remove("LARDER_CRASH_SKIP")
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    cmd
}

/// Polls `cond` every fraction of a millisecond until it holds (true) or `deadline`
/// passes (false). The only way tests here wait for another process or thread.
pub fn poll_until(deadline: Instant, mut cond: impl FnMut() -> bool) -> bool {
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_micros(200)); // poll interval; the deadline is checked in this loop
    }
}

/// A deadline `secs` seconds from now.
pub fn deadline_in(secs: u64) -> Instant {
    Instant::now() + Duration::from_secs(secs)
}

/// Reads a variable a parent set for its child; panics (failing the child) without it.
pub fn child_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("child started without {name}"))
}

/// One child process, SIGKILLed and reaped when the guard drops unless it was reaped
/// before, including when the test panics, so a failing test never leaves it behind.
/// Its output may go to a log file, which the guard's failures show.
pub struct ChildGuard {
    child: Child,
    status: Option<ExitStatus>,
    log: Option<PathBuf>,
}

impl ChildGuard {
    /// Spawns `cmd` as it is set up.
    pub fn spawn(cmd: &mut Command) -> ChildGuard {
        let child = cmd.spawn().expect("spawn child process");
        ChildGuard {
            child,
            status: None,
            log: None,
        }
    }

    /// Spawns `cmd` with its stdout and stderr written to the file `log`.
    pub fn spawn_logged(cmd: &mut Command, log: PathBuf) -> ChildGuard {
        let out = std::fs::File::create(&log).expect("child log file");
        let err = out.try_clone().expect("child log file");
        let mut guard = ChildGuard::spawn(cmd.stdout(out).stderr(err));
        guard.log = Some(log);
        guard
    }

    /// The process, for its pipes.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// What the child wrote to its log so far (empty without one).
    pub fn log(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// Sends `sig` unless the child has been reaped.
    pub fn signal(&self, sig: i32) {
        if self.status.is_none() {
            // SAFETY: kill(2) on our own child, which is not reaped yet so its pid cannot
            // have been reused; it has no memory-safety effect on this process.
            unsafe {
                libc::kill(self.pid(), sig);
            }
        }
    }

    /// The exit status if the child has exited (reaping it), without waiting.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("waiting for child");
        }
        self.status
    }

    /// Waits for the child to exit until `deadline`; `None` if it is still running then.
    pub fn wait_until(&mut self, deadline: Instant) -> Option<ExitStatus> {
        poll_until(deadline, || self.try_status().is_some());
        self.status
    }

    /// Waits for the child until `deadline`; panics (the guard then kills it) if it is
    /// still running, saying `what` it was doing, with its log.
    pub fn wait_or_fail(&mut self, deadline: Instant, what: &str) -> ExitStatus {
        match self.wait_until(deadline) {
            Some(s) => s,
            None => {
                let log = self.log();
                let log = if log.is_empty() {
                    log
                } else {
                    format!("; its log:\n{log}")
                };
                panic!("{what} did not exit before its deadline{log}")
            }
        }
    }

    /// SIGKILLs the child (if still running) and reaps it.
    pub fn kill_and_reap(&mut self) -> ExitStatus {
        if self.status.is_none() {
            let _ = self.child.kill();
            self.status = Some(self.child.wait().expect("reap child"));
        }
        self.status.expect("reaped")
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Child processes, each in a [`ChildGuard`], known by their index.
#[derive(Default)]
pub struct Children(Vec<ChildGuard>);

impl Children {
    pub fn new() -> Children {
        Children::default()
    }

    /// Spawns `cmd`; returns the child's index in this guard.
    pub fn spawn(&mut self, cmd: &mut Command) -> usize {
        self.0.push(ChildGuard::spawn(cmd));
        self.0.len() - 1
    }

    pub fn pid(&self, i: usize) -> i32 {
        self.0[i].pid()
    }

    /// Sends `sig` to child `i` unless it has been reaped.
    pub fn signal(&self, i: usize, sig: i32) {
        self.0[i].signal(sig)
    }

    /// Child `i`'s exit status if it has exited (reaping it), without waiting.
    pub fn try_status(&mut self, i: usize) -> Option<ExitStatus> {
        self.0[i].try_status()
    }

    /// Waits for child `i` to exit until `deadline`; `None` if it is still running then.
    pub fn wait_until(&mut self, i: usize, deadline: Instant) -> Option<ExitStatus> {
        self.0[i].wait_until(deadline)
    }

    /// Waits for child `i` until `deadline`; panics (the guard then kills every child)
    /// if it is still running, saying `what` it was doing.
    pub fn wait_or_fail(&mut self, i: usize, deadline: Instant, what: &str) -> ExitStatus {
        self.0[i].wait_or_fail(deadline, &format!("child {i} ({what})"))
    }

    /// SIGKILLs child `i` (if still running) and reaps it.
    pub fn kill_and_reap(&mut self, i: usize) -> ExitStatus {
        self.0[i].kill_and_reap()
    }
}

/// The scheduler state letter of a process (`R`, `S`, `T` for stopped, ...), from
/// /proc/<pid>/stat.
pub fn proc_state(pid: i32) -> Option<char> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself contain spaces or ')'.
    let rest = &text[text.rfind(')')? + 1..];
    rest.trim_start().chars().next()
}

/// The state letters of every thread of process `pid` (empty if it is gone).
pub fn thread_states(pid: i32) -> Vec<char> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let tid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let text = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
        let rest = &text[text.rfind(')')? + 1..];
        rest.trim_start().chars().next()
    })
    .collect()
}

/// Turns off core dumps for this process: children that crash on purpose must not fill
/// the disk or wait for a crash reporter.
pub fn disable_core_dumps() {
    let lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads a valid rlimit struct; lowering a limit is always allowed.
    unsafe {
        libc::setrlimit(libc::RLIMIT_CORE, &lim);
    }
}

/// A small deterministic random number generator (SplitMix64).
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// A seed from the clock and the process id, for runs that vary; print it so a
    /// failure can be replayed.
    pub fn seed_from_time() -> u64 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        nanos ^ ((std::process::id() as u64) << 32)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// A self-checking value: it names its key and a version, carries `filler` bytes that
/// depend on both, and ends with a checksum of everything before it, so a value torn
/// between two writes, or read under the wrong key, is detected by [`check_value`].
pub fn make_value(key: &[u8], version: u64, filler: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(2 + key.len() + 8 + filler + 8);
    v.extend_from_slice(&(key.len() as u16).to_le_bytes());
    v.extend_from_slice(key);
    v.extend_from_slice(&version.to_le_bytes());
    let mut rng = Rng::new(version ^ fnv1a(key));
    v.extend((0..filler).map(|_| rng.next_u64() as u8));
    let sum = fnv1a(&v);
    v.extend_from_slice(&sum.to_le_bytes());
    v
}

/// The version of a value made by [`make_value`] for `key`, or why it is not whole.
pub fn check_value(key: &[u8], v: &[u8]) -> Result<u64, String> {
    let fail = |why: &str| {
        Err(format!(
            "value for key {:?} is not whole ({why}): {} bytes",
            String::from_utf8_lossy(key),
            v.len()
        ))
    };
    if v.len() < 2 + 8 + 8 {
        return fail("too short");
    }
    let (body, sum) = v.split_at(v.len() - 8);
    if fnv1a(body).to_le_bytes() != sum {
        return fail("checksum");
    }
    let klen = u16::from_le_bytes([body[0], body[1]]) as usize;
    if body.len() < 2 + klen + 8 {
        return fail("key length");
    }
    if &body[2..2 + klen] != key {
        return fail(&format!(
            "written for key {:?}",
            String::from_utf8_lossy(&body[2..2 + klen])
        ));
    }
    let mut ver = [0u8; 8];
    ver.copy_from_slice(&body[2 + klen..2 + klen + 8]);
    let version = u64::from_le_bytes(ver);
    if make_value(key, version, body.len() - 2 - klen - 8) != v {
        return fail("filler");
    }
    Ok(version)
}

/// The key a value made by [`make_value`] was written for (checked whole).
pub fn key_of_value(v: &[u8]) -> Result<Vec<u8>, String> {
    if v.len() < 2 {
        return Err("value too short".into());
    }
    let klen = u16::from_le_bytes([v[0], v[1]]) as usize;
    let key = v
        .get(2..2 + klen)
        .ok_or_else(|| "key length out of range".to_string())?;
    check_value(key, v)?;
    Ok(key.to_vec())
}

/// `count` distinct keys `"{prefix}-{i}"` that live in shard `shard` of `cache`.
pub fn keys_in_shard(
    cache: &larder::Cache,
    shard: usize,
    prefix: &str,
    count: usize,
) -> Vec<Vec<u8>> {
    (0u64..)
        .map(|i| format!("{prefix}-{i}").into_bytes())
        .filter(|k| cache.shard_of(k) == shard)
        .take(count)
        .collect()
}
