//! What the invalidation listener relies on, checked against a real
//! redis-server with the sync redis 1.8 API over RESP3 (summary in
//! `NOTES-protocol.md`).
//!
//! The listener L is a RESP3 connection with a push sender and
//! `CLIENT TRACKING on BCAST PREFIX p:`; a writer W is a plain connection.
//! Every connection has read and write timeouts, so no test can hang.
//! Timings go to stderr (`cargo test --test protocol -- --nocapture`).

use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use larder_redis::testing::{connect, resp3_url, Proxy, RedisServer};
use redis::{Connection, ConnectionLike, PushInfo, PushKind, Value};

/// The read and write timeout of connections that are not timing anything.
const T: Duration = Duration::from_secs(5);

/// A tracking listener on `url`: RESP3, its pushes sent to the receiver.
fn listener(url: &str) -> (Connection, Receiver<PushInfo>) {
    let mut con = connect(&resp3_url(url), T).unwrap();
    let (tx, rx) = mpsc::channel();
    con.set_push_sender(tx);
    let ok: String = redis::cmd("CLIENT")
        .arg(&["TRACKING", "on", "BCAST", "PREFIX", "p:"])
        .query(&mut con)
        .unwrap();
    assert_eq!(ok, "OK");
    (con, rx)
}

fn writer(url: &str) -> Connection {
    connect(url, T).unwrap()
}

fn set(con: &mut Connection, key: &str) {
    redis::cmd("SET").arg(key).arg("v").exec(con).unwrap();
}

fn ping(con: &mut Connection) -> redis::RedisResult<String> {
    redis::cmd("PING").query(con)
}

fn echo(con: &mut Connection, s: &str) -> redis::RedisResult<String> {
    redis::cmd("ECHO").arg(s).query(con)
}

/// The pushes already delivered to the push sender, without waiting.
fn delivered(rx: &Receiver<PushInfo>) -> Vec<PushInfo> {
    rx.try_iter().collect()
}

/// The keys of an invalidate push: `data` is `[Array([BulkString(key), ..])]`.
fn keys(push: &PushInfo) -> Vec<String> {
    assert_eq!(push.kind, PushKind::Invalidate, "{push:?}");
    match &push.data[..] {
        [Value::Array(keys)] => keys
            .iter()
            .map(|k| match k {
                Value::BulkString(b) => String::from_utf8(b.clone()).unwrap(),
                other => panic!("key {other:?}"),
            })
            .collect(),
        other => panic!("invalidate data {other:?}"),
    }
}

/// Finding (a): after `CLIENT TRACKING on BCAST PREFIX p:` on L, a `SET p:x`
/// from W gives L `PushInfo { kind: PushKind::Invalidate, data:
/// [Array([BulkString(b"p:x")])] }`. When W's `SET` has returned and L then
/// sends `PING`, the push is in L's push sender by the time the PING reply
/// is returned (`req_command` reads the push first, hands it to the sender
/// and reads on): checked over 500 rounds on TCP and on the unix socket,
/// with `try_recv`, never a wait. Keys outside the prefix give nothing.
/// Keys written in one event-loop turn come in one push: `MSET p:a p:b`
/// gives `[Array([p:a, p:b])]`. L's own writes under the prefix are also
/// reported to L (no `NOLOOP`), after the reply to its write.
#[test]
fn a_bcast_invalidation_arrives_before_the_next_reply() {
    let server = RedisServer::start().unwrap();
    for url in [server.tcp_url(), server.unix_url()] {
        let (mut l, rx) = listener(&url);
        let mut w = writer(&url);
        for i in 0..500 {
            let key = format!("p:{i}");
            set(&mut w, &key);
            set(&mut w, &format!("q:{i}"));
            assert_eq!(ping(&mut l).unwrap(), "PONG");
            let got = delivered(&rx);
            assert_eq!(got.len(), 1, "round {i}: {got:?}");
            assert_eq!(keys(&got[0]), [key]);
        }

        set(&mut w, "q:outside");
        set(&mut w, "xp:outside");
        assert_eq!(ping(&mut l).unwrap(), "PONG");
        assert_eq!(delivered(&rx), []);

        redis::cmd("MSET")
            .arg(&["p:a", "1", "p:b", "2", "q:c", "3"])
            .exec(&mut w)
            .unwrap();
        assert_eq!(ping(&mut l).unwrap(), "PONG");
        let got = delivered(&rx);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(keys(&got[0]), ["p:a", "p:b"]);

        set(&mut l, "p:own");
        assert_eq!(ping(&mut l).unwrap(), "PONG");
        let got = delivered(&rx);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(keys(&got[0]), ["p:own"]);
    }
}

/// Finding (b): `FLUSHALL` and `FLUSHDB` (also `ASYNC`) give L one push
/// `PushInfo { kind: PushKind::Invalidate, data: [Value::Nil] }` (RESP3
/// null `_`), whatever the prefix and even when no key existed, delivered
/// before the reply to L's next PING like any other invalidation.
#[test]
fn b_flush_invalidates_with_a_null() {
    let server = RedisServer::start().unwrap();
    let (mut l, rx) = listener(&server.tcp_url());
    let mut w = writer(&server.tcp_url());
    for flush in [
        &["FLUSHALL"][..],
        &["FLUSHDB"],
        &["FLUSHALL", "ASYNC"],
        &["FLUSHDB", "ASYNC"],
    ] {
        set(&mut w, "q:unrelated");
        redis::cmd(flush[0]).arg(&flush[1..]).exec(&mut w).unwrap();
        assert_eq!(ping(&mut l).unwrap(), "PONG");
        let got = delivered(&rx);
        assert_eq!(
            got,
            [PushInfo {
                kind: PushKind::Invalidate,
                data: vec![Value::Nil]
            }],
            "{flush:?}"
        );
    }
}

/// Finding (c): after `CLIENT KILL ID <id>` (L's id from `CLIENT ID`), the
/// server closes L's socket at once. L sees it on its next read, within a
/// millisecond or so of the kill's reply:
/// * idle in `recv_response()` (read timeout 5 s): `Err` with
///   `is_io_error()`, `is_connection_dropped()`, io kind `UnexpectedEof`;
/// * on its next command (`PING`): the same error; the write itself still
///   succeeds on TCP.
///
/// In both cases the sync `Connection` sends `PushInfo { kind:
/// PushKind::Disconnection, data: [] }` to the push sender (it does so for
/// `UnexpectedEof` on read and for a dropped connection on write) and
/// `is_open()` turns false. Later commands fail at once (`BrokenPipe` on
/// write, `is_connection_dropped()`), sending another `Disconnection` each.
#[test]
fn c_client_kill_is_seen_as_eof_with_a_disconnection_push() {
    let server = RedisServer::start().unwrap();
    let mut w = writer(&server.tcp_url());

    // Killed while idle in a read.
    let (mut l, rx) = listener(&server.tcp_url());
    let id: i64 = redis::cmd("CLIENT").arg("ID").query(&mut l).unwrap();
    let killer = thread::spawn(move || {
        thread::sleep(Duration::from_millis(100)); // not a poll: lets L block in its read first
        let n: i64 = redis::cmd("CLIENT")
            .arg(&["KILL", "ID", &id.to_string()])
            .query(&mut w)
            .unwrap();
        (n, Instant::now(), w)
    });
    let e = l.recv_response().unwrap_err();
    let seen = Instant::now();
    let (n, killed, mut w) = killer.join().unwrap();
    assert_eq!(n, 1);
    eprintln!(
        "c: idle recv_response saw the kill {:?} after its reply: {e:?}",
        seen.saturating_duration_since(killed)
    );
    assert!(seen.saturating_duration_since(killed) < Duration::from_millis(500));
    assert!(
        e.is_io_error() && e.is_connection_dropped() && !e.is_timeout(),
        "{e:?}"
    );
    assert!(!l.is_open());
    assert_eq!(disconnections(&rx), 1);
    let e = ping(&mut l).unwrap_err();
    assert!(e.is_connection_dropped(), "{e:?}");
    eprintln!("c: command after that: {e:?}");

    // Killed between commands.
    let (mut l, rx) = listener(&server.tcp_url());
    let id: i64 = redis::cmd("CLIENT").arg("ID").query(&mut l).unwrap();
    let n: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "ID", &id.to_string()])
        .query(&mut w)
        .unwrap();
    assert_eq!(n, 1);
    let t = Instant::now();
    let e = ping(&mut l).unwrap_err();
    eprintln!("c: next PING failed in {:?}: {e:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_millis(500));
    assert!(e.is_connection_dropped() && !e.is_timeout(), "{e:?}");
    assert!(!l.is_open());
    assert_eq!(disconnections(&rx), 1);
}

fn disconnections(rx: &Receiver<PushInfo>) -> usize {
    delivered(rx)
        .iter()
        .filter(|p| p.kind == PushKind::Disconnection)
        .inspect(|p| assert_eq!(p.data, []))
        .count()
}

/// Finding (d): through the proxy in blackhole mode (no byte moves, no
/// socket closes), L's `PING` with `set_read_timeout(Some(200 ms))` fails
/// after the 200 ms (measured 200-202 ms), with `is_timeout()` (io kind
/// `WouldBlock`, i.e. EAGAIN from `SO_RCVTIMEO`), not `is_connection_dropped()`.
/// No `Disconnection` push is sent and `is_open()` stays true: the client
/// cannot tell a stall from a dead peer.
///
/// The connection stays usable: each reply that timed out is counted, and
/// the late replies are skipped when they come. After the blackhole ends,
/// `ECHO c` returns `c` (not the late `a` or `b` of the two timed-out
/// ECHOs), and the invalidation of a write made during the blackhole is in
/// the push sender by then. The listener should still treat a PING timeout
/// as a lost connection (reconnect, flush), as it cannot know how long it
/// missed pushes.
#[test]
fn d_blackhole_times_out_and_the_connection_recovers() {
    let server = RedisServer::start().unwrap();
    let proxy = Proxy::start(server.tcp_addr()).unwrap();
    let (mut l, rx) = listener(&proxy.url());
    let mut w = writer(&server.tcp_url());
    assert_eq!(ping(&mut l).unwrap(), "PONG");

    proxy.blackhole(true);
    set(&mut w, "p:during");
    let timeout = Duration::from_millis(200);
    l.set_read_timeout(Some(timeout)).unwrap();
    for s in ["a", "b"] {
        let t = Instant::now();
        let e = echo(&mut l, s).unwrap_err();
        let took = t.elapsed();
        eprintln!("d: ECHO {s} under blackhole failed after {took:?}: {e:?}");
        assert!(took >= timeout && took < timeout * 3, "{took:?}");
        assert!(e.is_timeout() && !e.is_connection_dropped(), "{e:?}");
        assert!(l.is_open());
    }
    assert_eq!(delivered(&rx), []);

    proxy.blackhole(false);
    l.set_read_timeout(Some(T)).unwrap();
    assert_eq!(echo(&mut l, "c").unwrap(), "c");
    let got = delivered(&rx);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(keys(&got[0]), ["p:during"]);
    assert_eq!(ping(&mut l).unwrap(), "PONG");
}

/// Finding (e): a redis restart (SIGKILL, new server on the same socket and
/// port) is seen by L on its next command as an error with
/// `is_connection_dropped()`: on TCP the write succeeds and the read gets
/// `UnexpectedEof`; on the unix socket the write fails with `BrokenPipe`.
/// Either way a `Disconnection` push is sent and `is_open()` is false.
/// Nothing reconnects in the sync API, and the new server knows nothing of
/// L's tracking: the listener must reconnect, turn tracking on again and
/// flush, since writes in between were not reported. L idle in
/// `recv_response()` sees the kill at once (`UnexpectedEof`).
#[test]
fn e_restart_is_an_error_on_the_next_command() {
    let mut server = RedisServer::start().unwrap();
    for url in [server.tcp_url(), server.unix_url()] {
        let (mut l, rx) = listener(&url);
        assert_eq!(ping(&mut l).unwrap(), "PONG");
        server.restart().unwrap();
        let t = Instant::now();
        let e = ping(&mut l).unwrap_err();
        eprintln!("e: {url}: next PING failed in {:?}: {e:?}", t.elapsed());
        assert!(e.is_connection_dropped() && !e.is_timeout(), "{e:?}");
        assert!(!l.is_open());
        assert_eq!(disconnections(&rx), 1);

        // A new connection works, with no tracking until it is turned on again.
        let (mut l, rx) = listener(&url);
        set(&mut writer(&url), "p:after");
        assert_eq!(ping(&mut l).unwrap(), "PONG");
        assert_eq!(delivered(&rx).len(), 1);
    }

    // Idle in a read while the server is killed.
    let (mut l, rx) = listener(&server.tcp_url());
    thread::scope(|s| {
        let killed = s.spawn(|| {
            thread::sleep(Duration::from_millis(100)); // not a poll: lets L block in its read first
            server.kill();
            Instant::now()
        });
        let e = l.recv_response().unwrap_err();
        let seen = Instant::now();
        let killed = killed.join().unwrap();
        eprintln!(
            "e: idle recv_response saw the kill {:?} after it: {e:?}",
            seen.saturating_duration_since(killed)
        );
        assert!(e.is_connection_dropped() && !e.is_timeout(), "{e:?}");
        assert!(seen.saturating_duration_since(killed) < Duration::from_millis(500));
    });
    assert_eq!(disconnections(&rx), 1);
}

/// Finding (e), 2: the `Disconnection` push is not sent for every lost
/// connection. When redis dies with bytes from L still unread in its socket
/// (here: frozen with SIGSTOP, L sends `PING` with `send_packed_command`,
/// then SIGKILL), its kernel answers with a reset, and L's
/// `recv_response()` fails with io kind `ConnectionReset`: that error is
/// `is_connection_dropped()`, but the sync `Connection` sends no
/// `Disconnection` push and `is_open()` stays true (it only closes itself on
/// `UnexpectedEof`). The next command's write then fails with `BrokenPipe`,
/// which does send a `Disconnection`. So the listener must take any
/// `is_connection_dropped()` (or timeout) error as the loss of the
/// connection itself, and not wait for the push.
#[test]
fn e2_reset_is_dropped_without_a_disconnection_push() {
    let mut server = RedisServer::start().unwrap();
    let (mut l, rx) = listener(&server.tcp_url());
    assert_eq!(ping(&mut l).unwrap(), "PONG");
    server.freeze().unwrap();
    l.send_packed_command(&redis::cmd("PING").get_packed_command())
        .unwrap();
    thread::sleep(Duration::from_millis(50)); // not a poll: lets the PING reach redis's socket
    server.kill();
    let e = l.recv_response().unwrap_err();
    eprintln!("e2: read after a reset: {e:?}");
    assert!(e.is_connection_dropped() && !e.is_timeout(), "{e:?}");
    assert_eq!(e.kind(), redis::ErrorKind::Io);
    assert!(l.is_open());
    assert_eq!(disconnections(&rx), 0);
    let e = ping(&mut l).unwrap_err();
    eprintln!("e2: next command: {e:?}");
    assert!(e.is_connection_dropped(), "{e:?}");
    assert_eq!(disconnections(&rx), 1);
}

/// Finding (f), 1: pushes can be read while idle. With a read timeout set,
/// `recv_response()` returns a pending push (`Ok(Value::Push { kind:
/// Invalidate, .. })`, also handed to the push sender) without a command
/// being sent, and fails with `is_timeout()` after the timeout when none
/// comes. But that timeout is counted as a late reply (`recv_response` is
/// `read(true)`), so the reply to the next command is skipped as if it were
/// that late reply: the next `ECHO` fails with a timeout, and so does every
/// command after it. `recv_response()` with a timeout is therefore no way
/// to wait on a connection that also sends commands.
#[test]
fn f1_recv_response_waits_for_pushes_but_a_timeout_poisons_the_connection() {
    let server = RedisServer::start().unwrap();
    let (mut l, rx) = listener(&server.tcp_url());
    let mut w = writer(&server.tcp_url());
    let timeout = Duration::from_millis(200);
    l.set_read_timeout(Some(timeout)).unwrap();

    set(&mut w, "p:x");
    let v = l.recv_response().unwrap();
    assert!(
        matches!(&v, Value::Push { kind: PushKind::Invalidate, data } if data[..] == [Value::Array(vec![Value::BulkString(b"p:x".to_vec())])]),
        "{v:?}"
    );
    assert_eq!(keys(&delivered(&rx)[0]), ["p:x"]);

    let t = Instant::now();
    let e = l.recv_response().unwrap_err();
    let took = t.elapsed();
    eprintln!("f1: idle recv_response failed after {took:?}: {e:?}");
    assert!(
        e.is_timeout() && took >= timeout && took < timeout * 3,
        "{took:?} {e:?}"
    );

    for s in ["after", "again"] {
        let e = echo(&mut l, s).unwrap_err();
        eprintln!("f1: ECHO {s} after the idle timeout: {e:?}");
        assert!(e.is_timeout(), "{e:?}");
    }
}

/// Finding (f), 2: what works for a bounded wait on the same connection is
/// `PubSub::get_message()`: `l.as_pubsub()`, `set_read_timeout(Some(d))`,
/// then `get_message()`. It reads with `read(false)`, so a timeout is not
/// counted as a late reply. Invalidate pushes are no pub/sub `Msg`, so it
/// hands them to the push sender and reads on until a read times out: it
/// returns `Err(is_timeout())` once `d` has passed with nothing read, with
/// the pushes that came in the meantime already in the push sender, each
/// as soon as it arrived. The timeout is per read, not for the whole wait:
/// a push 50 ms into a 200 ms wait made it last about 250 ms, and steady
/// pushes would keep it waiting; the bound is "`d` of silence". Dropping the `PubSub` sends `UNSUBSCRIBE` and
/// `PUNSUBSCRIBE` and reads their replies (one round trip, pushes of kind
/// `Unsubscribe`/`PUnsubscribe` that also reach the push sender); then
/// commands work again (`ECHO` returns its own argument).
#[test]
fn f2_pubsub_get_message_waits_for_pushes_with_a_bounded_wait() {
    let server = RedisServer::start().unwrap();
    let (mut l, rx) = listener(&server.tcp_url());
    let w = writer(&server.tcp_url());
    let timeout = Duration::from_millis(200);

    let writes = thread::spawn(move || {
        let mut w = w;
        thread::sleep(Duration::from_millis(50)); // not a poll: lets L block in its read first
        set(&mut w, "p:idle");
        Instant::now()
    });
    let t = Instant::now();
    let e = {
        let mut sub = l.as_pubsub();
        sub.set_read_timeout(Some(timeout)).unwrap();
        sub.get_message().unwrap_err()
    };
    let took = t.elapsed();
    let written = writes.join().unwrap();
    eprintln!("f2: get_message waited {took:?}: {e:?}");
    assert!(e.is_timeout() && took < timeout * 3, "{took:?} {e:?}");
    // The push restarted the read timeout.
    let slack = Duration::from_millis(10);
    assert!(
        took + slack >= written.duration_since(t) + timeout,
        "{took:?}"
    );
    let got = delivered(&rx);
    let invalidations: Vec<_> = got
        .iter()
        .filter(|p| p.kind == PushKind::Invalidate)
        .collect();
    assert_eq!(invalidations.len(), 1, "{got:?}");
    assert_eq!(keys(invalidations[0]), ["p:idle"]);
    let others: Vec<_> = got.iter().map(|p| p.kind.clone()).collect();
    eprintln!("f2: pushes after the wait and the PubSub drop: {others:?}");
    assert!(written < t + timeout);

    l.set_read_timeout(Some(T)).unwrap();
    assert_eq!(echo(&mut l, "after").unwrap(), "after");
    assert_eq!(ping(&mut l).unwrap(), "PONG");
}

/// Finding (f), 3: pushes reach the push sender while L is blocked in a
/// command, since the sync `Connection` hands each push over as it reads
/// it. So a listener thread can wait with a server-side timeout, e.g.
/// `BLPOP <absent key> 0.5` (reply `Nil` after 0.5 s), while another thread
/// takes invalidations from the receiver as they come: a write 100 ms into
/// the wait was received by the other thread within a few milliseconds,
/// long before the BLPOP returned. The read timeout must exceed the
/// command's timeout.
#[test]
fn f3_pushes_arrive_while_blocked_in_a_command() {
    let server = RedisServer::start().unwrap();
    let (mut l, rx) = listener(&server.tcp_url());
    let mut w = writer(&server.tcp_url());
    let (blpop, written, received) = thread::scope(|s| {
        let blocked = s.spawn(|| {
            let v: Value = redis::cmd("BLPOP")
                .arg(&["larder-redis:test:absent", "0.5"])
                .query(&mut l)
                .unwrap();
            (v, Instant::now())
        });
        thread::sleep(Duration::from_millis(100)); // not a poll: lets L block in its BLPOP first
        set(&mut w, "p:blocked");
        let written = Instant::now();
        let push = rx.recv_timeout(T).unwrap();
        let received = Instant::now();
        assert_eq!(keys(&push), ["p:blocked"]);
        (blocked.join().unwrap(), written, received)
    });
    eprintln!(
        "f3: push received {:?} after the write, BLPOP returned {:?} after it: {:?}",
        received.saturating_duration_since(written),
        blpop.1.saturating_duration_since(written),
        blpop.0
    );
    assert_eq!(blpop.0, Value::Nil);
    assert!(received < blpop.1);
    assert_eq!(ping(&mut l).unwrap(), "PONG");
}

/// Finding (f), 4: `PubSub::ping()` must not be used as the liveness check
/// of a tracking connection kept in pub/sub mode: it reads replies until one
/// is not a pub/sub `Msg`, and an invalidate push is none, so the push is
/// taken for the PING's reply (`ping::<Value>()` returns the push) and the
/// real `PONG` is left unread: every later reply is one behind (the next
/// `ping()` returns the first one's `PONG`). Leave the `PubSub` (drop it)
/// and send `PING` on the `Connection`, whose `req_command` skips pushes.
#[test]
fn f4_pubsub_ping_takes_a_push_for_its_reply() {
    let server = RedisServer::start().unwrap();
    let (mut l, rx) = listener(&server.tcp_url());
    let mut w = writer(&server.tcp_url());
    let mut sub = l.as_pubsub();
    set(&mut w, "p:x");
    let reply: Value = sub.ping().unwrap();
    eprintln!("f4: PubSub::ping after a write returned {reply:?}");
    assert!(
        matches!(
            reply,
            Value::Push {
                kind: PushKind::Invalidate,
                ..
            }
        ),
        "{reply:?}"
    );
    // The PONG is still to be read: the next ping gets it.
    let next: Value = sub.ping().unwrap();
    assert_eq!(next, Value::SimpleString("PONG".into()));
    drop(sub);
    assert_eq!(keys(&delivered(&rx)[0]), ["p:x"]);
}

// ----- what tracking does not report -------------------------------------------------

/// `INFO <section>` as text (a RESP3 verbatim string on L).
fn info(con: &mut Connection, section: &str) -> String {
    redis::cmd("INFO").arg(section).query(con).unwrap()
}

/// The `calls` of `cmdstat_<command>` in `INFO commandstats` (0 when absent: a
/// command never called since the last reset has no line).
fn calls(con: &mut Connection, command: &str) -> u64 {
    let line = format!("cmdstat_{command}:calls=");
    info(con, "commandstats")
        .lines()
        .find_map(|l| l.strip_prefix(&line))
        .map(|rest| rest.split(',').next().unwrap().parse().unwrap())
        .unwrap_or(0)
}

/// The sum of `calls` over every line of `INFO commandstats`.
fn all_calls(con: &mut Connection) -> u64 {
    info(con, "commandstats")
        .lines()
        .filter_map(|l| l.split_once(":calls="))
        .map(|(_, rest)| rest.split(',').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

fn get(con: &mut Connection, key: &str) -> Option<String> {
    redis::cmd("GET").arg(key).query(con).unwrap()
}

/// Finding (g): tracking is keyed by key name, not by database: a write to
/// `p:x` in db 1 invalidates `p:x` for L, which tracks from db 0, and so do
/// `MOVE` and `COPY … DB` into or out of L's db. But `SWAPDB 0 1`, which
/// replaces every key of db 0 at once, sends L nothing, whether it runs alone,
/// in `MULTI`/`EXEC` or in a script. Each run counts in `INFO commandstats`
/// (`cmdstat_swapdb:calls=N`), from a transaction and a script too.
#[test]
fn g_swapdb_is_not_reported_but_counted_and_other_dbs_writes_are_reported() {
    let server = RedisServer::start().unwrap();
    let url = server.tcp_url();
    let (mut l, rx) = listener(&url);
    let mut w = writer(&url);

    redis::cmd("SELECT").arg(1).exec(&mut w).unwrap();
    set(&mut w, "p:x");
    assert_eq!(ping(&mut l).unwrap(), "PONG");
    let got = delivered(&rx);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(keys(&got[0]), ["p:x"]);
    redis::cmd("MOVE").arg("p:x").arg(0).exec(&mut w).unwrap();
    redis::cmd("SELECT").arg(0).exec(&mut w).unwrap();
    redis::cmd("COPY")
        .arg(&["p:x", "p:y", "DB", "1"])
        .exec(&mut w)
        .unwrap();
    assert_eq!(ping(&mut l).unwrap(), "PONG");
    let got: Vec<Vec<String>> = delivered(&rx).iter().map(keys).collect();
    assert_eq!(got, [vec!["p:x"], vec!["p:y"]]);

    let before = calls(&mut l, "swapdb");
    let swaps: [&dyn Fn(&mut Connection); 3] = [
        &|w| redis::cmd("SWAPDB").arg(0).arg(1).exec(w).unwrap(),
        &|w| {
            redis::pipe()
                .atomic()
                .cmd("SWAPDB")
                .arg(0)
                .arg(1)
                .exec(w)
                .unwrap()
        },
        &|w| {
            redis::cmd("EVAL")
                .arg("redis.call('swapdb', 0, 1)")
                .arg(0)
                .exec(w)
                .unwrap()
        },
    ];
    for (i, swap) in swaps.iter().enumerate() {
        // A value of this round in db 0 only, so that each swap changes what db 0
        // holds.
        let value = format!("round {i}");
        redis::cmd("SET")
            .arg("p:z")
            .arg(&value)
            .exec(&mut w)
            .unwrap();
        assert_eq!(ping(&mut l).unwrap(), "PONG");
        assert_eq!(delivered(&rx).len(), 1);
        swap(&mut w);
        assert_ne!(get(&mut w, "p:z"), Some(value), "swap {i}");
        assert_eq!(ping(&mut l).unwrap(), "PONG");
        assert_eq!(delivered(&rx), [], "swap {i}");
        assert_eq!(calls(&mut l, "swapdb"), before + i as u64 + 1, "swap {i}");
    }
}

/// Finding (h): `CONFIG RESETSTAT` zeroes `INFO commandstats`: every line goes
/// (the call of `config|resetstat` itself is counted after the reset, as 1), so a
/// reset followed by as many `SWAPDB`s as were counted before leaves
/// `cmdstat_swapdb` where it was. The sum of every command's `calls` goes down
/// though, unless more commands ran since the reset than in all the time before it.
#[test]
fn h_config_resetstat_zeroes_the_command_counters() {
    let server = RedisServer::start().unwrap();
    let (mut l, _rx) = listener(&server.tcp_url());
    let mut w = writer(&server.tcp_url());
    redis::cmd("SWAPDB").arg(0).arg(1).exec(&mut w).unwrap();
    for _ in 0..20 {
        set(&mut w, "q:busy");
    }
    assert_eq!(calls(&mut l, "swapdb"), 1);
    let total = all_calls(&mut l);
    redis::pipe()
        .atomic()
        .cmd("CONFIG")
        .arg("RESETSTAT")
        .cmd("SWAPDB")
        .arg(0)
        .arg(1)
        .exec(&mut w)
        .unwrap();
    assert_eq!(calls(&mut l, "swapdb"), 1);
    assert_eq!(calls(&mut l, "config|resetstat"), 1);
    let after = all_calls(&mut l);
    assert!(after < total, "{after} >= {total}");
}

/// Finding (i): `DEBUG RELOAD` (save, empty, load) gives the null invalidation of
/// a flush, but `DEBUG RELOAD NOSAVE NOFLUSH MERGE` loads the RDB file over the
/// dataset, replacing values, with no push at all; it counts in
/// `cmdstat_debug`. (`DEBUG` is refused unless the server runs with
/// `enable-debug-command`.)
#[test]
fn i_debug_reload_merge_replaces_values_unreported() {
    let server = RedisServer::start_with(&["--enable-debug-command", "yes"]).unwrap();
    let (mut l, rx) = listener(&server.tcp_url());
    let mut w = writer(&server.tcp_url());
    redis::cmd("SET")
        .arg("p:k")
        .arg("saved")
        .exec(&mut w)
        .unwrap();
    redis::cmd("DEBUG").arg("RELOAD").exec(&mut w).unwrap();
    assert_eq!(ping(&mut l).unwrap(), "PONG");
    let got = delivered(&rx);
    assert_eq!(
        got.last(),
        Some(&PushInfo {
            kind: PushKind::Invalidate,
            data: vec![Value::Nil]
        }),
        "{got:?}"
    );
    redis::cmd("SET")
        .arg("p:k")
        .arg("newer")
        .exec(&mut w)
        .unwrap();
    assert_eq!(ping(&mut l).unwrap(), "PONG");
    assert_eq!(delivered(&rx).len(), 1);
    let debug = calls(&mut l, "debug");
    redis::cmd("DEBUG")
        .arg(&["RELOAD", "NOSAVE", "NOFLUSH", "MERGE"])
        .exec(&mut w)
        .unwrap();
    assert_eq!(get(&mut w, "p:k").as_deref(), Some("saved"));
    assert_eq!(ping(&mut l).unwrap(), "PONG");
    assert_eq!(delivered(&rx), []);
    assert_eq!(calls(&mut l, "debug"), debug + 1);
}

/// Runs `REPLICAOF` on `replica` towards `primary` and waits (bounded) until the
/// link is up and the replica has `p:marker` = `want`.
fn replicate(replica: &mut Connection, primary: &RedisServer, want: &str) {
    let addr = primary.tcp_addr();
    redis::cmd("REPLICAOF")
        .arg(addr.ip().to_string())
        .arg(addr.port())
        .exec(replica)
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let up = info(replica, "replication").contains("master_link_status:up");
        if up && get(replica, "p:marker").as_deref() == Some(want) {
            return;
        }
        assert!(Instant::now() < deadline, "the replica never synced");
        thread::sleep(Duration::from_millis(5)); // poll: deadline above
    }
}

/// Finding (j): L on a replica. A full resynchronisation (here: the replica is
/// pointed at another primary, whose data differ) empties the replica's dataset
/// and loads the primary's, and L gets the null invalidation of a flush for it
/// (with `repl-diskless-load` `disabled`, `on-empty-db` and `swapdb` alike). A
/// `SWAPDB` run on the primary is replicated: it counts in the replica's own
/// `cmdstat_swapdb` and L gets no push for it, as on a primary.
#[test]
fn j_a_replicas_full_resync_is_reported_and_a_replicated_swapdb_is_counted() {
    // No delay before a diskless sync: the primaries serve the replica at once.
    let fast = ["--repl-diskless-sync-delay", "0"];
    let primaries = [
        RedisServer::start_with(&fast).unwrap(),
        RedisServer::start_with(&fast).unwrap(),
    ];
    let replica = RedisServer::start().unwrap();
    for (i, p) in primaries.iter().enumerate() {
        let mut w = writer(&p.tcp_url());
        redis::cmd("SET")
            .arg("p:marker")
            .arg(format!("primary{i}"))
            .exec(&mut w)
            .unwrap();
    }
    let (mut l, rx) = listener(&replica.tcp_url());
    let mut r = writer(&replica.tcp_url());
    let null = PushInfo {
        kind: PushKind::Invalidate,
        data: vec![Value::Nil],
    };
    for (round, load) in ["disabled", "on-empty-db", "swapdb"].iter().enumerate() {
        redis::cmd("CONFIG")
            .arg(&["SET", "repl-diskless-load", load])
            .exec(&mut r)
            .unwrap();
        let i = round % 2;
        replicate(&mut r, &primaries[i], &format!("primary{i}"));
        assert_eq!(ping(&mut l).unwrap(), "PONG");
        let got = delivered(&rx);
        assert!(got.contains(&null), "{load}: {got:?}");
    }

    // The replica follows primaries[0] since the last round.
    let mut w = writer(&primaries[0].tcp_url());
    redis::cmd("SELECT").arg(1).exec(&mut w).unwrap();
    redis::cmd("SET")
        .arg("p:marker")
        .arg("swapped in")
        .exec(&mut w)
        .unwrap();
    // Once the replica has the write to db 1 (its invalidation then came), the swap.
    let mut r1 = writer(&replica.tcp_url());
    redis::cmd("SELECT").arg(1).exec(&mut r1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&mut r1, "p:marker").as_deref() != Some("swapped in") {
        assert!(
            Instant::now() < deadline,
            "the write never reached the replica"
        );
        thread::sleep(Duration::from_millis(5)); // poll: deadline above
    }
    assert_eq!(ping(&mut l).unwrap(), "PONG");
    assert_eq!(delivered(&rx).len(), 1);
    let before = calls(&mut l, "swapdb");
    redis::cmd("SWAPDB").arg(0).arg(1).exec(&mut w).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(&mut r, "p:marker").as_deref() != Some("swapped in") {
        assert!(
            Instant::now() < deadline,
            "the SWAPDB never reached the replica"
        );
        thread::sleep(Duration::from_millis(5)); // poll: deadline above
    }
    assert_eq!(ping(&mut l).unwrap(), "PONG");
    assert_eq!(delivered(&rx), []);
    assert_eq!(calls(&mut l, "swapdb"), before + 1);
}

/// Finding (k): a server started with `--cluster-enabled yes` (one node, no
/// slots assigned: enough to see the mode) says `cluster_enabled:1` in `INFO
/// cluster`; a standalone one says `cluster_enabled:0`. Tracking is per node in
/// cluster mode: a listener on one node hears nothing of the others' writes.
#[test]
fn k_cluster_mode_shows_in_info_cluster() {
    let standalone = RedisServer::start().unwrap();
    let cluster = RedisServer::start_with(&["--cluster-enabled", "yes"]).unwrap();
    let mut s = writer(&standalone.tcp_url());
    let mut c = writer(&cluster.tcp_url());
    assert!(info(&mut s, "cluster").contains("cluster_enabled:0"));
    assert!(info(&mut c, "cluster").contains("cluster_enabled:1"));
}

/// What the listener's round costs (printed, not asserted beyond sanity): `PING`
/// alone against `PING` + `INFO server` + `INFO commandstats` in one write, on a
/// server that has run 30 kinds of command (so `INFO commandstats` has 30-odd lines):
/// the round trip as the listener sees it, the server's time in the `INFO`s (from
/// `cmdstat_info`'s `usec`), and the bytes of the replies.
#[test]
fn l_the_listeners_round_trip_with_the_info_checks() {
    const ROUNDS: u32 = 2000;
    let server = RedisServer::start().unwrap();
    let (mut l, _rx) = listener(&server.unix_url());
    let mut w = writer(&server.unix_url());
    for cmd in [
        "SET p:a 1",
        "GET p:a",
        "INCR p:n",
        "DECR p:n",
        "LPUSH p:l 1",
        "RPUSH p:l 2",
        "LPOP p:l",
        "RPOP p:l",
        "SADD p:s 1",
        "SMEMBERS p:s",
        "SREM p:s 1",
        "HSET p:h f 1",
        "HGET p:h f",
        "HGETALL p:h",
        "HDEL p:h f",
        "ZADD p:z 1 m",
        "ZRANGE p:z 0 -1",
        "ZSCORE p:z m",
        "MSET p:a 1 p:b 2",
        "MGET p:a p:b",
        "EXPIRE p:a 100",
        "TTL p:a",
        "PTTL p:a",
        "EXISTS p:a",
        "DEL p:b",
        "TYPE p:a",
        "STRLEN p:a",
        "APPEND p:a x",
        "GETRANGE p:a 0 1",
        "SCAN 0",
    ] {
        let args: Vec<&str> = cmd.split(' ').collect();
        redis::cmd(args[0]).arg(&args[1..]).exec(&mut w).unwrap();
    }
    let mut ping = redis::pipe();
    ping.cmd("PING");
    let mut checked = redis::pipe();
    checked
        .cmd("PING")
        .cmd("INFO")
        .arg("server")
        .cmd("INFO")
        .arg("commandstats");
    let usec = |con: &mut Connection| -> u64 {
        let stats = info(con, "commandstats");
        let line = stats
            .lines()
            .find(|l| l.starts_with("cmdstat_info:"))
            .unwrap();
        line.split(',')
            .find_map(|kv| kv.strip_prefix("usec="))
            .unwrap()
            .parse()
            .unwrap()
    };
    let mut bytes = 0;
    let mut times = Vec::new();
    for (what, pipe) in [("PING", &ping), ("PING + 2 INFO", &checked)] {
        let server_before = usec(&mut l);
        let t = Instant::now();
        for _ in 0..ROUNDS {
            let replies: Vec<String> = pipe.query(&mut l).unwrap();
            bytes = replies.iter().map(String::len).sum::<usize>();
        }
        let round = t.elapsed() / ROUNDS;
        // (With the INFO of the first `usec` call: 1 in 2000 rounds.)
        let server = (usec(&mut l) - server_before) as f64 / f64::from(ROUNDS);
        times.push(round);
        eprintln!(
            "l: {what}: {round:?} a round as the listener sees it; server time in INFO \
             {server:.1} µs a round; replies {bytes} bytes"
        );
    }
    assert!(times[1] < Duration::from_millis(5), "{times:?}");
}
