//! `larder listen` tells an operator what it is doing, on stderr, one clear line per
//! change: when it stands by, takes the lease, cannot reach Redis or loses it, and gives
//! the lease up; a message that repeats (a retry every ping interval) is shown at most
//! once per period, with a count, never once per retry.
//!
//! Every child runs under a deadline and is killed if a test fails; each test has its
//! own temporary directory and its own Redis (or port where nothing listens).

use std::io::{BufRead, BufReader};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

// The library's test helpers: a private temp dir per test, child processes that never
// outlive a test.
#[path = "../../tests/common/mod.rs"]
mod common;
use common::{ChildGuard, TempCache};

const BIN: &str = env!("CARGO_BIN_EXE_larder");
/// Generous: a loaded CI machine running the debug binary.
const DEADLINE: Duration = Duration::from_secs(60);
/// How long a test watches for repeated lines once the first has come: twenty retries
/// at the default ping interval (100 ms), ten times the few lines it may print.
const WATCH: Duration = Duration::from_secs(2);

/// A small cache at `path`, made by `larder create`.
fn create(path: &str) {
    let mut guard = ChildGuard::spawn(
        Command::new(BIN)
            .args(["create", path, "--capacity", "4MiB", "--max-key", "64"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let status = guard.wait_or_fail(Instant::now() + DEADLINE, "larder create");
    assert!(status.success(), "larder create {path}: {status}");
}

/// A running `larder listen`; the lines it writes to stderr arrive on a channel as it
/// writes them. Killed when dropped.
struct Listening {
    guard: ChildGuard,
    lines: mpsc::Receiver<String>,
}

impl Listening {
    fn start(cache: &str, url: &str, extra: &[&str]) -> Listening {
        let mut guard = ChildGuard::spawn(
            Command::new(BIN)
                .args(["listen", cache, "--redis", url, "--prefix", "k:"])
                .args(extra)
                .env_remove("RUST_BACKTRACE")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        );
        let stderr = guard.child().stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Listening { guard, lines }
    }

    /// The next line, waiting until `deadline`; panics, naming `what` was awaited, if
    /// none comes.
    fn next_line(&self, deadline: Instant, what: &str) -> String {
        self.lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| {
                panic!("larder listen printed no line ({what}) within {DEADLINE:?}")
            })
    }

    /// Every line written from now until `end`.
    fn lines_until(&self, end: Instant) -> Vec<String> {
        let mut got = Vec::new();
        while let Ok(line) = self
            .lines
            .recv_timeout(end.saturating_duration_since(Instant::now()))
        {
            got.push(line);
        }
        got
    }
}

/// A loopback TCP port where nothing listens, for as long as this lives: a socket bound
/// to it that never listens, so a connection is refused at once and no other process
/// can take the port meanwhile.
struct RefusingPort {
    _socket: OwnedFd,
    port: u16,
}

impl RefusingPort {
    fn new() -> RefusingPort {
        // SAFETY: socket(2) takes no pointers; a non-negative result is a descriptor
        // this process owns and nothing else closes, so OwnedFd may take it.
        let socket = unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            OwnedFd::from_raw_fd(fd)
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
        let mut addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be(),
            },
            sin_zero: [0; 8],
        };
        let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        // SAFETY: bind(2) and getsockname(2) read and write a sockaddr_in that lives
        // on this stack frame, with its true length; the descriptor is open.
        let (bound, named) = unsafe {
            let p = &mut addr as *mut libc::sockaddr_in as *mut libc::sockaddr;
            (libc::bind(fd, p, len), libc::getsockname(fd, p, &mut len))
        };
        assert!(
            bound == 0 && named == 0,
            "bind: {}",
            std::io::Error::last_os_error()
        );
        RefusingPort {
            _socket: socket,
            port: u16::from_be(addr.sin_port),
        }
    }
}

/// With no Redis at --redis, the listener says so in one line within its first
/// attempts (it took the lease, cannot reach Redis, readers go to Redis meanwhile), then
/// keeps retrying without printing a line per retry; with -v as without.
#[test]
fn listen_where_nothing_listens_says_so_once_not_once_per_retry() {
    let port = RefusingPort::new();
    let url = format!("redis://127.0.0.1:{}/", port.port);
    let caches = [
        TempCache::new("listen-refused"),
        TempCache::new("listen-refused-v"),
    ];
    for t in &caches {
        create(t.name());
    }
    let listeners = [
        Listening::start(caches[0].name(), &url, &[]),
        Listening::start(caches[1].name(), &url, &["-v"]),
    ];
    let deadline = Instant::now() + DEADLINE;
    for (l, t) in listeners.iter().zip(&caches) {
        let line = l.next_line(deadline, "that Redis cannot be reached");
        assert!(line.starts_with("larder listen: "), "{line}");
        let took = format!("took the lease on {}", t.name());
        for needle in [took.as_str(), "cannot reach Redis", &url, "refused"] {
            assert!(line.contains(needle), "{line:?} lacks {needle:?}");
        }
    }
    // Twenty retries later, still one line each, and both still trying.
    let end = Instant::now() + WATCH;
    for (mut l, flag) in listeners.into_iter().zip(["", " -v"]) {
        let more = l.lines_until(end);
        assert!(
            more.is_empty(),
            "larder listen{flag} repeated itself: {more:?}"
        );
        assert!(l.guard.try_status().is_none(), "larder listen{flag} exited");
    }
}

/// Against a real Redis: the first listener says it took the lease and is connected; a
/// second says it stands by (naming the holder), and when the first is killed says it
/// took the lease over from a listener that died.
#[test]
fn listen_says_when_it_takes_the_lease_and_when_it_stands_by() {
    use larder_redis::testing::RedisServer;
    let t = TempCache::new("listen-lease");
    let name = t.name();
    create(name);
    let server = RedisServer::start().expect("redis-server");
    let url = server.unix_url();
    let fast = ["--ping-every", "20ms", "--bound", "200ms"];
    let mut first = Listening::start(name, &url, &fast);
    let deadline = Instant::now() + DEADLINE;
    let took = format!("took the lease on {name}");
    let line = first.next_line(deadline, "the lease");
    for needle in [took.as_str(), "connected to Redis"] {
        assert!(line.contains(needle), "{line:?} lacks {needle:?}");
    }
    let second = Listening::start(name, &url, &fast);
    let line = second.next_line(deadline, "standing by");
    let holder = format!("pid {}", first.guard.pid());
    for needle in ["standing by", holder.as_str()] {
        assert!(line.contains(needle), "{line:?} lacks {needle:?}");
    }
    first.guard.signal(libc::SIGKILL);
    first.guard.wait_or_fail(deadline, "the killed listener");
    let line = second.next_line(deadline, "the takeover");
    for needle in [took.as_str(), "died", "connected to Redis"] {
        assert!(line.contains(needle), "{line:?} lacks {needle:?}");
    }
    let more = second.lines_until(Instant::now() + WATCH / 4);
    assert!(more.is_empty(), "{more:?}");
}
