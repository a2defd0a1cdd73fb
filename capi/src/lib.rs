//! The C ABI of larder: `liblarder.so` / `liblarder.a`, declared by `include/larder.h`.
//!
//! A thin skin over the core crate (here `larder_core`): it converts pointers and
//! lengths to slices, maps every [`larder_core::Error`] to one status code
//! ([`status::status_of`]), keeps the thread's last error message, and keeps a registry
//! of open handles so a re-open is cheap ([`registry`]). Every entry point catches
//! panics (`LARDER_E_INTERNAL`) and checks every pointer (`LARDER_E_NULL`). The rules a
//! caller follows (ownership, threads, fork) are stated at the top of the header.
// Every function here is an FFI entry point whose pointers the C caller vouches for, as
// each one's `# Safety` section (and the header) says.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(clippy::missing_safety_doc)]
#![allow(non_camel_case_types)]

pub mod registry;
pub mod status;
#[cfg(test)]
mod status_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod uid_tests;

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use larder_core::{Begin, Cache, Error, Fill, Options, Ticket, Version};

use registry::{Handle, Key};
use status::*;

/// `larder_cache`: what a handle pointer points to.
pub type larder_cache = Handle;

/// `larder_options` (see the header). Fields are read only up to `struct_size`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct larder_options {
    pub struct_size: u32,
    pub capacity: u64,
    pub max_key_len: u32,
    pub max_value_len: u32,
    pub shards: u32,
    pub lock_timeout_ms: u64,
    pub fill_timeout_ms: u64,
    pub mode: u32,
    pub attach_only: u32,
    pub group: u32,
    pub has_group: u32,
    pub allow_uids: [u32; MAX_ALLOW_UIDS],
    pub allow_uids_count: u32,
    pub reserved: u32,
}

/// How many uids `larder_options.allow_uids` holds.
pub const MAX_ALLOW_UIDS: usize = 4;

/// The smallest `struct_size` accepted: the first layout, which ended with
/// `attach_only`. The fields after it read as 0 (the default) when a caller's struct
/// stops there.
const FIRST_OPTIONS_SIZE: usize = std::mem::offset_of!(larder_options, attach_only) + 4;

// The header's layout (x86-64 and aarch64 Linux: the C test asserts the same numbers).
const _: () = assert!(std::mem::size_of::<larder_options>() == 88);
const _: () = assert!(std::mem::offset_of!(larder_options, capacity) == 8);
const _: () = assert!(std::mem::offset_of!(larder_options, shards) == 24);
const _: () = assert!(std::mem::offset_of!(larder_options, lock_timeout_ms) == 32);
const _: () = assert!(std::mem::offset_of!(larder_options, attach_only) == 52);
const _: () = assert!(FIRST_OPTIONS_SIZE == 56);
const _: () = assert!(std::mem::offset_of!(larder_options, group) == 56);
const _: () = assert!(std::mem::offset_of!(larder_options, allow_uids) == 64);
const _: () = assert!(std::mem::offset_of!(larder_options, allow_uids_count) == 80);

/// `larder_stats` (see the header). Written only up to the caller's `struct_size`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct larder_stats {
    pub struct_size: u32,
    pub reserved: u32,
    pub entries: u64,
    pub bytes_live: u64,
    pub bytes_used: u64,
    pub bytes_free: u64,
    pub file_size: u64,
    pub shard_count: u64,
    pub hits: u64,
    pub misses: u64,
    pub stale_hits: u64,
    pub inserts: u64,
    pub updates: u64,
    pub removals: u64,
    pub evictions: u64,
    pub index_evictions: u64,
    pub bytes_written: u64,
    pub bytes_moved: u64,
    pub expirations: u64,
    pub lock_timeouts: u64,
    pub recoveries: u64,
    pub repair_dropped: u64,
    pub fills: u64,
    pub fill_timeouts: u64,
    pub fill_handovers: u64,
    pub fills_fenced: u64,
    pub locks: u64,
}

const _: () = assert!(std::mem::size_of::<larder_stats>() == 8 + 25 * 8);
const _: () = assert!(std::mem::offset_of!(larder_stats, entries) == 8);
const _: () = assert!(std::mem::offset_of!(larder_stats, locks) == 200);

/// `larder_version`: a version token.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct larder_version {
    pub words: [u64; 3],
}

/// `larder_ticket`: a ticket token.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct larder_ticket {
    pub words: [u64; 4],
}

/// `larder_fill`: a claimed fill, and the thread that claimed it.
pub struct larder_fill {
    fill: Fill,
    owner: ThreadId,
}

/// Who a thread is, for a fill: its kernel thread id (which differs in a forked child)
/// and a number of this process's own (which a new thread reusing an old one's id does
/// not share).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ThreadId {
    tid: i32,
    serial: u64,
}

fn this_thread() -> ThreadId {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    thread_local! {
        static SERIAL: u64 = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    // SAFETY: gettid has no preconditions and cannot fail.
    let tid = unsafe { libc::gettid() };
    // A thread being torn down has no fill to finish: serial 0 matches none.
    let serial = SERIAL.try_with(|s| *s).unwrap_or(0);
    ThreadId { tid, serial }
}

type Outcome = Result<Status, Failure>;

/// Runs an entry point's body: a panic becomes `LARDER_E_INTERNAL`, a failure its
/// status, and both leave a message for `larder_last_error`.
fn entry(body: impl FnOnce() -> Outcome) -> Status {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(s)) => s,
        Ok(Err(f)) => {
            set_last_error(&f.message());
            f.status()
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            set_last_error(&format!(
                "internal error in larder (a bug: please report it with this message): {what}"
            ));
            LARDER_E_INTERNAL
        }
    }
}

fn ttl(ms: u64) -> Option<Duration> {
    (ms != 0).then(|| Duration::from_millis(ms))
}

/// The handle behind `c`.
///
/// # Safety
/// `c` is NULL or a handle from `larder_open` not yet closed by this reference.
unsafe fn handle<'a>(c: *mut larder_cache) -> Result<&'a Handle, Failure> {
    // SAFETY: by the caller's promise, a non-NULL `c` points to a live handle.
    unsafe { c.as_ref() }.ok_or(Failure::Null("the cache handle"))
}

/// The `len` bytes at `p` (which may be NULL only when `len` is 0).
///
/// # Safety
/// A non-NULL `p` points to `len` readable bytes that stay unchanged during the call.
unsafe fn bytes<'a>(p: *const c_void, len: usize, what: &'static str) -> Result<&'a [u8], Failure> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(Failure::Null(what));
    }
    if len > isize::MAX as usize {
        return Err(Error::InvalidArgument(format!("{what} length {len} is not a length")).into());
    }
    // SAFETY: `p` is non-NULL, `len` fits in isize, and the caller promises `len`
    // readable bytes at `p` for the call's duration.
    Ok(unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) })
}

/// Checks an output buffer before any work: `len` is required, `buf` is required when
/// `cap` is not 0.
fn check_out(buf: *mut c_void, cap: usize, len: *mut usize) -> Result<(), Failure> {
    if len.is_null() {
        return Err(Failure::Null("len"));
    }
    if buf.is_null() && cap != 0 {
        return Err(Failure::Null("buf (with cap > 0)"));
    }
    Ok(())
}

/// Copies `value` out as a get does: `*len` = its length; `LARDER_TOO_SMALL` (nothing
/// copied) if `cap` is short, else `found`.
///
/// # Safety
/// `len` is valid for a write; a non-NULL `buf` points to `cap` writable bytes.
unsafe fn copy_out(
    value: &[u8],
    buf: *mut c_void,
    cap: usize,
    len: *mut usize,
    found: Status,
) -> Status {
    // SAFETY: `len` was checked non-NULL by `check_out`, and the caller promises it is
    // writable.
    unsafe { len.write(value.len()) };
    if value.len() > cap {
        return LARDER_TOO_SMALL;
    }
    if !value.is_empty() {
        // SAFETY: `value.len() <= cap`, so `buf` is non-NULL (cap > 0, checked by
        // `check_out`) with room for it; a caller's buffer cannot overlap the
        // library's own `value`.
        unsafe { std::ptr::copy_nonoverlapping(value.as_ptr(), buf.cast::<u8>(), value.len()) };
    }
    found
}

/// Writes 0 to `*len` (a miss copies nothing).
///
/// # Safety
/// `len` was checked by `check_out` and is writable.
unsafe fn zero_len(len: *mut usize) {
    // SAFETY: as the caller promises.
    unsafe { len.write(0) };
}

thread_local! {
    /// The thread's buffer that values are read into before they are copied out (so a
    /// get allocates nothing once it has grown).
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's scratch buffer (a fresh one if it is busy or gone).
fn with_scratch<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    /// A scratch buffer grown past this is freed afterwards (one huge value should not
    /// pin its size in every thread).
    const KEEP: usize = 1 << 20;
    let mut f = Some(f);
    let kept = SCRATCH.try_with(|s| {
        s.try_borrow_mut().ok().map(|mut buf| {
            let r = (f.take().expect("called once"))(&mut buf);
            if buf.capacity() > KEEP {
                *buf = Vec::new();
            }
            r
        })
    });
    match (kept, f) {
        (Ok(Some(r)), _) => r,
        (_, Some(f)) => f(&mut Vec::new()),
        (_, None) => unreachable!("the closure ran but returned nothing"),
    }
}

// ---------------------------------------------------------------------------------------
// Options and opening

/// The default options, `struct_size` set.
///
/// # Safety
/// `opts` is NULL (nothing happens) or points to a writable `larder_options`.
#[no_mangle]
pub unsafe extern "C" fn larder_options_init(opts: *mut larder_options) {
    if opts.is_null() {
        return;
    }
    let defaults = larder_options {
        struct_size: std::mem::size_of::<larder_options>() as u32,
        capacity: larder_core::DEFAULT_CAPACITY,
        max_key_len: larder_core::DEFAULT_MAX_KEY_LEN as u32,
        max_value_len: larder_core::DEFAULT_MAX_VALUE_LEN as u32,
        shards: 0,
        lock_timeout_ms: larder_core::DEFAULT_LOCK_TIMEOUT.as_millis() as u64,
        fill_timeout_ms: larder_core::DEFAULT_FILL_TIMEOUT.as_millis() as u64,
        mode: 0o600,
        attach_only: 0,
        group: 0,
        has_group: 0,
        allow_uids: [0; MAX_ALLOW_UIDS],
        allow_uids_count: 0,
        reserved: 0,
    };
    // SAFETY: `opts` is non-NULL and, by the caller's promise, writable.
    unsafe { opts.write(defaults) };
}

/// The caller's options, read up to its `struct_size`: a struct of an older header (at
/// least the first layout, up to `attach_only`) has its missing fields read as 0, the
/// default; a newer header's fields this library does not know must be 0.
///
/// # Safety
/// A non-NULL `opts` points to `opts->struct_size` readable bytes.
unsafe fn read_options(opts: *const larder_options) -> Result<larder_options, Failure> {
    const OURS: usize = std::mem::size_of::<larder_options>();
    if opts.is_null() {
        let mut o = larder_options::default();
        // SAFETY: `o` is a local, writable `larder_options`.
        unsafe { larder_options_init(&mut o) };
        return Ok(o);
    }
    // SAFETY: `struct_size` is the first field, which every version of the struct has.
    let size = unsafe { opts.cast::<u32>().read_unaligned() } as usize;
    if size < FIRST_OPTIONS_SIZE {
        return Err(Error::InvalidArgument(format!(
            "larder_options.struct_size is {size}, less than the smallest this library \
             reads ({FIRST_OPTIONS_SIZE}, up to attach_only): set it with larder_options_init"
        ))
        .into());
    }
    if size > OURS {
        // A newer header's fields this library does not know must be left at zero: it
        // cannot honour them.
        // SAFETY: the caller promises `struct_size` readable bytes.
        let extra = unsafe { std::slice::from_raw_parts(opts.cast::<u8>().add(OURS), size - OURS) };
        if extra.iter().any(|&b| b != 0) {
            return Err(Error::InvalidArgument(format!(
                "larder_options has fields this library (a {OURS}-byte struct) does not \
                 know set: use a liblarder as new as its header"
            ))
            .into());
        }
    }
    let mut o = larder_options::default();
    // SAFETY: the caller promises `size` readable bytes, of which the first
    // `min(size, OURS)` are copied into the local `o`; every bit pattern is a valid
    // `larder_options` (integers only), and the fields past `size` stay 0.
    unsafe {
        std::ptr::copy_nonoverlapping(
            opts.cast::<u8>(),
            (&mut o as *mut larder_options).cast::<u8>(),
            size.min(OURS),
        )
    };
    if o.allow_uids_count as usize > MAX_ALLOW_UIDS {
        return Err(Error::InvalidArgument(format!(
            "larder_options.allow_uids_count is {}, more than the {MAX_ALLOW_UIDS} uids \
             allow_uids holds",
            o.allow_uids_count
        ))
        .into());
    }
    if o.reserved != 0 {
        return Err(Error::InvalidArgument(
            "larder_options.reserved is not 0: leave it as larder_options_init sets it".into(),
        )
        .into());
    }
    Ok(o)
}

/// The allowed owners of `o`, sorted and without repeats (one key for one set).
fn allowed_uids(o: &larder_options) -> Vec<u32> {
    let mut uids = o.allow_uids[..o.allow_uids_count as usize].to_vec();
    uids.sort_unstable();
    uids.dedup();
    uids
}

fn or_default<T: PartialEq + Default>(v: T, default: T) -> T {
    if v == T::default() {
        default
    } else {
        v
    }
}

/// Opens (or re-opens) a cache.
///
/// # Safety
/// `name` is NULL or NUL-terminated; `opts` is NULL or a valid `larder_options` of its
/// `struct_size`; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn larder_open(
    name: *const c_char,
    opts: *const larder_options,
    out: *mut *mut larder_cache,
) -> c_int {
    entry(|| {
        if out.is_null() {
            return Err(Failure::Null("out"));
        }
        // SAFETY: `out` is non-NULL and writable by the caller's promise; a failed open
        // leaves NULL there.
        unsafe { out.write(std::ptr::null_mut()) };
        if name.is_null() {
            return Err(Failure::Null("name"));
        }
        // SAFETY: `name` is non-NULL and NUL-terminated by the caller's promise.
        let name = Path::new(OsStr::from_bytes(
            unsafe { CStr::from_ptr(name) }.to_bytes(),
        ));
        // SAFETY: as the caller promises for `opts`.
        let o = unsafe { read_options(opts) }?;
        let key = |path: std::ffi::OsString| Key {
            path,
            capacity: or_default(o.capacity, larder_core::DEFAULT_CAPACITY),
            max_key_len: or_default(o.max_key_len as usize, larder_core::DEFAULT_MAX_KEY_LEN),
            max_value_len: or_default(o.max_value_len as usize, larder_core::DEFAULT_MAX_VALUE_LEN),
            shards: o.shards as usize,
            lock_timeout_ms: or_default(
                o.lock_timeout_ms,
                larder_core::DEFAULT_LOCK_TIMEOUT.as_millis() as u64,
            ),
            fill_timeout_ms: or_default(
                o.fill_timeout_ms,
                larder_core::DEFAULT_FILL_TIMEOUT.as_millis() as u64,
            ),
            mode: or_default(o.mode, 0o600),
            attach_only: o.attach_only != 0,
            group: (o.has_group != 0).then_some(o.group),
            allow_uids: allowed_uids(&o),
        };
        // A bare name or an absolute path means the same file in every call (a relative
        // path depends on the working directory): it is its own key too, found without
        // resolving anything.
        let stable = name.is_absolute() || !name.as_os_str().as_bytes().contains(&b'/');
        let alias = stable.then(|| key(name.as_os_str().to_os_string()));
        let h = registry::open(
            alias,
            || Ok(key(canonical(name)?.into_os_string())),
            |k| {
                let mut opts = Options::new()
                    .capacity(k.capacity)
                    .max_key_len(k.max_key_len)
                    .max_value_len(k.max_value_len)
                    .shards(k.shards)
                    .lock_timeout(Duration::from_millis(k.lock_timeout_ms))
                    .fill_timeout(Duration::from_millis(k.fill_timeout_ms))
                    .mode(k.mode);
                if let Some(gid) = k.group {
                    opts = opts.group(gid);
                }
                for &uid in &k.allow_uids {
                    opts = opts.allow_uid(uid);
                }
                if k.attach_only {
                    opts.attach(Path::new(&k.path))
                } else {
                    opts.open(Path::new(&k.path))
                }
            },
        )?;
        // SAFETY: as above.
        unsafe { out.write(h) };
        Ok(LARDER_OK)
    })
}

/// The path `name` resolves to, with its directory's symlinks resolved (so
/// `/run/shm/x` and `/dev/shm/x` are one handle); the resolved path itself where the
/// directory does not exist (the open then says so).
fn canonical(name: &Path) -> Result<std::path::PathBuf, Error> {
    let path = Cache::path_of(name)?;
    if let (Some(dir), Some(file)) = (path.parent(), path.file_name()) {
        if let Ok(dir) = std::fs::canonicalize(dir) {
            return Ok(dir.join(file));
        }
    }
    Ok(path)
}

/// Drops one reference to a handle; the last one closes it.
///
/// # Safety
/// `c` is NULL or a handle from `larder_open` whose reference the caller gives up.
#[no_mangle]
pub unsafe extern "C" fn larder_close(c: *mut larder_cache) {
    if c.is_null() {
        return;
    }
    entry(|| {
        // SAFETY: the caller gives up a reference it holds.
        unsafe { registry::close(c) }?;
        Ok(LARDER_OK)
    });
}

/// Removes a cache file (attached handles notice and follow, as the core documents).
///
/// # Safety
/// `name` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn larder_unlink(name: *const c_char) -> c_int {
    entry(|| {
        if name.is_null() {
            return Err(Failure::Null("name"));
        }
        // SAFETY: `name` is non-NULL and NUL-terminated by the caller's promise.
        let name = Path::new(OsStr::from_bytes(
            unsafe { CStr::from_ptr(name) }.to_bytes(),
        ));
        Cache::unlink(name)?;
        Ok(LARDER_OK)
    })
}

// ---------------------------------------------------------------------------------------
// Reads

/// Whether a call may wait for a lock (up to its deadline) or gives up at once with
/// `LARDER_E_WOULD_BLOCK` (the `larder_try_` calls, for event loops).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Wait {
    Yes,
    No,
}

/// # Safety
/// As `larder_get`.
unsafe fn get(
    wait: Wait,
    c: *mut larder_cache,
    key: *const c_void,
    key_len: usize,
    buf: *mut c_void,
    cap: usize,
    len: *mut usize,
) -> c_int {
    entry(|| {
        // SAFETY: the caller's promises, as documented on `larder_get`.
        let (h, key) = unsafe { (handle(c)?, bytes(key, key_len, "key")?) };
        check_out(buf, cap, len)?;
        with_scratch(|v| {
            let found = match wait {
                Wait::Yes => h.cache.get_into(key, v)?,
                Wait::No => match h.cache.try_get(key)? {
                    Some(value) => {
                        *v = value;
                        true
                    }
                    None => false,
                },
            };
            if found {
                // SAFETY: `buf`, `cap` and `len` were checked and are the caller's.
                Ok(unsafe { copy_out(v, buf, cap, len, LARDER_OK) })
            } else {
                // SAFETY: as above.
                unsafe { zero_len(len) };
                Ok(LARDER_MISS)
            }
        })
    })
}

/// Copies a fresh value into `buf`.
///
/// # Safety
/// `c` a live handle or NULL; `key` `key_len` readable bytes (or NULL with 0); `buf`
/// `cap` writable bytes (or NULL with 0); `len` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn larder_get(
    c: *mut larder_cache,
    key: *const c_void,
    key_len: usize,
    buf: *mut c_void,
    cap: usize,
    len: *mut usize,
) -> c_int {
    // SAFETY: the caller's promises are `get`'s.
    unsafe { get(Wait::Yes, c, key, key_len, buf, cap, len) }
}

/// `larder_get` that never waits for a lock.
///
/// # Safety
/// As `larder_get`.
#[no_mangle]
pub unsafe extern "C" fn larder_try_get(
    c: *mut larder_cache,
    key: *const c_void,
    key_len: usize,
    buf: *mut c_void,
    cap: usize,
    len: *mut usize,
) -> c_int {
    // SAFETY: the caller's promises are `get`'s.
    unsafe { get(Wait::No, c, key, key_len, buf, cap, len) }
}

/// Copies a fresh value (`LARDER_OK`) or an expired one (`LARDER_STALE`).
///
/// # Safety
/// As `larder_get`.
#[no_mangle]
pub unsafe extern "C" fn larder_get_stale(
    c: *mut larder_cache,
    key: *const c_void,
    key_len: usize,
    buf: *mut c_void,
    cap: usize,
    len: *mut usize,
) -> c_int {
    // SAFETY: the caller's promises are `get_stale`'s.
    unsafe { get_stale(Wait::Yes, c, key, key_len, buf, cap, len) }
}

/// `larder_get_stale` that never waits for a lock.
///
/// # Safety
/// As `larder_get`.
#[no_mangle]
pub unsafe extern "C" fn larder_try_get_stale(
    c: *mut larder_cache,
    key: *const c_void,
    key_len: usize,
    buf: *mut c_void,
    cap: usize,
    len: *mut usize,
) -> c_int {
    // SAFETY: the caller's promises are `get_stale`'s.
    unsafe { get_stale(Wait::No, c, key, key_len, buf, cap, len) }
}

/// # Safety
/// As `larder_get`.
unsafe fn get_stale(
    wait: Wait,
    c: *mut larder_cache,
    key: *const c_void,
    key_len: usize,
    buf: *mut c_void,
    cap: usize,
    len: *mut usize,
) -> c_int {
    entry(|| {
        // SAFETY: the caller's promises, as documented on `larder_get`.
        let (h, key) = unsafe { (handle(c)?, bytes(key, key_len, "key")?) };
        check_out(buf, cap, len)?;
        let found = match wait {
            Wait::Yes => h.cache.get_stale(key)?,
            Wait::No => h.cache.try_get_stale(key)?,
        };
        match found {
            Some(s) => {
                let found = if s.expired { LARDER_STALE } else { LARDER_OK };
                // SAFETY: `buf`, `cap` and `len` were checked and are the caller's.
                Ok(unsafe { copy_out(&s.value, buf, cap, len, found) })
            }
            None => {
                // SAFETY: as above.
                unsafe { zero_len(len) };
                Ok(LARDER_MISS)
            }
        }
    })
}

/// A fresh value and its version.
///
/// # Safety
/// As `larder_get`; `version` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn larder_gets(
    c: *mut larder_cache,
    key: *const c_void,
    key_len: usize,
    buf: *mut c_void,
    cap: usize,
    len: *mut usize,
    version: *mut larder_version,
) -> c_int {
    // SAFETY: the caller's promises are `gets`'.
    unsafe { gets(Wait::Yes, c, key, key_len, buf, cap, len, version) }
}

/// `larder_gets` that never waits for a lock.
///
/// # Safety
/// As `larder_gets`.
#[no_mangle]
pub unsafe extern "C" fn larder_try_gets(
    c: *mut larder_cache,
    key: *const c_void,
    key_len: usize,
    buf: *mut c_void,
    cap: usize,
    len: *mut usize,
    version: *mut larder_version,
) -> c_int {
    // SAFETY: the caller's promises are `gets`'.
    unsafe { gets(Wait::No, c, key, key_len, buf, cap, len, version) }
}

/// # Safety
/// As `larder_gets`.
#[allow(clippy::too_many_arguments)]
unsafe fn gets(
    wait: Wait,
    c: *mut larder_cache,
    key: *const c_void,
    key_len: usize,
    buf: *mut c_void,
    cap: usize,
    len: *mut usize,
    version: *mut larder_version,
) -> c_int {
    entry(|| {
        // SAFETY: the caller's promises, as documented on `larder_gets`.
        let (h, key) = unsafe { (handle(c)?, bytes(key, key_len, "key")?) };
        check_out(buf, cap, len)?;
        if version.is_null() {
            return Err(Failure::Null("version"));
        }
        let found = match wait {
            Wait::Yes => h.cache.get_versioned(key)?,
            Wait::No => h.cache.try_get_versioned(key)?,
        };
        match found {
            Some((value, v)) => {
                // SAFETY: `buf`, `cap` and `len` were checked and are the caller's.
                let s = unsafe { copy_out(&value, buf, cap, len, LARDER_OK) };
                if s == LARDER_OK {
                    // SAFETY: `version` is non-NULL and writable by the caller's promise.
                    unsafe {
                        version.write(larder_version {
                            words: v.to_words(),
                        })
                    };
                }
                Ok(s)
            }
            None => {
                // SAFETY: as above.
                unsafe { zero_len(len) };
                Ok(LARDER_MISS)
            }
        }
    })
}

/// The time a fresh entry has left.
///
/// # Safety
/// `c` a live handle or NULL; `key` as in `larder_get`; `ttl_ms` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn larder_ttl(
    c: *mut larder_cache,
    key: *const c_void,
    key_len: usize,
    ttl_ms: *mut i64,
) -> c_int {
    // SAFETY: the caller's promises are `ttl_left`'s.
    unsafe { ttl_left(Wait::Yes, c, key, key_len, ttl_ms) }
}

/// `larder_ttl` that never waits for a lock.
///
/// # Safety
/// As `larder_ttl`.
#[no_mangle]
pub unsafe extern "C" fn larder_try_ttl(
    c: *mut larder_cache,
    key: *const c_void,
    key_len: usize,
    ttl_ms: *mut i64,
) -> c_int {
    // SAFETY: the caller's promises are `ttl_left`'s.
    unsafe { ttl_left(Wait::No, c, key, key_len, ttl_ms) }
}

/// # Safety
/// As `larder_ttl`.
unsafe fn ttl_left(
    wait: Wait,
    c: *mut larder_cache,
    key: *const c_void,
    key_len: usize,
    ttl_ms: *mut i64,
) -> c_int {
    entry(|| {
        // SAFETY: the caller's promises, as documented on `larder_ttl`.
        let (h, key) = unsafe { (handle(c)?, bytes(key, key_len, "key")?) };
        if ttl_ms.is_null() {
            return Err(Failure::Null("ttl_ms"));
        }
        let left = match wait {
            Wait::Yes => h.cache.ttl(key)?,
            Wait::No => h.cache.try_ttl(key)?,
        };
        match left {
            None => Ok(LARDER_MISS),
            Some(left) => {
                let ms = left.map_or(-1, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
                // SAFETY: non-NULL and writable by the caller's promise.
                unsafe { ttl_ms.write(ms) };
                Ok(LARDER_OK)
            }
        }
    })
}

// ---------------------------------------------------------------------------------------
// Writes

/// The three stores that differ only in their condition.
#[derive(Clone, Copy)]
enum Store {
    Set,
    Add,
    Replace,
}

/// # Safety
/// As `larder_set`.
#[allow(clippy::too_many_arguments)]
unsafe fn store(
    how: Store,
    wait: Wait,
    c: *mut larder_cache,
    key: *const c_void,
    key_len: usize,
    val: *const c_void,
    val_len: usize,
    ttl_ms: u64,
) -> c_int {
    entry(|| {
        // SAFETY: the caller's promises, as documented on `larder_set`.
        let (h, key, val) = unsafe {
            (
                handle(c)?,
                bytes(key, key_len, "key")?,
                bytes(val, val_len, "val")?,
            )
        };
        let t = ttl(ttl_ms);
        let cache = &h.cache;
        Ok(match (how, wait) {
            (Store::Set, Wait::Yes) => {
                cache.set(key, val, t)?;
                LARDER_OK
            }
            (Store::Set, Wait::No) => {
                cache.try_set(key, val, t)?;
                LARDER_OK
            }
            (Store::Add, w) => {
                let stored = match w {
                    Wait::Yes => cache.insert_if_absent(key, val, t)?,
                    Wait::No => cache.try_insert_if_absent(key, val, t)?,
                };
                if stored {
                    LARDER_OK
                } else {
                    LARDER_EXISTS
                }
            }
            (Store::Replace, w) => {
                let replaced = match w {
                    Wait::Yes => cache.replace(key, val, t)?,
                    Wait::No => cache.try_replace(key, val, t)?,
                };
                if replaced {
                    LARDER_OK
                } else {
                    LARDER_MISS
                }
            }
        })
    })
}

/// Stores a value.
///
/// # Safety
/// `c` a live handle or NULL; `key` `key_len` readable bytes (or NULL with 0); `val`
/// `val_len` readable bytes (or NULL with 0).
#[no_mangle]
pub unsafe extern "C" fn larder_set(
    c: *mut larder_cache,
    key: *const c_void,
    key_len: usize,
    val: *const c_void,
    val_len: usize,
    ttl_ms: u64,
) -> c_int {
    // SAFETY: the caller's promises are `store`'s.
    unsafe { store(Store::Set, Wait::Yes, c, key, key_len, val, val_len, ttl_ms) }
}

/// Stores a value only if there is no fresh entry.
///
/// # Safety
/// As `larder_set`.
#[no_mangle]
pub unsafe extern "C" fn larder_add(
    c: *mut larder_cache,
    key: *const c_void,
    key_len: usize,
    val: *const c_void,
    val_len: usize,
    ttl_ms: u64,
) -> c_int {
    // SAFETY: the caller's promises are `store`'s.
    unsafe { store(Store::Add, Wait::Yes, c, key, key_len, val, val_len, ttl_ms) }
}

/// Stores a value only if there is a fresh entry.
///
/// # Safety
/// As `larder_set`.
#[no_mangle]
pub unsafe extern "C" fn larder_replace(
    c: *mut larder_cache,
    key: *const c_void,
    key_len: usize,
    val: *const c_void,
    val_len: usize,
    ttl_ms: u64,
) -> c_int {
    // SAFETY: the caller's promises are `store`'s.
    unsafe {
        store(
            Store::Replace,
            Wait::Yes,
            c,
            key,
            key_len,
            val,
            val_len,
            ttl_ms,
        )
    }
}

/// `larder_set` that never waits for a lock.
///
/// # Safety
/// As `larder_set`.
#[no_mangle]
pub unsafe extern "C" fn larder_try_set(
    c: *mut larder_cache,
    key: *const c_void,
    key_len: usize,
    val: *const c_void,
    val_len: usize,
    ttl_ms: u64,
) -> c_int {
    // SAFETY: the caller's promises are `store`'s.
    unsafe { store(Store::Set, Wait::No, c, key, key_len, val, val_len, ttl_ms) }
}

/// `larder_add` that never waits for a lock.
///
/// # Safety
/// As `larder_set`.
#[no_mangle]
pub unsafe extern "C" fn larder_try_add(
    c: *mut larder_cache,
    key: *const c_void,
    key_len: usize,
    val: *const c_void,
    val_len: usize,
    ttl_ms: u64,
) -> c_int {
    // SAFETY: the caller's promises are `store`'s.
    unsafe { store(Store::Add, Wait::No, c, key, key_len, val, val_len, ttl_ms) }
}

/// `larder_replace` that never waits for a lock.
///
/// # Safety
/// As `larder_set`.
#[no_mangle]
pub unsafe extern "C" fn larder_try_replace(
    c: *mut larder_cache,
    key: *const c_void,
    key_len: usize,
    val: *const c_void,
    val_len: usize,
    ttl_ms: u64,
) -> c_int {
    // SAFETY: the caller's promises are `store`'s.
    unsafe {
        store(
            Store::Replace,
            Wait::No,
            c,
            key,
            key_len,
            val,
            val_len,
            ttl_ms,
        )
    }
}

/// Stores a value only if the entry still has `version`.
///
/// # Safety
/// As `larder_set`; `version` NULL or readable.
#[no_mangle]
pub unsafe extern "C" fn larder_cas(
    c: *mut larder_cache,
    key: *const c_void,
    key_len: usize,
    val: *const c_void,
    val_len: usize,
    ttl_ms: u64,
    version: *const larder_version,
) -> c_int {
    // SAFETY: the caller's promises are `cas`'.
    unsafe { cas(Wait::Yes, c, key, key_len, val, val_len, ttl_ms, version) }
}

/// `larder_cas` that never waits for a lock.
///
/// # Safety
/// As `larder_cas`.
#[no_mangle]
pub unsafe extern "C" fn larder_try_cas(
    c: *mut larder_cache,
    key: *const c_void,
    key_len: usize,
    val: *const c_void,
    val_len: usize,
    ttl_ms: u64,
    version: *const larder_version,
) -> c_int {
    // SAFETY: the caller's promises are `cas`'.
    unsafe { cas(Wait::No, c, key, key_len, val, val_len, ttl_ms, version) }
}

/// # Safety
/// As `larder_cas`.
#[allow(clippy::too_many_arguments)]
unsafe fn cas(
    wait: Wait,
    c: *mut larder_cache,
    key: *const c_void,
    key_len: usize,
    val: *const c_void,
    val_len: usize,
    ttl_ms: u64,
    version: *const larder_version,
) -> c_int {
    entry(|| {
        // SAFETY: the caller's promises, as documented on `larder_cas`.
        let (h, key, val) = unsafe {
            (
                handle(c)?,
                bytes(key, key_len, "key")?,
                bytes(val, val_len, "val")?,
            )
        };
        // SAFETY: a non-NULL `version` is readable by the caller's promise.
        let v = unsafe { version.as_ref() }.ok_or(Failure::Null("version"))?;
        let version = Version::from_words(v.words);
        let stored = match wait {
            Wait::Yes => h.cache.set_if_version(key, val, ttl(ttl_ms), version)?,
            Wait::No => h.cache.try_set_if_version(key, val, ttl(ttl_ms), version)?,
        };
        if stored {
            return Ok(LARDER_OK);
        }
        // Refused: tell a moved version from a gone entry (memcached's EXISTS and
        // NOT_FOUND). The look is a moment later than the refusal, so an entry set or
        // removed in between is reported as it is now. Without waiting, a busy lock
        // then is E_WOULD_BLOCK, which holds too: nothing was stored.
        let left = match wait {
            Wait::Yes => h.cache.ttl(key)?,
            Wait::No => h.cache.try_ttl(key)?,
        };
        Ok(match left {
            Some(_) => LARDER_EXISTS,
            None => LARDER_MISS,
        })
    })
}

/// # Safety
/// As `larder_remove`.
unsafe fn remove(wait: Wait, c: *mut larder_cache, key: *const c_void, key_len: usize) -> c_int {
    entry(|| {
        // SAFETY: the caller's promises, as documented on `larder_remove`.
        let (h, key) = unsafe { (handle(c)?, bytes(key, key_len, "key")?) };
        let removed = match wait {
            Wait::Yes => h.cache.remove(key)?,
            Wait::No => h.cache.try_remove(key)?,
        };
        Ok(if removed { LARDER_OK } else { LARDER_MISS })
    })
}

/// Removes an entry.
///
/// # Safety
/// `c` a live handle or NULL; `key` as in `larder_get`.
#[no_mangle]
pub unsafe extern "C" fn larder_remove(
    c: *mut larder_cache,
    key: *const c_void,
    key_len: usize,
) -> c_int {
    // SAFETY: the caller's promises are `remove`'s.
    unsafe { remove(Wait::Yes, c, key, key_len) }
}

/// `larder_remove` that never waits for a lock.
///
/// # Safety
/// As `larder_remove`.
#[no_mangle]
pub unsafe extern "C" fn larder_try_remove(
    c: *mut larder_cache,
    key: *const c_void,
    key_len: usize,
) -> c_int {
    // SAFETY: the caller's promises are `remove`'s.
    unsafe { remove(Wait::No, c, key, key_len) }
}

/// # Safety
/// As `larder_incr`.
#[allow(clippy::too_many_arguments)]
unsafe fn incr(
    wait: Wait,
    c: *mut larder_cache,
    key: *const c_void,
    key_len: usize,
    delta: i64,
    init: i64,
    ttl_ms: u64,
    out: *mut i64,
) -> c_int {
    entry(|| {
        // SAFETY: the caller's promises, as documented on `larder_incr`.
        let (h, key) = unsafe { (handle(c)?, bytes(key, key_len, "key")?) };
        if out.is_null() {
            return Err(Failure::Null("out"));
        }
        let v = match wait {
            Wait::Yes => h.cache.incr(key, delta, init, ttl(ttl_ms))?,
            Wait::No => h.cache.try_incr(key, delta, init, ttl(ttl_ms))?,
        };
        // SAFETY: non-NULL and writable by the caller's promise.
        unsafe { out.write(v) };
        Ok(LARDER_OK)
    })
}

/// Adds `delta` to a counter (created as `init + delta` with `ttl_ms`).
///
/// # Safety
/// `c` a live handle or NULL; `key` as in `larder_get`; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn larder_incr(
    c: *mut larder_cache,
    key: *const c_void,
    key_len: usize,
    delta: i64,
    init: i64,
    ttl_ms: u64,
    out: *mut i64,
) -> c_int {
    // SAFETY: the caller's promises are `incr`'s.
    unsafe { incr(Wait::Yes, c, key, key_len, delta, init, ttl_ms, out) }
}

/// `larder_incr` that never waits for a lock.
///
/// # Safety
/// As `larder_incr`.
#[no_mangle]
pub unsafe extern "C" fn larder_try_incr(
    c: *mut larder_cache,
    key: *const c_void,
    key_len: usize,
    delta: i64,
    init: i64,
    ttl_ms: u64,
    out: *mut i64,
) -> c_int {
    // SAFETY: the caller's promises are `incr`'s.
    unsafe { incr(Wait::No, c, key, key_len, delta, init, ttl_ms, out) }
}

/// # Safety
/// As `larder_touch`.
unsafe fn touch(
    wait: Wait,
    c: *mut larder_cache,
    key: *const c_void,
    key_len: usize,
    ttl_ms: u64,
) -> c_int {
    entry(|| {
        // SAFETY: the caller's promises, as documented on `larder_touch`.
        let (h, key) = unsafe { (handle(c)?, bytes(key, key_len, "key")?) };
        let touched = match wait {
            Wait::Yes => h.cache.touch(key, ttl(ttl_ms))?,
            Wait::No => h.cache.try_touch(key, ttl(ttl_ms))?,
        };
        Ok(if touched { LARDER_OK } else { LARDER_MISS })
    })
}

/// Gives a fresh entry a new TTL.
///
/// # Safety
/// `c` a live handle or NULL; `key` as in `larder_get`.
#[no_mangle]
pub unsafe extern "C" fn larder_touch(
    c: *mut larder_cache,
    key: *const c_void,
    key_len: usize,
    ttl_ms: u64,
) -> c_int {
    // SAFETY: the caller's promises are `touch`'s.
    unsafe { touch(Wait::Yes, c, key, key_len, ttl_ms) }
}

/// `larder_touch` that never waits for a lock.
///
/// # Safety
/// As `larder_touch`.
#[no_mangle]
pub unsafe extern "C" fn larder_try_touch(
    c: *mut larder_cache,
    key: *const c_void,
    key_len: usize,
    ttl_ms: u64,
) -> c_int {
    // SAFETY: the caller's promises are `touch`'s.
    unsafe { touch(Wait::No, c, key, key_len, ttl_ms) }
}

/// Removes every entry.
///
/// # Safety
/// `c` a live handle or NULL; `removed` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn larder_clear(c: *mut larder_cache, removed: *mut u64) -> c_int {
    entry(|| {
        // SAFETY: the caller's promise.
        let h = unsafe { handle(c) }?;
        let n = h.cache.clear()?;
        if !removed.is_null() {
            // SAFETY: non-NULL and writable by the caller's promise.
            unsafe { removed.write(n) };
        }
        Ok(LARDER_OK)
    })
}

/// Removes every entry of one shard, never waiting for its lock.
///
/// # Safety
/// `c` a live handle or NULL; `removed` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn larder_try_clear_shard(
    c: *mut larder_cache,
    shard: u32,
    removed: *mut u64,
) -> c_int {
    entry(|| {
        // SAFETY: the caller's promise.
        let h = unsafe { handle(c) }?;
        let shard = usize::try_from(shard)
            .map_err(|_| Error::InvalidArgument(format!("shard {shard} out of range")))?;
        let n = h.cache.try_clear_shard(shard)?;
        if !removed.is_null() {
            // SAFETY: non-NULL and writable by the caller's promise.
            unsafe { removed.write(n) };
        }
        Ok(LARDER_OK)
    })
}

/// The cache's counters, written up to `out->struct_size`.
///
/// # Safety
/// `c` a live handle or NULL; `out` NULL or `out->struct_size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn larder_stats(c: *mut larder_cache, out: *mut larder_stats) -> c_int {
    entry(|| {
        // SAFETY: the caller's promise.
        let h = unsafe { handle(c) }?;
        if out.is_null() {
            return Err(Failure::Null("out"));
        }
        // SAFETY: `struct_size` is the first field of every version of the struct.
        let size = unsafe { out.cast::<u32>().read_unaligned() } as usize;
        const HEAD: usize = std::mem::offset_of!(larder_stats, entries);
        if size < HEAD {
            return Err(Error::InvalidArgument(format!(
                "larder_stats.struct_size is {size}: set it to sizeof(larder_stats)"
            ))
            .into());
        }
        let s = h.cache.stats();
        let ours = larder_stats {
            struct_size: size as u32,
            reserved: 0,
            entries: s.entries,
            bytes_live: s.bytes_live,
            bytes_used: s.bytes_used,
            bytes_free: s.bytes_free,
            file_size: s.file_size,
            shard_count: s.shard_count,
            hits: s.hits,
            misses: s.misses,
            stale_hits: s.stale_hits,
            inserts: s.inserts,
            updates: s.updates,
            removals: s.removals,
            evictions: s.evictions,
            index_evictions: s.index_evictions,
            bytes_written: s.bytes_written,
            bytes_moved: s.bytes_moved,
            expirations: s.expirations,
            lock_timeouts: s.lock_timeouts,
            recoveries: s.recoveries,
            repair_dropped: s.repair_dropped,
            fills: s.fills,
            fill_timeouts: s.fill_timeouts,
            fill_handovers: s.fill_handovers,
            fills_fenced: s.fills_fenced,
            locks: s.locks,
        };
        let n = size.min(std::mem::size_of::<larder_stats>());
        // SAFETY: the caller promises `size` writable bytes at `out`, and `n <= size`;
        // `ours` is a local of at least `n` bytes, distinct from the caller's memory.
        unsafe {
            std::ptr::copy_nonoverlapping(
                std::ptr::addr_of!(ours).cast::<u8>(),
                out.cast::<u8>(),
                n,
            )
        };
        Ok(LARDER_OK)
    })
}

// ---------------------------------------------------------------------------------------
// Tickets and fills

/// A ticket for storing `key`'s value computed from now on.
///
/// # Safety
/// `c` a live handle or NULL; `key` as in `larder_get`; `out` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn larder_ticket_take(
    c: *mut larder_cache,
    key: *const c_void,
    key_len: usize,
    out: *mut larder_ticket,
) -> c_int {
    entry(|| {
        // SAFETY: the caller's promises, as documented above.
        let (h, key) = unsafe { (handle(c)?, bytes(key, key_len, "key")?) };
        if out.is_null() {
            return Err(Failure::Null("out"));
        }
        let t = h.cache.ticket(key)?;
        // SAFETY: non-NULL and writable by the caller's promise.
        unsafe {
            out.write(larder_ticket {
                words: t.to_words(),
            })
        };
        Ok(LARDER_OK)
    })
}

/// Stores a value only if no write revoked the key since the ticket was taken.
///
/// # Safety
/// As `larder_set`; `ticket` NULL or readable.
#[no_mangle]
pub unsafe extern "C" fn larder_set_with_ticket(
    c: *mut larder_cache,
    key: *const c_void,
    key_len: usize,
    val: *const c_void,
    val_len: usize,
    ttl_ms: u64,
    ticket: *const larder_ticket,
) -> c_int {
    entry(|| {
        // SAFETY: the caller's promises, as documented above.
        let (h, key, val) = unsafe {
            (
                handle(c)?,
                bytes(key, key_len, "key")?,
                bytes(val, val_len, "val")?,
            )
        };
        // SAFETY: a non-NULL `ticket` is readable by the caller's promise.
        let t = unsafe { ticket.as_ref() }.ok_or(Failure::Null("ticket"))?;
        let t = Ticket::from_words(t.words);
        Ok(if h.cache.set_with_ticket(key, val, ttl(ttl_ms), t)? {
            LARDER_OK
        } else {
            LARDER_FENCED
        })
    })
}

/// # Safety
/// As `larder_fill_begin`.
#[allow(clippy::too_many_arguments)]
unsafe fn fill_begin(
    wait: Wait,
    c: *mut larder_cache,
    key: *const c_void,
    key_len: usize,
    buf: *mut c_void,
    cap: usize,
    len: *mut usize,
    fill: *mut *mut larder_fill,
) -> c_int {
    entry(|| {
        if fill.is_null() {
            return Err(Failure::Null("fill"));
        }
        // SAFETY: `fill` is non-NULL and writable by the caller's promise; NULL unless
        // this call hands a fill over.
        unsafe { fill.write(std::ptr::null_mut()) };
        // SAFETY: the caller's promises, as documented on `larder_fill_begin`.
        let (h, key) = unsafe { (handle(c)?, bytes(key, key_len, "key")?) };
        check_out(buf, cap, len)?;
        with_scratch(|v| {
            let begun = match wait {
                Wait::Yes => h.cache.begin_fill(key, v)?,
                Wait::No => h.cache.try_begin_fill(key, v)?,
            };
            Ok(match begun {
                // SAFETY: `buf`, `cap` and `len` were checked and are the caller's.
                Begin::Fresh => unsafe { copy_out(v, buf, cap, len, LARDER_OK) },
                // SAFETY: as above.
                Begin::Stale => unsafe { copy_out(v, buf, cap, len, LARDER_STALE) },
                Begin::Fill(f) => {
                    let held = Box::new(larder_fill {
                        fill: f,
                        owner: this_thread(),
                    });
                    // SAFETY: as above.
                    unsafe { zero_len(len) };
                    // SAFETY: `fill` checked non-NULL above, writable by the caller's
                    // promise.
                    unsafe { fill.write(Box::into_raw(held)) };
                    LARDER_FILL
                }
                // A kind of result this build does not know: none is handed out.
                #[allow(unreachable_patterns)]
                _ => {
                    return Err(Error::InvalidArgument(
                        "begin_fill returned a result this build of the C ABI does not know".into(),
                    )
                    .into())
                }
            })
        })
    })
}

/// Looks a key up and, on a miss, claims its fill (waiting for another's).
///
/// # Safety
/// As `larder_get`; `fill` NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn larder_fill_begin(
    c: *mut larder_cache,
    key: *const c_void,
    key_len: usize,
    buf: *mut c_void,
    cap: usize,
    len: *mut usize,
    fill: *mut *mut larder_fill,
) -> c_int {
    // SAFETY: the caller's promises are `fill_begin`'s.
    unsafe { fill_begin(Wait::Yes, c, key, key_len, buf, cap, len, fill) }
}

/// `larder_fill_begin` that never waits: `LARDER_E_WOULD_BLOCK` where it would.
///
/// # Safety
/// As `larder_fill_begin`.
#[no_mangle]
pub unsafe extern "C" fn larder_fill_try_begin(
    c: *mut larder_cache,
    key: *const c_void,
    key_len: usize,
    buf: *mut c_void,
    cap: usize,
    len: *mut usize,
    fill: *mut *mut larder_fill,
) -> c_int {
    // SAFETY: the caller's promises are `fill_begin`'s.
    unsafe { fill_begin(Wait::No, c, key, key_len, buf, cap, len, fill) }
}

/// Takes a fill back from the caller if it is the thread that began it; otherwise
/// leaves it as it is.
///
/// # Safety
/// `f` is non-NULL, from `larder_fill_begin`, and not yet finished.
unsafe fn take_fill(f: *mut larder_fill) -> Result<Box<larder_fill>, Failure> {
    // SAFETY: by the caller's promise `f` is a live fill.
    if unsafe { &*f }.owner != this_thread() {
        return Err(Failure::WrongThread);
    }
    // SAFETY: it came from `Box::into_raw` in `fill_begin`, and the caller gives it up.
    Ok(unsafe { Box::from_raw(f) })
}

/// Stores the fill's value (fenced) and ends the fill.
///
/// # Safety
/// `f` NULL or an unfinished fill from `larder_fill_begin`; `val` as in `larder_set`.
#[no_mangle]
pub unsafe extern "C" fn larder_fill_complete(
    f: *mut larder_fill,
    val: *const c_void,
    val_len: usize,
    ttl_ms: u64,
) -> c_int {
    // SAFETY: the caller's promises, passed on.
    unsafe { fill_complete(Wait::Yes, f, val, val_len, ttl_ms) }
}

/// `larder_fill_complete` that never waits for the shard lock: `LARDER_E_WOULD_BLOCK`
/// and the fill is still the caller's (to try again or abandon); otherwise as
/// `larder_fill_complete`, the fill ended and `f` freed.
///
/// # Safety
/// As `larder_fill_complete`.
#[no_mangle]
pub unsafe extern "C" fn larder_fill_try_complete(
    f: *mut larder_fill,
    val: *const c_void,
    val_len: usize,
    ttl_ms: u64,
) -> c_int {
    // SAFETY: the caller's promises, passed on.
    unsafe { fill_complete(Wait::No, f, val, val_len, ttl_ms) }
}

/// # Safety
/// As `larder_fill_complete`.
unsafe fn fill_complete(
    wait: Wait,
    f: *mut larder_fill,
    val: *const c_void,
    val_len: usize,
    ttl_ms: u64,
) -> c_int {
    entry(|| {
        if f.is_null() {
            return Err(Failure::Null("fill"));
        }
        // SAFETY: `f` is non-NULL and live by the caller's promise.
        let held = unsafe { take_fill(f) }?;
        // Read before the fill is consumed: a NULL `val` with a length still ends it
        // (dropping it abandons it), so a waiter computes.
        // SAFETY: the caller's promise for `val`.
        let val = unsafe { bytes(val, val_len, "val") }?;
        let stored = match wait {
            Wait::Yes => held.fill.complete(val, ttl(ttl_ms)),
            Wait::No => match held.fill.try_complete(val, ttl(ttl_ms)) {
                Err(Error::WouldBlock) => {
                    // Still the caller's: hand the box back untouched.
                    let _ = Box::into_raw(held);
                    return Err(Error::WouldBlock.into());
                }
                done => done,
            },
        }?;
        Ok(if stored { LARDER_OK } else { LARDER_FENCED })
    })
}

/// Ends a fill without a value: a waiter computes it instead.
///
/// # Safety
/// `f` NULL or an unfinished fill from `larder_fill_begin`.
#[no_mangle]
pub unsafe extern "C" fn larder_fill_abandon(f: *mut larder_fill) {
    if f.is_null() {
        return;
    }
    entry(|| {
        // SAFETY: `f` is non-NULL and live by the caller's promise.
        drop(unsafe { take_fill(f) }?);
        Ok(LARDER_OK)
    });
}

// ---------------------------------------------------------------------------------------
// Errors

/// The static text of a status; never NULL.
#[no_mangle]
pub extern "C" fn larder_strerror(s: c_int) -> *const c_char {
    status::strerror(s).as_ptr()
}

/// This thread's last error message ("" if none yet); never NULL.
#[no_mangle]
pub extern "C" fn larder_last_error() -> *const c_char {
    status::last_error()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_inside_an_entry_point_is_internal_with_its_message() {
        let s = entry(|| panic!("boom {}", 42));
        assert_eq!(s, LARDER_E_INTERNAL);
        // SAFETY: the library's NUL-terminated message, read before the next error.
        let msg = unsafe { CStr::from_ptr(larder_last_error()) }
            .to_string_lossy()
            .into_owned();
        assert!(
            msg.contains("boom 42") && msg.contains("please report"),
            "{msg}"
        );
    }

    #[test]
    fn a_failure_leaves_its_status_and_message() {
        let s = entry(|| Err(Failure::Null("key")));
        assert_eq!(s, LARDER_E_NULL);
        // SAFETY: as above.
        let msg = unsafe { CStr::from_ptr(larder_last_error()) }
            .to_string_lossy()
            .into_owned();
        assert!(msg.starts_with("key is NULL"), "{msg}");
    }
}
