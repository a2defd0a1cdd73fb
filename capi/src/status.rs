//! The status codes of the C ABI, the one mapping from [`larder_core::Error`] to them,
//! and the thread's last error message.
//!
//! The numbers are the header's (`include/larder.h`, `enum larder_status`); a test reads
//! the header and checks that every constant here has its value there. They are plain
//! `c_int`s rather than a Rust enum: `larder_strerror` takes any integer a C caller passes,
//! and a Rust enum holding a value it does not list would be undefined behaviour.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString};

use larder_core::{Error, Remedy};

/// The value of a `larder_status`.
pub type Status = c_int;

pub const LARDER_OK: Status = 0;
pub const LARDER_MISS: Status = 1;
pub const LARDER_EXISTS: Status = 2;
pub const LARDER_FENCED: Status = 3;
pub const LARDER_TOO_SMALL: Status = 4;
pub const LARDER_STALE: Status = 5;
pub const LARDER_FILL: Status = 6;
pub const LARDER_E_NULL: Status = 100;
pub const LARDER_E_INTERNAL: Status = 101;
pub const LARDER_E_INVALID_NAME: Status = 102;
pub const LARDER_E_INVALID_OPTIONS: Status = 103;
pub const LARDER_E_TOO_LARGE: Status = 104;
pub const LARDER_E_INCOMPATIBLE: Status = 105;
pub const LARDER_E_VERSION: Status = 106;
pub const LARDER_E_NOT_A_CACHE: Status = 107;
pub const LARDER_E_CORRUPT: Status = 108;
pub const LARDER_E_UNSAFE_FILE: Status = 109;
pub const LARDER_E_TRUNCATED: Status = 110;
pub const LARDER_E_OTHER_BOOT: Status = 111;
pub const LARDER_E_OTHER_PID_NAMESPACE: Status = 112;
pub const LARDER_E_OTHER_TIME_NAMESPACE: Status = 113;
pub const LARDER_E_DETACHED: Status = 114;
pub const LARDER_E_NOT_A_COUNTER: Status = 115;
pub const LARDER_E_OVERFLOW: Status = 116;
pub const LARDER_E_INVALID_ARGUMENT: Status = 117;
pub const LARDER_E_NO_SPACE: Status = 118;
pub const LARDER_E_TIMEOUT: Status = 119;
pub const LARDER_E_WOULD_BLOCK: Status = 120;
pub const LARDER_E_IN_USE: Status = 121;
pub const LARDER_E_NOT_FOUND: Status = 122;
pub const LARDER_E_PROC_UNAVAILABLE: Status = 123;
pub const LARDER_E_IO: Status = 124;
/// Reserved: `larder_core::Error` has no "unsupported" variant today.
pub const LARDER_E_UNSUPPORTED: Status = 125;
pub const LARDER_E_WRONG_THREAD: Status = 126;

/// Every status with its name as the header spells it (for the tests and `strerror`).
pub const ALL: &[(Status, &str)] = &[
    (LARDER_OK, "LARDER_OK"),
    (LARDER_MISS, "LARDER_MISS"),
    (LARDER_EXISTS, "LARDER_EXISTS"),
    (LARDER_FENCED, "LARDER_FENCED"),
    (LARDER_TOO_SMALL, "LARDER_TOO_SMALL"),
    (LARDER_STALE, "LARDER_STALE"),
    (LARDER_FILL, "LARDER_FILL"),
    (LARDER_E_NULL, "LARDER_E_NULL"),
    (LARDER_E_INTERNAL, "LARDER_E_INTERNAL"),
    (LARDER_E_INVALID_NAME, "LARDER_E_INVALID_NAME"),
    (LARDER_E_INVALID_OPTIONS, "LARDER_E_INVALID_OPTIONS"),
    (LARDER_E_TOO_LARGE, "LARDER_E_TOO_LARGE"),
    (LARDER_E_INCOMPATIBLE, "LARDER_E_INCOMPATIBLE"),
    (LARDER_E_VERSION, "LARDER_E_VERSION"),
    (LARDER_E_NOT_A_CACHE, "LARDER_E_NOT_A_CACHE"),
    (LARDER_E_CORRUPT, "LARDER_E_CORRUPT"),
    (LARDER_E_UNSAFE_FILE, "LARDER_E_UNSAFE_FILE"),
    (LARDER_E_TRUNCATED, "LARDER_E_TRUNCATED"),
    (LARDER_E_OTHER_BOOT, "LARDER_E_OTHER_BOOT"),
    (LARDER_E_OTHER_PID_NAMESPACE, "LARDER_E_OTHER_PID_NAMESPACE"),
    (
        LARDER_E_OTHER_TIME_NAMESPACE,
        "LARDER_E_OTHER_TIME_NAMESPACE",
    ),
    (LARDER_E_DETACHED, "LARDER_E_DETACHED"),
    (LARDER_E_NOT_A_COUNTER, "LARDER_E_NOT_A_COUNTER"),
    (LARDER_E_OVERFLOW, "LARDER_E_OVERFLOW"),
    (LARDER_E_INVALID_ARGUMENT, "LARDER_E_INVALID_ARGUMENT"),
    (LARDER_E_NO_SPACE, "LARDER_E_NO_SPACE"),
    (LARDER_E_TIMEOUT, "LARDER_E_TIMEOUT"),
    (LARDER_E_WOULD_BLOCK, "LARDER_E_WOULD_BLOCK"),
    (LARDER_E_IN_USE, "LARDER_E_IN_USE"),
    (LARDER_E_NOT_FOUND, "LARDER_E_NOT_FOUND"),
    (LARDER_E_PROC_UNAVAILABLE, "LARDER_E_PROC_UNAVAILABLE"),
    (LARDER_E_IO, "LARDER_E_IO"),
    (LARDER_E_UNSUPPORTED, "LARDER_E_UNSUPPORTED"),
    (LARDER_E_WRONG_THREAD, "LARDER_E_WRONG_THREAD"),
];

/// The status of a library error: the one place that maps them, so the same error has
/// the same code from every call (and every binding reading the codes).
pub fn status_of(e: &Error) -> Status {
    match e {
        Error::InvalidName { .. } => LARDER_E_INVALID_NAME,
        Error::InvalidOptions(_) => LARDER_E_INVALID_OPTIONS,
        Error::TooLarge { .. } => LARDER_E_TOO_LARGE,
        Error::Incompatible { .. } => LARDER_E_INCOMPATIBLE,
        Error::Version { .. } => LARDER_E_VERSION,
        Error::NotACache { .. } => LARDER_E_NOT_A_CACHE,
        Error::Corrupt { .. } => LARDER_E_CORRUPT,
        Error::UnsafeFile { .. } => LARDER_E_UNSAFE_FILE,
        Error::Truncated { .. } => LARDER_E_TRUNCATED,
        Error::OtherBoot { .. } => LARDER_E_OTHER_BOOT,
        Error::OtherPidNamespace { .. } => LARDER_E_OTHER_PID_NAMESPACE,
        Error::OtherTimeNamespace { .. } => LARDER_E_OTHER_TIME_NAMESPACE,
        Error::Detached { .. } => LARDER_E_DETACHED,
        Error::NotACounter { .. } => LARDER_E_NOT_A_COUNTER,
        Error::Overflow { .. } => LARDER_E_OVERFLOW,
        Error::InvalidArgument(_) => LARDER_E_INVALID_ARGUMENT,
        Error::NoSpace { .. } => LARDER_E_NO_SPACE,
        Error::Timeout { .. } => LARDER_E_TIMEOUT,
        Error::WouldBlock => LARDER_E_WOULD_BLOCK,
        Error::InUse { .. } => LARDER_E_IN_USE,
        Error::NotFound { .. } => LARDER_E_NOT_FOUND,
        Error::ProcUnavailable { .. } => LARDER_E_PROC_UNAVAILABLE,
        Error::Io(_) => LARDER_E_IO,
        // A variant added to the library after this mapping: not a bug of the caller's,
        // but one this build cannot name; its message still says what happened.
        _ => LARDER_E_UNSUPPORTED,
    }
}

/// The static text of a status (never NULL; an unknown value has one too).
pub fn strerror(s: Status) -> &'static CStr {
    match s {
        LARDER_OK => c"success",
        LARDER_MISS => c"no fresh entry",
        LARDER_EXISTS => c"a fresh entry exists, or its version moved",
        LARDER_FENCED => c"not stored: the key was revoked since the fill or ticket began",
        LARDER_TOO_SMALL => c"the buffer is too small: *len holds the size needed",
        LARDER_STALE => c"an expired value was copied",
        LARDER_FILL => {
            c"the caller holds the key's fill: compute the value, then complete or abandon it"
        }
        LARDER_E_NULL => c"a required pointer was NULL",
        LARDER_E_INTERNAL => c"internal error in larder (a bug: please report it)",
        LARDER_E_INVALID_NAME => c"invalid cache name",
        LARDER_E_INVALID_OPTIONS => c"invalid options",
        LARDER_E_TOO_LARGE => c"key or value over the cache's limit",
        LARDER_E_INCOMPATIBLE => {
            c"the cache file was created with other parameters or by another build"
        }
        LARDER_E_VERSION => c"the cache file has another format version",
        LARDER_E_NOT_A_CACHE => c"not a larder cache file",
        LARDER_E_CORRUPT => c"the cache file is corrupt",
        LARDER_E_UNSAFE_FILE => c"the cache file may not be trusted (owner, mode or type)",
        LARDER_E_TRUNCATED => c"the cache file was truncated",
        LARDER_E_OTHER_BOOT => c"the cache file was created during another boot",
        LARDER_E_OTHER_PID_NAMESPACE => c"the cache file was created in another pid namespace",
        LARDER_E_OTHER_TIME_NAMESPACE => c"the cache file was created in another time namespace",
        LARDER_E_DETACHED => c"the cache file was replaced or removed and the handle cannot attach",
        LARDER_E_NOT_A_COUNTER => c"the value is not a counter (8 bytes, little-endian int64)",
        LARDER_E_OVERFLOW => c"the counter would overflow int64",
        LARDER_E_INVALID_ARGUMENT => c"invalid argument",
        LARDER_E_NO_SPACE => c"no space for the cache file",
        LARDER_E_TIMEOUT => c"timed out waiting for a lock or a fill held by another process",
        LARDER_E_WOULD_BLOCK => c"the operation would block",
        LARDER_E_IN_USE => c"the cache file is in use by attached processes",
        LARDER_E_NOT_FOUND => c"no cache file exists at this name",
        LARDER_E_PROC_UNAVAILABLE => c"/proc is not mounted",
        LARDER_E_IO => c"I/O error",
        LARDER_E_UNSUPPORTED => c"an error this build of the C ABI does not name",
        LARDER_E_WRONG_THREAD => c"the fill belongs to another thread (the one that began it)",
        _ => c"unknown larder status",
    }
}

/// Why a call failed: a library error, or one of the boundary's own.
#[derive(Debug)]
pub enum Failure {
    /// An error of the library.
    Core(Error),
    /// A required pointer argument (named) was NULL.
    Null(&'static str),
    /// A fill was finished from a thread other than the one that began it.
    WrongThread,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Core(e)
    }
}

impl Failure {
    pub fn status(&self) -> Status {
        match self {
            Failure::Core(e) => status_of(e),
            Failure::Null(_) => LARDER_E_NULL,
            Failure::WrongThread => LARDER_E_WRONG_THREAD,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Failure::Core(e) => message(e),
            Failure::Null(arg) => format!("{arg} is NULL where a pointer is required"),
            Failure::WrongThread => "the fill was begun by another thread: only that thread \
                 may complete or abandon it (the fill is left as it was)"
                .into(),
        }
    }
}

/// What happened, then what to do in this ABI's terms (`larder_options` fields and the
/// `larder` command), where the library's own `Display` names Rust calls.
pub fn message(e: &Error) -> String {
    let summary = e.summary();
    let name = e.name().unwrap_or_else(|| "NAME".into());
    let remedy = match e.remedy() {
        None => return summary,
        Some(Remedy::UseOrRemove) => format!(
            "open it with attach_only set in larder_options to use its own parameters, or \
             remove it to recreate it (`larder rm {name}`, the larder command)"
        ),
        Some(Remedy::Repair) => format!(
            "repair it (`larder repair {name}` with no process attached, `--online` while \
             processes use it), or remove it if its header is damaged (`larder rm {name}`)"
        ),
        Some(Remedy::RepairOffline) => format!(
            "repair it with no process attached (`larder repair {name}`), or remove it \
             (`larder rm {name}`)"
        ),
        Some(Remedy::AllowOwner { uid }) => format!(
            "accept that owner: add {uid} to allow_uids in larder_options (and count it in \
             allow_uids_count), or run the processes sharing it as uid {uid}"
        ),
        Some(Remedy::Create) => {
            "create it: open it without attach_only in larder_options".to_string()
        }
        Some(Remedy::CreateAsOwner { uid, gid, mode }) => format!(
            "restart the process of uid {uid} that created it (a pool's master), or create it \
             as uid {uid}: `larder create {name} --mode {mode:o} --group {gid} --capacity SIZE`"
        ),
        Some(Remedy::RaiseLimit { what }) => format!(
            "create the cache with a larger max_{what}_len in larder_options (`larder rm \
             {name}` first)"
        ),
        // A remedy this build does not know how to word: the summary alone.
        Some(_) => return summary,
    };
    format!("{summary}; {remedy}")
}

thread_local! {
    /// This thread's last error message, NUL-terminated for `larder_last_error`.
    static LAST_ERROR: RefCell<Option<CString>> = const { RefCell::new(None) };
}

/// Records `msg` as this thread's last error (a NUL inside it becomes `?`).
pub fn set_last_error(msg: &str) {
    let bytes: Vec<u8> = msg.bytes().map(|b| if b == 0 { b'?' } else { b }).collect();
    // No NUL is left, so this cannot fail; an empty message is the fallback anyway.
    let c = CString::new(bytes).unwrap_or_default();
    // `try_with`: during this thread's exit the slot may be gone; the message is then
    // of no use to anyone.
    let _ = LAST_ERROR.try_with(|slot| {
        if let Ok(mut s) = slot.try_borrow_mut() {
            *s = Some(c);
        }
    });
}

/// This thread's last error message; valid until the next error on this thread.
pub fn last_error() -> *const c_char {
    LAST_ERROR
        .try_with(|slot| match slot.try_borrow().as_deref() {
            Ok(Some(s)) => s.as_ptr(),
            _ => c"".as_ptr(),
        })
        .unwrap_or(c"".as_ptr())
}
