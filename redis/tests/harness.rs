//! Checks of the test support in `larder_redis::testing`: the private
//! redis-server and the misbehaving proxy.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use larder_redis::testing::{connect, resp3_url, Proxy, RedisServer};

/// The read and write timeout of every connection in these tests.
const T: Duration = Duration::from_secs(5);

fn ping(url: &str) -> redis::RedisResult<String> {
    let mut con = connect(url, T)?;
    redis::cmd("PING").query(&mut con)
}

fn raw(addr: std::net::SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, T).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.set_write_timeout(Some(T)).unwrap();
    s
}

/// Reads until `want` bytes have come or the stream ends or times out.
fn read_n(s: &mut TcpStream, want: usize) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    while out.len() < want {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    Ok(out)
}

#[test]
fn server_answers_on_both_sockets_and_resp3() {
    let server = RedisServer::start().unwrap();
    assert_eq!(ping(&server.unix_url()).unwrap(), "PONG");
    assert_eq!(ping(&server.tcp_url()).unwrap(), "PONG");
    assert_eq!(ping(&resp3_url(&server.unix_url())).unwrap(), "PONG");
    assert_eq!(ping(&resp3_url(&server.tcp_url())).unwrap(), "PONG");
    assert!(server.tcp_url().starts_with("redis://127.0.0.1:"));
    assert!(server.unix_url().starts_with("unix:///"));
}

#[test]
fn drop_kills_the_server_and_removes_its_directory() {
    let server = RedisServer::start().unwrap();
    let dir = server.dir().to_path_buf();
    let pid = server.pid().unwrap();
    assert!(dir.exists());
    drop(server);
    assert!(!dir.exists());
    // Killed and reaped. (Its port may already serve another test's server.)
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn drop_on_panic_cleans_up() {
    let (tx, rx) = std::sync::mpsc::channel();
    let r = std::thread::spawn(move || {
        let server = RedisServer::start().unwrap();
        tx.send((server.dir().to_path_buf(), server.pid().unwrap()))
            .unwrap();
        panic!("test panic with a server alive");
    })
    .join();
    assert!(r.is_err());
    let (dir, pid) = rx.recv_timeout(T).unwrap();
    assert!(!dir.exists());
    // The process is reaped: no /proc entry (pids are not reused this fast).
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn restart_keeps_socket_and_port_and_forgets_data() {
    let mut server = RedisServer::start().unwrap();
    let (unix, tcp) = (server.unix_url(), server.tcp_url());
    let mut con = connect(&unix, T).unwrap();
    redis::cmd("SET").arg("k").arg("v").exec(&mut con).unwrap();
    let before = server.pid();
    server.restart().unwrap();
    assert_ne!(server.pid(), before);
    assert_eq!(
        (server.unix_url(), server.tcp_url()),
        (unix.clone(), tcp.clone())
    );
    let mut con = connect(&tcp, T).unwrap();
    let v: Option<String> = redis::cmd("GET").arg("k").query(&mut con).unwrap();
    assert_eq!(v, None);
    assert_eq!(ping(&unix).unwrap(), "PONG");
}

#[test]
fn kill_stops_answering_and_restart_brings_it_back() {
    let mut server = RedisServer::start().unwrap();
    let pid = server.pid().unwrap();
    server.kill();
    assert!(server.pid().is_none());
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    // Not the TCP port: once free, another test's server may take it.
    assert!(ping(&server.unix_url()).is_err());
    server.restart().unwrap();
    assert_eq!(ping(&server.tcp_url()).unwrap(), "PONG");
}

#[test]
fn servers_started_together_do_not_collide() {
    let servers: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4).map(|_| s.spawn(RedisServer::start)).collect();
        hs.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
    });
    for (i, a) in servers.iter().enumerate() {
        for b in &servers[i + 1..] {
            assert_ne!(a.tcp_addr(), b.tcp_addr());
            assert_ne!(a.dir(), b.dir());
        }
        let mut con = connect(&a.tcp_url(), T).unwrap();
        redis::cmd("SET").arg("who").arg(i).exec(&mut con).unwrap();
    }
    for (i, a) in servers.iter().enumerate() {
        let mut con = connect(&a.unix_url(), T).unwrap();
        let v: usize = redis::cmd("GET").arg("who").query(&mut con).unwrap();
        assert_eq!(v, i);
    }
}

#[test]
fn proxy_forwards_to_redis() {
    let server = RedisServer::start().unwrap();
    let proxy = Proxy::start(server.tcp_addr()).unwrap();
    assert_eq!(proxy.url(), format!("redis://{}", proxy.addr()));
    assert_eq!(ping(&proxy.url()).unwrap(), "PONG");
    assert_eq!(ping(&resp3_url(&proxy.url())).unwrap(), "PONG");
}

#[test]
fn proxy_delays_replies_in_order() {
    let server = RedisServer::start().unwrap();
    let proxy = Proxy::start(server.tcp_addr()).unwrap();
    let mut con = connect(&proxy.url(), T).unwrap();
    redis::cmd("PING").exec(&mut con).unwrap();
    proxy.set_delay(Duration::from_millis(200));
    let t = Instant::now();
    let mut pipe = redis::pipe();
    for i in 0..50 {
        pipe.cmd("ECHO").arg(i);
    }
    let got: Vec<i64> = pipe.query(&mut con).unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(got, (0..50).collect::<Vec<_>>());
    proxy.set_delay(Duration::ZERO);
    let t = Instant::now();
    redis::cmd("PING").exec(&mut con).unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn proxy_blackhole_stalls_without_closing_then_resumes() {
    let server = RedisServer::start().unwrap();
    let proxy = Proxy::start(server.tcp_addr()).unwrap();
    let mut s = raw(proxy.addr());
    s.write_all(b"PING\r\n").unwrap();
    assert_eq!(read_n(&mut s, 7).unwrap(), b"+PONG\r\n");
    proxy.blackhole(true);
    s.write_all(b"PING\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let e = read_n(&mut s, 7).unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{e}"
    );
    assert_eq!(proxy.connection_count(), 1);
    proxy.blackhole(false);
    s.set_read_timeout(Some(T)).unwrap();
    assert_eq!(read_n(&mut s, 7).unwrap(), b"+PONG\r\n");
}

#[test]
fn proxy_kill_connections_closes_them_and_accepts_new_ones() {
    let server = RedisServer::start().unwrap();
    let proxy = Proxy::start(server.tcp_addr()).unwrap();
    let mut s = raw(proxy.addr());
    s.write_all(b"PING\r\n").unwrap();
    assert_eq!(read_n(&mut s, 7).unwrap(), b"+PONG\r\n");
    proxy.kill_connections();
    // End-of-file, or a reset if the proxy's socket had unread data.
    match s.read(&mut [0u8; 16]) {
        Ok(n) => assert_eq!(n, 0),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
    }
    assert_eq!(ping(&proxy.url()).unwrap(), "PONG");
}

#[test]
fn proxy_drop_is_prompt_even_when_blackholed() {
    let server = RedisServer::start().unwrap();
    let proxy = Proxy::start(server.tcp_addr()).unwrap();
    let mut s = raw(proxy.addr());
    s.write_all(b"PING\r\n").unwrap();
    assert_eq!(read_n(&mut s, 7).unwrap(), b"+PONG\r\n");
    proxy.blackhole(true);
    s.write_all(b"PING\r\n").unwrap();
    let t = Instant::now();
    drop(proxy);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(read_n(&mut s, 7).unwrap(), b"");
}

#[test]
fn freeze_stalls_the_server_and_thaw_resumes_it() {
    let server = RedisServer::start().unwrap();
    let mut con = connect(&server.tcp_url(), Duration::from_millis(200)).unwrap();
    server.freeze().unwrap();
    let e = redis::cmd("PING").query::<String>(&mut con).unwrap_err();
    assert!(e.is_timeout(), "{e:?}");
    server.thaw().unwrap();
    con.set_read_timeout(Some(T)).unwrap();
    // The late reply to the first PING is skipped by the client.
    assert_eq!(
        redis::cmd("PING").query::<String>(&mut con).unwrap(),
        "PONG"
    );
}
