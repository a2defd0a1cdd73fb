//! Single operations, each beside the same operation on the ceiling (an in-process
//! `Mutex<HashMap<Box<[u8]>, Box<[u8]>>>` with std's default hasher, looked up by
//! `&[u8]`) and on LMDB through heed (one read transaction per get, one write
//! transaction per set, `NO_SYNC`), with the workload of `larder_bench`: 100,000
//! live keys of 32 bytes, 256-byte values, uniform and Zipf(0.99) access; and gets of
//! 1,000 of those keys only (`get_into-hot`), whose lines all stay in the CPU caches,
//! which compares the code paths without the memory latency.
//!
//! ```text
//! cargo bench -p larder-bench --bench ops
//! LARDER_BENCH_QUICK=1 cargo bench -p larder-bench --bench ops    # short measurements, for a smoke run
//! LARDER_BENCH_CLOCK=cpu cargo bench -p larder-bench --bench ops   # thread CPU time, on a shared machine
//! ```
//! Figures are criterion's mean per operation over batches. At the end the bench prints
//! the ratios (larder/ceiling, heed/larder) read back from criterion's estimates, and the
//! per-operation latency percentiles of a separate timed pass (p99.9 of a set that
//! evicts).

use std::collections::{HashMap, VecDeque};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{BatchSize, BenchmarkGroup, Criterion, Throughput};
use heed::types::Bytes;
use heed::{Database, Env, EnvFlags, EnvOpenOptions};
use larder::Cache;
use larder_bench::{
    self as workload, load_average, thread_cpu, verdict, Distribution, Histogram, KeySampler, Rng,
    TempDir, KEY_LEN,
};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Sampled key indices per access stream (a power of two, so a mask wraps the cursor).
const STREAM: usize = 1 << 20;
/// Capacity of the cache that the evicting sets run on: small, so every set evicts.
const EVICT_CAPACITY: u64 = 8 << 20;
/// Distinct keys the remove benchmark cycles through.
const REMOVE_POOL: u64 = 1 << 16;
/// Keys of the cache-resident gets: few enough that their buckets, records and the
/// ceiling's nodes all stay in the CPU caches, so the figure is the code path alone.
const HOT_KEYS: usize = 1000;
/// First index of keys that are never in the caches (gets that miss, fresh keys).
const FRESH_BASE: u64 = 1 << 40;

// ----- the ceiling ------------------------------------------------------------------------

/// The ceiling's map: keys and values boxed, looked up by `&[u8]`, std's default hasher.
type Map = HashMap<Box<[u8]>, Box<[u8]>>;

/// An in-process map behind one mutex: what a hit costs without sharing anything
/// between processes.
struct Ceiling {
    map: Mutex<Map>,
}

impl Ceiling {
    fn new() -> Ceiling {
        Ceiling {
            map: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Map> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.lock().get(key).map(|v| v.to_vec())
    }

    fn get_into(&self, key: &[u8], buf: &mut Vec<u8>) -> bool {
        match self.lock().get(key) {
            Some(v) => {
                buf.clear();
                buf.extend_from_slice(v);
                true
            }
            None => false,
        }
    }

    /// Overwrites in place when the length matches (the cheapest a map can do), else
    /// inserts.
    fn set(&self, key: &[u8], value: &[u8]) {
        let mut m = self.lock();
        match m.get_mut(key) {
            Some(v) if v.len() == value.len() => v.copy_from_slice(value),
            _ => {
                m.insert(key.into(), value.into());
            }
        }
    }

    fn remove(&self, key: &[u8]) -> bool {
        self.lock().remove(key).is_some()
    }

    /// A counter as `Cache::incr` keeps it: 8 little-endian bytes, added to in place.
    fn incr(&self, key: &[u8], delta: i64) -> i64 {
        let mut m = self.lock();
        if let Some(v) = m.get_mut(key) {
            if let Ok(w) = <[u8; 8]>::try_from(&v[..]) {
                let n = i64::from_le_bytes(w) + delta;
                v.copy_from_slice(&n.to_le_bytes());
                return n;
            }
        }
        m.insert(key.into(), delta.to_le_bytes().into());
        delta
    }

    fn get_or_insert_with(&self, key: &[u8], f: impl FnOnce() -> Vec<u8>) -> Vec<u8> {
        let mut m = self.lock();
        if let Some(v) = m.get(key) {
            return v.to_vec();
        }
        let v = f();
        m.insert(key.into(), v.clone().into());
        v
    }
}

/// The ceiling bounded to a number of entries, evicting the oldest (FIFO): the
/// in-process counterpart of a set that evicts.
struct BoundedCeiling {
    inner: Mutex<(Map, VecDeque<Box<[u8]>>)>,
    cap: usize,
}

impl BoundedCeiling {
    fn set(&self, key: &[u8], value: &[u8]) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (map, order) = &mut *g;
        if map.insert(key.into(), value.into()).is_none() {
            order.push_back(key.into());
            if order.len() > self.cap {
                if let Some(old) = order.pop_front() {
                    map.remove(&old);
                }
            }
        }
    }
}

// ----- LMDB through heed --------------------------------------------------------------------

struct Heed {
    env: Env,
    main: Database<Bytes, Bytes>,
    evict: Database<Bytes, Bytes>,
    /// Keys of `evict` in insertion order, oldest first, and its bound.
    order: VecDeque<u64>,
    cap: usize,
}

impl Heed {
    fn open(dir: &Path) -> Result<Heed> {
        let mut opts = EnvOpenOptions::new();
        opts.map_size(1 << 30).max_dbs(2);
        // SAFETY: NO_SYNC only gives up durability across a system crash, which a
        // cache does not need.
        unsafe {
            opts.flags(EnvFlags::NO_SYNC);
        }
        // SAFETY: this process opens the environment once, and only LMDB touches its
        // files.
        let env = unsafe { opts.open(dir)? };
        let mut w = env.write_txn()?;
        let main = env.create_database(&mut w, Some("main"))?;
        let evict = env.create_database(&mut w, Some("evict"))?;
        w.commit()?;
        Ok(Heed {
            env,
            main,
            evict,
            order: VecDeque::new(),
            cap: 0,
        })
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let txn = self.env.read_txn()?;
        Ok(self.main.get(&txn, key)?.map(|v| v.to_vec()))
    }

    fn get_into(&self, key: &[u8], buf: &mut Vec<u8>) -> Result<bool> {
        let txn = self.env.read_txn()?;
        Ok(match self.main.get(&txn, key)? {
            Some(v) => {
                buf.clear();
                buf.extend_from_slice(v);
                true
            }
            None => false,
        })
    }

    fn set(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let mut w = self.env.write_txn()?;
        self.main.put(&mut w, key, value)?;
        w.commit()?;
        Ok(())
    }

    fn remove(&self, key: &[u8]) -> Result<bool> {
        let mut w = self.env.write_txn()?;
        let found = self.main.delete(&mut w, key)?;
        w.commit()?;
        Ok(found)
    }

    fn get_or_insert_with(&self, key: &[u8], f: impl FnOnce() -> Vec<u8>) -> Result<Vec<u8>> {
        if let Some(v) = self.get(key)? {
            return Ok(v);
        }
        let v = f();
        self.set(key, &v)?;
        Ok(v)
    }

    /// A set into the bounded database that deletes its oldest key in the same
    /// transaction once it holds `cap` keys.
    fn set_evicting(&mut self, index: u64, value: &[u8]) -> Result<()> {
        let mut w = self.env.write_txn()?;
        self.evict.put(&mut w, &workload::key(index), value)?;
        self.order.push_back(index);
        if self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.evict.delete(&mut w, &workload::key(old))?;
            }
        }
        w.commit()?;
        Ok(())
    }
}

// ----- fixture --------------------------------------------------------------------------

struct Fixture {
    _dir: TempDir,
    keys: Vec<[u8; KEY_LEN]>,
    miss_keys: Vec<[u8; KEY_LEN]>,
    values: Vec<Vec<u8>>,
    streams: Vec<(Distribution, Vec<u32>)>,
    larder: Cache,
    larder_evict: Cache,
    ceiling: Ceiling,
    bounded: BoundedCeiling,
    heed: Heed,
    /// Next fresh key index for evicting sets.
    fresh: u64,
}

fn fixture() -> Result<Fixture> {
    let n = workload::LIVE_KEYS;
    let dir = TempDir::new("ops")?;
    let keys: Vec<_> = (0..n).map(workload::key).collect();
    let miss_keys: Vec<_> = (0..n).map(|i| workload::key(FRESH_BASE / 2 + i)).collect();
    let values = (0..n)
        .map(|i| workload::value(i, 0, workload::VALUE_LEN))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let mut streams = Vec::new();
    for (d, seed) in [(Distribution::Uniform, 1), (Distribution::zipf(), 2)] {
        let sampler = KeySampler::new(d, n)?;
        let mut rng = Rng::new(seed);
        let s = (0..STREAM)
            .map(|_| sampler.sample(&mut rng) as u32)
            .collect();
        streams.push((d, s));
    }

    let mut larder = workload::options_for(n, workload::VALUE_LEN).open(&dir.file("larder")?)?;
    workload::prefill(&mut larder, n, workload::VALUE_LEN)?;
    let entries = larder.stats().entries;
    if entries != n {
        return Err(format!("larder holds {entries} of {n} prefilled keys").into());
    }

    let mut larder_evict = workload::options_for(n, workload::VALUE_LEN)
        .capacity(EVICT_CAPACITY)
        .open(&dir.file("larder-evict")?)?;
    let fresh = FRESH_BASE
        + workload::fill_until_every_shard_evicts(
            &mut larder_evict,
            FRESH_BASE,
            workload::VALUE_LEN,
            false,
        )?;
    let cap = larder_evict.stats().entries as usize;

    let ceiling = Ceiling::new();
    for (k, v) in keys.iter().zip(&values) {
        ceiling.set(k, v);
    }
    let bounded = BoundedCeiling {
        inner: Mutex::new((HashMap::new(), VecDeque::new())),
        cap,
    };
    let hdir = dir.path().join("heed");
    std::fs::create_dir(&hdir)?;
    let mut heed = Heed::open(&hdir)?;
    {
        let mut w = heed.env.write_txn()?;
        for (k, v) in keys.iter().zip(&values) {
            heed.main.put(&mut w, k, v)?;
        }
        w.commit()?;
    }
    heed.cap = cap;
    for j in 0..cap as u64 {
        let idx = FRESH_BASE + j;
        bounded.set(&workload::key(idx), &values[(j % n) as usize]);
        heed.set_evicting(idx, &values[(j % n) as usize])?;
    }
    println!(
        "fixture: {n} keys in larder ({} shards, {} MiB), the ceiling and heed; evicting \
         caches bounded at {cap} entries (larder {} MiB)",
        larder.stats().shard_count,
        larder.stats().file_size >> 20,
        larder_evict.stats().file_size >> 20
    );
    Ok(Fixture {
        _dir: dir,
        keys,
        miss_keys,
        values,
        streams,
        larder,
        larder_evict,
        ceiling,
        bounded,
        heed,
        fresh: fresh.max(FRESH_BASE + cap as u64),
    })
}

// ----- benchmarks -------------------------------------------------------------------------

/// A cursor over an access stream.
struct Cursor<'a> {
    s: &'a [u32],
    pos: usize,
}

impl Cursor<'_> {
    #[inline]
    fn next(&mut self) -> usize {
        let i = self.s[self.pos & (STREAM - 1)] as usize;
        self.pos = self.pos.wrapping_add(1);
        i
    }
}

/// Adds the benchmark `id` to `g`: `op` on the key index that each iteration draws
/// from `stream`, its result kept from the optimiser.
fn keyed<M: Measurement, O>(
    g: &mut BenchmarkGroup<'_, M>,
    id: &str,
    stream: &[u32],
    mut op: impl FnMut(usize) -> O,
) {
    g.bench_function(id, |b| {
        let mut k = Cursor { s: stream, pos: 0 };
        b.iter(|| black_box(op(k.next())))
    });
}

fn keyed_ops<M: Measurement>(c: &mut Criterion<M>, f: &mut Fixture) {
    let streams = std::mem::take(&mut f.streams);
    for (d, stream) in &streams {
        let dn = d.to_string();

        let mut g = c.benchmark_group(format!("get_hit-{dn}"));
        keyed(&mut g, "larder", stream, |i| f.larder.get(&f.keys[i]));
        keyed(&mut g, "ceiling", stream, |i| f.ceiling.get(&f.keys[i]));
        keyed(&mut g, "heed", stream, |i| f.heed.get(&f.keys[i]).ok());
        g.finish();

        let mut g = c.benchmark_group(format!("get_into-{dn}"));
        let mut buf = Vec::with_capacity(workload::VALUE_LEN);
        keyed(&mut g, "larder", stream, |i| {
            f.larder.get_into(&f.keys[i], &mut buf).ok()
        });
        keyed(&mut g, "ceiling", stream, |i| {
            f.ceiling.get_into(&f.keys[i], &mut buf)
        });
        keyed(&mut g, "heed", stream, |i| {
            f.heed.get_into(&f.keys[i], &mut buf).ok()
        });
        g.finish();

        let mut g = c.benchmark_group(format!("get_miss-{dn}"));
        keyed(&mut g, "larder", stream, |i| {
            f.larder.get_into(&f.miss_keys[i], &mut buf).ok()
        });
        keyed(&mut g, "ceiling", stream, |i| {
            f.ceiling.get_into(&f.miss_keys[i], &mut buf)
        });
        keyed(&mut g, "heed", stream, |i| {
            f.heed.get_into(&f.miss_keys[i], &mut buf).ok()
        });
        g.finish();

        let mut g = c.benchmark_group(format!("single_flight_hit-{dn}"));
        keyed(&mut g, "larder", stream, |i| {
            f.larder
                .get_or_insert_with(&f.keys[i], Some(workload::TTL), || {
                    Ok::<_, larder::Error>(f.values[i].clone())
                })
                .ok()
        });
        keyed(&mut g, "ceiling", stream, |i| {
            f.ceiling
                .get_or_insert_with(&f.keys[i], || f.values[i].clone())
        });
        keyed(&mut g, "heed", stream, |i| {
            f.heed
                .get_or_insert_with(&f.keys[i], || f.values[i].clone())
                .ok()
        });
        g.finish();

        let before = f.larder.stats();
        let mut g = c.benchmark_group(format!("set_existing-{dn}"));
        keyed(&mut g, "larder", stream, |i| {
            f.larder
                .set(&f.keys[i], &f.values[i], Some(workload::TTL))
                .ok()
        });
        keyed(&mut g, "ceiling", stream, |i| {
            f.ceiling.set(&f.keys[i], &f.values[i])
        });
        keyed(&mut g, "heed", stream, |i| {
            f.heed.set(&f.keys[i], &f.values[i]).ok()
        });
        g.finish();
        let after = f.larder.stats();
        println!(
            "set_existing-{dn}: larder did {} updates, {} inserts (keys it had evicted), \
             {} evictions",
            after.updates - before.updates,
            after.inserts - before.inserts,
            after.evictions - before.evictions
        );
        // Put back what the sets may have evicted, so later groups hit.
        workload::prefill(&mut f.larder, workload::LIVE_KEYS, workload::VALUE_LEN)
            .map_err(|e| e.to_string())
            .ok();
    }
    f.streams = streams;
}

/// Keys per `get_many_into` batch (the issue's measure: 16 keys in one call against 16
/// single gets).
const BATCH: usize = 16;

/// Counters and batches: `incr` of an existing counter beside a set over an existing
/// key (same length, in place) and beside the ceiling's counter; `get_many_into` of 16
/// keys beside 16 `get_into`s, and the ceiling's 16 gets.
fn counters_and_batches<M: Measurement>(c: &mut Criterion<M>, f: &mut Fixture) {
    let counters: Vec<Vec<u8>> = (0..HOT_KEYS)
        .map(|i| format!("counter-{i:024}").into_bytes())
        .collect();
    for k in &counters {
        f.larder.incr(k, 1, 0, None).ok();
        f.ceiling.incr(k, 1);
    }
    let order: Vec<usize> = (0..HOT_KEYS).map(|i| i * 7919 % HOT_KEYS).collect();
    let mut g = c.benchmark_group("incr-hot");
    let mut pos = 0;
    g.bench_function("larder incr", |b| {
        b.iter(|| {
            pos = (pos + 1) % HOT_KEYS;
            black_box(f.larder.incr(&counters[order[pos]], 1, 0, None).ok())
        })
    });
    g.bench_function("larder set over an 8-byte value", |b| {
        b.iter(|| {
            pos = (pos + 1) % HOT_KEYS;
            black_box(
                f.larder
                    .set(&counters[order[pos]], &7i64.to_le_bytes(), None)
                    .ok(),
            )
        })
    });
    g.bench_function("ceiling incr", |b| {
        b.iter(|| {
            pos = (pos + 1) % HOT_KEYS;
            black_box(f.ceiling.incr(&counters[order[pos]], 1))
        })
    });
    g.finish();

    let batches: Vec<Vec<&[u8]>> = (0..HOT_KEYS / BATCH)
        .map(|b| {
            (0..BATCH)
                .map(|i| &f.keys[order[b * BATCH + i]][..])
                .collect()
        })
        .collect();
    let mut bufs: Vec<Vec<u8>> = (0..BATCH)
        .map(|_| Vec::with_capacity(workload::VALUE_LEN))
        .collect();
    let mut found = [false; BATCH];
    let mut buf = Vec::with_capacity(workload::VALUE_LEN);
    let mut g = c.benchmark_group("get16-hot");
    let mut at = 0;
    g.bench_function("larder get_many_into", |b| {
        b.iter(|| {
            at = (at + 1) % batches.len();
            black_box(
                f.larder
                    .get_many_into(&batches[at], &mut bufs, &mut found)
                    .ok(),
            )
        })
    });
    g.bench_function("larder 16 get_into", |b| {
        b.iter(|| {
            at = (at + 1) % batches.len();
            let mut n = 0;
            for k in &batches[at] {
                n += usize::from(f.larder.get_into(k, &mut buf).unwrap_or(false));
            }
            black_box(n)
        })
    });
    g.bench_function("ceiling 16 get_into", |b| {
        b.iter(|| {
            at = (at + 1) % batches.len();
            let mut n = 0;
            for k in &batches[at] {
                n += usize::from(f.ceiling.get_into(k, &mut buf));
            }
            black_box(n)
        })
    });
    g.finish();
}

/// Gets of [`HOT_KEYS`] keys in a fixed scattered order: every line they touch stays
/// cached, so this compares the work of each path rather than memory latency.
fn hot_gets<M: Measurement>(c: &mut Criterion<M>, f: &mut Fixture) {
    let order: Vec<usize> = (0..HOT_KEYS).map(|i| i * 7919 % HOT_KEYS).collect();
    let cur = || order.iter().copied().cycle();
    let mut buf = Vec::with_capacity(workload::VALUE_LEN);
    let mut g = c.benchmark_group("get_into-hot");
    g.bench_function("larder", |b| {
        let mut k = cur();
        b.iter(|| {
            let i = k.next().unwrap_or(0);
            black_box(f.larder.get_into(&f.keys[i], &mut buf).ok())
        })
    });
    g.bench_function("ceiling", |b| {
        let mut k = cur();
        b.iter(|| {
            let i = k.next().unwrap_or(0);
            black_box(f.ceiling.get_into(&f.keys[i], &mut buf))
        })
    });
    g.bench_function("heed", |b| {
        let mut k = cur();
        b.iter(|| {
            let i = k.next().unwrap_or(0);
            black_box(f.heed.get_into(&f.keys[i], &mut buf).ok())
        })
    });
    g.finish();
}

fn remove_and_evict<M: Measurement>(c: &mut Criterion<M>, f: &mut Fixture) {
    let pool: Vec<[u8; KEY_LEN]> = (0..REMOVE_POOL)
        .map(|i| workload::key(FRESH_BASE / 4 + i))
        .collect();
    let value = &f.values[0];
    // Each removal takes a key that the untimed setup has just stored.
    let mut g = c.benchmark_group("remove-fresh");
    let mut next = 0usize;
    g.bench_function("larder", |b| {
        b.iter_batched(
            || {
                let k = &pool[next % pool.len()];
                next += 1;
                let _ = f.larder.set(&k[..], value, Some(workload::TTL));
                k
            },
            |k| black_box(f.larder.remove(&k[..]).ok()),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("ceiling", |b| {
        b.iter_batched(
            || {
                let k = &pool[next % pool.len()];
                next += 1;
                f.ceiling.set(&k[..], value);
                k
            },
            |k| black_box(f.ceiling.remove(&k[..])),
            BatchSize::SmallInput,
        )
    });
    g.bench_function("heed", |b| {
        b.iter_batched(
            || {
                let k = &pool[next % pool.len()];
                next += 1;
                let _ = f.heed.set(&k[..], value);
                k
            },
            |k| black_box(f.heed.remove(&k[..]).ok()),
            BatchSize::SmallInput,
        )
    });
    g.finish();

    let n = workload::LIVE_KEYS;
    let mut g = c.benchmark_group("set_evict-fresh");
    let mut key = [0u8; KEY_LEN];
    g.bench_function("larder", |b| {
        b.iter(|| {
            let i = f.fresh;
            f.fresh += 1;
            workload::key_into(i, &mut key);
            black_box(
                f.larder_evict
                    .set(&key, &f.values[(i % n) as usize], Some(workload::TTL))
                    .ok(),
            )
        })
    });
    g.bench_function("ceiling", |b| {
        b.iter(|| {
            let i = f.fresh;
            f.fresh += 1;
            workload::key_into(i, &mut key);
            f.bounded.set(&key, &f.values[(i % n) as usize])
        })
    });
    g.bench_function("heed", |b| {
        b.iter(|| {
            let i = f.fresh;
            f.fresh += 1;
            black_box(f.heed.set_evicting(i, &f.values[(i % n) as usize]).ok())
        })
    });
    g.finish();
}

// ----- summary ---------------------------------------------------------------------------

fn criterion_dir() -> PathBuf {
    if let Some(h) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(h);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    target.join("criterion")
}

/// Criterion's mean estimate (ns per iteration) of one benchmark of this run.
fn mean_ns(group: &str, id: &str) -> Option<f64> {
    let p = criterion_dir()
        .join(group)
        .join(id)
        .join("new")
        .join("estimates.json");
    let text = std::fs::read_to_string(p).ok()?;
    let rest = &text[text.find("\"mean\"")?..];
    let rest = &rest[rest.find("\"point_estimate\":")? + "\"point_estimate\":".len()..];
    let end = rest.find([',', '}'])?;
    rest[..end].trim().parse().ok()
}

fn summary(clock: &str) {
    println!(
        "\nmeans per operation over batches, ns of {clock} time (criterion's estimates):\n\
         {:<20} {:<8} {:>10} {:>10} {:>10} {:>15} {:>12}",
        "op", "access", "ceiling", "larder", "heed", "larder/ceiling", "heed/larder"
    );
    let ops = [
        "get_hit",
        "get_into",
        "get_miss",
        "single_flight_hit",
        "set_existing",
    ];
    let mut rows = Vec::new();
    for op in ops {
        for d in ["uniform", "zipf"] {
            rows.push((op.to_string(), d.to_string()));
        }
    }
    rows.push(("get_into".into(), "hot".into()));
    rows.push(("remove".into(), "fresh".into()));
    rows.push(("set_evict".into(), "fresh".into()));
    let fmt = |x: Option<f64>| x.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into());
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    };
    for (op, d) in &rows {
        let g = format!("{op}-{d}");
        let (c, l, h) = (
            mean_ns(&g, "ceiling"),
            mean_ns(&g, "larder"),
            mean_ns(&g, "heed"),
        );
        println!(
            "{:<20} {:<8} {:>10} {:>10} {:>10} {:>15} {:>12}",
            op,
            d,
            fmt(c),
            fmt(l),
            fmt(h),
            ratio(l, c),
            ratio(h, l)
        );
    }
    println!("\ntargets (issue 5), from this run:");
    for d in ["uniform", "zipf"] {
        let gi = format!("get_into-{d}");
        let (c, l, h) = (
            mean_ns(&gi, "ceiling"),
            mean_ns(&gi, "larder"),
            mean_ns(&gi, "heed"),
        );
        let s = mean_ns(&format!("set_existing-{d}"), "larder");
        if let (Some(c), Some(l)) = (c, l) {
            let r = l / c;
            println!(
                "  {d}: get hit (get_into, value copied into a reused buffer as the ceiling \
                 does) {r:.2}x the ceiling: {} (target <= 1.5x)",
                verdict(r <= 1.5)
            );
        }
        if let (Some(h), Some(l)) = (h, l) {
            let r = h / l;
            println!(
                "  {d}: heed get {r:.1}x slower than larder's: {} (target >= 5x)",
                verdict(r >= 5.0)
            );
        }
        if let (Some(s), Some(l)) = (s, l) {
            let r = s / l;
            println!(
                "  {d}: set over an existing key {r:.2}x a get hit: {} (target <= 2x)",
                verdict(r <= 2.0)
            );
        }
    }
}

/// Per-operation latency of larder, each operation timed alone (two clock reads each,
/// about 40 ns, included): the tail that means over batches hide.
fn latency_pass(f: &mut Fixture, quick: bool) -> Result<()> {
    let n = if quick { 200_000 } else { 2_000_000 };
    let mut rng = Rng::new(9);
    let uniform = KeySampler::new(Distribution::Uniform, workload::LIVE_KEYS)?;
    let mut get = Histogram::new();
    let mut set = Histogram::new();
    let mut evict = Histogram::new();
    let mut buf = Vec::with_capacity(workload::VALUE_LEN);
    let ev_before = f.larder_evict.stats().evictions;
    for _ in 0..n {
        let i = uniform.sample(&mut rng) as usize;
        let t = Instant::now();
        black_box(f.larder.get_into(&f.keys[i], &mut buf)?);
        get.record_duration(t.elapsed());
        let t = Instant::now();
        f.larder
            .set(&f.keys[i], &f.values[i], Some(workload::TTL))?;
        set.record_duration(t.elapsed());
        let k = workload::key(f.fresh);
        f.fresh += 1;
        let t = Instant::now();
        f.larder_evict.set(&k, &f.values[i], Some(workload::TTL))?;
        evict.record_duration(t.elapsed());
    }
    let evictions = f.larder_evict.stats().evictions - ev_before;
    println!("\nlarder per-operation latency, {n} of each, uniform keys, each timed alone:");
    for (name, h) in [
        ("get_into hit", &get),
        ("set existing", &set),
        ("set that evicts", &evict),
    ] {
        println!(
            "  {:<16} p50 {:>9} p99 {:>9} p99.9 {:>9} max {:>9}",
            name,
            workload::format_latency(h.quantile_duration(0.5)),
            workload::format_latency(h.quantile_duration(0.99)),
            workload::format_latency(h.quantile_duration(0.999)),
            workload::format_latency(Duration::from_nanos(h.max())),
        );
    }
    println!("  ({evictions} evictions during {n} evicting sets)");
    Ok(())
}

/// Criterion's measurement by the benchmark thread's CPU time instead of wall time: on
/// a machine shared with other work, time spent preempted is not counted (cache
/// pollution from that work still is). Chosen with `LARDER_BENCH_CLOCK=cpu`.
struct ThreadCpu;

impl Measurement for ThreadCpu {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        thread_cpu()
    }
    fn end(&self, i: Duration) -> Duration {
        thread_cpu().saturating_sub(i)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuNs
    }
}

/// Formats nanoseconds of CPU time as criterion formats wall time.
struct CpuNs;

impl ValueFormatter for CpuNs {
    fn scale_values(&self, ns: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = if ns < 1e3 {
            (1.0, "ns cpu")
        } else if ns < 1e6 {
            (1e-3, "µs cpu")
        } else {
            (1e-6, "ms cpu")
        };
        for v in values {
            *v *= factor;
        }
        unit
    }
    fn scale_throughputs(&self, _ns: f64, t: &Throughput, values: &mut [f64]) -> &'static str {
        let per_iter = match *t {
            Throughput::Bytes(n) | Throughput::BytesDecimal(n) | Throughput::Elements(n) => {
                n as f64
            }
        };
        for v in values {
            *v = per_iter * 1e9 / v.max(1e-9);
        }
        "/s cpu"
    }
    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

fn run<M: Measurement>(mut c: Criterion<M>, quick: bool, clock: &str) -> Result<()> {
    c = if quick {
        c.warm_up_time(Duration::from_millis(200))
            .measurement_time(Duration::from_millis(500))
            .sample_size(10)
    } else {
        c.warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(2))
            .sample_size(50)
    }
    .configure_from_args();
    println!(
        "clock: {clock} time; load average at start: {} (other work on the machine \
         inflates wall-time figures)",
        load_average()
    );
    let mut f = fixture()?;
    keyed_ops(&mut c, &mut f);
    hot_gets(&mut c, &mut f);
    counters_and_batches(&mut c, &mut f);
    remove_and_evict(&mut c, &mut f);
    c.final_summary();
    println!("\nload average at end: {}", load_average());
    summary(clock);
    latency_pass(&mut f, quick)
}

fn main() {
    let quick = std::env::var("LARDER_BENCH_QUICK").is_ok_and(|v| v == "1");
    let cpu = std::env::var("LARDER_BENCH_CLOCK").is_ok_and(|v| v == "cpu");
    let result = if cpu {
        run(
            Criterion::default().with_measurement(ThreadCpu),
            quick,
            "thread CPU",
        )
    } else {
        run(Criterion::default(), quick, "wall")
    };
    if let Err(e) = result {
        eprintln!("ops bench: {e}");
        std::process::exit(1);
    }
}
