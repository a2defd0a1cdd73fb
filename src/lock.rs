//! Robust, process-shared glibc mutexes living in the region.
//!
//! Attributes, and why:
//! - `PTHREAD_PROCESS_SHARED`: the mutex lives in a file mapped by many processes.
//! - `PTHREAD_MUTEX_ROBUST`: glibc puts every robust mutex a thread holds on that thread's
//!   robust list, which the kernel walks when the thread dies, setting `FUTEX_OWNER_DIED`
//!   in the lock word and waking one waiter, whose lock call then returns `EOWNERDEAD`.
//!   Recovery needs no polling and no guessing from PIDs. larder registers no robust list
//!   of its own: glibc owns the one per thread.
//! - Type NORMAL, protocol NONE (not PI, not ERRORCHECK or RECURSIVE): PI, ERRORCHECK and
//!   RECURSIVE mutexes compare the owner's thread id with the caller's, and thread ids
//!   collide across pid namespaces (containers sharing /dev/shm), so a waiter in another
//!   container could be told `EDEADLK` or take a recursive lock it does not own. A NORMAL
//!   robust mutex uses the id only for the kernel's owner-died marking, and even that is
//!   not safe across pid namespaces: a thread that dies while *waiting* has the mutex in
//!   its `list_op_pending`, and the kernel marks it owner-dead if the owner field equals
//!   the dying thread's id in its own namespace. So a file is shared by one pid
//!   namespace only (the header's stamp; see `file`).
//!
//! The mutex words are outside the "every value read is checked" promise: glibc follows
//! pointers stored in them. So before each lock call the mutex's static field (`__kind`,
//! written once by `pthread_mutex_init`) is compared with the value recorded in the file
//! header at creation, and a mismatch is reported as corruption instead of handed to
//! glibc.
//!
//! The module also makes larder's two other lock-related libc calls, for `stats`: the
//! open file description lock that claims a statistics slot, and the registration of
//! the fork handler that makes a forked child claim its own. Together with `region` and
//! `mapping`, this is where the crate's `unsafe` code lives.
#![allow(unsafe_code)]

use core::ptr::NonNull;
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use crate::region::Region;

/// Bytes reserved in the file for one mutex: a cache line, which holds glibc's 40-byte
/// `pthread_mutex_t` on x86-64 (48 on aarch64) and keeps neighbouring locks off its line.
pub(crate) const MUTEX_SPACE: usize = 64;

/// Offset of `__kind` inside glibc's `struct __pthread_mutex_s` on 64-bit Linux:
/// `__lock`, `__count`, `__owner`, `__nusers` are four 32-bit fields before it.
const KIND_OFFSET: usize = 16;

const _: () = assert!(core::mem::size_of::<libc::pthread_mutex_t>() <= MUTEX_SPACE);
const _: () = assert!(core::mem::align_of::<libc::pthread_mutex_t>() <= 8);
const _: () = assert!(KIND_OFFSET + 4 <= core::mem::size_of::<libc::pthread_mutex_t>());

extern "C" {
    // glibc >= 2.30. Not in the libc crate; its signature is POSIX's.
    fn pthread_mutex_clocklock(
        mutex: *mut libc::pthread_mutex_t,
        clockid: libc::clockid_t,
        abstime: *const libc::timespec,
    ) -> libc::c_int;
}

/// How a lock was acquired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acquired {
    /// The previous owner unlocked it.
    Clean,
    /// The previous owner died holding it: what it guards must be repaired, then
    /// [`Guard::mark_consistent`] called before unlocking.
    OwnerDied,
}

/// Why a lock was not acquired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LockError {
    /// The deadline passed (or, for `try_lock`, the lock was busy).
    Busy,
    /// The mutex's static field does not match what was written at creation.
    Corrupt(String),
    /// `ENOTRECOVERABLE`: a previous owner unlocked after `EOWNERDEAD` without marking it
    /// consistent. larder never does this; a peer did.
    NotRecoverable,
    /// Any other error code from glibc.
    Other(i32),
}

/// A robust mutex at a fixed offset of a region.
pub(crate) struct RobustMutex<'a> {
    ptr: NonNull<libc::pthread_mutex_t>,
    expected_kind: u32,
    _region: &'a Region,
}

/// The `__kind` value glibc writes for a mutex with larder's attributes, read from a
/// mutex initialised in this process. Stored in the header at creation and compared on
/// open, which checks the lock ABI of every process attaching.
pub(crate) fn native_kind() -> Result<u32, LockError> {
    let r = Region::heap(MUTEX_SPACE);
    init(&r, 0)
}

/// The error for a mutex that could not be initialised (in the file, or the probe of
/// [`native_kind`]).
pub(crate) fn init_error(e: LockError) -> crate::error::Error {
    crate::error::Error::Io(std::io::Error::other(format!("mutex init: {e:?}")))
}

/// Initialises a mutex at `off` with larder's attributes and returns its `__kind`.
pub(crate) fn init(region: &Region, off: usize) -> Result<u32, LockError> {
    let ptr = region
        .raw(off, MUTEX_SPACE)
        .ok_or_else(|| LockError::Corrupt("mutex outside the file".into()))?
        .cast::<libc::pthread_mutex_t>();
    let mut attr = core::mem::MaybeUninit::<libc::pthread_mutexattr_t>::uninit();
    // SAFETY: `attr` is valid for writes of a `pthread_mutexattr_t`.
    let rc = unsafe { libc::pthread_mutexattr_init(attr.as_mut_ptr()) };
    if rc != 0 {
        return Err(LockError::Other(rc));
    }
    let attr_ptr = attr.as_mut_ptr();
    let result = (|| {
        // See the module docs for why these attributes.
        // SAFETY: `attr_ptr` was initialised by `pthread_mutexattr_init` above.
        let rc =
            unsafe { libc::pthread_mutexattr_setpshared(attr_ptr, libc::PTHREAD_PROCESS_SHARED) };
        check(rc)?;
        // SAFETY: as above.
        let rc = unsafe { libc::pthread_mutexattr_setrobust(attr_ptr, libc::PTHREAD_MUTEX_ROBUST) };
        check(rc)?;
        // SAFETY: as above.
        let rc = unsafe { libc::pthread_mutexattr_settype(attr_ptr, libc::PTHREAD_MUTEX_NORMAL) };
        check(rc)?;
        // SAFETY: as above.
        let rc = unsafe { libc::pthread_mutexattr_setprotocol(attr_ptr, libc::PTHREAD_PRIO_NONE) };
        check(rc)?;
        // `ptr` points to MUTEX_SPACE bytes inside the region (checked by `raw`): enough
        // for a `pthread_mutex_t` (static assertion above), and 8-aligned.
        // SAFETY: valid memory; callers initialise mutexes only in a file no other process
        // can see yet (or one held exclusively), so nobody else is using these bytes.
        let rc = unsafe { libc::pthread_mutex_init(ptr.as_ptr(), attr_ptr) };
        check(rc)?;
        Ok(read_kind(ptr))
    })();
    // SAFETY: `attr_ptr` was initialised above and is destroyed exactly once.
    unsafe { libc::pthread_mutexattr_destroy(attr_ptr) };
    result
}

fn check(rc: i32) -> Result<(), LockError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(LockError::Other(rc))
    }
}

fn read_kind(ptr: NonNull<libc::pthread_mutex_t>) -> u32 {
    let field = ptr
        .as_ptr()
        .cast::<u8>()
        .wrapping_add(KIND_OFFSET)
        .cast::<u32>();
    // KIND_OFFSET + 4 is inside the mutex (static assertion above): `field` is in bounds
    // and 4-aligned. A peer's stray write would only make the value wrong (checked).
    // SAFETY: in bounds and aligned; glibc writes this field only in
    // `pthread_mutex_init`, so a volatile read never races a write by glibc.
    unsafe { core::ptr::read_volatile(field) }
}

impl<'a> RobustMutex<'a> {
    /// The mutex at `off`, which must have been initialised by [`init`] with the kind
    /// recorded in the header.
    pub(crate) fn at(
        region: &'a Region,
        off: usize,
        expected_kind: u32,
    ) -> Result<Self, LockError> {
        let ptr = region
            .raw(off, MUTEX_SPACE)
            .ok_or_else(|| LockError::Corrupt("mutex outside the file".into()))?
            .cast();
        Ok(RobustMutex {
            ptr,
            expected_kind,
            _region: region,
        })
    }

    pub(crate) fn check(&self) -> Result<(), LockError> {
        let kind = read_kind(self.ptr);
        if kind == self.expected_kind {
            Ok(())
        } else {
            Err(LockError::Corrupt(format!(
                "mutex kind field is {kind:#x}, expected {:#x}",
                self.expected_kind
            )))
        }
    }

    fn outcome(rc: i32) -> Result<Acquired, LockError> {
        match rc {
            0 => Ok(Acquired::Clean),
            libc::EOWNERDEAD => Ok(Acquired::OwnerDied),
            libc::EBUSY | libc::ETIMEDOUT => Err(LockError::Busy),
            libc::ENOTRECOVERABLE => Err(LockError::NotRecoverable),
            other => Err(LockError::Other(other)),
        }
    }

    /// Acquires without waiting.
    pub(crate) fn try_lock(&self) -> Result<Guard<'_, 'a>, LockError> {
        self.raw_try_lock().map(|acq| Guard::new(self, acq))
    }

    /// Acquires, waiting at most `timeout` (on `CLOCK_MONOTONIC`).
    pub(crate) fn lock(&self, timeout: Duration) -> Result<Guard<'_, 'a>, LockError> {
        self.raw_lock(timeout).map(|acq| Guard::new(self, acq))
    }

    /// Acquires, as [`RobustMutex::lock`] for [`Wait::Yes`] and [`RobustMutex::try_lock`]
    /// for [`Wait::No`].
    pub(crate) fn acquire(
        &self,
        wait: Wait,
        timeout: Duration,
    ) -> Result<Guard<'_, 'a>, LockError> {
        match wait {
            Wait::Yes => self.lock(timeout),
            Wait::No => self.try_lock(),
        }
    }

    fn raw_try_lock(&self) -> Result<Acquired, LockError> {
        self.check()?;
        // SAFETY: the mutex was initialised with larder's attributes (its kind field was
        // just checked against the header), lives in the mapped region for 'a, and glibc's
        // mutex calls are made for concurrent use by many threads and processes.
        let rc = unsafe { libc::pthread_mutex_trylock(self.ptr.as_ptr()) };
        Self::outcome(rc)
    }

    fn raw_lock(&self, timeout: Duration) -> Result<Acquired, LockError> {
        match self.raw_try_lock() {
            Err(LockError::Busy) => {}
            other => return other,
        }
        let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
        let total_ns = (now.tv_nsec as u128)
            .saturating_add(timeout.as_nanos())
            .min(u64::MAX as u128) as u64;
        let secs = (now.tv_sec as u64).saturating_add(total_ns / 1_000_000_000);
        let abstime = libc::timespec {
            tv_sec: secs.min(i64::MAX as u64) as libc::time_t,
            tv_nsec: (total_ns % 1_000_000_000) as libc::c_long,
        };
        // SAFETY: as in `try_lock`; `abstime` is a valid timespec for the call's duration.
        let rc =
            unsafe { pthread_mutex_clocklock(self.ptr.as_ptr(), libc::CLOCK_MONOTONIC, &abstime) };
        match Self::outcome(rc) {
            // glibc returns from a failed robust lock (a timeout above all) with the mutex
            // still in the thread's `list_op_pending`, which the kernel follows if the
            // thread dies: the mapping could then not be unmapped safely. A `trylock`
            // clears it whatever it returns (and if the owner let go meanwhile, it
            // simply acquires).
            Err(e) => match self.raw_try_lock() {
                Ok(acquired) => Ok(acquired),
                Err(_) => Err(e),
            },
            ok => ok,
        }
    }

    /// Marks the state the mutex guards as repaired after `EOWNERDEAD`.
    fn mark_consistent(&self) {
        // SAFETY: called only by the owner after an `OwnerDied` acquisition, as glibc
        // requires; otherwise glibc returns EINVAL and nothing changes.
        let _ = unsafe { libc::pthread_mutex_consistent(self.ptr.as_ptr()) };
    }

    /// Releases a lock kept with [`Guard::keep`] by the calling thread.
    pub(crate) fn release_kept(&self) {
        self.unlock();
    }

    /// Releases a lock held by the calling thread.
    fn unlock(&self) {
        // SAFETY: called only by the thread that acquired the lock (guards are !Send);
        // glibc returns EPERM without side effects otherwise.
        let _ = unsafe { libc::pthread_mutex_unlock(self.ptr.as_ptr()) };
    }
}

/// Takes the open file description lock (`F_OFD_SETLK`, write) on byte `byte` of `fd`
/// without waiting; whether it was taken. The lock belongs to the file description: it
/// is dropped when the description's last descriptor closes.
pub(crate) fn ofd_try_lock(fd: impl AsFd, byte: usize) -> bool {
    // SAFETY: `flock` is a plain C struct for which all-zero bytes are a valid value.
    let mut fl: libc::flock = unsafe { core::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = byte as libc::off_t;
    fl.l_len = 1;
    // Required to be 0 for OFD locks.
    fl.l_pid = 0;
    let fd = fd.as_fd();
    // SAFETY: `fd` is an open descriptor for the call's duration and `fl` a valid,
    // initialised struct that the kernel only reads (F_OFD_SETLK never blocks).
    let rc = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    rc == 0
}

/// Registers `handler` to run in the child after every `fork` (`pthread_atfork`);
/// whether it was registered. The handler runs in the child of a possibly
/// multi-threaded process, where only async-signal-safe work is allowed: larder's one
/// handler does an atomic add.
pub(crate) fn register_atfork_child(handler: extern "C" fn()) -> bool {
    // SAFETY: `pthread_atfork` only records the function pointers, and a function lives
    // for the whole program; the null prepare and parent handlers are allowed.
    let rc = unsafe { libc::pthread_atfork(None, None, Some(handler)) };
    rc == 0
}

/// Whether a lock call may wait (up to its deadline) or makes one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wait {
    Yes,
    /// A `try_` operation: at most non-blocking attempts.
    No,
}

/// A lock held by the calling thread, unlocked when the guard drops (as lock_api's
/// `MutexGuard`).
///
/// If [`Guard::owner_died`], what the mutex guards must be repaired, then
/// [`Guard::mark_consistent`] called. A guard dropped before that (a panic cut the
/// repair short) marks the mutex consistent anyway before unlocking: unlocking an
/// owner-dead mutex unmarked would make it unrecoverable for everyone, while what it
/// guards stays marked unfinished by its own means (a shard's odd sequence counter), so
/// the next owner repairs it again.
#[must_use = "the lock is released when the guard drops"]
pub(crate) struct Guard<'m, 'a> {
    m: &'m RobustMutex<'a>,
    owner_died: bool,
    /// A robust mutex belongs to the thread that locked it.
    _not_send: core::marker::PhantomData<*const ()>,
}

impl<'m, 'a> Guard<'m, 'a> {
    fn new(m: &'m RobustMutex<'a>, acquired: Acquired) -> Guard<'m, 'a> {
        Guard {
            m,
            owner_died: acquired == Acquired::OwnerDied,
            _not_send: core::marker::PhantomData,
        }
    }

    /// Whether the previous owner died holding the lock.
    pub(crate) fn owner_died(&self) -> bool {
        self.owner_died
    }

    /// Keeps the lock held past the guard, for a lock held as long as a value lives
    /// (the near-cache lease), released with [`RobustMutex::release_kept`] by the same
    /// thread. Marks an owner-dead mutex consistent (it guards no shared data that
    /// needs repair) and says whether its owner had died.
    pub(crate) fn keep(mut self) -> bool {
        let died = self.owner_died;
        self.mark_consistent();
        core::mem::forget(self);
        died
    }

    /// Marks what the mutex guards as repaired after its owner died (nothing if it did
    /// not).
    pub(crate) fn mark_consistent(&mut self) {
        if self.owner_died {
            self.m.mark_consistent();
            self.owner_died = false;
        }
    }
}

impl Drop for Guard<'_, '_> {
    fn drop(&mut self) {
        self.mark_consistent();
        self.m.unlock();
    }
}

impl std::fmt::Display for LockError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LockError::Busy => f.write_str("held by another thread or process"),
            LockError::Corrupt(detail) => f.write_str(detail),
            LockError::NotRecoverable => f.write_str(
                "not recoverable (a process unlocked it after its owner died without \
                 repairing)",
            ),
            LockError::Other(code) => write!(f, "{}", std::io::Error::from_raw_os_error(*code)),
        }
    }
}

impl LockError {
    /// The crate's error for a lock on `what` (a shard lock, a fill slot) of the file at
    /// `path`, after waiting `waited` (or, with [`Wait::No`], not at all).
    pub(crate) fn into_error(
        self,
        path: &std::path::Path,
        what: &'static str,
        waited: Duration,
        wait: Wait,
    ) -> crate::error::Error {
        use crate::error::Error;
        match self {
            LockError::Busy if wait == Wait::Yes => Error::Timeout { what, waited },
            LockError::Busy => Error::WouldBlock,
            LockError::Corrupt(_) | LockError::NotRecoverable => Error::Corrupt {
                path: path.to_path_buf(),
                detail: format!("{what}: {self}"),
            },
            LockError::Other(code) => Error::Io(std::io::Error::from_raw_os_error(code)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_unlock_and_kind_check() {
        let r = Region::heap(MUTEX_SPACE);
        let kind = init(&r, 0).expect("init");
        assert_eq!(kind, native_kind().expect("native"));
        let m = RobustMutex::at(&r, 0, kind).expect("mutex");
        let g = m.lock(Duration::from_millis(10)).expect("lock");
        assert!(!g.owner_died());
        assert!(matches!(m.try_lock(), Err(LockError::Busy)));
        drop(g);
        drop(m.try_lock().expect("unlocked by the guard"));
        let wrong = RobustMutex::at(&r, 0, kind ^ 1).expect("mutex");
        assert!(matches!(wrong.try_lock(), Err(LockError::Corrupt(_))));
    }

    #[test]
    fn owner_thread_death_is_reported_once() {
        let r = std::sync::Arc::new(Region::heap(MUTEX_SPACE));
        let kind = init(&r, 0).expect("init");
        let r2 = r.clone();
        std::thread::spawn(move || {
            let m = RobustMutex::at(&r2, 0, kind).expect("mutex");
            let g = m.try_lock().expect("lock");
            assert!(!g.owner_died());
            // The thread exits holding the lock: glibc's robust list marks it dead.
            std::mem::forget(g);
        })
        .join()
        .expect("thread");
        let m = RobustMutex::at(&r, 0, kind).expect("mutex");
        let mut g = m.lock(Duration::from_secs(5)).expect("lock");
        assert!(g.owner_died());
        g.mark_consistent();
        drop(g);
        let g = m.lock(Duration::from_secs(5)).expect("lock");
        assert!(!g.owner_died());
    }

    /// A guard dropped before its owner-dead mutex was marked consistent (a repair cut
    /// short by a panic) marks it anyway: the mutex stays recoverable.
    #[test]
    fn an_unmarked_owner_dead_guard_leaves_the_mutex_recoverable() {
        let r = std::sync::Arc::new(Region::heap(MUTEX_SPACE));
        let kind = init(&r, 0).expect("init");
        let r2 = r.clone();
        std::thread::spawn(move || {
            let m = RobustMutex::at(&r2, 0, kind).expect("mutex");
            std::mem::forget(m.try_lock().expect("lock"));
        })
        .join()
        .expect("thread");
        let m = RobustMutex::at(&r, 0, kind).expect("mutex");
        let g = m.lock(Duration::from_secs(5)).expect("lock");
        assert!(g.owner_died());
        drop(g);
        let g = m.lock(Duration::from_secs(5)).expect("still recoverable");
        assert!(!g.owner_died());
    }

    /// The calling thread's robust-list `list_op_pending`: the mutex the kernel treats as
    /// being acquired if the thread dies now.
    fn list_op_pending() -> usize {
        let mut head: *mut libc::c_void = core::ptr::null_mut();
        let mut len: libc::size_t = 0;
        // SAFETY: get_robust_list(0, ..) writes the caller's head pointer and its length
        // into the two locals.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_get_robust_list,
                0,
                &mut head as *mut *mut libc::c_void,
                &mut len as *mut libc::size_t,
            )
        };
        assert_eq!(rc, 0, "get_robust_list");
        assert!(!head.is_null() && len >= 3 * core::mem::size_of::<usize>());
        // `struct robust_list_head { list; long futex_offset; list_op_pending; }`: the
        // third word.
        let pending = head.cast::<usize>().wrapping_add(2);
        // SAFETY: `head` is this thread's glibc-owned robust list head, alive while the
        // thread runs and at least `len` bytes long, so its third word is in bounds.
        unsafe { core::ptr::read(pending) }
    }

    /// A lock call that gives up at its deadline leaves nothing on the thread's robust
    /// list pointing at the mutex: otherwise the mutex's mapping could not be unmapped
    /// safely (the kernel follows that pointer when the thread dies).
    #[test]
    fn a_timed_out_lock_leaves_no_pending_robust_entry() {
        let r = std::sync::Arc::new(Region::heap(MUTEX_SPACE));
        let kind = init(&r, 0).expect("init");
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let r2 = r.clone();
        let holder = std::thread::spawn(move || {
            let m = RobustMutex::at(&r2, 0, kind).expect("mutex");
            let g = m.try_lock().expect("lock");
            held_tx.send(()).expect("send");
            let _ = done_rx.recv_timeout(Duration::from_secs(10));
            drop(g);
        });
        held_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("holder locked");
        let m = RobustMutex::at(&r, 0, kind).expect("mutex");
        assert!(matches!(
            m.lock(Duration::from_millis(20)),
            Err(LockError::Busy)
        ));
        assert_eq!(list_op_pending(), 0, "after a timed-out lock");
        assert!(matches!(m.try_lock(), Err(LockError::Busy)));
        assert_eq!(list_op_pending(), 0, "after a busy try_lock");
        done_tx.send(()).expect("send");
        holder.join().expect("holder");
    }
}
