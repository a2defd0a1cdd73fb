//! `larder._larder`: the native module of the `larder` Python package.
//!
//! One class, `Cache`, over [`larder::Cache`], and the error mapping. Every call that may
//! wait (a lock, a fill, opening, verify, repair) runs with the GIL released; reads and
//! sets first try without waiting, with the GIL held, and release it only when they would
//! have to wait.

mod cli;
mod near;

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use larder::{Clock, Error, Mismatch, Options, Remedy};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyList, PyMemoryView, PyString, PyTuple};

/// The Python exception for a larder error: the class of `larder._errors` named after
/// the variant (`LarderError` for a variant this build does not know), with the
/// message in Python's terms ([`message`]); `Io` also carries the errno.
fn to_py(e: Error) -> PyErr {
    Python::attach(|py| match make_error(py, &e) {
        Ok(err) => err,
        Err(err) => err,
    })
}

fn make_error(py: Python<'_>, e: &Error) -> PyResult<PyErr> {
    let name = match e {
        Error::InvalidName { .. } => "InvalidName",
        Error::InvalidOptions(_) => "InvalidOptions",
        Error::TooLarge { .. } => "TooLarge",
        Error::Incompatible { .. } => "Incompatible",
        Error::Version { .. } => "Version",
        Error::NotACache { .. } => "NotACache",
        Error::Corrupt { .. } => "Corrupt",
        Error::UnsafeFile { .. } => "UnsafeFile",
        Error::Truncated { .. } => "Truncated",
        Error::OtherBoot { .. } => "OtherBoot",
        Error::OtherPidNamespace { .. } => "OtherPidNamespace",
        Error::OtherTimeNamespace { .. } => "OtherTimeNamespace",
        Error::Detached { .. } => "Detached",
        Error::NoSpace { .. } => "NoSpace",
        Error::Timeout { .. } => "Timeout",
        Error::WouldBlock => "WouldBlock",
        Error::InUse { .. } => "InUse",
        Error::NotFound { .. } => "NotFound",
        Error::ProcUnavailable { .. } => "ProcUnavailable",
        Error::Io(_) => "Io",
        Error::NotACounter { .. } => "NotACounter",
        Error::Overflow { .. } => "Overflow",
        Error::InvalidArgument(_) => "InvalidArgument",
        _ => "LarderError",
    };
    let cls = py.import("larder._errors")?.getattr(name)?;
    let msg = message(e);
    let value = match e {
        Error::Io(io) => cls.call1((
            io.raw_os_error().unwrap_or_else(|| errno_of(io.kind())),
            msg,
        ))?,
        Error::NoSpace { .. } => cls.call1((libc_enospc(), msg))?,
        Error::ProcUnavailable { .. } => {
            cls.call1((errno_of(std::io::ErrorKind::NotFound), msg))?
        }
        _ => cls.call1((msg,))?,
    };
    Ok(PyErr::from_value(value))
}

/// What happened, then what to do in this package's terms (`larder.Cache(...)`), where
/// the library's own text names Rust calls.
fn message(e: &Error) -> String {
    let summary = e.summary();
    let name = format!("{:?}", e.name().unwrap_or_else(|| "name".into()));
    let remedy = match e.remedy() {
        None => return summary,
        Some(Remedy::UseOrRemove) => format!(
            "open it with larder.Cache({name}) (no creation arguments) to use its own \
             parameters, pass on_mismatch=\"attach\" (use its own) or \"replace\" (replace \
             an older file; raise generation= unless every limit grows), or remove it to \
             recreate it: larder.Cache.unlink({name})"
        ),
        Some(Remedy::Repair) => format!(
            "repair it: cache.repair() while processes use it, or `larder repair` (the \
             larder command) with none attached; or remove it if its header is damaged: \
             larder.Cache.unlink({name})"
        ),
        Some(Remedy::RepairOffline) => format!(
            "repair it with no process attached (`larder repair`, the larder command), or \
             remove it: larder.Cache.unlink({name})"
        ),
        Some(Remedy::AllowOwner { uid }) => {
            format!("or accept its owner: larder.Cache({name}, allow_uids=[{uid}])")
        }
        Some(Remedy::Create) => format!(
            "create it: larder.Cache({name}, capacity=...) (any creation argument creates a \
             missing cache)"
        ),
        Some(Remedy::CreateAsOwner { uid, gid, mode }) => format!(
            "restart the process of uid {uid} that created it (a pool's master), or create \
             it as uid {uid}: larder.Cache({name}, capacity=..., mode=0o{mode:o}, group={gid})"
        ),
        Some(Remedy::RaiseLimit { what }) => {
            format!("create the cache with a larger max_{what}_len=")
        }
        // A remedy this build does not know how to word: the summary alone.
        Some(_) => return summary,
    };
    format!("{summary}; {remedy}")
}

/// The Linux errno for an I/O error that carries none, by its kind (EIO if no closer one).
fn errno_of(kind: std::io::ErrorKind) -> i32 {
    use std::io::ErrorKind as K;
    match kind {
        K::NotFound => 2,
        K::PermissionDenied => 13,
        K::AlreadyExists => 17,
        K::InvalidInput => 22,
        K::WouldBlock => 11,
        K::TimedOut => 110,
        K::Interrupted => 4,
        K::Unsupported => 95,
        K::OutOfMemory => 12,
        _ => 5,
    }
}

/// ENOSPC on Linux.
fn libc_enospc() -> i32 {
    28
}

/// A key: `bytes` as is, `str` as UTF-8.
fn key_bytes<'a>(obj: &'a Bound<'_, PyAny>) -> PyResult<Cow<'a, [u8]>> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Cow::Borrowed(b.as_bytes()));
    }
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(Cow::Owned(s.to_cow()?.into_owned().into_bytes()));
    }
    if let Ok(b) = obj.cast::<PyByteArray>() {
        return Ok(Cow::Owned(b.to_vec()));
    }
    Err(PyTypeError::new_err(format!(
        "a cache key is bytes or str, not {}",
        obj.get_type().name()?
    )))
}

/// A value: any bytes-like object (bytes, bytearray, memoryview, array, ...), copied.
fn value_bytes<'a>(obj: &'a Bound<'_, PyAny>) -> PyResult<Cow<'a, [u8]>> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Cow::Borrowed(b.as_bytes()));
    }
    if let Ok(b) = obj.cast::<PyByteArray>() {
        return Ok(Cow::Owned(b.to_vec()));
    }
    let view = PyMemoryView::from(obj).map_err(|_| {
        let ty = obj
            .get_type()
            .name()
            .map(|n| n.to_string())
            .unwrap_or_default();
        PyTypeError::new_err(format!(
            "a cache value is a bytes-like object, not {ty} (pass serializer= to store objects)"
        ))
    })?;
    let bytes = view.call_method0("tobytes")?;
    Ok(Cow::Owned(bytes.cast::<PyBytes>()?.as_bytes().to_vec()))
}

/// Seconds as an int, a float or a `timedelta`.
fn duration(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Duration> {
    let secs: f64 = if obj.hasattr("total_seconds")? {
        obj.call_method0("total_seconds")?.extract()?
    } else {
        obj.extract().map_err(|_| {
            PyTypeError::new_err(format!("{what} is seconds (int or float) or a timedelta"))
        })?
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(PyValueError::new_err(format!(
            "{what} must be a finite, non-negative number of seconds, not {secs}"
        )));
    }
    Duration::try_from_secs_f64(secs).map_err(|e| PyValueError::new_err(format!("{what}: {e}")))
}

fn opt_duration(obj: Option<&Bound<'_, PyAny>>, what: &str) -> PyResult<Option<Duration>> {
    match obj {
        None => Ok(None),
        Some(o) if o.is_none() => Ok(None),
        Some(o) => duration(o, what).map(Some),
    }
}

/// The error a fill callback or the cache raises from `get_or_set`.
enum FillError {
    Larder(Error),
    Py(PyErr),
}

impl From<Error> for FillError {
    fn from(e: Error) -> Self {
        FillError::Larder(e)
    }
}

/// A claim to store one key's value, taken before computing it (`Cache.ticket`).
#[pyclass(frozen, module = "larder._larder", name = "Ticket")]
struct PyTicket {
    ticket: larder::Ticket,
}

#[pymethods]
impl PyTicket {
    fn __repr__(&self) -> &'static str {
        "<larder.Ticket>"
    }
}

/// A handle on one cache file.
#[pyclass(frozen, subclass, module = "larder._larder", name = "Cache")]
struct PyCache {
    /// `None` once closed.
    handle: Mutex<Option<larder::Cache>>,
    path: String,
    clock: Clock,
    manual_clock: bool,
    lock_timeout: Duration,
    fill_timeout: Duration,
    mode: u32,
    /// Owners accepted besides the caller's uid (`allow_uids=`).
    allow_uids: Vec<u32>,
    /// The `serializer=` argument as given (for pickling), and its two functions.
    serializer: Py<PyAny>,
    codec: Option<(Py<PyAny>, Py<PyAny>)>,
}

impl PyCache {
    fn cache(&self) -> PyResult<larder::Cache> {
        let guard = self.handle.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .clone()
            .ok_or_else(|| PyValueError::new_err("operation on a closed larder.Cache"))
    }

    /// The bytes to store for `obj`.
    fn encode<'a>(&self, obj: &'a Bound<'_, PyAny>) -> PyResult<Cow<'a, [u8]>> {
        match &self.codec {
            None => value_bytes(obj),
            Some((dumps, _)) => {
                let out = dumps.bind(obj.py()).call1((obj,))?;
                let bytes = if let Ok(s) = out.cast::<PyString>() {
                    s.to_cow()?.into_owned().into_bytes()
                } else {
                    value_bytes(&out)?.into_owned()
                };
                Ok(Cow::Owned(bytes))
            }
        }
    }

    /// The object for stored bytes.
    fn decode(&self, py: Python<'_>, bytes: &[u8]) -> PyResult<Py<PyAny>> {
        let b = PyBytes::new(py, bytes);
        match &self.codec {
            None => Ok(b.into_any().unbind()),
            Some((_, loads)) => Ok(loads.bind(py).call1((b,))?.unbind()),
        }
    }

    /// A fresh value, trying without waiting (GIL held) first.
    fn read(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<Option<Vec<u8>>> {
        let cache = self.cache()?;
        let k = key_bytes(key)?;
        match cache.try_get(&k) {
            Err(Error::WouldBlock) => py.detach(|| cache.get(&k)).map_err(to_py),
            r => r.map_err(to_py),
        }
    }

    fn store(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        ttl: Option<Duration>,
    ) -> PyResult<()> {
        let cache = self.cache()?;
        let k = key_bytes(key)?;
        let v = self.encode(value)?;
        match cache.try_set(&k, &v, ttl) {
            Err(Error::WouldBlock) => py.detach(|| cache.set(&k, &v, ttl)).map_err(to_py),
            r => r.map_err(to_py),
        }
    }

    fn remove(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        let cache = self.cache()?;
        let k = key_bytes(key)?;
        py.detach(|| cache.remove(&k)).map_err(to_py)
    }
}

#[pymethods]
impl PyCache {
    #[new]
    #[pyo3(signature = (
        name, capacity=None, max_key_len=None, max_value_len=None, lock_timeout=None,
        fill_timeout=None, mode=None, shards=None, expected_entry_size=None, serializer=None,
        manual_clock=false, allow_uids=None, group=None, on_mismatch=None, generation=None
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        name: PathBuf,
        capacity: Option<u64>,
        max_key_len: Option<usize>,
        max_value_len: Option<usize>,
        lock_timeout: Option<&Bound<'_, PyAny>>,
        fill_timeout: Option<&Bound<'_, PyAny>>,
        mode: Option<u32>,
        shards: Option<usize>,
        expected_entry_size: Option<usize>,
        serializer: Option<Py<PyAny>>,
        manual_clock: bool,
        allow_uids: Option<Vec<u32>>,
        group: Option<u32>,
        on_mismatch: Option<&str>,
        generation: Option<u64>,
    ) -> PyResult<Self> {
        let lock_timeout =
            opt_duration(lock_timeout, "lock_timeout")?.unwrap_or(larder::DEFAULT_LOCK_TIMEOUT);
        let fill_timeout =
            opt_duration(fill_timeout, "fill_timeout")?.unwrap_or(larder::DEFAULT_FILL_TIMEOUT);
        let serializer = serializer.unwrap_or_else(|| py.None());
        let codec = codec(py, serializer.bind(py))?;
        let clock = if manual_clock {
            Clock::manual()
        } else {
            Clock::system()
        };
        let create = capacity.is_some()
            || max_key_len.is_some()
            || max_value_len.is_some()
            || mode.is_some()
            || group.is_some()
            || generation.is_some()
            || shards.is_some()
            || expected_entry_size.is_some();
        let mut opts = Options::new()
            .lock_timeout(lock_timeout)
            .fill_timeout(fill_timeout)
            .clock(clock.clone());
        if let Some(c) = capacity {
            opts = opts.capacity(c);
        }
        if let Some(n) = max_key_len {
            opts = opts.max_key_len(n);
        }
        if let Some(n) = max_value_len {
            opts = opts.max_value_len(n);
        }
        if let Some(m) = mode {
            opts = opts.mode(m);
        }
        if let Some(g) = group {
            opts = opts.group(g);
        }
        if let Some(g) = generation {
            opts = opts.generation(g);
        }
        opts = opts.on_mismatch(match on_mismatch.unwrap_or("fail") {
            "fail" => Mismatch::Fail,
            "attach" => Mismatch::Attach,
            "replace" => Mismatch::Replace,
            other => {
                return Err(PyValueError::new_err(format!(
                    "on_mismatch is \"fail\", \"attach\" or \"replace\", not {other:?}"
                )))
            }
        });
        if let Some(n) = shards {
            opts = opts.shards(n);
        }
        if let Some(n) = expected_entry_size {
            opts = opts.expected_entry_size(n);
        }
        let allow_uids = allow_uids.unwrap_or_default();
        for &uid in &allow_uids {
            opts = opts.allow_uid(uid);
        }
        let cache = py
            .detach(|| {
                if create {
                    opts.open(&name)
                } else {
                    opts.attach(&name)
                }
            })
            .map_err(to_py)?;
        Ok(PyCache {
            path: cache.path().to_string_lossy().into_owned(),
            handle: Mutex::new(Some(cache)),
            clock,
            manual_clock,
            lock_timeout,
            fill_timeout,
            mode: mode.unwrap_or(0o600),
            allow_uids,
            serializer,
            codec,
        })
    }

    /// The file this handle maps.
    #[getter]
    fn path(&self) -> &str {
        &self.path
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.handle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }

    /// The file's creation parameters as a dict.
    fn limits<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let l = self.cache()?.limits();
        let d = PyDict::new(py);
        d.set_item("capacity", l.capacity)?;
        d.set_item("max_key_len", l.max_key_len)?;
        d.set_item("max_value_len", l.max_value_len)?;
        d.set_item("shards", l.shards)?;
        d.set_item("expected_entry_size", l.expected_entry_size)?;
        Ok(d)
    }

    #[pyo3(signature = (key, default=None))]
    fn get(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        match self.read(py, key)? {
            Some(v) => self.decode(py, &v),
            None => Ok(default.unwrap_or_else(|| py.None())),
        }
    }

    fn __getitem__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        match self.read(py, key)? {
            Some(v) => self.decode(py, &v),
            None => Err(pyo3::exceptions::PyKeyError::new_err(key.clone().unbind())),
        }
    }

    fn __contains__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        Ok(self.read(py, key)?.is_some())
    }

    fn __setitem__(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        self.store(py, key, value, None)
    }

    fn __delitem__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<()> {
        if self.remove(py, key)? {
            Ok(())
        } else {
            Err(pyo3::exceptions::PyKeyError::new_err(key.clone().unbind()))
        }
    }

    #[pyo3(signature = (key, value, ttl=None))]
    fn set(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let ttl = opt_duration(ttl, "ttl")?;
        self.store(py, key, value, ttl)
    }

    /// Stores only if the key has no fresh entry; True if it stored.
    #[pyo3(signature = (key, value, ttl=None))]
    fn add(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let ttl = opt_duration(ttl, "ttl")?;
        let cache = self.cache()?;
        let k = key_bytes(key)?;
        let v = self.encode(value)?;
        py.detach(|| cache.insert_if_absent(&k, &v, ttl))
            .map_err(to_py)
    }

    /// Adds `delta` to the counter at `key` and returns the new value, atomically for
    /// every process; an absent or expired key starts at `init` (with `ttl`), later
    /// increments keep its expiry. A counter is 8 bytes, a little-endian int64.
    #[pyo3(signature = (key, delta=1, init=0, ttl=None))]
    fn incr(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        delta: i64,
        init: i64,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<i64> {
        let ttl = opt_duration(ttl, "ttl")?;
        let cache = self.cache()?;
        let k = key_bytes(key)?;
        py.detach(|| cache.incr(&k, delta, init, ttl))
            .map_err(to_py)
    }

    /// Stores only over a fresh entry; True if it stored.
    #[pyo3(signature = (key, value, ttl=None))]
    fn replace(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let ttl = opt_duration(ttl, "ttl")?;
        let cache = self.cache()?;
        let k = key_bytes(key)?;
        let v = self.encode(value)?;
        py.detach(|| cache.replace(&k, &v, ttl)).map_err(to_py)
    }

    /// The values of `keys`, in order, with `default` for each miss: one call for many
    /// lookups (no lock on hits).
    #[pyo3(signature = (keys, default=None))]
    fn get_many(
        &self,
        py: Python<'_>,
        keys: &Bound<'_, PyAny>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Vec<Py<PyAny>>> {
        if keys.is_instance_of::<pyo3::types::PyString>() || keys.is_instance_of::<PyBytes>() {
            return Err(pyo3::exceptions::PyTypeError::new_err(
                "get_many takes an iterable of keys, not one key",
            ));
        }
        let cache = self.cache()?;
        let ks: Vec<Vec<u8>> = keys
            .try_iter()?
            .map(|k| key_bytes(&k?).map(|b| b.into_owned()))
            .collect::<PyResult<_>>()?;
        let values = py.detach(|| cache.get_many(&ks)).map_err(to_py)?;
        values
            .into_iter()
            .map(|v| match v {
                Some(v) => self.decode(py, &v),
                None => Ok(default
                    .as_ref()
                    .map_or_else(|| py.None(), |d| d.clone_ref(py))),
            })
            .collect()
    }

    /// Removes the key; True if a fresh entry was removed.
    fn delete(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        self.remove(py, key)
    }

    /// Gives a fresh entry a new TTL (None: no expiry); False if there is none.
    #[pyo3(signature = (key, ttl=None))]
    fn touch(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let ttl = opt_duration(ttl, "ttl")?;
        let cache = self.cache()?;
        let k = key_bytes(key)?;
        py.detach(|| cache.touch(&k, ttl)).map_err(to_py)
    }

    /// Removes every entry; returns how many there were.
    fn clear(&self, py: Python<'_>) -> PyResult<u64> {
        let cache = self.cache()?;
        py.detach(|| cache.clear()).map_err(to_py)
    }

    /// `(value, expired)` for an entry even past its TTL, or `default`.
    #[pyo3(signature = (key, default=None))]
    fn get_stale(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let cache = self.cache()?;
        let k = key_bytes(key)?;
        match py.detach(|| cache.get_stale(&k)).map_err(to_py)? {
            Some(s) => {
                let v = self.decode(py, &s.value)?;
                Ok(PyTuple::new(
                    py,
                    [
                        v,
                        s.expired.into_pyobject(py)?.to_owned().into_any().unbind(),
                    ],
                )?
                .into_any()
                .unbind())
            }
            None => Ok(default.unwrap_or_else(|| py.None())),
        }
    }

    /// A ticket to store `key`'s value computed from now on: take it on a miss, before
    /// reading what the value is computed from, then store with `set_with_ticket`.
    fn ticket(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<PyTicket> {
        let cache = self.cache()?;
        let k = key_bytes(key)?;
        let ticket = py.detach(|| cache.ticket(&k)).map_err(to_py)?;
        Ok(PyTicket { ticket })
    }

    /// Stores `value` only if nothing revoked `key` since `ticket` was taken; True if it
    /// stored it.
    #[pyo3(signature = (key, value, ticket, ttl=None))]
    fn set_with_ticket(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        ticket: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        let ttl = opt_duration(ttl, "ttl")?;
        let ticket = ticket
            .cast::<PyTicket>()
            .map_err(|_| {
                PyTypeError::new_err(format!(
                    "ticket must be a larder.Ticket from Cache.ticket(), not {}",
                    ticket
                        .get_type()
                        .name()
                        .map(|n| n.to_string())
                        .unwrap_or_default()
                ))
            })?
            .get()
            .ticket;
        let cache = self.cache()?;
        let k = key_bytes(key)?;
        let v = self.encode(value)?;
        py.detach(|| cache.set_with_ticket(&k, &v, ttl, ticket))
            .map_err(to_py)
    }

    /// The value for `key`, computed by `fill()` and stored if missing, with at most one
    /// process computing it at a time.
    #[pyo3(signature = (key, fill, ttl=None))]
    fn get_or_set(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        fill: Py<PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let ttl = opt_duration(ttl, "ttl")?;
        let cache = self.cache()?;
        let k = key_bytes(key)?;
        let r = py.detach(|| {
            cache.get_or_insert_with(&k, ttl, || {
                Python::attach(|py| {
                    let obj = fill.bind(py).call0().map_err(FillError::Py)?;
                    let bytes = self.encode(&obj).map_err(FillError::Py)?.into_owned();
                    Ok::<_, FillError>(bytes)
                })
            })
        });
        match r {
            // Decoded from the stored bytes, so the filler gets exactly what every other
            // caller gets (with serializer="json", a list for a tuple, for everyone).
            Ok(v) => self.decode(py, &v),
            Err(FillError::Py(e)) => Err(e),
            Err(FillError::Larder(e)) => Err(to_py(e)),
        }
    }

    /// Counters of the whole cache, with `shards`, a list of each shard's.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = self.cache()?.stats();
        let d = PyDict::new(py);
        let fields: [(&str, u64); 25] = [
            ("entries", s.entries),
            ("bytes_live", s.bytes_live),
            ("bytes_used", s.bytes_used),
            ("bytes_free", s.bytes_free),
            ("file_size", s.file_size),
            ("shard_count", s.shard_count),
            ("hits", s.hits),
            ("misses", s.misses),
            ("stale_hits", s.stale_hits),
            ("inserts", s.inserts),
            ("updates", s.updates),
            ("removals", s.removals),
            ("evictions", s.evictions),
            ("index_evictions", s.index_evictions),
            ("bytes_written", s.bytes_written),
            ("bytes_moved", s.bytes_moved),
            ("expirations", s.expirations),
            ("lock_timeouts", s.lock_timeouts),
            ("recoveries", s.recoveries),
            ("repair_dropped", s.repair_dropped),
            ("fills", s.fills),
            ("fill_timeouts", s.fill_timeouts),
            ("fill_handovers", s.fill_handovers),
            ("fills_fenced", s.fills_fenced),
            ("locks", s.locks),
        ];
        for (k, v) in fields {
            d.set_item(k, v)?;
        }
        let shards = PyList::empty(py);
        for sh in &s.shards {
            let e = PyDict::new(py);
            let fields: [(&str, u64); 14] = [
                ("entries", sh.entries),
                ("bytes_live", sh.bytes_live),
                ("bytes_used", sh.bytes_used),
                ("bytes_free", sh.bytes_free),
                ("inserts", sh.inserts),
                ("updates", sh.updates),
                ("removals", sh.removals),
                ("evictions", sh.evictions),
                ("index_evictions", sh.index_evictions),
                ("bytes_written", sh.bytes_written),
                ("bytes_moved", sh.bytes_moved),
                ("expirations", sh.expirations),
                ("recoveries", sh.recoveries),
                ("repair_dropped", sh.repair_dropped),
            ];
            for (k, v) in fields {
                e.set_item(k, v)?;
            }
            shards.append(e)?;
        }
        d.set_item("shards", shards)?;
        Ok(d)
    }

    /// Checks every invariant; a list of `(shard or None, problem)`, empty if clean.
    fn verify<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let cache = self.cache()?;
        let report = py.detach(|| cache.verify()).map_err(to_py)?;
        let list = PyList::empty(py);
        for p in report.problems {
            list.append((p.shard, p.what))?;
        }
        Ok(list)
    }

    /// Rebuilds every shard from its logs, online; `{"shards": n, "dropped": n}`.
    fn repair<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let cache = self.cache()?;
        let report = py.detach(|| cache.repair()).map_err(to_py)?;
        let d = PyDict::new(py);
        d.set_item("shards", report.shards)?;
        d.set_item("dropped", report.dropped)?;
        Ok(d)
    }

    /// Moves this handle's manual clock forward (`manual_clock=True`; TTL tests).
    fn advance_clock(&self, by: &Bound<'_, PyAny>) -> PyResult<()> {
        if !self.manual_clock {
            return Err(PyValueError::new_err(
                "advance_clock needs a cache opened with manual_clock=True",
            ));
        }
        self.clock.advance(duration(by, "advance_clock")?);
        Ok(())
    }

    /// Removes a cache file (attached handles move to a new one when it is created).
    #[staticmethod]
    fn unlink(py: Python<'_>, name: PathBuf) -> PyResult<()> {
        py.detach(|| larder::Cache::unlink(&name)).map_err(to_py)
    }

    /// The path a name resolves to (a bare name lives in /dev/shm).
    #[staticmethod]
    fn path_of(name: PathBuf) -> PyResult<String> {
        larder::Cache::path_of(&name)
            .map(|p| p.to_string_lossy().into_owned())
            .map_err(to_py)
    }

    /// Releases this handle's mapping; later operations raise ValueError.
    fn close(&self, py: Python<'_>) {
        let old = self.handle.lock().unwrap_or_else(|p| p.into_inner()).take();
        py.detach(|| drop(old));
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, PyTuple>) -> bool {
        self.close(py);
        false
    }

    fn __repr__(&self) -> String {
        format!("larder.Cache({:?})", self.path)
    }

    /// What a pickled handle needs to re-attach in another process (used by
    /// `larder.Cache.__reduce__`).
    fn _pickle_state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = self.limits(py)?;
        d.set_item("name", &self.path)?;
        d.set_item("lock_timeout", self.lock_timeout.as_secs_f64())?;
        d.set_item("fill_timeout", self.fill_timeout.as_secs_f64())?;
        d.set_item("mode", self.mode)?;
        d.set_item("allow_uids", self.allow_uids.clone())?;
        d.set_item("serializer", self.serializer.bind(py))?;
        d.set_item("manual_clock", self.manual_clock)?;
        Ok(d)
    }
}

/// The `(dumps, loads)` of a `serializer=` argument: None, "pickle", "json" or an object
/// with `dumps` and `loads`.
fn codec(py: Python<'_>, ser: &Bound<'_, PyAny>) -> PyResult<Option<(Py<PyAny>, Py<PyAny>)>> {
    if ser.is_none() {
        return Ok(None);
    }
    let module = if let Ok(s) = ser.cast::<PyString>() {
        match &*s.to_cow()? {
            "pickle" => py.import("pickle")?.into_any(),
            "json" => py.import("json")?.into_any(),
            other => {
                return Err(PyValueError::new_err(format!(
                    "serializer is \"pickle\", \"json\" or an object with dumps and loads, \
                     not {other:?}"
                )))
            }
        }
    } else {
        ser.clone()
    };
    let dumps = module.getattr("dumps").map_err(|_| {
        PyTypeError::new_err("a serializer object needs dumps(obj) -> bytes and loads(bytes)")
    })?;
    let loads = module.getattr("loads").map_err(|_| {
        PyTypeError::new_err("a serializer object needs dumps(obj) -> bytes and loads(bytes)")
    })?;
    Ok(Some((dumps.unbind(), loads.unbind())))
}

/// The native module.
#[pymodule]
fn _larder(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyCache>()?;
    m.add_class::<PyTicket>()?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("DEFAULT_CAPACITY", larder::DEFAULT_CAPACITY)?;
    m.add("DEFAULT_MAX_KEY_LEN", larder::DEFAULT_MAX_KEY_LEN)?;
    m.add("DEFAULT_MAX_VALUE_LEN", larder::DEFAULT_MAX_VALUE_LEN)?;
    m.add(
        "DEFAULT_LOCK_TIMEOUT",
        larder::DEFAULT_LOCK_TIMEOUT.as_secs_f64(),
    )?;
    m.add(
        "DEFAULT_FILL_TIMEOUT",
        larder::DEFAULT_FILL_TIMEOUT.as_secs_f64(),
    )?;
    m.add("CRASH_POINTS", cfg!(feature = "crash-points"))?;
    cli::register(m)?;
    near::register(m)?;
    Ok(())
}
