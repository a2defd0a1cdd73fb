//! `larder._larder`: the native module of the `larder` Python package.
//!
//! One class, `Cache`, over [`larder::Cache`], and the error mapping. Every call that may
//! wait (a lock, a fill, opening, verify, repair) runs with the GIL released; reads and
//! sets first try without waiting, with the GIL held, and release it only when they would
//! have to wait.

mod cli;
mod near;

use std::borrow::Cow;
use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

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
        // The string's own UTF-8 form (kept by the interpreter), not a copy.
        return Ok(Cow::Borrowed(s.to_str()?.as_bytes()));
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
/// A value already through a cache's serializer (`Cache._serialize_once`): its bytes are
/// stored as they are, so an awaitable write that falls back to a thread calls the
/// serializer once, not twice.
#[pyclass(frozen, module = "larder._larder", name = "_Encoded")]
struct PyEncoded {
    bytes: Vec<u8>,
}

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
        if let Ok(done) = obj.cast::<PyEncoded>() {
            return Ok(Cow::Borrowed(&done.get().bytes));
        }
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

    /// Looks `key` up and passes the value of a fresh entry (or `None`) to `then`.
    ///
    /// The hot path of every read: the handle is borrowed under its mutex (no reference
    /// count taken), the value is copied into this thread's reused buffer (no
    /// allocation), and nothing waits: only if the read needs a shard lock that another
    /// process holds is the handle cloned and the read repeated, waiting, with the GIL
    /// released. With `wait` false that case raises `WouldBlock` instead.
    fn read_with<R>(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        wait: bool,
        then: impl FnOnce(Option<&[u8]>) -> PyResult<R>,
    ) -> PyResult<R> {
        let k = key_bytes(key)?;
        with_read_buf(|buf| {
            let found = {
                let guard = self.handle.lock().unwrap_or_else(|p| p.into_inner());
                let cache = guard
                    .as_ref()
                    .ok_or_else(|| PyValueError::new_err("operation on a closed larder.Cache"))?;
                match cache.try_get_into(&k, buf) {
                    Err(Error::WouldBlock) if wait => {
                        let cache = cache.clone();
                        drop(guard);
                        py.detach(|| cache.get_into(&k, buf)).map_err(to_py)?
                    }
                    r => r.map_err(to_py)?,
                }
            };
            then(found.then_some(&buf[..]))
        })
    }

    /// The value of a fresh entry as Python sees it, or `default`.
    fn lookup(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        default: Option<Py<PyAny>>,
        wait: bool,
    ) -> PyResult<Py<PyAny>> {
        self.read_with(py, key, wait, |v| match v {
            Some(v) => self.decode(py, v),
            None => Ok(default.unwrap_or_else(|| py.None())),
        })
    }

    /// Runs `op` without waiting, with the GIL held; if it would have waited (a lock
    /// another process holds), runs `wait` instead with the GIL released, or raises
    /// `WouldBlock` when `may_wait` is false.
    fn attempt<R: Send>(
        &self,
        py: Python<'_>,
        may_wait: bool,
        op: impl FnOnce(&larder::Cache) -> larder::Result<R>,
        wait: impl FnOnce(&larder::Cache) -> larder::Result<R> + Send,
    ) -> PyResult<R> {
        // Borrowed under the handle's mutex for the try (no reference count taken, as
        // in `read_with`); cloned only to wait with the mutex and the GIL released.
        let guard = self.handle.lock().unwrap_or_else(|p| p.into_inner());
        let cache = guard
            .as_ref()
            .ok_or_else(|| PyValueError::new_err("operation on a closed larder.Cache"))?;
        match op(cache) {
            Err(Error::WouldBlock) if may_wait => {
                let cache = cache.clone();
                drop(guard);
                py.detach(|| wait(&cache)).map_err(to_py)
            }
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
        self.store_waiting(py, key, value, ttl, true)
    }

    fn store_waiting(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        ttl: Option<Duration>,
        may_wait: bool,
    ) -> PyResult<()> {
        let k = key_bytes(key)?;
        let v = self.encode(value)?;
        self.attempt(
            py,
            may_wait,
            |c| c.try_set(&k, &v, ttl),
            |c| c.set(&k, &v, ttl),
        )
    }

    fn remove(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        self.remove_waiting(py, key, true)
    }

    fn remove_waiting(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        may_wait: bool,
    ) -> PyResult<bool> {
        let k = key_bytes(key)?;
        self.attempt(py, may_wait, |c| c.try_remove(&k), |c| c.remove(&k))
    }

    fn add_waiting(
        &self,
        py: Python<'_>,
        (key, value): (&Bound<'_, PyAny>, &Bound<'_, PyAny>),
        ttl: Option<&Bound<'_, PyAny>>,
        may_wait: bool,
    ) -> PyResult<bool> {
        let ttl = opt_duration(ttl, "ttl")?;
        let k = key_bytes(key)?;
        let v = self.encode(value)?;
        self.attempt(
            py,
            may_wait,
            |c| c.try_insert_if_absent(&k, &v, ttl),
            |c| c.insert_if_absent(&k, &v, ttl),
        )
    }

    fn incr_waiting(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        (delta, init): (i64, i64),
        ttl: Option<&Bound<'_, PyAny>>,
        may_wait: bool,
    ) -> PyResult<i64> {
        let ttl = opt_duration(ttl, "ttl")?;
        let k = key_bytes(key)?;
        self.attempt(
            py,
            may_wait,
            |c| c.try_incr(&k, delta, init, ttl),
            |c| c.incr(&k, delta, init, ttl),
        )
    }

    fn touch_waiting(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
        may_wait: bool,
    ) -> PyResult<bool> {
        let ttl = opt_duration(ttl, "ttl")?;
        let k = key_bytes(key)?;
        self.attempt(py, may_wait, |c| c.try_touch(&k, ttl), |c| c.touch(&k, ttl))
    }

    fn gets_waiting(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        (default, cas_default): (Option<Py<PyAny>>, Option<Py<PyAny>>),
        may_wait: bool,
    ) -> PyResult<(Py<PyAny>, Py<PyAny>)> {
        let k = key_bytes(key)?;
        let found = self.attempt(
            py,
            may_wait,
            |c| c.try_get_versioned(&k),
            |c| c.get_versioned(&k),
        )?;
        Ok(match found {
            Some((value, version)) => (
                self.decode(py, &value)?,
                PyBytes::new(py, &token_of(version)).into_any().unbind(),
            ),
            None => (
                default.unwrap_or_else(|| py.None()),
                cas_default.unwrap_or_else(|| py.None()),
            ),
        })
    }

    fn cas_waiting(
        &self,
        py: Python<'_>,
        (key, value): (&Bound<'_, PyAny>, &Bound<'_, PyAny>),
        cas: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
        may_wait: bool,
    ) -> PyResult<Option<bool>> {
        let ttl = opt_duration(ttl, "ttl")?;
        let version = version_of(cas)?;
        let k = key_bytes(key)?;
        let v = self.encode(value)?;
        let stored = self.attempt(
            py,
            may_wait,
            |c| c.try_set_if_version(&k, &v, ttl, version),
            |c| c.set_if_version(&k, &v, ttl, version),
        )?;
        if stored {
            return Ok(Some(true));
        }
        // pymemcache's answer for a key that is not there: None (read after the refusal,
        // so a key removed meanwhile reads as gone).
        let present = self.read_with(py, key, may_wait, |v| Ok(v.is_some()))?;
        Ok(present.then_some(false))
    }

    fn ticket_waiting(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        may_wait: bool,
    ) -> PyResult<PyTicket> {
        let k = key_bytes(key)?;
        let ticket = self.attempt(py, may_wait, |c| c.try_ticket(&k), |c| c.ticket(&k))?;
        Ok(PyTicket { ticket })
    }

    fn set_with_ticket_waiting(
        &self,
        py: Python<'_>,
        (key, value): (&Bound<'_, PyAny>, &Bound<'_, PyAny>),
        ticket: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
        may_wait: bool,
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
        let k = key_bytes(key)?;
        let v = self.encode(value)?;
        self.attempt(
            py,
            may_wait,
            |c| c.try_set_with_ticket(&k, &v, ttl, ticket),
            |c| c.set_with_ticket(&k, &v, ttl, ticket),
        )
    }
}

/// Values longer than this are not kept in the thread's read buffer after a read.
const READ_BUF_KEEP: usize = 64 << 10;

thread_local! {
    /// The buffer each thread reads values into before they become Python objects.
    static READ_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's reused read buffer, trimmed afterwards if a large value
/// grew it. A serializer's `loads` may read the cache again on this thread while the
/// buffer is in use: that read gets a buffer of its own.
#[inline(always)]
fn with_read_buf<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    READ_BUF.with(|cell| {
        let mut own = Vec::new();
        let mut borrowed = cell.try_borrow_mut();
        let buf = match borrowed.as_mut() {
            Ok(b) => &mut **b,
            Err(_) => &mut own,
        };
        let r = f(buf);
        if buf.capacity() > READ_BUF_KEEP {
            *buf = Vec::new();
        }
        r
    })
}

/// The opaque CAS token of a version: its three words, little-endian, 24 bytes.
fn token_of(version: larder::Version) -> [u8; 24] {
    let mut out = [0u8; 24];
    for (chunk, w) in out.chunks_exact_mut(8).zip(version.to_words()) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    out
}

/// The version of a CAS token from `gets`.
fn version_of(token: &Bound<'_, PyAny>) -> PyResult<larder::Version> {
    let bytes = token
        .cast::<PyBytes>()
        .map_err(|_| PyTypeError::new_err("cas takes the token gets returned (bytes)"))?
        .as_bytes();
    if bytes.len() != 24 {
        return Err(PyValueError::new_err(
            "not a CAS token of larder.Cache.gets (24 bytes)",
        ));
    }
    let mut words = [0u64; 3];
    for (w, chunk) in words.iter_mut().zip(bytes.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        *w = u64::from_le_bytes(b);
    }
    Ok(larder::Version::from_words(words))
}

/// What a fill's holder thread is told (see `Cache._hold_fill`): store these bytes
/// (with this TTL), then report to the callback. Dropping the sender tells it to abandon.
struct Store {
    data: Vec<u8>,
    ttl: Option<Duration>,
    on_done: Py<PyAny>,
}

/// The fill of one key, held by a thread of its own (from `Cache._hold_fill`), for
/// `aget_or_set`, whose fill runs on an event loop: a robust mutex belongs to the thread
/// that locked it, so the thread that begins the fill ends it. This handle only posts to
/// it, from any thread: `complete` once, or `abandon` (also what dropping it does, on
/// whatever thread the garbage collector runs).
#[pyclass(frozen, module = "larder._larder", name = "FillHolder")]
struct PyFillHolder {
    tx: Mutex<Option<mpsc::Sender<Store>>>,
}

#[pymethods]
impl PyFillHolder {
    /// Has the holder store `data` (bytes, already serialized) if no write revoked the
    /// key since the fill began, and end the fill; `on_done(stored, error)` is called
    /// from the holder thread with the outcome (a bool, or the exception to raise). The
    /// fill ends whatever the outcome: a second call raises `ValueError`.
    #[pyo3(signature = (data, ttl, on_done))]
    fn complete(
        &self,
        data: &Bound<'_, PyBytes>,
        ttl: Option<&Bound<'_, PyAny>>,
        on_done: Py<PyAny>,
    ) -> PyResult<()> {
        let ttl = opt_duration(ttl, "ttl")?;
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let tx = tx.ok_or_else(|| PyValueError::new_err("this fill has ended"))?;
        let store = Store {
            data: data.as_bytes().to_vec(),
            ttl,
            on_done,
        };
        tx.send(store).map_err(|_| {
            PyValueError::new_err("this fill has ended (held longer than the fill timeout)")
        })
    }

    /// Ends the fill without storing (a waiter computes instead). Harmless after
    /// `complete` or a previous `abandon`.
    fn abandon(&self) {
        drop(self.tx.lock().unwrap_or_else(|p| p.into_inner()).take());
    }

    fn __repr__(&self) -> &'static str {
        "<larder.FillHolder>"
    }
}

/// Calls `f(args)` on a holder thread. An exception of the callback has no caller to go
/// to: it is reported as unraisable, as Python reports one of a finalizer.
fn call_back<'py>(py: Python<'py>, f: &Py<PyAny>, args: impl pyo3::call::PyCallArgs<'py>) {
    if let Err(e) = f.bind(py).call1(args) {
        e.write_unraisable(py, Some(f.bind(py)));
    }
}

/// The holder thread of one fill: begins it (waiting up to the fill timeout for another
/// thread's or process's), reports what it found to `on_begun(kind, payload)` (`"value"`
/// and the stored bytes, `"fill"` and None, or `"error"` and the exception), and holds a
/// fill until told to store, or to abandon, or `hold_for` has passed, whichever is first.
fn hold_fill(
    cache: larder::Cache,
    key: Vec<u8>,
    hold_for: Duration,
    on_begun: Py<PyAny>,
    rx: mpsc::Receiver<Store>,
) {
    let mut out = Vec::new();
    let begun = cache.begin_fill(&key, &mut out);
    // The callback is dropped with the GIL held, once called.
    let fill = Python::attach(move |py| match begun {
        Err(e) => {
            call_back(py, &on_begun, ("error", to_py(e).into_value(py)));
            None
        }
        Ok(larder::Begin::Fill(fill)) => {
            call_back(py, &on_begun, ("fill", py.None()));
            Some(fill)
        }
        Ok(_) => {
            call_back(py, &on_begun, ("value", PyBytes::new(py, &out)));
            None
        }
    });
    let Some(fill) = fill else { return };
    // Disconnected (abandoned, or the handle collected) or past the deadline: dropping
    // the fill ends it, and a waiter computes instead.
    if let Ok(store) = rx.recv_timeout(hold_for) {
        let outcome = fill.complete(&store.data, store.ttl);
        let on_done = store.on_done;
        Python::attach(move |py| match outcome {
            Ok(stored) => call_back(py, &on_done, (stored, py.None())),
            Err(e) => call_back(py, &on_done, (false, to_py(e).into_value(py))),
        });
    }
}

/// The iterator of `Cache.entries()`: `(key, value_len, ttl)` of each entry, one shard
/// at a time.
#[pyclass(module = "larder._larder", name = "Entries")]
struct PyEntries {
    entries: Mutex<larder::Entries>,
    /// Whether to yield expired entries too.
    expired: bool,
    /// Whether to yield keys alone.
    keys_only: bool,
}

#[pymethods]
impl PyEntries {
    fn __iter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        loop {
            let next = py.detach(|| {
                self.entries
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .next()
            });
            let e = match next {
                None => return Ok(None),
                Some(r) => r.map_err(to_py)?,
            };
            if !self.expired && e.ttl == Some(Duration::ZERO) {
                continue;
            }
            let key = PyBytes::new(py, &e.key).into_any();
            if self.keys_only {
                return Ok(Some(key.unbind()));
            }
            let ttl = match e.ttl {
                None => py.None(),
                Some(t) => t.as_secs_f64().into_pyobject(py)?.into_any().unbind(),
            };
            return Ok(Some(
                (key, e.value_len, ttl)
                    .into_pyobject(py)?
                    .into_any()
                    .unbind(),
            ));
        }
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
        self.lookup(py, key, default, true)
    }

    /// `get` that never waits: raises `WouldBlock` where `get` would wait for a shard
    /// lock (another process is mid-write in the key's shard, or stopped or died there).
    #[pyo3(signature = (key, default=None))]
    fn try_get(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        self.lookup(py, key, default, false)
    }

    fn __getitem__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
        self.read_with(py, key, true, |v| match v {
            Some(v) => self.decode(py, v),
            None => Err(pyo3::exceptions::PyKeyError::new_err(key.clone().unbind())),
        })
    }

    fn __contains__(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        self.read_with(py, key, true, |v| Ok(v.is_some()))
    }

    /// The number of entries the file holds (expired ones not yet reclaimed included),
    /// from the shards' counters: no lock is taken.
    fn __len__(&self) -> PyResult<usize> {
        Ok(self.cache()?.stats().entries as usize)
    }

    /// The keys of the fresh entries, one shard at a time (each shard's lock is held
    /// only while its keys are copied out).
    fn __iter__(&self) -> PyResult<PyEntries> {
        Ok(PyEntries {
            entries: Mutex::new(self.cache()?.entries()),
            expired: false,
            keys_only: true,
        })
    }

    /// `(key, value_len, ttl)` of every entry, one shard at a time (each shard's lock is
    /// held only while its entries are copied out); `ttl` is the seconds left, None for
    /// no expiry. Expired entries not yet reclaimed are listed, with a ttl of 0.0.
    fn entries(&self) -> PyResult<PyEntries> {
        Ok(PyEntries {
            entries: Mutex::new(self.cache()?.entries()),
            expired: true,
            keys_only: false,
        })
    }

    /// The int value of a counter (an entry `incr` made: 8 bytes, a little-endian
    /// int64), or `default`; raises `NotACounter` for a value of another length.
    #[pyo3(signature = (key, default=None))]
    fn get_counter(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        default: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        self.read_with(py, key, true, |v| match v {
            None => Ok(default.unwrap_or_else(|| py.None())),
            Some(v) => match <[u8; 8]>::try_from(v) {
                Ok(b) => Ok(i64::from_le_bytes(b).into_pyobject(py)?.into_any().unbind()),
                Err(_) => Err(to_py(Error::NotACounter { len: v.len() })),
            },
        })
    }

    /// `(value, cas)`: the value of a fresh entry and an opaque token of its version
    /// (bytes) for `cas`, or `(default, cas_default)`; pymemcache's `gets`.
    #[pyo3(signature = (key, default=None, cas_default=None))]
    fn gets(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        default: Option<Py<PyAny>>,
        cas_default: Option<Py<PyAny>>,
    ) -> PyResult<(Py<PyAny>, Py<PyAny>)> {
        self.gets_waiting(py, key, (default, cas_default), true)
    }

    /// Stores `value` only if the key's fresh entry still has the version `cas` came
    /// from (`gets`); pymemcache's `cas`: True if it stored it, False if the entry
    /// changed (or expired, or was evicted) since, None if there is no fresh entry.
    #[pyo3(signature = (key, value, cas, ttl=None))]
    fn cas(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        cas: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<bool>> {
        self.cas_waiting(py, (key, value), cas, ttl, true)
    }

    /// Stores every item of `mapping` with the same TTL; returns the list of the keys
    /// it could not store (a value too large for the file, or no space), as given.
    /// Any other error raises, after the items before it were stored.
    #[pyo3(signature = (mapping, ttl=None))]
    fn set_many(
        &self,
        py: Python<'_>,
        mapping: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Vec<Py<PyAny>>> {
        let ttl = opt_duration(ttl, "ttl")?;
        let cache = self.cache()?;
        let items = mapping.call_method0("items")?;
        let mut failed = Vec::new();
        for item in items.try_iter()? {
            let (key, value): (Bound<'_, PyAny>, Bound<'_, PyAny>) = item?.extract()?;
            let k = key_bytes(&key)?;
            let v = self.encode(&value)?;
            let r = match cache.try_set(&k, &v, ttl) {
                Err(Error::WouldBlock) => py.detach(|| cache.set(&k, &v, ttl)),
                r => r,
            };
            match r {
                Ok(()) => {}
                Err(Error::TooLarge { .. } | Error::NoSpace { .. }) => failed.push(key.unbind()),
                Err(e) => return Err(to_py(e)),
            }
        }
        Ok(failed)
    }

    /// Removes every key of `keys`; returns how many fresh entries it removed. Each
    /// key is revoked as by `delete`, found or not.
    fn delete_many(&self, py: Python<'_>, keys: &Bound<'_, PyAny>) -> PyResult<u64> {
        if keys.is_instance_of::<PyString>() || keys.is_instance_of::<PyBytes>() {
            return Err(PyTypeError::new_err(
                "delete_many takes an iterable of keys, not one key",
            ));
        }
        let cache = self.cache()?;
        let mut n = 0;
        for key in keys.try_iter()? {
            let key = key?;
            let k = key_bytes(&key)?;
            let removed = match cache.try_remove(&k) {
                Err(Error::WouldBlock) => py.detach(|| cache.remove(&k)),
                r => r,
            }
            .map_err(to_py)?;
            n += u64::from(removed);
        }
        Ok(n)
    }

    /// The shard `key` lives in (`0..limits()["shards"]`): writers of keys in
    /// different shards never contend.
    fn shard_of(&self, key: &Bound<'_, PyAny>) -> PyResult<usize> {
        let k = key_bytes(key)?;
        Ok(self.cache()?.shard_of(&k))
    }

    /// The lock timeout of this handle, in seconds.
    #[getter]
    fn lock_timeout(&self) -> f64 {
        self.lock_timeout.as_secs_f64()
    }

    /// The fill timeout of this handle, in seconds.
    #[getter]
    fn fill_timeout(&self) -> f64 {
        self.fill_timeout.as_secs_f64()
    }

    // The non-waiting forms behind the awaitable methods (larder/__init__.py): each
    // raises WouldBlock where its blocking twin would wait.

    /// `value` through this cache's serializer, once, for a write that may be made
    /// twice (inline, then off the event loop); `value` itself without a serializer.
    fn _serialize_once<'py>(&self, value: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        if self.codec.is_none() {
            return Ok(value.clone());
        }
        let bytes = self.encode(value)?.into_owned();
        Ok(Bound::new(value.py(), PyEncoded { bytes })?.into_any())
    }

    #[pyo3(signature = (key, value, ttl=None))]
    fn _try_set(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let ttl = opt_duration(ttl, "ttl")?;
        self.store_waiting(py, key, value, ttl, false)
    }

    #[pyo3(signature = (key, value, ttl=None))]
    fn _try_add(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        self.add_waiting(py, (key, value), ttl, false)
    }

    fn _try_delete(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<bool> {
        self.remove_waiting(py, key, false)
    }

    #[pyo3(signature = (key, delta=1, init=0, ttl=None))]
    fn _try_incr(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        delta: i64,
        init: i64,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<i64> {
        self.incr_waiting(py, key, (delta, init), ttl, false)
    }

    #[pyo3(signature = (key, ttl=None))]
    fn _try_touch(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        self.touch_waiting(py, key, ttl, false)
    }

    #[pyo3(signature = (key, default=None, cas_default=None))]
    fn _try_gets(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        default: Option<Py<PyAny>>,
        cas_default: Option<Py<PyAny>>,
    ) -> PyResult<(Py<PyAny>, Py<PyAny>)> {
        self.gets_waiting(py, key, (default, cas_default), false)
    }

    #[pyo3(signature = (key, value, cas, ttl=None))]
    fn _try_cas(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        cas: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Option<bool>> {
        self.cas_waiting(py, (key, value), cas, ttl, false)
    }

    fn _try_ticket(&self, py: Python<'_>, key: &Bound<'_, PyAny>) -> PyResult<PyTicket> {
        self.ticket_waiting(py, key, false)
    }

    #[pyo3(signature = (key, value, ticket, ttl=None))]
    fn _try_set_with_ticket(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
        ticket: &Bound<'_, PyAny>,
        ttl: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        self.set_with_ticket_waiting(py, (key, value), ticket, ttl, false)
    }

    /// `(True, value)` for a fresh value of `key` (decoded), else `(False, None)`; never
    /// waits (`WouldBlock`). Counts a hit, not a miss: the first, inline step of
    /// `aget_or_set`, whose fill's own lookup (`_hold_fill`) counts the miss.
    fn _try_get_counting_hits(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
    ) -> PyResult<(bool, Py<PyAny>)> {
        let cache = self.cache()?;
        let k = key_bytes(key)?;
        with_read_buf(|buf| {
            Ok(
                if cache.try_get_into_counting_hits(&k, buf).map_err(to_py)? {
                    (true, self.decode(py, buf)?)
                } else {
                    (false, py.None())
                },
            )
        })
    }

    /// Begins the fill of `key` on a thread of its own, which reports to
    /// `on_begun(kind, payload)` (see `hold_fill`) and holds a fill it takes for at most
    /// the fill timeout; returns the handle that tells it to store or abandon. Never
    /// waits.
    fn _hold_fill(&self, key: &Bound<'_, PyAny>, on_begun: Py<PyAny>) -> PyResult<PyFillHolder> {
        let cache = self.cache()?;
        let k = key_bytes(key)?.into_owned();
        let hold_for = self.fill_timeout;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("larder-fill".into())
            .spawn(move || hold_fill(cache, k, hold_for, on_begun, rx))
            .map_err(|e| {
                pyo3::exceptions::PyOSError::new_err(format!(
                    "cannot start the thread that holds a fill: {e}"
                ))
            })?;
        Ok(PyFillHolder {
            tx: Mutex::new(Some(tx)),
        })
    }

    /// The fill slot of `key` (`0..256`), shared by the keys a fill of it holds off.
    fn _fill_slot_of(&self, key: &Bound<'_, PyAny>) -> PyResult<usize> {
        Ok(self.cache()?.fill_slot_of(&key_bytes(key)?))
    }

    /// What `value` is stored as (the serializer's bytes).
    fn _encode<'py>(
        &self,
        py: Python<'py>,
        value: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let v = self.encode(value)?;
        Ok(PyBytes::new(py, &v))
    }

    /// The object every reader of stored `data` gets.
    fn _decode(&self, py: Python<'_>, data: &Bound<'_, PyBytes>) -> PyResult<Py<PyAny>> {
        self.decode(py, data.as_bytes())
    }

    /// Bench hook (python/bench.py): seconds taken by the Rust `get_into` of each key of
    /// `keys`, `rounds` times over, with one reused buffer and the GIL released: the
    /// Rust cost of the hits that `get` makes from Python. With `chained`, the choice
    /// of each key depends on the value read before it (through a zero the processor
    /// cannot see), so that no get starts before the previous one has ended, as
    /// happens between two calls from the interpreter: its latency, not its
    /// throughput.
    #[pyo3(signature = (keys, rounds, chained=false))]
    fn _bench_get_into(
        &self,
        py: Python<'_>,
        keys: Vec<Vec<u8>>,
        rounds: usize,
        chained: bool,
    ) -> PyResult<f64> {
        let cache = self.cache()?;
        py.detach(|| {
            let mut buf = Vec::new();
            let start = Instant::now();
            let mut carry = 0usize;
            // A zero the compiler cannot see: `value byte * zero` is zero, computed
            // from the loaded value, so the next key's address waits for that load.
            let zero = std::hint::black_box(0usize);
            for _ in 0..rounds {
                for i in 0..keys.len() {
                    let k = &keys[i + carry];
                    std::hint::black_box(cache.get_into(std::hint::black_box(k), &mut buf)?);
                    if chained {
                        carry = usize::from(buf.first().copied().unwrap_or(0)) * zero;
                    }
                }
            }
            Ok(start.elapsed().as_secs_f64())
        })
        .map_err(to_py)
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
        self.add_waiting(py, (key, value), ttl, true)
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
        self.incr_waiting(py, key, (delta, init), ttl, true)
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
        self.touch_waiting(py, key, ttl, true)
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
        self.ticket_waiting(py, key, true)
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
        self.set_with_ticket_waiting(py, (key, value), ticket, ttl, true)
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
                    if obj.hasattr("__await__").map_err(FillError::Py)? {
                        // Closed, so that it is not reported as never awaited.
                        if obj.hasattr("close").map_err(FillError::Py)? {
                            obj.call_method0("close").map_err(FillError::Py)?;
                        }
                        return Err(FillError::Py(PyTypeError::new_err(
                            "get_or_set's fill returned an awaitable: await \
                             cache.aget_or_set(key, fill) in a coroutine instead",
                        )));
                    }
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
    m.add_class::<PyFillHolder>()?;
    m.add_class::<PyEncoded>()?;
    m.add_class::<PyEntries>()?;
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
