//! larder as each host's near cache in front of Redis or Valkey.
//!
//! Worker processes read through a [`NearCache`]: a hit comes from the host's larder
//! file at in-process speed; a miss reads Redis and fills larder. Writes and deletes go
//! to Redis and drop the key locally. One [`Listener`] per host (`larder listen`, a
//! sidecar: no thread in the workers) holds the file's near-cache lease and keeps the
//! near cache current through Redis client-side caching in broadcast mode
//! (`CLIENT TRACKING on BCAST PREFIX …`) on a connection of its own, so no worker's
//! connection matters to invalidation.
//!
//! # The guarantee
//!
//! A near-cache hit at time `t` reflects every change Redis made to a key under a
//! tracked prefix that completed before `t - H` (the readers'
//! [`bound`](Config::bound), 1 s by default), through listener death, listener stop,
//! connection loss, Redis restarts, flushes, and the server-side changes that
//! client-side caching does not report, without any clock shared between hosts (only
//! the host's monotonic clock). In practice a change stops being served about one ping
//! interval `P` (100 ms by default) and a round trip after it completed.
//!
//! ## What it covers
//!
//! Reported by tracking (a push on the listener's connection, checked on
//! redis-server 7.0.15: `tests/protocol.rs` and `NOTES-protocol.md`):
//! - every write to a tracked key by any client: alone, in `MULTI`/`EXEC`, in a script
//!   or function, `MOVE`, `COPY … DB`, `RENAME`, `RESTORE`, expiry and eviction, and
//!   on a replica every write it applies from its primary. Tracking goes by key name,
//!   whatever the database: a write to `p:x` in db 1 invalidates `p:x` for a listener
//!   on db 0 (harmless: the next read fills again);
//! - flushes, as a null invalidation: `FLUSHALL`, `FLUSHDB` (of any db), `DEBUG
//!   RELOAD`, and a replica's full resynchronisation (whatever its
//!   `repl-diskless-load`). The listener flushes the near cache
//!   ([`Event::ServerFlush`]).
//!
//! Not reported by tracking, detected by the listener (it flushes,
//! [`Event::UnreportedChange`], counted as a server flush):
//! - `SWAPDB` (a dataset reload: build the data in db 1, swap), alone, in a
//!   transaction, in a script, or replicated to the replica the listener is on, and
//!   `DEBUG RELOAD NOFLUSH MERGE`: Redis counts every command it runs in `INFO
//!   commandstats`, and the listener flushes when the calls of `swapdb`, `debug`,
//!   `flushall`, `flushdb` or `config|resetstat` moved since its last reading;
//! - a reset of those counters (`CONFIG RESETSTAT`, which could hide a `SWAPDB` run
//!   after it): the sum of every command's calls must have grown since the last
//!   reading (the listener's own commands count in it);
//! - another server process answering on the same connection (its `run_id` changed):
//!   the listener reconnects, which flushes. (A restart closes the connection, which
//!   does the same.)
//!
//! Refused: a server in cluster mode (`cluster_enabled:1`), where tracking reports the
//! writes of one node only, and a server that does not let the listener run `INFO`
//! or whose `INFO` lacks what it reads: [`Listener::run`] returns
//! [`Error::Unsupported`] and lets the lease go, and readers go to Redis.
//!
//! Not covered:
//! - readers and the listener on different servers (the readers on the primary and
//!   the listener on a replica, say): a heartbeat vouches for what the listener's
//!   server has applied. Point both at the same server;
//! - a module that changes keys without signalling them, and on server versions other
//!   than the one checked, any command that changes keys without an invalidation and
//!   is not among those watched;
//! - a `CONFIG RESETSTAT` followed, within one ping interval, by as many `SWAPDB`s as
//!   were counted before it and by more commands than the server had counted since its
//!   previous reset.
//!
//! ## Why it holds
//!
//! - Every `P` the listener takes the instant `s` and writes `PING`, `INFO server`
//!   and `INFO commandstats` in one go. Redis runs them after every command that
//!   completed before `s` (its client had the reply before the listener wrote), and
//!   queues a write's invalidation on the listener's connection before the write's
//!   own reply goes out. So once the three replies are read, the pushes before them
//!   hold the invalidation of every write that completed before `s`, and the `INFO`s
//!   count every command that completed before `s`.
//! - The listener applies those invalidations, compares the server's reading with the
//!   one before it and flushes if it moved, and only then publishes `s` as the
//!   heartbeat (`larder::near`). So no heartbeat vouches for a window in which an
//!   unreported change happened: for a change completed at `x`, the first reading
//!   that counts it is compared with one that does not, and flushes before its
//!   heartbeat is published; every heartbeat later than `x` comes from that round or
//!   a later one, so it is published after that flush. The first reading on a
//!   connection is taken once tracking is on and before the reconnect flush (or, on
//!   the lease's first connection, after the lease's flush, when no reader fills:
//!   fills need a heartbeat), so changes before it are flushed too.
//! - A reader serves or fills from larder only while the heartbeat is at most `H`
//!   old, reading it before the entry and checking its age after: a hit at `t` read a
//!   heartbeat later than `t - H`, so every change completed before `t - H` was
//!   applied or flushed before that heartbeat was published.
//! - A fill takes a ticket before it reads Redis and stores only if no invalidation of
//!   the key and no flush came since (checked under the shard lock), so a fill that
//!   raced an invalidation or a flush never leaves the old value behind.
//! - Whoever takes the lease flushes first (its predecessor may have missed
//!   invalidations), and so does every reconnect. Losing the connection, a round
//!   without its replies within the reply timeout, and stopping clear the heartbeat at
//!   once.
//! - Near-cache TTLs never exceed what Redis has left on the key (read with the value)
//!   nor the configured cap.
//!
//! The checks cost the listener's round two `INFO` replies (about 3 KB with 30 kinds
//! of command in `INFO commandstats`) and about 14 µs of the server's time (20 µs
//! more of the round trip over a unix socket), once per `P`, per host: see
//! `l_the_listeners_round_trip_with_the_info_checks` in `tests/protocol.rs`.
//!
//! ```no_run
//! # fn main() -> Result<(), larder_redis::Error> {
//! use std::time::Duration;
//! // On each host, once: `larder listen sessions --redis redis://10.0.0.5/ --prefix session:`
//! // In every worker:
//! let cache = larder::Options::new().capacity(64 << 20).open("sessions")?;
//! let mut near = larder_redis::NearCache::new(
//!     cache,
//!     "redis://10.0.0.5/",
//!     larder_redis::Config::new(["session:"]),
//! )?;
//! near.set(b"session:1", b"alice", Some(Duration::from_secs(300)))?;
//! assert_eq!(near.get(b"session:1")?.as_deref(), Some(&b"alice"[..]));
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use larder::near::{FlushReason, Guarded, Lease, Moment};
use larder::Cache;
use redis::{ConnectionLike, PushInfo, PushKind, Value};
use unreported::{Reading, Since};

#[doc(hidden)]
pub mod testing;
mod unreported;

/// The default bound `H` on a hit's staleness.
pub const DEFAULT_BOUND: Duration = Duration::from_secs(1);
/// The longest duration a [`Config`] setting accepts (a day).
pub const MAX_SETTING: Duration = Duration::from_secs(24 * 3600);

/// The default interval `P` between the listener's pings.
pub const DEFAULT_PING_EVERY: Duration = Duration::from_millis(100);
/// The resolution of larder's clock for TTLs (`CLOCK_MONOTONIC_COARSE`: a few ms).
const COARSE_CLOCK: Duration = Duration::from_millis(5);
/// The default cap on a near-cache entry's TTL.
pub const DEFAULT_TTL_CAP: Duration = Duration::from_secs(300);

/// Errors of the near cache: larder's or Redis's.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The larder file.
    Larder(larder::Error),
    /// Redis (connection, protocol or command).
    Redis(redis::RedisError),
    /// A configuration that cannot work (say which in the text).
    Config(String),
    /// A server the listener cannot keep the near cache current with: one in cluster
    /// mode, or one that does not let it read what it checks (say which in the text,
    /// and what to do). The listener stops, leaving the near cache unguarded (readers
    /// go to Redis).
    Unsupported(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Larder(e) => write!(f, "near cache: {e}"),
            Error::Redis(e) => write!(f, "redis: {e}"),
            Error::Config(e) => write!(f, "configuration: {e}"),
            Error::Unsupported(e) => write!(f, "unsupported server: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Larder(e) => Some(e),
            Error::Redis(e) => Some(e),
            Error::Config(_) | Error::Unsupported(_) => None,
        }
    }
}

impl From<larder::Error> for Error {
    fn from(e: larder::Error) -> Error {
        Error::Larder(e)
    }
}

impl From<redis::RedisError> for Error {
    fn from(e: redis::RedisError) -> Error {
        Error::Redis(e)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::Larder(larder::Error::Io(e))
    }
}

/// The results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What the listener and the readers of one host agree on.
#[derive(Debug, Clone)]
pub struct Config {
    prefixes: Vec<Vec<u8>>,
    bound: Duration,
    ping_every: Duration,
    reply_timeout: Duration,
    ttl_cap: Duration,
    io_timeout: Duration,
}

impl Config {
    /// The key prefixes kept in the near cache (others always go to Redis); an empty
    /// prefix tracks every key.
    pub fn new<P: AsRef<[u8]>>(prefixes: impl IntoIterator<Item = P>) -> Config {
        Config {
            prefixes: prefixes.into_iter().map(|p| p.as_ref().to_vec()).collect(),
            bound: DEFAULT_BOUND,
            ping_every: DEFAULT_PING_EVERY,
            reply_timeout: DEFAULT_BOUND / 2,
            ttl_cap: DEFAULT_TTL_CAP,
            io_timeout: Duration::from_secs(5),
        }
    }

    /// `H`: the most a hit may lag Redis (default 1 s). Readers bypass the near cache
    /// while the listener's heartbeat is older.
    pub fn bound(mut self, h: Duration) -> Config {
        self.bound = h;
        self
    }

    /// `P`: how often the listener proves it is current (default 100 ms). Must be well
    /// under the bound.
    pub fn ping_every(mut self, p: Duration) -> Config {
        self.ping_every = p;
        self
    }

    /// How long the listener waits for a `PING`'s reply before it treats the
    /// connection as lost (default half the bound).
    pub fn reply_timeout(mut self, t: Duration) -> Config {
        self.reply_timeout = t;
        self
    }

    /// The longest TTL a near-cache entry gets (default 5 minutes), whatever Redis
    /// has left on the key.
    pub fn ttl_cap(mut self, cap: Duration) -> Config {
        self.ttl_cap = cap;
        self
    }

    /// Read and write timeout of the readers' Redis connection (default 5 s).
    pub fn io_timeout(mut self, t: Duration) -> Config {
        self.io_timeout = t;
        self
    }

    fn check(&self) -> Result<()> {
        if self.prefixes.is_empty() {
            return Err(Error::Config(
                "no prefix: name at least one (an empty prefix tracks every key)".into(),
            ));
        }
        // Every duration here ends up added to an Instant or handed to a socket: one
        // past a day is a mistake, refused rather than overflowing.
        let longest = [
            ("the bound", self.bound),
            ("the ping interval", self.ping_every),
            ("the reply timeout", self.reply_timeout),
            ("the TTL cap", self.ttl_cap),
            ("the I/O timeout", self.io_timeout),
        ];
        for (what, d) in longest {
            if d > MAX_SETTING {
                return Err(Error::Config(format!(
                    "{what} {d:?} is over the longest accepted, {MAX_SETTING:?}"
                )));
            }
        }
        if self.ping_every.is_zero() || self.ping_every * 2 > self.bound {
            return Err(Error::Config(format!(
                "the ping interval {:?} must be above zero and at most half the bound {:?}",
                self.ping_every, self.bound
            )));
        }
        if self.reply_timeout.is_zero() || self.ttl_cap.is_zero() || self.io_timeout.is_zero() {
            return Err(Error::Config(
                "timeouts and the TTL cap must be above zero".into(),
            ));
        }
        // Redis refuses overlapping prefixes in one CLIENT TRACKING (and "" overlaps
        // every other one).
        for (i, a) in self.prefixes.iter().enumerate() {
            for (j, b) in self.prefixes.iter().enumerate() {
                if i != j && b.starts_with(a) {
                    return Err(Error::Config(format!(
                        "the prefix {:?} overlaps {:?}: name each key space once",
                        String::from_utf8_lossy(a),
                        String::from_utf8_lossy(b)
                    )));
                }
            }
        }
        Ok(())
    }

    /// What the listener publishes and readers compare: a hash of the prefixes.
    fn scope(&self) -> u64 {
        larder::near::scope_of(&self.prefixes)
    }

    fn tracked(&self, key: &[u8]) -> bool {
        self.prefixes.iter().any(|p| key.starts_with(p))
    }
}

/// The URL with RESP3 selected (invalidation pushes need it); a URL that asks for
/// another protocol is refused.
fn resp3(url: &str) -> Result<String> {
    match url.split_once("protocol=") {
        Some((_, rest)) => {
            let asked = rest.split('&').next().unwrap_or_default();
            if asked.eq_ignore_ascii_case("resp3") || asked == "3" {
                Ok(url.to_string())
            } else {
                Err(Error::Config(format!(
                    "the listener needs RESP3 (invalidations are pushes): remove \
                     protocol={asked} from the URL"
                )))
            }
        }
        None if url.contains('?') => Ok(format!("{url}&protocol=resp3")),
        None => Ok(format!("{url}?protocol=resp3")),
    }
}

fn connect(url: &str, timeout: Duration) -> Result<redis::Connection> {
    let client = redis::Client::open(url)?;
    let con = client.get_connection_with_timeout(timeout)?;
    con.set_read_timeout(Some(timeout))?;
    con.set_write_timeout(Some(timeout))?;
    Ok(con)
}

/// A worker's read-through client: larder in front of Redis.
///
/// Not shared between threads (it owns one Redis connection); open one per worker
/// thread, all on the same larder file.
pub struct NearCache {
    cache: Cache,
    url: String,
    con: Option<redis::Connection>,
    config: Config,
    limits: larder::Limits,
    scope: u64,
    stats: ReaderStats,
}

/// What one [`NearCache`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReaderStats {
    /// Gets answered from the near cache.
    pub hits: u64,
    /// Gets that read Redis (misses, untracked keys, and bypasses).
    pub redis_reads: u64,
    /// Of those, reads while the near cache was unguarded (no recent heartbeat).
    pub bypasses: u64,
    /// Values stored in the near cache after a read.
    pub fills: u64,
    /// Fills refused because an invalidation or a flush came first.
    pub fills_refused: u64,
    /// Errors of the cache file met on the way (each sent the read to Redis instead).
    pub cache_errors: u64,
}

impl NearCache {
    /// A client of the near cache `cache` in front of the Redis at `url`.
    pub fn new(cache: Cache, url: &str, config: Config) -> Result<NearCache> {
        config.check()?;
        let con = connect(url, config.io_timeout)?;
        Ok(NearCache {
            limits: cache.limits(),
            scope: config.scope(),
            cache,
            url: url.to_string(),
            con: Some(con),
            config,
            stats: ReaderStats::default(),
        })
    }

    /// The larder cache under this client.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// What this client did so far.
    pub fn stats(&self) -> ReaderStats {
        self.stats
    }

    /// The value of `key`: from the near cache if it holds it and is guarded, else
    /// from Redis (then kept in the near cache, with at most the TTL Redis has left).
    pub fn get(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut out = Vec::new();
        Ok(self.get_into(key, &mut out)?.then_some(out))
    }

    /// As [`NearCache::get`], into `buf` (replacing its contents; no allocation on a
    /// near-cache hit when `buf` is large enough); false if Redis has no value.
    pub fn get_into(&mut self, key: &[u8], buf: &mut Vec<u8>) -> Result<bool> {
        if !self.config.tracked(key) || key.len() > self.limits.max_key_len {
            self.stats.redis_reads += 1;
            let v: Option<Vec<u8>> =
                with_redis(&mut self.con, &self.url, self.config.io_timeout, |con| {
                    redis::cmd("GET").arg(key).query(con)
                })?;
            return Ok(put(buf, v));
        }
        let near = self.cache.near();
        let bound = self.config.bound;
        // The heartbeat before the entry (every invalidation up to it was applied), and
        // its age after (a get that took long, a lock wait or a preemption, must not
        // stretch the bound), all in one file. A listener tracking other prefixes does
        // not guard these keys. An error of the cache file (a lock timeout behind a
        // stopped process, a file replaced by one with smaller limits) costs the near
        // copy, never the read.
        let guarded = match near.get_into(key, self.scope, bound, buf) {
            Ok(Guarded::Hit) => {
                self.stats.hits += 1;
                return Ok(true);
            }
            Ok(Guarded::Miss) => true,
            Ok(_) => false,
            Err(_) => {
                self.stats.cache_errors += 1;
                false
            }
        };
        // A ticket only where the near cache is guarded for these keys; a cache error
        // costs the fill, never the read.
        let ticket = if guarded {
            near.ticket(key, bound).ok().flatten()
        } else {
            None
        };
        self.stats.redis_reads += 1;
        let sent = Instant::now();
        let (value, pttl): (Option<Vec<u8>>, i64) =
            with_redis(&mut self.con, &self.url, self.config.io_timeout, |con| {
                redis::pipe()
                    .cmd("GET")
                    .arg(key)
                    .cmd("PTTL")
                    .arg(key)
                    .query(con)
            })?;
        // What Redis had left when it answered, less the whole round trip (the TTL
        // counts from the fill, later) and the granularity of larder's coarse clock.
        let taken = sent.elapsed() + COARSE_CLOCK;
        let (Some(ticket), Some(v)) = (ticket, value.as_ref()) else {
            if ticket.is_none() {
                self.stats.bypasses += 1;
            }
            return Ok(put(buf, value));
        };
        // -1: no expiry (the cap applies); -2: gone since the GET; 0: about to expire.
        let ttl = match pttl {
            -1 => Some(self.config.ttl_cap),
            ms if ms > 0 => Duration::from_millis(ms as u64)
                .checked_sub(taken)
                .filter(|t| !t.is_zero())
                .map(|t| t.min(self.config.ttl_cap)),
            _ => None,
        };
        if let Some(ttl) = ttl {
            self.limits = self.cache.limits();
            if key.len() <= self.limits.max_key_len && v.len() <= self.limits.max_value_len {
                match near.fill(key, v, Some(ttl), ticket) {
                    Ok(true) => self.stats.fills += 1,
                    Ok(false) | Err(_) => self.stats.fills_refused += 1,
                }
            }
        }
        Ok(put(buf, value))
    }

    /// Writes `key` to Redis (with `ttl`, if any), then drops it from the near cache
    /// (the listener drops it on every other host, and here too).
    pub fn set(&mut self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<()> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(value);
        if let Some(ttl) = ttl {
            cmd.arg("PX").arg(ttl.as_millis().max(1) as u64);
        }
        with_redis(&mut self.con, &self.url, self.config.io_timeout, |con| {
            cmd.exec(con)
        })?;
        self.cache.near().invalidate(key)?;
        Ok(())
    }

    /// Deletes `key` in Redis, then drops it from the near cache; true if Redis had it.
    pub fn delete(&mut self, key: &[u8]) -> Result<bool> {
        let n: i64 = with_redis(&mut self.con, &self.url, self.config.io_timeout, |con| {
            redis::cmd("DEL").arg(key).query(con)
        })?;
        self.cache.near().invalidate(key)?;
        Ok(n > 0)
    }
}

/// Runs `f` on the Redis connection `con` (of `url`), opening a new one if the last was
/// lost; a command that fails because the connection dropped (a Redis restart, a killed
/// client) is sent once more on a new connection. Every command a [`NearCache`] sends
/// can be sent twice (`GET`, `PTTL`, `SET`, `DEL`).
fn with_redis<T>(
    con: &mut Option<redis::Connection>,
    url: &str,
    timeout: Duration,
    mut f: impl FnMut(&mut redis::Connection) -> redis::RedisResult<T>,
) -> Result<T> {
    for attempt in 0..2 {
        let c = match con {
            Some(c) if c.is_open() => c,
            _ => con.insert(connect(url, timeout)?),
        };
        match f(c) {
            Err(e) if attempt == 0 && (e.is_connection_dropped() || e.is_io_error()) => {
                *con = None;
            }
            other => return Ok(other?),
        }
    }
    unreachable!("the second attempt returns")
}

/// Moves a value read from Redis into the caller's buffer.
fn put(buf: &mut Vec<u8>, value: Option<Vec<u8>>) -> bool {
    match value {
        Some(v) => {
            *buf = v;
            true
        }
        None => false,
    }
}

impl fmt::Debug for NearCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NearCache")
            .field("cache", &self.cache.path())
            .field("stats", &self.stats)
            .finish()
    }
}

/// What the listener reports as it goes (for logs), with when.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Another listener holds the lease: this one stands by, trying again every ping
    /// interval. Reported when standing by starts, not at every try.
    Standby {
        /// The holder's pid as it recorded itself, if it did.
        holder: Option<u32>,
    },
    /// This listener took the lease (and flushed); `takeover` if its holder had died.
    Leased {
        /// Whether the previous holder died holding it.
        takeover: bool,
    },
    /// This listener let the lease go (its heartbeat is clear: readers go to the
    /// store): after an error of the cache file ([`Event::CacheError`]), once the file
    /// was replaced ([`Event::FileReplaced`]), when stopped, or before
    /// [`Listener::run`] returns [`Error::Unsupported`].
    Released,
    /// Connected and tracking.
    Connected,
    /// The connection could not be made, was lost or stopped answering.
    Lost(String),
    /// An operation on the cache file failed (a shard lock held past its timeout by a
    /// stopped process, say): the listener lets the lease go and tries again after a
    /// ping interval.
    CacheError(String),
    /// The store was emptied: the near cache was flushed.
    ServerFlush,
    /// The server's counters showed a change that client-side caching does not
    /// report (a `SWAPDB`, a `DEBUG RELOAD … MERGE`, a reset of the counters
    /// themselves; the text says which): the near cache was flushed.
    UnreportedChange(String),
    /// The listener's own heartbeat went older than the bound (it was stopped or
    /// starved): it flushed before going on.
    Stale,
    /// The cache file was replaced: the listener lets its lease go and takes the new
    /// file's.
    FileReplaced,
}

/// The one listener of a host (see the crate docs); [`Listener::run`] runs it.
pub struct Listener {
    cache: Cache,
    url: String,
    config: Config,
    name: String,
}

impl Listener {
    /// A listener for `cache`, tracking `config`'s prefixes on the Redis at `url`.
    pub fn new(cache: Cache, url: &str, config: Config) -> Result<Listener> {
        config.check()?;
        redis::Client::open(url)?;
        Ok(Listener {
            cache,
            url: resp3(url)?,
            config,
            name: format!("larder-listener-{}", std::process::id()),
        })
    }

    /// The connection name the listener gives itself (`CLIENT SETNAME`).
    pub fn client_name(&self) -> &str {
        &self.name
    }

    /// Runs until `stop` is set: waits for the lease (another listener may hold it:
    /// this one stands by, trying every ping interval), then keeps the near cache
    /// current, reconnecting as needed. `events` hears what happens. An error of the
    /// cache file (a shard lock held past its timeout by a stopped process, say) lets
    /// the lease go, which clears the heartbeat, and the listener tries again after a
    /// ping interval.
    ///
    /// Returns `Ok` once stopped, or [`Error::Unsupported`] as soon as it connects to
    /// a server it cannot keep the near cache current with (cluster mode, or no
    /// permission to run `INFO`): it then lets the lease go, and readers go to Redis.
    pub fn run(&self, stop: &AtomicBool, mut events: impl FnMut(Event)) -> Result<()> {
        // Whether the last try found the lease held: standing by is reported once.
        let mut standing_by = false;
        while !stop.load(Ordering::Relaxed) {
            let near = self.cache.near();
            let before = near.stats().takeovers;
            match near.try_lease(&self.config.prefixes) {
                Ok(Some(lease)) => {
                    standing_by = false;
                    let takeover = near.stats().takeovers > before;
                    events(Event::Leased { takeover });
                    let held = self.hold(&lease, stop, &mut events);
                    match &held {
                        Err(Error::Unsupported(_)) | Ok(()) => {}
                        Err(e) => events(Event::CacheError(e.to_string())),
                    }
                    // Dropping the lease clears the heartbeat.
                    drop(lease);
                    events(Event::Released);
                    if let Err(e @ Error::Unsupported(_)) = held {
                        return Err(e);
                    }
                }
                Ok(None) if !standing_by => {
                    standing_by = true;
                    events(Event::Standby {
                        holder: near.stats().holder,
                    });
                }
                Ok(None) => {}
                Err(e) => events(Event::CacheError(e.to_string())),
            }
            if !stop.load(Ordering::Relaxed) {
                std::thread::sleep(self.config.ping_every); // standby or retry: each ping interval
            }
        }
        Ok(())
    }

    /// Keeps the near cache current while holding `lease`; returns when stopped or when
    /// the file was replaced, or with [`Error::Unsupported`] for a server it cannot
    /// guard.
    fn hold(
        &self,
        lease: &Lease<'_>,
        stop: &AtomicBool,
        events: &mut impl FnMut(Event),
    ) -> Result<()> {
        // The lease flushed already: the first connection needs no flush of its own.
        // (From the lease's flush to the first heartbeat no reader fills: tickets
        // need a heartbeat. So the near cache holds nothing a change before the first
        // reading could have made stale.)
        let mut first = true;
        while !stop.load(Ordering::Relaxed) {
            lease.suspend();
            let (mut con, rx, reading) = match self.connect() {
                Ok(c) => c,
                Err(e @ Error::Unsupported(_)) => return Err(e),
                Err(e) => {
                    events(Event::Lost(e.to_string()));
                    std::thread::sleep(self.config.ping_every); // reconnect backoff, then retry
                    continue;
                }
            };
            // After the first reading: whatever changed before it, unreported or
            // not, is flushed here.
            if !first {
                lease.flush(FlushReason::Reconnect)?;
            }
            first = false;
            events(Event::Connected);
            match self.track(lease, &mut con, &rx, reading, stop, events)? {
                Ended::Stopped => return Ok(()),
                Ended::Replaced => {
                    events(Event::FileReplaced);
                    return Ok(());
                }
                Ended::Lost(why) => {
                    lease.suspend();
                    events(Event::Lost(why));
                }
            }
        }
        Ok(())
    }

    /// A tracking connection, and the server's first [`Reading`] (taken once
    /// tracking is on). [`Error::Unsupported`] for a server in cluster mode, or one
    /// that refuses `INFO` or whose `INFO` lacks what the checks read.
    fn connect(&self) -> Result<(redis::Connection, mpsc::Receiver<PushInfo>, Reading)> {
        let mut con = connect(&self.url, self.config.io_timeout)?;
        let (tx, rx) = mpsc::channel();
        con.set_push_sender(tx);
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(&self.name)
            .exec(&mut con)?;
        let mut cmd = redis::cmd("CLIENT");
        cmd.arg("TRACKING").arg("on").arg("BCAST");
        for p in &self.config.prefixes {
            cmd.arg("PREFIX").arg(&p[..]);
        }
        cmd.exec(&mut con)?;
        let mut pipe = redis::pipe();
        pipe.cmd("INFO").arg("cluster");
        Reading::request(&mut pipe);
        let (cluster, server, stats): (String, String, String) =
            pipe.query(&mut con).map_err(|e| {
                if e.code() == Some("NOPERM") {
                    Error::Unsupported(format!(
                        "the listener's Redis user may not run INFO, which the listener \
                         reads with every ping to detect changes client-side caching does \
                         not report (SWAPDB): allow it (ACL SETUSER <user> +info); {e}"
                    ))
                } else {
                    Error::Redis(e)
                }
            })?;
        unreported::refuse_cluster(&cluster)?;
        let reading = Reading::parse(&server, &stats).map_err(|e| {
            Error::Unsupported(format!(
                "{e}: the listener reads it with every ping to detect changes client-side \
                 caching does not report (SWAPDB), and cannot keep the near cache current \
                 without it"
            ))
        })?;
        con.set_read_timeout(Some(self.config.reply_timeout))?;
        Ok((con, rx, reading))
    }

    /// The tracking loop on one connection; `last` is the server's reading taken
    /// when it was made.
    ///
    /// Each round sends `PING`, `INFO server` and `INFO commandstats` in one write at
    /// `sent`, reads the three replies, applies the invalidations that came before
    /// them, compares the server's reading with the last one and flushes if they
    /// differ, and only then publishes `sent` as the heartbeat (see the crate docs).
    fn track(
        &self,
        lease: &Lease<'_>,
        con: &mut redis::Connection,
        rx: &mpsc::Receiver<PushInfo>,
        mut last: Reading,
        stop: &AtomicBool,
        events: &mut impl FnMut(Event),
    ) -> Result<Ended> {
        let mut last_tick = Instant::now();
        let mut pipe = redis::pipe();
        pipe.cmd("PING");
        Reading::request(&mut pipe);
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(Ended::Stopped);
            }
            let sent = Moment::now();
            let started = Instant::now();
            if started.duration_since(last_tick) > self.config.bound {
                // Stopped or starved past the bound: readers went to Redis meanwhile.
                // The pushes queued on the connection are still in order, but flush
                // rather than trust a connection that was silent that long.
                lease.suspend();
                lease.flush(FlushReason::Stale)?;
                events(Event::Stale);
            }
            let replies: redis::RedisResult<(String, String, String)> = pipe.query(con);
            let (_pong, server, stats) = match replies {
                Ok(r) => r,
                Err(e) => return Ok(Ended::Lost(format!("PING: {e}"))),
            };
            // Every invalidation of a write that completed before `sent` is in `rx`,
            // and every command that completed before `sent` is in `stats`.
            let mut flush = None;
            while let Ok(push) = rx.try_recv() {
                match push.kind {
                    PushKind::Invalidate => match push.data.first() {
                        Some(Value::Array(keys)) => {
                            for k in keys {
                                if let Value::BulkString(k) = k {
                                    lease.invalidate(k)?;
                                }
                            }
                        }
                        _ => flush = Some(Event::ServerFlush),
                    },
                    PushKind::Disconnection => {
                        return Ok(Ended::Lost("disconnected".into()));
                    }
                    _ => {}
                }
            }
            if !con.is_open() {
                return Ok(Ended::Lost("connection closed".into()));
            }
            let reading = match Reading::parse(&server, &stats) {
                Ok(r) => r,
                Err(e) => return Ok(Ended::Lost(format!("the server's INFO: {e}"))),
            };
            match reading.since(&last) {
                Since::Same => {}
                // A reported flush this round covers it (FLUSHALL is watched too).
                Since::Changed(why) => {
                    flush.get_or_insert(Event::UnreportedChange(why));
                }
                // No heartbeat for this round; the reconnect flushes.
                Since::Restarted => {
                    return Ok(Ended::Lost(
                        "the server restarted (its run_id changed) under this connection".into(),
                    ));
                }
            }
            last = reading;
            // One flush for whatever this round saw, before its heartbeat.
            if let Some(event) = flush {
                lease.flush(FlushReason::ServerFlush)?;
                events(event);
            }
            if !lease.publish_heartbeat(sent)? {
                return Ok(Ended::Replaced);
            }
            last_tick = started;
            let next = started + self.config.ping_every; // at most a day: see Config::check
            std::thread::sleep(next.saturating_duration_since(Instant::now())); // the ping interval
        }
    }
}

enum Ended {
    Stopped,
    Replaced,
    Lost(String),
}

impl fmt::Debug for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Listener")
            .field("cache", &self.cache.path())
            .field("name", &self.name)
            .finish()
    }
}

#[cfg(test)]
mod config_tests {
    use super::*;

    /// Settings past a day are refused with `Error::Config`, never an overflow panic
    /// when they are added to an instant or doubled.
    #[test]
    fn huge_settings_are_refused_not_overflowed() {
        let base = || Config::new(["k:"]);
        let huge = [
            base().bound(Duration::MAX),
            base().bound(Duration::MAX).ping_every(Duration::MAX),
            base().ping_every(Duration::MAX),
            base().reply_timeout(Duration::MAX),
            base().ttl_cap(Duration::MAX),
            base().io_timeout(Duration::MAX),
        ];
        for c in huge {
            match c.check() {
                Err(Error::Config(msg)) => assert!(msg.contains("longest accepted"), "{msg}"),
                other => panic!("expected Error::Config, got {other:?}"),
            }
        }
        assert!(base().bound(MAX_SETTING).check().is_ok());
    }
}
