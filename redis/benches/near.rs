//! The near cache beside Redis, in one run (needs `redis-server` on PATH; prints, asserts
//! nothing):
//!
//! 1. A near-cache hit (`NearCache::get_into` of a cached key) beside a Redis `GET` of the same
//!    key over a unix socket and over TCP loopback, 1,000 keys of 32 bytes with 256-byte
//!    values, best of 5 runs of 200,000 gets.
//! 2. A read-mostly workload: 100,000 keys in Redis, Zipf(0.99) reads through the near
//!    cache, and 1% writes made by another client (another host), whose invalidations
//!    reach the near cache through the listener. Reports the near cache's hit ratio, the
//!    Redis reads per get (the load a plain Redis client would put at 1.0), and fills
//!    refused because an invalidation raced them.
//!
//! ```text
//! cargo bench -p larder-redis --bench near
//! ```

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use larder_bench::{self as workload, Distribution, KeySampler, Rng, TempDir};
use larder_redis::testing::RedisServer;
use larder_redis::{Config, Listener, NearCache};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const HOT_KEYS: u64 = 1000;
const GETS: usize = 200_000;
const ROUNDS: usize = 5;
const WORKLOAD_OPS: u64 = 1_000_000;

/// Best of `ROUNDS` runs of `n` calls of `op`, in ns per call.
fn best_ns(n: usize, mut op: impl FnMut(usize) -> Result<()>) -> Result<f64> {
    let mut best = f64::INFINITY;
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for i in 0..n {
            op(i)?;
        }
        best = best.min(t.elapsed().as_nanos() as f64 / n as f64);
    }
    Ok(best)
}

fn main() -> Result<()> {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("redis-server").is_file()));
    if !on_path {
        println!("near: skipped (redis-server not on PATH; apt-get install redis-server)");
        return Ok(());
    }
    let server = RedisServer::start()?;
    let dir = TempDir::new("near-bench")?;
    let cache = larder::Options::new()
        .capacity(64 << 20)
        .open(dir.file("near")?)?;
    let config = Config::new([&b""[..]]);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| -> Result<()> {
        let listener_cache = cache.clone();
        let url = server.unix_url();
        let listener_config = config.clone();
        let stop = &stop;
        let listener = scope.spawn(move || {
            Listener::new(listener_cache, &url, listener_config)
                .and_then(|l| l.run(stop, |_| {}))
                .map_err(|e| e.to_string())
        });
        let result = run(&server, &cache, &config);
        stop.store(true, Ordering::Relaxed);
        listener
            .join()
            .map_err(|_| "the listener panicked")?
            .map_err(|e| format!("listener: {e}"))?;
        result
    })
}

fn run(server: &RedisServer, cache: &larder::Cache, config: &Config) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cache.near().guarded(Duration::from_secs(1))? {
        if Instant::now() > deadline {
            return Err("the listener never became current".into());
        }
        std::thread::sleep(Duration::from_millis(5)); // poll: deadline above
    }
    let mut plain_unix = redis::Client::open(server.unix_url())?.get_connection()?;
    let mut plain_tcp = redis::Client::open(server.tcp_url())?.get_connection()?;
    let mut value = vec![0u8; workload::VALUE_LEN];
    let keys: Vec<[u8; workload::KEY_LEN]> = (0..HOT_KEYS).map(workload::key).collect();
    for (i, k) in keys.iter().enumerate() {
        workload::write_value(i as u64, 0, &mut value)?;
        redis::cmd("SET")
            .arg(&k[..])
            .arg(&value[..])
            .exec(&mut plain_unix)?;
    }
    let mut near = NearCache::new(cache.clone(), &server.unix_url(), config.clone())?;
    for k in &keys {
        near.get(k)?;
    }
    let mut buf = Vec::with_capacity(workload::VALUE_LEN);
    let near_ns = best_ns(GETS, |i| {
        black_box(near.get_into(&keys[i % keys.len()], &mut buf)?);
        Ok(())
    })?;
    let s = near.stats();
    let unix_ns = best_ns(GETS / 10, |i| {
        let v: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&keys[i % keys.len()][..])
            .query(&mut plain_unix)?;
        black_box(v);
        Ok(())
    })?;
    let tcp_ns = best_ns(GETS / 10, |i| {
        let v: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&keys[i % keys.len()][..])
            .query(&mut plain_tcp)?;
        black_box(v);
        Ok(())
    })?;
    println!(
        "get of a cached key, {HOT_KEYS} keys of {} B values, best of {ROUNDS} runs:",
        workload::VALUE_LEN
    );
    println!(
        "  near-cache hit        {near_ns:>10.1} ns   ({} hits, {} Redis reads)",
        s.hits, s.redis_reads
    );
    println!(
        "  redis GET, unix       {unix_ns:>10.1} ns   {:.0}x the near hit",
        unix_ns / near_ns
    );
    println!(
        "  redis GET, tcp        {tcp_ns:>10.1} ns   {:.0}x the near hit",
        tcp_ns / near_ns
    );

    // 2. Zipf(0.99) reads, 1% writes by another client.
    let mut pipe = redis::pipe();
    for i in 0..workload::LIVE_KEYS {
        workload::write_value(i, 0, &mut value)?;
        pipe.cmd("SET")
            .arg(&workload::key(i)[..])
            .arg(&value[..])
            .ignore();
        if i % 1000 == 999 {
            pipe.exec(&mut plain_unix)?;
            pipe = redis::pipe();
        }
    }
    cache
        .near()
        .flush(&[""], larder::near::FlushReason::Requested)?;
    let mut near = NearCache::new(cache.clone(), &server.unix_url(), config.clone())?;
    let sampler = KeySampler::new(Distribution::zipf(), workload::LIVE_KEYS)?;
    let mut rng = Rng::new(7);
    let mut writes = 0u64;
    let started = Instant::now();
    for op in 0..WORKLOAD_OPS {
        let i = sampler.sample(&mut rng);
        if rng.below(100) == 0 {
            workload::write_value(i, op, &mut value)?;
            redis::cmd("SET")
                .arg(&workload::key(i)[..])
                .arg(&value[..])
                .exec(&mut plain_tcp)?;
            writes += 1;
        } else {
            black_box(near.get_into(&workload::key(i), &mut buf)?);
        }
    }
    let took = started.elapsed();
    let s = near.stats();
    let gets = s.hits + s.redis_reads;
    let ns = cache.near().stats();
    println!(
        "Zipf(0.99) over {} keys, {WORKLOAD_OPS} ops, 1% writes by another client \
         ({writes} writes), {:.1} s:",
        workload::LIVE_KEYS,
        took.as_secs_f64()
    );
    println!(
        "  near-cache hit ratio  {:>9.1}%   Redis reads per get {:.3} (a plain client: 1.000)",
        100.0 * s.hits as f64 / gets as f64,
        s.redis_reads as f64 / gets as f64
    );
    println!(
        "  fills {}, refused {} (an invalidation came first), bypasses {}, \
         invalidations applied {}",
        s.fills, s.fills_refused, s.bypasses, ns.invalidations
    );
    Ok(())
}
