//! `incr` beside the ceiling (an in-process `Mutex<HashMap>` counter) and Redis
//! `INCRBY` over a unix socket (when `redis-server` is on PATH), one process, the same
//! 1,000 counters in a scattered order. Prints ns per increment and the ratios; nothing
//! is asserted.
//!
//! ```text
//! cargo bench -p larder-bench --bench counters
//! ```

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Mutex;
use std::time::Instant;

use larder_bench::{StoreError, TempDir};

#[path = "peers/redis.rs"]
#[allow(dead_code)] // the counters bench uses the server and a connection only
mod redis_peer;

const COUNTERS: usize = 1000;
const ROUNDS: usize = 5;

fn counter_keys() -> Vec<Vec<u8>> {
    (0..COUNTERS)
        .map(|i| format!("counter-{:024}", i * 7919 % COUNTERS).into_bytes())
        .collect()
}

/// Best of `ROUNDS` runs of `n` calls of `op`, in ns per call.
fn best_ns(n: usize, mut op: impl FnMut(usize)) -> f64 {
    (0..ROUNDS)
        .map(|_| {
            let t = Instant::now();
            for i in 0..n {
                op(i);
            }
            t.elapsed().as_nanos() as f64 / n as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() -> Result<(), StoreError> {
    let keys = counter_keys();
    let dir = TempDir::new("counters")?;
    let cache = larder::Options::new()
        .capacity(64 << 20)
        .open(dir.file("cache")?)?;
    let larder_ns = best_ns(1_000_000, |i| {
        black_box(cache.incr(&keys[i % COUNTERS], 1, 0, None).ok());
    });
    let ceiling: Mutex<HashMap<Box<[u8]>, i64>> = Mutex::new(HashMap::new());
    let ceiling_ns = best_ns(1_000_000, |i| {
        let mut m = ceiling.lock().unwrap_or_else(|e| e.into_inner());
        let k = &keys[i % COUNTERS][..];
        match m.get_mut(k) {
            Some(v) => *v += 1,
            None => {
                m.insert(k.into(), 1);
            }
        }
        black_box(m.len());
    });
    println!("incr, one process, {COUNTERS} counters, best of {ROUNDS} runs:");
    println!("  larder incr          {larder_ns:>9.1} ns");
    println!(
        "  ceiling (Mutex<HashMap>) {ceiling_ns:>5.1} ns   larder/ceiling {:.2}x",
        larder_ns / ceiling_ns
    );
    // A compare-and-swap increment: get_versioned (no lock once the entry has a
    // version), then set_if_version, beside a set of the same 8 bytes.
    let mut set_ns_value = 0i64;
    let set_ns = best_ns(1_000_000, |i| {
        set_ns_value += 1;
        black_box(
            cache
                .set(&keys[i % COUNTERS], &set_ns_value.to_le_bytes(), None)
                .ok(),
        );
    });
    let mut cas_failed = 0u64;
    let cas_ns = best_ns(1_000_000, |i| {
        let key = &keys[i % COUNTERS];
        match cache.get_versioned(key) {
            Ok(Some((v, version))) => {
                let n = i64::from_le_bytes(v.try_into().unwrap_or([0; 8])) + 1;
                if !matches!(
                    cache.set_if_version(key, &n.to_le_bytes(), None, version),
                    Ok(true)
                ) {
                    cas_failed += 1;
                }
            }
            _ => cas_failed += 1,
        }
    });
    println!(
        "  larder set (8 bytes) {set_ns:>9.1} ns   incr/set {:.2}x",
        larder_ns / set_ns
    );
    println!(
        "  larder cas increment {cas_ns:>9.1} ns   (get_versioned + set_if_version; \
         {cas_failed} failed) cas/set {:.2}x",
        cas_ns / set_ns
    );
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("redis-server").is_file()));
    if !on_path {
        println!(
            "  redis INCRBY: skipped (redis-server not on PATH; apt-get install redis-server)"
        );
        return Ok(());
    }
    let server = redis_peer::RedisServer::start()?;
    let mut con = redis_peer::RedisStore::connect(&server.socket())?.con;
    let mut failed = None;
    let redis_ns = best_ns(50_000, |i| {
        let r: Result<i64, _> = redis::cmd("INCRBY")
            .arg(&keys[i % COUNTERS][..])
            .arg(1)
            .query(&mut con);
        if let Err(e) = r {
            failed.get_or_insert(e);
        }
    });
    if let Some(e) = failed {
        return Err(e.into());
    }
    println!(
        "  redis INCRBY (unix socket) {redis_ns:>7.1} ns   redis/larder {:.1}x",
        redis_ns / larder_ns
    );
    // The server is killed and reaped as `server` drops.
    drop(con);
    drop(server);
    Ok(())
}
