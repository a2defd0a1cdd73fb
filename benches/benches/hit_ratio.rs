//! Hit ratio and memory efficiency.
//!
//! Hit ratio: a Zipf(0.99) stream of 10,000,000 requests over 1,000,000 keys
//! (`larder_bench`), replayed through larder sized to hold about 1%, 5% and 10% of
//! the key space (32-byte keys, 256-byte values; a miss is followed by a set), and
//! through an exact LRU holding as many entries as larder held at the end. Both see the
//! same stream.
//!
//! Memory: caches of 64 MiB with values of 100, 256 and 1,000 bytes, filled (each key set
//! and read once, so S3-FIFO keeps it) until every shard has evicted, i.e. every shard
//! is full, then given as many fresh keys again, so that the logs reach their steady
//! state (dead records included); then the bytes of metadata per entry (record headers
//! and padding, index, ghost, visited bits, headers), the slack per entry (dead records
//! and free log space; metadata and slack add up to `(file size - key and value bytes) /
//! entries`), and the fraction of the file holding keys and values.
//!
//! ```text
//! cargo bench -p larder-bench --bench hit_ratio
//! LARDER_BENCH_QUICK=1 cargo bench -p larder-bench --bench hit_ratio    # 1,000,000 requests
//! ```

use std::time::Instant;

use larder::{Cache, Options};
use larder_bench::{
    self as workload, verdict, Distribution, ExactLru, KeySampler, Rng, TempDir, KEY_LEN,
};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Seed of the request stream (the same stream for larder and the LRU).
const STREAM_SEED: u64 = 0x5eed;
/// File sizes of the memory measurements: Docker's default /dev/shm, and a larger file
/// over which the per-shard fixed costs spread thinner.
const MEMORY_CAPACITIES: [u64; 2] = [64 << 20, 256 << 20];

fn options(value_len: usize, capacity: u64) -> Options {
    workload::options_for(1, value_len).capacity(capacity)
}

/// A capacity that holds about `entries` entries of `value_len`-byte values: one
/// calibration fill of a first guess, then scaled.
fn capacity_for(dir: &TempDir, entries: u64, value_len: usize) -> Result<u64> {
    let guess = entries * (workload::record_size(value_len) as u64 + 24) + (2 << 20);
    let name = dir.file("calibrate")?;
    let held = {
        let mut c = options(value_len, guess).open(&name)?;
        workload::fill_until_every_shard_evicts(&mut c, 0, value_len, true)?;
        c.stats().entries
    };
    Cache::unlink(&name)?;
    if held == 0 {
        return Err("calibration cache held nothing".into());
    }
    Ok((guess as f64 * entries as f64 / held as f64) as u64)
}

struct HitRun {
    pct: f64,
    target: u64,
    capacity: u64,
    held: u64,
    shards: u64,
    larder: f64,
    larder_late: f64,
    lru: f64,
    lru_late: f64,
    /// Exact LRU holding the target number of entries.
    lru_target: f64,
    /// Fraction of larder's log space free at the end.
    free_frac: f64,
    secs: f64,
}

/// Hits of an exact LRU of `cap` entries over the stream: in total, and in its second
/// half.
fn replay_lru(zipf: &KeySampler, requests: u64, cap: usize) -> (u64, u64) {
    let mut lru = ExactLru::new(cap, zipf.keys() as usize);
    let mut rng = Rng::new(STREAM_SEED);
    let half = requests / 2;
    let (mut hits, mut late) = (0u64, 0u64);
    for r in 0..requests {
        let idx = zipf.sample(&mut rng);
        if lru.access(idx as u32) {
            hits += 1;
            if r >= half {
                late += 1;
            }
        }
    }
    (hits, late)
}

fn hit_ratio(dir: &TempDir, pct: f64, requests: u64, zipf: &KeySampler) -> Result<HitRun> {
    let keys = zipf.keys();
    let target = (keys as f64 * pct) as u64;
    let capacity = capacity_for(dir, target, workload::VALUE_LEN)?;
    let name = dir.file(&format!("hit-{pct}"))?;
    let cache = options(workload::VALUE_LEN, capacity).open(&name)?;
    let mut rng = Rng::new(STREAM_SEED);
    let mut k = [0u8; KEY_LEN];
    let mut v = vec![0u8; workload::VALUE_LEN];
    let mut buf = Vec::with_capacity(workload::VALUE_LEN);
    let half = requests / 2;
    let (mut hits, mut late_hits) = (0u64, 0u64);
    let start = Instant::now();
    for r in 0..requests {
        let idx = zipf.sample(&mut rng);
        workload::key_into(idx, &mut k);
        if cache.get_into(&k, &mut buf)? {
            hits += 1;
            if r >= half {
                late_hits += 1;
            }
        } else {
            workload::write_value(idx, 0, &mut v)?;
            cache.set(&k, &v, Some(workload::TTL))?;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let s = cache.stats();
    drop(cache);
    Cache::unlink(&name)?;

    let (lhits, llate) = replay_lru(zipf, requests, s.entries as usize);
    let (thits, _) = replay_lru(zipf, requests, target as usize);
    let late = (requests - half).max(1) as f64;
    Ok(HitRun {
        pct,
        target,
        capacity,
        held: s.entries,
        shards: s.shard_count,
        larder: hits as f64 / requests.max(1) as f64,
        larder_late: late_hits as f64 / late,
        lru: lhits as f64 / requests.max(1) as f64,
        lru_late: llate as f64 / late,
        lru_target: thits as f64 / requests.max(1) as f64,
        free_frac: s.bytes_free as f64 / (s.bytes_used + s.bytes_free).max(1) as f64,
        secs,
    })
}

struct MemRun {
    value_len: usize,
    entries: u64,
    bytes_live: u64,
    bytes_used: u64,
    bytes_free: u64,
    file_size: u64,
    shards: u64,
}

fn memory(dir: &TempDir, value_len: usize, capacity: u64) -> Result<MemRun> {
    let name = dir.file(&format!("mem-{value_len}-{capacity}"))?;
    let mut cache = options(value_len, capacity).open(&name)?;
    let first = workload::fill_until_every_shard_evicts(&mut cache, 0, value_len, true)?;
    // Steady state: as many fresh keys again, each set and read once.
    workload::set_keys(&mut cache, first..2 * first, value_len, true)?;
    let s = cache.stats();
    drop(cache);
    Cache::unlink(&name)?;
    Ok(MemRun {
        value_len,
        entries: s.entries,
        bytes_live: s.bytes_live,
        bytes_used: s.bytes_used,
        bytes_free: s.bytes_free,
        file_size: s.file_size,
        shards: s.shard_count,
    })
}

fn run() -> Result<()> {
    let quick = std::env::var("LARDER_BENCH_QUICK").is_ok_and(|v| v == "1");
    let requests = if quick {
        workload::HIT_RATIO_REQUESTS / 10
    } else {
        workload::HIT_RATIO_REQUESTS
    };
    let keys = workload::HIT_RATIO_KEYS;
    let dir = TempDir::new("hit")?;
    let zipf = KeySampler::new(Distribution::zipf(), keys)?;

    println!(
        "hit ratio: Zipf(0.99), {requests} requests over {keys} keys, {KEY_LEN}-byte keys, \
         {}-byte values; on a miss, set",
        workload::VALUE_LEN
    );
    println!(
        "{:>5} {:>8} {:>9} {:>8} {:>6} {:>6} {:>8} {:>8} {:>9} {:>9} {:>10} {:>7}",
        "size",
        "target",
        "capacity",
        "held",
        "shards",
        "free",
        "larder",
        "lru",
        "larder-2h",
        "lru-2h",
        "lru@target",
        "result"
    );
    for pct in [0.01, 0.05, 0.10] {
        let r = hit_ratio(&dir, pct, requests, &zipf)?;
        println!(
            "{:>4.0}% {:>8} {:>8}M {:>8} {:>6} {:>5.0}% {:>7.2}% {:>7.2}% {:>8.2}% {:>8.2}% {:>9.2}% {:>7}",
            r.pct * 100.0,
            r.target,
            r.capacity >> 20,
            r.held,
            r.shards,
            r.free_frac * 100.0,
            r.larder * 100.0,
            r.lru * 100.0,
            r.larder_late * 100.0,
            r.lru_late * 100.0,
            r.lru_target * 100.0,
            verdict(r.larder >= r.lru)
        );
        eprintln!(
            "  ({:.1} s for larder's replay, {:.0} ns per request)",
            r.secs,
            r.secs * 1e9 / requests as f64
        );
    }
    println!(
        "  (held: larder's entries at the end; lru: an exact LRU of that many entries; \
         lru@target: one of the target count; -2h: the second half of the stream only; \
         free: larder's log space free at the end; result: larder >= lru)"
    );

    println!(
        "\nmemory: caches filled (each key set, then read once) until every shard evicted, \
         then as many fresh keys again"
    );
    println!(
        "{:>5} {:>6} {:>8} {:>6} {:>11} {:>8} {:>10} {:>17} {:>10} {:>15} {:>7}",
        "file",
        "value",
        "entries",
        "shards",
        "keys+values",
        "of file",
        "meta/entry",
        "= headers + index",
        "slack/entry",
        "= dead + free",
        "result"
    );
    for cap in MEMORY_CAPACITIES {
        for v in [100, workload::VALUE_LEN, workload::LARGE_VALUE_LEN] {
            let m = memory(&dir, v, cap)?;
            let n = m.entries.max(1) as f64;
            let frac = m.bytes_live as f64 / m.file_size as f64;
            // Each record's header and the padding of its key and value to 8 bytes.
            let header = (workload::record_size(v) - KEY_LEN - v) as f64;
            // Log bytes that are neither a live key or value nor a live record's header:
            // records dropped mid-log (dead until the log's head passes them) and the pad
            // at a log's end where the next record did not fit.
            let dead = (m.bytes_used.saturating_sub(m.bytes_live) as f64 / n - header).max(0.0);
            let free = m.bytes_free as f64 / n;
            // Everything outside the logs: index, ghost, visited bits, shard headers,
            // file header, statistics and fill slots.
            let index = m.file_size.saturating_sub(m.bytes_used + m.bytes_free) as f64 / n;
            let meta = header + index;
            let slack = dead + free;
            let ok = meta <= 32.0 && (m.value_len == 100 || frac >= 0.85);
            println!(
                "{:>4}M {:>6} {:>8} {:>6} {:>11} {:>7.1}% {:>8.1} B {:>7.1} + {:>7.1} {:>8.1} B {:>6.1} + {:>6.1} {:>7}",
                m.file_size >> 20,
                m.value_len,
                m.entries,
                m.shards,
                m.bytes_live,
                frac * 100.0,
                meta,
                header,
                index,
                slack,
                dead,
                free,
                verdict(ok)
            );
        }
    }
    println!(
        "  (meta/entry: bytes of bookkeeping per entry, the record header with the key's and \
         value's padding to 8 bytes, plus the index, ghost, visited bits and headers outside \
         the logs; slack/entry: log space holding no live entry, records dropped mid-log and \
         free space; meta + slack = (file size - key and value bytes) / entries. Targets: \
         meta <= 32 B per entry, and >= 85% of the file holding keys and values at 256 and \
         1000-byte values)"
    );
    Ok(())
}

fn main() {
    if let Err(e) = run() {
        eprintln!("hit_ratio bench: {e}");
        std::process::exit(1);
    }
}
