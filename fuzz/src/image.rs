//! Real cache files for the fuzz harnesses: images built through the public API with a
//! fixed hash secret (so that an input replays the same way in every process), their
//! layout read back from the header fields, and scratch files that remove themselves.
//!
//! Shared by the fuzz targets and by tests/fuzz_regressions.rs, which includes this file
//! by path; so it uses nothing but larder, std and xxhash-rust.

use std::io::Write as _;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

/// Bytes of the header page.
pub const PAGE: usize = 4096;
/// Bytes the header checksum covers; the checksum itself follows them (xxh3_64, LE).
pub const CHECKSUM_OFF: usize = 448;
/// The hash secret in the header.
pub const SECRET_OFF: usize = 256;
pub const SECRET_SIZE: usize = 192;
/// Statistics slots: 129 of 128 bytes at 4096, counters only (claimed with file locks,
/// not mutexes).
pub const STATS_OFF: usize = 4096;
pub const STATS_SLOTS: usize = 129;
pub const STATS_SLOT_SIZE: usize = 128;
/// Fill slots: 256 of 128 bytes, a mutex and the word of the fill in flight.
pub const FILL_SLOTS: usize = 256;
pub const FILL_SLOT_SIZE: usize = 128;
/// The near area (lease, epoch, heartbeat, counters): 256 bytes between the fill slots
/// and the shards (format 4).
pub const NEAR_SIZE: usize = 256;
/// Bytes of a mutex (glibc's words are outside larder's promise: never written here).
pub const MUTEX_SPACE: usize = 64;
/// Bytes of a shard header and its fences (a ring of 64 words, 64 class counters); its
/// first 64 are the shard's mutex.
pub const SHARD_HEADER: usize = 1280;
pub const BUCKET_SLOTS: usize = 8;

/// Shard header words (`ShardHeader` in src/layout.rs).
pub const SH_SEQ: usize = 64;
pub const SH_INTENT: usize = 72;
pub const SH_EVICTIONS: usize = 136;
pub const SH_EXPIRATIONS: usize = 144;
pub const SH_RECOVERIES: usize = 152;
pub const SH_DROPPED: usize = 160;

/// Header words (`FileHeader` in src/layout.rs), by index.
const H_TOTAL_SIZE: usize = 2;
const H_SHARD_COUNT: usize = 4;
const H_SHARD_SIZE: usize = 5;
const H_MAX_KEY: usize = 6;
const H_MAX_VALUE: usize = 7;
const H_BUCKETS: usize = 8;
const H_SMALL_CAP: usize = 9;
const H_MAIN_CAP: usize = 10;
const H_GHOST_LEN: usize = 11;

const fn align_page(n: usize) -> usize {
    (n + PAGE - 1) & !(PAGE - 1)
}

/// Reads the little-endian word at `off`.
pub fn word(b: &[u8], off: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(w)
}

/// Writes the little-endian word at `off`.
pub fn put(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// Stores the checksum of the header in `b` (at least `CHECKSUM_OFF + 8` bytes).
pub fn fix_checksum(b: &mut [u8]) {
    let sum = xxhash_rust::xxh3::xxh3_64(&b[..CHECKSUM_OFF]);
    put(b, CHECKSUM_OFF, sum);
}

/// Where everything is in a file, from its header fields (the byte map in src/layout.rs).
#[derive(Debug, Clone)]
pub struct Layout {
    pub total_size: usize,
    pub max_key_len: usize,
    pub max_value_len: usize,
    pub fill_off: usize,
    pub shards_off: usize,
    pub shard_count: usize,
    pub shard_size: usize,
    /// Index slots per shard.
    pub slots: usize,
    pub bitmap_off: usize,
    pub bitmap_words: usize,
    pub ghost_off: usize,
    pub ghost_len: usize,
    pub small_off: usize,
    pub small_cap: usize,
    pub main_off: usize,
    pub main_cap: usize,
}

impl Layout {
    /// The layout a (trusted) header describes.
    pub fn from_header(h: &[u8]) -> Layout {
        let f = |i: usize| word(h, i * 8) as usize;
        let fill_off = align_page(STATS_OFF + STATS_SLOTS * STATS_SLOT_SIZE);
        let near_off = align_page(fill_off + FILL_SLOTS * FILL_SLOT_SIZE);
        let shards_off = align_page(near_off + NEAR_SIZE);
        let slots = f(H_BUCKETS) * BUCKET_SLOTS;
        let bitmap_off = SHARD_HEADER + slots * 8;
        let bitmap_words = slots.div_ceil(64);
        let ghost_off = bitmap_off + bitmap_words * 8;
        let ghost_len = f(H_GHOST_LEN);
        let small_off = ghost_off + ghost_len * 8;
        let small_cap = f(H_SMALL_CAP);
        let l = Layout {
            total_size: f(H_TOTAL_SIZE),
            max_key_len: f(H_MAX_KEY),
            max_value_len: f(H_MAX_VALUE),
            fill_off,
            shards_off,
            shard_count: f(H_SHARD_COUNT),
            shard_size: f(H_SHARD_SIZE),
            slots,
            bitmap_off,
            bitmap_words,
            ghost_off,
            ghost_len,
            small_off,
            small_cap,
            main_off: small_off + small_cap,
            main_cap: f(H_MAIN_CAP),
        };
        assert_eq!(
            l.total_size,
            l.shards_off + l.shard_count * l.shard_size,
            "the harness's reading of the byte map disagrees with the file: {l:?}"
        );
        assert!(l.main_off + l.main_cap <= l.shard_size, "{l:?}");
        l
    }

    pub fn shard_base(&self, i: usize) -> usize {
        self.shards_off + (i % self.shard_count) * self.shard_size
    }

    /// Whether the word at `off` belongs to a glibc mutex (shard lock, fill slot), which
    /// the harnesses never write.
    pub fn is_mutex(&self, off: usize) -> bool {
        if (self.fill_off..self.fill_off + FILL_SLOTS * FILL_SLOT_SIZE).contains(&off) {
            return true;
        }
        off >= self.shards_off && (off - self.shards_off) % self.shard_size < MUTEX_SPACE
    }
}

/// How a fuzzer-chosen write changes a word.
#[cfg_attr(fuzzing, derive(arbitrary::Arbitrary))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    Set(u64),
    Zero,
    Flip(u8),
    /// Adds to the low half (slot locations, log heads, lengths, counters).
    Add(i16),
    /// Adds to the high half (slot tags, log tails, back references, expiries).
    AddHigh(i16),
    /// Copies another word of the same area (by index).
    Copy(u32),
}

impl How {
    /// The new value of a word that was `old`; `other` reads a word of the same area.
    pub fn apply(self, old: u64, other: impl Fn(u32) -> u64) -> u64 {
        match self {
            How::Set(v) => v,
            How::Zero => 0,
            How::Flip(b) => old ^ (1 << (b % 64)),
            How::Add(d) => old.wrapping_add(d as i64 as u64),
            How::AddHigh(d) => old.wrapping_add((d as i64 as u64) << 32),
            How::Copy(i) => other(i),
        }
    }
}

/// Key number `idx`: distinct for every `idx`, 0 is the empty key, lengths up to `max`.
pub fn key(idx: u8, max: usize) -> Vec<u8> {
    if idx == 0 || max == 0 {
        return Vec::new();
    }
    let len = 1 + (idx as usize * 7) % max;
    (0..len)
        .map(|i| idx.wrapping_add((i as u8).wrapping_mul(13)))
        .collect()
}

/// Value number `version` of `len` bytes: its first bytes are the version, so a stale
/// value of the same length differs from the current one.
pub fn value(version: u64, len: usize) -> Vec<u8> {
    let mut x = version.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut v: Vec<u8> = version.to_le_bytes().iter().copied().take(len).collect();
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.push(x as u8);
    }
    v
}

static COUNTER: AtomicU64 = AtomicU64::new(0);
static SWEEP: Once = Once::new();
const PREFIX: &str = "larder-fuzz-";

fn scratch_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("LARDER_FUZZ_DIR") {
        return PathBuf::from(d);
    }
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}

/// Removes scratch files of processes that are gone (a crashing fuzz process aborts
/// before its files' destructors run).
fn sweep(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if !pid.is_empty()
            && pid.bytes().all(|b| b.is_ascii_digit())
            && !Path::new("/proc").join(pid).exists()
        {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// A unique file path in the scratch directory; the file is removed on drop.
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let dir = scratch_dir();
        SWEEP.call_once(|| sweep(&dir));
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Scratch {
            path: dir.join(format!("{PREFIX}{}-{n}-{tag}", std::process::id())),
        }
    }

    pub fn name(&self) -> &str {
        self.path.to_str().expect("scratch paths are UTF-8")
    }

    /// Creates the file with `bytes`, mode 0600 (what larder's owner checks accept).
    pub fn write(&self, bytes: &[u8]) -> std::fs::File {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&self.path)
            .expect("create scratch file");
        f.write_all(bytes).expect("write scratch file");
        f
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The bytes of a cache created with `opts` and a fixed hash secret, after `populate`
/// ran on it (and every handle on it closed, so no lock is held in the image).
pub fn create_image(opts: &larder::Options, populate: impl FnOnce(&larder::Cache)) -> Vec<u8> {
    let s = Scratch::new("image");
    drop(opts.open(s.name()).expect("create cache image"));
    // Nobody else has the file: give it a fixed secret, so keys land in the same
    // shards and buckets in every process and an input replays anywhere.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&s.path)
        .expect("reopen image");
    let mut header = vec![0u8; PAGE];
    file.read_exact_at(&mut header, 0).expect("read header");
    for (i, b) in header[SECRET_OFF..SECRET_OFF + SECRET_SIZE]
        .iter_mut()
        .enumerate()
    {
        *b = (i as u8).wrapping_mul(151).wrapping_add(7);
    }
    fix_checksum(&mut header);
    file.write_all_at(&header, 0).expect("write header");
    drop(file);
    let cache = opts.attach(s.name()).expect("attach cache image");
    populate(&cache);
    drop(cache);
    std::fs::read(&s.path).expect("read image")
}
