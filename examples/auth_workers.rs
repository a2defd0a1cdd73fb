//! A pool of auth worker processes sharing one larder cache, with workers SIGKILLed
//! mid-run.
//!
//! ```text
//! cargo run --release --example auth_workers                        # 4 workers, 10 s
//! cargo run --release --example auth_workers -- --workers 8 --secs 30 --kills 20
//! ```
//!
//! The parent creates a cache file in /dev/shm (`auth-demo-<pid>`), then starts N
//! workers by re-executing this binary with `AUTH_WORKERS_SLOT` set. Each worker
//! serves a token-validation workload: 100,000 tokens of 32 bytes drawn Zipf(0.99),
//! 90% lookups through `get_or_insert_with` (a miss runs a simulated 200 µs validation
//! and caches its claims) and 10% re-validations that overwrite a token's claims with
//! a new version. Every value read is checked (its token id, user id and checksum), so
//! a torn value or a value stored under the wrong key is counted, never missed.
//!
//! While they run, the parent SIGKILLs a random worker at intervals and starts a new
//! one in its place. A kill that lands while the worker holds a shard lock leaves the
//! lock owner-dead; the next process to take it repairs the shard, which shows up as a
//! recovery in the table. At the end the parent reads back every cached token, runs
//! `verify()`, prints a table and exits non-zero if any value was torn or wrong, if
//! `verify()` found a problem, or if a worker failed in a way the demo did not cause.
//!
//! The cache file and the workers are cleaned up on every exit path the program
//! controls (errors and panics included). A SIGINT/SIGTERM to the parent is not one of
//! them: remove a leftover with `rm /dev/shm/auth-demo-*`.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitCode, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use larder::{Cache, Options};

/// Marks a process as a worker; its value is the worker's slot number.
const ENV_SLOT: &str = "AUTH_WORKERS_SLOT";
/// Which start of that slot this is (0 for the first, +1 per respawn).
const ENV_GEN: &str = "AUTH_WORKERS_GEN";
/// The cache name the worker attaches to.
const ENV_CACHE: &str = "AUTH_WORKERS_CACHE";
/// The file the worker writes its counts to.
const ENV_REPORT: &str = "AUTH_WORKERS_REPORT";

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    let result = match std::env::var(ENV_SLOT) {
        Ok(slot) => worker::main(&slot),
        Err(_) => parent::main(),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("auth_workers: error: {e}");
            ExitCode::from(2)
        }
    }
}

/// The workload: token ids, claims, the Zipf sampler and the PRNG. Nothing here knows
/// about processes or the cache.
mod workload {
    use super::*;

    /// Distinct tokens in circulation.
    pub const TOKENS: usize = 100_000;
    /// Token ids are 32 hex characters, the length of a 128-bit random token.
    pub const KEY_LEN: usize = 32;
    /// Serialized claims.
    pub const VALUE_LEN: usize = 256;
    /// Access skew: a few tokens (busy users, service accounts) get most requests.
    pub const ZIPF_EXPONENT: f64 = 0.99;
    /// Share of operations that re-validate a token and overwrite its claims.
    pub const SET_PERCENT: u64 = 10;
    /// How long validated claims are cached. Short so that expiry, and the refresh of
    /// expired hot tokens, happens within a 10 s demo; use the token's own lifetime in
    /// a real service.
    pub const TOKEN_TTL: Duration = Duration::from_secs(4);
    /// Up to this much is added to each TTL, so that entries do not all expire together.
    pub const TTL_JITTER_MS: u64 = 2_000;
    /// Stands in for a call to the identity provider on a miss.
    pub const VALIDATION_DELAY: Duration = Duration::from_micros(200);

    // Layout of the claims value. The token id and the user id tie a value to its key;
    // the checksum covers everything before it, so a value mixed from two writes fails.
    const TOKEN_AT: usize = 0;
    const VERSION_AT: usize = TOKEN_AT + KEY_LEN;
    const USER_AT: usize = VERSION_AT + 8;
    const TEXT_AT: usize = USER_AT + 8;
    const SUM_AT: usize = VALUE_LEN - 8;

    /// SplitMix64: tiny, fast and good enough to drive a benchmark; also the mixing
    /// function for token ids and checksums.
    pub struct Rng(u64);

    impl Rng {
        pub fn new(seed: u64) -> Rng {
            Rng(seed)
        }

        pub fn next_u64(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            mix64(self.0)
        }

        /// Uniform in `[0, 1)` with 53 random bits.
        pub fn next_f64(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
        }

        /// Uniform in `0..n` (the modulo bias is negligible for small `n`).
        pub fn below(&mut self, n: u64) -> u64 {
            self.next_u64() % n
        }
    }

    /// SplitMix64's finaliser: a bijection on u64 that scatters every input bit.
    pub fn mix64(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Zipf(s) over ranks `0..n` by inverting the cumulative distribution: exact, and
    /// a binary search over 100,000 entries (17 steps) per draw is cheap next to a
    /// cache operation.
    pub struct Zipf {
        cdf: Vec<f64>,
    }

    impl Zipf {
        pub fn new(n: usize, s: f64) -> Zipf {
            let mut cdf = Vec::with_capacity(n);
            let mut sum = 0.0;
            for k in 1..=n {
                sum += 1.0 / (k as f64).powf(s);
                cdf.push(sum);
            }
            for c in &mut cdf {
                *c /= sum;
            }
            Zipf { cdf }
        }

        /// A rank; 0 is the most popular.
        pub fn sample(&self, rng: &mut Rng) -> usize {
            let u = rng.next_f64();
            // Rounding can leave the last cumulative value a hair under 1.0.
            self.cdf.partition_point(|&c| c < u).min(self.cdf.len() - 1)
        }
    }

    /// The token id of a rank: 32 hex characters that look random. `mix64` is a
    /// bijection, so distinct ranks give distinct ids, and every process derives the
    /// same id for a rank without sharing a table.
    pub fn token_id(rank: usize) -> [u8; KEY_LEN] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let words = [
            mix64(rank as u64 ^ 0x746f_6b65_6e5f_6964),
            mix64(rank as u64 ^ 0x5f73_6563_7265_745f),
        ];
        let mut id = [0u8; KEY_LEN];
        for (i, nibble) in id.iter_mut().enumerate() {
            let word = words[i / 16];
            let shift = 60 - 4 * (i % 16);
            *nibble = HEX[((word >> shift) & 0xf) as usize];
        }
        id
    }

    /// The user a token belongs to: derived from the token so a reader can check it.
    fn user_of(token: &[u8]) -> u64 {
        checksum(token) % 1_000_000
    }

    /// A multiply-rotate hash over 8-byte words, finished with `mix64`. Not
    /// cryptographic: it only has to notice bytes that do not belong together.
    fn checksum(bytes: &[u8]) -> u64 {
        let mut h = 0xCBF2_9CE4_8422_2325u64 ^ bytes.len() as u64;
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(chunk);
            h = (h ^ u64::from_le_bytes(w))
                .wrapping_mul(0x0000_0100_0000_01B3)
                .rotate_left(29);
        }
        for &b in chunks.remainder() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01B3);
        }
        mix64(h)
    }

    /// The claims an identity provider would return for `token`, serialized. `version`
    /// tells re-validations apart (here, the time of validation in microseconds).
    pub fn claims(token: &[u8; KEY_LEN], version: u64) -> Vec<u8> {
        let user = user_of(token);
        let mut v = vec![b' '; VALUE_LEN];
        v[TOKEN_AT..VERSION_AT].copy_from_slice(token);
        v[VERSION_AT..USER_AT].copy_from_slice(&version.to_le_bytes());
        v[USER_AT..TEXT_AT].copy_from_slice(&user.to_le_bytes());
        let text = format!(
            "sub=user-{user};iss=https://auth.example;aud=api;scope=profile:read orders:write;\
             ver={version}"
        );
        let n = text.len().min(SUM_AT - TEXT_AT);
        v[TEXT_AT..TEXT_AT + n].copy_from_slice(&text.as_bytes()[..n]);
        let sum = checksum(&v[..SUM_AT]);
        v[SUM_AT..].copy_from_slice(&sum.to_le_bytes());
        v
    }

    /// Why a value read for `token` is not claims written whole for that token.
    pub fn check_claims(token: &[u8], value: &[u8]) -> Result<(), &'static str> {
        if value.len() != VALUE_LEN {
            return Err("wrong length");
        }
        let mut sum = [0u8; 8];
        sum.copy_from_slice(&value[SUM_AT..]);
        if checksum(&value[..SUM_AT]) != u64::from_le_bytes(sum) {
            return Err("checksum mismatch (torn value)");
        }
        if &value[TOKEN_AT..VERSION_AT] != token {
            return Err("claims of another token");
        }
        let mut user = [0u8; 8];
        user.copy_from_slice(&value[USER_AT..TEXT_AT]);
        if u64::from_le_bytes(user) != user_of(token) {
            return Err("claims of another user");
        }
        Ok(())
    }

    /// A version stamp: microseconds since the Unix epoch.
    pub fn now_version() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0)
    }

    /// A cache TTL for freshly validated claims.
    pub fn ttl(rng: &mut Rng) -> Duration {
        TOKEN_TTL + Duration::from_millis(rng.below(TTL_JITTER_MS))
    }
}

/// What a worker counted; written to its report file as `name=value` pairs.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    /// Lookups answered (from the cache or by validating).
    gets: u64,
    /// Lookups answered from the cache without validating in this process.
    hits: u64,
    /// Lookups this process validated and stored (`f` ran).
    fills: u64,
    /// Re-validations stored.
    sets: u64,
    /// Values that were torn or belonged to another token.
    torn: u64,
    /// Operations that gave up on a lock or a fill at its deadline.
    timeouts: u64,
    /// Any other error: never expected.
    errors: u64,
}

impl Counts {
    const FIELDS: [&'static str; 7] = [
        "gets", "hits", "fills", "sets", "torn", "timeouts", "errors",
    ];

    fn ops(&self) -> u64 {
        self.gets + self.sets
    }

    fn fields(&self) -> [u64; 7] {
        [
            self.gets,
            self.hits,
            self.fills,
            self.sets,
            self.torn,
            self.timeouts,
            self.errors,
        ]
    }

    /// The counts in the order of [`Counts::FIELDS`], to write into.
    fn fields_mut(&mut self) -> [&mut u64; 7] {
        [
            &mut self.gets,
            &mut self.hits,
            &mut self.fills,
            &mut self.sets,
            &mut self.torn,
            &mut self.timeouts,
            &mut self.errors,
        ]
    }

    fn add(&mut self, o: &Counts) {
        for (sum, v) in self.fields_mut().into_iter().zip(o.fields()) {
            *sum += v;
        }
    }

    /// Writes the counts so that a reader sees either the previous report or this one,
    /// whole: a worker can be killed in the middle of a write.
    fn write_to(&self, path: &Path) -> io::Result<()> {
        let mut text = String::new();
        for (name, v) in Self::FIELDS.iter().zip(self.fields()) {
            text.push_str(&format!("{name}={v}\n"));
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)
    }

    fn read_from(path: &Path) -> Result<Counts, BoxError> {
        let text = std::fs::read_to_string(path)?;
        let mut c = Counts::default();
        for line in text.lines() {
            let Some((name, value)) = line.split_once('=') else {
                continue;
            };
            let v: u64 = value
                .parse()
                .map_err(|e| format!("{}: bad count {line:?}: {e}", path.display()))?;
            if let Some(i) = Self::FIELDS.iter().position(|&f| f == name) {
                *c.fields_mut()[i] = v;
            }
        }
        Ok(c)
    }
}

/// A worker process: attaches to the cache and serves requests until its stdin closes.
mod worker {
    use super::workload::*;
    use super::*;

    /// How often a worker writes its counts. A killed worker loses what it counted
    /// since its last write.
    pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
    /// A shard lock held longer than this means a stopped peer: give up the operation
    /// rather than stall a request.
    const LOCK_TIMEOUT: Duration = Duration::from_millis(200);
    /// How long a lookup waits for another worker validating the same token.
    const FILL_TIMEOUT: Duration = Duration::from_secs(2);
    /// Errors of each kind printed to stderr per worker; the rest are only counted.
    const ERRORS_SHOWN: u64 = 3;

    pub fn main(slot: &str) -> Result<ExitCode, BoxError> {
        let gen = std::env::var(ENV_GEN).unwrap_or_default();
        let cache_name = std::env::var(ENV_CACHE).map_err(|_| format!("{ENV_CACHE} not set"))?;
        let report = PathBuf::from(
            std::env::var_os(ENV_REPORT).ok_or_else(|| format!("{ENV_REPORT} not set"))?,
        );
        let tag = format!("worker {slot}.{gen} (pid {})", std::process::id());

        // Attach with the parameters the parent created the file with; only the
        // timeouts are this process's own.
        let cache = Options::new()
            .lock_timeout(LOCK_TIMEOUT)
            .fill_timeout(FILL_TIMEOUT)
            .attach(&cache_name)?;

        // The parent stops us by closing our stdin. Its death closes it too, so a
        // worker never outlives a parent that was killed.
        let stop = Arc::new(AtomicBool::new(false));
        {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name("stdin-watch".into())
                .spawn(move || {
                    let _ = io::copy(&mut io::stdin().lock(), &mut io::sink());
                    stop.store(true, Ordering::Relaxed);
                })?;
        }

        let zipf = Zipf::new(TOKENS, ZIPF_EXPONENT);
        // Live workers have distinct pids; the time separates reuses of a pid.
        let mut rng = Rng::new(mix64(now_version() ^ (u64::from(std::process::id()) << 32)));
        let mut counts = Counts::default();
        let mut next_flush = Instant::now() + FLUSH_EVERY;
        let mut n: u64 = 0;
        while !stop.load(Ordering::Relaxed) {
            serve_one(&cache, &zipf, &mut rng, &mut counts, &tag);
            n += 1;
            // Reading the clock every request would cost more than some requests.
            if n % 64 == 0 && Instant::now() >= next_flush {
                counts.write_to(&report)?;
                next_flush = Instant::now() + FLUSH_EVERY;
            }
        }
        counts.write_to(&report)?;
        Ok(ExitCode::SUCCESS)
    }

    /// One request: look a token up (validating it on a miss), or re-validate it.
    fn serve_one(cache: &Cache, zipf: &Zipf, rng: &mut Rng, counts: &mut Counts, tag: &str) {
        let token = token_id(zipf.sample(rng));
        if rng.below(100) < SET_PERCENT {
            let value = claims(&token, now_version());
            match cache.set(&token, &value, Some(ttl(rng))) {
                Ok(()) => counts.sets += 1,
                Err(e) => count_error(counts, tag, "set", &e),
            }
            return;
        }
        let ttl = ttl(rng);
        let mut validated = false;
        let looked_up = cache.get_or_insert_with(&token, Some(ttl), || {
            // Single flight: only one process validates a given token at a time; the
            // others wait for its result instead of stampeding the identity provider.
            validated = true;
            std::thread::sleep(VALIDATION_DELAY);
            Ok::<_, larder::Error>(claims(&token, now_version()))
        });
        match looked_up {
            Ok(value) => {
                counts.gets += 1;
                if validated {
                    counts.fills += 1;
                } else {
                    counts.hits += 1;
                }
                if let Err(why) = check_claims(&token, &value) {
                    counts.torn += 1;
                    if counts.torn <= ERRORS_SHOWN {
                        eprintln!(
                            "{tag}: BAD VALUE for token {}: {why}",
                            String::from_utf8_lossy(&token)
                        );
                    }
                }
            }
            Err(e) => count_error(counts, tag, "lookup", &e),
        }
    }

    fn count_error(counts: &mut Counts, tag: &str, op: &str, e: &larder::Error) {
        // A timeout is the cache protecting the request from a stuck peer; under this
        // load it should be rare. Anything else is a bug worth seeing.
        let n = if matches!(e, larder::Error::Timeout { .. }) {
            counts.timeouts += 1;
            counts.timeouts
        } else {
            counts.errors += 1;
            counts.errors
        };
        if n <= ERRORS_SHOWN {
            eprintln!("{tag}: {op} failed: {e}");
        }
    }
}

/// The parent: creates the cache, runs and kills workers, and reports.
mod parent {
    use super::workload::*;
    use super::*;

    /// Cache file size: room for about a quarter of the 100,000 tokens' claims, so
    /// that eviction (and the hit ratio it achieves under Zipf) is part of the demo.
    const CAPACITY: u64 = 8 << 20;
    /// How long workers get to write their final counts and exit once told to stop.
    const STOP_DEADLINE: Duration = Duration::from_secs(10);
    /// How long a SIGKILLed process may take to be reaped.
    const REAP_DEADLINE: Duration = Duration::from_secs(5);
    /// How often the parent looks for workers that exited on their own.
    const POLL: Duration = Duration::from_millis(20);

    struct Args {
        workers: usize,
        secs: u64,
        kills: usize,
    }

    const USAGE: &str = "usage: auth_workers [--workers N] [--secs S] [--kills K]
  --workers N  worker processes (default 4)
  --secs S     length of the run in seconds (default 10)
  --kills K    workers SIGKILLed and respawned during the run
               (default: one per second, at least 5)";

    fn parse_args() -> Result<Option<Args>, BoxError> {
        let mut workers = 4usize;
        let mut secs = 10u64;
        let mut kills = None;
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut number = |name: &str| -> Result<u64, BoxError> {
                let v = args
                    .next()
                    .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))?;
                v.parse()
                    .map_err(|e| format!("{name} {v:?}: {e}\n{USAGE}").into())
            };
            match arg.as_str() {
                "--workers" => workers = number("--workers")? as usize,
                "--secs" => secs = number("--secs")?,
                "--kills" => kills = Some(number("--kills")? as usize),
                "-h" | "--help" => {
                    println!("{USAGE}");
                    return Ok(None);
                }
                other => return Err(format!("unknown argument {other:?}\n{USAGE}").into()),
            }
        }
        // Bounds that keep the arithmetic below simple, far beyond any sensible run.
        if !(1..=1024).contains(&workers) || !(1..=86_400).contains(&secs) {
            return Err(format!("--workers must be 1..=1024 and --secs 1..=86400\n{USAGE}").into());
        }
        let kills = kills.unwrap_or_else(|| (secs as usize).saturating_sub(1).max(5));
        if kills > 1_000_000 {
            return Err(format!("--kills must be at most 1000000\n{USAGE}").into());
        }
        Ok(Some(Args {
            workers,
            secs,
            kills,
        }))
    }

    /// Removes the cache file when dropped, however `main` ends. Declared before the
    /// `Cache` handle and the workers, so it runs after they are gone: a handle that
    /// outlives the file would create it again.
    struct CacheFile {
        name: String,
    }

    impl Drop for CacheFile {
        fn drop(&mut self) {
            match Cache::unlink(&self.name) {
                Ok(()) | Err(larder::Error::NotFound { .. }) => {}
                Err(e) => eprintln!("auth_workers: could not remove cache {}: {e}", self.name),
            }
        }
    }

    /// A scratch directory for the workers' report files, removed when dropped.
    struct ScratchDir(PathBuf);

    impl Drop for ScratchDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    struct Worker {
        slot: usize,
        child: Child,
        /// Closing it tells the worker to stop.
        stdin: Option<ChildStdin>,
    }

    /// The running workers. Dropping the pool SIGKILLs and reaps whatever is still
    /// running, so no error path leaves a worker behind.
    struct Pool {
        exe: PathBuf,
        cache: String,
        dir: PathBuf,
        workers: Vec<Worker>,
        /// Starts per slot so far.
        starts: Vec<u32>,
    }

    /// Waits up to `deadline` for `child` to exit.
    fn reap_within(child: &mut Child, deadline: Instant) -> io::Result<Option<ExitStatus>> {
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    impl Pool {
        fn start(exe: PathBuf, cache: String, dir: PathBuf, n: usize) -> Result<Pool, BoxError> {
            let mut pool = Pool {
                exe,
                cache,
                dir,
                workers: Vec::with_capacity(n),
                starts: vec![0; n],
            };
            for slot in 0..n {
                // On failure the pool is dropped, which kills the workers already started.
                let w = pool.launch(slot)?;
                pool.workers.push(w);
            }
            Ok(pool)
        }

        /// Starts a worker process for `slot`: this same binary, in worker mode.
        fn launch(&mut self, slot: usize) -> Result<Worker, BoxError> {
            let gen = self.starts[slot];
            let mut child = Command::new(&self.exe)
                .env(ENV_SLOT, slot.to_string())
                .env(ENV_GEN, gen.to_string())
                .env(ENV_CACHE, &self.cache)
                .env(ENV_REPORT, self.dir.join(format!("w{slot}-g{gen}.counts")))
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("starting worker {slot}: {e}"))?;
            let stdin = child.stdin.take();
            self.starts[slot] += 1;
            Ok(Worker { slot, child, stdin })
        }

        /// SIGKILLs the worker in `slot`, reaps it, and starts another in its place.
        /// Returns the old and the new pid.
        fn kill_and_respawn(&mut self, slot: usize) -> Result<(u32, u32), BoxError> {
            let w = &mut self.workers[slot];
            let old = w.child.id();
            w.child.kill()?;
            if reap_within(&mut w.child, Instant::now() + REAP_DEADLINE)?.is_none() {
                return Err(format!("worker {slot} (pid {old}) survived SIGKILL").into());
            }
            self.workers[slot] = self.launch(slot)?;
            Ok((old, self.workers[slot].child.id()))
        }

        /// An error if any worker exited without being told to.
        fn check_running(&mut self) -> Result<(), BoxError> {
            for w in &mut self.workers {
                if let Some(status) = w.child.try_wait()? {
                    return Err(format!(
                        "worker {} (pid {}) exited on its own: {status}",
                        w.slot,
                        w.child.id()
                    )
                    .into());
                }
            }
            Ok(())
        }

        /// Tells every worker to stop and waits for them all. Returns a description of
        /// each worker that did not exit cleanly in time (it is killed).
        fn stop(&mut self) -> Vec<String> {
            for w in &mut self.workers {
                w.stdin = None;
            }
            let deadline = Instant::now() + STOP_DEADLINE;
            let mut failures = Vec::new();
            for mut w in std::mem::take(&mut self.workers) {
                let pid = w.child.id();
                match reap_within(&mut w.child, deadline) {
                    Ok(Some(status)) if status.success() => {}
                    Ok(Some(status)) => {
                        failures.push(format!("worker {} (pid {pid}) ended: {status}", w.slot))
                    }
                    Ok(None) => {
                        failures.push(format!(
                            "worker {} (pid {pid}) did not stop within {STOP_DEADLINE:?}",
                            w.slot
                        ));
                        kill_and_reap(&mut w.child);
                    }
                    Err(e) => {
                        failures.push(format!("worker {} (pid {pid}): {e}", w.slot));
                        kill_and_reap(&mut w.child);
                    }
                }
            }
            failures
        }
    }

    fn kill_and_reap(child: &mut Child) {
        let _ = child.kill();
        if let Ok(None) | Err(_) = reap_within(child, Instant::now() + REAP_DEADLINE) {
            eprintln!("auth_workers: pid {} could not be reaped", child.id());
        }
    }

    impl Drop for Pool {
        fn drop(&mut self) {
            for w in &mut self.workers {
                kill_and_reap(&mut w.child);
            }
        }
    }

    /// Counts per worker slot, summed over every start of the slot.
    fn read_reports(dir: &Path, slots: usize) -> Result<Vec<Counts>, BoxError> {
        let mut per_slot = vec![Counts::default(); slots];
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("counts") {
                continue; // a `.tmp` left by a worker killed mid-write
            }
            let slot = path
                .file_stem()
                .and_then(|s| s.to_str())
                .and_then(|s| s.strip_prefix('w'))
                .and_then(|s| s.split_once('-'))
                .and_then(|(slot, _)| slot.parse::<usize>().ok())
                .filter(|&s| s < slots)
                .ok_or_else(|| format!("unexpected report file {}", path.display()))?;
            per_slot[slot].add(&Counts::read_from(&path)?);
        }
        Ok(per_slot)
    }

    /// Reads every token back and checks each cached value.
    fn audit(cache: &Cache) -> Result<(u64, u64), BoxError> {
        let (mut cached, mut bad) = (0, 0);
        let mut buf = Vec::with_capacity(VALUE_LEN);
        for rank in 0..TOKENS {
            let token = token_id(rank);
            if cache.get_into(&token, &mut buf)? {
                cached += 1;
                if let Err(why) = check_claims(&token, &buf) {
                    bad += 1;
                    eprintln!(
                        "audit: BAD VALUE for token {}: {why}",
                        String::from_utf8_lossy(&token)
                    );
                }
            }
        }
        Ok((cached, bad))
    }

    /// A percentage, or a dash when there is nothing to divide by.
    struct Pct(u64, u64);

    impl fmt::Display for Pct {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            if self.1 == 0 {
                return f.pad("-");
            }
            f.pad(&format!("{:.1}%", 100.0 * self.0 as f64 / self.1 as f64))
        }
    }

    pub fn main() -> Result<ExitCode, BoxError> {
        let Some(args) = parse_args()? else {
            return Ok(ExitCode::SUCCESS);
        };
        let exe = std::env::current_exe()?;
        let name = format!("auth-demo-{}", std::process::id());
        let path = Cache::path_of(&name)?;
        if path.exists() {
            // Left by an earlier run that was killed and had our pid: it may hold that
            // run's data, and something may still use it. Do not touch it.
            return Err(format!(
                "{} already exists (left by an interrupted run?); remove it and retry",
                path.display()
            )
            .into());
        }

        // Drop order is the reverse of declaration: workers, then the handle, then the
        // report directory and the file.
        let _file = CacheFile { name: name.clone() };
        let dir = std::env::temp_dir().join(format!("auth-demo-{}-reports", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let _dir = ScratchDir(dir.clone());
        let cache = Options::new()
            .capacity(CAPACITY)
            .max_key_len(KEY_LEN)
            .max_value_len(VALUE_LEN)
            .expected_entry_size(KEY_LEN + VALUE_LEN + 16)
            .open(&name)?;

        println!(
            "auth_workers: {} workers for {} s, {} SIGKILLs; {TOKENS} tokens, Zipf({ZIPF_EXPONENT}), \
             {}% get / {SET_PERCENT}% set, TTL {}-{} s",
            args.workers,
            args.secs,
            args.kills,
            100 - SET_PERCENT,
            TOKEN_TTL.as_secs(),
            (TOKEN_TTL + Duration::from_millis(TTL_JITTER_MS)).as_secs(),
        );
        println!(
            "cache: {} ({} MiB, {} shards)",
            cache.path().display(),
            CAPACITY >> 20,
            cache.shard_count()
        );

        let mut pool = Pool::start(exe, name.clone(), dir.clone(), args.workers)?;
        let started = Instant::now();
        let run = Duration::from_secs(args.secs);
        let end = started + run;

        // Kills are spread evenly over the run, each moved by up to a quarter of the
        // interval so they do not fall in step with anything the workers do.
        let mut rng = Rng::new(mix64(now_version()));
        let interval = run / (args.kills as u32 + 1);
        let kill_times: Vec<Instant> = (1..=args.kills as u32)
            .map(|i| {
                // In [i - 1/4, i + 1/4) intervals; never before the start since i >= 1.
                let jitter = interval.mul_f64(rng.next_f64() / 2.0);
                started + interval * i - interval / 4 + jitter
            })
            .collect();
        let mut next_kill = kill_times.into_iter().peekable();
        let mut kills_done = 0;

        while Instant::now() < end {
            pool.check_running()?;
            if next_kill.next_if(|&t| Instant::now() >= t).is_some() {
                let slot = rng.below(args.workers as u64) as usize;
                let (old, new) = pool.kill_and_respawn(slot)?;
                kills_done += 1;
                println!(
                    "  {:5.2} s  SIGKILL worker {slot} (pid {old}), respawned as pid {new}",
                    started.elapsed().as_secs_f64()
                );
            }
            // A scheduling tick, not synchronisation: each pass re-checks the clock
            // and the workers' state.
            let wake = next_kill.peek().copied().unwrap_or(end).min(end);
            let now = Instant::now();
            std::thread::sleep(wake.saturating_duration_since(now).min(POLL));
        }
        let failures = pool.stop();
        let elapsed = started.elapsed().as_secs_f64();

        let per_slot = read_reports(&dir, args.workers)?;
        let stats = cache.stats();
        let (cached, audit_bad) = audit(&cache)?;
        let report = cache.verify()?;

        let mut total = Counts::default();
        println!();
        println!(
            "{:>6} {:>8} {:>10} {:>9} {:>9} {:>7} {:>5}",
            "worker", "restarts", "ops", "ops/s", "hit ratio", "fills", "torn"
        );
        for (slot, c) in per_slot.iter().enumerate() {
            total.add(c);
            println!(
                "{:>6} {:>8} {:>10} {:>9.0} {:>9} {:>7} {:>5}",
                slot,
                pool.starts[slot].saturating_sub(1),
                c.ops(),
                c.ops() as f64 / elapsed,
                Pct(c.hits, c.gets),
                c.fills,
                c.torn
            );
        }
        println!(
            "{:>6} {:>8} {:>10} {:>9.0} {:>9} {:>7} {:>5}",
            "total",
            kills_done,
            total.ops(),
            total.ops() as f64 / elapsed,
            Pct(total.hits, total.gets),
            total.fills,
            total.torn
        );
        println!();
        println!(
            "hit ratio                 {}  (lookups answered without validating)",
            Pct(total.hits, total.gets)
        );
        println!(
            "fills                     {}  (validations stored, all processes)",
            stats.fills
        );
        println!("evictions                 {}", stats.evictions);
        println!("expirations               {}", stats.expirations);
        println!("owner-dead recoveries     {}", stats.recoveries);
        println!("entries dropped by repair {}", stats.repair_dropped);
        println!(
            "timeouts                  {}  (lock {}, fill {})",
            total.timeouts, stats.lock_timeouts, stats.fill_timeouts
        );
        println!("other errors              {}", total.errors);
        let torn = total.torn + audit_bad;
        println!(
            "torn values seen          {torn}  ({} by workers, {audit_bad} of {cached} cached \
             tokens read back at the end)",
            total.torn
        );
        println!("verify()                  {report}");
        println!();
        println!(
            "Notes: per-worker counts come from files each worker rewrites every {:?}, so a\n\
             killed worker's last moments are missing from them. Fills, evictions and\n\
             recoveries come from the cache's own counters, which keep killed workers' counts.",
            worker::FLUSH_EVERY
        );
        if stats.recoveries == 0 {
            // Not a failure: see the message.
            println!(
                "No kill landed while a shard lock was held: critical sections last about a\n\
                 microsecond, so a kill at a random moment rarely hits one (most land during a\n\
                 validation, and a waiting worker takes that fill over). To see repairs, try\n\
                 --secs 30 --kills 600 (about 1 kill in 300 hit one when measured)."
            );
        }

        let mut problems = failures;
        if torn > 0 {
            problems.push(format!("{torn} torn or wrong values"));
        }
        if !report.is_clean() {
            problems.push("verify() found problems".into());
        }
        if total.errors > 0 {
            problems.push(format!("{} unexpected errors", total.errors));
        }
        if problems.is_empty() {
            println!("OK");
            Ok(ExitCode::SUCCESS)
        } else {
            for p in &problems {
                println!("FAILED: {p}");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}
