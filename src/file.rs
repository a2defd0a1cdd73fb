//! The cache file's lifecycle: names, race-free creation, the checks on open, the
//! shared `flock`, the mapping.
//!
//! Creation: the file is built complete under no name (`O_TMPFILE`), then given its name
//! with `linkat`, which never replaces an existing file. Any number of processes may race
//! to open a missing cache: exactly one link succeeds, the others attach to the winner's
//! fully initialised file, and a creator that dies leaves nothing behind (an unnamed file
//! vanishes with its last descriptor). Where `O_TMPFILE` is unsupported, a temporary
//! name, `link` (which also never replaces) and `unlink` stand in; a creator killed
//! between the two leaves a `.<name>.tmp.*` file, never a half-built cache.
//!
//! Every attached process holds a shared `flock` on the file; anything that
//! re-initialises a file first takes it exclusively without blocking, which proves that
//! nobody is attached.
#![deny(unsafe_code)]

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use memmap2::MmapRaw;
use rustix::fs::{AtFlags, FallocateFlags, FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use crate::error::{Error, Result};
use crate::layout::{
    arch_tag, fingerprint, libc_tag, tag_text, FileHeader, Geometry, Params, FILL_SLOTS,
    FORMAT_VERSION, HEADER_SIZE, MAGIC, SECRET_SIZE, STAMP_WORDS, STATS_SLOTS,
};
use crate::lock;
use crate::region::Region;
use crate::shard::Hasher;
use core::mem::offset_of;

/// Directory of bare cache names.
pub(crate) const SHM_DIR: &str = "/dev/shm";

/// What a handle needs to open or re-open a file.
#[derive(Debug, Clone)]
pub(crate) struct OpenSpec {
    /// Creation parameters; `None` attaches only, with the file's own.
    pub params: Option<Params>,
    pub mode: u32,
    pub allow_uids: Vec<u32>,
    pub lock_timeout: Duration,
}

/// The file name a bare cache name lives under: the format version is part of it, so a
/// rolling upgrade to a new format opens a new file beside the old one.
pub(crate) fn file_name(name: &str) -> String {
    format!("{name}.larder{FORMAT_VERSION}")
}

/// Resolves a cache name: a bare name lives in /dev/shm, a path (anything with a `/`)
/// is used as given.
pub(crate) fn resolve(name: &str) -> Result<PathBuf> {
    if name.contains('/') {
        if name.ends_with('/') {
            return Err(Error::InvalidName {
                name: name.into(),
                reason: "a path must name a file, not a directory",
            });
        }
        return Ok(PathBuf::from(name));
    }
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > 200 {
        Some("it is longer than 200 bytes")
    } else if name.starts_with('.') {
        Some("it starts with '.'")
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        Some("it has a character outside [A-Za-z0-9._-]")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(Error::InvalidName {
            name: name.into(),
            reason,
        }),
        None => Ok(Path::new(SHM_DIR).join(file_name(name))),
    }
}

/// A mapped, checked cache file this process is attached to.
pub(crate) struct Attached {
    pub path: PathBuf,
    pub geo: Geometry,
    pub hasher: Hasher,
    pub kind: u32,
    pub dev: u64,
    pub ino: u64,
    /// Statistics slot claimed by this process: `(fork generation << 32) | (slot + 1)`,
    /// 0 when none is claimed yet.
    pub stats_slot: AtomicU64,
    /// The file description whose lock claims that slot (see `stats`); closing it gives
    /// the slot back.
    pub stats_claim: std::sync::Mutex<Option<OwnedFd>>,
    pub region: Region,
    // Field order matters: the region points into the map, which is dropped after it,
    // and the file (holding the shared flock) last.
    _map: MmapRaw,
    _file: File,
}

impl Attached {
    /// The descriptor of the mapped file (for a fresh open through /proc).
    pub(crate) fn file_fd(&self) -> i32 {
        self._file.as_fd().as_raw_fd_compat()
    }
}

impl std::fmt::Debug for Attached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attached")
            .field("path", &self.path)
            .field("geo", &self.geo)
            .finish_non_exhaustive()
    }
}

/// The current boot's id, from the kernel. Read afresh on every call (opens are rare):
/// a value cached behind a `Once` would hang a child forked while another thread was
/// inside the initialiser, since the child inherits the `Once` half-run.
pub(crate) fn boot_id() -> [u64; 2] {
    crash_point!("open.read_boot_id");
    let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
    let hex: String = text.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    let a = u64::from_str_radix(hex.get(0..16).unwrap_or("0"), 16).unwrap_or(0);
    let b = u64::from_str_radix(hex.get(16..32).unwrap_or("0"), 16).unwrap_or(0);
    [a, b]
}

/// `(st_dev, st_ino)` of one of this process's namespaces, `(0, 0)` where the kernel
/// has no such namespace (time namespaces are Linux 5.6+) or /proc is not mounted.
fn namespace(which: &str) -> (u64, u64) {
    rustix::fs::stat(format!("/proc/self/ns/{which}"))
        .map(|st| (st.st_dev, st.st_ino))
        .unwrap_or((0, 0))
}

/// Where a file may be used: the boot, the pid namespace and the time namespace it was
/// created in (the header's stamp; see `layout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Origin {
    pub boot: [u64; 2],
    pub pid_ns: (u64, u64),
    pub time_ns: (u64, u64),
}

impl Origin {
    /// This process's.
    pub(crate) fn here() -> Origin {
        Origin {
            boot: boot_id(),
            pid_ns: namespace("pid"),
            time_ns: namespace("time"),
        }
    }

    fn words(&self) -> [u64; STAMP_WORDS - 1] {
        [
            self.boot[0],
            self.boot[1],
            self.pid_ns.0,
            self.pid_ns.1,
            self.time_ns.0,
            self.time_ns.1,
        ]
    }

    /// The stamp's words, checksum last.
    pub(crate) fn stamp(&self) -> [u64; STAMP_WORDS] {
        let w = self.words();
        let mut out = [0u64; STAMP_WORDS];
        out[..STAMP_WORDS - 1].copy_from_slice(&w);
        out[STAMP_WORDS - 1] = stamp_sum(&w);
        out
    }

    /// The origin a header page records; `None` if its stamp's checksum fails (an
    /// offline repair died while writing it, or the bytes were damaged).
    pub(crate) fn of_header(buf: &[u8]) -> Option<Origin> {
        let at = offset_of!(FileHeader, stamp);
        let w: Vec<u64> = (0..STAMP_WORDS).map(|i| word(buf, at + 8 * i)).collect();
        if stamp_sum(&w[..STAMP_WORDS - 1]) != w[STAMP_WORDS - 1] {
            return None;
        }
        Some(Origin {
            boot: [w[0], w[1]],
            pid_ns: (w[2], w[3]),
            time_ns: (w[4], w[5]),
        })
    }

    /// Whether a process here may attach to a file of origin `file`; the error says why
    /// not.
    fn admit(&self, path: &Path, file: Option<Origin>) -> Result<()> {
        let Some(file) = file else {
            return Err(Error::Corrupt {
                path: path.to_path_buf(),
                detail: "its boot and namespace stamp does not match its checksum (an offline \
                         repair was interrupted, or the header was damaged)"
                    .into(),
            });
        };
        if file.boot != self.boot {
            return Err(Error::OtherBoot {
                path: path.to_path_buf(),
            });
        }
        // A robust futex records its owner's thread id as the owner's pid namespace sees
        // it, and the kernel marks a futex owner-dead when a thread dies while waiting on
        // it (glibc's `list_op_pending`) if the owner field equals the dying thread's own
        // id. Across pid namespaces equal small tids are common, so a waiter's death in
        // one namespace could hand a lock held in another to a third process: two
        // owners of one shard. Sharing a file is therefore confined to one namespace.
        if file.pid_ns != self.pid_ns {
            return Err(Error::OtherPidNamespace {
                path: path.to_path_buf(),
            });
        }
        // Expiry times are CLOCK_MONOTONIC readings, which a time namespace offsets: a
        // TTL written in one would be wrong by the offset in another.
        if file.time_ns != self.time_ns {
            return Err(Error::OtherTimeNamespace {
                path: path.to_path_buf(),
            });
        }
        Ok(())
    }
}

fn stamp_sum(words: &[u64]) -> u64 {
    let mut bytes = Vec::with_capacity(words.len() * 8);
    for w in words {
        bytes.extend_from_slice(&w.to_le_bytes());
    }
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

/// Opens (and, with parameters, creates if missing) the cache at `path`.
pub(crate) fn open(path: &Path, spec: &OpenSpec) -> Result<Attached> {
    // A racing creator can win between our failed open and our link; the loop attaches
    // to its file then. Bounded: each turn either returns or saw another process create.
    for _ in 0..16 {
        match rustix::fs::open(
            path,
            OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => return attach(path, fd, spec),
            Err(Errno::NOENT) => match &spec.params {
                Some(params) => match create(path, params, spec)? {
                    Some(a) => return Ok(a),
                    None => continue,
                },
                None => {
                    return Err(Error::NotFound {
                        path: path.to_path_buf(),
                    })
                }
            },
            Err(Errno::LOOP) => {
                return Err(Error::UnsafeFile {
                    path: path.to_path_buf(),
                    reason: "it is a symbolic link".into(),
                })
            }
            Err(Errno::ISDIR) => {
                return Err(Error::UnsafeFile {
                    path: path.to_path_buf(),
                    reason: "it is not a regular file".into(),
                })
            }
            Err(Errno::ACCESS) | Err(Errno::PERM) => {
                return Err(Error::Io(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!("permission denied opening {}", path.display()),
                )))
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(Error::Io(std::io::Error::other(format!(
        "{} keeps appearing and disappearing",
        path.display()
    ))))
}

fn shared_lock(path: &Path, fd: &OwnedFd, timeout: Duration) -> Result<()> {
    // flock has no timed form: poll the non-blocking one with backoff up to the deadline.
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_micros(100);
    loop {
        match rustix::fs::flock(fd, FlockOperation::NonBlockingLockShared) {
            Ok(()) => return Ok(()),
            Err(Errno::WOULDBLOCK) | Err(Errno::INTR) => {
                if Instant::now() >= deadline {
                    return Err(Error::Timeout {
                        what: "the file lock (a repair or reset holds it exclusively)",
                        waited: timeout,
                    });
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(10));
            }
            Err(e) => {
                return Err(Error::Io(std::io::Error::new(
                    std::io::Error::from(e).kind(),
                    format!("flock {}: {e}", path.display()),
                )))
            }
        }
    }
}

fn check_owner(path: &Path, fd: &OwnedFd, allow: &[u32]) -> Result<rustix::fs::Stat> {
    let st = rustix::fs::fstat(fd)?;
    let unsafe_file = |reason: String| Error::UnsafeFile {
        path: path.to_path_buf(),
        reason,
    };
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(unsafe_file("it is not a regular file".into()));
    }
    let me = rustix::process::geteuid().as_raw();
    if st.st_uid != me && !allow.contains(&st.st_uid) {
        return Err(unsafe_file(format!(
            "it is owned by uid {}, not by this process's uid {me} or an allowed one \
             (Options::allow_uid)",
            st.st_uid
        )));
    }
    if st.st_mode & 0o002 != 0 {
        return Err(unsafe_file(format!(
            "it is world-writable (mode {:o})",
            st.st_mode & 0o7777
        )));
    }
    Ok(st)
}

fn word(buf: &[u8], off: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&buf[off..off + 8]);
    u64::from_le_bytes(w)
}

/// The checked contents of a header.
pub(crate) struct HeaderInfo {
    pub geo: Geometry,
    pub kind: u32,
    pub secret: Vec<u8>,
}

const CHECKSUM_OFF: usize = offset_of!(FileHeader, checksum);

/// Parses and checks a header page: everything but the boot id and the file size.
pub(crate) fn parse_header(path: &Path, buf: &[u8]) -> Result<HeaderInfo> {
    let path = path.to_path_buf();
    if buf.len() < HEADER_SIZE {
        return Err(Error::Truncated {
            path,
            len: buf.len() as u64,
            expected: HEADER_SIZE as u64,
        });
    }
    let f = |field: usize| word(buf, field);
    if f(offset_of!(FileHeader, magic)) != MAGIC {
        return Err(Error::NotACache { path });
    }
    let version = f(offset_of!(FileHeader, version));
    if version != FORMAT_VERSION as u64 {
        return Err(Error::Version {
            path,
            found: version.min(u32::MAX as u64) as u32,
            expected: FORMAT_VERSION,
        });
    }
    let sum = xxhash_rust::xxh3::xxh3_64(&buf[..CHECKSUM_OFF]);
    if f(CHECKSUM_OFF) != sum {
        return Err(Error::Corrupt {
            path,
            detail: "the header checksum does not match".into(),
        });
    }
    let native =
        lock::native_kind().map_err(|e| Error::Io(std::io::Error::other(format!("{e:?}"))))?;
    let mut diffs = Vec::new();
    let mut cmp = |name: &str, found: u64, want: u64, text: &dyn Fn(u64) -> String| {
        if found != want {
            diffs.push(format!(
                "{name}: file {}, this build {}",
                text(found),
                text(want)
            ));
        }
    };
    let num = |v: u64| v.to_string();
    cmp(
        "architecture",
        f(offset_of!(FileHeader, arch)),
        arch_tag(),
        &tag_text,
    );
    cmp(
        "libc",
        f(offset_of!(FileHeader, libc)),
        libc_tag(),
        &tag_text,
    );
    cmp(
        "sizeof(pthread_mutex_t)",
        f(offset_of!(FileHeader, mutex_size)),
        core::mem::size_of::<libc::pthread_mutex_t>() as u64,
        &num,
    );
    cmp(
        "mutex kind",
        f(offset_of!(FileHeader, mutex_kind)),
        native as u64,
        &|v| format!("{v:#x}"),
    );
    cmp(
        "layout fingerprint",
        f(offset_of!(FileHeader, fingerprint)),
        fingerprint(),
        &|v| format!("{v:#018x}"),
    );
    cmp(
        "stats slots",
        f(offset_of!(FileHeader, stats_slots)),
        STATS_SLOTS as u64,
        &num,
    );
    cmp(
        "fill slots",
        f(offset_of!(FileHeader, fill_slots)),
        FILL_SLOTS as u64,
        &num,
    );
    if !diffs.is_empty() {
        return Err(Error::Incompatible {
            path,
            differences: diffs,
        });
    }
    let usize_of = |field: usize| usize::try_from(f(field)).unwrap_or(usize::MAX);
    let params = Params {
        capacity: f(offset_of!(FileHeader, capacity)),
        max_key_len: usize_of(offset_of!(FileHeader, max_key_len)),
        max_value_len: usize_of(offset_of!(FileHeader, max_value_len)),
        shards: usize_of(offset_of!(FileHeader, shard_count)),
        expected_entry: usize_of(offset_of!(FileHeader, expected_entry)),
    };
    let geo = Geometry::compute(&params).map_err(|e| Error::Corrupt {
        path: path.clone(),
        detail: format!("the header's parameters do not make a layout: {e}"),
    })?;
    let derived = [
        (
            "total size",
            geo.total_size as u64,
            f(offset_of!(FileHeader, total_size)),
        ),
        (
            "shard size",
            geo.shard_size as u64,
            f(offset_of!(FileHeader, shard_size)),
        ),
        (
            "buckets",
            geo.buckets as u64,
            f(offset_of!(FileHeader, buckets)),
        ),
        (
            "small log",
            geo.small_cap as u64,
            f(offset_of!(FileHeader, small_cap)),
        ),
        (
            "main log",
            geo.main_cap as u64,
            f(offset_of!(FileHeader, main_cap)),
        ),
        (
            "ghost",
            geo.ghost_len as u64,
            f(offset_of!(FileHeader, ghost_len)),
        ),
    ];
    for (name, want, found) in derived {
        if want != found {
            return Err(Error::Corrupt {
                path,
                detail: format!("header field {name} is {found}, its parameters give {want}"),
            });
        }
    }
    let secret =
        buf[offset_of!(FileHeader, secret)..offset_of!(FileHeader, secret) + SECRET_SIZE].to_vec();
    Ok(HeaderInfo {
        geo,
        kind: native,
        secret,
    })
}

/// Builds a header page for `geo`.
pub(crate) fn build_header(geo: &Geometry, kind: u32, secret: &[u8], origin: &Origin) -> Vec<u8> {
    let mut buf = vec![0u8; HEADER_SIZE];
    let mut put = |field: usize, v: u64| buf[field..field + 8].copy_from_slice(&v.to_le_bytes());
    put(offset_of!(FileHeader, magic), MAGIC);
    put(offset_of!(FileHeader, version), FORMAT_VERSION as u64);
    put(offset_of!(FileHeader, total_size), geo.total_size as u64);
    put(offset_of!(FileHeader, capacity), geo.params.capacity);
    put(offset_of!(FileHeader, shard_count), geo.shard_count as u64);
    put(offset_of!(FileHeader, shard_size), geo.shard_size as u64);
    put(
        offset_of!(FileHeader, max_key_len),
        geo.params.max_key_len as u64,
    );
    put(
        offset_of!(FileHeader, max_value_len),
        geo.params.max_value_len as u64,
    );
    put(offset_of!(FileHeader, buckets), geo.buckets as u64);
    put(offset_of!(FileHeader, small_cap), geo.small_cap as u64);
    put(offset_of!(FileHeader, main_cap), geo.main_cap as u64);
    put(offset_of!(FileHeader, ghost_len), geo.ghost_len as u64);
    put(
        offset_of!(FileHeader, expected_entry),
        geo.params.expected_entry as u64,
    );
    put(offset_of!(FileHeader, stats_slots), STATS_SLOTS as u64);
    put(offset_of!(FileHeader, fill_slots), FILL_SLOTS as u64);
    put(offset_of!(FileHeader, arch), arch_tag());
    put(offset_of!(FileHeader, libc), libc_tag());
    put(
        offset_of!(FileHeader, mutex_size),
        core::mem::size_of::<libc::pthread_mutex_t>() as u64,
    );
    put(offset_of!(FileHeader, mutex_kind), kind as u64);
    put(offset_of!(FileHeader, fingerprint), fingerprint());
    let s = offset_of!(FileHeader, secret);
    buf[s..s + SECRET_SIZE].copy_from_slice(&secret[..SECRET_SIZE]);
    let sum = xxhash_rust::xxh3::xxh3_64(&buf[..CHECKSUM_OFF]);
    buf[CHECKSUM_OFF..CHECKSUM_OFF + 8].copy_from_slice(&sum.to_le_bytes());
    let at = offset_of!(FileHeader, stamp);
    for (i, w) in origin.stamp().iter().enumerate() {
        buf[at + 8 * i..at + 8 * i + 8].copy_from_slice(&w.to_le_bytes());
    }
    buf
}

/// Opens an existing file holding its `flock` exclusively (without waiting): proof that
/// no process is attached. Returns the mapping and whether its stamp is not this
/// process's (another boot, another pid or time namespace, or a stamp torn by an
/// interrupted repair). The header must be intact (its checksum and layout are checked).
pub(crate) fn open_exclusive(path: &Path, spec: &OpenSpec) -> Result<(Attached, bool)> {
    let fd = match rustix::fs::open(
        path,
        OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::NOENT) => {
            return Err(Error::NotFound {
                path: path.to_path_buf(),
            })
        }
        Err(Errno::LOOP) => {
            return Err(Error::UnsafeFile {
                path: path.to_path_buf(),
                reason: "it is a symbolic link".into(),
            })
        }
        Err(Errno::ISDIR) => {
            return Err(Error::UnsafeFile {
                path: path.to_path_buf(),
                reason: "it is not a regular file".into(),
            })
        }
        Err(e) => return Err(e.into()),
    };
    check_owner(path, &fd, &spec.allow_uids)?;
    match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(Errno::WOULDBLOCK) => {
            return Err(Error::InUse {
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(e.into()),
    }
    let st = rustix::fs::fstat(&fd)?;
    let file = File::from(fd);
    let len = st.st_size as u64;
    let mut buf = vec![0u8; HEADER_SIZE];
    if len < HEADER_SIZE as u64 || file.read_exact_at(&mut buf, 0).is_err() {
        return Err(Error::Truncated {
            path: path.to_path_buf(),
            len,
            expected: HEADER_SIZE as u64,
        });
    }
    let info = parse_header(path, &buf)?;
    let other_boot = Origin::of_header(&buf) != Some(Origin::here());
    if len < info.geo.total_size as u64 {
        return Err(Error::Truncated {
            path: path.to_path_buf(),
            len,
            expected: info.geo.total_size as u64,
        });
    }
    let a = map(path, file, info, &st)?;
    Ok((a, other_boot))
}

/// Re-stamps the header with this process's boot and namespaces. Only for a file held
/// exclusively, whose locks were just re-initialised. The six words go first and their
/// checksum last, so a crash in between leaves a stamp that fails its checksum: no
/// process attaches to it, and the next offline repair writes it again.
pub(crate) fn restamp(a: &Attached) {
    let stamp = Origin::here().stamp();
    let at = offset_of!(FileHeader, stamp);
    for (i, w) in stamp[..STAMP_WORDS - 1].iter().enumerate() {
        a.region.store(at + 8 * i, *w);
    }
    crash_point!("restamp.after_ids");
    a.region
        .store(at + 8 * (STAMP_WORDS - 1), stamp[STAMP_WORDS - 1]);
}

fn attach(path: &Path, fd: OwnedFd, spec: &OpenSpec) -> Result<Attached> {
    check_owner(path, &fd, &spec.allow_uids)?;
    shared_lock(path, &fd, spec.lock_timeout)?;
    // Size and header are read after the shared lock: a reset holds the file exclusively
    // while the header is rewritten.
    let st = rustix::fs::fstat(&fd)?;
    let file = File::from(fd);
    let len = st.st_size as u64;
    let mut buf = vec![0u8; HEADER_SIZE];
    if len < HEADER_SIZE as u64 || file.read_exact_at(&mut buf, 0).is_err() {
        return Err(Error::Truncated {
            path: path.to_path_buf(),
            len,
            expected: HEADER_SIZE as u64,
        });
    }
    let info = parse_header(path, &buf)?;
    Origin::here().admit(path, Origin::of_header(&buf))?;
    if len < info.geo.total_size as u64 {
        return Err(Error::Truncated {
            path: path.to_path_buf(),
            len,
            expected: info.geo.total_size as u64,
        });
    }
    if let Some(want) = &spec.params {
        let have = &info.geo.params;
        let mut diffs = Vec::new();
        if want.capacity != have.capacity {
            diffs.push(format!(
                "capacity: file {}, asked {}",
                have.capacity, want.capacity
            ));
        }
        if want.max_key_len != have.max_key_len {
            diffs.push(format!(
                "max_key_len: file {}, asked {}",
                have.max_key_len, want.max_key_len
            ));
        }
        if want.max_value_len != have.max_value_len {
            diffs.push(format!(
                "max_value_len: file {}, asked {}",
                have.max_value_len, want.max_value_len
            ));
        }
        if want.shards != 0 && want.shards != have.shards {
            diffs.push(format!(
                "shards: file {}, asked {}",
                have.shards, want.shards
            ));
        }
        if want.expected_entry != have.expected_entry {
            diffs.push(format!(
                "expected_entry_size: file {}, asked {}",
                have.expected_entry, want.expected_entry
            ));
        }
        if !diffs.is_empty() {
            return Err(Error::Incompatible {
                path: path.to_path_buf(),
                differences: diffs,
            });
        }
    }
    map(path, file, info, &st)
}

fn map(path: &Path, file: File, info: HeaderInfo, st: &rustix::fs::Stat) -> Result<Attached> {
    let map = memmap2::MmapOptions::new()
        .len(info.geo.total_size)
        .map_raw(&file)?;
    let base = core::ptr::NonNull::new(map.as_mut_ptr())
        .ok_or_else(|| Error::Io(std::io::Error::other("mmap returned a null pointer")))?;
    let region = region_over(base, info.geo.total_size);
    Ok(Attached {
        path: path.to_path_buf(),
        hasher: Hasher::new(&info.secret),
        geo: info.geo,
        kind: info.kind,
        dev: st.st_dev,
        ino: st.st_ino,
        stats_slot: AtomicU64::new(0),
        stats_claim: std::sync::Mutex::new(None),
        region,
        _map: map,
        _file: file,
    })
}

#[allow(unsafe_code)]
fn region_over(base: core::ptr::NonNull<u8>, len: usize) -> Region {
    // `base` starts a fresh shared mapping of `len` bytes (page aligned); the `Attached`
    // owning the region also owns the map and drops it after the region.
    // SAFETY: so the memory outlives the region; peers (trusted to run this code) touch
    // it only atomically or through glibc's mutex calls, which is `from_raw`'s contract.
    unsafe { Region::from_raw(base, len) }
}

/// The mount point holding `dir`, for error messages.
fn mount_of(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let mut best = PathBuf::from("/");
    for line in text.lines() {
        if let Some(mp) = line.split(' ').nth(4) {
            let mp = Path::new(mp);
            if dir.starts_with(mp) && mp.components().count() > best.components().count() {
                best = mp.to_path_buf();
            }
        }
    }
    best
}

fn no_space(dir: &Path, requested: u64) -> Error {
    let free = rustix::fs::statvfs(dir)
        .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
        .unwrap_or(0);
    Error::NoSpace {
        mount: mount_of(dir),
        requested,
        free,
    }
}

/// Creates the file; `None` if another process created it first.
fn create(path: &Path, params: &Params, spec: &OpenSpec) -> Result<Option<Attached>> {
    let geo = Geometry::compute(params).map_err(Error::InvalidOptions)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let total = geo.total_size as u64;
    if let Ok(s) = rustix::fs::statvfs(&dir) {
        if s.f_bavail.saturating_mul(s.f_frsize) < total {
            return Err(no_space(&dir, total));
        }
    }
    let mode = Mode::from_raw_mode(spec.mode & 0o777);
    let (fd, temp_name) =
        match rustix::fs::open(&dir, OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC, mode) {
            Ok(fd) => (fd, None),
            Err(Errno::OPNOTSUPP) | Err(Errno::ISDIR) | Err(Errno::INVAL) => {
                let mut rnd = [0u8; 8];
                let _ = rustix::rand::getrandom(&mut rnd, rustix::rand::GetRandomFlags::empty());
                let name = format!(
                    ".{}.tmp.{}.{:016x}",
                    path.file_name()
                        .map(|n| n.to_string_lossy())
                        .unwrap_or_default(),
                    std::process::id(),
                    u64::from_le_bytes(rnd)
                );
                let tmp = dir.join(name);
                let fd = rustix::fs::open(
                    &tmp,
                    OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::RDWR
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    mode,
                )?;
                (fd, Some(tmp))
            }
            Err(Errno::NOENT) => {
                return Err(Error::Io(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("directory {} does not exist", dir.display()),
                )))
            }
            Err(e) => return Err(e.into()),
        };
    let cleanup = TempGuard(temp_name.clone());
    // The umask would narrow the mode given at open: set it exactly.
    rustix::fs::fchmod(&fd, mode)?;
    match rustix::fs::fallocate(&fd, FallocateFlags::empty(), 0, total) {
        Ok(()) => {}
        Err(Errno::NOSPC) => return Err(no_space(&dir, total)),
        Err(Errno::OPNOTSUPP) => rustix::fs::ftruncate(&fd, total)?,
        Err(e) => return Err(e.into()),
    }
    rustix::fs::flock(&fd, FlockOperation::LockShared)?;
    let st = rustix::fs::fstat(&fd)?;
    let file = File::from(fd);
    let mut secret = vec![0u8; SECRET_SIZE];
    rustix::rand::getrandom(&mut secret[..], rustix::rand::GetRandomFlags::empty())?;
    let kind = lock::native_kind()
        .map_err(|e| Error::Io(std::io::Error::other(format!("mutex init: {e:?}"))))?;
    let header = build_header(&geo, kind, &secret, &Origin::here());
    let info = HeaderInfo { geo, kind, secret };
    let attached = map(path, file, info, &st)?;
    init_locks(&attached)?;
    attached.region.write_bytes(0, &header);
    crash_point!("create.after_init");
    let linked = match &temp_name {
        None => rustix::fs::linkat(
            rustix::fs::CWD,
            format!(
                "/proc/self/fd/{}",
                attached._file.as_fd().as_raw_fd_compat()
            ),
            rustix::fs::CWD,
            path,
            AtFlags::SYMLINK_FOLLOW,
        ),
        Some(tmp) => rustix::fs::link(tmp, path),
    };
    drop(cleanup);
    match linked {
        Ok(()) => Ok(Some(attached)),
        Err(Errno::EXIST) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Initialises every mutex of a file no one else can see (or holds).
pub(crate) fn init_locks(a: &Attached) -> Result<()> {
    let g = &a.geo;
    let offs = (0..FILL_SLOTS)
        .map(|i| g.fill_slot(i))
        .chain((0..g.shard_count).map(|i| g.shard_base(i)));
    for off in offs {
        let kind = lock::init(&a.region, off)
            .map_err(|e| Error::Io(std::io::Error::other(format!("mutex init: {e:?}"))))?;
        if kind != a.kind {
            return Err(Error::Io(std::io::Error::other(
                "mutex kind changed between inits",
            )));
        }
    }
    Ok(())
}

struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

trait RawFdCompat {
    fn as_raw_fd_compat(&self) -> i32;
}

impl RawFdCompat for std::os::fd::BorrowedFd<'_> {
    fn as_raw_fd_compat(&self) -> i32 {
        use std::os::fd::AsRawFd;
        self.as_raw_fd()
    }
}

/// `(dev, ino)` of the file at `path` now, if any.
pub(crate) fn identity(path: &Path) -> Option<(u64, u64)> {
    rustix::fs::stat(path).ok().map(|st| (st.st_dev, st.st_ino))
}

/// Removes a cache file.
pub(crate) fn unlink(path: &Path) -> Result<()> {
    match rustix::fs::unlink(path) {
        Ok(()) => Ok(()),
        Err(Errno::NOENT) => Err(Error::NotFound {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(e.into()),
    }
}
