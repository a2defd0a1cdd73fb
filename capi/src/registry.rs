//! The process-wide registry of open handles, which makes a re-open cheap: opening the
//! same name with the same options again returns the handle already open, with one more
//! reference, and no open, mmap or flock.
//!
//! # Fork
//!
//! A forked child gets a copy of the registry's memory, and only the thread that called
//! `fork`. If another thread of the parent held the registry's lock at that moment, a
//! `std::sync::Mutex` would stay locked in the child forever, and the map it guards may
//! be half-changed. So the lock is a word naming its holder by process id and fork
//! generation (bumped in every child by a `pthread_atfork` handler, which guards against
//! a process id being reused): a thread that finds the word naming anyone but this
//! process, in this generation, knows the holder is a thread a fork left behind, takes
//! the lock over, and starts an empty map (the old one may be torn, so it is leaked, never
//! read or freed). The handles themselves live outside the map and stay valid: a child
//! keeps using the ones it inherited; it merely opens a fresh handle for a name the lost
//! map knew. A `fork` never waits for this lock (no prepare handler takes it).
//!
//! Within one process the lock is held only around a map lookup, insert or removal
//! (never around opening a file), so a waiter spins briefly, up to a deadline.

use std::cell::UnsafeCell;
use std::collections::HashMap;
use std::ffi::OsString;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use larder_core::{Cache, Error};

/// How long a thread waits for the registry's lock, held by another thread of this
/// process for a map operation (microseconds), before giving up with a timeout: only a
/// stopped process waits this long.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// What makes two opens the same: the file's resolved path (or the name as given, for an
/// alias) and the options after defaults were applied (so 0 and the default value are
/// the same). The path is kept as bytes: hashing a `Path` parses its components.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub path: OsString,
    pub capacity: u64,
    pub max_key_len: usize,
    pub max_value_len: usize,
    pub shards: usize,
    pub lock_timeout_ms: u64,
    pub fill_timeout_ms: u64,
    pub mode: u32,
    pub attach_only: bool,
    /// The file's group at creation (`None`: the process's effective group).
    pub group: Option<u32>,
    /// Owners accepted besides the caller's effective uid, sorted, without repeats.
    pub allow_uids: Vec<u32>,
}

/// What a `larder_cache *` points to.
pub struct Handle {
    pub cache: Cache,
    /// Opens not yet closed, in this process (a forked child has its own copy).
    refs: AtomicUsize,
}

/// A map value: the handle's address (the map only names handles; each is freed by the
/// close that drops its last reference).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Ptr(*mut Handle);
// SAFETY: a `Ptr` is only an address kept in the map and compared or handed back under
// the registry's lock; what it points to (`Handle`: a `Cache` and atomics) is Send and
// Sync itself.
unsafe impl Send for Ptr {}

struct Registry {
    /// 0 when free, else the holder's `me()`.
    lock: AtomicU64,
    map: UnsafeCell<Option<HashMap<Key, Ptr>>>,
}

// SAFETY: `map` is only reached through a `Guard`, which exists only while `lock` holds
// this thread's `me()` (set by a compare-exchange), so one thread at a time touches it.
unsafe impl Sync for Registry {}

static REGISTRY: Registry = Registry {
    lock: AtomicU64::new(0),
    map: UnsafeCell::new(None),
};

/// Bumped in every forked child, by the `pthread_atfork` handler.
static FORK_GEN: AtomicU32 = AtomicU32::new(0);
/// 0: the fork handler is not registered, 1: a thread is registering it, 2: registered.
static ATFORK: AtomicU8 = AtomicU8::new(0);

extern "C" fn after_fork_in_child() {
    // Async-signal-safe: one atomic add.
    FORK_GEN.fetch_add(1, Ordering::Relaxed);
}

/// Registers the fork handler once per process. Never waits (a `Once` would hang a
/// child forked while another thread was inside it); a thread that finds another
/// registering goes on, and the process id in the lock word covers the moment until the
/// handler is in place.
fn register_atfork() {
    if ATFORK.load(Ordering::Acquire) == 2 {
        return;
    }
    if ATFORK
        .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
        .is_ok()
    {
        // SAFETY: `pthread_atfork` only records the function pointer, and the function
        // lives as long as the program (the library is never unloaded while a handle
        // is open; glibc removes the handlers of a library dlclose unloads).
        unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };
        ATFORK.store(2, Ordering::Release);
    }
}

/// Registered when the shared library is loaded (before any thread can use it), so
/// the lazy registration above is only the fallback of static links, whose linker may
/// drop this entry.
#[used]
#[link_section = ".init_array"]
static REGISTER_AT_LOAD: extern "C" fn() = {
    extern "C" fn at_load() {
        register_atfork();
    }
    at_load
};

/// This thread's value for the lock word: the process id and fork generation (never 0,
/// since no process has pid 0).
fn me() -> u64 {
    // SAFETY: getpid has no preconditions and cannot fail.
    let pid = unsafe { libc::getpid() } as u32;
    (u64::from(pid) << 32) | u64::from(FORK_GEN.load(Ordering::Relaxed))
}

/// The registry's map, locked.
struct Guard {
    me: u64,
}

impl Guard {
    fn lock() -> Result<Guard, Error> {
        register_atfork();
        let me = me();
        let start = Instant::now();
        loop {
            let cur = REGISTRY.lock.load(Ordering::Acquire);
            if cur == 0 {
                if REGISTRY
                    .lock
                    .compare_exchange(0, me, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    return Ok(Guard { me });
                }
            } else if cur != me {
                // The holder is no thread of this process: a fork left it behind
                // mid-operation. Take over, and drop its possibly torn map unread.
                if REGISTRY
                    .lock
                    .compare_exchange(cur, me, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
                {
                    // SAFETY: the lock word now holds `me`, so this thread alone
                    // reaches `map` (see `Registry`'s Sync).
                    let map = unsafe { &mut *REGISTRY.map.get() };
                    // Leaked: a map another thread was changing may not be walked.
                    std::mem::forget(map.take());
                    return Ok(Guard { me });
                }
            }
            if start.elapsed() >= LOCK_WAIT {
                return Err(Error::Timeout {
                    what: "the registry of open caches (held by another thread of this \
                           process)",
                    waited: start.elapsed(),
                });
            }
            std::thread::yield_now();
        }
    }

    fn map(&mut self) -> &mut HashMap<Key, Ptr> {
        debug_assert_eq!(REGISTRY.lock.load(Ordering::Relaxed), self.me);
        // SAFETY: this guard's thread holds the lock (`me` is in the word), and the
        // returned borrow is tied to `&mut self`, so no second one exists at once.
        let map = unsafe { &mut *REGISTRY.map.get() };
        map.get_or_insert_with(HashMap::new)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        REGISTRY.lock.store(0, Ordering::Release);
    }
}

/// The handle for a name: the open one with one more reference, or a new one.
///
/// `alias` is the key of the name as given, where it means the same file in every call
/// (a bare name, or an absolute path): it is looked up first, so a re-open costs one map
/// lookup and resolves nothing. Otherwise `resolve` gives the canonical key, and `open`
/// opens the file (called without the lock held: opening reads and maps it). Both keys
/// then name the handle.
pub fn open(
    alias: Option<Key>,
    resolve: impl FnOnce() -> Result<Key, Error>,
    open: impl FnOnce(&Key) -> Result<Cache, Error>,
) -> Result<*mut Handle, Error> {
    if let Some(a) = &alias {
        let mut g = Guard::lock()?;
        if let Some(p) = bump(&mut g, a) {
            return Ok(p);
        }
    }
    let key = resolve()?;
    {
        let mut g = Guard::lock()?;
        if let Some(p) = bump(&mut g, &key) {
            if let Some(a) = alias {
                g.map().insert(a, Ptr(p));
            }
            return Ok(p);
        }
    }
    let fresh = Box::new(Handle {
        cache: open(&key)?,
        refs: AtomicUsize::new(1),
    });
    let mut g = Guard::lock()?;
    if let Some(p) = bump(&mut g, &key) {
        // Another thread opened it meanwhile: use its handle, drop ours (unlocked).
        if let Some(a) = alias {
            g.map().insert(a, Ptr(p));
        }
        drop(g);
        drop(fresh);
        return Ok(p);
    }
    let p = Box::into_raw(fresh);
    g.map().insert(key, Ptr(p));
    if let Some(a) = alias {
        g.map().insert(a, Ptr(p));
    }
    Ok(p)
}

/// The handle `key` names, with one more reference.
fn bump(g: &mut Guard, key: &Key) -> Option<*mut Handle> {
    g.map().get(key).map(|&Ptr(p)| {
        // SAFETY: a handle in the map is live (its last close removes it first, under
        // this lock).
        unsafe { &*p }.refs.fetch_add(1, Ordering::Relaxed);
        p
    })
}

/// Drops one reference to `p`, and the handle with the last one.
///
/// # Safety
/// `p` came from [`open`] and this process has not yet dropped the reference this call
/// drops.
pub unsafe fn close(p: *mut Handle) -> Result<(), Error> {
    let last = {
        let mut g = Guard::lock()?;
        // SAFETY: the caller holds a reference, so the handle is live.
        let h = unsafe { &*p };
        // Decremented under the lock, so no `open` can find it at 0 and revive it.
        let last = h.refs.fetch_sub(1, Ordering::AcqRel) == 1;
        if last {
            // Every key naming it (the canonical one and the aliases): a handful.
            g.map().retain(|_, v| *v != Ptr(p));
        }
        last
    };
    if last {
        // SAFETY: the last reference is gone and the map no longer names `p`, so
        // nothing else reaches it; it came from `Box::into_raw` in `open`.
        drop(unsafe { Box::from_raw(p) });
    }
    Ok(())
}

/// How many references `p` has (for tests).
///
/// # Safety
/// `p` is a handle the caller holds a reference to.
#[cfg(test)]
pub unsafe fn refs(p: *mut Handle) -> usize {
    // SAFETY: the caller holds a reference, so the handle is live.
    unsafe { &*p }.refs.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{wait_child, TempDir};

    fn key(path: &std::path::Path) -> Key {
        Key {
            path: path.as_os_str().to_os_string(),
            capacity: 4 << 20,
            max_key_len: 256,
            max_value_len: 4096,
            shards: 0,
            lock_timeout_ms: 500,
            fill_timeout_ms: 5000,
            mode: 0o600,
            attach_only: false,
            group: None,
            allow_uids: Vec::new(),
        }
    }

    /// The tests of this module share the process's one registry, and one of them
    /// plants a foreign lock word (which empties the map): they run one at a time.
    fn serial() -> std::sync::MutexGuard<'static, ()> {
        static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
        SERIAL.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn dir(tag: &str) -> TempDir {
        TempDir::new(&format!("reg-{tag}"))
    }

    fn opener(path: std::path::PathBuf) -> impl FnOnce(&Key) -> Result<Cache, Error> {
        move |_| {
            larder_core::Options::new()
                .capacity(4 << 20)
                .max_value_len(4096)
                .open(path)
        }
    }

    /// `open` with only the canonical key.
    fn open_key(
        key: Key,
        open_file: impl FnOnce(&Key) -> Result<Cache, Error>,
    ) -> Result<*mut Handle, Error> {
        open(None, || Ok(key), open_file)
    }

    #[test]
    fn same_key_gives_same_handle_until_last_close() {
        let _serial = serial();
        let d = dir("same");
        let path = d.0.join("c");
        let a = open_key(key(&path), opener(path.clone())).unwrap();
        let b = open_key(key(&path), |_| panic!("a re-open must not open the file")).unwrap();
        assert_eq!(a, b);
        // SAFETY: held.
        assert_eq!(unsafe { refs(a) }, 2);
        // SAFETY: both references are held.
        unsafe { close(b) }.unwrap();
        // SAFETY: held.
        assert_eq!(unsafe { refs(a) }, 1);
        // SAFETY: the last reference.
        unsafe { close(a) }.unwrap();
        // Gone from the map: the next open opens the file again.
        let mut opened = false;
        let c = open_key(key(&path), |k| {
            opened = true;
            opener(path.clone())(k)
        })
        .unwrap();
        assert!(opened);
        // SAFETY: held.
        unsafe { close(c) }.unwrap();
    }

    #[test]
    fn an_alias_finds_the_handle_without_resolving_and_goes_with_it() {
        let _serial = serial();
        let d = dir("alias");
        let path = d.0.join("c");
        let mut alias = key(&path);
        alias.path = "as-given".into();
        let a = open(Some(alias.clone()), || Ok(key(&path)), opener(path.clone())).unwrap();
        let b = open(
            Some(alias.clone()),
            || panic!("an alias hit must not resolve"),
            |_| panic!("nor open"),
        )
        .unwrap();
        assert_eq!(a, b);
        // The canonical key names it too.
        let c = open_key(key(&path), |_| panic!("a re-open must not open the file")).unwrap();
        assert_eq!(a, c);
        for p in [a, b, c] {
            // SAFETY: three references held, each dropped once.
            unsafe { close(p) }.unwrap();
        }
        // Both keys went with the last close.
        let mut resolved = false;
        let d2 = open(
            Some(alias),
            || {
                resolved = true;
                Ok(key(&path))
            },
            opener(path.clone()),
        )
        .unwrap();
        assert!(resolved);
        // SAFETY: held once.
        unsafe { close(d2) }.unwrap();
    }

    #[test]
    fn other_options_give_another_handle() {
        let _serial = serial();
        let d = dir("opts");
        let path = d.0.join("c");
        let a = open_key(key(&path), opener(path.clone())).unwrap();
        let mut k = key(&path);
        k.lock_timeout_ms = 200;
        let b = open_key(k, opener(path.clone())).unwrap();
        assert_ne!(a, b);
        // SAFETY: each held once.
        unsafe { close(a) }.unwrap();
        // SAFETY: as above.
        unsafe { close(b) }.unwrap();
    }

    /// A lock word left by a thread of the parent (another process id) is taken over,
    /// and the map it guarded is not trusted.
    #[test]
    fn lock_left_by_a_forked_away_holder_is_taken_over() {
        let _serial = serial();
        let d = dir("takeover");
        let path = d.0.join("c");
        let a = open_key(key(&path), opener(path.clone())).unwrap();
        // What a child sees when its parent's other thread held the lock at fork: the
        // parent's word. (Serialised with the other tests of this module by the lock
        // itself: the word is only replaced while free.)
        let foreign = (u64::from(u32::MAX) << 32) | 7;
        let start = Instant::now();
        while REGISTRY
            .lock
            .compare_exchange(0, foreign, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            assert!(start.elapsed() < LOCK_WAIT, "the registry lock stayed busy");
            std::thread::yield_now();
        }
        let mut opened = false;
        let b = open_key(key(&path), |k| {
            opened = true;
            opener(path.clone())(k)
        })
        .unwrap();
        assert!(opened, "a map left mid-operation must not be trusted");
        assert_ne!(a, b);
        // SAFETY: each held once; `a` is no longer in the map, and its close frees it.
        unsafe { close(a) }.unwrap();
        // SAFETY: as above.
        unsafe { close(b) }.unwrap();
    }

    /// A real fork while another thread holds the lock: the child opens without waiting
    /// for a thread it does not have.
    #[test]
    fn child_forked_while_another_thread_holds_the_lock_can_open() {
        let _serial = serial();
        let d = dir("fork");
        let path = d.0.join("c");
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn(move || {
            let g = Guard::lock().unwrap();
            held_tx.send(()).unwrap();
            let _ = release_rx.recv_timeout(Duration::from_secs(30));
            drop(g);
        });
        held_rx.recv_timeout(Duration::from_secs(30)).unwrap();
        // SAFETY: the child only opens a cache (allocations: glibc's malloc is fork-safe)
        // and leaves with `_exit`, running no destructors or exit handlers of the parent.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let code = match open_key(key(&path), opener(path.clone())) {
                Ok(p) => {
                    // SAFETY: held once.
                    match unsafe { close(p) } {
                        Ok(()) => 0,
                        Err(_) => 3,
                    }
                }
                Err(Error::Timeout { .. }) => 2,
                Err(_) => 1,
            };
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(code) };
        }
        assert!(pid > 0, "fork failed");
        let status = wait_child(pid);
        release_tx.send(()).unwrap();
        holder.join().unwrap();
        assert!(libc::WIFEXITED(status), "child did not exit: {status}");
        assert_eq!(libc::WEXITSTATUS(status), 0, "child could not open");
        // The parent's lock is free again and works.
        let p = open_key(key(&path), opener(path.clone())).unwrap();
        // SAFETY: held once.
        unsafe { close(p) }.unwrap();
    }
}
