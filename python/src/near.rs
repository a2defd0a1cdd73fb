//! `larder._larder.NearCache`: larder as the host's near cache in front of Redis, over
//! [`larder_redis::NearCache`] (the same reader the Rust crate ships, not a copy).
//!
//! One Redis connection per object, behind a mutex: threads of one process share it one
//! call at a time (the executor threads of `aget`/`aset`/`adelete` included). Every call
//! runs with the GIL released, the mutex taken with the GIL released too. After `fork`
//! the child opens a connection of its own on its first call instead of sharing its
//! parent's socket.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use larder_redis::{Config, NearCache, DEFAULT_BOUND, DEFAULT_PING_EVERY};
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

/// What [`PyNearCache`] keeps: the reader, and what opens it again after a fork.
struct Reader {
    near: NearCache,
    pid: u32,
}

/// A worker's read-through client of Redis with larder as the near cache.
#[pyclass(frozen, subclass, module = "larder._larder", name = "NearCache")]
pub(crate) struct PyNearCache {
    reader: Mutex<Option<Reader>>,
    /// Set by `close` (under the mutex).
    closed: AtomicBool,
    cache: larder::Cache,
    url: String,
    config: Config,
    prefixes: Vec<Vec<u8>>,
    bound: Duration,
}

impl PyNearCache {
    /// Runs `f` on this process's reader (opened again in a forked child, or after a
    /// failed reopen), GIL released.
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&mut NearCache) -> larder_redis::Result<T> + Send,
    ) -> PyResult<T> {
        py.detach(|| {
            let mut guard = self.reader.lock().unwrap_or_else(|p| p.into_inner());
            if self.closed.load(Ordering::Relaxed) {
                return Err(closed());
            }
            let pid = std::process::id();
            let reader = match guard.take() {
                Some(r) if r.pid == pid => guard.insert(r),
                // None, or a child of a fork: its parent's connection is not its own
                // to use (dropping it closes only this process's descriptor).
                _ => guard.insert(self.open(pid)?),
            };
            f(&mut reader.near).map_err(near_error)
        })
    }

    fn open(&self, pid: u32) -> PyResult<Reader> {
        let near = NearCache::new(self.cache.clone(), &self.url, self.config.clone())
            .map_err(near_error)?;
        Ok(Reader { near, pid })
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
        let this = PyNearCache {
            reader: Mutex::new(None),
            closed: AtomicBool::new(false),
            cache,
            url,
            config,
            prefixes,
            bound,
        };
        let reader = py.detach(|| this.open(std::process::id()))?;
        *this.reader.lock().unwrap_or_else(|p| p.into_inner()) = Some(reader);
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

    /// What this client did: hits, redis_reads, bypasses, fills, fills_refused,
    /// cache_errors.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.with(py, |n| Ok(n.stats()))?;
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

    /// Closes the Redis connection; later calls raise ValueError.
    fn close(&self, py: Python<'_>) {
        let reader = py.detach(|| {
            let mut guard = self.reader.lock().unwrap_or_else(|p| p.into_inner());
            self.closed.store(true, Ordering::Relaxed);
            guard.take()
        });
        drop(reader);
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
