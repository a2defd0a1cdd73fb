//! `larder stats`: every counter of `Stats`, as text in human units, JSON, or the
//! Prometheus text exposition format; `--watch` redraws it.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use larder::near::NearStats;
use larder::{ShardStats, Stats};

use crate::args::Global;
use crate::codec::json_str;
use crate::units::{bytes, percent};
use crate::{attach, Outcome};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    Prometheus,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A level that goes up and down.
    Gauge,
    /// A level in bytes.
    Bytes,
    /// A count that only grows.
    Counter,
    /// Bytes that only grow (written, moved).
    ByteCounter,
}

impl Kind {
    /// Whether the exposition format calls it a counter.
    fn counts(self) -> bool {
        matches!(self, Kind::Counter | Kind::ByteCounter)
    }
}

/// One counter: its name in JSON (and, prefixed, in Prometheus), its label in the text
/// form, its help text, and where it lives.
struct Field<T> {
    name: &'static str,
    label: &'static str,
    help: &'static str,
    kind: Kind,
    get: fn(&T) -> u64,
}

macro_rules! field {
    ($t:ty, $name:ident, $label:expr, $kind:ident, $help:expr) => {
        Field::<$t> {
            name: stringify!($name),
            label: $label,
            help: $help,
            kind: Kind::$kind,
            get: |s: &$t| s.$name,
        }
    };
}

/// Every field of `Stats` but the per-shard list, in display order.
const TOTALS: &[Field<Stats>] = &[
    field!(
        Stats,
        file_size,
        "file size",
        Bytes,
        "Bytes of the cache file."
    ),
    field!(Stats, shard_count, "shards", Gauge, "Number of shards."),
    field!(
        Stats,
        entries,
        "entries",
        Gauge,
        "Live entries (expired ones count until their space is reclaimed)."
    ),
    field!(
        Stats,
        bytes_live,
        "live bytes",
        Bytes,
        "Bytes of keys and values of live entries."
    ),
    field!(
        Stats,
        bytes_used,
        "log bytes used",
        Bytes,
        "Bytes of the logs in use (live, dead and padding records)."
    ),
    field!(
        Stats,
        bytes_free,
        "log bytes free",
        Bytes,
        "Bytes of the logs free."
    ),
    field!(
        Stats,
        hits,
        "hits",
        Counter,
        "Gets that found a fresh entry."
    ),
    field!(
        Stats,
        misses,
        "misses",
        Counter,
        "Gets that found nothing or only an expired entry."
    ),
    field!(
        Stats,
        stale_hits,
        "stale hits",
        Counter,
        "Expired values served on purpose (get_stale, refresh in progress)."
    ),
    field!(Stats, inserts, "inserts", Counter, "Sets of a new key."),
    field!(
        Stats,
        updates,
        "updates",
        Counter,
        "Sets that replaced an entry."
    ),
    field!(
        Stats,
        removals,
        "removals",
        Counter,
        "Entries removed by remove or clear."
    ),
    field!(
        Stats,
        evictions,
        "evictions",
        Counter,
        "Entries evicted to make room."
    ),
    field!(
        Stats,
        index_evictions,
        "index evicts",
        Counter,
        "Of the evictions, those made because both of a key's index buckets were full."
    ),
    field!(
        Stats,
        bytes_written,
        "bytes written",
        ByteCounter,
        "Bytes of records appended by sets."
    ),
    field!(
        Stats,
        bytes_moved,
        "bytes moved",
        ByteCounter,
        "Bytes of records moved by eviction and cleaning (write amplification: (written + moved) / written)."
    ),
    field!(
        Stats,
        expirations,
        "expirations",
        Counter,
        "Expired entries whose space was reclaimed."
    ),
    field!(
        Stats,
        lock_timeouts,
        "lock timeouts",
        Counter,
        "Operations that gave up on a shard lock at its deadline."
    ),
    field!(
        Stats,
        recoveries,
        "recoveries",
        Counter,
        "Shard repairs after a writer died or panicked mid-write."
    ),
    field!(
        Stats,
        repair_dropped,
        "repair dropped",
        Counter,
        "Entries dropped by repairs."
    ),
    field!(
        Stats,
        fills,
        "fills",
        Counter,
        "Values computed by get_or_insert_with."
    ),
    field!(
        Stats,
        fill_timeouts,
        "fill timeouts",
        Counter,
        "get_or_insert_with calls that gave up waiting for another process's fill."
    ),
    field!(
        Stats,
        fill_handovers,
        "fill handovers",
        Counter,
        "Fills taken over from a process that died while computing."
    ),
    field!(
        Stats,
        fills_fenced,
        "fills fenced",
        Counter,
        "Fills not stored because a write revoked the key while the value was computed."
    ),
    field!(Stats, locks, "locks", Counter, "Shard locks taken."),
];

/// Every field of `ShardStats`.
const SHARD: &[Field<ShardStats>] = &[
    field!(
        ShardStats,
        entries,
        "entries",
        Gauge,
        "Live entries of the shard."
    ),
    field!(
        ShardStats,
        bytes_live,
        "live",
        Bytes,
        "Bytes of keys and values of the shard's live entries."
    ),
    field!(
        ShardStats,
        bytes_used,
        "used",
        Bytes,
        "Bytes of the shard's logs in use."
    ),
    field!(
        ShardStats,
        bytes_free,
        "free",
        Bytes,
        "Bytes of the shard's logs free."
    ),
    field!(
        ShardStats,
        inserts,
        "inserts",
        Counter,
        "Sets of a new key in the shard."
    ),
    field!(
        ShardStats,
        updates,
        "updates",
        Counter,
        "Sets that replaced an entry of the shard."
    ),
    field!(
        ShardStats,
        removals,
        "removals",
        Counter,
        "Entries removed from the shard."
    ),
    field!(
        ShardStats,
        evictions,
        "evictions",
        Counter,
        "Entries evicted from the shard."
    ),
    field!(
        ShardStats,
        index_evictions,
        "index evicts",
        Counter,
        "Evictions from the shard because a key's two index buckets were full."
    ),
    field!(
        ShardStats,
        expirations,
        "expirations",
        Counter,
        "Expired entries reclaimed in the shard."
    ),
    field!(
        ShardStats,
        recoveries,
        "recoveries",
        Counter,
        "Repairs of the shard."
    ),
    field!(
        ShardStats,
        repair_dropped,
        "dropped",
        Counter,
        "Entries dropped by repairs of the shard."
    ),
];

/// A line for `larder stats` when the index fills before the logs: the entries are much
/// smaller than the `expected_entry_size` the index was sized for.
fn index_hint(s: &Stats, expected: usize) -> Option<String> {
    if s.index_evictions == 0 || s.entries == 0 {
        return None;
    }
    // Key + value + 16, as expected_entry_size counts an entry.
    let typical = s.bytes_live / s.entries + 16;
    (typical.saturating_mul(2) <= expected as u64).then(|| {
        format!(
            "note: {} evictions because the index was full: entries average {typical} bytes \
             (key + value + 16), the index was sized for {expected} (expected_entry_size); \
             create the cache with --expected-entry {typical} to give the index room",
            s.index_evictions
        )
    })
}

/// The near area's counters (`larder::near`), shown once a listener has used the file.
const NEAR: &[Field<NearStats>] = &[
    field!(
        NearStats,
        epoch,
        "epoch",
        Counter,
        "Near-cache flushes so far (the epoch)."
    ),
    field!(
        NearStats,
        leases,
        "leases",
        Counter,
        "Times a listener took the lease."
    ),
    field!(
        NearStats,
        takeovers,
        "takeovers",
        Counter,
        "Leases taken from a listener that died holding it."
    ),
    field!(
        NearStats,
        invalidations,
        "invalidations",
        Counter,
        "Keys invalidated by the listener or by writers."
    ),
    field!(
        NearStats,
        flushes_lease,
        "flush: lease",
        Counter,
        "Flushes by a listener that took the lease."
    ),
    field!(
        NearStats,
        flushes_reconnect,
        "flush: reconnect",
        Counter,
        "Flushes on reconnecting to the store."
    ),
    field!(
        NearStats,
        flushes_server,
        "flush: server",
        Counter,
        "Flushes because the store was emptied (FLUSHALL, FLUSHDB)."
    ),
    field!(
        NearStats,
        flushes_stale,
        "flush: stale",
        Counter,
        "Flushes because the listener could not prove it was current."
    ),
    field!(
        NearStats,
        flushes_requested,
        "flush: asked",
        Counter,
        "Flushes asked for by an operator or a program."
    ),
];

/// The heartbeat's age in milliseconds, or -1 when there is none.
fn heartbeat_ms(n: &NearStats) -> i64 {
    n.heartbeat_age
        .map_or(-1, |a| i64::try_from(a.as_millis()).unwrap_or(i64::MAX))
}

fn near_text(o: &mut String, n: &NearStats) {
    if n.leases == 0 {
        return;
    }
    let _ = writeln!(o);
    let holder = n.holder.map_or("none".to_string(), |p| format!("pid {p}"));
    let _ = writeln!(o, "{:<18}{holder}", "near listener");
    let age = match n.heartbeat_age {
        Some(a) => format!("{:.1} ms ago", a.as_secs_f64() * 1e3),
        None => "none (readers go to the store)".to_string(),
    };
    let _ = writeln!(o, "{:<18}{age}", "heartbeat");
    for f in NEAR {
        let _ = writeln!(o, "{:<18}{}", f.label, (f.get)(n));
    }
}

fn text(
    path: &str,
    s: &Stats,
    n: &NearStats,
    expected: usize,
    shards: bool,
    prev: Option<(&Stats, Duration)>,
) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "{:<16}{path}", "cache");
    for f in TOTALS {
        let v = (f.get)(s);
        let mut line = format!("{:<16}", f.label);
        match f.kind {
            Kind::Bytes | Kind::ByteCounter => line.push_str(&bytes(v)),
            Kind::Gauge | Kind::Counter => line.push_str(&v.to_string()),
        }
        // A few numbers mean more next to what they are a part of.
        let note = match f.name {
            "hits" => format!("{} of gets", percent(s.hits, s.hits + s.misses)),
            "bytes_used" => format!(
                "{} full",
                percent(s.bytes_used, s.bytes_used + s.bytes_free)
            ),
            _ => String::new(),
        };
        if f.kind.counts() {
            if let Some((p, dt)) = prev {
                let secs = dt.as_secs_f64().max(1e-3);
                let rate = v.saturating_sub((f.get)(p)) as f64 / secs;
                line = format!("{line:<30}{:>+12.0}/s", rate);
            }
        }
        if !note.is_empty() {
            line = format!("{line:<30}  ({note})");
        }
        let _ = writeln!(o, "{}", line.trim_end());
    }
    if let Some(hint) = index_hint(s, expected) {
        let _ = writeln!(o, "{hint}");
    }
    near_text(&mut o, n);
    if shards {
        let _ = writeln!(o);
        let _ = write!(o, "{:>5}", "shard");
        for f in SHARD {
            let _ = write!(o, " {:>11}", f.label);
        }
        let _ = writeln!(o, " {:>7}", "fill");
        for (i, sh) in s.shards.iter().enumerate() {
            let _ = write!(o, "{i:>5}");
            for f in SHARD {
                let v = (f.get)(sh);
                let cell = if f.kind == Kind::Bytes {
                    bytes(v)
                } else {
                    v.to_string()
                };
                let _ = write!(o, " {cell:>11}");
            }
            let fill = percent(sh.bytes_used, sh.bytes_used + sh.bytes_free);
            let _ = writeln!(o, " {fill:>7}");
        }
    }
    o
}

fn json(path: &str, s: &Stats, n: &NearStats, shards: bool) -> String {
    let mut o = String::from("{\"path\":");
    json_str(&mut o, path);
    for f in TOTALS {
        let _ = write!(o, ",\"{}\":{}", f.name, (f.get)(s));
    }
    let holder = n.holder.map_or(0, u64::from);
    let _ = write!(
        o,
        ",\"near\":{{\"holder\":{holder},\"heartbeat_age_ms\":{}",
        heartbeat_ms(n)
    );
    for f in NEAR {
        let _ = write!(o, ",\"{}\":{}", f.name, (f.get)(n));
    }
    o.push('}');
    if shards {
        o.push_str(",\"shards\":[");
        for (i, sh) in s.shards.iter().enumerate() {
            if i > 0 {
                o.push(',');
            }
            let _ = write!(o, "{{\"shard\":{i}");
            for f in SHARD {
                let _ = write!(o, ",\"{}\":{}", f.name, (f.get)(sh));
            }
            o.push('}');
        }
        o.push(']');
    }
    o.push_str("}\n");
    o
}

/// A label value in the exposition format: `\`, `"` and newline escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The exposition name: counters end in `_total`, byte levels in `_bytes`.
fn metric_name<T>(prefix: &str, f: &Field<T>) -> String {
    let base = match f.name {
        "bytes_live" => "live",
        "bytes_used" => "log_used",
        "bytes_free" => "log_free",
        "bytes_written" => "log_written",
        "bytes_moved" => "log_moved",
        other => other,
    };
    match f.kind {
        Kind::Counter => format!("{prefix}{base}_total"),
        Kind::Bytes => format!("{prefix}{base}_bytes"),
        Kind::ByteCounter => format!("{prefix}{base}_bytes_total"),
        Kind::Gauge => format!("{prefix}{base}"),
    }
}

fn prometheus(path: &str, s: &Stats, n: &NearStats, shards: bool) -> String {
    let mut o = String::new();
    let cache = label(path);
    for f in NEAR {
        let name = metric_name("larder_near_", f);
        let _ = writeln!(o, "# HELP {name} {}", f.help);
        let _ = writeln!(o, "# TYPE {name} counter");
        let _ = writeln!(o, "{name}{{cache=\"{cache}\"}} {}", (f.get)(n));
    }
    let name = "larder_near_heartbeat_age_seconds";
    let _ = writeln!(
        o,
        "# HELP {name} Age of the near-cache heartbeat (no sample: none, readers go to the store)."
    );
    let _ = writeln!(o, "# TYPE {name} gauge");
    if let Some(age) = n.heartbeat_age {
        let _ = writeln!(o, "{name}{{cache=\"{cache}\"}} {}", age.as_secs_f64());
    }
    for f in TOTALS {
        let name = metric_name("larder_", f);
        let kind = if f.kind.counts() { "counter" } else { "gauge" };
        let _ = writeln!(o, "# HELP {name} {}", f.help);
        let _ = writeln!(o, "# TYPE {name} {kind}");
        let _ = writeln!(o, "{name}{{cache=\"{cache}\"}} {}", (f.get)(s));
    }
    if shards {
        // Separate metric names, so that summing a metric never counts a shard twice.
        for f in SHARD {
            let name = metric_name("larder_shard_", f);
            let kind = if f.kind.counts() { "counter" } else { "gauge" };
            let _ = writeln!(o, "# HELP {name} {}", f.help);
            let _ = writeln!(o, "# TYPE {name} {kind}");
            for (i, sh) in s.shards.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "{name}{{cache=\"{cache}\",shard=\"{i}\"}} {}",
                    (f.get)(sh)
                );
            }
        }
    }
    o
}

pub fn run(
    g: &Global,
    name: &str,
    format: Format,
    shards: bool,
    watch: Option<Duration>,
    count: Option<u64>,
) -> Outcome {
    let cache = attach(g, name)?;
    let path = cache.path().display().to_string();
    let expected = cache.limits().expected_entry_size;
    let render = |s: &Stats, prev: Option<(&Stats, Duration)>| {
        let n = cache.near().stats();
        match format {
            Format::Text => text(&path, s, &n, expected, shards, prev),
            Format::Json => json(&path, s, &n, shards),
            Format::Prometheus => prometheus(&path, s, &n, shards),
        }
    };
    let mut out = crate::stdout();
    let Some(interval) = watch else {
        out.write_all(render(&cache.stats(), None).as_bytes())?;
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    };
    // Redraw in place on a terminal; elsewhere (a pipe, a test) print frames one after
    // another, separated by a blank line.
    let tty = std::io::stdout().is_terminal();
    let mut prev: Option<(Stats, Instant)> = None;
    let mut frames = 0u64;
    loop {
        let started = Instant::now();
        let s = cache.stats();
        let frame = render(&s, prev.as_ref().map(|(p, at)| (p, started - *at)));
        if tty {
            // Home, clear to the end of the screen: also right when a frame is taller
            // than the terminal.
            out.write_all(b"\x1b[H\x1b[J")?;
        } else if frames > 0 {
            out.write_all(b"\n")?;
        }
        out.write_all(frame.as_bytes())?;
        out.flush()?;
        frames += 1;
        if count.is_some_and(|c| frames >= c) {
            return Ok(ExitCode::SUCCESS);
        }
        prev = Some((s, started));
        std::thread::sleep(interval.saturating_sub(started.elapsed()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_total_has_one_metric_of_a_valid_name() {
        let s = Stats::default();
        let text = prometheus("/tmp/x\"y", &s, &NearStats::default(), false);
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        // Every total and every near-area counter (no heartbeat: no age sample).
        assert_eq!(samples.len(), TOTALS.len() + NEAR.len());
        for l in &samples {
            let name = &l[..l.find('{').unwrap()];
            assert!(name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_' || b.is_ascii_digit()));
            assert!(l.contains(r#"cache="/tmp/x\"y""#), "{l}");
        }
        assert!(text.contains("larder_hits_total{"));
        assert!(text.contains("larder_file_size_bytes{"));
        assert!(text.contains("larder_live_bytes{"));
        assert!(text.contains("larder_entries{"));
        assert!(text.contains("larder_near_takeovers_total{"));
        assert!(!text.contains("larder_near_heartbeat_age_seconds{"));
        let mut n = NearStats::default();
        n.heartbeat_age = Some(Duration::from_millis(250));
        let text = prometheus("c", &s, &n, false);
        assert!(text.contains("larder_near_heartbeat_age_seconds{cache=\"c\"} 0.25\n"));
    }

    #[test]
    fn json_names_every_total() {
        let j = json("p", &Stats::default(), &NearStats::default(), true);
        for f in TOTALS {
            assert!(j.contains(&format!("\"{}\":0", f.name)), "{}", f.name);
        }
        for f in NEAR {
            assert!(j.contains(&format!("\"{}\":0", f.name)), "{}", f.name);
        }
        assert!(
            j.contains("\"near\":{\"holder\":0,\"heartbeat_age_ms\":-1"),
            "{j}"
        );
        assert!(j.ends_with("\"shards\":[]}\n"));
    }
}
