//! `larder bench`: the multi-process workload of the benchmarks (`larder_bench`,
//! the same code, not a copy) against a scratch cache or a given one, with a progress
//! line on stderr while it runs and the workload's summary table at the end.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use larder::{Cache, Stats};
use larder_bench::{self as workload, BenchConfig, BenchReport};

use crate::args::{BenchArgs, Global};
use crate::units::{bytes, human_duration, percent};
use crate::{options, stdout, Failure, Outcome};

/// How often the progress line is redrawn.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);
/// How often the wait for the run checks whether it has ended.
const POLL: Duration = Duration::from_millis(50);

/// Removes the scratch cache however the run ends.
struct Scratch(String);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = Cache::unlink(&self.0);
    }
}

/// Operations as the cache counts them: every get is a hit or a miss, every set an
/// insert or an update.
fn ops(s: &Stats) -> u64 {
    s.hits + s.misses + s.stale_hits + s.inserts + s.updates
}

/// Draws the progress line: on a terminal in place, elsewhere one line per redraw.
struct Progress {
    tty: bool,
    drawn: bool,
}

impl Progress {
    fn draw(&mut self, line: &str) {
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[K{line}");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
        self.drawn = true;
    }

    fn finish(&mut self) {
        if self.tty && self.drawn {
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[K");
            let _ = err.flush();
        }
    }
}

pub fn run(g: &Global, a: BenchArgs) -> Outcome {
    let value_len = usize::try_from(a.value_size)
        .map_err(|_| Failure::new(format!("--value-size {} is too large", a.value_size)))?;
    let (target, scratch) = match a.name {
        Some(name) => (name, None),
        None => {
            let name = format!("larder-bench-{}", std::process::id());
            // A leftover of an earlier run with this pid would have other parameters.
            let _ = Cache::unlink(&name);
            (name.clone(), Some(Scratch(name)))
        }
    };
    let path = Cache::path_of(&target)?;
    let mut cfg = BenchConfig::larder(&target);
    cfg.processes = a.procs;
    cfg.duration = a.secs;
    cfg.mix = a.mix;
    cfg.distribution = a.dist;
    cfg.keys = a.keys;
    cfg.value_len = value_len;

    let mut progress = Progress {
        tty: std::io::stderr().is_terminal(),
        drawn: false,
    };
    if scratch.is_none() && std::fs::symlink_metadata(&path).is_ok() {
        // An existing cache keeps its own parameters: the runner would refuse to open it
        // with the workload's, so it is prefilled here, through the same code.
        let mut cache = options(g).attach(&target)?;
        let limits = cache.limits();
        let (max_key, max_value) = (limits.max_key_len, limits.max_value_len);
        if max_key < workload::KEY_LEN || max_value < value_len {
            return Err(Failure::new(format!(
                "{} holds keys up to {max_key} bytes and values up to {max_value}; the \
                 workload needs {} and {value_len} (use --value-size, or another cache)",
                path.display(),
                workload::KEY_LEN
            )));
        }
        progress.draw(&format!("prefilling {} keys", a.keys));
        workload::prefill(&mut cache, cfg.keys, cfg.value_len)
            .map_err(|e| Failure::new(format!("prefilling {}: {e}", path.display())))?;
        cfg.prefill = false;
    }

    let started = Instant::now();
    let runner_cfg = cfg.clone();
    let run = std::thread::Builder::new()
        .name("larder-bench-runner".into())
        .spawn(move || workload::run_multiprocess(&runner_cfg))
        .map_err(|e| Failure::new(format!("starting the benchmark: {e}")))?;

    // The cache's own counters tell how the run is going; it is attached to once the
    // runner has created it.
    let mut watched: Option<Cache> = None;
    let mut last: Option<(u64, Instant)> = None;
    let mut next_draw = Instant::now() + PROGRESS_EVERY;
    while !run.is_finished() {
        std::thread::sleep(POLL);
        if Instant::now() < next_draw {
            continue;
        }
        next_draw += PROGRESS_EVERY;
        if watched.is_none() {
            watched = options(g).attach(&target).ok();
        }
        // The runner prefills before its workers start: the run ends about `duration`
        // after the prefill, which this side cannot see begin.
        let mut line = format!(
            "{} elapsed (prefill, then {} of {} with {} processes)",
            human_duration(started.elapsed()),
            human_duration(cfg.duration),
            cfg.mix,
            cfg.processes,
        );
        if let Some(c) = &watched {
            let s = c.stats();
            let now = Instant::now();
            let n = ops(&s);
            if let Some((prev, at)) = last {
                let secs = now.duration_since(at).as_secs_f64().max(1e-3);
                let rate = n.saturating_sub(prev) as f64 / secs;
                line.push_str(&format!(": {} ops/s", workload::format_rate(rate)));
            }
            line.push_str(&format!(
                ", {} entries, {} of gets hit",
                s.entries,
                percent(s.hits, s.hits + s.misses)
            ));
            last = Some((n, now));
        }
        progress.draw(&line);
    }
    drop(watched);
    progress.finish();
    let report: BenchReport = run
        .join()
        .map_err(|_| Failure::new("the benchmark runner panicked"))??;

    let mut out = stdout();
    write!(
        out,
        "{}",
        workload::format_table(std::slice::from_ref(&report))
    )?;
    writeln!(
        out,
        "{} operations in {} by {} processes; {} keys of 32 bytes, values of {}",
        report.ops(),
        human_duration(cfg.duration),
        cfg.processes,
        cfg.keys,
        bytes(cfg.value_len as u64)
    )?;
    match &scratch {
        Some(_) => writeln!(out, "scratch cache {} removed", path.display())?,
        None => writeln!(out, "cache {} left in place", path.display())?,
    }
    out.flush()?;
    drop(scratch);
    if report.bad_values() > 0 {
        return Err(Failure::new(format!(
            "{} values read back torn or under the wrong key: this is a bug, please report it",
            report.bad_values()
        )));
    }
    Ok(ExitCode::SUCCESS)
}
