//! The `hostile_file`, `hostile_header` and `header` harnesses: cache files with
//! fuzzer-chosen bytes, opened through the real open path.
//!
//! Each process builds a few valid cache images once (entries, dead records, wrapped
//! logs, ghosts, TTLs). Each input copies one to a fresh file, applies its word writes,
//! opens the file with a tiny lock timeout, runs its operations and `verify()`. Allowed:
//! a clean error, or a working cache. Not allowed: a panic (which includes an
//! out-of-bounds region access, a debug assertion in larder), an endless loop
//! (libFuzzer's -timeout), unbounded memory. After a successful `repair()`, `verify()`
//! must find every shard consistent and a set must read back.
//!
//! The glibc mutex words (each shard's first 64 bytes, the fill slots) are never
//! written: glibc follows pointers stored in them, which
//! is outside larder's promise.

use std::os::unix::fs::FileExt;
use std::sync::OnceLock;
use std::time::Duration;

use super::image::{
    self, fix_checksum, key, value, How, Layout, CHECKSUM_OFF, PAGE, SHARD_HEADER, STATS_OFF,
    STATS_SLOTS, STATS_SLOT_SIZE,
};

/// Image shapes `(capacity, max_key_len, max_value_len)`, with what `populate` puts in.
const IMAGES: [(u64, usize, usize); 3] =
    [(102_400, 32, 300), (102_400, 32, 300), (94_208, 40, 2_000)];

/// Word writes and operations per input.
pub const MAX_WRITES: usize = 64;
pub const MAX_OPS: usize = 48;

/// Where a write lands. Offsets wrap within the area, so every input lands somewhere.
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    /// The header's checked words (`hostile_file`: its checksum is recomputed), or the
    /// whole header page (`hostile_header`: as written).
    Header,
    /// A statistics slot's counters.
    Stats,
    /// A shard header past its lock: sequence counter, intent, log states, counters.
    ShardHeader,
    Index,
    Bitmap,
    Ghost,
    SmallLog,
    MainLog,
    /// Any word after the header page that is not a mutex.
    Anywhere,
}

#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Write {
    pub area: Area,
    pub shard: u8,
    pub at: u32,
    pub how: How,
}

#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOp {
    Get {
        key: u8,
    },
    /// Reads every key the harness uses (finds damage wherever it is).
    GetAll,
    GetStale {
        key: u8,
    },
    TryGet {
        key: u8,
    },
    Set {
        key: u8,
        len: u16,
        ttl: Option<u16>,
    },
    InsertIfAbsent {
        key: u8,
        len: u16,
        ttl: Option<u16>,
    },
    Remove {
        key: u8,
    },
    Touch {
        key: u8,
        ttl: Option<u16>,
    },
    Fill {
        key: u8,
        len: u16,
    },
    Clear,
    Entries,
    Stats,
    Verify,
    Repair,
    /// Moves the handle's clock forward by this many milliseconds.
    Advance {
        ms: u32,
    },
    /// Moves it past every expiry a record can hold.
    AdvanceFar,
    /// A stray write while the file is open (through the file, as a peer would).
    Scribble(Write),
}

#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostileInput {
    pub image: u8,
    pub writes: Vec<Write>,
    pub ops: Vec<FileOp>,
}

/// How the header is treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// `hostile_file`: header writes are limited to its checked words and the checksum
    /// is recomputed, so inputs get past the door to the shard logic.
    Checksummed,
    /// `hostile_header`: the whole header page is fair game and checksums stay as
    /// written, which tests the door itself.
    AsWritten,
}

pub struct Image {
    pub bytes: Vec<u8>,
    pub layout: Layout,
}

/// Deterministic contents: the same in every process (the secret is fixed and TTLs
/// are either none or the largest a record holds).
fn populate(variant: usize, c: &larder::Cache) {
    let (_, max_key, max_value) = IMAGES[variant];
    let forever = Some(Duration::MAX);
    let ok = |r: larder::Result<()>| r.expect("populate image");
    match variant {
        0 => {
            // Light: no wrap; updates, removals, visited bits, TTLs.
            for i in 1..=40u8 {
                let ttl = if i % 5 == 0 { forever } else { None };
                ok(c.set(
                    &key(i, max_key),
                    &value(i as u64, i as usize * 37 % 200),
                    ttl,
                ));
            }
            for i in 1..=40u8 {
                if i % 3 == 0 {
                    ok(c.set(
                        &key(i, max_key),
                        &value(100 + i as u64, i as usize % 50),
                        None,
                    ));
                }
                if i % 7 == 0 {
                    c.remove(&key(i, max_key)).expect("remove");
                }
                if i % 2 == 0 {
                    c.get(&key(i, max_key)).expect("get");
                }
            }
        }
        1 | 2 => {
            // Churn: wrapped logs, pads, moves to main, ghosts, evictions.
            let rounds = if variant == 1 { 3000u64 } else { 600 };
            for i in 0..rounds {
                let k = key((i * 97 % 251) as u8, max_key);
                let len = (i * 53 % 401) as usize * max_value / 400;
                let ttl = if i % 11 == 0 { forever } else { None };
                ok(c.set(&k, &value(i, len), ttl));
                c.get(&key((i * 31 % 251) as u8, max_key)).expect("get");
                if i % 13 == 0 {
                    c.remove(&key((i * 7 % 251) as u8, max_key))
                        .expect("remove");
                }
            }
        }
        _ => unreachable!(),
    }
    let report = c.verify().expect("verify image");
    assert!(report.is_clean(), "image {variant}: {report}");
}

pub fn images() -> &'static [Image] {
    static I: OnceLock<Vec<Image>> = OnceLock::new();
    I.get_or_init(|| {
        IMAGES
            .iter()
            .enumerate()
            .map(|(variant, &(cap, k, v))| {
                let opts = larder::Options::new()
                    .capacity(cap)
                    .max_key_len(k)
                    .max_value_len(v)
                    .lock_timeout(Duration::from_millis(1));
                let bytes = image::create_image(&opts, |c| populate(variant, c));
                let layout = Layout::from_header(&bytes);
                Image { bytes, layout }
            })
            .collect()
    })
}

/// The offset a write lands on, or `None` if it would hit a mutex (or the header
/// outside what `door` allows).
pub fn target(l: &Layout, w: &Write, door: Door, at: u32) -> Option<usize> {
    let at = at as usize;
    let base = l.shard_base(w.shard as usize);
    let off = match w.area {
        Area::Header => match door {
            Door::Checksummed => (at % (CHECKSUM_OFF / 8)) * 8,
            Door::AsWritten => (at % (PAGE / 8)) * 8,
        },
        Area::Stats => {
            let slot = at % STATS_SLOTS;
            STATS_OFF + slot * STATS_SLOT_SIZE + (at / STATS_SLOTS % (STATS_SLOT_SIZE / 8)) * 8
        }
        Area::ShardHeader => base + 64 + (at % ((SHARD_HEADER - 64) / 8)) * 8,
        Area::Index => base + SHARD_HEADER + (at % l.slots) * 8,
        Area::Bitmap => base + l.bitmap_off + (at % l.bitmap_words) * 8,
        Area::Ghost => base + l.ghost_off + (at % l.ghost_len) * 8,
        Area::SmallLog => base + l.small_off + (at % (l.small_cap / 8)) * 8,
        Area::MainLog => base + l.main_off + (at % (l.main_cap / 8)) * 8,
        Area::Anywhere => PAGE + (at % ((l.total_size - PAGE) / 8)) * 8,
    };
    (off + 8 <= l.total_size && !l.is_mutex(off)).then_some(off)
}

/// Applies `w` to `bytes`; true if it changed the header's checked words.
fn apply(l: &Layout, bytes: &mut [u8], w: &Write, door: Door) -> bool {
    let Some(off) = target(l, w, door, w.at) else {
        return false;
    };
    let old = image::word(bytes, off);
    let new = w.how.apply(old, |i| {
        target(l, w, door, i).map_or(0, |src| image::word(bytes, src))
    });
    image::put(bytes, off, new);
    off < CHECKSUM_OFF
}

/// The `hostile_file` (`Door::Checksummed`) and `hostile_header` (`Door::AsWritten`)
/// targets.
pub fn run_hostile(input: &HostileInput, door: Door) {
    let img = &images()[input.image as usize % IMAGES.len()];
    let l = &img.layout;
    let mut bytes = img.bytes.clone();
    let mut header_touched = false;
    for w in input.writes.iter().take(MAX_WRITES) {
        header_touched |= apply(l, &mut bytes, w, door);
    }
    if header_touched && door == Door::Checksummed {
        fix_checksum(&mut bytes);
    }
    let scratch = image::Scratch::new("hostile");
    let file = scratch.write(&bytes);
    let clock = larder::Clock::manual();
    let opts = larder::Options::new()
        .lock_timeout(Duration::from_millis(1))
        .fill_timeout(Duration::from_millis(1))
        .clock(clock.clone());
    let Ok(cache) = opts.attach(scratch.name()) else {
        return; // a clean error at the door
    };
    let limits = cache.limits();
    let (max_key, max_value) = (limits.max_key_len, limits.max_value_len);
    for op in input.ops.iter().take(MAX_OPS) {
        run_op(&cache, &clock, &file, l, op, door, max_key, max_value);
    }
    let _ = cache.verify();
    if cache.repair().is_ok() {
        if let Ok(report) = cache.verify() {
            assert!(
                report.problems.iter().all(|p| p.shard.is_none()),
                "verify after a successful repair: {report}"
            );
            // Every entry listed is one a read finds, with the length listed, and the
            // counters agree with the listing.
            let mut listed = 0u64;
            for e in cache.entries() {
                let e = e.expect("entries after a clean verify");
                let got = cache
                    .get_stale(&e.key)
                    .expect("get_stale after a clean verify");
                let got = got.unwrap_or_else(|| {
                    panic!(
                        "shard {} lists a key of {} bytes that get_stale does not find",
                        e.shard,
                        e.key.len()
                    )
                });
                assert_eq!(got.value.len(), e.value_len, "listed and read lengths");
                listed += 1;
            }
            assert_eq!(
                cache.stats().entries,
                listed,
                "entries counters and listing"
            );
            let k = key(255, max_key);
            let v = value(u64::MAX, max_value.min(11));
            cache.set(&k, &v, None).expect("set after repair");
            assert_eq!(cache.get(&k).expect("get after repair"), Some(v));
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn run_op(
    cache: &larder::Cache,
    clock: &larder::Clock,
    file: &std::fs::File,
    l: &Layout,
    op: &FileOp,
    door: Door,
    max_key: usize,
    max_value: usize,
) {
    let k = |idx: u8| key(idx, max_key);
    let v = |len: u16| value(len as u64 ^ 0x5a5a, len as usize % (max_value + 9));
    let ttl = |t: Option<u16>| t.map(|ms| Duration::from_millis(ms as u64));
    let check_value = |r: larder::Result<Option<Vec<u8>>>| {
        if let Ok(Some(v)) = r {
            assert!(v.len() <= max_value, "a value of {} bytes", v.len());
        }
    };
    match *op {
        FileOp::Get { key } => check_value(cache.get(&k(key))),
        FileOp::GetAll => {
            for key in 0..=u8::MAX {
                check_value(cache.get(&k(key)));
            }
        }
        FileOp::TryGet { key } => check_value(cache.try_get(&k(key))),
        FileOp::GetStale { key } => {
            check_value(cache.get_stale(&k(key)).map(|s| s.map(|s| s.value)))
        }
        FileOp::Set { key, len, ttl: t } => {
            let _ = cache.set(&k(key), &v(len), ttl(t));
        }
        FileOp::InsertIfAbsent { key, len, ttl: t } => {
            let _ = cache.insert_if_absent(&k(key), &v(len), ttl(t));
        }
        FileOp::Remove { key } => {
            let _ = cache.remove(&k(key));
        }
        FileOp::Touch { key, ttl: t } => {
            let _ = cache.touch(&k(key), ttl(t));
        }
        FileOp::Fill { key, len } => {
            let value = v(len);
            check_value(
                cache
                    .get_or_insert_with(&k(key), None, || Ok::<_, larder::Error>(value))
                    .map(Some),
            );
        }
        FileOp::Clear => {
            let _ = cache.clear();
        }
        FileOp::Entries => {
            for e in cache.entries().take(100_000).flatten() {
                assert!(e.key.len() <= max_key, "a key of {} bytes", e.key.len());
                assert!(e.value_len <= max_value, "a value of {} bytes", e.value_len);
            }
        }
        FileOp::Stats => {
            let _ = cache.stats();
        }
        FileOp::Verify => {
            if let Ok(report) = cache.verify() {
                let _ = report.to_string();
            }
        }
        FileOp::Repair => {
            let _ = cache.repair();
        }
        FileOp::Advance { ms } => clock.advance(Duration::from_millis(ms as u64)),
        FileOp::AdvanceFar => clock.advance(Duration::from_millis(1 << 49)),
        FileOp::Scribble(w) => {
            let Some(off) = target(l, &w, door, w.at) else {
                return;
            };
            let read = |off: usize| {
                let mut b = [0u8; 8];
                file.read_exact_at(&mut b, off as u64)
                    .expect("read scratch file");
                u64::from_le_bytes(b)
            };
            let new = w
                .how
                .apply(read(off), |i| target(l, &w, door, i).map_or(0, read));
            file.write_all_at(&new.to_le_bytes(), off as u64)
                .expect("write scratch file");
        }
    }
}

/// The `header` target: the header parser on the bytes as given, then with their
/// checksum made right, so the checks behind it are reached too.
pub fn run_header(data: &[u8]) {
    let _ = larder::table::check_header(data);
    if data.len() >= CHECKSUM_OFF + 8 {
        let mut fixed = data.to_vec();
        fix_checksum(&mut fixed);
        let _ = larder::table::check_header(&fixed);
    }
}
