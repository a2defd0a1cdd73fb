//! Space under churn (prints, asserts nothing):
//!
//! 1. Survival: an 8 MiB cache holds 5,000 entries of 40-byte values that no one touches
//!    again, while 2,000 other keys are overwritten 2,000,000 times with values of 0 to
//!    900 bytes (sessions and tokens refreshed all day, each refresh of another length
//!    leaving a dead record). Reports the untouched entries left, evictions, the log
//!    space in use, and the write amplification of the cleaner
//!    ((bytes written + bytes moved) / bytes written) beside 1/(1-f) for the live
//!    fraction f of main.
//! 2. Hit ratio under refresh churn: Zipf(0.99) gets over 200,000 keys (a miss is
//!    followed by a set), one request in ten a refresh (a set of the key with a value of
//!    another length), through larder sized to hold about 5% of the keys and through an
//!    exact LRU holding as many entries as larder held at the end.
//!
//! ```text
//! cargo bench -p larder-bench --bench churn
//! ```

use std::time::Instant;

use larder_bench::{self as workload, Distribution, ExactLru, KeySampler, Rng, TempDir};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn filler(i: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|j| (i as usize).wrapping_add(j) as u8)
        .collect()
}

fn survival(dir: &TempDir) -> Result<()> {
    const UNTOUCHED: u64 = 5000;
    const CHURNING: u64 = 2000;
    const OVERWRITES: u64 = 2_000_000;
    let cache = larder::Options::new()
        .capacity(8 << 20)
        .open(dir.file("survival")?)?;
    for i in 0..UNTOUCHED {
        cache.set(format!("session:{i}").as_bytes(), &filler(i, 40), None)?;
    }
    let mut rng = Rng::new(0x5eed);
    let started = Instant::now();
    for _ in 0..OVERWRITES {
        let k = rng.below(CHURNING);
        let len = rng.below(901) as usize;
        cache.set(format!("token:{k}").as_bytes(), &filler(k, len), None)?;
    }
    let took = started.elapsed();
    let left = (0..UNTOUCHED)
        .filter(|&i| {
            cache
                .get(format!("session:{i}").as_bytes())
                .ok()
                .flatten()
                .is_some_and(|v| v == filler(i, 40))
        })
        .count();
    let s = cache.stats();
    let logs = s.bytes_used + s.bytes_free;
    // Live records (keys, values and 16-byte headers) as a fraction of main (90% of
    // the logs).
    let f = (s.bytes_live + 16 * s.entries) as f64 / (logs as f64 * 0.9);
    let wa = (s.bytes_written + s.bytes_moved) as f64 / s.bytes_written.max(1) as f64;
    println!(
        "survival: 8 MiB, {UNTOUCHED} untouched 40-byte entries, {CHURNING} keys \
         overwritten {OVERWRITES} times (0 to 900 bytes), {:.1} s:",
        took.as_secs_f64()
    );
    println!(
        "  untouched left {left}/{UNTOUCHED}, evictions {} (index {}), entries {}, \
         live {:.1}% of main",
        s.evictions,
        s.index_evictions,
        s.entries,
        100.0 * f
    );
    println!(
        "  logs {} of {} bytes used; written {} MB, moved {} MB: write amplification \
         {wa:.3} (1/(1-f) = {:.3})",
        s.bytes_used,
        logs,
        s.bytes_written / 1_000_000,
        s.bytes_moved / 1_000_000,
        1.0 / (1.0 - f)
    );
    Ok(())
}

fn refresh_hit_ratio(dir: &TempDir) -> Result<()> {
    const KEYS: u64 = 200_000;
    const REQUESTS: u64 = 2_000_000;
    let zipf = KeySampler::new(Distribution::zipf(), KEYS)?;
    // About 5% of the keys at their mean size (32-byte keys, 16 to 512-byte values).
    let capacity = (KEYS / 20) * (16 + 32 + 264) + (4 << 20);
    let cache = larder::Options::new()
        .capacity(capacity)
        .max_value_len(1024)
        .open(dir.file("refresh")?)?;
    let mut rng = Rng::new(7);
    let mut len_rng = Rng::new(11);
    let (mut gets, mut hits) = (0u64, 0u64);
    let mut buf = Vec::with_capacity(1024);
    let mut stream = Vec::with_capacity(REQUESTS as usize);
    for _ in 0..REQUESTS {
        let k = zipf.sample(&mut rng);
        let refresh = rng.below(10) == 0;
        stream.push((k, refresh));
        let key = workload::key(k);
        let len = 16 + len_rng.below(497) as usize;
        if refresh {
            cache.set(&key, &filler(k, len), None)?;
            continue;
        }
        gets += 1;
        if cache.get_into(&key, &mut buf)? {
            hits += 1;
        } else {
            cache.set(&key, &filler(k, len), None)?;
        }
    }
    let held = cache.stats().entries as usize;
    let mut lru = ExactLru::new(held, KEYS as usize);
    let mut lru_hits = 0u64;
    for &(k, refresh) in &stream {
        let hit = lru.access(k as u32);
        if !refresh && hit {
            lru_hits += 1;
        }
    }
    let s = cache.stats();
    println!(
        "refresh churn: Zipf(0.99) over {KEYS} keys, {REQUESTS} requests, 1 in 10 a refresh \
         of another length; larder of {} MiB holding {held} entries:",
        capacity >> 20
    );
    println!(
        "  hit ratio larder {:.2}%, exact LRU of {held} entries {:.2}%; evictions {}, \
         write amplification {:.3}",
        100.0 * hits as f64 / gets as f64,
        100.0 * lru_hits as f64 / gets as f64,
        s.evictions,
        (s.bytes_written + s.bytes_moved) as f64 / s.bytes_written.max(1) as f64
    );
    Ok(())
}

fn main() -> Result<()> {
    let dir = TempDir::new("churn-bench")?;
    survival(&dir)?;
    refresh_hit_ratio(&dir)?;
    Ok(())
}
