//! The cache file's lifecycle: names, race-free creation, the checks on open, the
//! shared `flock`, the mapping. What the header page says, and how it is encoded, is
//! `header`'s.
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

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use rustix::fs::{AtFlags, FallocateFlags, FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use crate::error::{os, Error, Result};
use crate::header::{self, HeaderInfo, Origin};
use crate::layout::{Geometry, Params, FILL_SLOTS, FORMAT_VERSION, HEADER_SIZE, SECRET_SIZE};
use crate::lock;
use crate::options::{Mismatch, Opened};
use crate::region::Region;
use crate::shard::Hasher;

/// Directory of bare cache names.
pub(crate) const SHM_DIR: &str = "/dev/shm";

/// What a handle needs to open or re-open a file.
#[derive(Debug, Clone)]
pub(crate) struct OpenSpec {
    /// Creation parameters; `None` attaches only, with the file's own.
    pub params: Option<Params>,
    /// Mode of a file this open creates.
    pub mode: u32,
    pub allow_uids: Vec<u32>,
    pub lock_timeout: Duration,
}

/// What a file an open creates is given besides its parameters and mode, and what the
/// open does with an existing file of other parameters (kept apart from [`OpenSpec`],
/// which most opens need alone).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct NewFile {
    /// Its group (`None`: the process's effective group).
    pub group: Option<u32>,
    /// Its owner, where it is not this process's uid (a root handle creating a removed
    /// file again for its owner).
    pub owner: Option<u32>,
    /// Its deploy generation.
    pub generation: u64,
    /// What to do with a file of other parameters.
    pub on_mismatch: Mismatch,
}

/// A byte of the file that a process replacing it holds an open file description lock
/// on, so that replacers of one file take turns (the statistics slots lock bytes
/// `1..STATS_SLOTS`; this one is far past them and past any file's end, which such
/// locks allow).
const REPLACE_LOCK_BYTE: usize = 1 << 40;
/// The least time a replacer waits for another one replacing the same file (which
/// allocates and initialises a whole file) before it gives up with `Timeout`.
const REPLACE_WAIT: Duration = Duration::from_secs(10);

/// The owner, group and mode of a file a handle mapped: what it is created again with
/// when it is removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileMeta {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// The file name a bare cache name lives under: the format version is part of it, so a
/// rolling upgrade to a new format opens a new file beside the old one.
pub(crate) fn file_name(name: &str) -> String {
    format!("{name}.larder{FORMAT_VERSION}")
}

/// The name a user gives for the cache at `path`: the bare name of a file of /dev/shm
/// (`authz` for /dev/shm/authz.larder4), the path itself otherwise.
pub(crate) fn name_of(path: &Path) -> String {
    let bare = path
        .parent()
        .filter(|d| *d == Path::new(SHM_DIR))
        .and_then(|_| path.file_name()?.to_str())
        .and_then(|f| f.strip_suffix(&file_name("")))
        .filter(|n| resolve(Path::new(n)).ok().as_deref() == Some(path));
    match bare {
        Some(n) => n.to_string(),
        None => path.display().to_string(),
    }
}

/// Resolves a cache name: a bare name (no `/`) lives in /dev/shm, a path (anything with
/// a `/`) is used as given.
pub(crate) fn resolve(name: &Path) -> Result<PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = name.as_os_str().as_bytes();
    let invalid = |reason| Error::InvalidName {
        name: name.to_string_lossy().into_owned(),
        reason,
    };
    if bytes.contains(&b'/') {
        if bytes.ends_with(b"/") {
            return Err(invalid("a path must name a file, not a directory"));
        }
        return Ok(name.to_path_buf());
    }
    if bytes.is_empty() {
        return Err(invalid("it is empty"));
    }
    if bytes.len() > 200 {
        return Err(invalid("it is longer than 200 bytes"));
    }
    if bytes.starts_with(b".") {
        return Err(invalid("it starts with '.'"));
    }
    if !bytes
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err(invalid("it has a character outside [A-Za-z0-9._-]"));
    }
    // Only ASCII remains, so the name is UTF-8.
    Ok(Path::new(SHM_DIR).join(file_name(&name.to_string_lossy())))
}

/// A mapped, checked cache file this process is attached to.
pub(crate) struct Attached {
    pub path: PathBuf,
    pub geo: Geometry,
    pub hasher: Hasher,
    pub kind: u32,
    /// The deploy generation it was created with.
    pub generation: u64,
    pub dev: u64,
    pub ino: u64,
    /// Its owner, group and mode when it was mapped.
    pub meta: FileMeta,
    /// Statistics slots claimed by this process, one per stripe of its threads (see
    /// `stats`): `(fork generation << 32) | (slot + 1)`, 0 when none is claimed yet.
    pub stats_slots: [AtomicU64; crate::stats::STAT_STRIPES],
    /// The file descriptions whose locks claim those slots; closing one gives its slot
    /// back.
    pub stats_claims: std::sync::Mutex<[Option<OwnedFd>; crate::stats::STAT_STRIPES]>,
    /// The mapping of the file (the region owns it and unmaps it when dropped).
    pub region: Region,
    // Dropped after the region: the file holds the shared flock for as long as the
    // mapping lives.
    _file: File,
}

impl Attached {
    /// The descriptor of the mapped file (for a fresh open through /proc).
    pub(crate) fn file_fd(&self) -> i32 {
        self._file.as_fd().as_raw_fd_compat()
    }

    /// The file's owner, group and mode now (a `chgrp` or `chmod` after creation
    /// counts), read from the open file even after it was removed; as mapped if that
    /// fails.
    pub(crate) fn meta_now(&self) -> FileMeta {
        rustix::fs::fstat(&self._file)
            .map(|st| FileMeta {
                uid: st.st_uid,
                gid: st.st_gid,
                mode: st.st_mode & 0o777,
            })
            .unwrap_or(self.meta)
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

/// Opens (and, with parameters, creates if missing) the cache at `path`.
pub(crate) fn open(path: &Path, spec: &OpenSpec) -> Result<Attached> {
    open_new(path, spec, &NewFile::default()).map(|(a, _)| a)
}

/// [`open`], giving a file it creates what `new` says, and doing what it says with a
/// file of other parameters; also says what it did.
pub(crate) fn open_new(path: &Path, spec: &OpenSpec, new: &NewFile) -> Result<(Attached, Opened)> {
    // A racing creator can win between our failed open and our link, and a racing
    // replacer between our attach and our replacement; the loop looks again then.
    // Bounded: each turn either returns or saw another process create or replace.
    for _ in 0..16 {
        match open_existing(path) {
            Ok(fd) => {
                let a = attach(path, fd, spec)?;
                let Some(want) = &spec.params else {
                    return Ok((a, Opened::Attached));
                };
                let differences = differences(want, &a.geo.params);
                if differences.is_empty() {
                    return Ok((a, Opened::Attached));
                }
                match new.on_mismatch {
                    Mismatch::Fail => {
                        return Err(Error::Incompatible {
                            path: path.to_path_buf(),
                            differences,
                        })
                    }
                    Mismatch::Replace if may_replace(want, new.generation, &a) => {
                        match replace(path, a, want, spec, new)? {
                            Replaced::Done(fresh) => return Ok((fresh, Opened::Replaced)),
                            Replaced::NoRoom(a) => return Ok((a, Opened::Attached)),
                            Replaced::Raced => continue,
                        }
                    }
                    // Attach, or Replace of a file as new as this open's options (or
                    // one this process may not replace): the file's own parameters.
                    _ => return Ok((a, Opened::Attached)),
                }
            }
            Err(missing @ Error::NotFound { .. }) => match &spec.params {
                Some(params) => match create(path, params, spec, new)? {
                    Some(a) => return Ok((a, Opened::Created)),
                    None => continue,
                },
                None => return Err(missing),
            },
            Err(e) => return Err(e),
        }
    }
    Err(Error::Io(std::io::Error::other(format!(
        "{} keeps appearing and disappearing",
        path.display()
    ))))
}

/// Opens the existing file at `path` for reading and writing, refusing a symbolic link
/// or a directory.
fn open_existing(path: &Path) -> Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        Errno::NOENT => Error::NotFound {
            path: path.to_path_buf(),
        },
        Errno::LOOP => Error::UnsafeFile {
            path: path.to_path_buf(),
            reason: "it is a symbolic link".into(),
        },
        Errno::ISDIR => Error::UnsafeFile {
            path: path.to_path_buf(),
            reason: "it is not a regular file".into(),
        },
        Errno::ACCESS | Errno::PERM => Error::Io(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("permission denied opening {}", path.display()),
        )),
        e => os(e),
    })
}

fn truncated(path: &Path, len: u64, expected: usize) -> Error {
    Error::Truncated {
        path: path.to_path_buf(),
        len,
        expected: expected as u64,
    }
}

/// The status and header page of an opened file, read once its lock is held (a reset
/// holds the file exclusively while the header is rewritten); [`Error::Truncated`] if
/// the file is shorter than the page.
fn read_header_page(path: &Path, fd: OwnedFd) -> Result<(File, rustix::fs::Stat, Vec<u8>)> {
    let st = rustix::fs::fstat(&fd).map_err(os)?;
    let file = File::from(fd);
    let len = st.st_size as u64;
    let mut page = vec![0u8; HEADER_SIZE];
    if len < HEADER_SIZE as u64 || file.read_exact_at(&mut page, 0).is_err() {
        return Err(truncated(path, len, HEADER_SIZE));
    }
    Ok((file, st, page))
}

/// [`Error::Truncated`] if the file is shorter than its header's layout.
fn check_size(path: &Path, st: &rustix::fs::Stat, info: &HeaderInfo) -> Result<()> {
    let len = st.st_size as u64;
    if len < info.geo.total_size as u64 {
        return Err(truncated(path, len, info.geo.total_size));
    }
    Ok(())
}

/// The latest instant after `start` this platform represents, within a century: what
/// a timeout of `Duration::MAX` waits until.
fn far_future(start: Instant) -> Instant {
    let mut wait = Duration::from_secs(100 * 365 * 24 * 3600);
    loop {
        match start.checked_add(wait) {
            Some(t) => return t,
            None => wait /= 2,
        }
    }
}

fn shared_lock(path: &Path, fd: &OwnedFd, timeout: Duration) -> Result<()> {
    // flock has no timed form: poll the non-blocking one with backoff up to the deadline.
    // A timeout past what an Instant can hold waits for as long as it can.
    let start = Instant::now();
    let deadline = start
        .checked_add(timeout)
        .unwrap_or_else(|| far_future(start));
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
    let st = rustix::fs::fstat(fd).map_err(os)?;
    let unsafe_file = |reason: String| Error::UnsafeFile {
        path: path.to_path_buf(),
        reason,
    };
    if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
        return Err(unsafe_file("it is not a regular file".into()));
    }
    let me = rustix::process::geteuid().as_raw();
    if st.st_uid != me && !allow.contains(&st.st_uid) {
        return Err(unsafe_file(crate::error::foreign_owner(st.st_uid, me)));
    }
    if st.st_mode & 0o002 != 0 {
        return Err(unsafe_file(format!(
            "it is world-writable (mode {:o})",
            st.st_mode & 0o7777
        )));
    }
    Ok(st)
}

/// Opens an existing file holding its `flock` exclusively (without waiting): proof that
/// no process is attached. Returns the mapping and whether its stamp is not this
/// process's (another boot, another pid or time namespace, or a stamp torn by an
/// interrupted repair). The header must be intact (its checksum and layout are checked).
pub(crate) fn open_exclusive(path: &Path, spec: &OpenSpec) -> Result<(Attached, bool)> {
    let here = Origin::here()?;
    let fd = open_existing(path)?;
    check_owner(path, &fd, &spec.allow_uids)?;
    match rustix::fs::flock(&fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(Errno::WOULDBLOCK) => {
            return Err(Error::InUse {
                path: path.to_path_buf(),
            })
        }
        Err(e) => return Err(os(e)),
    }
    let (file, st, page) = read_header_page(path, fd)?;
    let info = header::parse_header(path, &page)?;
    let other_boot = Origin::of_header(&page) != Some(here);
    check_size(path, &st, &info)?;
    let a = map(path, file, info, &st)?;
    Ok((a, other_boot))
}

/// Attaches to the opened file with its own parameters (the caller compares them with
/// the ones it asked for).
fn attach(path: &Path, fd: OwnedFd, spec: &OpenSpec) -> Result<Attached> {
    check_owner(path, &fd, &spec.allow_uids)?;
    shared_lock(path, &fd, spec.lock_timeout)?;
    // Size and header are read after the shared lock: a reset holds the file exclusively
    // while the header is rewritten.
    let (file, st, page) = read_header_page(path, fd)?;
    let info = header::parse_header(path, &page)?;
    Origin::here()?.admit(path, Origin::of_header(&page))?;
    check_size(path, &st, &info)?;
    map(path, file, info, &st)
}

/// One line per creation parameter that `want` asks differently from the file's `have`.
fn differences(want: &Params, have: &Params) -> Vec<String> {
    {
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
        diffs
    }
}

/// Whether an open with `Mismatch::Replace` replaces the mapped file `a`: only a file
/// older than the options, so that two versions of a pool starting side by side never
/// replace each other's files back and forth. Older is a lower generation, or, at the
/// same generation, no limit larger than the options' and one smaller (the options
/// grow the file). And only a process that may give the new file the old one's owner
/// (its owner's uid, or root): one of another uid would make a file the pool's other
/// uids refuse.
fn may_replace(want: &Params, generation: u64, a: &Attached) -> bool {
    let have = &a.geo.params;
    let newer = if generation != a.generation {
        generation > a.generation
    } else {
        let limits = |p: &Params| [p.capacity, p.max_key_len as u64, p.max_value_len as u64];
        let (w, h) = (limits(want), limits(have));
        w.iter().zip(&h).all(|(w, h)| w >= h) && w.iter().zip(&h).any(|(w, h)| w > h)
    };
    let me = rustix::process::geteuid().as_raw();
    newer && (me == a.meta_now().uid || me == 0)
}

/// How a replacement ended.
enum Replaced {
    /// The new file, at the path.
    Done(Attached),
    /// Another process replaced the file first: look again.
    Raced,
    /// The file system has no room for both files at once: the old one, still in use.
    NoRoom(Attached),
}

/// Replaces the file `old` maps, at `path`, by a new one made with `want`: built under
/// no name, then renamed over the old one, so every process sees either file whole, and
/// attached handles follow it within their check period. It keeps the old file's owner,
/// group and mode.
fn replace(
    path: &Path,
    old: Attached,
    want: &Params,
    spec: &OpenSpec,
    new: &NewFile,
) -> Result<Replaced> {
    // Replacers of one file take turns: the lock is on the old file, so one that waited
    // finds the path naming another file and looks again instead of replacing it too.
    let wait = spec.lock_timeout.max(REPLACE_WAIT);
    let deadline = Instant::now() + wait;
    let mut pause = Duration::from_micros(200);
    while !lock::ofd_try_lock(&old._file, REPLACE_LOCK_BYTE) {
        if identity(path) != Some((old.dev, old.ino)) {
            return Ok(Replaced::Raced);
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: "another process replacing the file",
                waited: wait,
            });
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(10));
    }
    if identity(path) != Some((old.dev, old.ino)) {
        return Ok(Replaced::Raced);
    }
    let meta = old.meta_now();
    let me = rustix::process::geteuid().as_raw();
    let spec = OpenSpec {
        mode: meta.mode,
        ..spec.clone()
    };
    let new = NewFile {
        group: Some(meta.gid),
        owner: (me != meta.uid).then_some(meta.uid),
        ..*new
    };
    // Both files live at once until the old one's last process moves: where there is
    // no room for that, this process (and the pool) keeps the old file rather than fail
    // to start; `larder stats` shows its parameters.
    let built = match build(path, want, &spec, &new) {
        Ok(b) => b,
        Err(Error::NoSpace { .. }) => return Ok(Replaced::NoRoom(old)),
        Err(e) => return Err(e),
    };
    let temp = match &built.temp.0 {
        Some(t) => t.clone(),
        None => {
            let t = temp_name(path);
            rustix::fs::linkat(
                rustix::fs::CWD,
                format!("/proc/self/fd/{}", built.attached.file_fd()),
                rustix::fs::CWD,
                &t,
                AtFlags::SYMLINK_FOLLOW,
            )
            .map_err(os)?;
            t
        }
    };
    let _remove_temp = TempGuard(Some(temp.clone()));
    rustix::fs::rename(&temp, path).map_err(|e| match e {
        Errno::PERM | Errno::ACCESS => Error::Io(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "cannot replace {}: {e} (in a sticky directory such as /dev/shm only the \
                 file's owner or root may)",
                path.display()
            ),
        )),
        e => os(e),
    })?;
    // The old file, and with it the turn, goes when `old` drops.
    drop(old);
    Ok(Replaced::Done(built.attached))
}

fn map(path: &Path, file: File, info: HeaderInfo, st: &rustix::fs::Stat) -> Result<Attached> {
    let map = memmap2::MmapOptions::new()
        .len(info.geo.total_size)
        .map_raw(&file)?;
    let region = Region::mapped(map)?;
    Ok(Attached {
        path: path.to_path_buf(),
        hasher: Hasher::new(&info.secret),
        geo: info.geo,
        kind: info.kind,
        generation: info.generation,
        dev: st.st_dev,
        ino: st.st_ino,
        meta: FileMeta {
            uid: st.st_uid,
            gid: st.st_gid,
            mode: st.st_mode & 0o777,
        },
        stats_slots: std::array::from_fn(|_| AtomicU64::new(0)),
        stats_claims: std::sync::Mutex::new(std::array::from_fn(|_| None)),
        region,
        _file: file,
    })
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

/// A name in `path`'s directory for a file being built: `.<name>.tmp.<pid>.<random>`.
fn temp_name(path: &Path) -> PathBuf {
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
    path.with_file_name(name)
}

/// Creates the file; `None` if another process created it first.
fn create(
    path: &Path,
    params: &Params,
    spec: &OpenSpec,
    new: &NewFile,
) -> Result<Option<Attached>> {
    let built = build(path, params, spec, new)?;
    let linked = match &built.temp.0 {
        None => rustix::fs::linkat(
            rustix::fs::CWD,
            format!("/proc/self/fd/{}", built.attached.file_fd()),
            rustix::fs::CWD,
            path,
            AtFlags::SYMLINK_FOLLOW,
        ),
        Some(tmp) => rustix::fs::link(tmp, path),
    };
    drop(built.temp);
    match linked {
        Ok(()) => Ok(Some(built.attached)),
        Err(Errno::EXIST) => Ok(None),
        Err(e) => Err(os(e)),
    }
}

/// A complete file no other process can see yet: unnamed (`O_TMPFILE`), or under a
/// temporary name, removed when this drops, where that is unsupported.
struct Built {
    attached: Attached,
    temp: TempGuard,
}

/// Builds a complete cache file for `path`, under no name.
fn build(path: &Path, params: &Params, spec: &OpenSpec, new: &NewFile) -> Result<Built> {
    let geo = Geometry::compute(params).map_err(Error::InvalidOptions)?;
    // First: a file this process cannot stamp with its boot and namespaces is never
    // built (without /proc, say so rather than fail later at naming the file).
    let origin = Origin::here()?;
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
                let tmp = temp_name(path);
                let fd = rustix::fs::open(
                    &tmp,
                    OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::RDWR
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    mode,
                )
                .map_err(os)?;
                (fd, Some(tmp))
            }
            Err(Errno::NOENT) => {
                return Err(Error::Io(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    format!("directory {} does not exist", dir.display()),
                )))
            }
            Err(e) => return Err(os(e)),
        };
    let cleanup = TempGuard(temp_name.clone());
    // Owner and group before the mode (a change of owner may clear mode bits), and all
    // of them before the file has its name: no process ever sees it otherwise.
    if new.owner.is_some() || new.group.is_some() {
        let uid = new.owner.map(rustix::process::Uid::from_raw);
        let gid = new.group.map(rustix::process::Gid::from_raw);
        rustix::fs::fchown(&fd, uid, gid).map_err(|e| {
            Error::Io(std::io::Error::new(
                std::io::Error::from(e).kind(),
                format!(
                    "cannot give the new file {} owner {} and group {} ({e}): only root, \
                     or an owner that is a member of the group, may",
                    path.display(),
                    new.owner
                        .map_or("(this process's)".into(), |u| u.to_string()),
                    new.group
                        .map_or("(this process's)".into(), |g| g.to_string()),
                ),
            ))
        })?;
    }
    // The umask would narrow the mode given at open: set it exactly.
    rustix::fs::fchmod(&fd, mode).map_err(os)?;
    match rustix::fs::fallocate(&fd, FallocateFlags::empty(), 0, total) {
        Ok(()) => {}
        Err(Errno::NOSPC) => return Err(no_space(&dir, total)),
        Err(Errno::OPNOTSUPP) => rustix::fs::ftruncate(&fd, total).map_err(os)?,
        Err(e) => return Err(os(e)),
    }
    rustix::fs::flock(&fd, FlockOperation::LockShared).map_err(os)?;
    let st = rustix::fs::fstat(&fd).map_err(os)?;
    let file = File::from(fd);
    let mut secret = vec![0u8; SECRET_SIZE];
    rustix::rand::getrandom(&mut secret[..], rustix::rand::GetRandomFlags::empty()).map_err(os)?;
    let kind = lock::native_kind().map_err(lock::init_error)?;
    let page = header::build_header(&geo, kind, &secret, new.generation, &origin);
    let info = HeaderInfo {
        geo,
        kind,
        secret,
        generation: new.generation,
    };
    let attached = map(path, file, info, &st)?;
    init_locks(&attached)?;
    attached.region.write_bytes(0, &page);
    crash_point!("create.after_init");
    Ok(Built {
        attached,
        temp: cleanup,
    })
}

/// Initialises every mutex of a file no one else can see (or holds).
pub(crate) fn init_locks(a: &Attached) -> Result<()> {
    let g = &a.geo;
    let offs = (0..FILL_SLOTS)
        .map(|i| g.fill_slot(i))
        .chain((0..g.shard_count).map(|i| g.shard_base(i)))
        .chain([g.near_off]);
    for off in offs {
        let kind = lock::init(&a.region, off).map_err(lock::init_error)?;
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
        Err(e) => Err(os(e)),
    }
}
