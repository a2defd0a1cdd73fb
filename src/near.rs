//! The near-cache protocol: what a host's listener and its readers share when the cache
//! is the near cache of another store (Redis, Valkey), so that a change made there
//! stops being served here within a bound, whatever process dies.
//!
//! The file's near area (see `layout`) holds:
//! - **the lease**, a robust mutex held by the one listener of the host. Its holder's
//!   death is seen at once by the next [`Near::try_lease`], which gets `EOWNERDEAD`.
//!   Taking the lease flushes the near cache: its new holder cannot know what the old
//!   one missed.
//! - **the scope**: the key prefixes the listener tracks. A flush removes the entries
//!   under them only: local entries outside them (counters, rate limits) survive
//!   takeovers, reconnects and server flushes.
//! - **the epoch**, bumped by every flush before the entries are removed;
//! - **the heartbeat**: an instant on `CLOCK_MONOTONIC` (the host's clock: every
//!   process of a file shares its time namespace, which the file's stamp checks) up to
//!   which the listener has applied every invalidation of the store. 0 says there is
//!   none: taking the lease, losing the connection and stopping clear it. Readers treat
//!   the near cache as unguarded when it is older than their bound, and go to the store;
//!
//! A fill takes a [`Ticket`] (the epoch and the key's fence, the cache's own
//! [`crate::Ticket`]) *before* it reads the store, and [`Near::fill`] stores only if
//! neither moved, checked under the shard lock. An invalidation is a remove, which
//! bumps the key's fence under that lock (the rule every write of the cache follows):
//! either the fill's locked check comes after the removal (and sees the bump), or the
//! removal comes after the fill's store (and removes it). So a fill that raced an
//! invalidation never leaves the old value behind, which is how near caches keep
//! entries stale for ever. A ticket also reads the heartbeat after the epoch, so a
//! ticket taken after a new lease holder bumped the epoch sees its cleared heartbeat.
//!
//! A [`Lease`] invalidates and flushes in the file it was taken in, the one its
//! heartbeat is published in, even once the handle has moved to a replacement: a
//! heartbeat vouches only for invalidations applied to its own file. A reader that
//! still maps a replaced file reads that file's heartbeat, which its listener keeps
//! current (or lets go stale) until it moves to the new file's lease.

use std::time::Duration;

use crate::cache::Cache;
use crate::error::Result;
use crate::layout::{
    NA_EPOCH, NA_FLUSHES, NA_HEARTBEAT, NA_HOLDER, NA_INVALIDATIONS, NA_LEASES, NA_SCOPE,
    NA_TAKEOVERS, NEAR_FLUSH_REASONS,
};
use crate::lock::{LockError, RobustMutex, Wait};
use crate::mapping::Entered;

/// An instant on the host's `CLOCK_MONOTONIC`, which every process sharing a file reads
/// alike (see [`Near`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Moment(u64);

impl Moment {
    /// Now.
    pub fn now() -> Moment {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        Moment((t.tv_sec as u64).saturating_mul(1_000_000_000) + t.tv_nsec as u64)
    }

    /// How long ago this was (zero if it is later than now).
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(Moment::now().0.saturating_sub(self.0))
    }

    /// Nanoseconds since the clock's origin (the host's boot).
    pub fn as_nanos(&self) -> u64 {
        self.0
    }
}

/// What a guarded near-cache read found (see [`Near::get_into`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guarded {
    /// A fresh entry, under a heartbeat at most the bound old: serve it.
    Hit,
    /// No fresh entry, under a fresh heartbeat: read the store, and fill.
    Miss,
    /// No heartbeat, one older than the bound, or a listener of another scope: read the
    /// store, and do not fill.
    Unguarded,
}

/// Why the near cache was flushed (counted apart in [`NearStats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FlushReason {
    /// A new listener took the lease (the old one died or stopped).
    Lease,
    /// The listener's connection to the store was lost and made again.
    Reconnect,
    /// The store was emptied (`FLUSHALL`, `FLUSHDB`: an invalidation of everything).
    ServerFlush,
    /// The listener could not prove it was current (its heartbeat went older than the
    /// readers' bound, as after it was stopped).
    Stale,
    /// Asked for by an operator or a program.
    Requested,
}

impl FlushReason {
    fn index(self) -> usize {
        match self {
            FlushReason::Lease => 0,
            FlushReason::Reconnect => 1,
            FlushReason::ServerFlush => 2,
            FlushReason::Stale => 3,
            FlushReason::Requested => 4,
        }
    }
}

const _: () = assert!(NEAR_FLUSH_REASONS == 5);

/// What a fill read before it went to the store: the epoch and the key's fence (a
/// [`crate::Ticket`]). See [`Near::ticket`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    fence: crate::Ticket,
    epoch: u64,
}

/// The near area's counters, from [`Near::stats`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct NearStats {
    /// Flushes so far (every one bumps it).
    pub epoch: u64,
    /// How old the heartbeat is; `None` when there is none (no listener, or it is
    /// reconnecting).
    pub heartbeat_age: Option<Duration>,
    /// The pid of the lease holder as it recorded itself (in its pid namespace, which is
    /// the file's); `None` when it let the lease go. A holder that died leaves its pid
    /// here until the next holder takes the lease (its heartbeat then goes stale).
    pub holder: Option<u32>,
    /// Times the lease was taken.
    pub leases: u64,
    /// Of those, takeovers from a holder that died holding it.
    pub takeovers: u64,
    /// Keys invalidated.
    pub invalidations: u64,
    /// Flushes because a new listener took the lease.
    pub flushes_lease: u64,
    /// Flushes on reconnecting to the store.
    pub flushes_reconnect: u64,
    /// Flushes because the store was emptied.
    pub flushes_server: u64,
    /// Flushes because the listener could not prove it was current.
    pub flushes_stale: u64,
    /// Flushes asked for.
    pub flushes_requested: u64,
}

/// The near-cache side of a cache file, from [`Cache::near`]. See the module docs of
/// `larder-redis` for the listener and the read-through client built on it.
///
/// ```
/// # fn main() -> Result<(), larder::Error> {
/// # let dir = std::env::temp_dir().join(format!("larder-doc-near-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// use std::time::Duration;
/// use larder::near::{FlushReason, Moment};
/// let cache = larder::Options::new().capacity(4 << 20).open(dir.join("near"))?;
/// let near = cache.near();
/// let bound = Duration::from_secs(1);
/// // No listener yet: readers go to the store.
/// assert!(near.ticket(b"user:1", bound)?.is_none());
/// // The listener: takes the lease (which flushes), then proves itself current.
/// let lease = near.try_lease(&["user:"])?.expect("no other listener");
/// let sent = Moment::now(); // a PING is sent to the store here, and its reply read
/// assert!(lease.publish_heartbeat(sent)?);
/// // A reader's miss: the ticket before reading the store, the fill after.
/// let ticket = near.ticket(b"user:1", bound)?.expect("guarded");
/// let from_store = b"alice"; // GET user:1
/// assert!(near.fill(b"user:1", from_store, None, ticket)?);
/// assert_eq!(cache.get(b"user:1")?.as_deref(), Some(&b"alice"[..]));
/// // The store says user:1 changed: the listener invalidates it.
/// let ticket = near.ticket(b"user:1", bound)?.unwrap();
/// near.invalidate(b"user:1")?;
/// assert!(!near.fill(b"user:1", b"stale", None, ticket)?); // the racing fill is refused
/// assert_eq!(cache.get(b"user:1")?, None);
/// lease.flush(FlushReason::ServerFlush)?;
/// assert_eq!(near.stats().flushes_server, 1);
/// # drop(lease);
/// # drop(cache);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(()) }
/// ```
#[derive(Clone, Copy)]
pub struct Near<'c> {
    cache: &'c Cache,
}

/// The word at `field` of the near area of the file `a` maps.
fn word(a: &crate::file::Attached, field: usize) -> &core::sync::atomic::AtomicU64 {
    a.region
        .atomic(a.geo.near_off + field)
        .expect("the geometry keeps the near area inside the file")
}

use core::sync::atomic::Ordering::SeqCst;

impl<'c> Near<'c> {
    pub(crate) fn new(cache: &'c Cache) -> Near<'c> {
        Near { cache }
    }

    /// Whether the heartbeat is at most `max_age` old: whether the near cache may serve
    /// a hit now.
    pub fn guarded(&self, max_age: Duration) -> Result<bool> {
        let a = self.cache.enter(Wait::Yes)?;
        Ok(fresh(word(&a, NA_HEARTBEAT).load(SeqCst), max_age))
    }

    /// The heartbeat, if any. A reader reads it before the get it guards and checks its
    /// age after the get: every invalidation up to it was applied before it was
    /// published, so the value read reflects every write of the store that completed
    /// before it.
    pub fn heartbeat(&self) -> Result<Option<Moment>> {
        let a = self.cache.enter(Wait::Yes)?;
        let hb = word(&a, NA_HEARTBEAT).load(SeqCst);
        Ok((hb != 0).then_some(Moment(hb)))
    }

    /// The heartbeat, if any and if the lease holder's scope is `scope` (one read of
    /// the line both are on): what a reader checks around each get.
    pub fn heartbeat_in(&self, scope: u64) -> Result<Option<Moment>> {
        let a = self.cache.enter(Wait::Yes)?;
        let hb = word(&a, NA_HEARTBEAT).load(SeqCst);
        let published = word(&a, NA_SCOPE).load(SeqCst);
        Ok((hb != 0 && published == scope).then_some(Moment(hb)))
    }

    /// A near-cache read of `key` into `buf`, for readers whose listener tracks `scope`:
    /// the heartbeat (and the scope) before the entry, and the heartbeat's age after it,
    /// all in one file, so that neither a slow get nor a handle that moves to a
    /// replaced file between them stretches the bound. [`Guarded::Hit`] may be served;
    /// on anything else the reader goes to the store.
    pub fn get_into(
        &self,
        key: &[u8],
        scope: u64,
        max_age: Duration,
        buf: &mut Vec<u8>,
    ) -> Result<Guarded> {
        let (a, now) = self.cache.enter_at(Wait::Yes)?;
        let hb = word(&a, NA_HEARTBEAT).load(SeqCst);
        if hb == 0 || word(&a, NA_SCOPE).load(SeqCst) != scope {
            return Ok(Guarded::Unguarded);
        }
        let found = self.cache.get_into_in(&a, now, key, buf)?;
        Ok(match (fresh(hb, max_age), found) {
            (false, _) => Guarded::Unguarded,
            (true, true) => Guarded::Hit,
            (true, false) => Guarded::Miss,
        })
    }

    /// The scope the lease holder published (taking it: [`Near::try_lease`]): a reader
    /// that caches keys the listener does not track must not use the near cache.
    pub fn scope(&self) -> Result<u64> {
        let a = self.cache.enter(Wait::Yes)?;
        Ok(word(&a, NA_SCOPE).load(SeqCst))
    }

    /// A ticket for a fill of `key`, to take before reading the store; `None` if the
    /// heartbeat is older than `max_age` (the near cache is unguarded: neither serve nor
    /// fill from it).
    pub fn ticket(&self, key: &[u8], max_age: Duration) -> Result<Option<Ticket>> {
        let a = self.cache.enter(Wait::Yes)?;
        Cache::check_key(&a, key)?;
        let epoch = word(&a, NA_EPOCH).load(SeqCst);
        let fence = Cache::ticket_in(&a, key);
        // After the epoch: a new lease holder clears the heartbeat before it bumps it.
        if !fresh(word(&a, NA_HEARTBEAT).load(SeqCst), max_age) {
            return Ok(None);
        }
        Ok(Some(Ticket { fence, epoch }))
    }

    /// Stores `value` under `key` only if no flush and no invalidation of `key` (or,
    /// past 64 revocations in its shard, of its class) came since `ticket` was taken
    /// (checked under the shard lock); true if it stored it. `ttl` should be at most what the store has left on the key.
    pub fn fill(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
        ticket: Ticket,
    ) -> Result<bool> {
        let (a, now) = self.cache.enter_at(Wait::Yes)?;
        let epoch = word(&a, NA_EPOCH);
        self.cache
            .store_with_ticket(&a, now, (key, value, ttl), ticket.fence, Wait::Yes, || {
                epoch.load(SeqCst) == ticket.epoch
            })
    }

    /// Invalidates `key`: removes it, which fences off every fill of it in flight (see
    /// [`Cache::ticket`]). True if a fresh entry was removed. A key longer than the
    /// file's limit cannot be cached: nothing to do.
    pub fn invalidate(&self, key: &[u8]) -> Result<bool> {
        let (a, now) = self.cache.enter_at(Wait::Yes)?;
        invalidate_in(self.cache, &a, key, now)
    }

    /// Empties the near cache of the keys under `prefixes` (an empty prefix covers every
    /// key): bumps the epoch (so every fill in flight is refused), then removes them,
    /// shard by shard, fencing off every fill in flight. Returns how many there were.
    pub fn flush<P: AsRef<[u8]>>(&self, prefixes: &[P], reason: FlushReason) -> Result<u64> {
        let a = self.cache.enter(Wait::Yes)?;
        let prefixes: Vec<&[u8]> = prefixes.iter().map(|p| p.as_ref()).collect();
        flush_in(self.cache, &a, &prefixes, reason)
    }

    /// Takes the lease if no live process holds it: `None` if one does. The new holder
    /// clears the heartbeat, publishes its scope (the key prefixes it tracks: see
    /// [`scope_of`]) and flushes the keys under them ([`FlushReason::Lease`]) before
    /// this returns; other entries stay. A holder that died is seen at once (its robust
    /// mutex comes back owner-dead), and counted as a takeover.
    ///
    /// The lease belongs to the calling thread (it is not `Send`), and is held until it
    /// is dropped or the thread or process ends.
    pub fn try_lease<P: AsRef<[u8]>>(&self, prefixes: &[P]) -> Result<Option<Lease<'c>>> {
        const WHAT: &str = "the near-cache lease";
        let a = self.cache.enter(Wait::Yes)?;
        let off = a.geo.near_off;
        let died = {
            let m = RobustMutex::at(&a.region, off, a.kind)
                .map_err(|e| e.into_error(&a.path, WHAT, Duration::ZERO, Wait::No))?;
            let died = match m.try_lock() {
                Ok(guard) => guard.keep(),
                Err(LockError::Busy) => return Ok(None),
                Err(e) => return Err(e.into_error(&a.path, WHAT, Duration::ZERO, Wait::No)),
            };
            died
        };
        word(&a, NA_HEARTBEAT).store(0, SeqCst);
        word(&a, NA_SCOPE).store(scope_of(prefixes), SeqCst);
        word(&a, NA_HOLDER).store(u64::from(std::process::id()), SeqCst);
        word(&a, NA_LEASES).fetch_add(1, SeqCst);
        if died {
            word(&a, NA_TAKEOVERS).fetch_add(1, SeqCst);
        }
        let lease = Lease {
            near: *self,
            entered: a,
            prefixes: prefixes.iter().map(|p| p.as_ref().to_vec()).collect(),
            _not_send: core::marker::PhantomData,
        };
        crash_point!("near.lease_taken");
        lease.flush(FlushReason::Lease)?;
        Ok(Some(lease))
    }

    /// The near area's counters.
    pub fn stats(&self) -> NearStats {
        near_stats(&self.cache.mapped())
    }
}

/// The scope of a set of tracked key prefixes (what [`Near::try_lease`] publishes): the same
/// for the same set in any order, never 0.
pub fn scope_of<P: AsRef<[u8]>>(prefixes: &[P]) -> u64 {
    let mut sorted: Vec<&[u8]> = prefixes.iter().map(|p| p.as_ref()).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut bytes = Vec::new();
    for p in sorted {
        bytes.extend_from_slice(&(p.len() as u64).to_le_bytes());
        bytes.extend_from_slice(p);
    }
    xxhash_rust::xxh3::xxh3_64(&bytes).max(1)
}

/// [`Near::invalidate`] in the file `a` maps.
fn invalidate_in(cache: &Cache, a: &crate::file::Attached, key: &[u8], now: u64) -> Result<bool> {
    if key.len() > a.geo.params.max_key_len {
        return Ok(false);
    }
    word(a, NA_INVALIDATIONS).fetch_add(1, SeqCst);
    cache.remove_in(a, key, now, Wait::Yes)
}

/// [`Near::flush`] in the file `a` maps.
fn flush_in(
    cache: &Cache,
    a: &crate::file::Attached,
    prefixes: &[&[u8]],
    reason: FlushReason,
) -> Result<u64> {
    word(a, NA_EPOCH).fetch_add(1, SeqCst);
    word(a, NA_FLUSHES + reason.index() * 8).fetch_add(1, SeqCst);
    crash_point!("near.flush_after_epoch");
    cache.remove_prefixed_in(a, prefixes)
}

fn fresh(heartbeat: u64, max_age: Duration) -> bool {
    heartbeat != 0 && Moment::now().0.saturating_sub(heartbeat) <= max_age.as_nanos() as u64
}

pub(crate) fn near_stats(a: &crate::file::Attached) -> NearStats {
    let w = |field| word(a, field).load(SeqCst);
    let hb = w(NA_HEARTBEAT);
    let holder = w(NA_HOLDER);
    let flush = |i: usize| w(NA_FLUSHES + i * 8);
    NearStats {
        epoch: w(NA_EPOCH),
        heartbeat_age: (hb != 0).then(|| Duration::from_nanos(Moment::now().0.saturating_sub(hb))),
        holder: u32::try_from(holder).ok().filter(|&p| p != 0),
        leases: w(NA_LEASES),
        takeovers: w(NA_TAKEOVERS),
        invalidations: w(NA_INVALIDATIONS),
        flushes_lease: flush(0),
        flushes_reconnect: flush(1),
        flushes_server: flush(2),
        flushes_stale: flush(3),
        flushes_requested: flush(4),
    }
}

/// The near-cache lease, held by one listener per host (see [`Near::try_lease`]).
/// Dropping it clears the heartbeat (readers go to the store at once) and lets it go.
#[must_use = "the lease is let go when dropped"]
pub struct Lease<'c> {
    near: Near<'c>,
    /// The mapping the lease's mutex is in, kept mapped while it is held: the file its
    /// heartbeat, invalidations and flushes go to.
    entered: Entered<'c>,
    /// The key prefixes it tracks (its scope).
    prefixes: Vec<Vec<u8>>,
    /// A robust mutex belongs to the thread that locked it.
    _not_send: core::marker::PhantomData<*const ()>,
}

impl Lease<'_> {
    /// Publishes `sent` as the heartbeat: the instant a request was sent to the store
    /// whose reply has been read, with every invalidation that came before the reply
    /// applied. Returns false if the cache handle has moved to another file since the
    /// lease was taken (the file was replaced): this lease then guards nothing, and the
    /// listener must take the new file's.
    pub fn publish_heartbeat(&self, sent: Moment) -> Result<bool> {
        word(&self.entered, NA_HEARTBEAT).store(sent.0.max(1), SeqCst);
        self.is_current()
    }

    /// Clears the heartbeat: readers go to the store until the next
    /// [`Lease::publish_heartbeat`] (as while reconnecting).
    pub fn suspend(&self) {
        word(&self.entered, NA_HEARTBEAT).store(0, SeqCst);
    }

    /// The heartbeat as published, if any.
    pub fn heartbeat(&self) -> Option<Moment> {
        let hb = word(&self.entered, NA_HEARTBEAT).load(SeqCst);
        (hb != 0).then_some(Moment(hb))
    }

    /// Whether the cache handle still maps the file this lease is in.
    pub fn is_current(&self) -> Result<bool> {
        let now = self.near.cache.enter(Wait::Yes)?;
        Ok(core::ptr::eq::<crate::file::Attached>(
            &*now,
            &*self.entered,
        ))
    }

    /// [`Near::flush`] of this lease's prefixes, in the file the lease was taken in.
    pub fn flush(&self, reason: FlushReason) -> Result<u64> {
        let prefixes: Vec<&[u8]> = self.prefixes.iter().map(Vec::as_slice).collect();
        flush_in(self.near.cache, &self.entered, &prefixes, reason)
    }

    /// [`Near::invalidate`], in the file the lease was taken in.
    pub fn invalidate(&self, key: &[u8]) -> Result<bool> {
        let now = self.near.cache.now_ms();
        invalidate_in(self.near.cache, &self.entered, key, now)
    }

    /// The key prefixes this lease tracks.
    pub fn prefixes(&self) -> &[Vec<u8>] {
        &self.prefixes
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        word(&self.entered, NA_HEARTBEAT).store(0, SeqCst);
        word(&self.entered, NA_HOLDER).store(0, SeqCst);
        if let Ok(m) = RobustMutex::at(
            &self.entered.region,
            self.entered.geo.near_off,
            self.entered.kind,
        ) {
            m.release_kept();
        }
    }
}

impl std::fmt::Debug for Lease<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("path", &self.entered.path)
            .field("heartbeat", &self.heartbeat())
            .finish()
    }
}

impl std::fmt::Debug for Near<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Near")
            .field("path", &self.cache.path())
            .finish()
    }
}
