//! Crash tests: processes that are killed, abort, stop or panic inside the cache's
//! critical sections never leave a torn value, never undo a completed write or remove,
//! never hang the others, and every crash is repaired and counted.
//!
//! Multi-process tests re-run this test binary as their children (see
//! `common::self_command`); a child learns its role from the environment.

use std::collections::HashSet;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use larder::{Error, Options};

mod common;
#[path = "common/image.rs"]
mod image;
use common::{
    check_value, child_env, child_role, deadline_in, disable_core_dumps, long_timeouts, make_value,
    poll_until, self_command, small_options, Children, Rng, TempCache,
};

/// The file a child's stderr goes to, shown when the child fails.
fn child_stderr(dir: &Path, name: &str) -> (std::fs::File, std::path::PathBuf) {
    let path = dir.join(format!("{name}.stderr"));
    let file = std::fs::File::create(&path).expect("child stderr file");
    (file, path)
}

fn describe(status: ExitStatus, stderr: &Path) -> String {
    let text = std::fs::read_to_string(stderr).unwrap_or_default();
    let tail: String = text
        .lines()
        .rev()
        .take(30)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    format!("{status}; its stderr ends with:\n{tail}")
}

/// Every child of this file starts here: the role decides what it does, and it never
/// returns to the test harness.
fn child_main(role: &str) -> ! {
    disable_core_dumps();
    match role {
        "kill-writer" => kill_writer_child(),
        #[cfg(feature = "crash-points")]
        "crash-point" => points::crash_point_child(),
        #[cfg(feature = "crash-points")]
        "stop-holder" => points::stop_holder_child(),
        other => panic!("unknown child role {other}"),
    }
}

// ----- killed writers (tst-robust8 style) -------------------------------------------------

const KILL_TEST: &str = "killed_writers_never_leave_torn_values";
/// Writer processes per round.
const WRITERS: usize = 3;
/// Keys each writer owns (writers never share a key, so each key's history is one
/// writer's sequence of operations).
const KEYS_PER_WRITER: u64 = 48;
/// Operations a writer does before it exits on its own; the parent kills it long before.
const MAX_OPS: u64 = 5000;
/// Kills land at uniformly random instants this long after the writer's first
/// acknowledged operation.
const KILL_WINDOW_US: u64 = 6000;
/// Kills in a default run; `LARDER_KILLS` overrides (100000 for a nightly run).
const DEFAULT_KILLS: u64 = 1000;

/// Big enough that no round evicts: the "acknowledged entries survive" check relies on
/// it, and each round asserts it.
fn kill_test_options() -> Options {
    long_timeouts(
        small_options()
            .capacity(64 << 20)
            .shards(8)
            .max_value_len(256),
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Set,
    Remove,
    Fill,
    Get,
    Touch,
    /// `ticket`, which the writer keeps as the key's (replacing one it had).
    Ticket,
    /// `set_with_ticket` with the key's ticket, if the writer took one this round.
    TicketSet,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Set => "set",
            Kind::Remove => "del",
            Kind::Fill => "fill",
            Kind::Get => "get",
            Kind::Touch => "touch",
            Kind::Ticket => "ticket",
            Kind::TicketSet => "tset",
        }
    }

    /// Whether it revokes its key (see `Cache::ticket`): only the key's writer does
    /// that, so the writer's own plan says whether a ticket of the key was revoked.
    fn revokes(self) -> bool {
        matches!(self, Kind::Set | Kind::Remove)
    }
}

#[derive(Debug, Clone, Copy)]
struct Planned {
    kind: Kind,
    key: u64,
    /// Versions grow across rounds and operations, so an older value is recognisable.
    version: u64,
}

/// One writer's operations in one round: the child runs them, the parent replays them
/// from the same seed to know what each acknowledged line and the one in flight were.
struct Plan {
    rng: Rng,
    round: u64,
    n: u64,
}

impl Plan {
    fn new(seed: u64, round: u64) -> Plan {
        Plan {
            rng: Rng::new(seed),
            round,
            n: 0,
        }
    }

    fn next_op(&mut self) -> Planned {
        let r = self.rng.next_u64();
        let kind = match (r >> 32) % 100 {
            0..=39 => Kind::Set,
            40..=54 => Kind::Remove,
            55..=69 => Kind::Fill,
            70..=86 => Kind::Get,
            87..=89 => Kind::Touch,
            90..=94 => Kind::Ticket,
            _ => Kind::TicketSet,
        };
        self.n += 1;
        Planned {
            kind,
            key: r % KEYS_PER_WRITER,
            version: self.round * 1_000_000 + self.n,
        }
    }
}

fn writer_key(writer: usize, j: u64) -> Vec<u8> {
    format!("w{writer}-k{j:02}").into_bytes()
}

fn writer_value(key: &[u8], version: u64) -> Vec<u8> {
    make_value(key, version, (version % 97) as usize)
}

fn writer_seed(base: u64, round: u64, writer: usize) -> u64 {
    Rng::new(base ^ round.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ writer as u64).next_u64()
}

/// A writer: runs its plan, and after each operation returns appends one line
/// `"<n> <op> <key> <result>"` to its log with one unbuffered write, so the log is
/// exactly the operations acknowledged before the kill (plus at most a torn last line).
fn kill_writer_child() -> ! {
    let path = child_env("LARDER_TEST_PATH");
    let writer: usize = child_env("LARDER_TEST_WRITER").parse().expect("writer");
    let round: u64 = child_env("LARDER_TEST_ROUND").parse().expect("round");
    let seed: u64 = child_env("LARDER_TEST_SEED").parse().expect("seed");
    let log_path = child_env("LARDER_TEST_LOG");
    let cache = kill_test_options().attach(&path).expect("attach");
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .expect("open log");
    let mut plan = Plan::new(seed, round);
    let whole = |key: &[u8], v: &[u8]| check_value(key, v).unwrap_or_else(|e| panic!("{e}"));
    let mut tickets = vec![None; KEYS_PER_WRITER as usize];
    for n in 0..MAX_OPS {
        let p = plan.next_op();
        let key = writer_key(writer, p.key);
        let result = match p.kind {
            Kind::Set => {
                cache
                    .set(&key, &writer_value(&key, p.version), None)
                    .expect("set");
                p.version.to_string()
            }
            Kind::Remove => u8::from(cache.remove(&key).expect("remove")).to_string(),
            Kind::Fill => {
                let v = cache
                    .get_or_insert_with(&key, None, || {
                        Ok::<_, Error>(writer_value(&key, p.version))
                    })
                    .expect("get_or_insert_with");
                whole(&key, &v).to_string()
            }
            Kind::Get => match cache.get(&key).expect("get") {
                Some(v) => whole(&key, &v).to_string(),
                None => "-".to_string(),
            },
            Kind::Touch => u8::from(cache.touch(&key, None).expect("touch")).to_string(),
            Kind::Ticket => {
                tickets[p.key as usize] = Some(cache.ticket(&key).expect("ticket"));
                "t".to_string()
            }
            Kind::TicketSet => match tickets[p.key as usize] {
                Some(ticket) => {
                    let v = writer_value(&key, p.version);
                    let stored = cache
                        .set_with_ticket(&key, &v, None, ticket)
                        .expect("set_with_ticket");
                    u8::from(stored).to_string()
                }
                None => "-".to_string(),
            },
        };
        let line = format!("{n} {} {} {result}\n", p.kind.name(), p.key);
        log.write_all(line.as_bytes()).expect("write log");
    }
    std::process::exit(0)
}

/// What the operation a writer was killed in may have left for its key.
struct InFlight {
    key: u64,
    kind: Kind,
    before: Option<u64>,
    after: Option<u64>,
}

/// How the acknowledged stores with a ticket came out.
#[derive(Debug, Default)]
struct TicketStores {
    stored: u64,
    /// Refused after a revocation of the key since the ticket (as they must be).
    revoked: u64,
    /// Refused with none (others' revocations of the shard outran its ring).
    spurious: u64,
}

/// Replays a writer's log against the model of its keys (exact at the round's start):
/// every acknowledged result must be what the model predicts, then the model takes the
/// operation. Returns the operation in flight when the writer was killed, if any.
fn replay_log(
    writer: usize,
    text: &str,
    mut plan: Plan,
    killed: bool,
    model: &mut [Option<u64>],
    stores: &mut TicketStores,
) -> Option<InFlight> {
    // A line without its newline was torn by the kill: that operation returned (or not)
    // but was not acknowledged, so it counts as the one in flight.
    let complete = match text.rfind('\n') {
        Some(end) => &text[..=end],
        None => "",
    };
    let mut acked = 0u64;
    // Per key: its revocations this round, and their count when the writer took its
    // ticket (if it took one).
    let mut revocations = vec![0u64; KEYS_PER_WRITER as usize];
    let mut tickets = vec![None::<u64>; KEYS_PER_WRITER as usize];
    for (n, line) in complete.lines().enumerate() {
        let p = plan.next_op();
        let fields: Vec<&str> = line.split(' ').collect();
        let ctx = format!("writer {writer} line {n} {line:?} (planned {p:?})");
        assert_eq!(fields.len(), 4, "{ctx}");
        assert_eq!(fields[0], n.to_string(), "{ctx}");
        assert_eq!(fields[1], p.kind.name(), "{ctx}");
        assert_eq!(fields[2], p.key.to_string(), "{ctx}");
        let state = &mut model[p.key as usize];
        let shown = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        match p.kind {
            Kind::Set => {
                assert_eq!(fields[3], p.version.to_string(), "{ctx}");
                *state = Some(p.version);
            }
            Kind::Remove => {
                assert_eq!(fields[3], u8::from(state.is_some()).to_string(), "{ctx}");
                *state = None;
            }
            Kind::Fill => {
                let expect = state.unwrap_or(p.version);
                assert_eq!(
                    fields[3],
                    expect.to_string(),
                    "{ctx}: get_or_insert_with returned another version"
                );
                *state = Some(expect);
            }
            Kind::Get => assert_eq!(
                fields[3],
                shown(*state),
                "{ctx}: a get saw a state that no acknowledged operation left"
            ),
            Kind::Touch => {
                assert_eq!(fields[3], u8::from(state.is_some()).to_string(), "{ctx}")
            }
            Kind::Ticket => {
                assert_eq!(fields[3], "t", "{ctx}");
                tickets[p.key as usize] = Some(revocations[p.key as usize]);
            }
            Kind::TicketSet => match tickets[p.key as usize] {
                None => assert_eq!(fields[3], "-", "{ctx}: no ticket was taken"),
                Some(then) => {
                    // Only this writer revokes its keys; beyond the ring, others'
                    // revocations of the shard may fence the store off spuriously, so
                    // an unrevoked store may be refused: the model follows the log.
                    let revoked = revocations[p.key as usize] != then;
                    match fields[3] {
                        "1" if !revoked => {
                            *state = Some(p.version);
                            stores.stored += 1;
                        }
                        "0" if revoked => stores.revoked += 1,
                        "0" => stores.spurious += 1,
                        "1" => panic!("{ctx}: stored, though the key was revoked since"),
                        other => panic!("{ctx}: {other:?} from a store with a ticket"),
                    }
                }
            },
        }
        if p.kind.revokes() {
            revocations[p.key as usize] += 1;
        }
        acked += 1;
    }
    if !killed || acked >= MAX_OPS {
        return None;
    }
    let p = plan.next_op();
    let before = model[p.key as usize];
    let after = match p.kind {
        Kind::Set => Some(p.version),
        Kind::Remove => None,
        Kind::Fill => Some(before.unwrap_or(p.version)),
        Kind::Get | Kind::Touch | Kind::Ticket => before,
        // Stored, or (also beyond the ring) refused, which leaves `before`.
        Kind::TicketSet => match tickets[p.key as usize] {
            Some(then) if then == revocations[p.key as usize] => Some(p.version),
            _ => before,
        },
    };
    Some(InFlight {
        key: p.key,
        kind: p.kind,
        before,
        after,
    })
}

/// tst-robust8 for the cache: rounds of writer processes doing random sets, removes,
/// fills, gets, touches, tickets and stores with a ticket on one file, SIGKILLed at
/// random instants. After each round: every value is whole and belongs to its key;
/// every key holds exactly what its writer's acknowledged operations left, or the
/// result of the operation in flight (never an older version: no completed remove or
/// overwrite is undone); repairs dropped at most one entry each, and only in-flight
/// ones; `verify()` is clean. A store with a ticket was refused if its writer revoked
/// the key since the ticket (what else it did, the model follows); no fill was fenced
/// off (only its writer revokes a key, never while it fills it).
#[test]
fn killed_writers_never_leave_torn_values() {
    if let Some(role) = child_role() {
        child_main(&role);
    }
    let target_kills: u64 = std::env::var("LARDER_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_KILLS);
    let seed = Rng::seed_from_time();
    eprintln!("{KILL_TEST}: seed {seed}, {target_kills} kills");
    let mut rng = Rng::new(seed);
    let t = TempCache::new("kill");
    let cache = kill_test_options().open(t.name()).expect("create cache");
    // Rounds only append to the small logs (10% of each shard); clearing before they
    // fill keeps every round free of evictions. A round appends far less than the
    // remaining 60% even if all its writes landed in one shard.
    let clear_above = cache
        .stats()
        .shards
        .iter()
        .map(|s| s.bytes_used + s.bytes_free)
        .min()
        .expect("shards")
        / 10
        * 2
        / 5;
    let mut model = vec![vec![None::<u64>; KEYS_PER_WRITER as usize]; WRITERS];
    let (mut kills, mut rounds, mut clears, mut in_flight_drops) = (0u64, 0u64, 0u64, 0u64);
    let (mut in_flight_new, mut in_flight_old) = (0u64, 0u64);
    let mut stores = TicketStores::default();
    let started = Instant::now();
    while kills < target_kills {
        rounds += 1;
        let round = rounds;
        if cache
            .stats()
            .shards
            .iter()
            .any(|s| s.bytes_used > clear_above)
        {
            cache.clear().expect("clear between rounds");
            clears += 1;
            model.iter_mut().flatten().for_each(|v| *v = None);
        }
        let round_start = cache.stats();
        let mut kids = Children::new();
        let mut logs = Vec::new();
        let mut errs = Vec::new();
        for w in 0..WRITERS {
            let log = t.dir.join(format!("writer-{w}.log"));
            let _ = std::fs::remove_file(&log);
            let (err_file, err) = child_stderr(&t.dir, &format!("writer-{w}"));
            let mut cmd = self_command(KILL_TEST, "kill-writer");
            cmd.env("LARDER_TEST_PATH", t.name())
                .env("LARDER_TEST_WRITER", w.to_string())
                .env("LARDER_TEST_ROUND", round.to_string())
                .env("LARDER_TEST_SEED", writer_seed(seed, round, w).to_string())
                .env("LARDER_TEST_LOG", &log)
                .stderr(err_file);
            kids.spawn(&mut cmd);
            logs.push(log);
            errs.push(err);
        }
        // Each writer is at work once it has acknowledged an operation.
        let ready_by = deadline_in(60);
        for (w, log) in logs.iter().enumerate() {
            let ready = poll_until(ready_by, || {
                std::fs::metadata(log).is_ok_and(|m| m.len() > 0) || kids.try_status(w).is_some()
            });
            assert!(ready, "writer {w} of round {round} never started");
        }
        // The kill instants: random, not a synchronisation.
        let now = Instant::now();
        let mut kill_at: Vec<(Instant, usize)> = (0..WRITERS)
            .map(|w| (now + Duration::from_micros(rng.below(KILL_WINDOW_US)), w))
            .collect();
        kill_at.sort();
        for (at, w) in kill_at {
            std::thread::sleep(at.saturating_duration_since(Instant::now())); // waits for the kill instant chosen above (not a synchronisation poll)
            kids.signal(w, libc::SIGKILL);
        }
        let mut killed = [false; WRITERS];
        for w in 0..WRITERS {
            let status = kids.wait_or_fail(w, deadline_in(60), "killed writer");
            if status.signal() == Some(libc::SIGKILL) {
                killed[w] = true;
                kills += 1;
            } else {
                assert!(
                    status.success(),
                    "writer {w} of round {round} failed: {}",
                    describe(status, &errs[w])
                );
            }
        }
        let mut drops_this_round = 0;
        // Writers killed in a set (or a fill's set): the only entries a repair may drop.
        let mut killed_in_set = 0;
        for w in 0..WRITERS {
            let text = std::fs::read_to_string(&logs[w]).expect("read writer log");
            let plan = Plan::new(writer_seed(seed, round, w), round);
            let in_flight = replay_log(w, &text, plan, killed[w], &mut model[w], &mut stores);
            if in_flight.as_ref().is_some_and(|f| {
                matches!(f.kind, Kind::Set | Kind::Fill)
                    || (f.kind == Kind::TicketSet && f.after != f.before)
            }) {
                killed_in_set += 1;
            }
            for j in 0..KEYS_PER_WRITER {
                let key = writer_key(w, j);
                let actual = cache
                    .get(&key)
                    .expect("get after the round")
                    .map(|v| check_value(&key, &v).unwrap_or_else(|e| panic!("{e}")));
                let expected = model[w][j as usize];
                match &in_flight {
                    Some(f) if f.key == j => {
                        let ctx = format!(
                            "round {round} writer {w} key {j}: {:?} in flight from {:?} \
                             to {:?}, found {actual:?}",
                            f.kind, f.before, f.after
                        );
                        if actual == f.after && f.after != f.before {
                            in_flight_new += 1;
                        } else if actual == f.before {
                            in_flight_old += 1;
                        } else {
                            // The one entry a crash may cost: a set (or a store with a
                            // ticket) that had already marked the old value dead but not
                            // yet published the new.
                            assert!(
                                actual.is_none()
                                    && matches!(f.kind, Kind::Set | Kind::TicketSet)
                                    && f.after != f.before
                                    && f.before.is_some(),
                                "{ctx}"
                            );
                            drops_this_round += 1;
                        }
                    }
                    _ => assert_eq!(
                        actual, expected,
                        "round {round} writer {w} key {j}: not what its acknowledged \
                         operations left (an undone write or remove, or a lost entry)"
                    ),
                }
                model[w][j as usize] = actual;
            }
        }
        in_flight_drops += drops_this_round;
        let s = cache.stats();
        assert_eq!(s.evictions, 0, "round {round}: the cache evicted: {s:?}");
        // Nothing but a key's own writer revokes it, and never while it fills it (a
        // fill is fenced exactly, however many revocations of other keys come).
        assert_eq!(
            s.fills_fenced, 0,
            "round {round}: a fill was fenced off: {s:?}"
        );
        assert_eq!(s.expirations, 0, "round {round}: {s:?}");
        assert!(
            s.repair_dropped <= s.recoveries,
            "round {round}: repairs dropped more than one entry each: {s:?}"
        );
        assert!(
            in_flight_drops <= s.repair_dropped,
            "round {round}: {in_flight_drops} in-flight entries vanished but repairs \
             dropped only {}",
            s.repair_dropped
        );
        let round_kills = killed.iter().filter(|&&k| k).count() as u64;
        assert!(
            s.recoveries - round_start.recoveries <= round_kills,
            "round {round}: more repairs than kills: {s:?}"
        );
        assert!(
            s.repair_dropped - round_start.repair_dropped <= killed_in_set,
            "round {round}: a repair dropped an entry that no killed writer was setting"
        );
        let report = cache.verify().expect("verify");
        assert!(report.is_clean(), "round {round}: {report}");
        let mut seen = HashSet::new();
        for e in cache.entries() {
            let e = e.expect("entries");
            assert!(seen.insert(e.key.clone()), "key listed twice: {:?}", e.key);
            let v = cache
                .get(&e.key)
                .expect("get")
                .expect("listed entry is there");
            check_value(&e.key, &v).unwrap_or_else(|err| panic!("{err}"));
        }
        let live = model.iter().flatten().filter(|v| v.is_some()).count();
        assert_eq!(seen.len(), live, "round {round}: entries listed");
    }
    let s = cache.stats();
    eprintln!(
        "{KILL_TEST}: {kills} kills in {rounds} rounds ({clears} clears) in {:.1?}; \
         {} recoveries, {} entries dropped; in-flight ops seen done {in_flight_new}, \
         not done {in_flight_old}, dropped {in_flight_drops}; stores with a ticket: \
         {stores:?}; {} fills",
        started.elapsed(),
        s.recoveries,
        s.repair_dropped,
        s.fills
    );
    assert!(
        s.recoveries > 0,
        "no kill landed inside a critical section in {kills} kills"
    );
}

// ----- deterministic crash points -------------------------------------------------------

#[cfg(feature = "crash-points")]
mod points {
    use super::*;

    /// Shards of the scenario files; every shard holds acknowledged entries.
    pub const SHARDS: usize = 4;
    /// The shard the scenarios crash in (`clear` crashes in shard 0, the first it
    /// empties).
    pub const CRASH_SHARD: usize = 2;
    /// Exit code of a child whose crash point panicked and was caught.
    pub const EXIT_PANICKED: i32 = 42;
    /// Exit code of a child that finished its scenario without reaching the point.
    pub const EXIT_NOT_REACHED: i32 = 3;
    /// Exit code of a child whose scenario failed for another reason.
    pub const EXIT_FAILED: i32 = 4;
    /// Most keys a scenario that fills a shard writes before it gives up.
    const MAX_FILL_KEYS: usize = 5000;

    /// What a child does to reach a crash point.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Scenario {
        /// `set` over an existing key, with a value of another length.
        Overwrite,
        /// `set` over an existing key, with a value of the same length.
        OverwriteSameLength,
        /// `set` of a new key.
        Insert,
        Remove,
        Touch,
        Clear,
        /// New keys, never read, until the small log evicts (once the shard is full).
        EvictSmall,
        /// Values too big for the small log, never read, until the main log evicts.
        EvictMain,
        /// New keys, each read once, until the small log moves them to main.
        MoveToMain,
        /// Big values, each read once, until main reinserts its head.
        MainReinsert,
        /// A tiny index: new keys until both of a key's buckets are full.
        BucketFull,
        /// `get_or_insert_with` of a missing key.
        Fill,
        /// A writer killed mid-set, then a reader that repairs the shard.
        Repair,
        /// Creating the file.
        Create,
        /// An offline repair re-stamping a file whose stamp is not this process's.
        Restamp,
        /// `incr` of an existing counter.
        Incr,
        /// `incr` of an existing counter that has a version.
        IncrVersioned,
        /// `set_if_version` over an existing versioned key, with a value of another
        /// length.
        Cas,
        /// `set_if_version` over an existing versioned key, with a value of the same
        /// length (never in place: a new record, published before the old one dies).
        CasSameLength,
        /// Taking the near-cache lease (which flushes the cache).
        Lease,
        /// `replace` over an existing key, with a value of another length.
        Replace,
        /// The first `get_versioned` of an existing key (which writes it again, with a
        /// version) whose record is the oldest of its shard's main log, full of big
        /// values: making room reaches the entry's own record.
        VersionFull,
        /// `set_if_version` over an existing versioned key whose record is the oldest of
        /// its shard's full main log.
        CasFull,
    }

    pub const ALL: &[Scenario] = &[
        Scenario::Overwrite,
        Scenario::OverwriteSameLength,
        Scenario::Insert,
        Scenario::Remove,
        Scenario::Touch,
        Scenario::Clear,
        Scenario::EvictSmall,
        Scenario::EvictMain,
        Scenario::MoveToMain,
        Scenario::MainReinsert,
        Scenario::BucketFull,
        Scenario::Fill,
        Scenario::Repair,
        Scenario::Create,
        Scenario::Restamp,
        Scenario::Incr,
        Scenario::IncrVersioned,
        Scenario::Cas,
        Scenario::CasSameLength,
        Scenario::Lease,
        Scenario::Replace,
        Scenario::VersionFull,
        Scenario::CasFull,
    ];

    impl Scenario {
        fn name(self) -> String {
            format!("{self:?}")
        }

        fn parse(s: &str) -> Scenario {
            *ALL.iter()
                .find(|sc| sc.name() == s)
                .unwrap_or_else(|| panic!("unknown scenario {s}"))
        }

        /// The scenarios that reach `point`. A point without one fails the test, so a
        /// new step in the code cannot go untested.
        pub fn for_point(point: &str) -> Vec<Scenario> {
            use Scenario::*;
            match point {
                "set.after_mark_old_dead" => vec![Overwrite, Replace],
                "lock.held" => vec![Overwrite, Cas],
                "fence.after_bump" => vec![Overwrite, Remove, Clear, Cas, Replace],
                p if p.starts_with("overwrite.") => vec![OverwriteSameLength],
                p if p.starts_with("set.") => {
                    vec![
                        Overwrite,
                        Insert,
                        Cas,
                        CasSameLength,
                        Replace,
                        VersionFull,
                        CasFull,
                    ]
                }
                "versioned_set.before_old_dead" => {
                    vec![Cas, CasSameLength, VersionFull, CasFull]
                }
                "version.after_bump" => {
                    vec![Cas, CasSameLength, IncrVersioned, VersionFull, CasFull]
                }
                "evict.after_cut" => vec![VersionFull, CasFull],
                "evict_slot.after_mark_dead" => vec![BucketFull],
                p if p.starts_with("remove.") => vec![Remove],
                p if p.starts_with("touch.") => vec![Touch],
                p if p.starts_with("clear.") => vec![Clear],
                p if p.starts_with("repair.") => vec![Repair],
                "evict.after_pop" => vec![EvictSmall, EvictMain],
                p if p.starts_with("move.") => vec![MoveToMain, MainReinsert],
                "fill.holding_slot" => vec![Fill],
                "create.after_init" | "open.register_atfork" | "open.read_boot_id" => {
                    vec![Create]
                }
                "restamp.after_ids" => vec![Restamp],
                "incr.after_store" => vec![Incr, IncrVersioned],
                "incr.after_version" => vec![IncrVersioned],
                p if p.starts_with("near.") => vec![Lease],
                other => panic!("crash point {other} has no scenario here: add one"),
            }
        }

        /// Small files, so that a few hundred keys fill a shard's logs. `BucketFull`
        /// sizes the index for very large entries, so a shard has only a few buckets.
        pub fn options(self) -> Options {
            let o = long_timeouts(small_options())
                .capacity((1 << 20) + (64 << 10))
                .shards(SHARDS)
                .max_value_len(16 << 10);
            if self == Scenario::BucketFull {
                o.expected_entry_size(16 << 10)
            } else {
                o
            }
        }

        /// The shard the crash leaves for the next owner to repair.
        fn dirty_shard(self) -> usize {
            if self == Scenario::Clear {
                0
            } else {
                CRASH_SHARD
            }
        }

        /// The shard whose entries the scenario itself may remove (evictions, clear).
        fn loose_shard(self) -> Option<usize> {
            use Scenario::*;
            match self {
                Clear => Some(0),
                EvictSmall | EvictMain | MoveToMain | MainReinsert | BucketFull => {
                    Some(CRASH_SHARD)
                }
                _ => None,
            }
        }

        /// Whether the scenario's key is the oldest record of its shard's full main log
        /// (filled before the child runs: see [`fill_full`]).
        fn full(self) -> bool {
            matches!(self, Scenario::VersionFull | Scenario::CasFull)
        }

        /// Whether the key under test exists before the crash.
        fn target_exists(self) -> bool {
            matches!(
                self,
                Scenario::Overwrite
                    | Scenario::OverwriteSameLength
                    | Scenario::Remove
                    | Scenario::Touch
                    | Scenario::Repair
                    | Scenario::Cas
                    | Scenario::CasSameLength
                    | Scenario::Replace
                    | Scenario::VersionFull
                    | Scenario::CasFull
            )
        }

        /// Whether the key under test is given a version before the crash.
        fn target_versioned(self) -> bool {
            matches!(
                self,
                Scenario::Cas | Scenario::CasSameLength | Scenario::CasFull
            )
        }

        /// Whether the crash must leave the key under test in place: a compare-and-swap
        /// leaves the old value or the new one, and a read never destroys what it reads.
        fn keeps_target(self) -> bool {
            self.target_versioned() || self == Scenario::VersionFull
        }

        /// Whether the crashing operation writes the key under test's new value.
        fn writes_new(self) -> bool {
            matches!(
                self,
                Scenario::Overwrite
                    | Scenario::OverwriteSameLength
                    | Scenario::Insert
                    | Scenario::Fill
                    | Scenario::Repair
                    | Scenario::Cas
                    | Scenario::CasSameLength
                    | Scenario::Replace
                    | Scenario::CasFull
            )
        }
    }

    /// Filler bytes of the values of the full-shard scenarios: about a twentieth of a
    /// shard's logs, twice the size above which a record goes straight to main (see
    /// `fill_shard`), so a main log holds 18 of them.
    const FULL_FILLER: usize = 12 << 10;

    fn old_value(scenario: Scenario, key: &[u8]) -> Vec<u8> {
        make_value(key, 1, if scenario.full() { FULL_FILLER } else { 40 })
    }

    /// The value a scenario writes over [`old_value`]: of another length, except for
    /// `OverwriteSameLength`.
    pub fn new_value(scenario: Scenario, key: &[u8]) -> Vec<u8> {
        let filler = match scenario {
            Scenario::OverwriteSameLength | Scenario::CasSameLength => 40,
            Scenario::VersionFull | Scenario::CasFull => FULL_FILLER + 16,
            _ => 56,
        };
        make_value(key, 2, filler)
    }

    /// The key a full-shard scenario rewrites, in the crash shard: one of a fixed length,
    /// so its record is as long in every file.
    fn full_target(c: &larder::Cache) -> Vec<u8> {
        (0u64..)
            .map(|i| format!("full-target-{i:05}").into_bytes())
            .find(|k| c.shard_of(k) == CRASH_SHARD)
            .expect("a key of the crash shard")
    }

    /// Fills the crash shard's main log for a full-shard scenario: `target` with its old
    /// value (given a version at once, while main is empty, for `CasFull`), then up to
    /// `fillers` values as big, under keys of one length; returns how many fillers it
    /// wrote before the shard first evicted (all if it never did).
    fn fill_full(c: &larder::Cache, s: Scenario, target: &[u8], fillers: usize) -> usize {
        c.set(target, &old_value(s, target), None)
            .expect("set target");
        if s.target_versioned() {
            c.get_versioned(target)
                .expect("get_versioned")
                .expect("the target");
        }
        let keys = (0u64..)
            .map(|i| format!("full-fill-{i:05}").into_bytes())
            .filter(|k| c.shard_of(k) == CRASH_SHARD)
            .take(fillers);
        for (n, key) in keys.enumerate() {
            c.set(&key, &make_value(&key, 1, FULL_FILLER), None)
                .expect("set filler");
            if c.stats().shards[CRASH_SHARD].evictions > 0 {
                return n;
            }
        }
        fillers
    }

    /// How many fillers [`fill_full`] writes for scenario `s` before the crash shard
    /// evicts: found once per test process, on a file of its own (every file of these
    /// options has the same geometry, and every record here the same length).
    fn full_fillers(s: Scenario) -> usize {
        use std::sync::OnceLock;
        static VERSION_FULL: OnceLock<usize> = OnceLock::new();
        static CAS_FULL: OnceLock<usize> = OnceLock::new();
        let cell = match s {
            Scenario::VersionFull => &VERSION_FULL,
            Scenario::CasFull => &CAS_FULL,
            other => unreachable!("{other:?} is not a full-shard scenario"),
        };
        *cell.get_or_init(|| {
            let t = TempCache::new("full-probe");
            let c = s.options().open(t.name()).expect("create probe");
            let target = full_target(&c);
            let n = fill_full(&c, s, &target, MAX_FILL_KEYS);
            assert!(n < MAX_FILL_KEYS, "{s:?}: the probe never evicted");
            n
        })
    }

    /// A crash-point child: runs its scenario; a crash point ends it by a signal, or by
    /// a panic it catches here and reports with [`EXIT_PANICKED`].
    pub fn crash_point_child() -> ! {
        let scenario = Scenario::parse(&child_env("LARDER_TEST_SCENARIO"));
        let path = child_env("LARDER_TEST_PATH");
        let key = child_env("LARDER_TEST_KEY").into_bytes();
        let outcome = std::panic::catch_unwind(|| run_scenario(scenario, &path, &key));
        match outcome {
            Ok(()) => std::process::exit(EXIT_NOT_REACHED),
            Err(payload) => {
                let msg = payload
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                if msg.starts_with("crash point ") {
                    std::process::exit(EXIT_PANICKED)
                }
                eprintln!("scenario {scenario:?} failed: {msg}");
                std::process::exit(EXIT_FAILED)
            }
        }
    }

    fn run_scenario(s: Scenario, path: &str, key: &[u8]) {
        if s == Scenario::Create {
            s.options().open(path).expect("create");
            return;
        }
        if s == Scenario::Restamp {
            larder::Cache::repair_offline(path, &s.options()).expect("repair offline");
            return;
        }
        if matches!(s, Scenario::Incr | Scenario::IncrVersioned) {
            let c = s.options().attach(path).expect("attach");
            c.incr(key, 1, 0, None).expect("incr");
            return;
        }
        if s == Scenario::Lease {
            let c = s.options().attach(path).expect("attach");
            let lease = c.near().try_lease(&[""]).expect("try_lease");
            assert!(lease.is_some(), "the lease was held");
            return;
        }
        let c = s.options().attach(path).expect("attach");
        let new = new_value(s, key);
        match s {
            Scenario::Overwrite | Scenario::OverwriteSameLength | Scenario::Insert => {
                c.set(key, &new, None).expect("set")
            }
            Scenario::Remove => {
                c.remove(key).expect("remove");
            }
            Scenario::Touch => {
                c.touch(key, Some(Duration::from_secs(3600)))
                    .expect("touch");
            }
            Scenario::Clear => {
                c.clear().expect("clear");
            }
            Scenario::Fill => {
                c.get_or_insert_with(key, None, || Ok::<_, Error>(new.clone()))
                    .expect("get_or_insert_with");
            }
            Scenario::Repair => {
                c.get(key).expect("get");
            }
            Scenario::Replace => {
                assert!(
                    c.replace(key, &new, None).expect("replace"),
                    "the target exists"
                );
            }
            Scenario::VersionFull => {
                let (v, _) = c
                    .get_versioned(key)
                    .expect("get_versioned")
                    .expect("the target exists");
                assert_eq!(v, old_value(s, key), "get_versioned changed the value");
            }
            Scenario::Cas | Scenario::CasSameLength | Scenario::CasFull => {
                let (_, version) = c
                    .get_versioned(key)
                    .expect("get_versioned")
                    .expect("the target exists");
                let stored = c
                    .set_if_version(key, &new, None, version)
                    .expect("set_if_version");
                assert!(stored, "no one else changed the target");
            }
            _ => fill_shard(&c, s),
        }
    }

    /// Writes new keys into the crash shard until its logs or index must make room.
    fn fill_shard(c: &larder::Cache, s: Scenario) {
        let shard = &c.stats().shards[CRASH_SHARD];
        // Small plus main log: a twentieth of it is twice the size above which a record
        // goes straight to main (a quarter of the small log, a tenth of the data).
        let big = ((shard.bytes_used + shard.bytes_free) / 20) as usize;
        // Unread entries leave the small log only once the shard is full (while it is
        // underfull they move on to main), and the index must not fill first: entries of
        // a few hundred bytes fill the logs before the index (sized for 320-byte ones).
        let (filler, read_back) = match s {
            Scenario::EvictSmall => (400, false),
            Scenario::MoveToMain => (80, true),
            Scenario::EvictMain => (big, false),
            Scenario::MainReinsert => (big, true),
            Scenario::BucketFull => (16, false),
            other => unreachable!("{other:?} does not fill a shard"),
        };
        let keys = (0u64..)
            .map(|i| format!("fill-{i}").into_bytes())
            .filter(|k| c.shard_of(k) == CRASH_SHARD)
            .take(MAX_FILL_KEYS);
        for key in keys {
            c.set(&key, &make_value(&key, 1, filler), None)
                .expect("set");
            if read_back {
                // Sets the visited bit, so eviction moves the entry instead.
                let v = c.get(&key).expect("get").expect("just written");
                check_value(&key, &v).unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }

    /// Runs one crash child to its end and checks how it ended.
    fn crash_child(
        test: &str,
        t: &TempCache,
        n: usize,
        point: &str,
        action: &str,
        scenario: Scenario,
        key: &[u8],
    ) {
        let (err_file, err) = child_stderr(&t.dir, &format!("child-{n}"));
        let mut cmd = self_command(test, "crash-point");
        cmd.env("LARDER_TEST_SCENARIO", scenario.name())
            .env("LARDER_TEST_PATH", t.name())
            .env(
                "LARDER_TEST_KEY",
                String::from_utf8(key.to_vec()).expect("ascii"),
            )
            .env("LARDER_CRASH_AT", point)
            .env("LARDER_CRASH_ACTION", action)
            .stderr(err_file);
        if action == "panic" {
            // The expected panic need not symbolise a backtrace (slow with debug info).
            cmd.env("RUST_BACKTRACE", "0");
        }
        let mut kids = Children::new();
        let i = kids.spawn(&mut cmd);
        let status = kids.wait_or_fail(i, deadline_in(120), point);
        let hit = match action {
            "abort" => status.signal() == Some(libc::SIGABRT),
            "kill" => status.signal() == Some(libc::SIGKILL),
            "panic" => status.code() == Some(EXIT_PANICKED),
            other => panic!("unknown action {other}"),
        };
        assert!(
            hit,
            "{point} ({scenario:?}, {action}): the child did not end at the point: {}",
            describe(status, &err)
        );
    }

    /// Crashes a child at `point` in each of its scenarios and checks the survivors.
    pub fn survive(test: &str, point: &str, action: &str) {
        for scenario in Scenario::for_point(point) {
            if scenario == Scenario::Create {
                survive_create(test, point, action);
            } else if scenario == Scenario::Restamp {
                survive_restamp(test, point, action);
            } else if matches!(scenario, Scenario::Incr | Scenario::IncrVersioned) {
                survive_incr(test, point, action, scenario);
            } else if scenario == Scenario::Lease {
                survive_lease(test, point, action);
            } else {
                survive_scenario(test, point, action, scenario);
            }
        }
    }

    fn survive_scenario(test: &str, point: &str, action: &str, scenario: Scenario) {
        let ctx = format!("{point} ({scenario:?}, {action})");
        let t = TempCache::new("point");
        let cache = scenario.options().open(t.name()).expect("create");
        assert_eq!(cache.shard_count(), SHARDS);
        // Acknowledged entries on every shard, written before the child runs.
        let mut acked = Vec::new();
        for shard in 0..SHARDS {
            for key in common::keys_in_shard(&cache, shard, "ack", 6) {
                let v = make_value(&key, 1, 24);
                cache.set(&key, &v, None).expect("set acknowledged entry");
                acked.push((key, v));
            }
        }
        let target = if scenario.full() {
            full_target(&cache)
        } else {
            common::keys_in_shard(&cache, CRASH_SHARD, "target", 1).remove(0)
        };
        let (old, new) = (old_value(scenario, &target), new_value(scenario, &target));
        if scenario.full() {
            // The target is main's oldest record, and main has no room for another.
            let fillers = full_fillers(scenario);
            assert_eq!(
                fill_full(&cache, scenario, &target, fillers),
                fillers,
                "{ctx}: setup evicted"
            );
        } else if scenario.target_exists() {
            cache.set(&target, &old, None).expect("set target");
        }
        let old_version = scenario.target_versioned().then(|| {
            let (v, version) = cache
                .get_versioned(&target)
                .expect("get_versioned")
                .expect("target");
            assert_eq!(v, old, "{ctx}");
            version
        });
        let before = cache.stats();
        assert_eq!(before.evictions, 0, "{ctx}: setup evicted");

        if scenario == Scenario::Repair {
            // A writer killed mid-set leaves the shard for its next owner to repair...
            crash_child(
                test,
                &t,
                0,
                "set.after_value",
                "kill",
                Scenario::Overwrite,
                &target,
            );
        }
        // ...and here the child dies at the point (inside that repair for `Repair`).
        crash_child(test, &t, 1, point, action, scenario, &target);

        // Survivors: a fresh handle; its first operation on the shard repairs it.
        let survivor = scenario.options().attach(t.name()).expect("reopen");
        let probe = common::keys_in_shard(&survivor, scenario.dirty_shard(), "probe", 1).remove(0);
        let probe_value = make_value(&probe, 9, 8);
        survivor
            .set(&probe, &probe_value, None)
            .unwrap_or_else(|e| panic!("{ctx}: first operation after the crash: {e}"));
        let after_probe = survivor.stats();
        // A crash with a shard lock held (or a panic mid-write) leaves it to repair; a
        // panic at `lock.held` unlocks before anything changed; the fill slot and the
        // file's creation hold no shard lock.
        let held_lock = !matches!(point, "fill.holding_slot" | "create.after_init");
        let dirty = held_lock && !(action == "panic" && point == "lock.held");
        if dirty {
            assert!(
                after_probe.recoveries > before.recoveries,
                "{ctx}: the next operation did not repair the shard: {after_probe:?}"
            );
        } else {
            assert_eq!(
                after_probe.recoveries, before.recoveries,
                "{ctx}: a repair without a crash inside a shard"
            );
        }
        let report = survivor.verify().expect("verify");
        assert!(report.is_clean(), "{ctx}: {report}");
        let end = survivor.stats();
        let recoveries = end.recoveries - before.recoveries;
        let dropped = end.repair_dropped - before.repair_dropped;
        assert!(
            dropped <= recoveries && dropped <= 1,
            "{ctx}: repairs dropped {dropped} entries in {recoveries} recoveries"
        );
        assert_eq!(
            end.recoveries, after_probe.recoveries,
            "{ctx}: verify found the shard damaged again"
        );

        // Acknowledged entries are intact, except where the scenario itself evicts or
        // clears (there they are intact or gone).
        for (key, v) in &acked {
            let got = survivor.get(key).expect("get acknowledged entry");
            if scenario.loose_shard() == Some(survivor.shard_of(key)) {
                if let Some(got) = got {
                    assert_eq!(&got, v, "{ctx}: acknowledged entry changed");
                }
            } else {
                assert_eq!(
                    got.as_ref(),
                    Some(v),
                    "{ctx}: acknowledged entry {:?} lost or changed",
                    String::from_utf8_lossy(key)
                );
            }
        }

        // The key under test: its old or its new value, never torn; gone only if the
        // repair counted it as the one entry the crash cost.
        let got = survivor.get(&target).expect("get target");
        if scenario.loose_shard().is_none() {
            let mut allowed = vec![scenario.target_exists().then(|| old.clone())];
            if scenario.writes_new() {
                allowed.push(Some(new.clone()));
            }
            if scenario == Scenario::Remove {
                allowed.push(None);
            }
            let shown = got.as_ref().map(|v| check_value(&target, v));
            assert!(
                allowed.contains(&got) || (got.is_none() && dropped == 1),
                "{ctx}: key under test holds {shown:?}"
            );
            // A compare-and-swap never costs the entry (the old value or the new), nor
            // does a read.
            if scenario.keeps_target() {
                assert!(
                    got.is_some(),
                    "{ctx}: a killed compare-and-swap or versioned read lost the entry"
                );
            }
            // A changed value never keeps the version the old one had.
            if let (Some(version), Some(v)) = (old_version, &got) {
                if v != &old {
                    assert!(
                        !survivor
                            .set_if_version(&target, b"cas", None, version)
                            .expect("set_if_version"),
                        "{ctx}: the new value kept the old value's version"
                    );
                }
            }
        }

        // Every entry left is whole and under its own key, and listed once.
        let mut seen = HashSet::new();
        for e in survivor.entries() {
            let e = e.expect("entries");
            assert!(seen.insert(e.key.clone()), "{ctx}: key listed twice");
            let v = survivor.get(&e.key).expect("get").expect("listed entry");
            check_value(&e.key, &v).unwrap_or_else(|err| panic!("{ctx}: {err}"));
        }
        assert_eq!(
            survivor.get(&probe).expect("get probe"),
            Some(probe_value),
            "{ctx}"
        );

        if scenario == Scenario::Fill {
            // The dead filler's slot is handed on at once, not after the fill timeout.
            let mut ran = false;
            let v = survivor
                .get_or_insert_with(&target, None, || {
                    ran = true;
                    Ok::<_, Error>(new.clone())
                })
                .unwrap_or_else(|e| panic!("{ctx}: fill after the filler died: {e}"));
            assert_eq!(v, new, "{ctx}");
            assert!(ran || got.is_some(), "{ctx}");
        }
    }

    /// A creator that dies after initialising the file but before linking it leaves
    /// nothing behind; the next open creates the file cleanly.
    fn survive_create(test: &str, point: &str, action: &str) {
        let ctx = format!("{point} (Create, {action})");
        let t = TempCache::new("create");
        crash_child(test, &t, 0, point, action, Scenario::Create, b"unused");
        assert!(
            !t.path.exists(),
            "{ctx}: a creator that died left the cache file"
        );
        let leftovers: Vec<String> = std::fs::read_dir(&t.dir)
            .expect("list dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".stderr"))
            .collect();
        assert!(
            leftovers.is_empty(),
            "{ctx}: a creator that died left {leftovers:?}"
        );
        let c = Scenario::Create
            .options()
            .open(t.name())
            .expect("create after the crash");
        let report = c.verify().expect("verify");
        assert!(report.is_clean(), "{ctx}: {report}");
        c.set(b"k", b"v", None).expect("set");
        assert_eq!(c.get(b"k").expect("get").as_deref(), Some(&b"v"[..]));
        let s = c.stats();
        assert_eq!((s.recoveries, s.entries), (0, 1), "{ctx}: {s:?}");
    }

    /// A writer that dies inside an increment of an existing counter never costs the
    /// counter: the next owner repairs the shard, the counter holds the old or the new
    /// count (the store is one atomic word), nothing is dropped, and the file verifies.
    ///
    /// A versioned counter (`IncrVersioned`) that holds the new count never holds it
    /// under the old version.
    fn survive_incr(test: &str, point: &str, action: &str, scenario: Scenario) {
        let ctx = format!("{point} ({scenario:?}, {action})");
        let t = TempCache::new("incr");
        let c = scenario.options().open(t.name()).expect("create");
        let target = common::keys_in_shard(&c, CRASH_SHARD, "counter", 1).remove(0);
        for _ in 0..41 {
            c.incr(&target, 1, 0, None).expect("incr");
        }
        let version = (scenario == Scenario::IncrVersioned).then(|| {
            let (v, version) = c.get_versioned(&target).expect("get").expect("counter");
            assert_eq!(v, 41i64.to_le_bytes(), "{ctx}");
            version
        });
        let before = c.stats();
        crash_child(test, &t, 0, point, action, scenario, &target);
        let n = c
            .incr(&target, 0, 0, None)
            .unwrap_or_else(|e| panic!("{ctx}: {e}"));
        assert!(
            n == 41 || n == 42,
            "{ctx}: the counter is {n}, not 41 or 42"
        );
        if let Some(version) = version {
            // `incr` by 0 gave the counter a new version either way.
            assert!(
                !c.set_if_version(&target, &0i64.to_le_bytes(), None, version)
                    .expect("set_if_version"),
                "{ctx}: the counter kept its version"
            );
        }
        let after = c.stats();
        assert_eq!(
            after.repair_dropped, before.repair_dropped,
            "{ctx}: the repair dropped the counter"
        );
        assert!(
            after.recoveries > before.recoveries,
            "{ctx}: the shard was not repaired: {after:?}"
        );
        let report = c.verify().expect("verify");
        assert!(report.is_clean(), "{ctx}: {report}");
    }

    /// A listener that dies (or panics) while taking the near-cache lease (after taking
    /// it, or after bumping the epoch of its flush) leaves it to the next process at once: its
    /// `try_lease` succeeds without waiting, counts the takeover, flushes, and the
    /// readers see no heartbeat until the new holder publishes one.
    fn survive_lease(test: &str, point: &str, action: &str) {
        let ctx = format!("{point} (Lease, {action})");
        let t = TempCache::new("lease");
        let c = Scenario::Lease.options().open(t.name()).expect("create");
        for i in 0..32u64 {
            let key = format!("near-{i}").into_bytes();
            c.set(&key, &make_value(&key, 1, 24), None).expect("set");
        }
        crash_child(test, &t, 0, point, action, Scenario::Lease, b"unused");
        let near = c.near();
        assert!(
            !near.guarded(Duration::from_secs(3600)).expect("guarded"),
            "{ctx}: a heartbeat survived the holder's death"
        );
        let lease = near
            .try_lease(&[""])
            .unwrap_or_else(|e| panic!("{ctx}: try_lease after the crash: {e}"))
            .unwrap_or_else(|| panic!("{ctx}: the dead holder's lease is still held"));
        let s = near.stats();
        // A panic unwinds through the lease, which lets it go: no takeover then.
        let takeovers = u64::from(action != "panic");
        assert_eq!((s.leases, s.takeovers), (2, takeovers), "{ctx}: {s:?}");
        assert_eq!(c.stats().entries, 0, "{ctx}: the new holder did not flush");
        assert!(lease
            .publish_heartbeat(larder::near::Moment::now())
            .expect("publish"));
        assert!(near.guarded(Duration::from_secs(3600)).expect("guarded"));
        drop(lease);
        assert!(!near.guarded(Duration::from_secs(3600)).expect("guarded"));
        let report = c.verify().expect("verify");
        assert!(report.is_clean(), "{ctx}: {report}");
    }

    /// An offline repair that dies while re-stamping the file leaves a stamp no process
    /// attaches to (never a file only `rm` recovers); the next offline repair writes it
    /// whole, and every entry is still there.
    fn survive_restamp(test: &str, point: &str, action: &str) {
        use crate::image::{fix_stamp, patch_word, read_all, word, STAMP_BOOT};
        let ctx = format!("{point} (Restamp, {action})");
        let t = TempCache::new("restamp");
        let opts = Scenario::Restamp.options();
        let mut acked = Vec::new();
        {
            let c = opts.open(t.name()).expect("create");
            for i in 0..32u64 {
                let key = format!("ack-{i}").into_bytes();
                let v = make_value(&key, 1, 24);
                c.set(&key, &v, None).expect("set");
                acked.push((key, v));
            }
        }
        // The stamp of a file from another boot (whole, its checksum right), so the
        // offline repair writes other words: a crash between them and the checksum
        // leaves new words under the old checksum.
        let bytes = read_all(&t.path);
        patch_word(&t.path, STAMP_BOOT, word(&bytes, STAMP_BOOT) ^ 0xff);
        fix_stamp(&t.path);
        assert!(
            matches!(opts.attach(t.name()), Err(Error::OtherBoot { .. })),
            "{ctx}: attached to a file of another boot"
        );
        crash_child(test, &t, 0, point, action, Scenario::Restamp, b"unused");
        assert!(
            matches!(opts.attach(t.name()), Err(Error::Corrupt { .. })),
            "{ctx}: attached to a file whose re-stamp was cut short"
        );
        larder::Cache::repair_offline(t.name(), &opts)
            .unwrap_or_else(|e| panic!("{ctx}: offline repair after the crash: {e}"));
        let c = opts
            .attach(t.name())
            .unwrap_or_else(|e| panic!("{ctx}: attach after the repair: {e}"));
        let report = c.verify().expect("verify");
        assert!(report.is_clean(), "{ctx}: {report}");
        for (key, v) in &acked {
            assert_eq!(
                c.get(key).expect("get").as_ref(),
                Some(v),
                "{ctx}: entry lost by the re-stamp"
            );
        }
    }

    /// Sets a key whose shard lock the child stops holding (`lock.held` with `stop`),
    /// then finishes the set once continued.
    pub fn stop_holder_child() -> ! {
        let path = child_env("LARDER_TEST_PATH");
        let key = child_env("LARDER_TEST_KEY").into_bytes();
        let c = Scenario::Overwrite.options().attach(&path).expect("attach");
        c.set(&key, &new_value(Scenario::Overwrite, &key), None)
            .expect("set");
        std::process::exit(0)
    }
}

/// Every crash point, with `abort` and with SIGKILL, is survived: the child dies there
/// (by the signal: the point was reached), and then a fresh handle's first operation
/// repairs the shard (counted), `verify()` is clean, acknowledged entries on other keys
/// are intact, the key being written holds its old or new value (or, if the repair
/// counts it as dropped, nothing), and every entry left is whole.
#[cfg(feature = "crash-points")]
#[test]
fn every_crash_point_is_survived() {
    if let Some(role) = child_role() {
        child_main(&role);
    }
    let started = Instant::now();
    let mut runs = 0;
    for action in ["abort", "kill"] {
        for point in larder::crashpoint::POINTS {
            points::survive("every_crash_point_is_survived", point, action);
            runs += points::Scenario::for_point(point).len();
        }
    }
    eprintln!(
        "every_crash_point_is_survived: {} points, {runs} crashes in {:.1?}",
        larder::crashpoint::POINTS.len(),
        started.elapsed()
    );
}

/// A panic at any point (it unwinds and unlocks, a different path from a crash) is
/// never published half-done: the shard stays marked mid-write, the next operation on
/// it repairs it (`recoveries` grows), `verify()` is clean and values are old or new.
#[cfg(feature = "crash-points")]
#[test]
fn panic_in_critical_section_is_repaired_by_next_operation() {
    if let Some(role) = child_role() {
        child_main(&role);
    }
    for point in larder::crashpoint::POINTS {
        points::survive(
            "panic_in_critical_section_is_repaired_by_next_operation",
            point,
            "panic",
        );
    }
}

/// A holder stopped (SIGSTOP) with a shard lock held costs the others a
/// `Error::Timeout` (and `WouldBlock` for `try_` calls) within the lock timeout, never a
/// hang; optimistic reads of the shard still succeed; after SIGCONT the holder finishes
/// and the others proceed.
#[cfg(feature = "crash-points")]
#[test]
fn stopped_holder_makes_others_time_out_then_proceed() {
    use points::{Scenario, CRASH_SHARD};
    const TEST: &str = "stopped_holder_makes_others_time_out_then_proceed";
    if let Some(role) = child_role() {
        child_main(&role);
    }
    let t = TempCache::new("stop");
    let timeout = Duration::from_millis(200);
    let cache = Scenario::Overwrite
        .options()
        .lock_timeout(timeout)
        .open(t.name())
        .expect("create");
    let keys = common::keys_in_shard(&cache, CRASH_SHARD, "stop", 2);
    let (held, other) = (&keys[0], &keys[1]);
    cache.set(held, b"old", None).expect("set");
    cache.set(other, b"other", None).expect("set");

    let mut kids = Children::new();
    let (err_file, err) = child_stderr(&t.dir, "holder");
    let mut cmd = self_command(TEST, "stop-holder");
    cmd.env("LARDER_TEST_PATH", t.name())
        .env(
            "LARDER_TEST_KEY",
            String::from_utf8(held.clone()).expect("ascii"),
        )
        .env("LARDER_CRASH_AT", "lock.held")
        .env("LARDER_CRASH_ACTION", "stop")
        .stderr(err_file);
    let holder = kids.spawn(&mut cmd);
    let pid = kids.pid(holder);
    let stopped = poll_until(deadline_in(60), || {
        common::proc_state(pid) == Some('T') || kids.try_status(holder).is_some()
    });
    assert!(
        stopped && kids.try_status(holder).is_none(),
        "the holder never stopped at lock.held: {:?}",
        kids.try_status(holder).map(|s| describe(s, &err))
    );

    // Reads of the shard take no lock, so they still work.
    assert_eq!(
        cache.get(other).expect("optimistic get").as_deref(),
        Some(&b"other"[..])
    );
    // A write waits for the lock only until its deadline. Run it on a thread so that a
    // hang fails the test instead of blocking it.
    let writer = cache.clone();
    let other_key = other.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(writer.set(&other_key, b"late", None));
    });
    let result = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("a write on a shard whose holder is stopped never returned");
    assert!(
        matches!(result, Err(Error::Timeout { .. })),
        "expected a timeout, got {result:?}"
    );
    assert!(matches!(
        cache.try_set(other, b"late", None),
        Err(Error::WouldBlock)
    ));
    assert!(cache.stats().lock_timeouts >= 1);
    assert_eq!(
        cache.get(other).expect("get").as_deref(),
        Some(&b"other"[..])
    );

    kids.signal(holder, libc::SIGCONT);
    // Proceeds: a handle with a generous timeout gets the lock once the holder is done.
    let patient = Scenario::Overwrite
        .options()
        .lock_timeout(Duration::from_secs(60))
        .attach(t.name())
        .expect("attach");
    patient
        .set(other, b"late", None)
        .expect("set after the holder continued");
    let status = kids.wait_or_fail(holder, deadline_in(60), "continued holder");
    assert!(status.success(), "holder: {}", describe(status, &err));
    assert_eq!(
        patient.get(held).expect("get"),
        Some(points::new_value(Scenario::Overwrite, held))
    );
    assert_eq!(
        patient.get(other).expect("get").as_deref(),
        Some(&b"late"[..])
    );
    let report = patient.verify().expect("verify");
    assert!(report.is_clean(), "{report}");
    assert_eq!(patient.stats().recoveries, 0, "nobody died");
}
