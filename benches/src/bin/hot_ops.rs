//! One hot operation, `n` times, after a fixed setup: the program that
//! `benches/instructions.sh` runs under callgrind twice (with `n` and `2n`) to count the
//! instructions of one operation as the difference, setup and process start cancelling
//! out.
//!
//! ```text
//! hot_ops <larder|ceiling> <get_hit|get_miss|set_existing|set_evicting|remove|fill_hit|fill_miss> <n>
//! ```
//!
//! Keys are 32 bytes and values 256 bytes, as in every benchmark of this crate; 1,000
//! keys are set up, so their lines stay in the CPU caches (the code path without the
//! memory latency). The ceiling is an in-process `Mutex<HashMap<Box<[u8]>, Box<[u8]>>>`
//! with std's default hasher, looked up by `&[u8]`, copying the value into a reused
//! buffer.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::Mutex;

use larder_bench::{self as workload, TempDir};

/// Keys set up before the operations run.
const HOT: u64 = 1000;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The ceiling every benchmark compares with.
type Ceiling = Mutex<HashMap<Box<[u8]>, Box<[u8]>>>;

fn usage() -> ! {
    eprintln!(
        "usage: hot_ops <larder|ceiling> \
         <get_hit|get_miss|set_existing|set_evicting|remove|fill_hit|fill_miss> <n>"
    );
    std::process::exit(2)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        usage();
    }
    let n: u64 = args[3].parse().unwrap_or_else(|_| usage());
    match args[1].as_str() {
        "larder" => larder_ops(&args[2], n),
        "ceiling" => ceiling_ops(&args[2], n),
        _ => usage(),
    }
}

fn value(i: u64) -> Result<Vec<u8>> {
    let mut v = vec![0u8; workload::VALUE_LEN];
    workload::write_value(i, 0, &mut v)?;
    Ok(v)
}

/// Keys of operation `i`: the hot set, in a scattered order.
fn hot_key(i: u64) -> [u8; workload::KEY_LEN] {
    workload::key(i.wrapping_mul(7919) % HOT)
}

fn larder_ops(op: &str, n: u64) -> Result<()> {
    let dir = TempDir::new("hot-ops")?;
    // Sized so the hot set never evicts, except for `set_evicting`, which fills a small
    // file first.
    let capacity = if op == "set_evicting" {
        1 << 20
    } else {
        64 << 20
    };
    let cache = larder::Options::new()
        .capacity(capacity)
        .max_value_len(4096)
        .open(dir.file("cache")?)?;
    let v = value(0)?;
    for i in 0..HOT {
        cache.set(&workload::key(i), &v, None)?;
    }
    // Keys no operation set up: misses, and the new keys of `set_evicting` and the
    // removed keys of `remove` (set up for every n alike).
    let fresh = |i: u64| workload::key(HOT + i);
    if op == "set_evicting" {
        for i in 0..20_000 {
            cache.set(&fresh(i), &v, None)?;
        }
        assert!(
            cache.stats().evictions > 0,
            "the setup did not fill the file"
        );
    }
    if op == "remove" {
        for i in 0..50_000 {
            cache.set(&fresh(i), &v, None)?;
        }
    }
    let mut buf = Vec::with_capacity(workload::VALUE_LEN);
    match op {
        "get_hit" => {
            for i in 0..n {
                black_box(cache.get_into(&hot_key(i), &mut buf)?);
            }
        }
        "get_miss" => {
            for i in 0..n {
                black_box(cache.get_into(&fresh(i), &mut buf)?);
            }
        }
        "set_existing" => {
            for i in 0..n {
                cache.set(&hot_key(i), &v, None)?;
            }
        }
        "set_evicting" => {
            for i in 0..n {
                cache.set(&fresh(20_000 + i), &v, None)?;
            }
        }
        "remove" => {
            for i in 0..n {
                black_box(cache.remove(&fresh(i))?);
            }
        }
        "fill_hit" => {
            for i in 0..n {
                let got = cache.get_or_insert_with(&hot_key(i), None, || {
                    Err::<Vec<u8>, larder::Error>(larder::Error::WouldBlock)
                })?;
                black_box(got);
            }
        }
        // A fill of a missing key: the miss, the fill slot, the value computed (a copy)
        // and stored.
        "fill_miss" => {
            for i in 0..n {
                let got = cache
                    .get_or_insert_with(&fresh(i), None, || Ok::<_, larder::Error>(v.clone()))?;
                black_box(got);
            }
        }
        _ => usage(),
    }
    Ok(())
}

fn ceiling_ops(op: &str, n: u64) -> Result<()> {
    let map: Ceiling = Mutex::new(HashMap::new());
    let v = value(0)?;
    let lock = || map.lock().unwrap_or_else(|e| e.into_inner());
    for i in 0..HOT {
        lock().insert(workload::key(i).into(), v.clone().into());
    }
    let fresh = |i: u64| workload::key(HOT + i);
    if op == "remove" {
        for i in 0..50_000 {
            lock().insert(fresh(i).into(), v.clone().into());
        }
    }
    let mut buf = Vec::with_capacity(workload::VALUE_LEN);
    let get = |key: &[u8], buf: &mut Vec<u8>| -> bool {
        let m = lock();
        match m.get(key) {
            Some(v) => {
                buf.clear();
                buf.extend_from_slice(v);
                true
            }
            None => false,
        }
    };
    match op {
        // A single-flight hit is a hit: the ceiling has no fill slots.
        "get_hit" | "fill_hit" => {
            for i in 0..n {
                black_box(get(&hot_key(i), &mut buf));
            }
        }
        "get_miss" => {
            for i in 0..n {
                black_box(get(&fresh(i), &mut buf));
            }
        }
        "set_existing" => {
            for i in 0..n {
                lock().insert(hot_key(i).into(), v.clone().into());
            }
        }
        // Bounded like a full cache: insert a new key, remove an old one.
        "set_evicting" => {
            for i in 0..n {
                let mut m = lock();
                m.insert(fresh(i).into(), v.clone().into());
                m.remove(&workload::key(i)[..]);
            }
        }
        "remove" => {
            for i in 0..n {
                black_box(lock().remove(&fresh(i)[..]));
            }
        }
        // A miss, then the value computed (a copy) and inserted.
        "fill_miss" => {
            for i in 0..n {
                if !get(&fresh(i), &mut buf) {
                    let computed = v.clone();
                    lock().insert(fresh(i).into(), computed.clone().into());
                    black_box(computed);
                }
            }
        }
        _ => usage(),
    }
    Ok(())
}
