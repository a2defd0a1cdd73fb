//! The `larder` command line, driven as a user would: every subcommand, its output and
//! exit status, and the user mistakes that must end in one line on stderr (a missing
//! cache, a wrong name, a file that is not a cache, a file larder refuses to trust).
//!
//! Every child process runs under a deadline and is killed if a test fails; every test
//! works in its own temporary directory (paths with '/' never touch /dev/shm), except
//! the bare-name test, which uses a unique name and removes it in a guard.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;
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
/// An owner that is not the test's uid: larder refuses its files as unsafe.
const OTHER_UID: u32 = 12345;

/// What a finished run left.
struct Out {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
}

impl Out {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Exit 0 and nothing on stderr; returns stdout.
    fn ok(&self) -> String {
        assert_eq!(
            self.code,
            Some(0),
            "expected success; stdout: {}; stderr: {}",
            self.text(),
            self.stderr
        );
        assert!(self.stderr.is_empty(), "stderr: {}", self.stderr);
        self.text()
    }

    /// The failure contract: exit `code`, exactly one line on stderr, prefixed, no panic
    /// or backtrace, and it mentions `needle`.
    fn fails(&self, code: i32, needle: &str) {
        assert_eq!(
            self.code,
            Some(code),
            "stdout: {}; stderr: {}",
            self.text(),
            self.stderr
        );
        assert_eq!(
            self.stderr.lines().count(),
            1,
            "not one line: {:?}",
            self.stderr
        );
        assert!(self.stderr.ends_with('\n'), "{:?}", self.stderr);
        assert!(self.stderr.starts_with("larder: "), "{:?}", self.stderr);
        assert!(
            !self.stderr.contains("panicked") && !self.stderr.contains("RUST_BACKTRACE"),
            "{:?}",
            self.stderr
        );
        assert!(
            self.stderr.contains(needle),
            "{:?} does not mention {needle:?}",
            self.stderr
        );
    }
}

/// Reads all of `r` on a thread; the receiver gets the bytes at EOF.
fn drain(mut r: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    rx
}

fn recv_by(rx: &mpsc::Receiver<Vec<u8>>, deadline: Instant, what: &str) -> Vec<u8> {
    rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .unwrap_or_else(|_| panic!("larder did not close its {what} within {DEADLINE:?}"))
}

/// Waits for the child to exit, up to `deadline`; the guard kills it otherwise.
fn wait_by(guard: &mut ChildGuard, deadline: Instant) -> Option<i32> {
    guard.wait_or_fail(deadline, "larder").code()
}

fn run_with(args: &[&str], stdin: Option<&[u8]>) -> Out {
    let deadline = Instant::now() + DEADLINE;
    let mut guard = ChildGuard::spawn(
        Command::new(BIN)
            .args(args)
            .env_remove("RUST_BACKTRACE")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    if let Some(input) = stdin {
        let mut pipe = guard.child().stdin.take().expect("stdin");
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    let out = drain(guard.child().stdout.take().expect("stdout"));
    let err = drain(guard.child().stderr.take().expect("stderr"));
    let stdout = recv_by(&out, deadline, "stdout");
    let stderr = recv_by(&err, deadline, "stderr");
    let code = wait_by(&mut guard, deadline);
    Out {
        code,
        stdout,
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

fn larder(args: &[&str]) -> Out {
    run_with(args, None)
}

fn larder_stdin(args: &[&str], input: &[u8]) -> Out {
    run_with(args, Some(input))
}

/// A small cache at `path`, made by `larder create`.
fn create(path: &str) {
    larder(&[
        "create",
        path,
        "--capacity",
        "4MiB",
        "--max-key",
        "64",
        "--max-value",
        "1KiB",
    ])
    .ok();
}

/// A process attached to `path` (a `stats --watch` with a bound), once it has drawn its
/// first frame; killed when the guard drops.
fn attached_process(path: &str) -> ChildGuard {
    let mut guard = ChildGuard::spawn(
        Command::new(BIN)
            .args(["stats", path, "--watch", "50ms", "--count", "2400"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let stdout = guard.child().stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = tx.send(lines.next().and_then(Result::ok));
        // Keep reading so the holder never blocks on a full pipe.
        for _ in lines {}
    });
    let first = rx
        .recv_timeout(DEADLINE)
        .expect("holder drew no frame in time");
    assert!(
        first.is_some_and(|l| l.starts_with("cache")),
        "holder failed"
    );
    guard
}

/// Changes owner to `OTHER_UID`; false (the caller skips) where that is not allowed.
fn chown_other(path: &str) -> bool {
    match std::os::unix::fs::chown(path, Some(OTHER_UID), None) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("skipping the other-owner case: chown: {e}");
            false
        }
    }
}

fn write_not_a_cache(path: &str) {
    // Longer than a header, so it is judged by its magic number, not its length.
    std::fs::write(
        path,
        b"these are someone's notes, not a cache\n".repeat(2000),
    )
    .unwrap();
}

// ----- create ---------------------------------------------------------------------

#[test]
fn create_makes_the_file_with_its_mode_and_is_idempotent() {
    let t = TempCache::new("create");
    let c = t.file("c");
    let out = larder(&[
        "create",
        &c,
        "--capacity",
        "4MiB",
        "--mode",
        "0640",
        "--max-key",
        "128",
        "--max-value",
        "2KiB",
    ])
    .ok();
    assert!(out.starts_with("created "), "{out}");
    assert!(
        out.contains("keys up to 128 B") && out.contains("values up to 2 KiB"),
        "{out}"
    );
    let meta = std::fs::metadata(&c).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o640);
    // Again with the same parameters: attaches, says so, succeeds.
    let again = larder(&[
        "create",
        &c,
        "--capacity",
        "4MiB",
        "--max-key",
        "128",
        "--max-value",
        "2KiB",
    ])
    .ok();
    assert!(again.starts_with("exists "), "{again}");
    // With other parameters: refused, naming the difference.
    larder(&["create", &c, "--capacity", "8MiB"]).fails(1, "capacity");
}

#[test]
fn create_refuses_bad_sizes_modes_and_places() {
    let t = TempCache::new("create-bad");
    let c = t.file("c");
    larder(&["create", &c, "--capacity", "12XB"]).fails(1, "unknown size unit");
    larder(&["create", &c, "--mode", "0666"]).fails(1, "world-writable");
    larder(&["create", &c, "--mode", "rw"]).fails(1, "not a file mode");
    larder(&["create", &c, "--shards", "3"]).fails(1, "power of two");
    larder(&["create", &c, "--capacity", "4MiB", "--max-value", "4MiB"]).fails(1, "invalid");
    larder(&["create", &t.file("missing/dir/c")]).fails(1, "does not exist");
    larder(&["create", "no spaces"]).fails(1, "invalid cache name");
    assert!(!Path::new(&c).exists());
}

// ----- get / set / del ---------------------------------------------------------------

#[test]
fn set_get_del_round_trip_text() {
    let t = TempCache::new("getset");
    let c = t.file("c");
    create(&c);
    larder(&["set", &c, "token:abc", "user=alice roles=admin"]).ok();
    assert_eq!(
        larder(&["get", &c, "token:abc"]).ok(),
        "user=alice roles=admin\n"
    );
    assert_eq!(
        larder(&["del", &c, "token:abc"]).ok(),
        "removed token:abc\n"
    );
    larder(&["get", &c, "token:abc"]).fails(1, "no fresh entry for key token:abc");
    // Removing again is not an error: there is simply nothing to remove.
    assert!(larder(&["delete", &c, "token:abc"])
        .ok()
        .contains("nothing removed"));
}

#[test]
fn incr_counts_with_init_by_and_ttl_and_refuses_a_non_counter() {
    let t = TempCache::new("incr");
    let c = t.file("c");
    create(&c);
    assert_eq!(larder(&["incr", &c, "fail:alice"]).ok(), "1\n");
    assert_eq!(larder(&["incr", &c, "fail:alice", "--by", "4"]).ok(), "5\n");
    assert_eq!(
        larder(&["incr", &c, "fail:alice", "--by", "-2"]).ok(),
        "3\n"
    );
    assert_eq!(
        larder(&["incr", &c, "quota", "--by", "-1", "--init", "100", "--ttl", "1h"]).ok(),
        "99\n"
    );
    let listed = larder(&["dump", &c]).ok();
    assert!(listed.contains("quota"), "{listed}");
    larder(&["set", &c, "name", "alice"]).ok();
    larder(&["incr", &c, "name"]).fails(1, "not a counter");
    assert_eq!(larder(&["get", &c, "name"]).ok(), "alice\n");
}

#[test]
fn set_reads_the_value_from_stdin_byte_for_byte() {
    let t = TempCache::new("stdin");
    let c = t.file("c");
    create(&c);
    let value: Vec<u8> = (0..=255).collect();
    larder_stdin(&["set", &c, "bin", "-"], &value).ok();
    let raw = larder(&["get", &c, "bin", "--raw"]);
    assert_eq!(raw.code, Some(0));
    assert_eq!(raw.stdout, value);
    // Encoded text on stdin, wrapped and newline-terminated as tools write it.
    larder_stdin(&["set", &c, "h", "-", "--hex"], b"dead\nbeef\n").ok();
    assert_eq!(larder(&["get", &c, "h", "--hex"]).ok(), "deadbeef\n");
    larder_stdin(&["set", &c, "b", "-", "--base64"], b"aGVsbG8=\n").ok();
    assert_eq!(larder(&["get", &c, "b"]).ok(), "hello\n");
}

#[test]
fn binary_keys_and_values_use_hex_or_base64_and_print_escaped() {
    let t = TempCache::new("binary");
    let c = t.file("c");
    create(&c);
    larder(&["set", &c, "k", "00ff0a41", "--hex"]).ok();
    assert_eq!(larder(&["get", &c, "k", "--hex"]).ok(), "00ff0a41\n");
    assert_eq!(larder(&["get", &c, "k", "--base64"]).ok(), "AP8KQQ==\n");
    // Not printable: escaped, so it stays one line on a terminal.
    assert_eq!(larder(&["get", &c, "k"]).ok(), "\\0\\xff\\nA\n");
    // A binary key.
    larder(&["set", &c, "ff00", "v", "--key-hex"]).ok();
    assert_eq!(larder(&["get", &c, "/wA=", "--key-base64"]).ok(), "v\n");
    let keys = larder(&["keys", &c, "--hex"]).ok();
    let mut keys: Vec<&str> = keys.lines().collect();
    keys.sort();
    assert_eq!(keys, ["6b", "ff00"]);
    assert_eq!(larder(&["del", &c, "ff00", "--hex"]).ok(), "removed ff00\n");
    larder(&["set", &c, "k", "abc", "--hex"]).fails(1, "not valid hex");
    larder(&["get", &c, "k", "--base64", "--raw"]).fails(1, "cannot be used with");
}

#[test]
fn set_with_ttl_and_limits() {
    let t = TempCache::new("ttl");
    let c = t.file("c");
    create(&c);
    larder(&["set", &c, "session", "alice", "--ttl", "5m"]).ok();
    let dump = larder(&["dump", &c, "--json"]).ok();
    let ttl: u64 = dump
        .split("\"ttl_ms\":")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no ttl in {dump}"));
    assert!(ttl > 250_000 && ttl <= 300_000, "{ttl}");
    larder(&["set", &c, "k", "v", "--ttl", "0s"]).fails(1, "more than zero");
    larder(&["set", &c, "k", "v", "--ttl", "soon"]).fails(1, "not a duration");
    let big = "x".repeat(2000);
    larder(&["set", &c, "k", &big]).fails(1, "over this cache's limit");
    larder_stdin(&["set", &c, "k", "-"], big.as_bytes()).fails(1, "over this cache's limit");
    larder(&["set", &c, &"k".repeat(100), "v"]).fails(1, "key of 100 bytes");
}

// ----- keys / dump -------------------------------------------------------------------

#[test]
fn keys_filters_by_prefix_and_stops_at_the_limit() {
    let t = TempCache::new("keys");
    let c = t.file("c");
    create(&c);
    {
        let cache = larder::Cache::open(&c).unwrap();
        for i in 0..20 {
            cache
                .set(format!("user:{i}").as_bytes(), b"u", None)
                .unwrap();
        }
        for i in 0..5 {
            cache
                .set(format!("tok:{i}").as_bytes(), b"t", None)
                .unwrap();
        }
    }
    assert_eq!(larder(&["keys", &c]).ok().lines().count(), 25);
    let toks = larder(&["keys", &c, "--prefix", "tok:"]).ok();
    let mut toks: Vec<&str> = toks.lines().collect();
    toks.sort();
    assert_eq!(toks, ["tok:0", "tok:1", "tok:2", "tok:3", "tok:4"]);
    assert_eq!(
        larder(&["keys", &c, "--limit", "3"]).ok().lines().count(),
        3
    );
    assert_eq!(
        larder(&["keys", &c, "--prefix", "746f6b", "--hex"])
            .ok()
            .lines()
            .count(),
        5
    );
    larder(&["keys", &c, "--limit", "many"]).fails(1, "invalid value");
}

#[test]
fn keys_into_a_closed_pipe_ends_quietly() {
    let t = TempCache::new("pipe");
    let c = t.file("c");
    {
        let cache = larder::Options::new()
            .capacity(8 << 20)
            .open(&c)
            .expect("create");
        for i in 0..6000 {
            cache
                .set(format!("a-rather-long-key-{i:08}").as_bytes(), b"v", None)
                .unwrap();
        }
    }
    let mut guard = ChildGuard::spawn(
        Command::new(BIN)
            .args(["keys", &c])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let deadline = Instant::now() + DEADLINE;
    let err = drain(guard.child().stderr.take().unwrap());
    // Read one line, then hang up, like `| head -1`.
    let mut first = String::new();
    BufReader::new(guard.child().stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with("a-rather-long-key-"), "{first}");
    let stderr = String::from_utf8_lossy(&recv_by(&err, deadline, "stderr")).into_owned();
    let code = wait_by(&mut guard, deadline);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
}

#[test]
fn dump_shows_keys_sizes_ttls_and_values_only_on_request() {
    let t = TempCache::new("dump");
    let c = t.file("c");
    create(&c);
    larder(&["set", &c, "a\"quote", "text value"]).ok();
    larder(&["set", &c, "bin", "ff00", "--hex"]).ok();
    larder(&["set", &c, "ttl", "x", "--ttl", "1h"]).ok();

    let json = larder(&["dump", &c, "--json"]).ok();
    let lines: Vec<&str> = json.lines().collect();
    assert_eq!(lines.first(), Some(&"["));
    assert_eq!(lines.last(), Some(&"]"));
    assert_eq!(lines.len(), 5, "{json}");
    assert!(
        json.contains(r#""key":"a\"quote","value_len":10,"ttl_ms":null"#),
        "{json}"
    );
    assert!(!json.contains("\"value\""), "{json}");

    let json = larder(&["dump", &c, "--json", "--values"]).ok();
    assert!(json.contains(r#""value":"text value""#), "{json}");
    // Bytes that are not UTF-8 are never guessed at: hex, and named so.
    assert!(json.contains(r#""key":"bin""#) && json.contains(r#""value_hex":"ff00""#));
    let json = larder(&["dump", &c, "--json", "--values", "--base64", "--key-hex"]).ok();
    assert!(json.contains(r#""key_hex":"74746c","#), "{json}");
    assert!(json.contains(r#""value_base64":"eA==""#), "{json}");

    let text = larder(&["dump", &c, "--values", "--prefix", "ttl"]).ok();
    let rows: Vec<&str> = text.lines().collect();
    assert_eq!(rows.len(), 2, "{text}");
    assert!(rows[0].contains("SHARD") && rows[0].contains("VALUE"));
    assert!(
        rows[1].contains("59m") && rows[1].ends_with("ttl  x"),
        "{text}"
    );

    let empty = TempCache::new("dump-empty");
    let e = empty.file("e");
    create(&e);
    assert_eq!(larder(&["dump", &e, "--json"]).ok(), "[\n]\n");
}

// ----- stats -------------------------------------------------------------------------

fn busy_cache(t: &TempCache) -> String {
    let c = t.file("c");
    create(&c);
    larder(&["set", &c, "a", "1"]).ok();
    larder(&["set", &c, "a", "22"]).ok();
    larder(&["set", &c, "b", "3"]).ok();
    larder(&["get", &c, "a"]).ok();
    larder(&["get", &c, "zzz"]).fails(1, "no fresh entry");
    c
}

/// The value after `label` in the text form.
fn text_value<'a>(text: &'a str, label: &str) -> &'a str {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(label)
                .filter(|rest| rest.starts_with("  "))
                .map(|rest| rest.split_whitespace().next().unwrap_or(""))
        })
        .unwrap_or_else(|| panic!("no {label:?} in {text}"))
}

#[test]
fn stats_text_shows_every_counter_in_human_units() {
    let t = TempCache::new("stats");
    let c = busy_cache(&t);
    let text = larder(&["stats", &c]).ok();
    for label in [
        "file size",
        "shards",
        "entries",
        "live bytes",
        "log bytes used",
        "log bytes free",
        "hits",
        "misses",
        "stale hits",
        "inserts",
        "updates",
        "removals",
        "evictions",
        "index evicts",
        "expirations",
        "lock timeouts",
        "recoveries",
        "repair dropped",
        "fills",
        "fill timeouts",
        "locks",
    ] {
        text_value(&text, label);
    }
    assert_eq!(text_value(&text, "entries"), "2");
    assert_eq!(text_value(&text, "inserts"), "2");
    assert_eq!(text_value(&text, "updates"), "1");
    assert_eq!(text_value(&text, "hits"), "1");
    assert_eq!(text_value(&text, "misses"), "1");
    assert!(text.contains("50.0% of gets"), "{text}");
    assert!(text.contains(" MiB"), "{text}");
}

/// Entries far smaller than the index was sized for fill its buckets before the logs:
/// those evictions are counted apart, and `larder stats` says what to change.
#[test]
fn stats_says_when_the_index_fills_before_the_logs() {
    let t = TempCache::new("stats-index");
    let c = t.file("c");
    larder(&[
        "create",
        &c,
        "--capacity",
        "2MiB",
        "--max-key",
        "64",
        "--max-value",
        "1KiB",
        "--expected-entry",
        "4KiB",
        "--shards",
        "1",
    ])
    .ok();
    let cache = larder::Cache::open(&c).expect("attach");
    for i in 0..5_000u32 {
        cache
            .set(format!("k{i}").as_bytes(), b"v", None)
            .expect("set");
    }
    let s = cache.stats();
    assert!(s.index_evictions > 0, "the index never filled: {s:?}");
    assert_eq!(s.index_evictions, s.evictions, "the logs had room: {s:?}");
    let text = larder(&["stats", &c]).ok();
    assert_eq!(
        text_value(&text, "index evicts"),
        s.index_evictions.to_string()
    );
    assert!(text.contains("the index was sized for 4096"), "{text}");
    assert!(text.contains("--expected-entry"), "{text}");
    // A cache whose index was sized for its entries says nothing of the kind.
    let d = t.file("d");
    create(&d);
    larder(&["set", &d, "k", "v"]).ok();
    let plain = larder(&["stats", &d]).ok();
    assert_eq!(text_value(&plain, "index evicts"), "0");
    assert!(!plain.contains("note:"), "{plain}");
}

#[test]
fn stats_json_and_shards() {
    let t = TempCache::new("stats-json");
    let c = busy_cache(&t);
    let json = larder(&["stats", &c, "--json"]).ok();
    assert!(
        json.starts_with("{\"path\":") && json.ends_with("}\n"),
        "{json}"
    );
    for field in [
        "\"entries\":2",
        "\"inserts\":2",
        "\"updates\":1",
        "\"hits\":1",
        "\"misses\":1",
        "\"file_size\":",
        "\"bytes_free\":",
        "\"fill_timeouts\":0",
    ] {
        assert!(json.contains(field), "{field} missing from {json}");
    }
    assert!(!json.contains("\"shards\""));
    let shards: usize = text_value(&larder(&["stats", &c]).ok(), "shards")
        .parse()
        .unwrap();
    let json = larder(&["stats", &c, "--json", "--shards"]).ok();
    assert_eq!(json.matches("{\"shard\":").count(), shards);
    let text = larder(&["stats", &c, "--shards"]).ok();
    let table = text.split("\n\n").nth(1).expect("shard table");
    assert_eq!(table.lines().count(), shards + 1, "{table}");
    larder(&["stats", &c, "--json", "--prometheus"]).fails(1, "cannot be used with");
}

#[test]
fn stats_prometheus_is_the_text_exposition_format() {
    let t = TempCache::new("stats-prom");
    let c = busy_cache(&t);
    let prom = larder(&["stats", &c, "--prometheus", "--shards"]).ok();
    let mut described = std::collections::HashSet::new();
    for line in prom.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut f = rest.split(' ');
            described.insert(f.next().unwrap().to_string());
            assert!(matches!(f.next(), Some("counter" | "gauge")), "{line}");
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (name, rest) = line.split_once('{').expect(line);
        assert!(described.contains(name), "{name} has no TYPE before it");
        let (labels, value) = rest.rsplit_once("} ").expect(line);
        assert!(labels.starts_with(&format!("cache=\"{c}\"")), "{line}");
        if name.ends_with("_seconds") {
            assert!(value.parse::<f64>().expect(line) >= 0.0, "{line}");
        } else {
            value.parse::<u64>().expect(line);
        }
    }
    assert!(prom.contains(&format!("larder_hits_total{{cache=\"{c}\"}} 1\n")));
    assert!(prom.contains(&format!("larder_entries{{cache=\"{c}\"}} 2\n")));
    assert!(prom.contains(&format!(
        "larder_shard_entries{{cache=\"{c}\",shard=\"0\"}}"
    )));
    assert!(prom.contains("# TYPE larder_live_bytes gauge"));
}

#[test]
fn stats_watch_draws_count_frames() {
    let t = TempCache::new("watch");
    let c = busy_cache(&t);
    let out = larder(&["stats", &c, "--watch", "20ms", "--count", "3"]).ok();
    assert_eq!(out.lines().filter(|l| l.starts_with("cache")).count(), 3);
    // From the second frame on, counters carry a rate.
    assert!(out.contains("/s"), "{out}");
    larder(&["stats", &c, "--count", "3"]).fails(1, "--watch");
    larder(&["stats", &c, "--watch", "0s", "--count", "1"]).fails(1, "more than zero");
}

// ----- verify / repair ---------------------------------------------------------------

#[test]
fn verify_exits_0_when_clean_1_on_problems_and_repair_fixes_them() {
    let t = TempCache::new("verify");
    let c = t.file("c");
    create(&c);
    let key = "corrupt-me-please-0123456789";
    larder(&["set", &c, key, "v"]).ok();
    larder(&["set", &c, "other", "w"]).ok();
    assert!(larder(&["verify", &c]).ok().ends_with(": clean\n"));

    // Damage the key's bytes in place: the record no longer matches its index slot.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&c)
        .unwrap();
    let bytes = std::fs::read(&c).unwrap();
    let at = bytes
        .windows(key.len())
        .position(|w| w == key.as_bytes())
        .expect("key bytes in the file");
    file.write_all_at(b"CORRUPT", at as u64).unwrap();
    drop(file);

    let out = larder(&["verify", &c]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(out.stderr.is_empty(), "{}", out.stderr);
    let text = out.text();
    assert!(
        text.contains("problem(s)") && text.contains("shard "),
        "{text}"
    );
    assert!(text.contains("larder repair"), "{text}");

    let repaired = larder(&["repair", &c]).ok();
    assert!(
        repaired.contains("offline") && repaired.contains("dropped"),
        "{repaired}"
    );
    assert!(larder(&["verify", &c]).ok().ends_with(": clean\n"));
    assert_eq!(larder(&["get", &c, "other"]).ok(), "w\n");
}

#[test]
fn verify_exits_2_when_it_cannot_check() {
    let t = TempCache::new("verify-2");
    larder(&["verify", &t.file("missing")]).fails(2, "no cache at");
    let junk = t.file("junk");
    write_not_a_cache(&junk);
    larder(&["verify", &junk]).fails(2, "not a larder cache");
    larder(&["verify", "bad/"]).fails(2, "invalid cache name");
    larder(&["verify"]).fails(2, "<NAME>");
}

#[test]
fn repair_refuses_while_attached_unless_online_and_ls_counts_the_process() {
    let t = TempCache::new("repair");
    let c = t.file("auth.larder4");
    create(&c);
    larder(&["set", &c, "k", "v"]).ok();
    let holder = attached_process(&c);

    larder(&["repair", &c]).fails(1, "in use by 1 attached process(es)");
    larder(&["repair", &c]).fails(1, "larder repair --online");
    let ls = larder(&["ls", "--dir", common::s(&t.dir)]).ok();
    let row = ls.lines().nth(1).expect("a row");
    let cols: Vec<&str> = row.split_whitespace().collect();
    // NAME SIZE(2 words) ENTRIES FILL OWNER MODE PROCS
    assert_eq!(cols[0], c, "{ls}");
    assert_eq!(cols[3], "1", "entries: {ls}");
    assert_eq!(cols[7], "1", "attached processes: {ls}");

    let online = larder(&["repair", &c, "--online"]).ok();
    assert!(
        online.contains("online") && online.contains("0 entries dropped"),
        "{online}"
    );

    // Once it is gone (killed and reaped by its guard), the offline repair runs.
    drop(holder);
    assert!(larder(&["repair", &c]).ok().contains("offline"));
    assert_eq!(larder(&["get", &c, "k"]).ok(), "v\n");
}

// ----- clear / rm / ls ---------------------------------------------------------------

#[test]
fn clear_removes_every_entry() {
    let t = TempCache::new("clear");
    let c = t.file("c");
    create(&c);
    for k in ["a", "b", "c"] {
        larder(&["set", &c, k, "v"]).ok();
    }
    assert!(larder(&["clear", &c]).ok().starts_with("removed 3 entries"));
    assert_eq!(larder(&["keys", &c]).ok(), "");
    assert!(larder(&["clear", &c]).ok().starts_with("removed 0 entries"));
}

#[test]
fn rm_removes_caches_and_nothing_else() {
    let t = TempCache::new("rm");
    let c = t.file("c");
    create(&c);
    assert_eq!(larder(&["rm", &c]).ok(), format!("removed {c}\n"));
    assert!(!Path::new(&c).exists());
    larder(&["rm", &c]).fails(1, "no cache at");

    let notes = t.file("notes");
    write_not_a_cache(&notes);
    larder(&["rm", &notes]).fails(1, "not removing it");
    assert!(Path::new(&notes).exists());
    let short = t.file("short");
    std::fs::write(&short, b"tiny").unwrap();
    larder(&["rm", &short]).fails(1, "cannot confirm");
    assert!(Path::new(&short).exists());
    larder(&["rm", &short, "--force"]).ok();
    assert!(!Path::new(&short).exists());
}

#[test]
fn ls_lists_cache_files_with_owner_mode_entries_and_notes() {
    let t = TempCache::new("ls");
    let dir = common::s(&t.dir);
    let a = t.file("alpha.larder4");
    create(&a);
    larder(&["set", &a, "k1", "v"]).ok();
    larder(&["set", &a, "k2", "v"]).ok();
    let junk = t.file("junk.larder4");
    write_not_a_cache(&junk);
    std::fs::write(t.file("unrelated.txt"), b"x").unwrap();
    std::fs::write(t.file("future.larder9"), b"x").unwrap();
    let other = t.file("other.larder4");
    create(&other);
    let chowned = chown_other(&other);

    let out = larder(&["ls", "--dir", dir]).ok();
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("PROCS"),
        "{out}"
    );
    assert_eq!(lines.len(), 5, "{out}");
    let row = |name: &str| -> &str {
        lines
            .iter()
            .find(|l| l.starts_with(&t.file(name)))
            .unwrap_or_else(|| panic!("no {name} in {out}"))
    };
    let alpha: Vec<&str> = row("alpha.larder4").split_whitespace().collect();
    assert_eq!(alpha[3], "2", "entries: {out}");
    assert!(alpha[4].ends_with('%'), "fill: {out}");
    if std::fs::metadata(&a)
        .ok()
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        == Some(0)
    {
        assert_eq!(alpha[5], "root");
    }
    assert_eq!(alpha[6], "0600");
    assert_eq!(alpha[7], "0", "processes: {out}");
    assert!(row("junk.larder4").ends_with("not a larder cache"), "{out}");
    assert!(row("future.larder9").ends_with("format version 9"), "{out}");
    if chowned {
        let r = row("other.larder4");
        assert!(
            r.contains(" 12345 ") && r.contains("owned by uid 12345"),
            "{out}"
        );
        // The operator may accept that owner.
        let out = larder(&["ls", "--dir", dir, "--allow-uid", "12345"]).ok();
        let r = out.lines().find(|l| l.starts_with(&other)).unwrap();
        assert!(!r.contains("refused"), "{out}");
    }
    assert!(!out.contains("unrelated"));

    let empty = TempCache::new("ls-empty");
    assert!(larder(&["ls", "--dir", common::s(&empty.dir)])
        .ok()
        .starts_with("no larder cache files in"));
    larder(&["ls", "--dir", &t.file("nope")]).fails(1, "cannot list");
}

#[test]
fn bare_names_live_in_dev_shm() {
    let name = common::unique_name("cli-test");
    let guard = common::UnlinkOnDrop(name.clone());
    let out = larder(&["create", &name, "--capacity", "1MiB", "--max-value", "1KiB"]).ok();
    let path = format!("/dev/shm/{name}.larder4");
    assert!(out.contains(&path), "{out}");
    assert!(Path::new(&path).exists());
    larder(&["set", &name, "k", "v"]).ok();
    assert_eq!(larder(&["get", &name, "k"]).ok(), "v\n");
    let ls = larder(&["ls"]).ok();
    assert!(
        ls.lines()
            .any(|l| l.split_whitespace().next() == Some(&name)),
        "{ls}"
    );
    larder(&["rm", &name]).ok();
    assert!(!Path::new(&path).exists());
    drop(guard);

    // With no NAME, bench works on a scratch cache of its own in /dev/shm and removes it.
    let text = bench_ok(&larder(&[
        "bench", "--procs", "1", "--secs", "1", "--keys", "1000",
    ]));
    let scratch = text
        .lines()
        .find_map(|l| l.strip_prefix("scratch cache "))
        .and_then(|l| l.strip_suffix(" removed"))
        .unwrap_or_else(|| panic!("no scratch line in {text}"));
    assert!(scratch.starts_with("/dev/shm/larder-bench-"), "{scratch}");
    assert!(!Path::new(scratch).exists());
}

// ----- bench -------------------------------------------------------------------------

/// A finished bench: exit 0, only progress lines on stderr; returns stdout.
fn bench_ok(out: &Out) -> String {
    assert_eq!(out.code, Some(0), "{}; {}", out.text(), out.stderr);
    for line in out.stderr.lines() {
        assert!(
            line.contains("elapsed") || line.starts_with("prefilling"),
            "not a progress line: {line:?}"
        );
    }
    let text = out.text();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    let row: Vec<&str> = lines.next().unwrap_or("").split_whitespace().collect();
    assert_eq!(header.len(), row.len(), "{text}");
    let col = |name: &str| {
        let i = header.iter().position(|h| *h == name).expect(name);
        row[i]
    };
    assert_eq!(col("backend"), "larder", "{text}");
    assert_eq!(col("bad"), "0", "torn values: {text}");
    assert_eq!(col("err"), "0", "errors: {text}");
    text
}

#[test]
fn bench_runs_the_workload_on_a_given_cache() {
    let t = TempCache::new("bench");
    let b = t.file("b");
    let args = ["bench", &b, "--procs", "2", "--secs", "1", "--keys", "2000"];
    let text = bench_ok(&larder(&args));
    assert!(text.contains("90/10") && text.contains(" 2 "), "{text}");
    assert!(text.contains("left in place"), "{text}");
    // Again, on the cache the first run left: it keeps its parameters and is refilled.
    let text = bench_ok(&larder(&[
        "bench", &b, "--procs", "1", "--secs", "1", "--keys", "1000", "--mix", "95/5", "--dist",
        "uniform",
    ]));
    assert!(text.contains("95/5") && text.contains("uniform"), "{text}");
    assert!(larder(&["verify", &b]).ok().ends_with(": clean\n"));
}

#[test]
fn bench_reports_bad_arguments_and_caches_in_one_line() {
    let t = TempCache::new("bench-bad");
    let small = t.file("small");
    larder(&["create", &small, "--capacity", "4MiB", "--max-value", "64"]).ok();
    larder(&["bench", &small, "--secs", "1", "--keys", "100"]).fails(1, "the workload needs");
    let junk = t.file("junk");
    write_not_a_cache(&junk);
    larder(&["bench", &junk, "--secs", "1"]).fails(1, "not a larder cache");
    larder(&["bench", &t.file("b"), "--procs", "0"]).fails(1, "0 processes");
    larder(&["bench", &t.file("b"), "--mix", "90/20"]).fails(1, "--mix");
    larder(&["bench", &t.file("b"), "--dist", "pareto"]).fails(1, "--dist");
    larder(&["bench", &t.file("no/such/dir/b"), "--secs", "1"]).fails(1, "does not exist");
}

// ----- the error contract, for every subcommand --------------------------------------

#[test]
fn every_subcommand_reports_user_mistakes_in_one_line() {
    let t = TempCache::new("errors");
    let missing = t.file("missing");
    let junk = t.file("junk");
    write_not_a_cache(&junk);
    let short = t.file("short");
    std::fs::write(&short, b"0123456789").unwrap();
    let foreign = t.file("foreign");
    create(&foreign);
    let chowned = chown_other(&foreign);

    let commands: &[&[&str]] = &[
        &["stats"],
        &["stats", "--json"],
        &["get", "k"],
        &["set", "k", "v"],
        &["del", "k"],
        &["keys"],
        &["dump", "--json"],
        &["verify"],
        &["repair"],
        &["repair", "--online"],
        &["clear"],
        &["rm"],
    ];
    let mut cases: Vec<(&str, &str)> = vec![
        (&missing, "no cache at"),
        ("bad name!", "invalid cache name"),
        ("", "invalid cache name"),
        (&junk, "not a larder cache"),
        (&short, "truncated"),
    ];
    if chowned {
        cases.push((&foreign, "owned by uid 12345"));
    }
    for cmd in commands {
        for (name, needle) in &cases {
            let mut args = vec![cmd[0], *name];
            args.extend_from_slice(&cmd[1..]);
            let code = if cmd[0] == "verify" { 2 } else { 1 };
            let out = larder(&args);
            // `rm` words a file it will not touch its own way.
            let needle = match (cmd[0], *needle) {
                ("rm", "not a larder cache") | ("rm", "truncated") => "not removing it",
                _ => needle,
            };
            assert!(out.stdout.is_empty(), "{args:?} printed {:?}", out.text());
            out.fails(code, needle);
        }
    }
    // Nothing was created or removed by any of that.
    assert!(!Path::new(&missing).exists());
    assert!(Path::new(&junk).exists() && Path::new(&short).exists());
    assert!(Path::new(&foreign).exists());
    if chowned {
        // Accepting the owner explicitly makes the same file usable.
        larder(&["--allow-uid", "12345", "set", &foreign, "k", "v"]).ok();
        assert_eq!(
            larder(&["get", &foreign, "k", "--allow-uid", "12345"]).ok(),
            "v\n"
        );
    }
}

#[test]
fn usage_mistakes_are_one_line_too() {
    larder(&["frobnicate"]).fails(1, "unrecognized subcommand");
    larder(&["stats"]).fails(1, "<NAME>");
    larder(&["get", "x"]).fails(1, "<KEY>");
    larder(&["stats", "x", "--bogus"]).fails(1, "--bogus");
    larder(&["create", "x", "--capacity"]).fails(1, "--capacity");
    let help = larder(&["--help"]).ok();
    assert!(help.contains("Usage: larder"), "{help}");
    assert!(larder(&["--version"]).ok().starts_with("larder "));
}

/// `larder listen` against a real redis-server: it takes the near-cache lease (stats
/// show its pid and a heartbeat), a FLUSHALL is counted as a server flush, and a second
/// listener stands by until the first is killed, then takes over (a takeover, counted)
/// and publishes its own heartbeat. Each of those flushes covers the tracked prefix
/// only: a local rate-limit counter set before the listener started is still there.
#[test]
fn listen_holds_the_lease_and_a_standby_takes_over_when_it_is_killed() {
    use larder_redis::testing::RedisServer;
    let t = TempCache::new("cli-listen");
    let name = t.name();
    create(name);
    larder(&["set", name, "ratelimit:alice", "3"]).ok();
    larder(&["set", name, "k:1", "from redis"]).ok();
    let local_counter_kept = |when: &str| {
        assert_eq!(
            larder(&["get", name, "ratelimit:alice"]).ok(),
            "3\n",
            "{when}"
        );
    };
    let server = RedisServer::start().expect("redis-server");
    let url = server.unix_url();
    let spawn = || {
        let mut cmd = Command::new(BIN);
        cmd.args(["listen", name, "--redis", &url, "--prefix", "k:"])
            .args(["--ping-every", "20ms", "--bound", "200ms"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        ChildGuard::spawn(&mut cmd)
    };
    let stats = || larder(&["stats", name, "--json"]).ok();
    let field = |json: &str, key: &str| -> i64 {
        let at = json.find(&format!("\"{key}\":")).expect(key) + key.len() + 3;
        json[at..]
            .split(|c: char| c != '-' && !c.is_ascii_digit())
            .next()
            .and_then(|v| v.parse().ok())
            .expect("a number")
    };
    let mut first = spawn();
    let deadline = Instant::now() + DEADLINE;
    assert!(
        common::poll_until(deadline, || {
            let s = stats();
            field(&s, "holder") == first.pid() as i64 && field(&s, "heartbeat_age_ms") >= 0
        }),
        "the listener never took the lease: {}",
        stats()
    );
    larder(&["get", name, "k:1"]).fails(1, "no fresh entry for key k:1");
    local_counter_kept("after the listener took the lease");
    let mut con = redis::Client::open(url.as_str())
        .and_then(|c| c.get_connection())
        .expect("connect");
    redis::cmd("FLUSHALL").exec(&mut con).expect("FLUSHALL");
    assert!(
        common::poll_until(deadline, || field(&stats(), "flushes_server") == 1),
        "FLUSHALL was not counted: {}",
        stats()
    );
    local_counter_kept("after a server flush");
    let _standby = spawn();
    first.signal(libc::SIGKILL);
    first.wait_or_fail(deadline, "the killed listener");
    assert!(
        common::poll_until(deadline, || {
            let s = stats();
            field(&s, "takeovers") == 1 && field(&s, "heartbeat_age_ms") >= 0
        }),
        "the standby never took over: {}",
        stats()
    );
    local_counter_kept("after a takeover");
    let text = larder(&["stats", name]).ok();
    assert!(text.contains("near listener"), "{text}");
    assert!(text.contains("takeovers         1"), "{text}");
}

/// `larder listen` in front of a Redis in cluster mode (tracking there reports one
/// node's writes only) refuses at once, in one line that says why and what to do, and
/// leaves no listener holding the cache.
#[test]
fn listen_refuses_a_redis_in_cluster_mode() {
    use larder_redis::testing::RedisServer;
    let t = TempCache::new("cli-listen-cluster");
    let name = t.name();
    create(name);
    let server = RedisServer::start_with(&["--cluster-enabled", "yes"]).expect("redis-server");
    let url = server.tcp_url();
    let out = larder(&["listen", name, "--redis", &url, "--prefix", "k:"]);
    out.fails(1, "cluster mode");
    for needle in ["--redis", "standalone", "read Redis directly"] {
        assert!(
            out.stderr.contains(needle),
            "{:?} lacks {needle:?}",
            out.stderr
        );
    }
    let stats = larder(&["stats", name, "--json"]).ok();
    assert!(
        stats.contains("\"holder\":0,\"heartbeat_age_ms\":-1"),
        "{stats}"
    );
}

/// Errors speak the command's language: what to do is a `larder` command line, never a
/// Rust call of the library (`Cache::unlink`, `Options::allow_uid`).
#[test]
fn errors_name_larder_commands_not_rust_calls() {
    let t = TempCache::new("words");
    let path = t.file("c");
    create(&path);
    let missing = t.file("missing");
    let corrupt = t.file("corrupt");
    std::fs::copy(&path, &corrupt).unwrap();
    // A reserved header byte: covered by the header checksum, so the file is corrupt.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&corrupt)
        .unwrap()
        .write_all_at(&[0x42], 176 + 3)
        .unwrap();
    let foreign = t.file("foreign");
    create(&foreign);
    let long_key = "k".repeat(65);
    let mut cases: Vec<(Vec<&str>, String)> = vec![
        (
            vec!["create", &path, "--capacity", "8MiB"],
            format!("larder rm {path}"),
        ),
        (
            vec!["get", &missing, "k"],
            format!("larder create {missing}"),
        ),
        (vec!["stats", &corrupt], format!("larder repair {corrupt}")),
        (vec!["set", &path, &long_key, "v"], "--max-key".into()),
    ];
    if chown_other(&foreign) {
        cases.push((vec!["get", &foreign, "k"], "--allow-uid 12345".into()));
        cases.push((vec!["rm", &foreign], "--allow-uid".into()));
    }
    for (args, needle) in &cases {
        let out = larder(args);
        out.fails(1, needle);
        for api in ["Cache::", "Options::"] {
            assert!(
                !out.stderr.contains(api),
                "{args:?} names a Rust call: {}",
                out.stderr
            );
        }
    }
}

/// `create --group` gives the file its group from the start (workers sharing it through
/// the group and --mode 0660 never see it with another).
#[test]
fn create_gives_the_file_its_group() {
    use std::os::unix::fs::MetadataExt;
    let t = TempCache::new("group");
    let path = t.file("c");
    // SAFETY: getegid(2) has no arguments and cannot fail.
    let mine = unsafe { libc::getegid() };
    // Root may give any group; another user, only its own.
    // SAFETY: geteuid(2) has no arguments and cannot fail.
    let group = if unsafe { libc::geteuid() } == 0 {
        4240
    } else {
        mine
    };
    let g = group.to_string();
    larder(&[
        "create",
        &path,
        "--capacity",
        "4MiB",
        "--mode",
        "0660",
        "--group",
        &g,
    ])
    .ok();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!((meta.gid(), meta.mode() & 0o7777), (group, 0o660));
}

/// `create --replace` replaces a file older than its parameters (smaller limits, or a
/// lower --generation) and keeps any other, saying so; without it a file of other
/// parameters is an error that says how to change them.
#[test]
fn create_replace_replaces_only_an_older_file() {
    let t = TempCache::new("replace");
    let path = t.file("c");
    create(&path);
    larder(&["set", &path, "k", "v"]).ok();
    let grow = [
        "create",
        &path,
        "--capacity",
        "8MiB",
        "--max-key",
        "64",
        "--max-value",
        "1KiB",
    ];
    larder(&grow).fails(1, "--replace");
    let mut args = grow.to_vec();
    args.push("--replace");
    let out = larder(&args).ok();
    assert!(out.starts_with("replaced "), "{out}");
    assert!(out.contains("8.0 MiB") || out.contains("8 MiB"), "{out}");
    larder(&["get", &path, "k"]).fails(1, "");
    // Running it again attaches: the file is as new as the options.
    assert!(larder(&args).ok().starts_with("exists "));
    // Back down: kept, unless the generation is higher.
    let shrink = [
        "create",
        &path,
        "--capacity",
        "4MiB",
        "--max-key",
        "64",
        "--max-value",
        "1KiB",
        "--replace",
    ];
    let out = larder(&shrink).ok();
    assert!(
        out.starts_with("exists ") && out.contains("kept it"),
        "{out}"
    );
    let mut args = shrink.to_vec();
    args.extend(["--generation", "1"]);
    let out = larder(&args).ok();
    assert!(
        out.starts_with("replaced ") && out.contains("generation 1"),
        "{out}"
    );
}
