//! The builder that creates or attaches to a cache.

use std::path::Path;
use std::time::Duration;

use crate::cache::Cache;
use crate::clock::Clock;
use crate::error::Result;
use crate::layout::Params;

/// Default capacity: 32 MiB (Docker's default /dev/shm is 64 MiB).
pub const DEFAULT_CAPACITY: u64 = 32 << 20;
/// Default key limit.
pub const DEFAULT_MAX_KEY_LEN: usize = 256;
/// Default value limit.
pub const DEFAULT_MAX_VALUE_LEN: usize = 64 << 10;
/// Default expected entry size (key + value + 16 bytes of record header).
pub const DEFAULT_EXPECTED_ENTRY: usize = 320;
/// Default shard lock deadline.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_millis(500);
/// Default single-flight wait.
pub const DEFAULT_FILL_TIMEOUT: Duration = Duration::from_secs(5);

/// What [`Options::open`] does with an existing file created with other parameters
/// (capacity, key or value limit, shards, expected entry size): the choice a deploy that
/// changes them makes.
///
/// Under a prefork server, old and new workers start side by side during a deploy, so
/// the rule must not flap between the two versions' files. [`Mismatch::Replace`]
/// replaces only a file *older* than the options: one of a lower
/// [`generation`](Options::generation), or, at the same generation, one whose limits
/// (capacity, longest key, longest value) are none larger than the options' and one
/// smaller. A file only ever gets newer, so the new version's first worker replaces the
/// old file once, every old worker (starting later, or already attached) ends on the
/// new file, and nothing replaces it back. Attached handles follow a replacement within
/// their check period (250 ms), with its parameters.
///
/// ```
/// # fn main() -> Result<(), larder::Error> {
/// # let dir = std::env::temp_dir().join(format!("larder-doc-mismatch-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// # let path = dir.join("authz");
/// use larder::{Mismatch, Opened, Options};
/// let old = Options::new().capacity(4 << 20).open(&path)?;
/// // The next deploy asks for a larger file: its first worker replaces the old one.
/// let new = Options::new().capacity(8 << 20).on_mismatch(Mismatch::Replace);
/// let worker = new.open(&path)?;
/// assert_eq!(worker.opened(), Opened::Replaced);
/// assert_eq!(worker.limits().capacity, 8 << 20);
/// // An old worker starting now attaches to the newer file, with its parameters.
/// let late = Options::new().capacity(4 << 20).on_mismatch(Mismatch::Replace).open(&path)?;
/// assert_eq!((late.opened(), late.limits().capacity), (Opened::Attached, 8 << 20));
/// # drop((old, worker, late));
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Mismatch {
    /// Fail with [`Error::Incompatible`](crate::Error::Incompatible) (the default): a
    /// parameter change needs the file removed first (`larder rm`).
    #[default]
    Fail,
    /// Attach to the file with its own parameters (a value over its limit is then
    /// [`Error::TooLarge`](crate::Error::TooLarge)).
    Attach,
    /// Replace the file if it is older than the options (see above), atomically: the new
    /// file is built under no name and renamed over it, keeping its owner, group and
    /// mode; otherwise attach with its own parameters. Only a process of the file's
    /// owner's uid, or root, replaces it (another uid's file would be refused by the
    /// pool's other uids): others attach. Both files take space until the old one's last
    /// process has moved; where the file system has no room for that, the open attaches
    /// to the old file with its own parameters instead of failing.
    Replace,
}

/// What the open that made a handle did: see [`Cache::opened`](crate::Cache::opened).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Opened {
    /// There was no file: this open created it.
    Created,
    /// It attached to the file there.
    Attached,
    /// It replaced a file of other parameters ([`Mismatch::Replace`]).
    Replaced,
}

/// How to create or attach to a cache.
///
/// Creation parameters (capacity, limits, shards, expected entry size) are fixed in the
/// file when it is created; a later `open` with other values fails with
/// [`Error::Incompatible`](crate::Error::Incompatible), never resizes. Runtime settings
/// (timeouts, clock) are the handle's own.
///
/// ```
/// # fn main() -> Result<(), larder::Error> {
/// # let dir = std::env::temp_dir().join(format!("larder-doc-options-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// # let path = dir.join("authz");
/// use std::time::Duration;
/// let cache = larder::Options::new()
///     .capacity(4 << 20)
///     .max_key_len(128)
///     .max_value_len(4096)
///     .lock_timeout(Duration::from_millis(200))
///     .open(path.to_str().unwrap())?;
/// cache.set(b"k", b"v", None)?;
/// # drop(cache);
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Options {
    pub(crate) params: Params,
    pub(crate) lock_timeout: Duration,
    pub(crate) fill_timeout: Duration,
    pub(crate) mode: u32,
    pub(crate) group: Option<u32>,
    pub(crate) generation: u64,
    pub(crate) on_mismatch: Mismatch,
    pub(crate) allow_uids: Vec<u32>,
    pub(crate) clock: Clock,
}

impl Default for Options {
    fn default() -> Self {
        Options::new()
    }
}

impl Options {
    /// The defaults: 32 MiB, keys up to 256 bytes, values up to 64 KiB, shards picked
    /// from the capacity, lock timeout 500 ms, fill timeout 5 s, mode 0600.
    pub fn new() -> Options {
        Options {
            params: Params {
                capacity: DEFAULT_CAPACITY,
                max_key_len: DEFAULT_MAX_KEY_LEN,
                max_value_len: DEFAULT_MAX_VALUE_LEN,
                shards: 0,
                expected_entry: DEFAULT_EXPECTED_ENTRY,
            },
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            fill_timeout: DEFAULT_FILL_TIMEOUT,
            mode: 0o600,
            group: None,
            generation: 0,
            on_mismatch: Mismatch::Fail,
            allow_uids: Vec::new(),
            clock: Clock::system(),
        }
    }

    /// Bytes of the file at most, fixed at creation (default 32 MiB); the file is this
    /// size rounded down to whole pages per shard. The space is reserved at creation, so
    /// a full tmpfs fails then with [`Error::NoSpace`](crate::Error::NoSpace).
    ///
    /// ```
    /// let opts = larder::Options::new().capacity(64 << 20);
    /// ```
    pub fn capacity(mut self, bytes: u64) -> Options {
        self.params.capacity = bytes;
        self
    }

    /// Longest key in bytes (default 256, at most 4096).
    ///
    /// ```
    /// let opts = larder::Options::new().max_key_len(64);
    /// ```
    pub fn max_key_len(mut self, bytes: usize) -> Options {
        self.params.max_key_len = bytes;
        self
    }

    /// Longest value in bytes (default 64 KiB). It must fit comfortably in one shard: the
    /// largest record must fit eight times in a shard's main log.
    ///
    /// ```
    /// let opts = larder::Options::new().max_value_len(1024);
    /// ```
    pub fn max_value_len(mut self, bytes: usize) -> Options {
        self.params.max_value_len = bytes;
        self
    }

    /// Number of shards, a power of two (default: the most, up to 256, that leave each
    /// shard at least 512 KiB, and fewer if the largest value would not fit).
    ///
    /// ```
    /// let opts = larder::Options::new().shards(16);
    /// ```
    pub fn shards(mut self, n: usize) -> Options {
        self.params.shards = n;
        self
    }

    /// Bytes one entry with a key of `key_len` and a value of `value_len` bytes occupies
    /// in a shard's log: a 16-byte record header, then key and value, each padded to a
    /// multiple of 8. For sizing a cache's capacity and
    /// [`expected_entry_size`](Options::expected_entry_size).
    ///
    /// ```
    /// assert_eq!(larder::Options::entry_size(32, 256), 16 + 32 + 256);
    /// assert_eq!(larder::Options::entry_size(5, 1), 16 + 8 + 8);
    /// ```
    pub fn entry_size(key_len: usize, value_len: usize) -> usize {
        crate::layout::record_size(key_len, value_len)
    }

    /// Typical bytes per entry, key + value + 16 (default 320): sizes the index so that
    /// a shard full of such entries uses 80% of its slots. Smaller entries than this
    /// fill the index before the logs.
    ///
    /// ```
    /// let opts = larder::Options::new().expected_entry_size(1100);
    /// ```
    pub fn expected_entry_size(mut self, bytes: usize) -> Options {
        self.params.expected_entry = bytes;
        self
    }

    /// How long an operation waits for a shard lock before
    /// [`Error::Timeout`](crate::Error::Timeout) (default 500 ms). Also bounds the wait
    /// for the file lock at open.
    ///
    /// ```
    /// let opts = larder::Options::new().lock_timeout(std::time::Duration::from_millis(50));
    /// ```
    pub fn lock_timeout(mut self, timeout: std::time::Duration) -> Options {
        self.lock_timeout = timeout;
        self
    }

    /// How long `get_or_insert_with` waits for another process computing the same key
    /// (default 5 s).
    ///
    /// ```
    /// let opts = larder::Options::new().fill_timeout(std::time::Duration::from_secs(1));
    /// ```
    pub fn fill_timeout(mut self, timeout: std::time::Duration) -> Options {
        self.fill_timeout = timeout;
        self
    }

    /// File mode at creation (default `0o600`); applied with `fchmod`, so the umask does
    /// not narrow it. World-writable modes are refused.
    ///
    /// ```
    /// let opts = larder::Options::new().mode(0o660);
    /// ```
    pub fn mode(mut self, mode: u32) -> Options {
        self.mode = mode;
        self
    }

    /// Group of the file at creation (default: the creating process's effective group),
    /// for pools whose workers share it through a group and a mode such as `0o660`. Set
    /// with `fchown` before the file has its name, so no process sees it with another
    /// group; only root, or a member of the group, may set it
    /// ([`Error::Io`](crate::Error::Io) otherwise).
    ///
    /// ```
    /// let opts = larder::Options::new().mode(0o660).group(4240);
    /// ```
    pub fn group(mut self, gid: u32) -> Options {
        self.group = Some(gid);
        self
    }

    /// What [`open`](Options::open) does with an existing file created with other
    /// parameters (default [`Mismatch::Fail`]): see [`Mismatch`] for a deploy that
    /// changes them.
    ///
    /// ```
    /// use larder::Mismatch;
    /// let opts = larder::Options::new().capacity(64 << 20).on_mismatch(Mismatch::Replace);
    /// ```
    pub fn on_mismatch(mut self, policy: Mismatch) -> Options {
        self.on_mismatch = policy;
        self
    }

    /// The deploy generation of these options (default 0), recorded in a file they
    /// create: with [`Mismatch::Replace`], options of a higher generation replace a file
    /// of a lower one whatever its parameters (a deploy that shrinks a cache raises it;
    /// one that only grows it need not). Raise it with every change of creation
    /// parameters that is not a growth, and never lower it.
    ///
    /// ```
    /// let opts = larder::Options::new()
    ///     .capacity(16 << 20)
    ///     .generation(2)
    ///     .on_mismatch(larder::Mismatch::Replace);
    /// ```
    pub fn generation(mut self, generation: u64) -> Options {
        self.generation = generation;
        self
    }

    /// Also accepts files owned by `uid` (by default only the caller's effective uid):
    /// for workers that attach to a file their master created as root.
    ///
    /// ```
    /// let opts = larder::Options::new().allow_uid(0);
    /// ```
    pub fn allow_uid(mut self, uid: u32) -> Options {
        self.allow_uids.push(uid);
        self
    }

    /// The clock TTLs are measured on (default the system's monotonic clock).
    ///
    /// ```
    /// let opts = larder::Options::new().clock(larder::Clock::manual());
    /// ```
    pub fn clock(mut self, clock: Clock) -> Options {
        self.clock = clock;
        self
    }

    /// Creates the cache, or attaches to it if it exists with the same parameters.
    ///
    /// A bare name (`[A-Za-z0-9._-]`, 1 to 200 bytes, not starting with `.`) lives in
    /// /dev/shm (as `<name>.larder4`); anything with a `/` is a path used as given.
    pub fn open(&self, name: impl AsRef<Path>) -> Result<Cache> {
        Cache::open_with(name.as_ref(), self, true)
    }

    /// Attaches to an existing cache with its own parameters, using this builder's
    /// runtime settings (timeouts, clock, allowed uids).
    pub fn attach(&self, name: impl AsRef<Path>) -> Result<Cache> {
        Cache::open_with(name.as_ref(), self, false)
    }
}
