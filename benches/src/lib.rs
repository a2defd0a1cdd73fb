//! The benchmark workloads, defined once: every benchmark in `benches/` and the CLI's
//! `larder bench` draw keys, values and operation mixes from here, so a figure from one
//! is comparable with a figure from another.
//!
//! Why a crate of its own rather than files in `benches/`: the multi-process runner
//! re-executes the running binary as its workers, so the code that a worker runs must be
//! reachable from any binary that runs it (a bench, the CLI), and the definitions must
//! not drift between them. It depends on larder alone; the peers the benchmarks compare
//! with (LMDB, Redis) are dev-dependencies of its benches, out of every other build.
//!
//! What it defines (the design brief's Performance section names these workloads):
//! - a deterministic pseudo-random generator ([`Rng`], xoshiro256\*\* seeded through
//!   splitmix64), so that runs are repeatable and need no dependency;
//! - key choice ([`KeySampler`]): uniform, or Zipf(θ) by the generator of Gray et al.
//!   ("Quickly generating billion-record synthetic databases", SIGMOD 1994) as YCSB uses
//!   it, with θ = [`ZIPF_THETA`];
//! - the key format ([`key`], [`KEY_LEN`] bytes) and the value format ([`write_value`],
//!   [`check_value`]): a value carries its key's index, a version and a checksum, so a
//!   reader detects a torn value or a value stored under the wrong key;
//! - operation mixes ([`Mix`]: 100/0, 95/5, 90/10 get/set) and the TTL of every set
//!   ([`TTL`]);
//! - a small log-bucket latency histogram ([`Histogram`]), kept here so that the library
//!   needs no histogram dependency;
//! - what the benchmark binaries share: filling a cache ([`prefill`], [`set_keys`],
//!   [`fill_until_every_shard_evicts`]), scratch directories ([`TempDir`]), the load
//!   average, a thread's CPU time;
//! - the multi-process throughput runner ([`run_multiprocess`]): N worker processes on
//!   one store, started together, each running the mix for a fixed time and reporting
//!   its operation count and sampled latencies.
//!
//! # Workers
//!
//! [`run_multiprocess`] starts each worker by running [`std::env::current_exe`] again
//! with the environment variable [`WORKER_ENV`] set. The binary's `main` must therefore
//! call [`worker_main_if_requested`] (or [`worker_main_if_requested_with`], to add stores
//! of its own) before anything else: in a worker it runs the worker and exits; otherwise
//! it returns at once. Workers report "ready" on their standard output once their store
//! is open, wait for one "go" line on their standard input (the start barrier: all
//! workers start within microseconds of one another), run, and write their figures to a
//! result file of their own. Every wait on either side has a deadline; the parent kills
//! and reaps its workers on any failure, and a worker whose parent has gone (its
//! standard input closed before "go") exits.
//!
//! # Example
//!
//! ```
//! use larder_bench::{self as workload, KeySampler, Distribution, Mix, Rng};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut rng = Rng::new(42);
//! let keys = KeySampler::new(Distribution::zipf(), workload::LIVE_KEYS)?;
//! let index = keys.sample(&mut rng);
//! assert!(index < workload::LIVE_KEYS);
//! let key = workload::key(index);
//! assert_eq!(key.len(), workload::KEY_LEN);
//!
//! let mut value = vec![0u8; workload::VALUE_LEN];
//! workload::write_value(index, 7, &mut value)?;
//! assert_eq!(workload::check_value(index, &value)?, 7); // the version back
//! value[100] ^= 1; // a torn or corrupted value is caught
//! assert!(workload::check_value(index, &value).is_err());
//!
//! assert!(Mix::YCSB_B.get_percent() == 95);
//! # Ok(()) }
//! ```
//!
//! A binary that benchmarks processes (this one is not run here: it re-executes itself):
//!
//! ```no_run
//! use larder_bench::{self as workload, BenchConfig, Mix, Distribution};
//! use std::time::Duration;
//!
//! fn main() -> Result<(), larder::Error> {
//!     workload::worker_main_if_requested(); // first thing: workers stop here
//!     let path = std::env::temp_dir().join("larder-bench-example");
//!     let mut reports = Vec::new();
//!     for n in [1, 2] {
//!         let mut cfg = BenchConfig::larder(path.to_str().unwrap_or("larder-bench"));
//!         cfg.processes = n;
//!         cfg.mix = Mix::YCSB_B;
//!         cfg.distribution = Distribution::zipf();
//!         cfg.duration = Duration::from_secs(2);
//!         reports.push(workload::run_multiprocess(&cfg)?);
//!         larder::Cache::unlink(&cfg.target)?;
//!     }
//!     print!("{}", workload::format_table(&reports));
//!     Ok(())
//! }
//! ```
#![deny(unsafe_code)]

use std::ffi::OsString;
use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use larder::{Cache, Options};
use larder::{Error, Result};

// ----- the workload's constants ------------------------------------------------------

/// Bytes of every key.
pub const KEY_LEN: usize = 32;
/// Bytes of a value in the standard workload.
pub const VALUE_LEN: usize = 256;
/// Bytes of a value in the large-value workload.
pub const LARGE_VALUE_LEN: usize = 1000;
/// Live keys in the standard workload.
pub const LIVE_KEYS: u64 = 100_000;
/// The key space of the hit-ratio workload.
pub const HIT_RATIO_KEYS: u64 = 1_000_000;
/// Requests replayed by the hit-ratio workload.
pub const HIT_RATIO_REQUESTS: u64 = 10_000_000;
/// Skew of the Zipf workloads.
pub const ZIPF_THETA: f64 = 0.99;
/// TTL of every set.
pub const TTL: Duration = Duration::from_secs(300);
/// The environment variable that makes a process a benchmark worker.
pub const WORKER_ENV: &str = "LARDER_BENCH_WORKER";
/// The backend name of larder itself in a [`BenchConfig`].
pub const LARDER: &str = "larder";

/// Every key starts with this, then 16 hex digits of its index.
const KEY_PREFIX: &[u8; 16] = b"larder-bench-key";
/// A value starts with its key's index and a version (8 bytes each, little-endian) and
/// ends with an 8-byte checksum of everything before it.
pub const MIN_VALUE_LEN: usize = 24;

// ----- random numbers --------------------------------------------------------------

/// One step of splitmix64: a good 64-bit mixer, used to seed [`Rng`].
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A fast deterministic generator: xoshiro256\*\* (Blackman and Vigna), seeded through
/// splitmix64 so that any seed, zero included, gives a good state.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// A generator for `seed`; equal seeds give equal streams.
    pub fn new(seed: u64) -> Rng {
        let mut sm = seed;
        Rng {
            s: [
                splitmix64(&mut sm),
                splitmix64(&mut sm),
                splitmix64(&mut sm),
                splitmix64(&mut sm),
            ],
        }
    }

    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// A number in `0..n` (0 when `n` is 0), by Lemire's multiply-shift; its bias, at
    /// most `n / 2^64`, is far below anything a benchmark can see.
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// A number in `[0, 1)` with 53 random bits.
    #[inline]
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

// ----- key choice -------------------------------------------------------------------

/// How keys are chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Distribution {
    /// Every key equally likely.
    Uniform,
    /// Zipf with this skew θ, `0 < θ < 1`: key of rank `i` (from 1) has probability
    /// proportional to `1 / i^θ`. Ranks are scattered over the key space (as YCSB's
    /// "scrambled" Zipfian does), so hot keys are not neighbours.
    Zipf(f64),
}

impl Distribution {
    /// Zipf with the workload's skew, [`ZIPF_THETA`].
    pub fn zipf() -> Distribution {
        Distribution::Zipf(ZIPF_THETA)
    }

    /// Parses `uniform`, `zipf` (θ = 0.99) or `zipf:<θ>`.
    pub fn parse(s: &str) -> Result<Distribution> {
        match s {
            "uniform" => Ok(Distribution::Uniform),
            "zipf" => Ok(Distribution::zipf()),
            _ => {
                let theta = s
                    .strip_prefix("zipf:")
                    .and_then(|t| t.parse::<f64>().ok())
                    .ok_or_else(|| {
                        Error::InvalidOptions(format!(
                            "distribution {s:?}: expected uniform, zipf or zipf:<theta>"
                        ))
                    })?;
                Ok(Distribution::Zipf(theta))
            }
        }
    }
}

impl fmt::Display for Distribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Distribution::Uniform => f.write_str("uniform"),
            Distribution::Zipf(t) if *t == ZIPF_THETA => f.write_str("zipf"),
            Distribution::Zipf(t) => write!(f, "zipf:{t}"),
        }
    }
}

/// The Zipf generator of Gray et al. (SIGMOD 1994), as in YCSB's `ZipfianGenerator`:
/// constant time per sample after an O(n) precomputation of ζ(n, θ).
#[derive(Debug, Clone)]
pub struct Zipf {
    n: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
    half_pow_theta: f64,
}

impl Zipf {
    /// A sampler of ranks `0..n` (0 the most frequent). `n` must be at least 1 and θ
    /// strictly between 0 and 1. Takes O(n) time (about a millisecond per 200,000 keys).
    pub fn new(n: u64, theta: f64) -> Result<Zipf> {
        if n == 0 {
            return Err(Error::InvalidOptions("zipf over zero keys".into()));
        }
        if !(theta > 0.0 && theta < 1.0) {
            return Err(Error::InvalidOptions(format!(
                "zipf theta {theta} must be strictly between 0 and 1"
            )));
        }
        let zetan = (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum::<f64>();
        let zeta2 = 1.0 + 0.5f64.powf(theta);
        let eta = (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan);
        Ok(Zipf {
            n,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zetan,
            eta,
            half_pow_theta: 0.5f64.powf(theta),
        })
    }

    /// The skew.
    pub fn theta(&self) -> f64 {
        self.theta
    }

    /// A rank in `0..n`.
    #[inline]
    pub fn sample(&self, rng: &mut Rng) -> u64 {
        let u = rng.next_f64();
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + self.half_pow_theta {
            return 1.min(self.n - 1);
        }
        // `as` saturates (and maps NaN to 0), so this cannot leave 0..n after the min.
        let r = (self.n as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        r.min(self.n - 1)
    }
}

/// Chooses key indices in `0..n` by a [`Distribution`].
#[derive(Debug, Clone)]
pub struct KeySampler {
    n: u64,
    kind: SamplerKind,
}

#[derive(Debug, Clone)]
enum SamplerKind {
    Uniform,
    Zipf { zipf: Zipf, mult: u64 },
}

/// Odd multipliers tried for the rank → index permutation (`rank * mult mod n` is a
/// permutation when `gcd(mult, n) = 1`); the first is Knuth's multiplicative-hash prime.
const SCATTER: [u64; 3] = [2_654_435_761, 2_246_822_519, 3_266_489_917];

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

impl KeySampler {
    /// A sampler over `n` keys (at least 1).
    pub fn new(dist: Distribution, n: u64) -> Result<KeySampler> {
        if n == 0 {
            return Err(Error::InvalidOptions("a key space of zero keys".into()));
        }
        let kind = match dist {
            Distribution::Uniform => SamplerKind::Uniform,
            Distribution::Zipf(theta) => {
                let mult = SCATTER
                    .iter()
                    .copied()
                    .find(|&m| gcd(m % n, n) == 1 || n == 1)
                    .unwrap_or(1);
                SamplerKind::Zipf {
                    zipf: Zipf::new(n, theta)?,
                    mult,
                }
            }
        };
        Ok(KeySampler { n, kind })
    }

    /// The number of keys.
    pub fn keys(&self) -> u64 {
        self.n
    }

    /// A key index in `0..n`.
    #[inline]
    pub fn sample(&self, rng: &mut Rng) -> u64 {
        match &self.kind {
            SamplerKind::Uniform => rng.below(self.n),
            SamplerKind::Zipf { zipf, mult } => self.scatter(zipf.sample(rng), *mult),
        }
    }

    /// Spreads a Zipf rank over the key space: a permutation of `0..n`.
    #[inline]
    fn scatter(&self, rank: u64, mult: u64) -> u64 {
        ((rank as u128 * mult as u128) % self.n as u128) as u64
    }
}

// ----- keys and values ---------------------------------------------------------------

/// The key of index `index`: `larder-bench-key` and 16 lowercase hex digits.
#[inline]
pub fn key(index: u64) -> [u8; KEY_LEN] {
    let mut k = [0u8; KEY_LEN];
    key_into(index, &mut k);
    k
}

/// Writes the key of `index` into `out`.
#[inline]
pub fn key_into(index: u64, out: &mut [u8; KEY_LEN]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out[..16].copy_from_slice(KEY_PREFIX);
    for (i, b) in out[16..].iter_mut().enumerate() {
        *b = HEX[((index >> (60 - 4 * i)) & 0xf) as usize];
    }
}

/// The index a key was made from, if it is a workload key.
pub fn key_index(key: &[u8]) -> Option<u64> {
    let digits = key.strip_prefix(&KEY_PREFIX[..])?;
    if digits.len() != 16 {
        return None;
    }
    let s = std::str::from_utf8(digits).ok()?;
    u64::from_str_radix(s, 16).ok()
}

/// Why [`check_value`] refused a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ValueError {
    /// Shorter than [`MIN_VALUE_LEN`].
    TooShort {
        /// Its length.
        len: usize,
    },
    /// Its checksum does not match: torn (parts of two writes) or corrupt.
    Checksum,
    /// Whole, but written for another key.
    WrongKey {
        /// The key index asked for.
        expected: u64,
        /// The key index the value carries.
        found: u64,
    },
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueError::TooShort { len } => write!(
                f,
                "a workload value needs at least {MIN_VALUE_LEN} bytes, this one has {len}"
            ),
            ValueError::Checksum => f.write_str("the value's checksum does not match (torn value)"),
            ValueError::WrongKey { expected, found } => {
                write!(f, "value of key {found} returned for key {expected}")
            }
        }
    }
}

impl std::error::Error for ValueError {}

/// Writes the value of key `index` at `version` into `out` (its whole length, at least
/// [`MIN_VALUE_LEN`] bytes): index, version, filler derived from both, checksum.
#[inline]
pub fn write_value(
    index: u64,
    version: u64,
    out: &mut [u8],
) -> std::result::Result<(), ValueError> {
    let len = out.len();
    if len < MIN_VALUE_LEN {
        return Err(ValueError::TooShort { len });
    }
    let (body, sum) = out.split_at_mut(len - 8);
    body[..8].copy_from_slice(&index.to_le_bytes());
    body[8..16].copy_from_slice(&version.to_le_bytes());
    let fill = (index ^ version.rotate_left(32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for (i, chunk) in body[16..].chunks_mut(8).enumerate() {
        let w = fill.wrapping_add((i as u64).wrapping_mul(0xd6e8_feb8_6659_fd93));
        let n = chunk.len();
        chunk.copy_from_slice(&w.to_le_bytes()[..n]);
    }
    sum.copy_from_slice(&xxhash_rust::xxh3::xxh3_64(body).to_le_bytes());
    Ok(())
}

/// A new value of `len` bytes for key `index` at `version`.
pub fn value(index: u64, version: u64, len: usize) -> std::result::Result<Vec<u8>, ValueError> {
    let mut v = vec![0u8; len];
    write_value(index, version, &mut v)?;
    Ok(v)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    let n = b.len().min(8);
    w[..n].copy_from_slice(&b[..n]);
    u64::from_le_bytes(w)
}

/// Checks that `bytes` is a whole value written for key `index`; returns its version.
#[inline]
pub fn check_value(index: u64, bytes: &[u8]) -> std::result::Result<u64, ValueError> {
    let len = bytes.len();
    if len < MIN_VALUE_LEN {
        return Err(ValueError::TooShort { len });
    }
    let (body, sum) = bytes.split_at(len - 8);
    if xxhash_rust::xxh3::xxh3_64(body) != le_u64(sum) {
        return Err(ValueError::Checksum);
    }
    let found = le_u64(&body[..8]);
    if found != index {
        return Err(ValueError::WrongKey {
            expected: index,
            found,
        });
    }
    Ok(le_u64(&body[8..16]))
}

// ----- mixes ------------------------------------------------------------------------

/// A read/write mix: the share of operations that are gets; the rest are sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mix {
    get_percent: u8,
}

impl Mix {
    /// 100% gets.
    pub const READ_ONLY: Mix = Mix { get_percent: 100 };
    /// 95% gets, 5% sets (YCSB workload B).
    pub const YCSB_B: Mix = Mix { get_percent: 95 };
    /// 90% gets, 10% sets.
    pub const READ_WRITE: Mix = Mix { get_percent: 90 };
    /// The three mixes of the workload.
    pub const ALL: [Mix; 3] = [Mix::READ_ONLY, Mix::YCSB_B, Mix::READ_WRITE];

    /// A mix with this percentage of gets (0..=100).
    pub fn new(get_percent: u8) -> Result<Mix> {
        if get_percent > 100 {
            return Err(Error::InvalidOptions(format!(
                "a mix of {get_percent}% gets"
            )));
        }
        Ok(Mix { get_percent })
    }

    /// Percentage of gets.
    pub fn get_percent(self) -> u8 {
        self.get_percent
    }

    /// Parses `95/5` (gets/sets, summing to 100) or `95`.
    pub fn parse(s: &str) -> Result<Mix> {
        let bad = || Error::InvalidOptions(format!("mix {s:?}: expected e.g. 95/5"));
        let (g, rest) = match s.split_once('/') {
            Some((g, w)) => (g, Some(w)),
            None => (s, None),
        };
        let g: u8 = g.trim().parse().map_err(|_| bad())?;
        if let Some(w) = rest {
            let w: u8 = w.trim().parse().map_err(|_| bad())?;
            if g as u16 + w as u16 != 100 {
                return Err(bad());
            }
        }
        Mix::new(g)
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.get_percent, 100 - self.get_percent)
    }
}

// ----- sizing a cache for the workload ----------------------------------------------

/// Bytes of one entry in a log: record header, key and value, each padded to 8.
pub fn record_size(value_len: usize) -> usize {
    Options::entry_size(KEY_LEN, value_len)
}

/// Options for a cache holding `keys` entries of `value_len`-byte values with room to
/// spare (twice the records), as the throughput benchmarks use: gets hit, and updates
/// do not evict live keys.
pub fn options_for(keys: u64, value_len: usize) -> Options {
    let per = record_size(value_len) as u64 + 16;
    Options::new()
        .capacity(keys.saturating_mul(per).saturating_mul(2) + (4 << 20))
        .max_key_len(KEY_LEN)
        .max_value_len(value_len.max(MIN_VALUE_LEN))
        .expected_entry_size(record_size(value_len))
}

// ----- latency histogram ------------------------------------------------------------

/// Sub-buckets per power of two, as a number of bits: 128 sub-buckets, so a recorded
/// value is off by less than 1/128 (0.8%).
const SUB_BITS: u32 = 7;
const SUB: usize = 1 << SUB_BITS;
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB;

/// A log-bucket histogram of nanoseconds, laid out as HdrHistogram's: exact below 128,
/// then 128 buckets per power of two, so a value is off by under 0.8% from 1 ns to
/// `u64::MAX`, in 58 KiB.
#[derive(Clone, PartialEq, Eq)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl fmt::Debug for Histogram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.total)
            .field("p50", &self.quantile(0.5))
            .field("p99", &self.quantile(0.99))
            .field("max", &self.max)
            .finish()
    }
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Histogram {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }

    #[inline]
    fn index(v: u64) -> usize {
        if v < SUB as u64 {
            return v as usize;
        }
        let msb = 63 - v.leading_zeros();
        let shift = msb - SUB_BITS;
        let sub = ((v >> shift) as usize) & (SUB - 1);
        ((shift as usize + 1) << SUB_BITS) + sub
    }

    /// The largest value that lands in bucket `idx`.
    fn highest(idx: usize) -> u64 {
        if idx < SUB {
            return idx as u64;
        }
        let shift = (idx >> SUB_BITS) - 1;
        let sub = (idx & (SUB - 1)) as u64;
        let low = (SUB as u64 + sub) << shift;
        low.saturating_add((1u64 << shift) - 1)
    }

    /// Counts one value (nanoseconds).
    #[inline]
    pub fn record(&mut self, v: u64) {
        if let Some(c) = self.counts.get_mut(Self::index(v)) {
            *c += 1;
        }
        self.total += 1;
        self.max = self.max.max(v);
    }

    /// Counts one duration.
    #[inline]
    pub fn record_duration(&mut self, d: Duration) {
        self.record(d.as_nanos().min(u64::MAX as u128) as u64);
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Largest value recorded.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0..=1), as HdrHistogram reports it: the highest value
    /// of the bucket holding it (never more than the largest value recorded). 0 if empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let q = if q.is_nan() { 1.0 } else { q.clamp(0.0, 1.0) };
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0u64;
        for (idx, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Self::highest(idx).min(self.max);
            }
        }
        self.max
    }

    /// [`Histogram::quantile`] as a duration of nanoseconds.
    pub fn quantile_duration(&self, q: f64) -> Duration {
        Duration::from_nanos(self.quantile(q))
    }

    /// A compact text form: `max;idx:count,idx:count,...` (non-empty buckets only).
    fn encode(&self) -> String {
        let mut s = format!("{};", self.max);
        let mut first = true;
        for (i, &c) in self.counts.iter().enumerate() {
            if c != 0 {
                if !first {
                    s.push(',');
                }
                first = false;
                s.push_str(&format!("{i}:{c}"));
            }
        }
        s
    }

    fn decode(s: &str) -> Option<Histogram> {
        let (max, rest) = s.split_once(';')?;
        let mut h = Histogram::new();
        h.max = max.parse().ok()?;
        for pair in rest.split(',').filter(|p| !p.is_empty()) {
            let (i, c) = pair.split_once(':')?;
            let i: usize = i.parse().ok()?;
            let c: u64 = c.parse().ok()?;
            *h.counts.get_mut(i)? += c;
            h.total += c;
        }
        Some(h)
    }
}

// ----- stores -------------------------------------------------------------------------

/// The error type of a [`Store`].
pub type StoreError = Box<dyn std::error::Error + Send + Sync>;

/// What a worker runs the mix against: larder, or a peer (LMDB, Redis, ...) that a
/// benchmark binary provides through [`worker_main_if_requested_with`].
pub trait Store {
    /// Copies the value of `key` into `buf` (replacing its contents); false if absent.
    fn get_into(&mut self, key: &[u8], buf: &mut Vec<u8>) -> std::result::Result<bool, StoreError>;
    /// Stores `value` under `key` with a TTL.
    fn set(
        &mut self,
        key: &[u8],
        value: &[u8],
        ttl: Duration,
    ) -> std::result::Result<(), StoreError>;
}

impl Store for Cache {
    #[inline]
    fn get_into(&mut self, key: &[u8], buf: &mut Vec<u8>) -> std::result::Result<bool, StoreError> {
        Ok(Cache::get_into(self, key, buf)?)
    }

    #[inline]
    fn set(
        &mut self,
        key: &[u8],
        value: &[u8],
        ttl: Duration,
    ) -> std::result::Result<(), StoreError> {
        Ok(Cache::set(self, key, value, Some(ttl))?)
    }
}

/// Stores keys `0..keys` (version 0, `value_len`-byte values, TTL [`TTL`]) and reads
/// each back once. The read matters for larder: S3-FIFO keeps a key that was read when
/// the small log fills, and evicts one that was never read, so a prefill without it
/// would keep a tenth of the keys.
pub fn prefill(
    store: &mut dyn Store,
    keys: u64,
    value_len: usize,
) -> std::result::Result<(), StoreError> {
    set_keys(store, 0..keys, value_len, true)
}

/// Stores the keys `keys` (version 0, `value_len`-byte values, TTL [`TTL`]), each read
/// back once if `read_back` (in larder, S3-FIFO then keeps it as a key in use).
pub fn set_keys(
    store: &mut dyn Store,
    keys: std::ops::Range<u64>,
    value_len: usize,
    read_back: bool,
) -> std::result::Result<(), StoreError> {
    let mut v = vec![0u8; value_len];
    let mut buf = Vec::with_capacity(value_len);
    let mut k = [0u8; KEY_LEN];
    for i in keys {
        key_into(i, &mut k);
        write_value(i, 0, &mut v)?;
        store.set(&k, &v, TTL)?;
        if read_back {
            store.get_into(&k, &mut buf)?;
        }
    }
    Ok(())
}

/// Sets fresh keys from `first` on, as [`set_keys`] does, until every shard of `cache`
/// has evicted: its logs are then full and the cache is in its steady state. Returns
/// how many keys it set.
pub fn fill_until_every_shard_evicts(
    cache: &mut Cache,
    first: u64,
    value_len: usize,
    read_back: bool,
) -> std::result::Result<u64, StoreError> {
    const BATCH: u64 = 4096;
    // A hundred times what the file holds: far more than filling it ever takes.
    let limit = 100 * (cache.stats().file_size / record_size(value_len) as u64 + BATCH);
    let mut n = 0;
    loop {
        set_keys(cache, first + n..first + n + BATCH, value_len, read_back)?;
        n += BATCH;
        if cache.stats().shards.iter().all(|s| s.evictions > 0) {
            return Ok(n);
        }
        if n > limit {
            return Err(format!("the cache never filled ({n} keys set)").into());
        }
    }
}

// ----- the multi-process runner: configuration ---------------------------------------

/// One multi-process throughput run.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BenchConfig {
    /// The store: [`LARDER`], or a name the binary's store factory knows (see
    /// [`worker_main_if_requested_with`]); letters, digits, `-` and `_`.
    pub backend: String,
    /// Where the store is: larder's cache name or path; for other backends whatever
    /// their factory reads (a directory, a socket path).
    pub target: String,
    /// Worker processes.
    pub processes: usize,
    /// How long each worker runs the mix.
    pub duration: Duration,
    /// Live keys (`0..keys`).
    pub keys: u64,
    /// Bytes of every value (at least [`MIN_VALUE_LEN`]).
    pub value_len: usize,
    /// Key choice.
    pub distribution: Distribution,
    /// Gets and sets.
    pub mix: Mix,
    /// TTL of every set.
    pub ttl: Duration,
    /// Time one operation in this many (the timing itself costs two clock reads).
    pub sample_every: u32,
    /// Check one value read in this many with [`check_value`] (1: every value); a bad
    /// value is counted in the report, never ignored.
    pub check_every: u32,
    /// Seed of the workers' generators (worker `i` uses a stream derived from it and `i`).
    pub seed: u64,
    /// Deadline for the workers to open the store and report ready.
    pub start_timeout: Duration,
    /// For larder: capacity in bytes of the file created (0: [`options_for`] sizes it).
    pub capacity: u64,
    /// For larder: create the file if missing and [`prefill`] it before the workers
    /// start. Other backends are prepared by the caller.
    pub prefill: bool,
    /// Arguments the workers get (the binary's own, if it needs some to reach its
    /// call of [`worker_main_if_requested`]).
    pub worker_args: Vec<String>,
}

impl BenchConfig {
    /// The standard workload on larder at `target`: one process, 2 s, 100,000 keys of
    /// 256-byte values, Zipf(0.99), 95/5, TTL 300 s, one op in 64 timed, every value
    /// checked.
    pub fn larder(target: &str) -> BenchConfig {
        BenchConfig::peer(LARDER, target)
    }

    /// The standard workload on another backend.
    pub fn peer(backend: &str, target: &str) -> BenchConfig {
        BenchConfig {
            backend: backend.to_string(),
            target: target.to_string(),
            processes: 1,
            duration: Duration::from_secs(2),
            keys: LIVE_KEYS,
            value_len: VALUE_LEN,
            distribution: Distribution::zipf(),
            mix: Mix::YCSB_B,
            ttl: TTL,
            sample_every: 64,
            check_every: 1,
            seed: 0x001a_2de5,
            start_timeout: Duration::from_secs(30),
            capacity: 0,
            prefill: true,
            worker_args: Vec::new(),
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidOptions(m));
        if self.backend.is_empty()
            || !self
                .backend
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return bad(format!("backend name {:?}", self.backend));
        }
        if self.processes == 0 || self.processes > 4096 {
            return bad(format!("{} processes (1..=4096)", self.processes));
        }
        if self.keys == 0 {
            return bad("zero keys".into());
        }
        if self.value_len < MIN_VALUE_LEN {
            return bad(format!(
                "value_len {} is under the workload's minimum of {MIN_VALUE_LEN}",
                self.value_len
            ));
        }
        if self.sample_every == 0 || self.check_every == 0 {
            return bad("sample_every and check_every must be at least 1".into());
        }
        if self.duration.is_zero() || self.duration > Duration::from_secs(24 * 3600) {
            return bad(format!("duration {:?}", self.duration));
        }
        if self.start_timeout.is_zero() {
            return bad("a zero start_timeout".into());
        }
        if let Distribution::Zipf(t) = self.distribution {
            if !(t > 0.0 && t < 1.0) {
                return bad(format!("zipf theta {t}"));
            }
        }
        Ok(())
    }
}

/// Percent-encodes everything but `[A-Za-z0-9/._-]`, so values can hold any byte.
fn pct_encode(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || b"/._-".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

fn pct_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

/// What one worker is told, through [`WORKER_ENV`].
struct WorkerSpec {
    cfg: BenchConfig,
    id: usize,
    result: PathBuf,
}

/// Version of the worker encoding: parent and worker are the same binary, but a stale
/// variable in an environment must not be half-understood.
const SPEC_VERSION: &str = "1";

fn duration_ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

impl WorkerSpec {
    fn encode(&self) -> String {
        let c = &self.cfg;
        let fields: Vec<(&str, String)> = vec![
            ("v", SPEC_VERSION.into()),
            ("backend", c.backend.clone()),
            ("target", c.target.clone()),
            ("processes", c.processes.to_string()),
            ("duration_us", (c.duration.as_micros() as u64).to_string()),
            ("keys", c.keys.to_string()),
            ("value_len", c.value_len.to_string()),
            ("dist", c.distribution.to_string()),
            ("mix", c.mix.get_percent.to_string()),
            ("ttl_ms", duration_ms(c.ttl).to_string()),
            ("sample_every", c.sample_every.to_string()),
            ("check_every", c.check_every.to_string()),
            ("seed", c.seed.to_string()),
            ("start_ms", duration_ms(c.start_timeout).to_string()),
            ("capacity", c.capacity.to_string()),
            ("id", self.id.to_string()),
        ];
        let mut s = String::new();
        for (k, v) in fields {
            s.push_str(k);
            s.push('=');
            s.push_str(&pct_encode(v.as_bytes()));
            s.push(';');
        }
        s.push_str("result=");
        s.push_str(&pct_encode(self.result.as_os_str().as_bytes()));
        s
    }

    fn decode(s: &str) -> Result<WorkerSpec> {
        let bad = |m: &str| Error::InvalidOptions(format!("{WORKER_ENV}: {m}"));
        let mut map = std::collections::HashMap::new();
        for part in s.split(';') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| bad("a field without '='"))?;
            let v = pct_decode(v).ok_or_else(|| bad("a bad %-escape"))?;
            map.insert(k, v);
        }
        let text = |k: &str| -> Result<String> {
            let v = map.get(k).ok_or_else(|| bad(&format!("no field {k}")))?;
            String::from_utf8(v.clone()).map_err(|_| bad(&format!("field {k} is not UTF-8")))
        };
        let num = |k: &str| -> Result<u64> {
            text(k)?
                .parse::<u64>()
                .map_err(|_| bad(&format!("field {k} is not a number")))
        };
        if text("v")? != SPEC_VERSION {
            return Err(bad("another encoding version"));
        }
        let small = |k: &str| -> Result<u32> {
            u32::try_from(num(k)?).map_err(|_| bad(&format!("field {k} is too large")))
        };
        let size = |k: &str| -> Result<usize> {
            usize::try_from(num(k)?).map_err(|_| bad(&format!("field {k} is too large")))
        };
        let get_percent = u8::try_from(num("mix")?).map_err(|_| bad("field mix is too large"))?;
        let cfg = BenchConfig {
            backend: text("backend")?,
            target: text("target")?,
            processes: size("processes")?,
            duration: Duration::from_micros(num("duration_us")?),
            keys: num("keys")?,
            value_len: size("value_len")?,
            distribution: Distribution::parse(&text("dist")?)?,
            mix: Mix::new(get_percent)?,
            ttl: Duration::from_millis(num("ttl_ms")?),
            sample_every: small("sample_every")?,
            check_every: small("check_every")?,
            seed: num("seed")?,
            start_timeout: Duration::from_millis(num("start_ms")?),
            capacity: num("capacity")?,
            prefill: false,
            worker_args: Vec::new(),
        };
        cfg.validate()?;
        let result = map
            .get("result")
            .ok_or_else(|| bad("no field result"))?
            .clone();
        Ok(WorkerSpec {
            cfg,
            id: size("id")?,
            result: PathBuf::from(OsString::from_vec(result)),
        })
    }
}

// ----- the multi-process runner: reports ---------------------------------------------

/// What one worker did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProcessReport {
    /// Operations completed (gets + sets, errors included).
    pub ops: u64,
    /// Gets.
    pub gets: u64,
    /// Sets.
    pub sets: u64,
    /// Gets that found the key.
    pub hits: u64,
    /// Gets that did not (the keys were prefilled: an eviction or an expiry).
    pub misses: u64,
    /// Values that failed [`check_value`]: torn, corrupt or another key's. Must be 0.
    pub bad_values: u64,
    /// Operations that returned an error.
    pub errors: u64,
    /// Time from the start signal to the last operation.
    pub elapsed: Duration,
    /// CPU time the worker's thread used meanwhile. Below `elapsed` when the worker
    /// waited (for a lock, a socket) or was preempted: on a machine busy with other work,
    /// throughput figures then say more about that work than about the store.
    pub cpu: Duration,
}

impl ProcessReport {
    /// Operations per second.
    pub fn ops_per_sec(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.ops as f64 / s
        } else {
            0.0
        }
    }
}

/// The result of [`run_multiprocess`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct BenchReport {
    /// The configuration that ran.
    pub config: BenchConfig,
    /// One report per worker.
    pub processes: Vec<ProcessReport>,
    /// Sampled latencies of every worker, in nanoseconds.
    pub latency: Histogram,
}

impl BenchReport {
    /// Operations per second of all workers together (each worker's rate, summed).
    pub fn ops_per_sec(&self) -> f64 {
        self.processes.iter().map(ProcessReport::ops_per_sec).sum()
    }

    /// Mean operations per second of one worker.
    pub fn ops_per_sec_per_process(&self) -> f64 {
        if self.processes.is_empty() {
            0.0
        } else {
            self.ops_per_sec() / self.processes.len() as f64
        }
    }

    fn sum(&self, f: impl Fn(&ProcessReport) -> u64) -> u64 {
        self.processes.iter().map(f).sum()
    }

    /// Operations completed.
    pub fn ops(&self) -> u64 {
        self.sum(|p| p.ops)
    }

    /// Operations per second of CPU time of one worker, averaged over the workers. Unlike
    /// [`BenchReport::ops_per_sec`], time a worker spent preempted by other work does
    /// not lower it; time spent waiting for the store (a lock, a server) does not count
    /// either, so it flatters stores that block.
    pub fn ops_per_cpu_sec(&self) -> f64 {
        let n = self.processes.len().max(1) as f64;
        self.processes
            .iter()
            .map(|p| p.ops as f64 / p.cpu.as_secs_f64().max(1e-9))
            .sum::<f64>()
            / n
    }

    /// [`BenchReport::ops_per_cpu_sec`] over that of the one-process run of the same
    /// workload among `runs`: below 1.0 when processes slow each other down (contended
    /// cache lines, locks), whether or not each had a CPU to itself.
    pub fn cpu_efficiency(&self, runs: &[BenchReport]) -> Option<f64> {
        self.over_one_process(runs, BenchReport::ops_per_cpu_sec)
    }

    /// CPU time over elapsed time, averaged over the workers (1.0: never off the CPU).
    pub fn cpu_share(&self) -> f64 {
        let n = self.processes.len().max(1) as f64;
        self.processes
            .iter()
            .map(|p| p.cpu.as_secs_f64() / p.elapsed.as_secs_f64().max(1e-9))
            .sum::<f64>()
            / n
    }

    /// Gets that found their key, as a fraction of gets (1.0 if none ran).
    pub fn hit_ratio(&self) -> f64 {
        let gets = self.sum(|p| p.gets);
        if gets == 0 {
            1.0
        } else {
            self.sum(|p| p.hits) as f64 / gets as f64
        }
    }

    /// Values that failed their check (must be 0).
    pub fn bad_values(&self) -> u64 {
        self.sum(|p| p.bad_values)
    }

    /// Operations that returned an error.
    pub fn errors(&self) -> u64 {
        self.sum(|p| p.errors)
    }

    /// Median sampled latency.
    pub fn p50(&self) -> Duration {
        self.latency.quantile_duration(0.5)
    }

    /// 99th percentile sampled latency.
    pub fn p99(&self) -> Duration {
        self.latency.quantile_duration(0.99)
    }

    /// 99.9th percentile sampled latency.
    pub fn p999(&self) -> Duration {
        self.latency.quantile_duration(0.999)
    }

    fn same_workload(&self, other: &BenchReport) -> bool {
        let (a, b) = (&self.config, &other.config);
        a.backend == b.backend
            && a.distribution == b.distribution
            && a.mix == b.mix
            && a.value_len == b.value_len
            && a.keys == b.keys
    }

    /// This run's throughput over that of the one-process run of the same workload
    /// among `runs`, if there is one.
    pub fn scaling(&self, runs: &[BenchReport]) -> Option<f64> {
        self.over_one_process(runs, BenchReport::ops_per_sec)
    }

    /// `metric` of this run over that of the one-process run of the same workload among
    /// `runs`, if there is one (and its figure is above zero).
    fn over_one_process(
        &self,
        runs: &[BenchReport],
        metric: fn(&BenchReport) -> f64,
    ) -> Option<f64> {
        let base = runs
            .iter()
            .find(|r| r.config.processes == 1 && r.same_workload(self))?;
        let b = metric(base);
        (b > 0.0).then(|| metric(self) / b)
    }
}

/// A rate with an SI suffix: `12.3M`.
pub fn format_rate(r: f64) -> String {
    if r >= 1e9 {
        format!("{:.2}G", r / 1e9)
    } else if r >= 1e6 {
        format!("{:.2}M", r / 1e6)
    } else if r >= 1e3 {
        format!("{:.1}k", r / 1e3)
    } else {
        format!("{r:.0}")
    }
}

/// A latency in the unit that suits it: `85ns`, `1.24us`, `3.10ms`.
pub fn format_latency(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns < 1_000 {
        format!("{ns}ns")
    } else if ns < 1_000_000 {
        format!("{:.2}us", ns as f64 / 1e3)
    } else if ns < 1_000_000_000 {
        format!("{:.2}ms", ns as f64 / 1e6)
    } else {
        format!("{:.2}s", ns as f64 / 1e9)
    }
}

/// The table of several runs: throughput in total and per process, latency
/// percentiles, scaling against the one-process run of the same workload, the workers'
/// CPU share (`cpu`), operations per CPU-second of a worker against the one-process run
/// (`cpu-eff`), hit ratio, bad values and errors.
pub fn format_table(runs: &[BenchReport]) -> String {
    let mut s = format!(
        "{:<8} {:<8} {:<6} {:>5} {:>4} {:>11} {:>11} {:>9} {:>9} {:>9} {:>8} {:>5} {:>7} {:>7} {:>4} {:>4}\n",
        "backend",
        "dist",
        "mix",
        "value",
        "N",
        "ops/s",
        "ops/s/proc",
        "p50",
        "p99",
        "p99.9",
        "scaling",
        "cpu",
        "cpu-eff",
        "hits",
        "bad",
        "err"
    );
    for r in runs {
        let c = &r.config;
        let scaling = r
            .scaling(runs)
            .map(|x| format!("{x:.2}x"))
            .unwrap_or_else(|| "-".into());
        s.push_str(&format!(
            "{:<8} {:<8} {:<6} {:>5} {:>4} {:>11} {:>11} {:>9} {:>9} {:>9} {:>8} {:>4.0}% {:>7} {:>6.2}% {:>4} {:>4}\n",
            c.backend,
            c.distribution.to_string(),
            c.mix.to_string(),
            c.value_len,
            c.processes,
            format_rate(r.ops_per_sec()),
            format_rate(r.ops_per_sec_per_process()),
            format_latency(r.p50()),
            format_latency(r.p99()),
            format_latency(r.p999()),
            scaling,
            r.cpu_share() * 100.0,
            r.cpu_efficiency(runs)
                .map(|x| format!("{x:.2}"))
                .unwrap_or_else(|| "-".into()),
            r.hit_ratio() * 100.0,
            r.bad_values(),
            r.errors(),
        ));
    }
    s
}

/// Process counts for a scaling run: 1, 2, 4, ... up to the CPUs this process may use,
/// and that count itself.
pub fn default_process_counts() -> Vec<usize> {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mut v = Vec::new();
    let mut n = 1;
    while n < cpus {
        v.push(n);
        n *= 2;
    }
    v.push(cpus);
    if cpus == 1 {
        // Two processes on one CPU still show whether anything serialises them.
        v.push(2);
    }
    v
}

// ----- for the benchmark binaries ----------------------------------------------------

/// A private directory, removed with everything in it when dropped: the benchmarks'
/// cache files and peers' stores, the runner's result files.
#[derive(Debug)]
pub struct TempDir(PathBuf);

static TEMP_DIRS: AtomicU64 = AtomicU64::new(0);

impl TempDir {
    /// A directory under /dev/shm (larder's medium) where there is one, else under the
    /// temp dir.
    pub fn new(tag: &str) -> Result<TempDir> {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            TempDir::new_in(shm, tag)
        } else {
            TempDir::new_in(&std::env::temp_dir(), tag)
        }
    }

    /// A directory under `base`, named `larder-bench-<tag>-<pid>-<n>-<nanos>`.
    pub fn new_in(base: &Path, tag: &str) -> Result<TempDir> {
        let mut tries = 0;
        loop {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0);
            let p = base.join(format!(
                "larder-bench-{tag}-{}-{}-{nanos:08x}",
                std::process::id(),
                TEMP_DIRS.fetch_add(1, Ordering::Relaxed)
            ));
            match std::fs::create_dir(&p) {
                Ok(()) => return Ok(TempDir(p)),
                // Left by an earlier process with this pid: the next name is another.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 16 => tries += 1,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The path of `name` in the directory, as the `&str` a cache name is.
    pub fn file(&self, name: &str) -> Result<String> {
        let p = self.0.join(name);
        p.to_str().map(str::to_string).ok_or_else(|| {
            Error::Io(std::io::Error::other(format!(
                "{}: not UTF-8, so not a cache name",
                p.display()
            )))
        })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The machine's load averages over 1, 5 and 15 minutes (`unknown` where /proc/loadavg
/// cannot be read): printed beside figures that other work on the machine inflates.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// How a benchmark prints whether a target was met.
pub fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "MISSED"
    }
}

/// CPU time of the calling thread.
pub fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        t.tv_sec.max(0) as u64,
        t.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

// ----- the multi-process runner: parent side -----------------------------------------

/// Lines a worker writes on its standard output.
const READY: &str = "larder-bench-worker ready";
const DONE: &str = "larder-bench-worker done";
/// Extra time, past the run itself, that workers get to finish and write their results.
const FINISH_GRACE: Duration = Duration::from_secs(10);
/// How often the parent polls for a worker's exit (it has already closed its output).
const REAP_POLL: Duration = Duration::from_millis(2);

/// Kills and reaps every worker still running when dropped (on any early return).
struct Workers {
    children: Vec<Option<Child>>,
    stdins: Vec<Option<ChildStdin>>,
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stdins.clear();
        for child in self.children.iter_mut().flatten() {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            // After SIGKILL this returns as soon as the kernel has torn the process down.
            let _ = child.wait();
        }
    }
}

impl Workers {
    /// Waits for worker `i` to exit until `deadline`; its exit status, or an error.
    fn reap(&mut self, i: usize, deadline: Instant) -> Result<std::process::ExitStatus> {
        let child = self
            .children
            .get_mut(i)
            .and_then(Option::as_mut)
            .ok_or_else(|| worker_error(i, "already reaped"))?;
        loop {
            if let Some(status) = child.try_wait()? {
                if let Some(slot) = self.children.get_mut(i) {
                    *slot = None;
                }
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: "a benchmark worker to exit",
                    waited: FINISH_GRACE,
                });
            }
            std::thread::sleep(REAP_POLL);
        }
    }
}

fn worker_error(i: usize, what: &str) -> Error {
    Error::Io(std::io::Error::other(format!(
        "benchmark worker {i}: {what}"
    )))
}

enum Msg {
    Ready,
    Done,
    Eof,
}

/// Opens (creating if needed) and prefills the larder cache of a run.
fn prepare_larder(cfg: &BenchConfig) -> Result<()> {
    let mut opts = options_for(cfg.keys, cfg.value_len);
    if cfg.capacity != 0 {
        opts = opts.capacity(cfg.capacity);
    }
    let mut cache = opts.open(&cfg.target)?;
    prefill(&mut cache, cfg.keys, cfg.value_len)
        .map_err(|e| Error::Io(std::io::Error::other(format!("prefill: {e}"))))?;
    Ok(())
}

/// Runs `cfg.processes` workers on one store, started together, for `cfg.duration`, and
/// collects what they measured.
///
/// For larder (`cfg.backend == LARDER`) with `cfg.prefill`, the cache at `cfg.target` is
/// created if missing (sized by `cfg.capacity`, or [`options_for`]) and prefilled first;
/// the file is left in place for the caller to inspect or remove. Other backends must be
/// ready (created and prefilled) before the call.
///
/// The workers are this binary run again (see the [module docs](self)): its `main` must
/// call [`worker_main_if_requested`] first. Fails with [`Error::Timeout`] if a worker is
/// not ready within `cfg.start_timeout` or not done within the run time plus a grace
/// period, and with [`Error::Io`] if a worker fails; every worker is killed and reaped
/// before an error is returned.
pub fn run_multiprocess(cfg: &BenchConfig) -> Result<BenchReport> {
    cfg.validate()?;
    if std::env::var_os(WORKER_ENV).is_some() {
        // A worker whose main did not call the hook would otherwise start workers of its
        // own, without end.
        return Err(Error::InvalidOptions(format!(
            "run_multiprocess called inside a benchmark worker: the binary's main must call \
             larder_bench::worker_main_if_requested() first ({WORKER_ENV} is set)"
        )));
    }
    if cfg.backend == LARDER && cfg.prefill {
        prepare_larder(cfg)?;
    }
    let exe = std::env::current_exe()?;
    let dir = TempDir::new_in(&std::env::temp_dir(), "run")?;
    let (tx, rx) = mpsc::channel::<(usize, Msg)>();
    let mut workers = Workers {
        children: Vec::with_capacity(cfg.processes),
        stdins: Vec::with_capacity(cfg.processes),
    };
    let mut results = Vec::with_capacity(cfg.processes);
    for id in 0..cfg.processes {
        let result = dir.path().join(format!("worker-{id}.result"));
        let spec = WorkerSpec {
            cfg: cfg.clone(),
            id,
            result: result.clone(),
        };
        results.push(result);
        let mut child = Command::new(&exe)
            .args(&cfg.worker_args)
            .env(WORKER_ENV, spec.encode())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take();
        workers.stdins.push(child.stdin.take());
        workers.children.push(Some(child));
        let stdout = stdout.ok_or_else(|| worker_error(id, "no stdout pipe"))?;
        let tx = tx.clone();
        std::thread::Builder::new()
            .name(format!("larder-bench-{id}"))
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    let msg = match line.trim() {
                        READY => Msg::Ready,
                        DONE => Msg::Done,
                        other => {
                            eprintln!("[worker {id}] {other}");
                            continue;
                        }
                    };
                    if tx.send((id, msg)).is_err() {
                        return;
                    }
                }
                let _ = tx.send((id, Msg::Eof));
            })?;
    }
    drop(tx);

    // Start barrier: every worker has its store open before any starts.
    let deadline = Instant::now() + cfg.start_timeout;
    let mut ready = vec![false; cfg.processes];
    let mut exited = vec![false; cfg.processes];
    let mut n_ready = 0;
    while n_ready < cfg.processes {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((i, Msg::Ready)) => {
                if let Some(r) = ready.get_mut(i) {
                    if !*r {
                        *r = true;
                        n_ready += 1;
                    }
                }
            }
            Ok((i, _)) => {
                let status = workers.reap(i, Instant::now() + FINISH_GRACE)?;
                return Err(worker_error(
                    i,
                    &format!("exited before it was ready ({status}); its stderr says why"),
                ));
            }
            Err(_) => {
                return Err(Error::Timeout {
                    what: "benchmark workers to open the store",
                    waited: cfg.start_timeout,
                })
            }
        }
    }
    for (i, stdin) in workers.stdins.iter_mut().enumerate() {
        let s = stdin
            .as_mut()
            .ok_or_else(|| worker_error(i, "no stdin pipe"))?;
        s.write_all(b"go\n")?;
        s.flush()?;
    }
    workers.stdins.clear();

    // Every worker closes its output when it exits.
    let deadline = Instant::now() + cfg.duration + FINISH_GRACE;
    let mut done = vec![false; cfg.processes];
    let mut open = cfg.processes;
    while open > 0 {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((i, Msg::Done)) => {
                if let Some(d) = done.get_mut(i) {
                    *d = true;
                }
            }
            Ok((i, Msg::Eof)) => {
                if let Some(e) = exited.get_mut(i) {
                    if !*e {
                        *e = true;
                        open -= 1;
                    }
                }
            }
            Ok((_, Msg::Ready)) => {}
            Err(_) => {
                return Err(Error::Timeout {
                    what: "benchmark workers to finish",
                    waited: cfg.duration + FINISH_GRACE,
                })
            }
        }
    }
    let reap_deadline = Instant::now() + FINISH_GRACE;
    let mut processes = Vec::with_capacity(cfg.processes);
    let mut latency = Histogram::new();
    for (i, path) in results.iter().enumerate() {
        let status = workers.reap(i, reap_deadline)?;
        if !status.success() || !done.get(i).copied().unwrap_or(false) {
            return Err(worker_error(
                i,
                &format!("failed ({status}); its stderr says why"),
            ));
        }
        let text = std::fs::read_to_string(path)?;
        let (report, hist) = parse_result(&text).ok_or_else(|| {
            worker_error(i, &format!("unreadable result file {}", path.display()))
        })?;
        latency.merge(&hist);
        processes.push(report);
    }
    Ok(BenchReport {
        config: cfg.clone(),
        processes,
        latency,
    })
}

fn format_result(r: &ProcessReport, h: &Histogram) -> String {
    format!(
        "ops {}\ngets {}\nsets {}\nhits {}\nmisses {}\nbad_values {}\nerrors {}\nelapsed_ns {}\ncpu_ns {}\nhist {}\n",
        r.ops,
        r.gets,
        r.sets,
        r.hits,
        r.misses,
        r.bad_values,
        r.errors,
        r.elapsed.as_nanos(),
        r.cpu.as_nanos(),
        h.encode()
    )
}

fn parse_result(text: &str) -> Option<(ProcessReport, Histogram)> {
    let mut r = ProcessReport::default();
    let mut hist = None;
    for line in text.lines() {
        let (k, v) = line.split_once(' ')?;
        if k == "hist" {
            hist = Some(Histogram::decode(v)?);
            continue;
        }
        let n: u64 = v.parse().ok()?;
        match k {
            "ops" => r.ops = n,
            "gets" => r.gets = n,
            "sets" => r.sets = n,
            "hits" => r.hits = n,
            "misses" => r.misses = n,
            "bad_values" => r.bad_values = n,
            "errors" => r.errors = n,
            "elapsed_ns" => r.elapsed = Duration::from_nanos(n),
            "cpu_ns" => r.cpu = Duration::from_nanos(n),
            _ => {}
        }
    }
    Some((r, hist?))
}

// ----- the multi-process runner: worker side -----------------------------------------

/// If this process is a benchmark worker ([`WORKER_ENV`] is set), runs the worker and
/// exits; otherwise returns at once. Call it first thing in `main` of any binary that
/// calls [`run_multiprocess`]. Only larder is known as a backend; a binary that
/// benchmarks peers uses [`worker_main_if_requested_with`].
pub fn worker_main_if_requested() {
    worker_main_if_requested_with(
        |cfg: &BenchConfig| -> std::result::Result<Box<dyn Store>, StoreError> {
            Err(format!(
                "backend {:?} is not known to this binary (only {LARDER:?} is built in)",
                cfg.backend
            )
            .into())
        },
    );
}

/// Like [`worker_main_if_requested`], with `open` opening stores of backends other than
/// larder (called in the worker with the run's configuration).
pub fn worker_main_if_requested_with<F>(open: F)
where
    F: FnOnce(&BenchConfig) -> std::result::Result<Box<dyn Store>, StoreError>,
{
    let Some(raw) = std::env::var_os(WORKER_ENV) else {
        return;
    };
    let code = match run_worker(&raw, open) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("larder benchmark worker: {e}");
            1
        }
    };
    std::process::exit(code);
}

fn run_worker<F>(raw: &std::ffi::OsStr, open: F) -> std::result::Result<(), StoreError>
where
    F: FnOnce(&BenchConfig) -> std::result::Result<Box<dyn Store>, StoreError>,
{
    let raw = raw
        .to_str()
        .ok_or_else(|| format!("{WORKER_ENV} is not UTF-8"))?;
    let spec = WorkerSpec::decode(raw)?;
    let cfg = &spec.cfg;
    let mut store: Box<dyn Store> = if cfg.backend == LARDER {
        Box::new(Options::new().attach(&cfg.target)?)
    } else {
        open(cfg)?
    };
    let sampler = KeySampler::new(cfg.distribution, cfg.keys)?;
    let mut rng = Rng::new(cfg.seed ^ (spec.id as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));

    // Start barrier: say ready, then wait for "go" (or give up at the deadline, or when
    // the parent is gone and our input closes).
    let (tx, rx) = mpsc::channel::<bool>();
    std::thread::Builder::new()
        .name("larder-bench-start".into())
        .spawn(move || {
            let mut line = String::new();
            let go = std::io::stdin().read_line(&mut line).is_ok() && line.trim() == "go";
            let _ = tx.send(go);
        })?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{READY}")?;
        out.flush()?;
    }
    match rx.recv_timeout(cfg.start_timeout) {
        Ok(true) => {}
        Ok(false) => return Err("the parent closed the start pipe without starting".into()),
        Err(_) => return Err("no start signal before the deadline".into()),
    }

    let (report, hist) = worker_loop(store.as_mut(), cfg, spec.id, &sampler, &mut rng)?;

    let tmp = spec.result.with_extension("tmp");
    std::fs::write(&tmp, format_result(&report, &hist))?;
    std::fs::rename(&tmp, &spec.result)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{DONE}")?;
    out.flush()?;
    Ok(())
}

/// Operations between two reads of the clock for the end of the run.
const CLOCK_EVERY: u32 = 64;

fn worker_loop(
    store: &mut dyn Store,
    cfg: &BenchConfig,
    id: usize,
    sampler: &KeySampler,
    rng: &mut Rng,
) -> std::result::Result<(ProcessReport, Histogram), StoreError> {
    let mut r = ProcessReport::default();
    let mut hist = Histogram::new();
    let mut key = [0u8; KEY_LEN];
    let mut value = vec![0u8; cfg.value_len];
    let mut buf = Vec::with_capacity(cfg.value_len);
    // Versions unique to this writer: its id in the top bits.
    let mut version = (id as u64 + 1) << 40;
    let get_percent = cfg.mix.get_percent as u64;
    let mut until_sample = cfg.sample_every;
    let mut until_check = cfg.check_every;
    let cpu_start = thread_cpu();
    let start = Instant::now();
    let end = start + cfg.duration;
    let mut now = start;
    while now < end {
        for _ in 0..CLOCK_EVERY {
            let is_get = rng.below(100) < get_percent;
            let idx = sampler.sample(rng);
            key_into(idx, &mut key);
            if !is_get {
                version += 1;
                write_value(idx, version, &mut value)?;
            }
            until_sample -= 1;
            let timed = until_sample == 0;
            let t0 = if timed {
                until_sample = cfg.sample_every;
                Some(Instant::now())
            } else {
                None
            };
            let outcome = if is_get {
                store.get_into(&key, &mut buf)
            } else {
                store.set(&key, &value, cfg.ttl).map(|()| false)
            };
            if let Some(t0) = t0 {
                hist.record_duration(t0.elapsed());
            }
            r.ops += 1;
            if is_get {
                r.gets += 1;
            } else {
                r.sets += 1;
            }
            match outcome {
                Ok(true) => {
                    r.hits += 1;
                    until_check -= 1;
                    if until_check == 0 {
                        until_check = cfg.check_every;
                        if check_value(idx, &buf).is_err() {
                            r.bad_values += 1;
                        }
                    }
                }
                Ok(false) if is_get => r.misses += 1,
                Ok(false) => {}
                Err(_) => r.errors += 1,
            }
        }
        now = Instant::now();
    }
    r.elapsed = now.duration_since(start);
    r.cpu = thread_cpu().saturating_sub(cpu_start);
    Ok((r, hist))
}

/// An exact LRU over dense key indices, the hit-ratio benchmarks' reference: a doubly
/// linked list in arrays, newest at the head; O(1) per request.
pub struct ExactLru {
    cap: usize,
    /// Node of each key index, or LRU_NONE.
    node_of: Vec<u32>,
    key: Vec<u32>,
    prev: Vec<u32>,
    next: Vec<u32>,
    head: u32,
    tail: u32,
}

const LRU_NONE: u32 = u32::MAX;

impl ExactLru {
    /// An LRU of `cap` entries over the key indices `0..keys`.
    pub fn new(cap: usize, keys: usize) -> ExactLru {
        ExactLru {
            cap: cap.max(1),
            node_of: vec![LRU_NONE; keys],
            key: Vec::with_capacity(cap),
            prev: Vec::with_capacity(cap),
            next: Vec::with_capacity(cap),
            head: LRU_NONE,
            tail: LRU_NONE,
        }
    }

    fn unlink(&mut self, n: u32) {
        let (p, x) = (self.prev[n as usize], self.next[n as usize]);
        if p != LRU_NONE {
            self.next[p as usize] = x;
        } else {
            self.head = x;
        }
        if x != LRU_NONE {
            self.prev[x as usize] = p;
        } else {
            self.tail = p;
        }
    }

    fn push_front(&mut self, n: u32) {
        self.prev[n as usize] = LRU_NONE;
        self.next[n as usize] = self.head;
        if self.head != LRU_NONE {
            self.prev[self.head as usize] = n;
        }
        self.head = n;
        if self.tail == LRU_NONE {
            self.tail = n;
        }
    }

    /// One request: true on a hit; on a miss the key is inserted, evicting the least
    /// recently used one if full.
    pub fn access(&mut self, k: u32) -> bool {
        let n = self.node_of[k as usize];
        if n != LRU_NONE {
            self.unlink(n);
            self.push_front(n);
            return true;
        }
        let n = if self.key.len() < self.cap {
            self.key.push(k);
            self.prev.push(LRU_NONE);
            self.next.push(LRU_NONE);
            (self.key.len() - 1) as u32
        } else {
            let victim = self.tail;
            self.unlink(victim);
            self.node_of[self.key[victim as usize] as usize] = LRU_NONE;
            self.key[victim as usize] = k;
            victim
        };
        self.node_of[k as usize] = n;
        self.push_front(n);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic_and_below_stays_in_range() {
        let mut a = Rng::new(1);
        let mut b = Rng::new(1);
        for _ in 0..1000 {
            assert_eq!(a.next_u64(), b.next_u64());
            assert!(a.below(10) < 10);
            b.below(10);
        }
        assert_eq!(Rng::new(0).below(0), 0);
    }

    #[test]
    fn zipf_is_skewed_and_in_range() {
        let n = 10_000;
        let s = KeySampler::new(Distribution::zipf(), n).unwrap();
        let z = Zipf::new(n, ZIPF_THETA).unwrap();
        let mut rng = Rng::new(7);
        let mut rank0 = 0;
        for _ in 0..100_000 {
            assert!(s.sample(&mut rng) < n);
            if z.sample(&mut rng) == 0 {
                rank0 += 1;
            }
        }
        // P(rank 0) = 1/zeta(10000, 0.99), about 0.1.
        assert!((8_000..12_000).contains(&rank0), "{rank0}");
        assert!(Zipf::new(0, 0.5).is_err());
        assert!(Zipf::new(10, 1.0).is_err());
        assert!(Zipf::new(10, f64::NAN).is_err());
        let one = KeySampler::new(Distribution::zipf(), 1).unwrap();
        assert_eq!(one.sample(&mut rng), 0);
        let two = KeySampler::new(Distribution::zipf(), 2).unwrap();
        assert!(two.sample(&mut rng) < 2);
    }

    #[test]
    fn keys_round_trip() {
        let k = key(0xdead_beef);
        assert_eq!(&k, b"larder-bench-key00000000deadbeef");
        assert_eq!(key_index(&k), Some(0xdead_beef));
        assert_eq!(key_index(b"other"), None);
    }

    #[test]
    fn values_detect_torn_and_wrong_key() {
        for len in [MIN_VALUE_LEN, 100, VALUE_LEN, LARGE_VALUE_LEN] {
            let mut a = value(5, 1, len).unwrap();
            let b = value(5, 2, len).unwrap();
            assert_eq!(check_value(5, &a), Ok(1));
            assert_eq!(
                check_value(6, &a),
                Err(ValueError::WrongKey {
                    expected: 6,
                    found: 5
                })
            );
            // Half of one write, half of another.
            let half = len / 2;
            a[half..].copy_from_slice(&b[half..]);
            assert_eq!(check_value(5, &a), Err(ValueError::Checksum));
        }
        assert!(value(1, 1, 10).is_err());
        assert!(check_value(1, &[0; 3]).is_err());
    }

    #[test]
    fn mixes_parse() {
        assert_eq!(Mix::parse("95/5").unwrap(), Mix::YCSB_B);
        assert_eq!(Mix::parse("100").unwrap(), Mix::READ_ONLY);
        assert!(Mix::parse("95/6").is_err());
        assert!(Mix::parse("101").is_err());
        assert_eq!(Mix::READ_WRITE.to_string(), "90/10");
        assert_eq!(
            Distribution::parse("zipf:0.5").unwrap(),
            Distribution::Zipf(0.5)
        );
        assert!(Distribution::parse("pareto").is_err());
    }

    #[test]
    fn histogram_quantiles_are_within_a_bucket() {
        let mut h = Histogram::new();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        for (q, want) in [(0.5, 50_000f64), (0.99, 99_000.0), (0.999, 99_900.0)] {
            let got = h.quantile(q) as f64;
            assert!((got - want).abs() / want < 0.01, "q{q}: {got} vs {want}");
        }
        assert_eq!(h.quantile(1.0), 100_000);
        let d = Histogram::decode(&h.encode()).unwrap();
        assert_eq!(d, h);
        for idx in 0..BUCKETS {
            assert_eq!(Histogram::index(Histogram::highest(idx)), idx);
        }
        assert_eq!(Histogram::index(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn worker_spec_round_trips() {
        let mut cfg = BenchConfig::larder("/tmp/a b;c=d%");
        cfg.processes = 3;
        cfg.distribution = Distribution::Zipf(0.8);
        cfg.mix = Mix::READ_WRITE;
        let spec = WorkerSpec {
            cfg: cfg.clone(),
            id: 2,
            result: PathBuf::from("/tmp/r;e=s%ult"),
        };
        let back = WorkerSpec::decode(&spec.encode()).unwrap();
        cfg.prefill = false;
        assert_eq!(back.cfg, cfg);
        assert_eq!(back.id, 2);
        assert_eq!(back.result, spec.result);
        assert!(WorkerSpec::decode("v=2").is_err());
        assert!(WorkerSpec::decode("garbage").is_err());
    }

    #[test]
    fn result_files_round_trip() {
        let r = ProcessReport {
            ops: 10,
            gets: 9,
            sets: 1,
            hits: 8,
            misses: 1,
            bad_values: 0,
            errors: 0,
            elapsed: Duration::from_millis(5),
            cpu: Duration::from_millis(4),
        };
        let mut h = Histogram::new();
        h.record(120);
        let (r2, h2) = parse_result(&format_result(&r, &h)).unwrap();
        assert_eq!(r, r2);
        assert_eq!(h, h2);
    }
}
