//! The one error type of the crate.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// Everything that can go wrong with a cache file or an operation on it.
///
/// Every variant says what happened and, in its `Display` text, what to do about it.
/// No operation changes an existing file when it returns an error from opening it.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// The cache name is not a valid bare name (`[A-Za-z0-9._-]`, 1..=200 bytes, not
    /// starting with `.`) and not a path (a path contains `/`).
    InvalidName {
        /// The name as given.
        name: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The options cannot make a working cache (for example, a value limit that does not
    /// fit comfortably in one shard of the capacity asked for).
    InvalidOptions(String),
    /// A key or value is over the limit the file was created with. Nothing was stored.
    TooLarge {
        /// `"key"` or `"value"`.
        what: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The file exists but was created with other parameters, or by a build with another
    /// layout or lock ABI. Each entry of `differences` names one field, the file's value
    /// and the expected value.
    Incompatible {
        /// The file.
        path: PathBuf,
        /// One line per field that differs.
        differences: Vec<String>,
    },
    /// The file is a larder cache of another format version.
    Version {
        /// The file.
        path: PathBuf,
        /// The file's format version.
        found: u32,
        /// The version this build reads.
        expected: u32,
    },
    /// The file is not a larder cache (wrong magic number).
    NotACache {
        /// The file.
        path: PathBuf,
    },
    /// Something read from the file failed a check: a header checksum, a mutex whose
    /// static fields changed, a shard that cannot be repaired.
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What was found.
        detail: String,
    },
    /// The file may not be trusted: a symlink, not a regular file, owned by a uid that is
    /// not allowed, or world-writable.
    UnsafeFile {
        /// The file.
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },
    /// The file is shorter than its header says.
    Truncated {
        /// The file.
        path: PathBuf,
        /// Its length in bytes.
        len: u64,
        /// The length its header asks for.
        expected: u64,
    },
    /// The file was created during another boot of the kernel: its lock words may name
    /// owners the kernel will never mark dead.
    OtherBoot {
        /// The file.
        path: PathBuf,
    },
    /// The file was created in another pid namespace (a container that shares /dev/shm
    /// but not process ids). Robust futexes name their owners by thread id as the
    /// owner's namespace sees it, so across namespaces the kernel can hand one lock to
    /// two processes; larder refuses rather than risk it.
    OtherPidNamespace {
        /// The file.
        path: PathBuf,
    },
    /// The file was created in another time namespace, whose `CLOCK_MONOTONIC` is offset
    /// from this process's: every TTL would be wrong by the offset.
    OtherTimeNamespace {
        /// The file.
        path: PathBuf,
    },
    /// The file at this handle's path was replaced or removed, and the handle could not
    /// attach to what is there now. Its operations fail until it can, rather than answer
    /// from a file no other process sees (a revocation made in the new file must reach
    /// every worker).
    #[non_exhaustive]
    Detached {
        /// The file.
        path: PathBuf,
        /// Why attaching failed (what happened, in no front end's terms).
        cause: String,
        /// What to do about it, where a caller can do something.
        remedy: Option<Remedy>,
    },
    /// [`Cache::incr`](crate::Cache::incr) found a value that is not a counter (a
    /// counter is exactly 8 bytes: a little-endian two's-complement `i64`). Nothing was
    /// changed.
    NotACounter {
        /// The length of the value found, in bytes.
        len: usize,
    },
    /// [`Cache::incr`](crate::Cache::incr) would take the counter outside `i64`.
    /// Nothing was changed.
    Overflow {
        /// The counter's value (or, for an absent key, the initial value).
        value: i64,
        /// The increment asked for.
        delta: i64,
    },
    /// A call's arguments do not fit together (for example, fewer buffers than keys).
    InvalidArgument(String),
    /// The file system has no room for a new cache file.
    NoSpace {
        /// The mount point (or directory) the file was to live in.
        mount: PathBuf,
        /// Bytes asked for.
        requested: u64,
        /// Bytes free there.
        free: u64,
    },
    /// A lock (a shard lock, a fill slot, or the file lock) was not acquired before its
    /// deadline: another process holds it and is stopped or very slow.
    Timeout {
        /// What was waited for.
        what: &'static str,
        /// How long.
        waited: Duration,
    },
    /// A `try_` operation would have had to wait for a lock.
    WouldBlock,
    /// An offline repair or reset needs the file to itself, and processes are attached.
    InUse {
        /// The file.
        path: PathBuf,
    },
    /// No cache file exists at this path (`Cache::open` attaches, it never creates).
    NotFound {
        /// The file.
        path: PathBuf,
    },
    /// /proc is not mounted (or does not show this process): larder reads the kernel's
    /// boot id and this process's pid and time namespaces there, to prove that every
    /// process sharing a file runs in one boot and one set of namespaces, and refuses
    /// to create or attach without them. Nothing was created or changed.
    ProcUnavailable {
        /// What could not be read.
        read: PathBuf,
    },
    /// Any other error from the operating system.
    Io(io::Error),
}

impl fmt::Display for Error {
    /// What happened ([`Error::summary`]), then what to do in this crate's terms (the
    /// [`Error::remedy`], naming the Rust calls that carry it out).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_summary(f)?;
        if let Some(r) = self.remedy() {
            write!(f, "; {}", r.rust_words())?;
        }
        Ok(())
    }
}

/// What to do about an error, as an action rather than a call: each front end words it
/// in its own terms (this crate's `Display` names Rust calls; the `larder` command and
/// the Python package name theirs), after the error's [`Error::summary`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Remedy {
    /// The file has other creation parameters: use it with its own parameters, choose a
    /// policy for a mismatch (attach, or replace an older file), or remove it so that it
    /// is created again with the new ones.
    UseOrRemove,
    /// Repair the file (online, shard by shard, or offline with no process attached,
    /// which also re-initialises the locks), or remove it if its header is damaged.
    Repair,
    /// Repair the file offline, with no process attached (which re-initialises the
    /// locks and re-stamps it), or remove it.
    RepairOffline,
    /// Accept the file's owner, uid `uid`, as well as the caller's own.
    AllowOwner {
        /// The file's owner.
        uid: u32,
    },
    /// No cache exists there: create it (with creation parameters).
    Create,
    /// The file of a pool was removed, and only its owner may create it again so that
    /// every process of the pool accepts it (the owner `uid`, with `mode` and group
    /// `gid`): restart the owner's process (a pool's master), or create it as that uid.
    CreateAsOwner {
        /// The removed file's owner.
        uid: u32,
        /// Its group.
        gid: u32,
        /// Its mode.
        mode: u32,
    },
    /// A key or value is over the file's limit: create the cache with a larger one.
    RaiseLimit {
        /// `"key"` or `"value"`.
        what: &'static str,
    },
}

impl Remedy {
    /// The remedy in this crate's terms (what `Display` appends).
    fn rust_words(&self) -> String {
        match self {
            Remedy::UseOrRemove => "open it with Cache::open (or Options::attach) to use its own \
                 parameters, let Options::on_mismatch attach to it or replace an older file \
                 (Mismatch::Attach, Mismatch::Replace), or remove it (Cache::unlink) to \
                 recreate it"
                .into(),
            Remedy::Repair => "repair it (Cache::repair online, shard by shard; \
                 Cache::repair_offline with no process attached, which also re-initialises \
                 the locks; or `larder repair`, from `cargo install larder-cli`), or remove \
                 the file (Cache::unlink) if its header is damaged"
                .into(),
            Remedy::RepairOffline => "repair it offline with no process attached \
                 (Cache::repair_offline, or `larder repair` from `cargo install larder-cli`), \
                 or remove the file (Cache::unlink)"
                .into(),
            Remedy::AllowOwner { uid } => {
                format!("or allow its owner with Options::allow_uid({uid})")
            }
            Remedy::Create => "create it with Options::open".into(),
            Remedy::CreateAsOwner { uid, gid, mode } => format!(
                "restart the process of uid {uid} that created it (a pool's master), or \
                 create it as uid {uid} with Options::mode(0o{mode:o}).group({gid}) and \
                 Options::open"
            ),
            Remedy::RaiseLimit { what } => {
                format!("create the cache with a larger max_{what}_len (Options::max_{what}_len)")
            }
        }
    }
}

/// The reason [`Error::UnsafeFile`] gives for a file of an owner not accepted (its
/// remedy, [`Remedy::AllowOwner`], is read back from it).
pub(crate) fn foreign_owner(uid: u32, me: u32) -> String {
    format!("it is owned by uid {uid}, not by this process's uid {me} or an allowed one")
}

fn foreign_owner_uid(reason: &str) -> Option<u32> {
    let rest = reason.strip_prefix("it is owned by uid ")?;
    rest.split(',').next()?.parse().ok()
}

/// Whether `Incompatible`'s differences are creation parameters (which another open may
/// choose), not the layout or lock ABI of another build (`header` words those "this
/// build").
fn parameter_differences(differences: &[String]) -> bool {
    !differences.iter().any(|d| d.contains("this build"))
}

impl Error {
    /// What to do about the error, where that is something a caller does through an
    /// API (each front end names its own call for it); `None` where the
    /// [`summary`](Error::summary) already says all there is to do.
    ///
    /// ```
    /// let e = larder::Cache::open("/nonexistent-dir/cache").unwrap_err();
    /// assert_eq!(e.remedy(), Some(larder::Remedy::Create));
    /// assert!(!e.summary().contains("Options::"));
    /// ```
    pub fn remedy(&self) -> Option<Remedy> {
        match self {
            Error::Incompatible { differences, .. } if parameter_differences(differences) => {
                Some(Remedy::UseOrRemove)
            }
            Error::Corrupt { .. } => Some(Remedy::Repair),
            Error::OtherBoot { .. } => Some(Remedy::RepairOffline),
            Error::UnsafeFile { reason, .. } => {
                foreign_owner_uid(reason).map(|uid| Remedy::AllowOwner { uid })
            }
            Error::NotFound { .. } => Some(Remedy::Create),
            Error::TooLarge { what, .. } => Some(Remedy::RaiseLimit { what }),
            Error::Detached { remedy, .. } => *remedy,
            _ => None,
        }
    }

    /// What happened, with any advice that names no API; the `Display` text is this,
    /// then the [`remedy`](Error::remedy) in Rust terms. A front end in another language
    /// shows this, then the remedy in its own terms.
    pub fn summary(&self) -> String {
        struct Summary<'a>(&'a Error);
        impl fmt::Display for Summary<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.write_summary(f)
            }
        }
        Summary(self).to_string()
    }

    /// The file the error is about, where it is about one.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            Error::Incompatible { path, .. }
            | Error::Version { path, .. }
            | Error::NotACache { path }
            | Error::Corrupt { path, .. }
            | Error::UnsafeFile { path, .. }
            | Error::Truncated { path, .. }
            | Error::OtherBoot { path }
            | Error::OtherPidNamespace { path }
            | Error::OtherTimeNamespace { path }
            | Error::Detached { path, .. }
            | Error::InUse { path }
            | Error::NotFound { path } => Some(path),
            _ => None,
        }
    }

    /// The cache's name as a user would give it (the bare name of a file in /dev/shm,
    /// the path otherwise), for a front end's advice (`larder rm NAME`).
    pub fn name(&self) -> Option<String> {
        self.path().map(crate::file::name_of)
    }

    fn write_summary(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidName { name, reason } => write!(
                f,
                "invalid cache name {name:?}: {reason}; use [A-Za-z0-9._-], 1 to 200 bytes, \
                 not starting with '.', or a path containing '/'"
            ),
            Error::InvalidOptions(msg) => write!(f, "invalid options: {msg}"),
            Error::TooLarge { what, len, max } => write!(
                f,
                "{what} of {len} bytes is over this cache's limit of {max} bytes; nothing was \
                 stored"
            ),
            Error::Incompatible { path, differences } => {
                if parameter_differences(differences) {
                    write!(
                        f,
                        "{} was created with other parameters ({})",
                        path.display(),
                        differences.join("; ")
                    )
                } else {
                    write!(
                        f,
                        "{} was made by a build with another layout or lock ABI ({}); use a \
                         build of the same version on the same platform, or another file name",
                        path.display(),
                        differences.join("; ")
                    )
                }
            }
            Error::Version {
                path,
                found,
                expected,
            } => write!(
                f,
                "{} has format version {found}, this build reads version {expected}; \
                 use a build of the same version or another file name",
                path.display()
            ),
            Error::NotACache { path } => write!(
                f,
                "{} is not a larder cache file; check the name, or remove the file if it is \
                 a leftover",
                path.display()
            ),
            Error::Corrupt { path, detail } => {
                write!(f, "{} is corrupt: {detail}", path.display())
            }
            Error::UnsafeFile { path, reason } => write!(
                f,
                "refusing to use {}: {reason}; remove it, or fix its owner or mode (not \
                 world-writable)",
                path.display()
            ),
            Error::Truncated {
                path,
                len,
                expected,
            } => write!(
                f,
                "{} is {len} bytes but its header says {expected}; it was truncated: \
                 remove it and let it be recreated",
                path.display()
            ),
            Error::OtherBoot { path } => write!(
                f,
                "{} was created during another boot; its locks cannot be trusted",
                path.display()
            ),
            Error::OtherPidNamespace { path } => write!(
                f,
                "{} was created in another pid namespace; processes sharing a cache must \
                 share their pid namespace too (Docker: --pid=container:NAME or --pid=host; \
                 Kubernetes: shareProcessNamespace: true in the pod), or use a file of \
                 their own",
                path.display()
            ),
            Error::OtherTimeNamespace { path } => write!(
                f,
                "{} was created in another time namespace, whose monotonic clock is offset \
                 from this one, so its TTLs would be wrong here; share the time namespace \
                 (or drop its offsets) or use a file of this namespace's own",
                path.display()
            ),
            Error::Detached { path, cause, .. } => write!(
                f,
                "{} was replaced or removed and this handle cannot attach to the file there \
                 now ({cause}); its operations fail until it can, so that it never answers \
                 from a file no other process sees",
                path.display()
            ),
            Error::NotACounter { len } => write!(
                f,
                "the value is not a counter ({len} bytes; a counter is 8 bytes, a \
                 little-endian i64, as incr stores it); nothing was changed: remove or \
                 overwrite the key, or count under another key"
            ),
            Error::Overflow { value, delta } => write!(
                f,
                "adding {delta} to the counter's {value} overflows i64; nothing was changed"
            ),
            Error::InvalidArgument(msg) => write!(f, "invalid argument: {msg}"),
            Error::NoSpace {
                mount,
                requested,
                free,
            } => write!(
                f,
                "no space for the cache file on {}: {requested} bytes asked, {free} bytes \
                 free (Docker's default /dev/shm is 64 MiB: raise it with --shm-size, or ask \
                 for a smaller capacity)",
                mount.display()
            ),
            Error::Timeout { what, waited } => write!(
                f,
                "timed out after {waited:?} waiting for {what}: another process holds it and \
                 is stopped or slow; retry, or raise the timeout"
            ),
            Error::WouldBlock => f.write_str(
                "the operation would block on a lock held by another process; retry later, \
                 or use the blocking call",
            ),
            Error::InUse { path } => write!(
                f,
                "{} is in use by attached processes; stop them first, or repair online \
                 (shard by shard under the shard locks)",
                path.display()
            ),
            Error::NotFound { path } => write!(f, "no cache at {}", path.display()),
            Error::ProcUnavailable { read } => write!(
                f,
                "cannot read {}: /proc is not mounted here, and larder needs it to read the \
                 boot id and the pid and time namespaces that prove every process sharing a \
                 cache file runs in one boot and one set of namespaces (robust locks and \
                 TTLs are only valid there); mount /proc in this container or sandbox \
                 (Docker and Kubernetes do by default; bubblewrap: --proc /proc; a chroot: \
                 mount -t proc proc /proc)",
                read.display()
            ),
            Error::Io(e) => write!(f, "I/O error: {e}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

/// An OS error from rustix as an [`Error::Io`] (rustix's type stays out of the public
/// API, so this is a function rather than a `From`).
pub(crate) fn os(e: rustix::io::Errno) -> Error {
    Error::Io(e.into())
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
