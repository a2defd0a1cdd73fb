//! Multi-process throughput: N processes on one store running each mix of the workload
//! (`larder_bench`), for larder and, beside it in the same run, LMDB (heed), Redis
//! over a unix socket, and the seed's design (benches/seed_cache.py, in Python).
//!
//! ```text
//! cargo bench -p larder-bench --bench multiprocess
//! LARDER_BENCH_QUICK=1 cargo bench -p larder-bench --bench multiprocess      # 0.5 s per run
//! LARDER_BENCH_SECS=5 LARDER_BENCH_PROCS=1,2,4,8,16 LARDER_BENCH_BACKENDS=larder \
//!     cargo bench -p larder-bench --bench multiprocess
//! ```
//! `LARDER_BENCH_BACKENDS` picks among `larder,heed,redis,seed` (default all),
//! `LARDER_BENCH_DISTS` among `uniform,zipf`, `LARDER_BENCH_MIXES` among
//! `100/0,95/5,90/10`. A peer that cannot run here is printed as skipped, with why.
//! larder runs each configuration `LARDER_BENCH_ROUNDS` times (default 3, 1 when quick),
//! the process counts interleaved, and the table shows the median run (the upper one of
//! the middle two for an even count); each round's
//! rate and its ratio to the same round's N=1 run are printed before the table.
//!
//! Workers are this binary run again: `main` hands over to
//! `worker_main_if_requested_with` first, which also opens the peers' stores.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use heed::types::Bytes;
use heed::{Database, Env, EnvFlags, EnvOpenOptions};
use larder_bench::{
    self as workload, load_average, BenchConfig, BenchReport, Distribution, Mix, Store, StoreError,
    TempDir, KEY_LEN,
};

const HEED: &str = "heed";
const REDIS: &str = "redis";
/// LMDB's map: room for the keys, values and B-tree of the largest workload.
const HEED_MAP_SIZE: usize = 1 << 30;

fn main() {
    workload::worker_main_if_requested_with(open_peer);
    if let Err(e) = run() {
        eprintln!("multiprocess bench: {e}");
        std::process::exit(1);
    }
}

/// Opens a peer's store inside a worker.
fn open_peer(cfg: &BenchConfig) -> Result<Box<dyn Store>, StoreError> {
    match cfg.backend.as_str() {
        HEED => Ok(Box::new(HeedStore::open(Path::new(&cfg.target))?)),
        REDIS => Ok(Box::new(RedisStore::connect(Path::new(&cfg.target))?)),
        other => Err(format!("unknown backend {other:?}").into()),
    }
}

// ----- LMDB through heed ------------------------------------------------------------

/// One read transaction per get, one write transaction per set, `NO_SYNC`. LMDB has no
/// TTL: the TTL is ignored.
struct HeedStore {
    env: Env,
    db: Database<Bytes, Bytes>,
}

impl HeedStore {
    fn open(dir: &Path) -> Result<HeedStore, StoreError> {
        let mut opts = EnvOpenOptions::new();
        opts.map_size(HEED_MAP_SIZE).max_dbs(1).max_readers(4096);
        // SAFETY: NO_SYNC only gives up durability across a system crash, which a cache
        // does not need; no other process opens this environment with other flags.
        unsafe {
            opts.flags(EnvFlags::NO_SYNC);
        }
        // SAFETY: heed requires that the environment is not opened twice in one
        // process and that the files are not modified by other means; each process
        // of this benchmark opens it once, and only LMDB touches its files.
        let env = unsafe { opts.open(dir)? };
        let mut w = env.write_txn()?;
        let db = env.create_database(&mut w, None)?;
        w.commit()?;
        Ok(HeedStore { env, db })
    }

    fn prefill(&self, keys: u64, value_len: usize) -> Result<(), StoreError> {
        let mut w = self.env.write_txn()?;
        let mut v = vec![0u8; value_len];
        for i in 0..keys {
            workload::write_value(i, 0, &mut v)?;
            self.db.put(&mut w, &workload::key(i), &v)?;
        }
        w.commit()?;
        Ok(())
    }
}

impl Store for HeedStore {
    fn get_into(&mut self, key: &[u8], buf: &mut Vec<u8>) -> Result<bool, StoreError> {
        let txn = self.env.read_txn()?;
        match self.db.get(&txn, key)? {
            Some(v) => {
                buf.clear();
                buf.extend_from_slice(v);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn set(&mut self, key: &[u8], value: &[u8], _ttl: Duration) -> Result<(), StoreError> {
        let mut w = self.env.write_txn()?;
        self.db.put(&mut w, key, value)?;
        w.commit()?;
        Ok(())
    }
}

// ----- Redis over a unix socket (shared with the counters bench) ----------------------

#[path = "peers/redis.rs"]
mod redis_peer;
use redis_peer::{RedisServer, RedisStore};

// ----- helpers ----------------------------------------------------------------------------

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// The machine's CPU time so far from /proc/stat, in ticks: (all, stolen by the host).
fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .map(|x| x.parse::<u64>())
        .collect::<Result<_, _>>()
        .ok()?;
    // user nice system idle iowait irq softirq steal ...
    Some((v.iter().take(8).sum(), *v.get(7)?))
}

/// The share of the machine's CPU time (all CPUs) the hypervisor stole between two
/// readings.
fn steal_share(start: Option<(u64, u64)>) -> String {
    match (start, cpu_ticks()) {
        (Some((a0, s0)), Some((a1, s1))) if a1 > a0 => {
            format!(
                "{:.1}%",
                s1.saturating_sub(s0) as f64 * 100.0 / (a1 - a0) as f64
            )
        }
        _ => "unknown".into(),
    }
}

fn machine() -> String {
    let out = Command::new("lscpu").output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| {
                [
                    "Model name",
                    "CPU(s):",
                    "Thread(s) per core",
                    "Core(s) per socket",
                    "Socket(s)",
                ]
                .iter()
                .any(|k| l.trim_start().starts_with(k))
            })
            .map(|l| format!("  {}\n", l.trim()))
            .collect(),
        _ => format!(
            "  {} CPUs (lscpu not available)\n",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0)
        ),
    }
}

struct Plan {
    secs: Duration,
    procs: Vec<usize>,
    dists: Vec<Distribution>,
    mixes: Vec<Mix>,
    backends: Vec<String>,
    /// larder's runs per configuration, N interleaved: the table shows the median.
    rounds: usize,
}

fn plan() -> Result<Plan, StoreError> {
    let quick = std::env::var("LARDER_BENCH_QUICK").is_ok_and(|v| v == "1");
    let secs = match std::env::var("LARDER_BENCH_SECS") {
        Ok(s) => Duration::from_secs_f64(s.parse::<f64>()?),
        Err(_) if quick => Duration::from_millis(500),
        Err(_) => Duration::from_secs(2),
    };
    let procs = match std::env::var("LARDER_BENCH_PROCS") {
        Ok(s) => s
            .split(',')
            .map(|n| n.trim().parse::<usize>())
            .collect::<Result<Vec<_>, _>>()?,
        Err(_) => workload::default_process_counts(),
    };
    let dists = env_list("LARDER_BENCH_DISTS", "uniform,zipf")
        .iter()
        .map(|d| workload::Distribution::parse(d))
        .collect::<Result<Vec<_>, _>>()?;
    let mixes = env_list("LARDER_BENCH_MIXES", "100/0,95/5,90/10")
        .iter()
        .map(|m| Mix::parse(m))
        .collect::<Result<Vec<_>, _>>()?;
    let backends = env_list("LARDER_BENCH_BACKENDS", "larder,heed,redis,seed");
    let rounds = match std::env::var("LARDER_BENCH_ROUNDS") {
        Ok(s) => s.parse::<usize>()?.max(1),
        Err(_) if quick => 1,
        Err(_) => 3,
    };
    Ok(Plan {
        secs,
        procs,
        dists,
        mixes,
        backends,
        rounds,
    })
}

fn config(
    backend: &str,
    target: &str,
    plan: &Plan,
    d: Distribution,
    m: Mix,
    n: usize,
) -> BenchConfig {
    let mut cfg = BenchConfig::peer(backend, target);
    cfg.processes = n;
    cfg.duration = plan.secs;
    cfg.distribution = d;
    cfg.mix = m;
    cfg.prefill = backend == workload::LARDER;
    cfg
}

fn run_larder(plan: &Plan, dir: &TempDir) -> Result<Vec<BenchReport>, StoreError> {
    let mut medians = Vec::new();
    let mut runs = 0;
    for &d in &plan.dists {
        for &m in &plan.mixes {
            // Rounds interleave the process counts (1, 2, .., 1, 2, ..), so that a slow
            // spell of the machine lands on every N alike.
            let mut by_n: Vec<Vec<BenchReport>> = plan.procs.iter().map(|_| Vec::new()).collect();
            for _ in 0..plan.rounds {
                for (i, &n) in plan.procs.iter().enumerate() {
                    // A fresh file per run: every run starts from the same prefilled cache.
                    let path = dir.path().join(format!("larder-{runs}"));
                    runs += 1;
                    let target = path.to_str().ok_or("non-UTF-8 temp path")?;
                    let cfg = config(workload::LARDER, target, plan, d, m, n);
                    let r = workload::run_multiprocess(&cfg);
                    let _ = larder::Cache::unlink(target);
                    by_n[i].push(r?);
                }
            }
            if plan.rounds > 1 {
                print_rounds(d, m, &plan.procs, &by_n);
            }
            for mut rs in by_n {
                rs.sort_by(|a, b| a.ops_per_sec().total_cmp(&b.ops_per_sec()));
                let mid = rs.len() / 2;
                medians.push(rs.swap_remove(mid));
            }
        }
    }
    Ok(medians)
}

/// Each round's ops/s per process count, and each round's ratio to its own N=1 run.
fn print_rounds(d: Distribution, m: Mix, procs: &[usize], by_n: &[Vec<BenchReport>]) {
    let Some(base) = procs.iter().position(|&n| n == 1).map(|i| &by_n[i]) else {
        return;
    };
    for (i, &n) in procs.iter().enumerate() {
        let rates: Vec<String> = by_n[i]
            .iter()
            .map(|r| workload::format_rate(r.ops_per_sec()))
            .collect();
        let mut line = format!("larder {d} {m} N={n}: rounds {}", rates.join(" "));
        if n != 1 {
            let mut ratios: Vec<f64> = by_n[i]
                .iter()
                .zip(base)
                .map(|(r, b)| r.ops_per_sec() / b.ops_per_sec().max(1.0))
                .collect();
            let shown: Vec<String> = ratios.iter().map(|x| format!("{x:.2}x")).collect();
            ratios.sort_by(f64::total_cmp);
            line.push_str(&format!(
                "; paired N={n}/N=1 {} (median {:.2}x)",
                shown.join(" "),
                ratios[ratios.len() / 2]
            ));
        }
        println!("{line}");
    }
}

fn run_heed(plan: &Plan) -> Result<Vec<BenchReport>, StoreError> {
    let dir = TempDir::new("heed")?;
    {
        let store = HeedStore::open(dir.path())?;
        store.prefill(workload::LIVE_KEYS, workload::VALUE_LEN)?;
    }
    let target = dir.path().to_str().ok_or("non-UTF-8 temp path")?;
    run_peer(HEED, target, plan)
}

fn run_redis(plan: &Plan) -> Result<Vec<BenchReport>, StoreError> {
    let server = RedisServer::start()?;
    let socket = server.socket();
    RedisStore::connect(&socket)?.prefill(
        workload::LIVE_KEYS,
        workload::VALUE_LEN,
        workload::TTL,
    )?;
    let target = socket.to_str().ok_or("non-UTF-8 temp path")?;
    run_peer(REDIS, target, plan)
}

/// Every configuration of the plan on a peer's store at `target`, once each (the store
/// is prefilled once, before the first).
fn run_peer(backend: &str, target: &str, plan: &Plan) -> Result<Vec<BenchReport>, StoreError> {
    let mut reports = Vec::new();
    for &d in &plan.dists {
        for &m in &plan.mixes {
            for &n in &plan.procs {
                let cfg = config(backend, target, plan, d, m, n);
                reports.push(workload::run_multiprocess(&cfg)?);
            }
        }
    }
    Ok(reports)
}

/// Where the seed's re-implementation lives: beside this file in the source tree, or
/// under the current directory (a copied tree).
fn seed_script() -> Option<PathBuf> {
    [
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/seed_cache.py")),
        PathBuf::from("benches/seed_cache.py"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

/// Runs the Python script with a deadline; its one output line.
fn run_seed_once(
    script: &Path,
    plan: &Plan,
    d: Distribution,
    m: Mix,
    n: usize,
) -> Result<String, StoreError> {
    let dist = match d {
        Distribution::Uniform => "uniform",
        Distribution::Zipf(_) => "zipf",
    };
    let mut child = Command::new("python3")
        .arg(script)
        .args(["--processes", &n.to_string()])
        .args(["--seconds", &plan.secs.as_secs_f64().to_string()])
        .args(["--keys", &workload::LIVE_KEYS.to_string()])
        .args(["--value-len", &workload::VALUE_LEN.to_string()])
        .args(["--dist", dist])
        .args(["--get-percent", &m.get_percent().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()?;
    // Prefill in Python takes a few seconds; the script bounds its own waits too.
    let deadline = Instant::now() + plan.secs + Duration::from_secs(120);
    loop {
        if let Some(status) = child.try_wait()? {
            let mut out = String::new();
            if let Some(mut so) = child.stdout.take() {
                std::io::Read::read_to_string(&mut so, &mut out)?;
            }
            if !status.success() {
                return Err(format!("seed_cache.py failed ({status})").into());
            }
            return Ok(out.trim().to_string());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err("seed_cache.py did not finish in time".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn field(line: &str, name: &str) -> Option<f64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))?
        .parse()
        .ok()
}

fn run_seed(plan: &Plan) -> Result<String, StoreError> {
    let script = seed_script().ok_or("benches/seed_cache.py not found")?;
    let mut table = String::new();
    let mut base = std::collections::HashMap::new();
    for &d in &plan.dists {
        for &m in &plan.mixes {
            for &n in &plan.procs {
                let line = run_seed_once(&script, plan, d, m, n)?;
                let rate = field(&line, "ops_per_sec").ok_or("no ops_per_sec")?;
                let per = field(&line, "per_process").unwrap_or(0.0);
                let ns = |k: &str| Duration::from_nanos(field(&line, k).unwrap_or(0.0) as u64);
                let key = (d.to_string(), m.to_string());
                if n == 1 {
                    base.insert(key.clone(), rate);
                }
                let scaling = base
                    .get(&key)
                    .filter(|b| **b > 0.0)
                    .map(|b| format!("{:.2}x", rate / b))
                    .unwrap_or_else(|| "-".into());
                table.push_str(&format!(
                    "{:<8} {:<8} {:<6} {:>5} {:>4} {:>11} {:>11} {:>9} {:>9} {:>9} {:>8}\n",
                    "seed-py",
                    d.to_string(),
                    m.to_string(),
                    workload::VALUE_LEN,
                    n,
                    workload::format_rate(rate),
                    workload::format_rate(per),
                    workload::format_latency(ns("p50_ns")),
                    workload::format_latency(ns("p99_ns")),
                    workload::format_latency(ns("p999_ns")),
                    scaling,
                ));
            }
        }
    }
    Ok(table)
}

fn run() -> Result<(), StoreError> {
    let plan = plan()?;
    println!("machine:\n{}", machine());
    println!(
        "load average at start: {} (other work on the machine shows as cpu < 100%)",
        load_average()
    );
    println!(
        "workload: {} keys of {KEY_LEN} bytes, values of {} bytes, TTL {} s, {} s per run, \
         processes {:?}; one op in 64 timed, every value read checked",
        workload::LIVE_KEYS,
        workload::VALUE_LEN,
        workload::TTL.as_secs(),
        plan.secs.as_secs_f64(),
        plan.procs
    );
    let dir = TempDir::new("mp")?;
    let ticks = cpu_ticks();
    let mut reports = Vec::new();
    let mut skipped = Vec::new();
    let mut seed_table = String::new();
    for backend in &plan.backends {
        match backend.as_str() {
            "larder" => reports.extend(run_larder(&plan, &dir)?),
            "heed" => match run_heed(&plan) {
                Ok(r) => reports.extend(r),
                Err(e) => skipped.push(format!("heed: skipped ({e})")),
            },
            "redis" if !on_path("redis-server") => skipped.push(
                "redis: skipped (redis-server not on PATH; apt-get install redis-server)".into(),
            ),
            "redis" => match run_redis(&plan) {
                Ok(r) => reports.extend(r),
                Err(e) => skipped.push(format!("redis: skipped ({e})")),
            },
            "seed" if !on_path("python3") => {
                skipped.push("seed-py: skipped (python3 not on PATH)".into())
            }
            "seed" => match run_seed(&plan) {
                Ok(t) => seed_table = t,
                Err(e) => skipped.push(format!("seed-py: skipped ({e})")),
            },
            other => skipped.push(format!("{other}: skipped (unknown backend)")),
        }
    }
    println!(
        "load average at end: {}; CPU time stolen by the host during the runs: {} \
         (a worker then waits off the CPU: cpu < 100%)",
        load_average(),
        steal_share(ticks)
    );
    print!("\n{}", workload::format_table(&reports));
    print!("{seed_table}");
    for s in &skipped {
        println!("{s}");
    }
    println!();
    // The issue's ratios, from this run.
    for d in &plan.dists {
        for m in &plan.mixes {
            let find = |b: &str, n: usize| {
                reports.iter().find(|r| {
                    r.config.backend == b
                        && r.config.distribution == *d
                        && r.config.mix == *m
                        && r.config.processes == n
                })
            };
            if let Some(l) = find(workload::LARDER, 1) {
                let mut line = format!(
                    "{d} {m} N=1: larder {}/s",
                    workload::format_rate(l.ops_per_sec())
                );
                for peer in [HEED, REDIS] {
                    if let Some(p) = find(peer, 1) {
                        line.push_str(&format!(
                            ", larder/{peer} = {:.1}x",
                            l.ops_per_sec() / p.ops_per_sec().max(1.0)
                        ));
                    }
                }
                if let Some(l2) = find(workload::LARDER, 2) {
                    line.push_str(&format!(
                        "; larder N=2/N=1 = {:.2}x (cpu-eff {:.2})",
                        l2.ops_per_sec() / l.ops_per_sec().max(1.0),
                        l2.cpu_efficiency(&reports).unwrap_or(0.0)
                    ));
                }
                println!("{line}");
            }
        }
    }
    let bad: u64 = reports.iter().map(|r| r.bad_values()).sum();
    if bad != 0 {
        return Err(format!("{bad} values failed their check").into());
    }
    Ok(())
}
