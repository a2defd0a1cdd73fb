//! `larder._larder.NearCache`: larder as the host's near cache in front of Redis, over
//! [`larder_redis::NearCache`] (the same reader the Rust crate ships, not a copy).
//!
//! A small pool of readers per object, one Redis connection each: a call takes an idle
//! reader (or opens one when none is idle) and gives it back after, so threads calling
//! at once each have a connection of their own (the executor threads of
//! `aget`/`aset`/`adelete` included) and a near-cache hit never waits for another
//! thread's Redis round trip. The pool's mutex is held only to take or give back a
//! reader, never across I/O. Every call runs with the GIL released. After `fork` the
//! child drops the readers it inherited and opens its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use larder_redis::{Config, NearCache, ReaderStats, DEFAULT_BOUND, DEFAULT_PING_EVERY};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList};

use super::{key_bytes, opt_duration, to_py, value_bytes, PyCache};

/// The Python exception for a near-cache error: larder's own for the file's; for
/// Redis's, the classes of `larder.near` (which are also `ConnectionError` or
/// `TimeoutError` where Redis could not be reached or did not answer in time).
fn near_error(e: larder_redis::Error) -> PyErr {
    let (name, msg) = match e {
        larder_redis::Error::Larder(e) => return to_py(e),
        larder_redis::Error::Config(why) => {
            return to_py(larder::Error::InvalidOptions(format!("near cache: {why}")))
        }
        larder_redis::Error::Unsupported(why) => {
            ("NearCacheError", format!("unsupported server: {why}"))
        }
        larder_redis::Error::Redis(r) => {
            let name = if r.is_timeout() {
                "RedisTimeout"
            } else if r.is_io_error() || r.is_connection_refusal() || r.is_connection_dropped() {
                "RedisConnectionError"
            } else {
                "RedisError"
            };
            (name, format!("redis: {r}"))
        }
        other => ("NearCacheError", other.to_string()),
    };
    Python::attach(|py| {
        match py
            .import("larder.near")
            .and_then(|m| m.getattr(name))
            .and_then(|cls| cls.call1((msg,)))
        {
            Ok(value) => PyErr::from_value(value),
            Err(err) => err,
        }
    })
}

/// One pooled reader, with the process that opened it and how much of its counters
/// [`Pool::done`] already holds.
struct Reader {
    near: NearCache,
    pid: u32,
    counted: ReaderStats,
}

/// What [`PyNearCache`] keeps under its mutex: the idle readers of this process and
/// the counters of every call completed in it. The mutex is held only to take or give
/// back a reader or to read the counters: never across I/O, a wait on the cache file
/// or a connect, so a thread waits on it for no longer than another thread's push or
/// pop.
struct Pool {
    /// The process these readers and counters are of: a forked child starts anew.
    pid: u32,
    idle: Vec<Reader>,
    /// The counters of every call completed in this process, whichever reader made it
    /// (one idle now, one in use by another call, or one dropped).
    done: ReaderStats,
    closed: bool,
}

impl Pool {
    /// Forgets what a parent process left (after `fork`): its readers' connections
    /// are not this process's to use. Returns them, to be dropped outside the lock
    /// (dropping one closes only this process's descriptor).
    fn adopt(&mut self, pid: u32) -> Vec<Reader> {
        if self.pid == pid {
            return Vec::new();
        }
        self.pid = pid;
        self.done = ReaderStats::default();
        std::mem::take(&mut self.idle)
    }

    /// Adds what `reader` did since it was last counted to [`Pool::done`].
    fn count(&mut self, reader: &mut Reader) {
        let now = reader.near.stats();
        let was = std::mem::replace(&mut reader.counted, now);
        let done = &mut self.done;
        done.hits += now.hits - was.hits;
        done.redis_reads += now.redis_reads - was.redis_reads;
        done.bypasses += now.bypasses - was.bypasses;
        done.fills += now.fills - was.fills;
        done.fills_refused += now.fills_refused - was.fills_refused;
        done.cache_errors += now.cache_errors - was.cache_errors;
    }
}

/// A worker's read-through client of Redis with larder as the near cache.
#[pyclass(frozen, subclass, module = "larder._larder", name = "NearCache")]
pub(crate) struct PyNearCache {
    pool: Mutex<Pool>,
    /// Set by `close` (under the mutex), read by the `closed` getter.
    closed: AtomicBool,
    cache: larder::Cache,
    url: String,
    config: Config,
    prefixes: Vec<Vec<u8>>,
    bound: Duration,
}

/// Whether an error left the reader's connection lost, refused, or waiting on a reply
/// Redis has not sent: such a reader is dropped rather than given back (`larder_redis`
/// would reconnect on its next command if the connection is closed, but not if it only
/// timed out); a call that finds no idle reader opens a new one.
fn connection_lost(e: &larder_redis::Error) -> bool {
    matches!(e, larder_redis::Error::Redis(r)
        if r.is_timeout() || r.is_io_error() || r.is_connection_refusal()
            || r.is_connection_dropped())
}

impl PyNearCache {
    /// The pool, however a thread that panicked holding it left it (every change
    /// under the lock is a single push, pop or addition).
    fn lock(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on an idle reader of this process, or on a new one when none is idle
    /// (opened outside the lock), then gives it back; GIL released throughout.
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut NearCache) -> larder_redis::Result<T> + Send,
    ) -> PyResult<T> {
        py.detach(|| {
            let pid = std::process::id();
            let (reader, stale) = {
                let mut pool = self.lock();
                if pool.closed {
                    return Err(closed());
                }
                let stale = pool.adopt(pid);
                (pool.idle.pop(), stale)
            };
            drop(stale);
            let mut reader = match reader {
                Some(r) => r,
                None => self.open(pid)?,
            };
            let result = f(&mut reader.near);
            let keep = !matches!(&result, Err(e) if connection_lost(e));
            drop(self.give_back(reader, keep));
            result.map_err(near_error)
        })
    }

    /// Counts what `reader` did and keeps it idle, unless it is not to be kept, the
    /// handle was closed, or the reader is of another process; returns it then, to be
    /// dropped outside the lock.
    fn give_back(&self, mut reader: Reader, keep: bool) -> Option<Reader> {
        let mut pool = self.lock();
        if reader.pid != pool.pid {
            return Some(reader);
        }
        pool.count(&mut reader);
        if !keep || pool.closed {
            return Some(reader);
        }
        pool.idle.push(reader);
        None
    }

    fn open(&self, pid: u32) -> PyResult<Reader> {
        let near = NearCache::new(self.cache.clone(), &self.url, self.config.clone())
            .map_err(near_error)?;
        Ok(Reader {
            near,
            pid,
            counted: ReaderStats::default(),
        })
    }
}

fn closed() -> PyErr {
    PyValueError::new_err("operation on a closed larder.NearCache")
}

#[pymethods]
impl PyNearCache {
    #[new]
    #[pyo3(signature = (cache, url, prefixes, bound=None, io_timeout=None, ttl_cap=None))]
    fn new(
        py: Python<'_>,
        cache: &Bound<'_, PyCache>,
        url: String,
        prefixes: Vec<Bound<'_, PyAny>>,
        bound: Option<&Bound<'_, PyAny>>,
        io_timeout: Option<&Bound<'_, PyAny>>,
        ttl_cap: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let prefixes = prefixes
            .iter()
            .map(|p| key_bytes(p).map(|b| b.into_owned()))
            .collect::<PyResult<Vec<_>>>()?;
        let bound = opt_duration(bound, "bound")?.unwrap_or(DEFAULT_BOUND);
        // A reader never pings, but its configuration is checked whole: a short bound
        // gets a ping interval that fits it (the listener's is its own, `--ping-every`).
        let mut config = Config::new(&prefixes)
            .bound(bound)
            .ping_every(DEFAULT_PING_EVERY.min(bound / 2));
        if let Some(t) = opt_duration(io_timeout, "io_timeout")? {
            config = config.io_timeout(t);
        }
        if let Some(t) = opt_duration(ttl_cap, "ttl_cap")? {
            config = config.ttl_cap(t);
        }
        let cache = cache.get().cache()?;
        let pid = std::process::id();
        let this = PyNearCache {
            pool: Mutex::new(Pool {
                pid,
                idle: Vec::new(),
                done: ReaderStats::default(),
                closed: false,
            }),
            closed: AtomicBool::new(false),
            cache,
            url,
            config,
            prefixes,
            bound,
        };
        // The first reader now: a URL that cannot be reached fails here.
        let reader = py.detach(|| this.open(pid))?;
        this.lock().idle.push(reader);
        Ok(this)
    }

    /// The value of `key` (bytes), or `default` if Redis has none.
    #[pyo3(signature = (key, default=None))]
    fn get(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let k = key_bytes(key)?.into_owned();
        match self.with(py, |n| n.get(&k))? {
            Some(v) => Ok(PyBytes::new(py, &v).into_any().unbind()),
            None => Ok(default.unwrap_or_else(|| py.None())),
        }
    }

    /// Writes `key` to Redis (with `ttl` seconds, if given), then drops the near copy.
    #[pyo3(signature = (key, value, ttl=None))]
    fn set(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let k = key_bytes(key)?.into_owned();
        let v = value_bytes(value)?.into_owned();
        let ttl = opt_duration(ttl, "ttl")?;
        if ttl.is_some_and(|t| t.is_zero()) {
            return Err(PyValueError::new_err(
                "ttl must be above zero (delete the key instead)",
            ));
        }
        self.with(py, |n| n.set(&k, &v, ttl))
    }

    /// Deletes `key` in Redis, then drops the near copy; True if Redis had it.
    fn delete(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let k = key_bytes(key)?.into_owned();
        self.with(py, |n| n.delete(&k))
    }

    /// What this client did in this process: hits, redis_reads, bypasses, fills,
    /// fills_refused, cache_errors, summed over every call completed (calls still in
    /// progress count once they return).
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = py.detach(|| {
            let (done, stale) = {
                let mut pool = self.lock();
                if pool.closed {
                    return Err(closed());
                }
                let stale = pool.adopt(std::process::id());
                (pool.done, stale)
            };
            drop(stale);
            Ok(done)
        })?;
        let d = PyDict::new(py);
        d.set_item("hits", s.hits)?;
        d.set_item("redis_reads", s.redis_reads)?;
        d.set_item("bypasses", s.bypasses)?;
        d.set_item("fills", s.fills)?;
        d.set_item("fills_refused", s.fills_refused)?;
        d.set_item("cache_errors", s.cache_errors)?;
        Ok(d)
    }

    #[getter]
    fn url(&self) -> &str {
        &self.url
    }

    #[getter]
    fn prefixes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(py, self.prefixes.iter().map(|p| PyBytes::new(py, p)))
    }

    /// The bound `H`, in seconds.
    #[getter]
    fn bound(&self) -> f64 {
        self.bound.as_secs_f64()
    }

    #[getter]
    fn closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Closes the idle Redis connections (those of calls in progress close as the
    /// calls return); later calls raise ValueError.
    fn close(&self, py: Python<'_>) {
        py.detach(|| {
            let idle = {
                let mut pool = self.lock();
                pool.closed = true;
                self.closed.store(true, Ordering::Relaxed);
                std::mem::take(&mut pool.idle)
            };
            drop(idle);
        });
    }

    fn __repr__(&self) -> String {
        format!(
            "<larder.NearCache {:?} in front of {:?}>",
            self.cache.path().display().to_string(),
            self.url
        )
    }
}

/// Registers `NearCache` in the native module.
pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyNearCache>()
}
