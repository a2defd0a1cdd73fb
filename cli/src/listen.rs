//! `larder listen`: the near-cache listener, and what it tells the operator on stderr.
//!
//! One line per change an operator acts on: standing by, taking the lease (told with
//! the first connection's outcome), reaching Redis or not, losing it, giving the lease
//! up, and the flushes Redis did not ask for (a change it does not report, a listener
//! that fell behind); `-v` adds the flushes it did ask for (FLUSHALL, FLUSHDB). A message
//! that comes again within [`REPEAT_EVERY`] (a retry every ping interval) is counted, not
//! printed, and the count goes with its next showing. The last word on the listener's
//! state is never one held back: a state line held back is shown once its period is
//! over, if nothing has changed since (a connection that flapped and then held, say).

use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use larder_redis::Event;

use crate::args::Global;
use crate::{attach, Failure, Outcome};

/// How often one message may be shown: long enough that a listener retrying every
/// ping interval (100 ms by default) writes a line every few seconds at most, short
/// enough that the log still says it is retrying.
const REPEAT_EVERY: Duration = Duration::from_secs(10);
/// Messages whose showing [`Repeats`] remembers at most.
const MAX_KEYS: usize = 64;
/// Starts the key of every notice (as against a state line).
const NOTICE: &str = "notice:";
/// How often held-back lines are looked at: at most this late past their period.
const TICK: Duration = Duration::from_secs(1);

/// The listener, until the process is killed (its lease is then taken by the next
/// listener at once, which flushes).
pub fn run(
    g: &Global,
    name: &str,
    url: &str,
    prefixes: &[String],
    ping_every: Duration,
    bound: Duration,
    verbose: bool,
) -> Outcome {
    let cache = attach(g, name)?;
    let config = larder_redis::Config::new(prefixes)
        .ping_every(ping_every)
        .bound(bound)
        .reply_timeout(bound / 2);
    let listener =
        larder_redis::Listener::new(cache, url, config).map_err(|e| Failure::new(e.to_string()))?;
    let narrator = Arc::new(Mutex::new(Narrator::new(
        name, url, prefixes, ping_every, bound, verbose,
    )));
    {
        // Shows what was held back once its period is over, when no event comes to
        // carry it (a connection that flapped and then held sends none).
        let narrator = Arc::clone(&narrator);
        std::thread::Builder::new()
            .name("listen-log".into())
            .spawn(move || loop {
                std::thread::sleep(TICK); // a timer: how late a held-back line may be
                if let Ok(mut n) = narrator.lock() {
                    // Printed under the lock, so that lines keep their order.
                    print(n.due(Instant::now()));
                }
            })
            .map_err(|e| Failure::new(format!("listen: starting a thread: {e}")))?;
    }
    let stop = std::sync::atomic::AtomicBool::new(false);
    listener
        .run(&stop, |event| {
            if let Ok(mut n) = narrator.lock() {
                print(n.hear(event, Instant::now()));
            }
        })
        .map_err(|e| match e {
            // The listener let the lease go: say what that leaves the workers with.
            larder_redis::Error::Unsupported(why) => Failure::new(format!(
                "listen: the Redis at --redis cannot keep {name} current: {why}. No \
                 listener holds {name}: its workers read Redis directly"
            )),
            e => Failure::new(e.to_string()),
        })?;
    Ok(ExitCode::SUCCESS)
}

/// Writes `lines` to stderr, each as one line of this command's.
fn print(lines: Vec<String>) {
    let mut err = std::io::stderr().lock();
    for line in lines {
        // Nothing to do if stderr is gone: the listener goes on regardless.
        let _ = writeln!(err, "larder listen: {line}");
    }
}

/// Whether a line tells the listener's state (the last one shown must be the current
/// one) or a thing that happened.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    State,
    Notice,
}

/// Turns the listener's events into lines for its operator.
struct Narrator {
    name: String,
    url: String,
    /// The tracked prefixes, quoted, for the lines.
    prefixes: String,
    ping_every: Duration,
    bound: Duration,
    verbose: bool,
    repeats: Repeats,
    /// Taken and not yet told (`Some(takeover)`): told with the first connection's
    /// outcome, so that a Redis refused at once (cluster mode, say) costs no line of
    /// its own beside the failure's, which says that no listener holds the cache.
    untold_lease: Option<bool>,
    /// Whether this listener holds the lease now.
    holding: bool,
    /// Whether it is connected (and tracking) now.
    connected: bool,
    /// Failed connection attempts since the last connection.
    failures: u64,
    /// Why the lease is about to be given up, when the listener said why.
    giving_up: Option<String>,
    /// The key of the last state line heard, and whether it was held back.
    state: Option<(String, bool)>,
}

impl Narrator {
    fn new(
        name: &str,
        url: &str,
        prefixes: &[String],
        ping_every: Duration,
        bound: Duration,
        verbose: bool,
    ) -> Narrator {
        Narrator {
            name: name.to_string(),
            url: url.to_string(),
            prefixes: prefixes
                .iter()
                .map(|p| format!("{p:?}"))
                .collect::<Vec<_>>()
                .join(", "),
            ping_every,
            bound,
            verbose,
            repeats: Repeats::new(REPEAT_EVERY),
            untold_lease: None,
            holding: false,
            connected: false,
            failures: 0,
            giving_up: None,
            state: None,
        }
    }

    /// The lines to print for `event`, heard at `now` (none or one).
    fn hear(&mut self, event: Event, now: Instant) -> Vec<String> {
        let Some((kind, key, line)) = self.line_for(event) else {
            return Vec::new();
        };
        let shown = self.repeats.show(&key, line, now);
        if kind == Kind::State {
            self.state = Some((key, shown.is_none()));
        }
        shown.into_iter().collect()
    }

    /// What was held back and is due at `now`: the current state, if its line was
    /// held back and its period is over, and the counts of notices held back.
    fn due(&mut self, now: Instant) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some((key, held @ true)) = self.state.as_mut() {
            if let Some(line) = self.repeats.due(key, now) {
                lines.push(line);
                *held = false;
            }
        }
        let notices: Vec<String> = self
            .repeats
            .counted()
            .filter(|k| k.starts_with(NOTICE))
            .collect();
        for key in notices {
            lines.extend(self.repeats.due(&key, now));
        }
        lines
    }

    /// The line for `event`: its kind, its key (what makes two lines the same message)
    /// and its text; `None` for an event told with a later one, or not at all.
    fn line_for(&mut self, event: Event) -> Option<(Kind, String, String)> {
        let name = self.name.clone();
        let url = self.url.clone();
        let every = units(self.ping_every);
        let state = |key: &str, line: String| Some((Kind::State, key.to_string(), line));
        let notice = |key: &str, line: String| Some((Kind::Notice, format!("{NOTICE}{key}"), line));
        match event {
            Event::Standby { holder } => {
                let who = holder.map(|p| format!(" (pid {p})")).unwrap_or_default();
                state(
                    "standby",
                    format!(
                        "standing by: another listener{who} holds the lease on {name}; trying \
                         again every {every}"
                    ),
                )
            }
            Event::Leased { takeover } => {
                self.untold_lease = Some(takeover);
                self.holding = true;
                self.connected = false;
                self.failures = 0;
                None
            }
            Event::Connected => {
                let lease = self.lease_told();
                let after = match self.failures {
                    0 => String::new(),
                    1 => " after 1 failed attempt".to_string(),
                    n => format!(" after {n} failed attempts"),
                };
                self.connected = true;
                self.failures = 0;
                // A connection right after taking the lease, and one after losing it,
                // are different news.
                state(
                    if lease.is_empty() {
                        "reconnected"
                    } else {
                        "connected"
                    },
                    format!(
                        "{lease}connected to Redis at {url}{after}, tracking {}",
                        self.prefixes
                    ),
                )
            }
            Event::Lost(why) if self.connected => {
                self.connected = false;
                state(
                    &format!("lost:{why}"),
                    format!(
                        "lost the connection to Redis at {url}: {why}; readers go to Redis \
                         until it is back; reconnecting"
                    ),
                )
            }
            Event::Lost(why) => {
                self.failures += 1;
                let lease = self.lease_told();
                state(
                    &format!("unreachable:{why}"),
                    format!(
                        "{lease}cannot reach Redis at {url}: {why}; readers go to Redis \
                         meanwhile; trying again every {every}"
                    ),
                )
            }
            Event::CacheError(why) if self.holding => {
                self.giving_up = Some(format!("an operation on the cache file failed: {why}"));
                None
            }
            Event::CacheError(why) => state(
                &format!("cache:{why}"),
                format!("cannot use the cache file {name}: {why}; trying again every {every}"),
            ),
            Event::FileReplaced => {
                self.giving_up = Some(format!(
                    "the cache file {name} was replaced; taking the new file's lease"
                ));
                None
            }
            Event::Released => {
                self.holding = false;
                self.connected = false;
                let why = self.giving_up.take();
                // Never told: it was held only while a connection failed at once, and
                // the failure says that no listener holds the cache.
                if self.untold_lease.take().is_some() && why.is_none() {
                    return None;
                }
                let line = match why {
                    Some(why) => {
                        format!("gave up the lease on {name}: {why}; readers go to Redis meanwhile")
                    }
                    None => format!("gave up the lease on {name}; readers go to Redis"),
                };
                state("released", line)
            }
            Event::Stale => notice(
                "stale",
                format!(
                    "this listener fell behind (its last proof of being current is older than \
                     the bound, {}: was it stopped or starved?): flushed the near cache",
                    units(self.bound)
                ),
            ),
            Event::UnreportedChange(why) => notice(
                &format!("unreported:{why}"),
                format!(
                    "Redis changed in a way that client-side caching does not report \
                     ({why}): flushed the near cache"
                ),
            ),
            Event::ServerFlush if self.verbose => notice(
                "flush",
                "Redis was emptied (FLUSHALL or FLUSHDB): flushed the near cache".to_string(),
            ),
            Event::ServerFlush => None,
            // A kind of event this command does not know yet.
            other if self.verbose => notice(&format!("{other:?}"), format!("{other:?}")),
            _ => None,
        }
    }

    /// The lease taken and not told yet, as the start of a line ("" if told).
    fn lease_told(&mut self) -> String {
        match self.untold_lease.take() {
            Some(false) => format!(
                "took the lease on {} and flushed its near cache; ",
                self.name
            ),
            Some(true) => format!(
                "took the lease on {} from a listener that died and flushed its near cache; ",
                self.name
            ),
            None => String::new(),
        }
    }
}

/// A duration as the command line takes it (`100ms`, `1s`).
fn units(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{d:?}")
    }
}

/// Shows each message at most once per period; the times it came in between are
/// counted and told with its next showing.
struct Repeats {
    every: Duration,
    /// By message key: when it was last shown, how often it came since, and its latest
    /// line.
    shown: HashMap<String, Shown>,
}

struct Shown {
    at: Instant,
    since: u64,
    line: String,
}

impl Repeats {
    fn new(every: Duration) -> Repeats {
        Repeats {
            every,
            shown: HashMap::new(),
        }
    }

    /// `line` (with the count of the times it came since it was last shown), or `None`
    /// if a message of the same `key` was shown less than a period ago (it is counted).
    fn show(&mut self, key: &str, line: String, now: Instant) -> Option<String> {
        if let Some(s) = self.shown.get_mut(key) {
            s.line = line;
            s.since += 1;
            return Self::due_at(s, self.every, now);
        }
        // Keys whose period is over and that hold no count would be shown anyway:
        // forget them, so that messages with changing text do not pile up.
        let every = self.every;
        self.shown
            .retain(|_, s| s.since > 0 || now.saturating_duration_since(s.at) < every);
        // And a bound, for messages whose text changes every time (the oldest goes,
        // with its count).
        if self.shown.len() >= MAX_KEYS {
            if let Some(oldest) = self
                .shown
                .iter()
                .min_by_key(|(_, s)| s.at)
                .map(|(k, _)| k.clone())
            {
                self.shown.remove(&oldest);
            }
        }
        self.shown.insert(
            key.to_string(),
            Shown {
                at: now,
                since: 0,
                line: line.clone(),
            },
        );
        Some(line)
    }

    /// The latest line of `key`, with its count, if it came since it was last shown
    /// and its period is over.
    fn due(&mut self, key: &str, now: Instant) -> Option<String> {
        let every = self.every;
        self.shown
            .get_mut(key)
            .filter(|s| s.since > 0)
            .and_then(|s| Self::due_at(s, every, now))
    }

    /// `s`'s latest line, told with the times it came before that since it was last
    /// shown, if its period is over (it is then shown now).
    fn due_at(s: &mut Shown, every: Duration, now: Instant) -> Option<String> {
        let ago = now.saturating_duration_since(s.at);
        if ago < every {
            return None;
        }
        let before = s.since - 1;
        s.at = now;
        s.since = 0;
        Some(match before {
            0 => s.line.clone(),
            1 => format!("{} [once more in the {} s before]", s.line, ago.as_secs()),
            n => format!(
                "{} [{n} times more in the {} s before]",
                s.line,
                ago.as_secs()
            ),
        })
    }

    /// Keys that came since they were last shown.
    fn counted(&self) -> impl Iterator<Item = String> + '_ {
        self.shown
            .iter()
            .filter(|(_, s)| s.since > 0)
            .map(|(k, _)| k.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn narrator() -> Narrator {
        Narrator::new(
            "authz",
            "redis://10.0.0.5/",
            &["token:".to_string()],
            Duration::from_millis(100),
            Duration::from_secs(1),
            false,
        )
    }

    /// Feeds `events`, one every `step` from `start`; returns every line printed.
    fn feed(n: &mut Narrator, start: Instant, step: Duration, events: Vec<Event>) -> Vec<String> {
        let mut lines = Vec::new();
        for (i, e) in events.into_iter().enumerate() {
            lines.extend(n.hear(e, start + step * i as u32));
        }
        lines
    }

    const REFUSED: &str = "Connection refused (os error 111)";

    /// A Redis that refuses for 25 s, one attempt every 100 ms: the lease and the first
    /// failure in one line, then one line per period with the count, then the
    /// connection with the number of failed attempts.
    #[test]
    fn a_refusing_redis_is_one_line_per_period_with_the_count() {
        let mut n = narrator();
        let t0 = Instant::now();
        let step = Duration::from_millis(100);
        let mut events = vec![Event::Leased { takeover: false }];
        events.extend((0..250).map(|_| Event::Lost(REFUSED.into())));
        events.push(Event::Connected);
        let lines = feed(&mut n, t0, step, events);
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert_eq!(
            lines[0],
            "took the lease on authz and flushed its near cache; cannot reach Redis at \
             redis://10.0.0.5/: Connection refused (os error 111); readers go to Redis \
             meanwhile; trying again every 100ms"
        );
        assert!(
            lines[1].starts_with("cannot reach Redis at redis://10.0.0.5/"),
            "{}",
            lines[1]
        );
        assert!(
            lines[1].ends_with("[99 times more in the 10 s before]"),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].ends_with("[99 times more in the 10 s before]"),
            "{}",
            lines[2]
        );
        assert_eq!(
            lines[3],
            "connected to Redis at redis://10.0.0.5/ after 250 failed attempts, tracking \
             \"token:\""
        );
    }

    /// A connection that flaps every 100 ms prints each of its messages once per
    /// period, not every time; once it holds, the state held back is shown when its
    /// period is over, and nothing after that.
    #[test]
    fn a_flapping_connection_is_rate_limited_and_its_last_state_shown() {
        let mut n = narrator();
        let t0 = Instant::now();
        let step = Duration::from_millis(100);
        let mut events = vec![Event::Leased { takeover: true }];
        for _ in 0..40 {
            events.push(Event::Connected);
            events.push(Event::Lost("reply timed out".into()));
        }
        events.push(Event::Connected);
        let lines = feed(&mut n, t0, step, events);
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert!(lines[0].starts_with(
            "took the lease on authz from a listener that died and flushed its near cache; \
             connected to Redis"
        ));
        assert!(lines[1].starts_with("lost the connection to Redis at redis://10.0.0.5/: reply"));
        assert_eq!(
            lines[2],
            "connected to Redis at redis://10.0.0.5/, tracking \"token:\""
        );
        // Nothing is due before the period is over; then the state that held.
        assert_eq!(n.due(t0 + Duration::from_secs(9)), Vec::<String>::new());
        let due = n.due(t0 + Duration::from_secs(11));
        assert_eq!(
            due,
            [
                "connected to Redis at redis://10.0.0.5/, tracking \"token:\" \
              [38 times more in the 10 s before]"
            ]
        );
        assert_eq!(n.due(t0 + Duration::from_secs(30)), Vec::<String>::new());
    }

    /// An outage soon after the connection: the loss, the failures and the
    /// reconnection are each told at once.
    #[test]
    fn an_outage_is_told_as_it_happens() {
        let mut n = narrator();
        let t0 = Instant::now();
        let mut events = vec![Event::Leased { takeover: false }, Event::Connected];
        events.extend((0..30).map(|_| Event::Lost(REFUSED.into())));
        events[2] = Event::Lost("Broken pipe".into());
        events.push(Event::Connected);
        let lines = feed(&mut n, t0, Duration::from_millis(100), events);
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert!(lines[1].starts_with("lost the connection"), "{}", lines[1]);
        assert!(lines[2].starts_with("cannot reach Redis"), "{}", lines[2]);
        assert_eq!(
            lines[3],
            "connected to Redis at redis://10.0.0.5/ after 29 failed attempts, tracking \
             \"token:\""
        );
        // The failures' count is told by the reconnection, not later.
        assert_eq!(n.due(t0 + Duration::from_secs(60)), Vec::<String>::new());
    }

    /// A Redis refused at once (cluster mode): the lease taken and let go in between is
    /// not told, since the command's failure says no listener holds the cache.
    #[test]
    fn a_lease_let_go_before_any_connection_is_not_told() {
        let mut n = narrator();
        let lines = feed(
            &mut n,
            Instant::now(),
            Duration::ZERO,
            vec![Event::Leased { takeover: false }, Event::Released],
        );
        assert!(lines.is_empty(), "{lines:#?}");
    }

    /// Standing by, taking over, an error of the cache file, giving the lease up.
    #[test]
    fn standby_takeover_and_giving_up_are_told() {
        let mut n = narrator();
        let lines = feed(
            &mut n,
            Instant::now(),
            Duration::from_millis(100),
            vec![
                Event::Standby { holder: Some(42) },
                Event::Leased { takeover: true },
                Event::Connected,
                Event::CacheError("a shard lock was held past its timeout".into()),
                Event::Released,
                Event::ServerFlush,
                Event::Stale,
            ],
        );
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert_eq!(
            lines[0],
            "standing by: another listener (pid 42) holds the lease on authz; trying again \
             every 100ms"
        );
        assert!(
            lines[1].contains("from a listener that died"),
            "{}",
            lines[1]
        );
        assert_eq!(
            lines[2],
            "gave up the lease on authz: an operation on the cache file failed: a shard lock \
             was held past its timeout; readers go to Redis meanwhile"
        );
        assert!(
            lines[3].starts_with("this listener fell behind"),
            "{}",
            lines[3]
        );
    }

    /// -v adds the flushes Redis asked for; those held back are counted and told once
    /// their period is over.
    #[test]
    fn verbose_adds_server_flushes_counted_when_they_repeat() {
        let mut n = narrator();
        let t0 = Instant::now();
        assert!(n.hear(Event::ServerFlush, t0).is_empty());
        n.verbose = true;
        let flushed = "Redis was emptied (FLUSHALL or FLUSHDB): flushed the near cache";
        let lines = feed(
            &mut n,
            t0,
            Duration::from_millis(10),
            vec![Event::ServerFlush; 3],
        );
        assert_eq!(lines, [flushed]);
        assert_eq!(
            n.due(t0 + Duration::from_secs(10)),
            [format!("{flushed} [once more in the 10 s before]")]
        );
    }
}
