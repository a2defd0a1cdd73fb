//! Two of the hit path's targets, measured in thread CPU time (prints, asserts nothing):
//!
//! 1. Threads: get_into hits over 1,000 cache-resident keys by one thread, then by two
//!    threads of one process on one handle at once; CPU time per operation of each.
//! 2. File size: the same 100,000 keys (32-byte keys, 256-byte values), read uniformly,
//!    in a 64 MiB file and in a 1 GiB file; CPU time per get_into hit of each. The runs
//!    alternate, three of each.
//!
//! ```text
//! cargo bench -p larder-bench --bench scaling
//! ```

use std::hint::black_box;

use larder_bench::{self as workload, thread_cpu, Rng, TempDir};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const HOT: u64 = 1000;
const THREAD_OPS: u64 = 5_000_000;
const KEYS: u64 = 100_000;
const SIZE_OPS: u64 = 3_000_000;

/// CPU ns per op of `n` get_into hits over `keys` keys in a scattered order.
fn gets(cache: &larder::Cache, keys: u64, n: u64, seed: u64) -> Result<f64> {
    let mut buf = Vec::with_capacity(workload::VALUE_LEN);
    let mut rng = Rng::new(seed);
    let start = thread_cpu();
    for _ in 0..n {
        let k = workload::key(rng.below(keys));
        if !cache.get_into(&k, &mut buf)? {
            return Err("a prefilled key was missing".into());
        }
        black_box(&buf);
    }
    Ok(thread_cpu().saturating_sub(start).as_nanos() as f64 / n as f64)
}

fn prefill(cache: &larder::Cache, keys: u64) -> Result<()> {
    let mut v = vec![0u8; workload::VALUE_LEN];
    for i in 0..keys {
        workload::write_value(i, 0, &mut v)?;
        cache.set(&workload::key(i), &v, None)?;
    }
    Ok(())
}

fn threads(dir: &TempDir) -> Result<()> {
    let cache = larder::Options::new()
        .capacity(64 << 20)
        .open(dir.file("threads")?)?;
    prefill(&cache, HOT)?;
    let one = gets(&cache, HOT, THREAD_OPS, 1)?;
    let two: Vec<f64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|t| {
                let c = cache.clone();
                s.spawn(move || gets(&c, HOT, THREAD_OPS, 2 + t).map_err(|e| e.to_string()))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| "a thread panicked".to_string())?)
            .collect::<std::result::Result<Vec<f64>, String>>()
    })?;
    let two_mean = two.iter().sum::<f64>() / two.len() as f64;
    println!(
        "threads: get_into hits over {HOT} keys, CPU ns per op: one thread {one:.1}, two \
         threads of one handle {:.1} and {:.1} ({:.2}x one thread's)",
        two[0],
        two[1],
        two_mean / one
    );
    Ok(())
}

fn sizes(dir: &TempDir) -> Result<()> {
    let small = larder::Options::new()
        .capacity(64 << 20)
        .open(dir.file("small")?)?;
    let large = larder::Options::new()
        .capacity(1 << 30)
        .open(dir.file("large")?)?;
    prefill(&small, KEYS)?;
    prefill(&large, KEYS)?;
    let (mut s, mut l) = (Vec::new(), Vec::new());
    for round in 0..3 {
        s.push(gets(&small, KEYS, SIZE_OPS, 10 + round)?);
        l.push(gets(&large, KEYS, SIZE_OPS, 10 + round)?);
    }
    let min = |v: &[f64]| v.iter().cloned().fold(f64::INFINITY, f64::min);
    println!(
        "file size: {KEYS} keys uniform, CPU ns per get_into hit (3 alternating runs): 64 MiB \
         {:.1}/{:.1}/{:.1}, 1 GiB {:.1}/{:.1}/{:.1}; best 1 GiB/64 MiB {:.2}x",
        s[0],
        s[1],
        s[2],
        l[0],
        l[1],
        l[2],
        min(&l) / min(&s)
    );
    Ok(())
}

fn main() -> Result<()> {
    let dir = TempDir::new("scaling")?;
    threads(&dir)?;
    sizes(&dir)?;
    Ok(())
}
