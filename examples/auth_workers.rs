//! A pool of auth worker processes sharing one larder cache, with workers SIGKILLed
//! mid-run, one of them deliberately while it holds a shard lock halfway through a write.
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
//! recovery. Critical sections last about a microsecond, so random kills rarely land in
//! one (about 1 in 300 did when measured). So, once per run, the parent also makes one
//! land there on purpose: it starts an extra worker with larder's crash point
//! `overwrite.mid_value` armed (`LARDER_CRASH_AT`, `LARDER_CRASH_ACTION=stop`), which
//! re-validates the most requested token and stops itself inside that token's shard
//! lock with the new claims half written over the old; the parent SIGKILLs it there and
//! reports the repair that follows and the pool's throughput on either side of it.
//! Crash points exist only in builds with larder's `crash-points` feature, which this
//! package's own examples and tests get through a dev-dependency on itself (a program
//! that depends on larder never has them); a copy of this program built without the
//! feature says so and skips the deliberate kill.
//!
//! At the end the parent reads back every cached token, runs `verify()`, prints a
//! table and exits non-zero if any value was torn or wrong, if `verify()` found a
//! problem, if the deliberately killed lock holder's shard was not repaired, or if a
//! worker failed in a way the demo did not cause.
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
/// Marks a process as the worker to be killed inside a lock; its value is the file it
/// writes the token it is about to write to.
const ENV_VICTIM: &str = "AUTH_WORKERS_VICTIM";
/// larder's crash-point settings (see larder's `crashpoint` module). Only the victim
/// gets them; every other process starts without.
const CRASH_ENV: [&str; 4] = [
    "LARDER_CRASH_AT",
    "LARDER_CRASH_ACTION",
    "LARDER_CRASH_SKIP",
    "LARDER_CRASH_PAUSE_FILE",
];

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> ExitCode {
    if let Some(code) = child() {
        return ExitCode::from(code);
    }
    let result = parent::parse_args(std::env::args().skip(1)).and_then(|args| match args {
        Some(args) => parent::run(&args, &this_binary),
        None => Ok(None),
    });
    match result {
        Ok(Some(summary)) if summary.problems.is_empty() => ExitCode::SUCCESS,
        Ok(Some(_)) => ExitCode::FAILURE,
        Ok(None) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("auth_workers: error: {e}");
            ExitCode::from(2)
        }
    }
}

/// A command that starts this binary again, with no arguments: the environment the
/// parent adds tells the new process what to be.
fn this_binary() -> Command {
    // `current_exe` failing leaves a command that fails to spawn with a clear error.
    Command::new(std::env::current_exe().unwrap_or_default())
}

/// Runs this process as the worker or the victim the parent started it as, and returns
/// its exit code; `None` if the parent did not start it (it is the parent).
pub fn child() -> Option<u8> {
    let result = if let Ok(slot) = std::env::var(ENV_SLOT) {
        worker::main(&slot)
    } else if let Some(note) = std::env::var_os(ENV_VICTIM) {
        victim::main(Path::new(&note))
    } else {
        return None;
    };
    Some(match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("auth_workers: error: {e}");
            2
        }
    })
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

    /// Attaches to the parent's cache with the parameters it was created with; only
    /// the timeouts are this process's own.
    pub fn attach() -> Result<Cache, BoxError> {
        let cache_name = std::env::var(ENV_CACHE).map_err(|_| format!("{ENV_CACHE} not set"))?;
        Ok(Options::new()
            .lock_timeout(LOCK_TIMEOUT)
            .fill_timeout(FILL_TIMEOUT)
            .attach(&cache_name)?)
    }

    pub fn main(slot: &str) -> Result<u8, BoxError> {
        let gen = std::env::var(ENV_GEN).unwrap_or_default();
        let report = PathBuf::from(
            std::env::var_os(ENV_REPORT).ok_or_else(|| format!("{ENV_REPORT} not set"))?,
        );
        let tag = format!("worker {slot}.{gen} (pid {})", std::process::id());
        let cache = attach()?;

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
        Ok(0)
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

/// The worker killed on purpose inside a shard lock: it re-validates the most requested
/// token with larder's crash point `overwrite.mid_value` armed to stop it, so it stops
/// itself inside the token's shard lock, the new claims half written over the old, and
/// waits there for the parent's SIGKILL.
mod victim {
    use super::workload::*;
    use super::*;

    /// The step it stops at: an overwrite in place (every claims value has the same
    /// length, so re-validating a cached token overwrites it in place) with half of the
    /// new value written. Readers are kept out by the shard's odd sequence counter; the
    /// repair after the kill drops the half-written entry, which the shard's intent
    /// record names.
    pub const POINT: &str = "overwrite.mid_value";
    /// Exit code of a victim whose writes all completed: this build has no crash points.
    pub const EXIT_NEVER_STOPPED: u8 = 3;
    /// Re-validations it tries before it gives up: the first overwrites the token in
    /// place if it is cached, or inserts it so that the second does; a few more cover
    /// an eviction in between.
    const ATTEMPTS: usize = 8;

    pub fn main(note: &Path) -> Result<u8, BoxError> {
        let cache = worker::attach()?;
        // The most requested token: its shard is the busiest, so the lock left behind
        // is wanted again at once.
        let token = token_id(0);
        std::fs::write(
            note,
            format!(
                "{} {}\n",
                String::from_utf8_lossy(&token),
                cache.shard_of(&token)
            ),
        )?;
        let mut rng = Rng::new(mix64(now_version()));
        for _ in 0..ATTEMPTS {
            cache.set(&token, &claims(&token, now_version()), Some(ttl(&mut rng)))?;
        }
        Ok(EXIT_NEVER_STOPPED)
    }
}

/// The parent: creates the cache, runs and kills workers, and reports.
pub mod parent {
    use super::workload::*;
    use super::*;

    use rustix::process::{waitpid, Pid, WaitOptions, WaitStatus};

    /// Cache file size: room for about a quarter of the 100,000 tokens' claims, so
    /// that eviction (and the hit ratio it achieves under Zipf) is part of the demo.
    const CAPACITY: u64 = 8 << 20;
    /// How long workers get to write their final counts and exit once told to stop.
    const STOP_DEADLINE: Duration = Duration::from_secs(10);
    /// How long a SIGKILLed process may take to be reaped.
    const REAP_DEADLINE: Duration = Duration::from_secs(5);
    /// How often the parent looks for workers that exited on their own.
    const POLL: Duration = Duration::from_millis(20);
    /// How long the victim may take to start, attach and reach its crash point.
    const VICTIM_DEADLINE: Duration = Duration::from_secs(10);
    /// How long the pool may take to repair the victim's shard once it is killed. The
    /// shard is the busiest one, so a survivor takes its lock within milliseconds.
    const REPAIR_DEADLINE: Duration = Duration::from_secs(5);
    /// How often the parent looks at the victim and the shard's counters: its lock is
    /// held all the while the victim is stopped, so the parent acts at once.
    const FAST_POLL: Duration = Duration::from_micros(100);
    /// Continuation lines of the run's log line up under its first line's text.
    const INDENT: &str = "           ";
    /// Throughput is compared over this long on either side of the deliberate kill (a
    /// quarter of the run at most).
    const WINDOW: Duration = Duration::from_secs(1);

    pub struct Args {
        pub workers: usize,
        pub secs: u64,
        pub kills: usize,
    }

    const USAGE: &str = "usage: auth_workers [--workers N] [--secs S] [--kills K]
  --workers N  worker processes (default 4)
  --secs S     length of the run in seconds (default 10)
  --kills K    workers SIGKILLed at random instants and respawned during the run
               (default: one per second, at least 5); one more worker is killed
               deliberately inside a shard lock";

    /// The arguments (without the program name); `None` after `--help`.
    pub fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Option<Args>, BoxError> {
        let mut workers = 4usize;
        let mut secs = 10u64;
        let mut kills = None;
        let mut args = args.into_iter();
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

    /// What a run found.
    // Only `problems` is read here; tests/demo.rs, which runs this program briefly,
    // checks the rest.
    #[allow(dead_code)]
    pub struct Summary {
        /// Owner-dead recoveries in the whole run (the cache's counter).
        pub recoveries: u64,
        /// The deliberate kill inside a lock; `None` in a build without crash points.
        pub deliberate: Option<Deliberate>,
        /// Torn or wrong values, seen by workers or read back at the end.
        pub torn: u64,
        /// Whether `verify()` found the file sound at the end.
        pub verify_clean: bool,
        /// Why the run failed; empty if it did not.
        pub problems: Vec<String>,
    }

    /// The worker killed inside a shard lock, and what followed.
    #[allow(dead_code)] // as `Summary`
    pub struct Deliberate {
        /// The shard whose lock it held.
        pub shard: usize,
        /// How long after the kill the shard's recovery was seen; `None` if it was not
        /// seen within [`REPAIR_DEADLINE`].
        pub repaired_after: Option<Duration>,
        /// Entries the shard's repair dropped.
        pub dropped: u64,
    }

    /// Removes the cache file when dropped, however `run` ends. Declared before the
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
    struct Pool<'a> {
        launch: &'a dyn Fn() -> Command,
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

    /// `launch`'s command, with larder's crash points disarmed.
    fn command(launch: &dyn Fn() -> Command) -> Command {
        let mut cmd = launch();
        for var in CRASH_ENV {
            cmd.env_remove(var);
        }
        cmd
    }

    impl<'a> Pool<'a> {
        fn start(
            launch: &'a dyn Fn() -> Command,
            cache: String,
            dir: PathBuf,
            n: usize,
        ) -> Result<Pool<'a>, BoxError> {
            let mut pool = Pool {
                launch,
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

        /// Starts a worker process for `slot`.
        fn launch(&mut self, slot: usize) -> Result<Worker, BoxError> {
            let gen = self.starts[slot];
            let mut child = command(self.launch)
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

    impl Drop for Pool<'_> {
        fn drop(&mut self) {
            for w in &mut self.workers {
                kill_and_reap(&mut w.child);
            }
        }
    }

    /// The victim process. It is waited for with `waitpid(WUNTRACED)`, which `Child`
    /// cannot do, so it is reaped here too; dropping it SIGKILLs and reaps it, so no
    /// error path leaves it stopped with a shard lock.
    struct Victim {
        child: Child,
        pid: Pid,
        /// Set once it is reaped: its pid may then be another process's.
        reaped: bool,
    }

    /// How the victim ended its run up to the crash point.
    enum Reached {
        /// Stopped at the crash point, holding the lock.
        Stopped,
        /// Exited first, with this status.
        Exited(WaitStatus),
    }

    impl Victim {
        fn spawn(
            launch: &dyn Fn() -> Command,
            cache: &str,
            note: &Path,
        ) -> Result<Victim, BoxError> {
            let child = command(launch)
                .env(ENV_VICTIM, note)
                .env(ENV_CACHE, cache)
                .env("LARDER_CRASH_AT", victim::POINT)
                .env("LARDER_CRASH_ACTION", "stop")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .map_err(|e| format!("starting the victim: {e}"))?;
            let pid = Pid::from_child(&child);
            Ok(Victim {
                child,
                pid,
                reaped: false,
            })
        }

        fn id(&self) -> u32 {
            self.child.id()
        }

        /// Waits until it stops or exits; `None` if neither happens by `deadline`.
        fn wait_stop(&mut self, deadline: Instant) -> Result<Option<Reached>, BoxError> {
            loop {
                if let Some((_, status)) =
                    waitpid(Some(self.pid), WaitOptions::UNTRACED | WaitOptions::NOHANG)?
                {
                    if status.stopped() {
                        return Ok(Some(Reached::Stopped));
                    }
                    self.reaped = true;
                    return Ok(Some(Reached::Exited(status)));
                }
                if Instant::now() >= deadline {
                    return Ok(None);
                }
                std::thread::sleep(FAST_POLL);
            }
        }

        /// SIGKILLs it (a stopped process dies too) and reaps it.
        fn kill(&mut self) -> Result<(), BoxError> {
            if self.reaped {
                return Ok(());
            }
            self.child.kill()?;
            let deadline = Instant::now() + REAP_DEADLINE;
            loop {
                if waitpid(Some(self.pid), WaitOptions::NOHANG)?.is_some() {
                    self.reaped = true;
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    return Err(format!("the victim (pid {}) survived SIGKILL", self.id()).into());
                }
                std::thread::sleep(FAST_POLL);
            }
        }
    }

    impl Drop for Victim {
        fn drop(&mut self) {
            if !self.reaped {
                let _ = self.child.kill();
                let _ = waitpid(Some(self.pid), WaitOptions::empty());
            }
        }
    }

    /// Kills a worker inside a shard lock, on purpose, and watches the pool repair the
    /// shard. `None` (after saying why) in a build without crash points.
    fn deliberate_kill(
        launch: &dyn Fn() -> Command,
        cache: &Cache,
        name: &str,
        dir: &Path,
        started: Instant,
    ) -> Result<Option<Deliberate>, BoxError> {
        let note = dir.join("victim.note");
        let mut victim = Victim::spawn(launch, name, &note)?;
        let pid = victim.id();
        match victim.wait_stop(Instant::now() + VICTIM_DEADLINE)? {
            Some(Reached::Stopped) => {}
            Some(Reached::Exited(status))
                if status.exit_status() == Some(i32::from(victim::EXIT_NEVER_STOPPED)) =>
            {
                println!(
                    "  {:5.2} s  no deliberate kill: this build has no crash points (larder's \
                     `crash-points` feature), so the victim (pid {pid}) never stopped",
                    started.elapsed().as_secs_f64()
                );
                return Ok(None);
            }
            Some(Reached::Exited(status)) => {
                return Err(format!("the victim (pid {pid}) failed: {status:?}").into())
            }
            None => {
                return Err(format!(
                    "the victim (pid {pid}) did not reach its crash point within \
                     {VICTIM_DEADLINE:?}"
                )
                .into())
            }
        }
        // It is stopped: what it wrote before the set is all there is.
        let text = std::fs::read_to_string(&note)?;
        let (token, shard) = text
            .trim_end()
            .split_once(' ')
            .and_then(|(t, s)| Some((t.to_string(), s.parse::<usize>().ok()?)))
            .ok_or_else(|| format!("unreadable victim note {text:?}"))?;
        let shard_counts = |stats: &larder::Stats| {
            stats
                .shards
                .get(shard)
                .map(|s| (s.recoveries, s.repair_dropped))
                .ok_or_else(|| format!("the cache has no shard {shard}"))
        };
        let (recoveries_before, dropped_before) = shard_counts(&cache.stats())?;
        println!(
            "  {:5.2} s  DELIBERATE KILL: an extra worker (pid {pid}), started with\n{INDENT}\
             LARDER_CRASH_AT={} LARDER_CRASH_ACTION=stop, re-validated\n{INDENT}\
             token {}... and stopped itself inside shard {shard}'s lock, halfway through\n{INDENT}\
             overwriting the token's claims in place (half old, half new): SIGKILL it there",
            started.elapsed().as_secs_f64(),
            victim::POINT,
            token.get(..8).unwrap_or(&token),
        );
        let killed = Instant::now();
        victim.kill()?;
        // The next process to take the lock finds it owner-dead and repairs the shard.
        let deadline = killed + REPAIR_DEADLINE;
        let repaired_after = loop {
            if shard_counts(&cache.stats())?.0 > recoveries_before {
                break Some(killed.elapsed());
            }
            if Instant::now() >= deadline {
                break None;
            }
            std::thread::sleep(FAST_POLL);
        };
        // The repairer counts the recovery before what it dropped, both under the lock:
        // once this process has had the lock too, both are in.
        let probe = (0u64..)
            .map(|i| format!("auth-demo-probe-{i}"))
            .find(|k| cache.shard_of(k.as_bytes()) == shard)
            .unwrap_or_default();
        cache.remove(probe.as_bytes())?;
        let dropped = shard_counts(&cache.stats())?.1 - dropped_before;
        let elapsed = started.elapsed().as_secs_f64();
        match repaired_after {
            Some(after) => {
                println!(
                    "  {elapsed:5.2} s  shard {shard} repaired {:.1} ms after the kill by the next \
                     worker to take its lock\n{INDENT}(owner-dead); the repair dropped {}",
                    after.as_secs_f64() * 1e3,
                    if dropped == 1 {
                        format!(
                            "1 entry, the half-written token (its next\n{INDENT}lookup \
                             validates it again)"
                        )
                    } else {
                        format!("{dropped} entries")
                    }
                );
            }
            None => println!(
                "  {elapsed:5.2} s  shard {shard} NOT repaired within {REPAIR_DEADLINE:?} of the kill"
            ),
        }
        Ok(Some(Deliberate {
            shard,
            repaired_after,
            dropped,
        }))
    }

    /// Counts per worker slot, summed over every start of the slot.
    fn read_reports(dir: &Path, slots: usize) -> Result<Vec<Counts>, BoxError> {
        let mut per_slot = vec![Counts::default(); slots];
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("counts") {
                continue; // a `.tmp` left by a worker killed mid-write, or the victim's note
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

    /// The pool's operations so far, and when they were read.
    struct Sample(Instant, u64);

    impl Sample {
        fn take(dir: &Path, slots: usize) -> Result<Sample, BoxError> {
            let ops = read_reports(dir, slots)?.iter().map(Counts::ops).sum();
            Ok(Sample(Instant::now(), ops))
        }

        /// Operations per second from `self` to `later`.
        fn rate_to(&self, later: &Sample) -> f64 {
            let secs = later.0.duration_since(self.0).as_secs_f64();
            if secs > 0.0 {
                later.1.saturating_sub(self.1) as f64 / secs
            } else {
                0.0
            }
        }
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

    /// A number of things, in the singular or the plural.
    struct Count(u64, &'static str);

    impl fmt::Display for Count {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let s = if self.0 == 1 { "" } else { "s" };
            write!(f, "{} {}{s}", self.0, self.1)
        }
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

    /// Runs the demo, printing as it goes; `launch` gives a command that starts this
    /// program again (the environment added to it makes the new process a worker).
    pub fn run(args: &Args, launch: &dyn Fn() -> Command) -> Result<Option<Summary>, BoxError> {
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
            "auth_workers: {} workers for {} s, {} at random instants and one inside a \
             shard lock;\n{TOKENS} tokens, Zipf({ZIPF_EXPONENT}), {}% get / {SET_PERCENT}% set, \
             TTL {}-{} s",
            args.workers,
            args.secs,
            Count(args.kills as u64, "SIGKILL"),
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

        let mut pool = Pool::start(launch, name.clone(), dir.clone(), args.workers)?;
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
        let mut kills_done = 0u64;

        // The deliberate kill, at 40% of the run, with a throughput window on either
        // side of it (the one before starts no earlier than the run).
        let window = WINDOW.min(run / 4);
        let deliberate_at = started + (run * 2 / 5).max(window);
        let before_at = deliberate_at - window;
        let mut before: Option<Sample> = None;
        let mut deliberate_done = false;
        let mut deliberate: Option<Deliberate> = None;
        // Taken once the victim's shard is repaired, until the window after it is read.
        let mut since_repair: Option<Sample> = None;

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
            if before.is_none() && Instant::now() >= before_at {
                before = Some(Sample::take(&dir, args.workers)?);
            }
            if !deliberate_done && Instant::now() >= deliberate_at {
                deliberate_done = true;
                if let Some(b) = &before {
                    let now = Sample::take(&dir, args.workers)?;
                    println!(
                        "  {:5.2} s  the pool serves {:.0} ops/s (over the last {:.1} s)",
                        started.elapsed().as_secs_f64(),
                        b.rate_to(&now),
                        now.0.duration_since(b.0).as_secs_f64()
                    );
                }
                deliberate = deliberate_kill(launch, &cache, &name, &dir, started)?;
                if deliberate.is_some() {
                    since_repair = Some(Sample::take(&dir, args.workers)?);
                }
            }
            if let Some(s) = since_repair.take_if(|s| Instant::now() >= s.0 + window) {
                print_survivors(&s, &Sample::take(&dir, args.workers)?, started);
            }
            // A scheduling tick, not synchronisation: each pass re-checks the clock
            // and the workers' state.
            let mut wake = next_kill.peek().copied().unwrap_or(end).min(end);
            if before.is_none() {
                wake = wake.min(before_at);
            }
            if !deliberate_done {
                wake = wake.min(deliberate_at);
            }
            if let Some(s) = &since_repair {
                wake = wake.min(s.0 + window);
            }
            std::thread::sleep(wake.saturating_duration_since(Instant::now()).min(POLL));
        }
        // A run too short for the whole window after the repair reports what it has.
        if let Some(s) = since_repair.take() {
            print_survivors(&s, &Sample::take(&dir, args.workers)?, started);
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
        let on_purpose = u64::from(deliberate.is_some());
        println!(
            "owner-dead recoveries     {}  ({on_purpose} after the deliberate kill, {} after \
             {} at random instants)",
            stats.recoveries,
            stats.recoveries.saturating_sub(on_purpose),
            Count(kills_done, "kill"),
        );
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
             recoveries come from the cache's own counters, which keep killed workers' counts.\n\
             Critical sections last about a microsecond, so a kill at a random moment rarely\n\
             lands in one (about 1 in 300 did when measured; most land during a validation,\n\
             and a waiting worker takes that fill over): the deliberate kill shows what\n\
             happens when one does.",
            worker::FLUSH_EVERY
        );

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
        if let Some(d) = deliberate.as_ref().filter(|d| d.repaired_after.is_none()) {
            problems.push(format!(
                "shard {} was not repaired after the deliberate kill",
                d.shard
            ));
        }
        if problems.is_empty() {
            println!("OK");
        } else {
            for p in &problems {
                println!("FAILED: {p}");
            }
        }
        Ok(Some(Summary {
            recoveries: stats.recoveries,
            deliberate,
            torn,
            verify_clean: report.is_clean(),
            problems,
        }))
    }

    fn print_survivors(since: &Sample, now: &Sample, started: Instant) {
        println!(
            "  {:5.2} s  the survivors serve {:.0} ops/s (over the {:.1} s since the repair)",
            started.elapsed().as_secs_f64(),
            since.rate_to(now),
            now.0.duration_since(since.0).as_secs_f64()
        );
    }
}
