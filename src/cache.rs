//! The public handle.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::{coarse_ms, Clock};
use crate::error::{Error, Remedy, Result};
use crate::fence::{self, Fences, Ticket};
use crate::file::{self, Attached, NewFile, OpenSpec};
use crate::header;
use crate::layout::{
    Params, SH_ENTRIES, SS_FILLS, SS_FILLS_FENCED, SS_FILL_HANDOVERS, SS_FILL_TIMEOUTS, SS_HITS,
    SS_LOCKS, SS_LOCK_TIMEOUTS, SS_MISSES, SS_STALE_HITS,
};
// `Wait` also says whether an operation may wait for a replacement's file lock, and
// create a missing file.
use crate::lock::{LockError, RobustMutex, Wait};
use crate::mapping::{Claim, Entered, Held, Mappings};
use crate::options::{Mismatch, Opened, Options};
use crate::seqlock;
use crate::shard::{Damaged, KeyHash, Probe, Put, SetOutcome, Shard, MAX_EXPIRE};
use crate::stats::{self, Stats};
use crate::table::{self, Access, Counted, Owner, Table, COUNTER_LEN};
use crate::verify::Report;

/// Optimistic read attempts before a get takes the shard lock.
const OPTIMISTIC_TRIES: usize = 4;
/// How often a handle checks that its file is still the one at its path.
const RECHECK_MS: u64 = 250;
/// How long a handle whose file was removed waits for the file's owner (a process of
/// another uid) to create it again, before its operation fails with `Detached`: most of
/// a check period, since the owner's handles notice the removal within one, and less
/// than one, since the handle's other threads give up on a check that takes longer.
const OWNER_WAIT_MS: u64 = 200;
/// How often it looks at the path meanwhile.
const OWNER_POLL_MS: u64 = 2;

/// A handle on a shared cache file.
///
/// `Cache` is `Send + Sync` and cheap to clone (clones share one mapping). It keeps
/// working in a forked child. Every method is safe whatever other processes do to the
/// file: what it reads is checked before use, and a bad value gives
/// [`Error::Corrupt`] or a repaired shard, never undefined behaviour.
///
/// Every 250 ms at most, an operation checks that the handle's path still names its
/// file. If the file was replaced, the handle moves to the new one with that file's own
/// parameters; the old mapping is unmapped once no operation is inside it. If it cannot
/// attach, its operations return [`Error::Detached`] until it can, rather than answer
/// from a file no other process sees.
///
/// If the file was removed, it is created again as it was: its parameters, owner, group
/// and mode (a `chgrp` or `chmod` after creation included), so that every process that
/// accepted the old file accepts the new one. Only a handle that can give it its owner
/// does so: one of the owner's uid, or root. A handle of another uid (a worker of a
/// pool whose master created the file) waits up to 200 ms for the owner's handles,
/// which notice within their own check period, and attaches to what appears;
/// meanwhile its operations fail with [`Error::Detached`], whose
/// [`Remedy::CreateAsOwner`](crate::Remedy::CreateAsOwner) names the uid that must
/// create the file. So a pool never splits into one uid working and the others locked
/// out: all its handles end on one file, or all fail alike until the owner creates it.
///
/// ```
/// # fn main() -> Result<(), larder::Error> {
/// # let dir = std::env::temp_dir().join(format!("larder-doc-cache-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// # let path = dir.join("sessions");
/// use std::time::Duration;
/// let cache = larder::Options::new().capacity(4 << 20).open(path.to_str().unwrap())?;
/// cache.set(b"session:1", b"alice", Some(Duration::from_secs(300)))?;
/// assert_eq!(cache.get(b"session:1")?.as_deref(), Some(&b"alice"[..]));
/// assert!(cache.remove(b"session:1")?);
/// assert_eq!(cache.get(b"session:1")?, None);
/// # drop(cache);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    /// What the open that made this handle did.
    opened: Opened,
    path: PathBuf,
    maps: Mappings,
    spec: OpenSpec,
    clock: Clock,
    lock_timeout: Duration,
    fill_timeout: Duration,
    /// When the next check of the path is due (coarse monotonic ms); 0 while detached,
    /// so that every operation takes the slow path and fails.
    next_check: AtomicU64,
    /// While detached: when the next attempt to attach is due.
    retry_at: AtomicU64,
    detached: AtomicBool,
    /// Held by the thread checking the path (and moving to a replacement), with when it
    /// began: one check at a time, and the others can tell a move that is taking long.
    checking: Claim,
    /// Why the last attempt to attach failed, and what to do about it.
    cause: Mutex<Failure>,
}

/// What a read found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    Fresh,
    /// An expired entry, returned only when the read asked for [`Expired::Serve`].
    Expired,
    Nothing,
}

/// What a read does with an expired entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expired {
    /// A miss, as for `get`.
    Hide,
    /// Return it, flagged, as for `get_stale`.
    Serve,
}

/// What a read counts of itself: a hit, a miss or a stale hit. `get_or_insert_with`
/// counts its lookup once, by what it did in the end, and reads more than once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Count {
    Yes,
    /// A hit only (`get_or_insert_with`'s first read, which returns at once on a hit).
    Hit,
    No,
}

/// Keys of a `get_many_into` whose index lines are fetched together.
const MANY_GROUP: usize = 8;

/// When a set stores its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Store {
    /// Over any entry (`set`).
    Always,
    /// Only over nothing or an expired entry (`insert_if_absent`).
    IfAbsent,
}

/// The version of an entry, from [`Cache::get_versioned`], for
/// [`Cache::set_if_version`].
///
/// A small `Copy` token: the file it came from (a hash of the file's random secret), the
/// shard of its key, and a number that shard gave out once. A version is never given out
/// twice for a file, across crashes, repairs and clears, so a compare-and-swap never
/// succeeds against an entry that was changed and changed back, or removed and set
/// again; a version of another key, or from another file (one that replaced this one),
/// matches nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Version {
    file: u64,
    shard: u32,
    number: u64,
}

impl Version {
    /// The number the entry's shard gave out (increasing within a shard).
    pub fn number(&self) -> u64 {
        self.number
    }

    /// The version as three words, for a binding to hand it to its caller (a CAS
    /// token) and back through [`Version::from_words`].
    pub fn to_words(&self) -> [u64; 3] {
        [self.file, u64::from(self.shard), self.number]
    }

    /// A version from [`Version::to_words`]. Any words make a version: one not given
    /// out by the file matches no entry, so a CAS with it stores nothing.
    pub fn from_words(words: [u64; 3]) -> Version {
        Version {
            file: words[0],
            // A shard number no file has matches nothing.
            shard: u32::try_from(words[1]).unwrap_or(u32::MAX),
            number: words[2],
        }
    }
}

/// Releases a [`Claim`] when dropped, even by a panic.
struct ReleaseOnDrop<'a>(&'a Claim);

impl Drop for ReleaseOnDrop<'_> {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// How following the path ended.
enum Follow {
    Current,
    WouldBlock,
    Failed(Failure),
}

/// Why a handle could not attach to the file at its path: what happened (in no front
/// end's terms) and what to do about it.
#[derive(Debug, Clone, Default)]
struct Failure {
    cause: String,
    remedy: Option<Remedy>,
}

impl Follow {
    /// Following failed with `e`; a `try_` operation's timeout is a `WouldBlock`.
    fn failed(e: Error, wait: Wait) -> Follow {
        match e {
            Error::Timeout { .. } if wait == Wait::No => Follow::WouldBlock,
            e => Follow::Failed(Failure::of(&e)),
        }
    }
}

impl Failure {
    fn of(e: &Error) -> Failure {
        Failure {
            cause: e.summary(),
            remedy: e.remedy(),
        }
    }

    fn text(cause: &str) -> Failure {
        Failure {
            cause: cause.into(),
            remedy: None,
        }
    }
}

impl Inner {
    fn new(
        path: PathBuf,
        attached: Attached,
        spec: OpenSpec,
        opts: &Options,
        opened: Opened,
    ) -> Inner {
        Inner {
            opened,
            path,
            maps: Mappings::new(attached),
            spec,
            clock: opts.clock.clone(),
            lock_timeout: opts.lock_timeout,
            fill_timeout: opts.fill_timeout,
            next_check: AtomicU64::new(coarse_ms() + RECHECK_MS),
            retry_at: AtomicU64::new(0),
            detached: AtomicBool::new(false),
            checking: Claim::new(),
            cause: Mutex::new(Failure::default()),
        }
    }

    fn detached_error(&self) -> Error {
        let failure = match self.cause.try_lock() {
            Ok(c) => c.clone(),
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().clone(),
            Err(std::sync::TryLockError::WouldBlock) => Failure::text("another thread is retrying"),
        };
        self.detached(failure)
    }

    fn detached(&self, f: Failure) -> Error {
        Error::Detached {
            path: self.path.clone(),
            cause: f.cause,
            remedy: f.remedy,
        }
    }

    fn set_cause(&self, text: Failure) {
        // One attempt: the lock is held only for a clone or a store, so it is busy only
        // in a child forked while a parent thread held it (the older cause then stays).
        match self.cause.try_lock() {
            Ok(mut c) => *c = text,
            Err(std::sync::TryLockError::Poisoned(p)) => *p.into_inner() = text,
            Err(std::sync::TryLockError::WouldBlock) => {}
        }
    }

    /// Moves to the file at the path if it is not the mapped one.
    fn follow(&self, wait: Wait) -> Follow {
        let (id, params, generation) = {
            let cur = self.maps.enter();
            ((cur.dev, cur.ino), cur.geo.params, cur.generation)
        };
        let opened = match file::identity(&self.path) {
            Some(now) if now == id => return Follow::Current,
            // Replaced: attach with the new file's own parameters, whatever they are.
            Some(_) => match file::open(&self.path, &self.attach_spec(wait)) {
                // Replaced, then removed before it could be opened.
                Err(Error::NotFound { .. }) => self.recreate(wait, params, generation),
                other => other.map_err(|e| Follow::failed(e, wait)),
            },
            None => self.recreate(wait, params, generation),
        };
        match opened {
            Ok(fresh) => match self.maps.publish(Box::new(fresh)) {
                Ok(()) => Follow::Current,
                Err(_) => Follow::Failed(Failure::text(
                    "operations of other threads are still inside the handle's earlier files",
                )),
            },
            Err(f) => f,
        }
    }

    /// How this handle attaches to a file that replaced its own: with that file's own
    /// parameters; a `try_` operation never waits for its file lock.
    fn attach_spec(&self, wait: Wait) -> OpenSpec {
        OpenSpec {
            params: None,
            lock_timeout: match wait {
                Wait::Yes => self.spec.lock_timeout,
                Wait::No => Duration::ZERO,
            },
            ..self.spec.clone()
        }
    }

    /// The file this handle mapped was removed: create it again as it was (its
    /// parameters, owner, group and mode), if this process may give it its owner, so
    /// that every process of the pool accepts it. That is the owner's uid, or root (which
    /// gives it the owner's). A handle of another uid waits a while for the owner's
    /// handle to create it, and attaches to what appears; a file it created would be
    /// its own uid's, which the pool's other uids refuse, splitting the pool.
    fn recreate(&self, wait: Wait, params: Params, generation: u64) -> Result<Attached, Follow> {
        if wait == Wait::No {
            return Err(Follow::WouldBlock);
        }
        // The mapped file is still the removed one (nothing is published before this
        // returns); its owner, group and mode as they are now.
        let meta = self.maps.enter().meta_now();
        let me = rustix::process::geteuid().as_raw();
        if me == meta.uid || me == 0 {
            let spec = OpenSpec {
                params: Some(params),
                mode: meta.mode,
                ..self.spec.clone()
            };
            let new = NewFile {
                group: Some(meta.gid),
                owner: (me != meta.uid).then_some(meta.uid),
                generation,
                // Created meanwhile by another process, with whatever parameters: that
                // file is the pool's now.
                on_mismatch: Mismatch::Attach,
            };
            return file::open_new(&self.path, &spec, &new)
                .map(|(a, _)| a)
                .map_err(|e| Follow::failed(e, wait));
        }
        let end = coarse_ms() + OWNER_WAIT_MS;
        loop {
            if file::identity(&self.path).is_some() {
                match file::open(&self.path, &self.attach_spec(wait)) {
                    // Removed again before it could be opened: keep waiting.
                    Err(Error::NotFound { .. }) => {}
                    other => return other.map_err(|e| Follow::failed(e, wait)),
                }
            }
            if coarse_ms() >= end {
                break;
            }
            // Polling the path; the loop ends at `end`.
            std::thread::sleep(Duration::from_millis(OWNER_POLL_MS));
        }
        Err(Follow::Failed(Failure {
            cause: format!(
                "it was removed, and only its owner, uid {}, creates it again (mode {:o}, \
                 group {}), so that every process of the pool accepts it; it has not yet",
                meta.uid, meta.mode, meta.gid
            ),
            remedy: Some(Remedy::CreateAsOwner {
                uid: meta.uid,
                gid: meta.gid,
                mode: meta.mode,
            }),
        }))
    }
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

/// The parameters of a cache file, fixed at its creation: see [`Cache::limits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Limits {
    /// Bytes of the file's capacity, as asked at creation.
    pub capacity: u64,
    /// The longest key, in bytes.
    pub max_key_len: usize,
    /// The longest value, in bytes.
    pub max_value_len: usize,
    /// Shards (each with its own lock and memory).
    pub shards: usize,
    /// The typical entry size the index was sized for
    /// ([`Options::expected_entry_size`]).
    pub expected_entry_size: usize,
    /// The deploy generation the file was created with ([`Options::generation`]).
    pub generation: u64,
}

/// An entry read by [`Cache::get_stale`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaleValue {
    /// The value.
    pub value: Vec<u8>,
    /// Whether its TTL had passed.
    pub expired: bool,
}

/// One entry, as listed by [`Cache::entries`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EntryInfo {
    /// The shard it lives in.
    pub shard: usize,
    /// The key.
    pub key: Vec<u8>,
    /// Length of the value in bytes.
    pub value_len: usize,
    /// Time left before it expires; `None` if it has no TTL. Zero if already expired.
    pub ttl: Option<Duration>,
}

/// What [`Cache::repair`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RepairReport {
    /// Shards rebuilt.
    pub shards: usize,
    /// Entries dropped because they could not be put back (at most the ones a dead
    /// writer had in flight, unless the file was corrupted).
    pub dropped: u64,
}

/// What [`Cache::begin_fill`] found.
#[derive(Debug)]
#[must_use = "a `Fill` must be completed or dropped"]
pub enum Begin {
    /// A fresh value, copied into the caller's buffer.
    Fresh,
    /// An expired value, copied into the caller's buffer: another process is computing
    /// the new one.
    Stale,
    /// No value: the caller holds the key's fill, and computes the value.
    Fill(Fill),
}

/// The fill of one key, held by the caller that computes its value (see
/// [`Cache::begin_fill`]): store the value with [`Fill::complete`], or drop it to let a
/// waiter compute instead. Not `Send`: the thread that began it ends it.
#[must_use = "dropping a `Fill` abandons it"]
pub struct Fill {
    /// The mapping the fill slot is in, kept mapped while it is held, and the handle.
    held: Held<Inner>,
    slot: usize,
    h: u64,
    key: Vec<u8>,
    /// A robust mutex belongs to the thread that locked it.
    _not_send: core::marker::PhantomData<*const ()>,
}

impl Fill {
    /// Stores `value` (as [`Cache::set`]) unless a write revoked the key since the fill
    /// began (a `remove`, found or not, `set`, `insert_if_absent`, `replace`, `incr`,
    /// `set_if_version` or `clear`, from any process), and ends the fill: true if it
    /// stored it. A fenced fill is counted in [`Stats::fills_fenced`]; its value is the
    /// caller's to use, but nobody is served it later. Fails as [`Cache::set`] does (a
    /// value too large, a lock timeout); the fill ends either way.
    pub fn complete(self, value: &[u8], ttl: Option<Duration>) -> Result<bool> {
        self.store(value, ttl, Wait::Yes)
    }

    /// [`Fill::complete`] without waiting for the shard lock: [`Error::WouldBlock`] if
    /// another process holds it, and the fill is still this caller's, to try again (an
    /// event loop that must not block) or to drop. On any other outcome the value is
    /// stored or not as by `complete`, and the caller drops the `Fill` to end it.
    pub fn try_complete(&self, value: &[u8], ttl: Option<Duration>) -> Result<bool> {
        self.store(value, ttl, Wait::No)
    }

    fn store(&self, value: &[u8], ttl: Option<Duration>, wait: Wait) -> Result<bool> {
        let a = &self.held;
        let cache = Cache {
            inner: Arc::clone(self.held.owner()),
        };
        let stored = Cache::check_value(a, value.len()).and_then(|()| {
            let now = cache.now_ms();
            let fill = (&self.key[..], value, ttl);
            cache.store_fenced(a, now, fill, wait, |_| {
                fence::fill_admits(&a.region, &a.geo, self.h)
            })
        });
        if let Ok(stored) = stored {
            stats::bump(a, if stored { SS_FILLS } else { SS_FILLS_FENCED });
        }
        stored
    }
}

impl Drop for Fill {
    fn drop(&mut self) {
        let a = &self.held;
        fence::end_fill(&a.region, &a.geo, self.h);
        if let Ok(m) = RobustMutex::at(&a.region, a.geo.fill_slot(self.slot), a.kind) {
            m.release_kept();
        }
    }
}

impl std::fmt::Debug for Fill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fill")
            .field("path", &self.held.path)
            .field("key_len", &self.key.len())
            .finish()
    }
}

impl Cache {
    /// Attaches to an existing cache with the file's own parameters and default runtime
    /// settings. Fails with [`Error::NotFound`] if there is none.
    pub fn open(name: impl AsRef<Path>) -> Result<Cache> {
        Cache::open_with(name.as_ref(), &Options::new(), false)
    }

    /// Removes a cache file. Attached handles notice within a few hundred milliseconds
    /// and move to a new file when one is created, or create it again as it was (see
    /// [`Cache`]: only the handles of its owner's uid, or root's, do).
    pub fn unlink(name: impl AsRef<Path>) -> Result<()> {
        file::unlink(&file::resolve(name.as_ref())?)
    }

    /// Repairs a cache that no process is attached to: takes the file's `flock`
    /// exclusively without waiting ([`Error::InUse`] if any process holds it), then
    /// re-initialises every lock (which also recovers a file from another boot, whose lock
    /// words name owners the kernel will never mark dead) and rebuilds every shard from
    /// its logs. For a cache in use, [`Cache::repair`] works online, shard by shard.
    pub fn repair_offline(name: impl AsRef<Path>, opts: &Options) -> Result<RepairReport> {
        let path = file::resolve(name.as_ref())?;
        let spec = OpenSpec {
            params: None,
            mode: opts.mode,
            allow_uids: opts.allow_uids.clone(),
            lock_timeout: opts.lock_timeout,
        };
        let (a, other_boot) = file::open_exclusive(&path, &spec)?;
        // Nobody is attached (the exclusive flock proves it), so no lock is held by a live
        // process: re-initialising them is safe, and resets any a dead peer left behind.
        file::init_locks(&a)?;
        if other_boot {
            header::restamp(&a.region, &header::Origin::here()?);
        }
        let mut report = RepairReport::default();
        for idx in 0..a.geo.shard_count {
            let shard = Shard::new(&a.region, &a.geo, idx, &a.hasher);
            if let Some(seq) = a.region.atomic(shard.seq_off()) {
                seqlock::write_begin(seq);
                report.dropped += shard.repair();
                seqlock::write_end(seq);
                report.shards += 1;
            }
        }
        Ok(report)
    }

    /// The path a name resolves to (a bare name lives in /dev/shm).
    pub fn path_of(name: impl AsRef<Path>) -> Result<PathBuf> {
        file::resolve(name.as_ref())
    }

    pub(crate) fn open_with(name: &Path, opts: &Options, create: bool) -> Result<Cache> {
        if opts.mode & !0o777 != 0 || opts.mode & 0o002 != 0 {
            return Err(Error::InvalidOptions(format!(
                "mode {:o} must be within 0777 and not world-writable",
                opts.mode
            )));
        }
        let path = file::resolve(name)?;
        let spec = OpenSpec {
            params: create.then_some(opts.params),
            mode: opts.mode,
            allow_uids: opts.allow_uids.clone(),
            lock_timeout: opts.lock_timeout,
        };
        stats::register_atfork();
        let new = NewFile {
            group: opts.group,
            owner: None,
            generation: opts.generation,
            on_mismatch: opts.on_mismatch,
        };
        // Later moves take their parameters from the file: a replacement's own, or a
        // removed file's when it is created again (`Inner::follow`).
        let (attached, opened) = file::open_new(&path, &spec, &new)?;
        Ok(Cache {
            inner: Arc::new(Inner::new(path, attached, spec, opts, opened)),
        })
    }

    /// The file this handle maps.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The parameters the file this handle maps was created with.
    ///
    /// ```
    /// # fn main() -> Result<(), larder::Error> {
    /// # let dir = std::env::temp_dir().join(format!("larder-doc-limits-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// let cache = larder::Options::new()
    ///     .capacity(4 << 20)
    ///     .max_value_len(2048)
    ///     .open(dir.join("limits"))?;
    /// let limits = cache.limits();
    /// assert_eq!((limits.capacity, limits.max_value_len), (4 << 20, 2048));
    /// assert!(limits.shards.is_power_of_two());
    /// # drop(cache);
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(()) }
    /// ```
    pub fn limits(&self) -> Limits {
        let a = self.inner.maps.enter();
        let p: Params = a.geo.params;
        Limits {
            capacity: p.capacity,
            max_key_len: p.max_key_len,
            max_value_len: p.max_value_len,
            shards: a.geo.shard_count,
            expected_entry_size: p.expected_entry,
            generation: a.generation,
        }
    }

    /// What the open that made this handle did: created the file, attached to it, or
    /// replaced a file of other parameters ([`Mismatch::Replace`]), for a worker's log.
    ///
    /// ```
    /// # fn main() -> Result<(), larder::Error> {
    /// # let dir = std::env::temp_dir().join(format!("larder-doc-opened-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// let first = larder::Options::new().capacity(4 << 20).open(dir.join("c"))?;
    /// let second = larder::Options::new().capacity(4 << 20).open(dir.join("c"))?;
    /// assert_eq!(first.opened(), larder::Opened::Created);
    /// assert_eq!(second.opened(), larder::Opened::Attached);
    /// # drop((first, second));
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(()) }
    /// ```
    pub fn opened(&self) -> Opened {
        self.inner.opened
    }

    /// Enters the current mapping, after the periodic check that the path still names
    /// it.
    #[inline]
    pub(crate) fn enter(&self, wait: Wait) -> Result<Entered<'_>> {
        Ok(self.enter_at(wait)?.0)
    }

    /// Enters the current mapping; also gives the operation's time on the handle's
    /// clock.
    #[inline]
    pub(crate) fn enter_at(&self, wait: Wait) -> Result<(Entered<'_>, u64)> {
        let now = coarse_ms();
        if now >= self.inner.next_check.load(Ordering::Relaxed) {
            self.recheck(now, wait)?;
        }
        Ok((self.inner.maps.enter(), self.inner.clock.at(now)))
    }

    /// Now, on this handle's clock (what [`Cache::enter_at`] gives).
    pub(crate) fn now_ms(&self) -> u64 {
        self.inner.clock.at(coarse_ms())
    }

    #[cold]
    fn recheck(&self, now: u64, wait: Wait) -> Result<()> {
        let inner = &self.inner;
        let detached = inner.detached.load(Ordering::Acquire);
        let due_at = if detached {
            &inner.retry_at
        } else {
            &inner.next_check
        };
        let due = due_at.load(Ordering::Relaxed);
        if now < due {
            return if detached {
                Err(inner.detached_error())
            } else {
                Ok(())
            };
        }
        if let Err(since) = inner.checking.take(now) {
            // Another thread is checking. If it has been at it for a whole check
            // period (waiting for a replacement's file lock, or creating it), this
            // handle's file may be one nobody else sees any more: fail rather than
            // answer from it.
            return if detached {
                Err(inner.detached_error())
            } else if now.saturating_sub(since) < RECHECK_MS {
                Ok(())
            } else if wait == Wait::No {
                Err(Error::WouldBlock)
            } else {
                Err(inner.detached(Failure::text(
                    "another thread is still moving it to the file that replaced its own",
                )))
            };
        }
        let checking = ReleaseOnDrop(&inner.checking);
        due_at.store(now + RECHECK_MS, Ordering::Relaxed);
        match inner.follow(wait) {
            Follow::Current => {
                if detached {
                    inner.next_check.store(now + RECHECK_MS, Ordering::Relaxed);
                    inner.detached.store(false, Ordering::Release);
                }
                // Unmapping what no operation is inside any more (a large file's unmap
                // and close can take a while) happens after the check is over, so the
                // other threads, already on the current file, never see a check that
                // seems to hang.
                drop(checking);
                inner.maps.retire_idle();
                Ok(())
            }
            Follow::WouldBlock => {
                // Leave the check due, for the next operation that may wait.
                due_at.store(due, Ordering::Relaxed);
                Err(Error::WouldBlock)
            }
            Follow::Failed(cause) => {
                inner.set_cause(cause);
                inner.retry_at.store(now + RECHECK_MS, Ordering::Relaxed);
                inner.detached.store(true, Ordering::Release);
                inner.next_check.store(0, Ordering::Relaxed);
                Err(inner.detached_error())
            }
        }
    }

    pub(crate) fn check_key(a: &Attached, key: &[u8]) -> Result<()> {
        let max = a.geo.params.max_key_len;
        if key.len() > max {
            return Err(Error::TooLarge {
                what: "key",
                len: key.len(),
                max,
            });
        }
        Ok(())
    }

    pub(crate) fn check_value(a: &Attached, len: usize) -> Result<()> {
        let max = a.geo.params.max_value_len;
        if len > max {
            return Err(Error::TooLarge {
                what: "value",
                len,
                max,
            });
        }
        Ok(())
    }

    pub(crate) fn expiry(now: u64, ttl: Option<Duration>) -> u64 {
        match ttl {
            None => 0,
            Some(d) => now
                .saturating_add(d.as_millis().min(u64::MAX as u128) as u64)
                .clamp(1, MAX_EXPIRE),
        }
    }

    /// Runs `f` on shard `idx` under its lock, through [`Table::section`]: the shard is
    /// repaired first if its last owner died or left it mid-write, and again (then `f`
    /// retried once) if `f` finds it damaged. `access` says whether `f` writes.
    ///
    /// A panic in `f` unwinds through the lock's guard, which unlocks (marking an
    /// owner-dead mutex consistent): the shard's sequence counter stays odd, so the next
    /// owner repairs it exactly as if this one had died.
    pub(crate) fn locked<R>(
        &self,
        a: &Attached,
        idx: usize,
        wait: Wait,
        access: Access,
        f: impl FnMut(&Shard<'_>) -> std::result::Result<R, Damaged>,
    ) -> Result<R> {
        const WHAT: &str = "a shard lock";
        let table = Table::new(&a.region, &a.geo, &a.hasher);
        let m = RobustMutex::at(&a.region, table.shard(idx).base, a.kind)
            .map_err(|e| e.into_error(&a.path, WHAT, Duration::ZERO, wait))?;
        // Counted before locking: claiming this process's statistics slot the first time
        // opens a file, which must not happen inside the critical section.
        stats::bump(a, SS_LOCKS);
        let guard = match m.acquire(wait, self.inner.lock_timeout) {
            Ok(guard) => guard,
            Err(e) => {
                if wait == Wait::Yes && e == LockError::Busy {
                    stats::bump(a, SS_LOCK_TIMEOUTS);
                }
                return Err(e.into_error(&a.path, WHAT, self.inner.lock_timeout, wait));
            }
        };
        let owner = if guard.owner_died() {
            Owner::Died
        } else {
            Owner::Clean
        };
        crash_point!("lock.held");
        let result = table.section(idx, owner, access, f);
        drop(guard);
        result.map_err(|d| Error::Corrupt {
            path: a.path.clone(),
            detail: format!("shard {idx}: {}", d.0),
        })
    }

    /// Looks `key` up, optimistically first; the value goes to `out` unless the result
    /// is [`Found::Nothing`]. An expired entry counts as a miss unless `expired` is
    /// [`Expired::Serve`].
    #[inline]
    fn read(
        &self,
        key: &[u8],
        out: &mut Vec<u8>,
        expired: Expired,
        wait: Wait,
        count: Count,
    ) -> Result<Found> {
        let (a, now) = self.enter_at(wait)?;
        Self::check_key(&a, key)?;
        let h = a.hasher.hash(key);
        let idx = a.geo.shard_of(h);
        let shard = Shard::new(&a.region, &a.geo, idx, &a.hasher);
        let kh = shard.locate(h);
        shard.prefetch_buckets(&kh);
        self.read_located(&a, now, key, (idx, kh), out, (expired, count), wait)
    }

    /// [`Cache::get_into`] in the file `a` maps (the near cache reads the heartbeat and
    /// the entry in one file).
    pub(crate) fn get_into_in(
        &self,
        a: &Attached,
        now: u64,
        key: &[u8],
        buf: &mut Vec<u8>,
    ) -> Result<bool> {
        Self::check_key(a, key)?;
        let h = a.hasher.hash(key);
        let idx = a.geo.shard_of(h);
        let kh = Shard::new(&a.region, &a.geo, idx, &a.hasher).locate(h);
        let mode = (Expired::Hide, Count::Yes);
        Ok(self.read_located(a, now, key, (idx, kh), buf, mode, Wait::Yes)? == Found::Fresh)
    }

    /// The rest of [`Cache::read`], for a key whose shard and buckets are known.
    #[allow(clippy::too_many_arguments)]
    // (called by read, get_into_in, get_many_into and get_or_insert_with)
    // Always: with a third caller the compiler stopped inlining it into `read`, which
    // measured 20 to 40 instructions more per get hit.
    #[inline(always)]
    fn read_located(
        &self,
        a: &Attached,
        now: u64,
        key: &[u8],
        (idx, kh): (usize, KeyHash),
        out: &mut Vec<u8>,
        (expired, count): (Expired, Count),
        wait: Wait,
    ) -> Result<Found> {
        let shard = Shard::new(&a.region, &a.geo, idx, &a.hasher);
        let result = match a.region.atomic(shard.seq_off()) {
            Some(seq) => Self::read_optimistic(&shard, seq, key, &kh, out, now),
            None => None,
        };
        let found = match result {
            Some(found) => found,
            None => self.locked(a, idx, wait, Access::Read, |s| match s.find(key, &kh) {
                Probe::Hit { slot, rec } => {
                    s.read_value(&rec, out);
                    Ok(Some((slot, rec.expired(now))))
                }
                Probe::Miss => Ok(None),
                Probe::Bad => Err(Damaged("index slot points at no live record".into())),
            })?,
        };
        // Each arm bumps a constant field: a field chosen at run time measured 30
        // instructions more per get hit.
        let counted = count == Count::Yes;
        let hit_counted = count != Count::No;
        Ok(match found {
            Some((slot, false)) => {
                shard.mark_visited(slot);
                if hit_counted {
                    stats::bump(a, SS_HITS);
                }
                Found::Fresh
            }
            Some((_, true)) if expired == Expired::Serve => {
                if counted {
                    stats::bump(a, SS_STALE_HITS);
                }
                Found::Expired
            }
            Some((_, true)) | None => {
                if counted {
                    stats::bump(a, SS_MISSES);
                }
                Found::Nothing
            }
        })
    }

    /// The optimistic read: `None` if it must fall back to the lock.
    #[inline]
    fn read_optimistic(
        shard: &Shard<'_>,
        seq: &core::sync::atomic::AtomicU64,
        key: &[u8],
        kh: &KeyHash,
        out: &mut Vec<u8>,
        now: u64,
    ) -> Option<Option<(usize, bool)>> {
        for _ in 0..OPTIMISTIC_TRIES {
            let Some(s) = seqlock::read_begin(seq) else {
                std::hint::spin_loop();
                continue;
            };
            let found = match shard.find(key, kh) {
                Probe::Hit { slot, rec } => {
                    shard.read_value(&rec, out);
                    Some(Some((slot, rec.expired(now))))
                }
                Probe::Miss => Some(None),
                Probe::Bad => None,
            };
            if seqlock::read_validate(seq, s) {
                // A validated `Bad` is real damage: the lock path repairs it.
                return found;
            }
        }
        None
    }

    /// The value of a fresh entry, or `None`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut out = Vec::new();
        Ok(self.get_into(key, &mut out)?.then_some(out))
    }

    /// Copies the value of a fresh entry into `buf` (replacing its contents) and returns
    /// true; false and `buf` unspecified if there is none. Allocates only if `buf`'s
    /// capacity is too small.
    pub fn get_into(&self, key: &[u8], buf: &mut Vec<u8>) -> Result<bool> {
        Ok(self.read(key, buf, Expired::Hide, Wait::Yes, Count::Yes)? == Found::Fresh)
    }

    /// Like [`Cache::get`], but returns an expired value too, flagged, for
    /// serve-stale-on-error.
    pub fn get_stale(&self, key: &[u8]) -> Result<Option<StaleValue>> {
        self.get_stale_waiting(key, Wait::Yes)
    }

    /// Like [`Cache::get_stale`], but never waits for a lock ([`Error::WouldBlock`], as
    /// [`Cache::try_get`]).
    pub fn try_get_stale(&self, key: &[u8]) -> Result<Option<StaleValue>> {
        self.get_stale_waiting(key, Wait::No)
    }

    fn get_stale_waiting(&self, key: &[u8], wait: Wait) -> Result<Option<StaleValue>> {
        let mut out = Vec::new();
        Ok(
            match self.read(key, &mut out, Expired::Serve, wait, Count::Yes)? {
                Found::Fresh => Some(StaleValue {
                    value: out,
                    expired: false,
                }),
                Found::Expired => Some(StaleValue {
                    value: out,
                    expired: true,
                }),
                Found::Nothing => None,
            },
        )
    }

    /// Like [`Cache::get_into`], but never waits for a lock ([`Error::WouldBlock`], as
    /// [`Cache::try_get`]).
    pub fn try_get_into(&self, key: &[u8], buf: &mut Vec<u8>) -> Result<bool> {
        Ok(self.read(key, buf, Expired::Hide, Wait::No, Count::Yes)? == Found::Fresh)
    }

    /// Like [`Cache::get`], but never waits for a lock: [`Error::WouldBlock`] if the read
    /// needs the shard lock and another process holds it.
    pub fn try_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let mut out = Vec::new();
        let found = self.read(key, &mut out, Expired::Hide, Wait::No, Count::Yes)?;
        Ok((found == Found::Fresh).then_some(out))
    }

    /// [`Cache::try_get_into`] that counts a hit but not a miss: the inline first step
    /// of a fill made in two steps (a binding that looks a key up on an event loop, then
    /// begins the fill with [`Cache::begin_fill`] on another thread on a miss), where
    /// `begin_fill`'s own lookup counts the miss, so that the lookup counts once.
    pub fn try_get_into_counting_hits(&self, key: &[u8], buf: &mut Vec<u8>) -> Result<bool> {
        Ok(self.read(key, buf, Expired::Hide, Wait::No, Count::Hit)? == Found::Fresh)
    }

    fn write_set(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
        when: Store,
        wait: Wait,
    ) -> Result<SetOutcome> {
        let (a, now) = self.enter_at(wait)?;
        Self::check_key(&a, key)?;
        Self::check_value(&a, value.len())?;
        let expire = Self::expiry(now, ttl);
        let h = a.hasher.hash(key);
        let idx = a.geo.shard_of(h);
        self.locked(&a, idx, wait, Access::Revoke(h), |s| {
            let kh = s.locate(h);
            let put = match when {
                Store::Always => Put::Always,
                Store::IfAbsent => Put::IfAbsent,
            };
            s.set(key, &kh, value, expire, put, now)
        })
    }

    /// Stores `value` under `key`, replacing any entry, with an optional TTL. Evicts
    /// older entries if the shard is full.
    pub fn set(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<()> {
        self.write_set(key, value, ttl, Store::Always, Wait::Yes)
            .map(|_| ())
    }

    /// Like [`Cache::set`], but never waits for a lock ([`Error::WouldBlock`]).
    pub fn try_set(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<()> {
        self.write_set(key, value, ttl, Store::Always, Wait::No)
            .map(|_| ())
    }

    /// Stores `value` only if `key` has no fresh entry; true if it stored it.
    pub fn insert_if_absent(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        Ok(self.write_set(key, value, ttl, Store::IfAbsent, Wait::Yes)? != SetOutcome::Exists)
    }

    /// Like [`Cache::insert_if_absent`], but never waits for a lock
    /// ([`Error::WouldBlock`]).
    pub fn try_insert_if_absent(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
    ) -> Result<bool> {
        Ok(self.write_set(key, value, ttl, Store::IfAbsent, Wait::No)? != SetOutcome::Exists)
    }

    /// Adds `delta` to the counter at `key` and returns its new value, atomically for
    /// every process sharing the file (failed-login counters, rate limits).
    ///
    /// An absent or expired key is created as `init + delta` with `ttl`; later
    /// increments keep the entry's expiry, so a fixed-window limit ends on time. A
    /// counter is stored as exactly 8 bytes, a little-endian two's-complement `i64`
    /// ([`Cache::get`] returns those bytes); any other value is
    /// [`Error::NotACounter`], and a result outside `i64` is [`Error::Overflow`]: both
    /// change nothing. An increment is one locked step, so concurrent increments from
    /// any number of processes are never lost, and a writer killed in the middle of one
    /// leaves the counter before or after it, never torn and never dropped. A counter in
    /// use counts as read for eviction. Like any entry it can still be evicted from a
    /// full cache, or lost with a writer that dies while eviction moves it within a full log
    /// (the one entry such a crash may cost).
    ///
    /// ```
    /// # fn main() -> Result<(), larder::Error> {
    /// # let dir = std::env::temp_dir().join(format!("larder-doc-incr-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// use std::time::Duration;
    /// let cache = larder::Options::new().capacity(4 << 20).open(dir.join("limits"))?;
    /// // Five failed logins a minute per user, counted across every worker.
    /// let window = Some(Duration::from_secs(60));
    /// assert_eq!(cache.incr(b"fail:alice", 1, 0, window)?, 1);
    /// assert_eq!(cache.incr(b"fail:alice", 1, 0, window)?, 2);
    /// assert_eq!(cache.get(b"fail:alice")?, Some(2i64.to_le_bytes().to_vec()));
    /// cache.set(b"name", b"alice", None)?;
    /// assert!(matches!(
    ///     cache.incr(b"name", 1, 0, None),
    ///     Err(larder::Error::NotACounter { len: 5 })
    /// ));
    /// # drop(cache);
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(()) }
    /// ```
    pub fn incr(&self, key: &[u8], delta: i64, init: i64, ttl: Option<Duration>) -> Result<i64> {
        self.incr_waiting(key, (delta, init), ttl, Wait::Yes)
    }

    /// Like [`Cache::incr`], but never waits for a lock ([`Error::WouldBlock`]).
    pub fn try_incr(
        &self,
        key: &[u8],
        delta: i64,
        init: i64,
        ttl: Option<Duration>,
    ) -> Result<i64> {
        self.incr_waiting(key, (delta, init), ttl, Wait::No)
    }

    fn incr_waiting(
        &self,
        key: &[u8],
        (delta, init): (i64, i64),
        ttl: Option<Duration>,
        wait: Wait,
    ) -> Result<i64> {
        let (a, now) = self.enter_at(wait)?;
        Self::check_key(&a, key)?;
        Self::check_value(&a, COUNTER_LEN)?;
        let new_expire = Self::expiry(now, ttl);
        let h = a.hasher.hash(key);
        // Allocated before the critical section, which must not allocate.
        let mut buf = Vec::with_capacity(COUNTER_LEN);
        let counted = self.locked(&a, a.geo.shard_of(h), wait, Access::Revoke(h), |s| {
            table::incr(s, key, h, delta, init, new_expire, now, &mut buf)
        })?;
        match counted {
            Counted::To(v) => Ok(v),
            Counted::NotACounter(len) => Err(Error::NotACounter { len }),
            Counted::Overflow(value) => Err(Error::Overflow { value, delta }),
        }
    }

    /// The value of a fresh entry and its [`Version`], for a later
    /// [`Cache::set_if_version`] (memcached's `gets`).
    ///
    /// An entry that already has a version is read without a lock, as [`Cache::get`].
    /// Entries written by `set`, `insert_if_absent`, `replace` or `incr` carry none (so
    /// they cost no space for one); the first `get_versioned` of such an entry gives it
    /// one under the shard lock, by writing it again with its value and expiry. A
    /// versioned entry takes 8 bytes more in the log. Any write but `set_if_version`
    /// and `touch` (which keeps the version) leaves the entry without a version or with a
    /// new one, so a version is matched only by the entry it was read from. A
    /// `set_if_version` killed midway leaves the old value or the new one, never neither,
    /// and a `get_versioned` killed while it writes the entry again with its version
    /// leaves the entry as it was, in a full shard too.
    ///
    /// ```
    /// # fn main() -> Result<(), larder::Error> {
    /// # let dir = std::env::temp_dir().join(format!("larder-doc-cas-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// let cache = larder::Options::new().capacity(4 << 20).open(dir.join("nonces"))?;
    /// cache.set(b"nonces:alice", b"n1", None)?;
    /// // A read-modify-write that never loses a concurrent change.
    /// loop {
    ///     let (mut value, version) = cache.get_versioned(b"nonces:alice")?.unwrap();
    ///     value.extend_from_slice(b",n2");
    ///     if cache.set_if_version(b"nonces:alice", &value, None, version)? {
    ///         break;
    ///     }
    /// }
    /// assert_eq!(cache.get(b"nonces:alice")?.as_deref(), Some(&b"n1,n2"[..]));
    /// let (_, version) = cache.get_versioned(b"nonces:alice")?.unwrap();
    /// cache.set(b"nonces:alice", b"revoked", None)?;
    /// assert!(!cache.set_if_version(b"nonces:alice", b"n3", None, version)?);
    /// # drop(cache);
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(()) }
    /// ```
    pub fn get_versioned(&self, key: &[u8]) -> Result<Option<(Vec<u8>, Version)>> {
        self.get_versioned_waiting(key, Wait::Yes)
    }

    /// Like [`Cache::get_versioned`], but never waits for a lock ([`Error::WouldBlock`]
    /// where it would: another process holds the shard lock it needs, to read or to give
    /// the entry its first version).
    pub fn try_get_versioned(&self, key: &[u8]) -> Result<Option<(Vec<u8>, Version)>> {
        self.get_versioned_waiting(key, Wait::No)
    }

    fn get_versioned_waiting(&self, key: &[u8], wait: Wait) -> Result<Option<(Vec<u8>, Version)>> {
        let (a, now) = self.enter_at(wait)?;
        Self::check_key(&a, key)?;
        let h = a.hasher.hash(key);
        let idx = a.geo.shard_of(h);
        let shard = Shard::new(&a.region, &a.geo, idx, &a.hasher);
        let kh = shard.locate(h);
        let mut out = Vec::new();
        let optimistic = match a.region.atomic(shard.seq_off()) {
            Some(seq) => Self::read_versioned_optimistic(&shard, seq, key, &kh, &mut out, now),
            None => None,
        };
        let found = match optimistic {
            Some(found) => found,
            None => self.locked(&a, idx, wait, Access::Write, |s| {
                table::read_versioned(s, key, h, &mut out, now)
            })?,
        };
        let version = |number| Version {
            file: a.hasher.file_id(),
            shard: idx as u32,
            number,
        };
        Ok(match found {
            Some(number) => {
                stats::bump(&a, SS_HITS);
                Some((out, version(number)))
            }
            None => {
                stats::bump(&a, SS_MISSES);
                None
            }
        })
    }

    /// The optimistic part of `get_versioned` (the loop of [`Cache::read_optimistic`],
    /// kept apart: sharing it through a closure measured 5 to 10 more instructions per
    /// get hit): `Some(None)` for no fresh entry,
    /// `Some(Some(version))` for a versioned one, `None` if it must take the lock (an
    /// entry without a version, or too many torn tries).
    fn read_versioned_optimistic(
        shard: &Shard<'_>,
        seq: &core::sync::atomic::AtomicU64,
        key: &[u8],
        kh: &KeyHash,
        out: &mut Vec<u8>,
        now: u64,
    ) -> Option<Option<u64>> {
        for _ in 0..OPTIMISTIC_TRIES {
            let Some(s) = seqlock::read_begin(seq) else {
                std::hint::spin_loop();
                continue;
            };
            let found = match shard.find(key, kh) {
                Probe::Hit { slot, rec } if !rec.expired(now) => {
                    shard.read_value(&rec, out);
                    shard.version(&rec).map(|v| (slot, Some(v)))
                }
                Probe::Hit { .. } | Probe::Miss => Some((usize::MAX, None)),
                Probe::Bad => None,
            };
            if seqlock::read_validate(seq, s) {
                let (slot, version) = found?;
                if version.is_some() {
                    shard.mark_visited(slot);
                }
                return Some(version);
            }
        }
        None
    }

    /// Stores `value` only if `key`'s fresh entry still has `version` (memcached's
    /// `cas`); true if it stored it, and the entry then has a new version. False if
    /// the entry was changed, removed, expired or evicted since `version` was read, or
    /// if `version` came from another file. See [`Cache::get_versioned`].
    pub fn set_if_version(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
        version: Version,
    ) -> Result<bool> {
        self.set_if_version_waiting(key, (value, ttl), version, Wait::Yes)
    }

    /// Like [`Cache::set_if_version`], but never waits for a lock
    /// ([`Error::WouldBlock`]).
    pub fn try_set_if_version(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
        version: Version,
    ) -> Result<bool> {
        self.set_if_version_waiting(key, (value, ttl), version, Wait::No)
    }

    fn set_if_version_waiting(
        &self,
        key: &[u8],
        (value, ttl): (&[u8], Option<Duration>),
        version: Version,
        wait: Wait,
    ) -> Result<bool> {
        let (a, now) = self.enter_at(wait)?;
        Self::check_key(&a, key)?;
        Self::check_value(&a, value.len())?;
        let h = a.hasher.hash(key);
        let idx = a.geo.shard_of(h);
        // Numbers are unique within a shard: one read from another shard (another key)
        // or another file matches nothing.
        if version.file != a.hasher.file_id() || version.shard as usize != idx {
            return Ok(false);
        }
        let expire = Self::expiry(now, ttl);
        let stored = self.locked(&a, idx, wait, Access::Revoke(h), |s| {
            table::set_if_version(s, key, h, value, expire, version.number, now)
        })?;
        Ok(stored.is_some())
    }

    /// Stores `value` only if `key` has a fresh entry (memcached's `replace`); true if
    /// it stored it. Never creates an entry, so it cannot bring back one that was just
    /// removed.
    ///
    /// ```
    /// # fn main() -> Result<(), larder::Error> {
    /// # let dir = std::env::temp_dir().join(format!("larder-doc-replace-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// let cache = larder::Options::new().capacity(4 << 20).open(dir.join("sessions"))?;
    /// assert!(!cache.replace(b"session:1", b"v2", None)?); // nothing to replace
    /// cache.set(b"session:1", b"v1", None)?;
    /// assert!(cache.replace(b"session:1", b"v2", None)?);
    /// assert_eq!(cache.get(b"session:1")?.as_deref(), Some(&b"v2"[..]));
    /// # drop(cache);
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(()) }
    /// ```
    pub fn replace(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<bool> {
        self.replace_waiting(key, value, ttl, Wait::Yes)
    }

    /// Like [`Cache::replace`], but never waits for a lock ([`Error::WouldBlock`]).
    pub fn try_replace(&self, key: &[u8], value: &[u8], ttl: Option<Duration>) -> Result<bool> {
        self.replace_waiting(key, value, ttl, Wait::No)
    }

    fn replace_waiting(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
        wait: Wait,
    ) -> Result<bool> {
        let (a, now) = self.enter_at(wait)?;
        Self::check_key(&a, key)?;
        Self::check_value(&a, value.len())?;
        let expire = Self::expiry(now, ttl);
        let h = a.hasher.hash(key);
        self.locked(&a, a.geo.shard_of(h), wait, Access::Revoke(h), |s| {
            table::replace(s, key, h, value, expire, now)
        })
    }

    /// Looks up every key of `keys` in one call: `bufs[i]` receives the value of
    /// `keys[i]` and `found[i]` says whether it has a fresh one. Returns how many did.
    /// Hits take no lock, as [`Cache::get_into`]; buffers are reused, so nothing is
    /// allocated unless a buffer is too small. The path is checked once for the whole
    /// call, and each group of keys has its index lines fetched together before any is
    /// read. `bufs` and `found` must be as long as `keys`
    /// ([`Error::InvalidArgument`] otherwise).
    ///
    /// ```
    /// # fn main() -> Result<(), larder::Error> {
    /// # let dir = std::env::temp_dir().join(format!("larder-doc-many-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// let cache = larder::Options::new().capacity(4 << 20).open(dir.join("tokens"))?;
    /// cache.set(b"a", b"1", None)?;
    /// cache.set(b"c", b"3", None)?;
    /// let keys = [&b"a"[..], b"b", b"c"];
    /// let mut bufs: Vec<Vec<u8>> = keys.iter().map(|_| Vec::with_capacity(64)).collect();
    /// let mut found = [false; 3];
    /// assert_eq!(cache.get_many_into(&keys, &mut bufs, &mut found)?, 2);
    /// assert_eq!(found, [true, false, true]);
    /// assert_eq!(bufs[2], b"3");
    /// # drop(cache);
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(()) }
    /// ```
    pub fn get_many_into<K: AsRef<[u8]>>(
        &self,
        keys: &[K],
        bufs: &mut [Vec<u8>],
        found: &mut [bool],
    ) -> Result<usize> {
        if bufs.len() != keys.len() || found.len() != keys.len() {
            return Err(Error::InvalidArgument(format!(
                "get_many_into: {} keys, {} buffers, {} found flags",
                keys.len(),
                bufs.len(),
                found.len()
            )));
        }
        let (a, now) = self.enter_at(Wait::Yes)?;
        for key in keys {
            Self::check_key(&a, key.as_ref())?;
        }
        let mut hits = 0;
        let mut start = 0;
        while start < keys.len() {
            let end = (start + MANY_GROUP).min(keys.len());
            let mut located = [(0usize, None::<KeyHash>); MANY_GROUP];
            for (i, key) in keys[start..end].iter().enumerate() {
                let h = a.hasher.hash(key.as_ref());
                let idx = a.geo.shard_of(h);
                let shard = Shard::new(&a.region, &a.geo, idx, &a.hasher);
                let kh = shard.locate(h);
                shard.prefetch_buckets(&kh);
                located[i] = (idx, Some(kh));
            }
            for (i, key) in keys[start..end].iter().enumerate() {
                let (idx, Some(kh)) = located[i] else {
                    continue;
                };
                let got = self.read_located(
                    &a,
                    now,
                    key.as_ref(),
                    (idx, kh),
                    &mut bufs[start + i],
                    (Expired::Hide, Count::Yes),
                    Wait::Yes,
                )?;
                found[start + i] = got == Found::Fresh;
                hits += usize::from(found[start + i]);
            }
            start = end;
        }
        Ok(hits)
    }

    /// [`Cache::get`] of every key of `keys`, in order: see [`Cache::get_many_into`],
    /// which reuses the caller's buffers.
    pub fn get_many<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<Vec<Option<Vec<u8>>>> {
        let mut bufs = vec![Vec::new(); keys.len()];
        let mut found = vec![false; keys.len()];
        self.get_many_into(keys, &mut bufs, &mut found)?;
        Ok(bufs
            .into_iter()
            .zip(found)
            .map(|(v, hit)| hit.then_some(v))
            .collect())
    }

    /// Removes `key`; true if a fresh entry was removed. Whether or not there was one,
    /// every fill of `key` in flight is fenced off (see [`Cache::ticket`]): a remove
    /// that finds nothing still revokes.
    pub fn remove(&self, key: &[u8]) -> Result<bool> {
        let (a, now) = self.enter_at(Wait::Yes)?;
        Self::check_key(&a, key)?;
        self.remove_in(&a, key, now, Wait::Yes)
    }

    /// Like [`Cache::remove`], but never waits for a lock ([`Error::WouldBlock`]).
    pub fn try_remove(&self, key: &[u8]) -> Result<bool> {
        let (a, now) = self.enter_at(Wait::No)?;
        Self::check_key(&a, key)?;
        self.remove_in(&a, key, now, Wait::No)
    }

    /// [`Cache::remove`] in the file `a` maps (the near cache's lease removes in its own
    /// file, whatever the handle maps by then).
    pub(crate) fn remove_in(&self, a: &Attached, key: &[u8], now: u64, wait: Wait) -> Result<bool> {
        let h = a.hasher.hash(key);
        self.locked(a, a.geo.shard_of(h), wait, Access::Revoke(h), |s| {
            let kh = s.locate(h);
            s.remove(key, &kh, now)
        })
    }

    /// The time a fresh entry has left: `None` if there is no fresh entry, `Some(None)`
    /// if it has no expiry (`ngx.shared.DICT`'s `ttl`). Takes the key's shard lock.
    pub fn ttl(&self, key: &[u8]) -> Result<Option<Option<Duration>>> {
        self.ttl_waiting(key, Wait::Yes)
    }

    /// Like [`Cache::ttl`], but never waits for a lock ([`Error::WouldBlock`]).
    pub fn try_ttl(&self, key: &[u8]) -> Result<Option<Option<Duration>>> {
        self.ttl_waiting(key, Wait::No)
    }

    fn ttl_waiting(&self, key: &[u8], wait: Wait) -> Result<Option<Option<Duration>>> {
        let (a, now) = self.enter_at(wait)?;
        Self::check_key(&a, key)?;
        let h = a.hasher.hash(key);
        let expire = self.locked(&a, a.geo.shard_of(h), wait, Access::Read, |s| {
            match s.find(key, &s.locate(h)) {
                Probe::Hit { rec, .. } if !rec.expired(now) => Ok(Some(rec.expire)),
                Probe::Hit { .. } | Probe::Miss => Ok(None),
                Probe::Bad => Err(Damaged("index slot points at no live record".into())),
            }
        })?;
        Ok(expire.map(|e| (e != 0).then(|| Duration::from_millis(e - now))))
    }

    /// Gives a fresh entry a new TTL (`None`: no expiry); false if there is none.
    pub fn touch(&self, key: &[u8], ttl: Option<Duration>) -> Result<bool> {
        self.touch_waiting(key, ttl, Wait::Yes)
    }

    /// Like [`Cache::touch`], but never waits for a lock ([`Error::WouldBlock`]).
    pub fn try_touch(&self, key: &[u8], ttl: Option<Duration>) -> Result<bool> {
        self.touch_waiting(key, ttl, Wait::No)
    }

    fn touch_waiting(&self, key: &[u8], ttl: Option<Duration>, wait: Wait) -> Result<bool> {
        let (a, now) = self.enter_at(wait)?;
        Self::check_key(&a, key)?;
        let expire = Self::expiry(now, ttl);
        let h = a.hasher.hash(key);
        self.locked(&a, a.geo.shard_of(h), wait, Access::Write, |s| {
            let kh = s.locate(h);
            s.touch(key, &kh, expire, now)
        })
    }

    /// Removes every entry whose key starts with one of `prefixes` (every entry if one is
    /// empty) in the file `a` maps, shard by shard, fencing off every fill in flight in
    /// each; returns how many there were.
    pub(crate) fn remove_prefixed_in(&self, a: &Attached, prefixes: &[&[u8]]) -> Result<u64> {
        let everything = prefixes.iter().any(|p| p.is_empty());
        let now = self.now_ms();
        let mut n = 0;
        let mut first_error = None;
        // A shard that fails (a lock held past its timeout) does not keep the others'
        // entries: every shard is tried, then the first error is returned.
        for idx in 0..a.geo.shard_count {
            match self.locked(a, idx, Wait::Yes, Access::RevokeAll, |s| {
                if everything {
                    Ok(s.clear())
                } else {
                    table::remove_prefixed(s, &a.hasher, prefixes, now)
                }
            }) {
                Ok(removed) => n += removed,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(n),
        }
    }

    /// Removes every entry, shard by shard; returns how many there were. Every fill in
    /// flight is fenced off (see [`Cache::ticket`]).
    pub fn clear(&self) -> Result<u64> {
        let a = self.enter(Wait::Yes)?;
        let mut n = 0;
        for idx in 0..a.geo.shard_count {
            n += self.locked(&a, idx, Wait::Yes, Access::RevokeAll, |s| Ok(s.clear()))?;
        }
        Ok(n)
    }

    /// Removes every entry of shard `shard` (`0..`[`Cache::shard_count`]), fencing off
    /// every fill in flight in it, and returns how many there were; never waits for its
    /// lock ([`Error::WouldBlock`]). An event loop clears the cache with it shard by
    /// shard, retrying a busy shard later, where [`Cache::clear`] would wait.
    /// [`Error::InvalidArgument`] for a shard the cache does not have.
    pub fn try_clear_shard(&self, shard: usize) -> Result<u64> {
        let a = self.enter(Wait::No)?;
        if shard >= a.geo.shard_count {
            return Err(Error::InvalidArgument(format!(
                "shard {shard} out of range: the cache has {} shards",
                a.geo.shard_count
            )));
        }
        self.locked(&a, shard, Wait::No, Access::RevokeAll, |s| Ok(s.clear()))
    }

    /// The value for `key`, computed by `f` and stored if missing, with at most one
    /// process computing it at a time (single flight).
    ///
    /// The computing process holds a fill slot (a robust mutex, never a shard lock)
    /// while `f` runs. Others wanting the same key wait for it up to the fill timeout,
    /// then read the value it stored, or get [`Error::Timeout`]. If the filler dies, the
    /// next waiter computes instead. If `f` fails, its error goes to this caller,
    /// nothing is stored, and a waiter tries next. While another process refreshes an
    /// expired entry, its stale value is returned at once instead of waiting.
    ///
    /// Keys share 256 fill slots by hash, so an unrelated key's fill can delay this one
    /// (never beyond the fill timeout). `f` must not call `get_or_insert_with` for a key
    /// in the same slot: that waits for itself until the timeout.
    ///
    /// A fill is fenced like [`Cache::set_with_ticket`]: if the key is revoked while `f`
    /// runs (a `remove`, even one that found nothing, a `set`, `insert_if_absent`,
    /// `replace`, `incr`, `set_if_version` or `clear`, from any process), the value `f`
    /// computed is returned to this caller but not stored, so the next reader sees the
    /// revocation, never a value computed from the state before it. Such fills are
    /// counted in [`Stats::fills_fenced`].
    ///
    /// ```
    /// # fn main() -> Result<(), larder::Error> {
    /// # let dir = std::env::temp_dir().join(format!("larder-doc-fill-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// # let path = dir.join("tokens");
    /// let cache = larder::Options::new().capacity(4 << 20).open(path.to_str().unwrap())?;
    /// let claims = cache.get_or_insert_with(b"token:xyz", None, || {
    ///     Ok::<_, larder::Error>(b"user=alice".to_vec()) // validate the token here
    /// })?;
    /// assert_eq!(claims, b"user=alice");
    /// # drop(cache);
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(()) }
    /// ```
    pub fn get_or_insert_with<F, E>(
        &self,
        key: &[u8],
        ttl: Option<Duration>,
        f: F,
    ) -> Result<Vec<u8>, E>
    where
        F: FnOnce() -> Result<Vec<u8>, E>,
        E: From<Error>,
    {
        let mut out = Vec::new();
        match self.begin_fill(key, &mut out)? {
            Begin::Fresh | Begin::Stale => Ok(out),
            Begin::Fill(fill) => {
                // On an error of `f`, dropping the fill lets a waiter try next.
                let value = f()?;
                fill.complete(&value, ttl)?;
                Ok(value)
            }
        }
    }

    /// [`Cache::get_or_insert_with`] in two steps, for callers that cannot pass a
    /// closure (a binding whose fill runs in its own language, an event loop that
    /// computes the value in a coroutine): looks `key` up, and on a miss claims its fill.
    ///
    /// [`Begin::Fresh`] and [`Begin::Stale`] (an expired value, served while another
    /// process refreshes it) copy the value into `out`. [`Begin::Fill`] hands this caller
    /// the key's fill: others wanting the key wait for it (up to the fill timeout), and
    /// the caller computes the value and stores it with [`Fill::complete`], fenced like
    /// every fill, or drops the [`Fill`] to let a waiter compute instead. Fails with
    /// [`Error::Timeout`] if another process's fill lasted longer than the fill timeout.
    /// The lookup counts once in the statistics, as a hit, a stale hit or a miss.
    ///
    /// The fill slot is a robust mutex of the calling thread: a `Fill` is completed or
    /// dropped by the thread that began it (it is not `Send`), and a thread or process
    /// that dies holding one hands the fill over to the next caller.
    ///
    /// ```
    /// # fn main() -> Result<(), larder::Error> {
    /// # let dir = std::env::temp_dir().join(format!("larder-doc-begin-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// use larder::Begin;
    /// let cache = larder::Options::new().capacity(4 << 20).open(dir.join("tokens"))?;
    /// let mut claims = Vec::new();
    /// match cache.begin_fill(b"token:xyz", &mut claims)? {
    ///     Begin::Fresh | Begin::Stale => {} // `claims` holds the value
    ///     Begin::Fill(fill) => {
    ///         claims = b"user=alice".to_vec(); // validate the token here
    ///         let stored = fill.complete(&claims, None)?; // false if revoked meanwhile
    ///         assert!(stored);
    ///     }
    /// }
    /// assert_eq!(cache.get(b"token:xyz")?.as_deref(), Some(&b"user=alice"[..]));
    /// # drop(cache);
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(()) }
    /// ```
    pub fn begin_fill(&self, key: &[u8], out: &mut Vec<u8>) -> Result<Begin> {
        self.begin_fill_waiting(key, out, Wait::Yes)
    }

    /// [`Cache::begin_fill`] without waiting: [`Error::WouldBlock`] where it would wait
    /// for a lock (a shard lock, or another process's fill of a key without a stale
    /// value to serve).
    pub fn try_begin_fill(&self, key: &[u8], out: &mut Vec<u8>) -> Result<Begin> {
        self.begin_fill_waiting(key, out, Wait::No)
    }

    fn begin_fill_waiting(&self, key: &[u8], out: &mut Vec<u8>, wait: Wait) -> Result<Begin> {
        // One lookup, counted once: a hit, a stale hit (served while another process
        // refreshes the entry) or a miss (whoever then computes the value).
        out.clear();
        let stale = match self.read(key, out, Expired::Serve, wait, Count::Hit)? {
            Found::Fresh => return Ok(Begin::Fresh),
            Found::Expired => true,
            Found::Nothing => false,
        };
        // The fill holds its mapping (where its slot is) until it ends.
        let a = Held::enter(Arc::clone(&self.inner), |inner| &inner.maps);
        let h = a.hasher.hash(key);
        let slot = fence::fill_slot_of(h);
        const WHAT: &str = "a fill slot";
        let m = RobustMutex::at(&a.region, a.geo.fill_slot(slot), a.kind)
            .map_err(|e| e.into_error(&a.path, WHAT, Duration::ZERO, wait))?;
        let guard = match m.try_lock() {
            Err(LockError::Busy) => {
                if stale {
                    // Another process is refreshing it: serve the stale value meanwhile.
                    stats::bump(&a, SS_STALE_HITS);
                    return Ok(Begin::Stale);
                }
                if wait == Wait::No {
                    return Err(Error::WouldBlock);
                }
                stats::bump(&a, SS_MISSES);
                let waited = self.inner.fill_timeout;
                match m.lock(waited) {
                    Ok(guard) => guard,
                    Err(LockError::Busy) => {
                        stats::bump(&a, SS_FILL_TIMEOUTS);
                        return Err(Error::Timeout {
                            what: "another process's fill of this key",
                            waited,
                        });
                    }
                    Err(e) => return Err(e.into_error(&a.path, WHAT, waited, Wait::Yes)),
                }
            }
            Err(e) => return Err(e.into_error(&a.path, WHAT, Duration::ZERO, wait)),
            Ok(guard) => {
                stats::bump(&a, SS_MISSES);
                guard
            }
        };
        // Held past the guard until the fill ends (the slot guards no shared data, so
        // a dead filler leaves nothing to repair: this caller computes instead).
        if guard.keep() {
            stats::bump(&a, SS_FILL_HANDOVERS);
        }
        let fill = Fill {
            held: a,
            slot,
            h,
            key: key.to_vec(),
            _not_send: core::marker::PhantomData,
        };
        // Someone may have filled it while this caller waited: look again, in the file
        // the fill will be stored in (dropping the fill releases the slot).
        out.clear();
        let a = &fill.held;
        let idx = a.geo.shard_of(h);
        let kh = Shard::new(&a.region, &a.geo, idx, &a.hasher).locate(h);
        let again = (Expired::Hide, Count::No);
        let now = self.now_ms();
        if self.read_located(a, now, key, (idx, kh), out, again, wait)? == Found::Fresh {
            return Ok(Begin::Fresh);
        }
        out.clear();
        // Before the value is computed: a revocation from here on fences the store off.
        fence::mark_fill(&a.region, &a.geo, h);
        crash_point!("fill.holding_slot");
        Ok(Begin::Fill(fill))
    }

    /// A ticket to store a value of `key` computed from now on, for cache-aside code of
    /// one's own (get, miss, compute, store): take it on a miss, *before* reading what
    /// the value is computed from, and store with [`Cache::set_with_ticket`].
    ///
    /// It closes the race that makes cache-aside undo revocations: a worker misses a
    /// token, reads its state (valid) and computes its claims; meanwhile another worker
    /// revokes the token at the source, then removes it here (finding nothing, or an
    /// older entry). A plain [`Cache::set`] of the claims would then serve the revoked
    /// token for the whole TTL. With a ticket, the store is refused: every write of a key
    /// but `touch` (a `remove`, found or not, `set`, `insert_if_absent`, `replace`,
    /// `incr`, `set_if_version`, `clear`), from any process, fences off the tickets of
    /// that key taken before it (memcached's leases). A ticket is a number: a process
    /// that dies holding one leaves nothing to clean up. Revoking a key also fences a
    /// few unrelated keys' tickets (64 classes a shard): their stores are refused
    /// (`false`), never wrong. [`Cache::get_or_insert_with`] takes one for each fill.
    ///
    /// ```
    /// # fn main() -> Result<(), larder::Error> {
    /// # let dir = std::env::temp_dir().join(format!("larder-doc-ticket-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// use std::time::Duration;
    /// let cache = larder::Options::new().capacity(4 << 20).open(dir.join("tokens"))?;
    /// let ttl = Some(Duration::from_secs(300));
    /// let claims = match cache.get(b"token:abc")? {
    ///     Some(claims) => claims,
    ///     None => {
    ///         let ticket = cache.ticket(b"token:abc")?; // before reading the source
    ///         let claims = b"user=alice".to_vec(); // validate the token here
    ///         // Meanwhile another worker revokes the token (here: this one).
    ///         cache.remove(b"token:abc")?;
    ///         let stored = cache.set_with_ticket(b"token:abc", &claims, ttl, ticket)?;
    ///         assert!(!stored); // the revocation wins
    ///         claims
    ///     }
    /// };
    /// assert_eq!(claims, b"user=alice"); // this caller still has its answer
    /// assert_eq!(cache.get(b"token:abc")?, None); // nobody is served it later
    /// # drop(cache);
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(()) }
    /// ```
    pub fn ticket(&self, key: &[u8]) -> Result<Ticket> {
        let a = self.enter(Wait::Yes)?;
        Self::check_key(&a, key)?;
        Ok(Self::ticket_in(&a, key))
    }

    /// Like [`Cache::ticket`], which takes no lock, but never waits for the periodic
    /// check of the file's path either ([`Error::WouldBlock`] while another thread of
    /// this process has been at that check for a whole check period).
    pub fn try_ticket(&self, key: &[u8]) -> Result<Ticket> {
        let a = self.enter(Wait::No)?;
        Self::check_key(&a, key)?;
        Ok(Self::ticket_in(&a, key))
    }

    /// A ticket for `key` in the file `a` maps.
    pub(crate) fn ticket_in(a: &Attached, key: &[u8]) -> Ticket {
        Ticket::take(&a.region, &a.geo, a.hasher.file_id(), a.hasher.hash(key))
    }

    /// Stores `value` under `key` (as [`Cache::set`]) only if no write revoked `key`
    /// since `ticket` was taken (see [`Cache::ticket`]); true if it stored it. False also
    /// for a ticket of a file the handle has since left (the file was replaced). A
    /// ticket taken for another key is [`Error::InvalidArgument`].
    pub fn set_with_ticket(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
        ticket: Ticket,
    ) -> Result<bool> {
        self.set_with_ticket_waiting((key, value, ttl), ticket, Wait::Yes)
    }

    /// Like [`Cache::set_with_ticket`], but never waits for a lock
    /// ([`Error::WouldBlock`]; the ticket stays good for a later try).
    pub fn try_set_with_ticket(
        &self,
        key: &[u8],
        value: &[u8],
        ttl: Option<Duration>,
        ticket: Ticket,
    ) -> Result<bool> {
        self.set_with_ticket_waiting((key, value, ttl), ticket, Wait::No)
    }

    fn set_with_ticket_waiting(
        &self,
        fill: (&[u8], &[u8], Option<Duration>),
        ticket: Ticket,
        wait: Wait,
    ) -> Result<bool> {
        let (a, now) = self.enter_at(wait)?;
        self.store_with_ticket(&a, now, fill, ticket, wait, || true)
    }

    /// [`Cache::set_with_ticket`] in the file `a` maps, which also stores only if
    /// `still` holds under the shard lock (the near cache's epoch).
    pub(crate) fn store_with_ticket(
        &self,
        a: &Attached,
        now: u64,
        fill: (&[u8], &[u8], Option<Duration>),
        ticket: Ticket,
        wait: Wait,
        still: impl Fn() -> bool,
    ) -> Result<bool> {
        Self::check_key(a, fill.0)?;
        Self::check_value(a, fill.1.len())?;
        if ticket.file != a.hasher.file_id() {
            return Ok(false);
        }
        if a.hasher.hash(fill.0) != ticket.hash {
            return Err(Error::InvalidArgument(
                "set_with_ticket: the ticket was taken for another key".into(),
            ));
        }
        self.store_fenced(a, now, fill, wait, |f| ticket.admitted(f) && still())
    }

    /// Stores a fill (as [`Cache::set`]) in the file `a` maps if `admits` says, under
    /// the shard lock, that no revocation fenced it off (see `fence`); true if it did.
    /// The caller has checked the key and the value's length.
    fn store_fenced(
        &self,
        a: &Attached,
        now: u64,
        (key, value, ttl): (&[u8], &[u8], Option<Duration>),
        wait: Wait,
        admits: impl Fn(&Fences<'_>) -> bool,
    ) -> Result<bool> {
        let h = a.hasher.hash(key);
        let expire = Self::expiry(now, ttl);
        let idx = a.geo.shard_of(h);
        let fences = Fences::of(&a.region, &a.geo, idx);
        // A store, not a revocation: two fills of one key (each computed after the last
        // revocation) do not fence each other.
        // Checked under the lock, which orders the check after every revocation that
        // took the lock before (see `fence`).
        self.locked(a, idx, wait, Access::Write, |s| {
            table::store_fenced(s, &fences, &admits, key, h, value, expire, now)
        })
    }

    /// The near-cache side of this cache (lease, heartbeat, tickets, invalidations),
    /// for a cache kept in front of another store: see [`near`](crate::near).
    pub fn near(&self) -> crate::near::Near<'_> {
        crate::near::Near::new(self)
    }

    /// The mapping this handle uses now, without the periodic check of its path.
    pub(crate) fn mapped(&self) -> Entered<'_> {
        self.inner.maps.enter()
    }

    /// Counters of the whole cache and of each shard.
    pub fn stats(&self) -> Stats {
        // The file this handle maps now, even if it is due for a check: counters of
        // the file it last used are still the truth about that file.
        stats::gather(&self.inner.maps.enter())
    }

    /// Checks every invariant of the file, shard by shard under each shard's lock, and
    /// reports each problem found. A shard whose last writer died is repaired first (as
    /// any locked operation does), so problems are corruption, not crashes.
    pub fn verify(&self) -> Result<Report> {
        let a = self.enter(Wait::Yes)?;
        let mut report = Report::default();
        crate::verify::header(&a, &mut report);
        for idx in 0..a.geo.shard_count {
            let problems = self.locked(&a, idx, Wait::Yes, Access::Read, |s| {
                let mut p = Vec::new();
                s.verify(&mut p);
                Ok(p)
            });
            match problems {
                Ok(problems) => {
                    for p in problems {
                        report.push(Some(idx), p);
                    }
                }
                // A shard that cannot be checked (its lock is damaged) is one problem;
                // the other shards are still checked.
                Err(Error::Corrupt { detail, .. }) => report.push(Some(idx), detail),
                Err(e) => return Err(e),
            }
        }
        Ok(report)
    }

    /// Rebuilds every shard from its logs under its lock (online: other processes keep
    /// working on the other shards meanwhile).
    pub fn repair(&self) -> Result<RepairReport> {
        let a = self.enter(Wait::Yes)?;
        let mut report = RepairReport::default();
        for idx in 0..a.geo.shard_count {
            report.dropped += self.locked(&a, idx, Wait::Yes, Access::Write, |s| Ok(s.repair()))?;
            report.shards += 1;
        }
        Ok(report)
    }

    /// Every entry, one shard at a time (each shard is locked only while its entries are
    /// copied out).
    pub fn entries(&self) -> Entries {
        Entries {
            cache: self.clone(),
            shard: 0,
            buf: Vec::new().into_iter(),
            done: false,
        }
    }

    fn shard_entries(&self, idx: usize) -> Result<Option<Vec<EntryInfo>>> {
        let (a, now) = self.enter_at(Wait::Yes)?;
        if idx >= a.geo.shard_count {
            return Ok(None);
        }
        let reserve = Shard::new(&a.region, &a.geo, idx, &a.hasher).counter(SH_ENTRIES) as usize;
        let mut list =
            Vec::with_capacity(reserve.min(a.geo.buckets * crate::layout::BUCKET_SLOTS) + 16);
        self.locked(&a, idx, Wait::Yes, Access::Read, |s| {
            list.clear();
            s.for_each(|rec| {
                let mut key = vec![0u8; rec.klen];
                s.read_key(rec, &mut key);
                list.push(EntryInfo {
                    shard: idx,
                    key,
                    value_len: rec.vlen,
                    ttl: (rec.expire != 0)
                        .then(|| Duration::from_millis(rec.expire.saturating_sub(now))),
                });
            });
            Ok(())
        })?;
        Ok(Some(list))
    }

    /// The number of shards of the file (the same as [`Limits::shards`]). Each has its
    /// own lock and memory; [`Stats::shards`] reports them one by one.
    pub fn shard_count(&self) -> usize {
        self.inner.maps.enter().geo.shard_count
    }

    /// The shard `key` lives in (`0..shard_count()`): writers of keys in different
    /// shards never contend, and a shard that fills evicts only its own entries. For
    /// spreading keys, or reading a hot shard's line in [`Stats::shards`].
    ///
    /// ```
    /// # fn main() -> Result<(), larder::Error> {
    /// # let dir = std::env::temp_dir().join(format!("larder-doc-shard-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// let cache = larder::Options::new().capacity(4 << 20).open(dir.join("shards"))?;
    /// cache.set(b"k", b"v", None)?;
    /// let shard = cache.shard_of(b"k");
    /// assert!(shard < cache.shard_count());
    /// assert_eq!(cache.stats().shards[shard].entries, 1);
    /// # drop(cache);
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(()) }
    /// ```
    pub fn shard_of(&self, key: &[u8]) -> usize {
        let a = self.inner.maps.enter();
        a.geo.shard_of(a.hasher.hash(key))
    }

    /// The fill slot of `key` (`0..256`): the robust mutex a [`Fill`] of `key` holds,
    /// shared by the keys of the same slot. A thread that holds a fill and wants another
    /// key's checks this first: [`Cache::begin_fill`] of a key whose slot the calling
    /// thread already holds waits for itself until the fill timeout.
    ///
    /// ```
    /// # fn main() -> Result<(), larder::Error> {
    /// # let dir = std::env::temp_dir().join(format!("larder-doc-slot-{}", std::process::id()));
    /// # std::fs::create_dir_all(&dir)?;
    /// let cache = larder::Options::new().capacity(4 << 20).open(dir.join("slots"))?;
    /// assert!(cache.fill_slot_of(b"k") < 256);
    /// assert_eq!(cache.fill_slot_of(b"k"), cache.fill_slot_of(b"k"));
    /// # drop(cache);
    /// # std::fs::remove_dir_all(&dir)?;
    /// # Ok(()) }
    /// ```
    pub fn fill_slot_of(&self, key: &[u8]) -> usize {
        let a = self.inner.maps.enter();
        fence::fill_slot_of(a.hasher.hash(key))
    }
}

/// Iterator over every entry, shard by shard; see [`Cache::entries`].
pub struct Entries {
    cache: Cache,
    shard: usize,
    buf: std::vec::IntoIter<EntryInfo>,
    done: bool,
}

impl Iterator for Entries {
    type Item = Result<EntryInfo>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(e) = self.buf.next() {
                return Some(Ok(e));
            }
            if self.done {
                return None;
            }
            match self.cache.shard_entries(self.shard) {
                Ok(Some(list)) => {
                    self.shard += 1;
                    self.buf = list.into_iter();
                }
                Ok(None) => {
                    self.done = true;
                    return None;
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}
