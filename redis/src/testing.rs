//! Test support for this crate's integration tests and benches: a private
//! redis-server ([`RedisServer`]) and a loopback TCP proxy that can delay,
//! stall or cut the connections through it ([`Proxy`]).
//!
//! Nothing here blocks for ever: every wait polls against a deadline or a
//! stop flag, and every socket read and write has a timeout. Ports and
//! directories are picked per server, so tests may run in parallel, and
//! several test processes may run at once.

use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long a redis-server gets to answer after it is started.
pub const START_DEADLINE: Duration = Duration::from_secs(10);

/// How many fresh ports [`RedisServer::start`] tries when redis-server
/// cannot listen on the one it was given (another process took it between
/// the probe and redis-server's bind).
const PORT_ATTEMPTS: usize = 10;

/// The interval of every polling loop in this module.
const POLL: Duration = Duration::from_millis(5);

/// The longest one readiness probe may take (connect, handshake, reply).
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// `url` with `protocol=resp3` added to its query, which makes the redis
/// client open the connection with `HELLO 3`.
pub fn resp3_url(url: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}protocol=resp3")
}

/// Opens a sync connection to `url` within `timeout` (connect and
/// handshake) and leaves `timeout` set as its read and write timeout, so no
/// call on it blocks longer than that.
pub fn connect(url: &str, timeout: Duration) -> redis::RedisResult<redis::Connection> {
    let con = redis::Client::open(url)?.get_connection_with_timeout(timeout)?;
    con.set_read_timeout(Some(timeout))?;
    con.set_write_timeout(Some(timeout))?;
    Ok(con)
}

/// A fresh directory under [`std::env::temp_dir`], removed with its
/// contents on drop.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new() -> io::Result<TempDir> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        for _ in 0..100 {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let name = format!("larder-redis-{}-{n}", std::process::id());
            let path = std::env::temp_dir().join(name);
            match fs::create_dir(&path) {
                Ok(()) => return Ok(TempDir { path }),
                // Left behind by an earlier process that had this pid.
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other(
            "no fresh temp directory name in 100 tries",
        ))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Why one start of redis-server did not come up.
enum StartError {
    /// It exited before it answered: most often it could not bind its port.
    Exited(ExitStatus),
    /// Anything else (spawn failed, no answer before the deadline).
    Other(io::Error),
}

/// A private redis-server listening on a unix socket in a fresh temp
/// directory and on a TCP port of 127.0.0.1, with persistence off
/// (`--save "" --appendonly no`), and with any further arguments given to
/// [`RedisServer::start_with`].
///
/// Dropping it kills the server (SIGKILL), waits for it and removes the
/// directory; this also happens when a test panics, as the value is dropped
/// while unwinding.
pub struct RedisServer {
    // Declared before `dir`, so the server is gone before its directory is removed.
    child: Option<Child>,
    port: u16,
    /// Arguments after the defaults (a later argument overrides an earlier one),
    /// kept for restarts.
    extra: Vec<String>,
    dir: TempDir,
}

impl RedisServer {
    /// Starts a server and waits until it answers on both sockets, for at
    /// most [`START_DEADLINE`] per attempt. A server that exits before it
    /// answers (its port was taken) is retried on a new port, a bounded
    /// number of times.
    pub fn start() -> io::Result<RedisServer> {
        RedisServer::start_with(&[])
    }

    /// As [`RedisServer::start`], with `extra` after the default arguments,
    /// e.g. `["--cluster-enabled", "yes"]` (its `nodes.conf` goes to the
    /// server's own directory) or `["--enable-debug-command", "yes"]`.
    /// [`RedisServer::restart`] starts the server with them again.
    pub fn start_with(extra: &[&str]) -> io::Result<RedisServer> {
        let dir = TempDir::new()?;
        let mut server = RedisServer {
            child: None,
            port: 0,
            extra: extra.iter().map(|a| a.to_string()).collect(),
            dir,
        };
        // sun_path holds 108 bytes with its terminating NUL.
        if server.socket_path().as_os_str().len() >= 108 {
            return Err(io::Error::other(format!(
                "unix socket path {} is too long; set TMPDIR to a shorter directory",
                server.socket_path().display()
            )));
        }
        let mut last = None;
        for _ in 0..PORT_ATTEMPTS {
            server.port = free_port()?;
            match server.spawn_and_wait(Instant::now() + START_DEADLINE) {
                Ok(()) => return Ok(server),
                Err(StartError::Exited(status)) => last = Some(status),
                Err(StartError::Other(e)) => return Err(e),
            }
        }
        Err(io::Error::other(format!(
            "redis-server exited before answering on {PORT_ATTEMPTS} ports (last: {last:?}); log: {}",
            server.log_tail()
        )))
    }

    /// The URL of the unix socket: `unix:///tmp/.../redis.sock`.
    pub fn unix_url(&self) -> String {
        format!("unix://{}", self.socket_path().display())
    }

    /// The URL of the TCP port: `redis://127.0.0.1:PORT`.
    pub fn tcp_url(&self) -> String {
        format!("redis://{}", self.tcp_addr())
    }

    /// The TCP address, 127.0.0.1:PORT, e.g. as a [`Proxy`] target.
    pub fn tcp_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The unix socket's path.
    pub fn socket_path(&self) -> PathBuf {
        self.dir.path.join("redis.sock")
    }

    /// The directory the server runs in (its socket and its log).
    pub fn dir(&self) -> &Path {
        &self.dir.path
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the server with SIGSTOP: its sockets stay open and the kernel
    /// still accepts connections and buffers what clients send, but nothing
    /// is read or answered until [`RedisServer::thaw`] (a hung server, as
    /// opposed to a cut network path).
    /// Returns once the kernel reports the process stopped.
    pub fn freeze(&self) -> io::Result<()> {
        self.signal("STOP")?;
        self.wait_state(true)
    }

    /// Resumes a server stopped by [`RedisServer::freeze`] (SIGCONT), and
    /// returns once the kernel reports it running.
    pub fn thaw(&self) -> io::Result<()> {
        self.signal("CONT")?;
        self.wait_state(false)
    }

    /// Waits until the process is (or is no longer) in the stopped state
    /// `T` of /proc/PID/stat, for at most [`START_DEADLINE`].
    fn wait_state(&self, stopped: bool) -> io::Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| io::Error::other("redis-server is not running"))?;
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
            // The state follows the command name, which is in parentheses.
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            if (state == Some('T')) == stopped {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("redis-server {pid} still in state {state:?}"),
                ));
            }
            thread::sleep(POLL); // poll: deadline above
        }
    }

    /// Sends `sig` to the server with kill(1), which needs no unsafe code.
    fn signal(&self, sig: &str) -> io::Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| io::Error::other("redis-server is not running"))?;
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!("kill -{sig} {pid}: {status}")))
        }
    }

    /// Kills the server with SIGKILL (no shutdown, no reply to anyone) and
    /// waits for it. Its sockets stop accepting; [`RedisServer::restart`]
    /// starts it again.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Child::kill sends SIGKILL on unix.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server (SIGKILL) if it runs and starts a new one, empty, on
    /// the same socket path and port, waiting for it as [`RedisServer::start`]
    /// does. If the port is not free at once the start is retried until
    /// [`START_DEADLINE`] has passed. (The port is free while the server is
    /// down, so another process could take it in that moment; it is one of
    /// the kernel's ephemeral ports, of which it hands out ~28000 at random,
    /// so this is unlikely, and it fails the restart rather than the check.)
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            match self.spawn_and_wait(deadline) {
                Ok(()) => return Ok(()),
                Err(StartError::Exited(status)) => {
                    if Instant::now() >= deadline {
                        return Err(io::Error::other(format!(
                            "redis-server did not restart on port {} before the deadline \
                             (last exit: {status}); log: {}",
                            self.port,
                            self.log_tail()
                        )));
                    }
                    thread::sleep(POLL); // poll: deadline above
                }
                Err(StartError::Other(e)) => return Err(e),
            }
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path.join("redis.log")
    }

    /// The last lines redis-server logged, for error messages.
    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }

    /// Spawns redis-server on `self.port` and waits until it answers, until `deadline`.
    fn spawn_and_wait(&mut self, deadline: Instant) -> Result<(), StartError> {
        // redis-server unlinks a stale socket itself; this also covers a failed bind.
        let _ = fs::remove_file(self.socket_path());
        let stderr = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path.join("redis.stderr"))
            .map_err(StartError::Other)?;
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .arg("--unixsocket")
            .arg(self.socket_path())
            .args(["--unixsocketperm", "700"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--loglevel", "notice"])
            .arg("--dir")
            .arg(&self.dir.path)
            .arg("--logfile")
            .arg(self.log_path())
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| {
                StartError::Other(io::Error::new(e.kind(), format!("redis-server: {e}")))
            })?;
        let pid = child.id();
        self.child = Some(child);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(StartError::Exited(status));
                }
            }
            let now = Instant::now();
            if now >= deadline {
                self.kill();
                return Err(StartError::Other(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "redis-server did not answer within {START_DEADLINE:?}; log: {}",
                        self.log_tail()
                    ),
                )));
            }
            let timeout = (deadline - now).clamp(Duration::from_millis(1), PROBE_TIMEOUT);
            if self.answers(pid, timeout) {
                return Ok(());
            }
            thread::sleep(POLL); // poll: deadline above
        }
    }

    /// Whether the server with process id `pid` answers on both sockets. On
    /// TCP it must be this server: if ours failed to bind, another one may
    /// hold the port.
    fn answers(&self, pid: u32, timeout: Duration) -> bool {
        let ours = connect(&self.tcp_url(), timeout)
            .and_then(|mut con| redis::cmd("INFO").arg("server").query::<String>(&mut con));
        let ours = match ours {
            Ok(info) => info
                .lines()
                .any(|line| line.trim() == format!("process_id:{pid}")),
            Err(_) => false,
        };
        ours && connect(&self.unix_url(), timeout)
            .and_then(|mut con| redis::cmd("PING").query::<String>(&mut con))
            .is_ok()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        // `dir` is removed when its field is dropped, after this.
    }
}

/// A port of 127.0.0.1 that was free a moment ago.
fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// How long a proxy thread blocks in one socket read or write before it
/// looks at its stop flags again.
const IO_SLICE: Duration = Duration::from_millis(10);

/// How long the proxy waits to connect to its target for a new client.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// A loopback TCP proxy on 127.0.0.1 (a port of its own) that forwards every
/// connection to a target address and can misbehave on command:
///
/// * [`Proxy::set_delay`]: each chunk from the target to the client is
///   forwarded that long after it was read, in order;
/// * [`Proxy::blackhole`]: nothing is forwarded either way and no socket is
///   closed, as on a network path that silently drops everything; data the
///   peers send waits in the socket buffers and flows again when the
///   blackhole is turned off (as TCP would retransmit it);
/// * [`Proxy::kill_connections`]: every current connection is closed on
///   both sides (the client reads end-of-file).
///
/// Each connection has four threads (a reader and a writer each way). None
/// of them blocks for longer than 10 ms without looking at its stop
/// flags, so dropping the proxy ends and joins them all promptly.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

/// The state the proxy shares with its threads.
struct Shared {
    target: SocketAddr,
    stop: AtomicBool,
    blackhole: AtomicBool,
    /// The server-to-client delay, in microseconds.
    delay_us: AtomicU64,
    links: Mutex<Vec<Arc<Link>>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// One proxied connection: the socket accepted from the client and the one
/// opened to the target.
struct Link {
    client: TcpStream,
    server: TcpStream,
    closed: AtomicBool,
    /// Threads of this link still running; the last one closes it.
    running: AtomicUsize,
}

impl Link {
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.server.shutdown(Shutdown::Both);
    }

    fn thread_done(&self) {
        if self.running.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.close();
        }
    }
}

/// What a reader hands its writer.
enum Chunk {
    /// Bytes to forward no earlier than the instant.
    Data(Instant, Vec<u8>),
    /// The source closed its sending side.
    Eof,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Proxy {
    /// Starts a proxy to `target` on a free port of 127.0.0.1.
    pub fn start(target: SocketAddr) -> io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target,
            stop: AtomicBool::new(false),
            blackhole: AtomicBool::new(false),
            delay_us: AtomicU64::new(0),
            links: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
        });
        let s = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name("proxy-accept".into())
            .spawn(move || accept_loop(listener, s))?;
        Ok(Proxy {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `redis://127.0.0.1:PORT` for [`Proxy::addr`].
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Delays each chunk forwarded from the target to a client by `delay`
    /// from when the proxy read it (chunks read before the call keep the
    /// delay they were read with). Order is kept. Zero turns it off.
    pub fn set_delay(&self, delay: Duration) {
        let us = u64::try_from(delay.as_micros()).unwrap_or(u64::MAX);
        self.shared.delay_us.store(us, Ordering::SeqCst);
    }

    /// Turns the blackhole on or off: while on, nothing is read or forwarded
    /// in either direction and every socket stays open.
    pub fn blackhole(&self, on: bool) {
        self.shared.blackhole.store(on, Ordering::SeqCst);
    }

    /// Closes every current connection, on the client's and the target's
    /// side. New connections are still accepted.
    pub fn kill_connections(&self) {
        for link in lock(&self.shared.links).drain(..) {
            link.close();
        }
    }

    /// How many connections are open through the proxy.
    pub fn connection_count(&self) -> usize {
        let mut links = lock(&self.shared.links);
        links.retain(|l| !l.closed.load(Ordering::SeqCst));
        links.len()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
        // The accept thread is gone: no link or thread is added from here on.
        self.kill_connections();
        let threads = std::mem::take(&mut *lock(&self.shared.threads));
        for t in threads {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                // A client the proxy cannot serve is dropped, so it reads end-of-file.
                let _ = open_link(client, &shared);
            }
            // Nothing to accept (or a transient error such as EMFILE).
            Err(_) => thread::sleep(POLL), // poll: ends within one interval of the stop flag
        }
    }
}

/// Connects to the target for `client` and starts the link's threads.
fn open_link(client: TcpStream, shared: &Arc<Shared>) -> io::Result<()> {
    client.set_nonblocking(false)?;
    let server = TcpStream::connect_timeout(&shared.target, CONNECT_TIMEOUT)?;
    for s in [&client, &server] {
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(IO_SLICE))?;
        s.set_write_timeout(Some(IO_SLICE))?;
    }
    let link = Arc::new(Link {
        client: client.try_clone()?,
        server: server.try_clone()?,
        closed: AtomicBool::new(false),
        running: AtomicUsize::new(4),
    });
    let mut links = lock(&shared.links);
    links.retain(|l| !l.closed.load(Ordering::SeqCst));
    links.push(Arc::clone(&link));
    drop(links);

    let mut threads = lock(&shared.threads);
    let (finished, running): (Vec<_>, Vec<_>) = std::mem::take(&mut *threads)
        .into_iter()
        .partition(|t| t.is_finished());
    *threads = running;
    for t in finished {
        let _ = t.join();
    }
    for (src, dst, delayed) in [
        (client.try_clone()?, server.try_clone()?, false),
        (server, client, true),
    ] {
        let (tx, rx) = mpsc::channel();
        let (s, l) = (Arc::clone(shared), Arc::clone(&link));
        threads.push(spawn_or_close(&link, move || {
            read_side(src, tx, delayed, &s, &l);
            l.thread_done();
        })?);
        let (s, l) = (Arc::clone(shared), Arc::clone(&link));
        threads.push(spawn_or_close(&link, move || {
            write_side(dst, rx, &s, &l);
            l.thread_done();
        })?);
    }
    Ok(())
}

fn spawn_or_close(link: &Link, f: impl FnOnce() + Send + 'static) -> io::Result<JoinHandle<()>> {
    thread::Builder::new()
        .name("proxy-link".into())
        .spawn(f)
        .inspect_err(|_| link.close())
}

fn halted(shared: &Shared, link: &Link) -> bool {
    shared.stop.load(Ordering::SeqCst) || link.closed.load(Ordering::SeqCst)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Reads `src` and queues what it reads for the writer, stamped with the
/// instant it may be forwarded.
fn read_side(
    mut src: TcpStream,
    tx: mpsc::Sender<Chunk>,
    delayed: bool,
    shared: &Shared,
    link: &Link,
) {
    let mut buf = vec![0u8; 64 * 1024];
    while !halted(shared, link) {
        if shared.blackhole.load(Ordering::SeqCst) {
            thread::sleep(POLL); // poll: ends within one interval of the stop flags
            continue;
        }
        match src.read(&mut buf) {
            Ok(0) => {
                let _ = tx.send(Chunk::Eof);
                return;
            }
            Ok(n) => {
                let delay = if delayed {
                    Duration::from_micros(shared.delay_us.load(Ordering::SeqCst))
                } else {
                    Duration::ZERO
                };
                if tx
                    .send(Chunk::Data(Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
                {
                    return;
                }
            }
            Err(e) if is_timeout(&e) => {}
            Err(_) => {
                link.close();
                return;
            }
        }
    }
}

/// Forwards the reader's chunks to `dst` when they are due and no blackhole
/// is on; on the reader's end-of-file, shuts down `dst`'s sending side.
fn write_side(mut dst: TcpStream, rx: mpsc::Receiver<Chunk>, shared: &Shared, link: &Link) {
    while !halted(shared, link) {
        let (due, data) = match rx.recv_timeout(IO_SLICE) {
            Ok(Chunk::Data(due, data)) => (due, data),
            Ok(Chunk::Eof) => {
                let _ = dst.shutdown(Shutdown::Write);
                return;
            }
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut sent = 0;
        while sent < data.len() {
            if halted(shared, link) {
                return;
            }
            let now = Instant::now();
            if shared.blackhole.load(Ordering::SeqCst) {
                thread::sleep(POLL); // poll: ends within one interval of the stop flags
                continue;
            }
            if now < due {
                thread::sleep((due - now).min(POLL)); // poll: ends at `due` or within one interval of the stop flags
                continue;
            }
            match dst.write(&data[sent..]) {
                Ok(0) => {
                    link.close();
                    return;
                }
                Ok(n) => sent += n,
                Err(e) if is_timeout(&e) => {}
                Err(_) => {
                    link.close();
                    return;
                }
            }
        }
    }
}
