//! A cache file as bytes, for tests that damage one on purpose: the header's byte map
//! (from `src/layout.rs`), reading words, and patching the file in place with its
//! checksums made right again, so that the check behind them is reached.
//!
//! Not part of `mod.rs`, which cli/tests shares: it needs xxhash-rust, a dependency of
//! the library only. A test includes it with `#[path = "common/image.rs"] mod image;`.
#![allow(dead_code)]

use std::os::unix::fs::FileExt;
use std::path::Path;

// Header words (byte offsets).
pub const H_MAGIC: usize = 0;
pub const H_VERSION: usize = 8;
pub const H_TOTAL_SIZE: usize = 16;
pub const H_SHARD_COUNT: usize = 32;
pub const H_SHARD_SIZE: usize = 40;
pub const H_MAX_KEY_LEN: usize = 48;
pub const H_MAX_VALUE_LEN: usize = 56;
pub const H_BUCKETS: usize = 64;
pub const H_SMALL_CAP: usize = 72;
pub const H_MAIN_CAP: usize = 80;
pub const H_GHOST_LEN: usize = 88;
pub const H_FINGERPRINT: usize = 152;
pub const H_RESERVED: usize = 176;
pub const H_SECRET: usize = 256;
/// The header checksum: xxh3-64 of bytes `[0, H_CHECKSUM)`, stored little-endian here.
pub const H_CHECKSUM: usize = 448;
/// The stamp, outside the checksum: boot id (2 words), pid namespace (dev, ino), time
/// namespace (dev, ino), then the xxh3 of those six words.
pub const H_STAMP: usize = 456;
pub const STAMP_BOOT: usize = H_STAMP;
pub const STAMP_PID_NS_INO: usize = H_STAMP + 24;
pub const STAMP_TIME_NS_INO: usize = H_STAMP + 40;
pub const STAMP_SUM: usize = H_STAMP + 48;
/// `__kind` inside glibc's `pthread_mutex_t` on 64-bit Linux; a shard's lock is the
/// first thing in the shard, and every slot's lock the first thing in the slot.
pub const MUTEX_KIND: usize = 16;

/// The whole file.
pub fn read_all(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("read cache file")
}

/// The little-endian word at `off`.
pub fn word(bytes: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(bytes[off..off + 8].try_into().expect("8 bytes"))
}

/// Stores `v` as the little-endian word at `off`.
pub fn put(bytes: &mut [u8], off: usize, v: u64) {
    bytes[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

/// Writes `bytes` into the file at `off`, in place (never truncating: no mapping may see
/// a short file).
pub fn write_at(path: &Path, off: usize, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for patch");
    f.write_all_at(bytes, off as u64).expect("patch");
}

/// Stores `v` as the little-endian word at `off` of the file.
pub fn patch_word(path: &Path, off: usize, v: u64) {
    write_at(path, off, &v.to_le_bytes());
}

/// Recomputes the header checksum after a patch.
pub fn fix_checksum(path: &Path) {
    let bytes = read_all(path);
    patch_word(
        path,
        H_CHECKSUM,
        xxhash_rust::xxh3::xxh3_64(&bytes[..H_CHECKSUM]),
    );
}

/// Recomputes the stamp's checksum after a test changed its words.
pub fn fix_stamp(path: &Path) {
    let bytes = read_all(path);
    patch_word(
        path,
        STAMP_SUM,
        xxhash_rust::xxh3::xxh3_64(&bytes[H_STAMP..STAMP_SUM]),
    );
}
