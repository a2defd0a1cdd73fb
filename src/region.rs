//! The memory region the table lives in: the only module that turns addresses into
//! accesses.
//!
//! Every byte another process can write is reached here as an [`AtomicU64`] and only
//! through atomic operations of that one width (relaxed unless the caller says otherwise),
//! so that an optimistic reader racing a writer in another process is a data race on
//! atomics, never undefined behaviour. No `&[u8]`, `&T` or `&mut T` is ever formed over
//! the region's bytes; bulk bytes are copied word by word and validated afterwards by the
//! caller (a sequence counter, see `seqlock`).
//!
//! Every accessor checks its offset against the region and its alignment. An offset that
//! fails the check is a bug in the caller (offsets read from the file are validated
//! before they get here), so debug builds assert; release builds read zeros (a whole run
//! of words, if any of it is out of bounds), compare unequal and ignore the write, which
//! is safe.
//!
//! The region uses `core`'s atomics even under `larder_loom`: the mapping is real memory
//! shared with other processes, which loom cannot model. The loom tests model the
//! protocol on loom's own atomics instead (see `seqlock`).
#![allow(unsafe_code)]

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};

use memmap2::MmapRaw;

/// Bytes per word: the one access width of the region.
pub(crate) const WORD: usize = 8;

/// A region of memory that other processes may read and write concurrently.
pub(crate) struct Region {
    // `base` and `len` are all the accessors read (none looks at the backing); the
    // backing only keeps the memory alive for as long as the region.
    base: NonNull<AtomicU64>,
    len: usize,
    _backing: Backing,
}

/// What a region's memory is, held for as long as the region lives.
enum Backing {
    /// Zeroed words on the heap, for tests and Miri. A `Vec`, not a `Box`: moving a
    /// `Box` into the struct would retag it as unique and invalidate `base` under Miri's
    /// aliasing models; moving a `Vec` does not.
    Heap { _words: Vec<AtomicU64> },
    /// A shared mapping of the cache file, unmapped (by `MmapRaw`'s `Drop`) when the
    /// region drops.
    Map { _map: MmapRaw },
}

// SAFETY: the region is only ever accessed through atomic operations (and the pthread
// calls in `lock`, which are designed for concurrent use), so sharing it across threads
// adds no data race that is not already on atomics.
unsafe impl Send for Region {}
// SAFETY: as for `Send`: all access is atomic.
unsafe impl Sync for Region {}

impl Region {
    /// A zeroed region on the heap, for tests and Miri.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn heap(len: usize) -> Region {
        let words = len.div_ceil(WORD);
        let heap: Vec<AtomicU64> = (0..words).map(|_| AtomicU64::new(0)).collect();
        let base = NonNull::new(heap.as_ptr().cast_mut()).unwrap_or(NonNull::dangling());
        Region {
            base,
            len: words * WORD,
            _backing: Backing::Heap { _words: heap },
        }
    }

    /// A region over the whole of `map` (a shared mapping of the cache file), which it
    /// keeps and unmaps when dropped. Fails if the mapping's address is null or not
    /// 8-aligned (a fresh mapping is page aligned).
    ///
    /// Safe code can make one: the region takes the mapping by value, so nothing else in
    /// this process reaches those bytes except `unsafe` code over some other mapping;
    /// the other processes mapping the file are peers running this code, trusted to touch
    /// the bytes only atomically or through the pthread calls of `lock` (the crate's
    /// stated limits).
    pub(crate) fn mapped(map: MmapRaw) -> std::io::Result<Region> {
        let base = NonNull::new(map.as_mut_ptr().cast::<AtomicU64>())
            .ok_or_else(|| std::io::Error::other("mmap returned a null pointer"))?;
        if !base.as_ptr().is_aligned() {
            return Err(std::io::Error::other(
                "mmap returned an address that is not 8-aligned",
            ));
        }
        let len = map.len();
        Ok(Region {
            base,
            len: len - len % WORD,
            _backing: Backing::Map { _map: map },
        })
    }

    /// Whether `[off, off + len)` lies inside the region.
    pub(crate) fn contains(&self, off: usize, len: usize) -> bool {
        off.checked_add(len).is_some_and(|end| end <= self.len)
    }

    fn word(&self, off: usize) -> Option<&AtomicU64> {
        if off % WORD != 0 || !self.contains(off, WORD) {
            debug_assert!(false, "region access out of bounds: {off} of {}", self.len);
            return None;
        }
        let p = self.base.as_ptr().wrapping_add(off / WORD);
        // `off` is 8-aligned and `off + 8 <= len`: `p` lies inside the region, whose
        // backing (the heap vector or the mapping) it keeps alive.
        // SAFETY: in bounds and aligned; `AtomicU64` has `u64`'s layout and every access
        // to these bytes is atomic, so a shared reference is sound while others write.
        Some(unsafe { &*p })
    }

    /// Hints that the cache line at `off` will be read soon. Accesses nothing, so it
    /// needs no bounds beyond staying inside the region.
    #[inline]
    pub(crate) fn prefetch(&self, off: usize) {
        #[cfg(all(target_arch = "x86_64", not(miri)))]
        if self.contains(off, WORD) {
            let p = self.base.as_ptr().cast::<i8>().wrapping_add(off);
            // Newer toolchains declare the intrinsic safe; the block keeps older ones building.
            #[allow(unused_unsafe)]
            // SAFETY: a prefetch is a hint to the cache: it has no effect a program can
            // observe, reads nothing into the program and never faults.
            unsafe {
                core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p)
            };
        }
        #[cfg(not(all(target_arch = "x86_64", not(miri))))]
        let _ = off;
    }

    /// The `n` words from `off`, if they lie inside the region: one bounds check for a
    /// run of words.
    #[inline]
    fn words(&self, off: usize, n: usize) -> Option<&[AtomicU64]> {
        let len = n.checked_mul(WORD)?;
        if off % WORD != 0 || !self.contains(off, len) {
            debug_assert!(
                false,
                "region access out of bounds: {off}+{len} of {}",
                self.len
            );
            return None;
        }
        let p = self.base.as_ptr().wrapping_add(off / WORD);
        // As in `word`, `AtomicU64` has `u64`'s layout and every access to these bytes is
        // atomic, so a shared slice of them is sound while others write.
        // SAFETY: `off` is 8-aligned and `off + 8 * n <= len`: the `n` words lie inside
        // the region, whose backing (the heap vector or the mapping) it keeps alive.
        Some(unsafe { core::slice::from_raw_parts(p, n) })
    }

    /// Relaxed load.
    #[inline]
    pub(crate) fn load(&self, off: usize) -> u64 {
        self.word(off).map_or(0, |w| w.load(Ordering::Relaxed))
    }

    /// Relaxed store.
    #[inline]
    pub(crate) fn store(&self, off: usize, v: u64) {
        if let Some(w) = self.word(off) {
            w.store(v, Ordering::Relaxed);
        }
    }

    /// The word itself, for the sequence counter protocol.
    #[inline]
    pub(crate) fn atomic(&self, off: usize) -> Option<&AtomicU64> {
        self.word(off)
    }

    /// The `N` words from `off`, if they lie inside the region: one bounds check for a
    /// fixed run of words, which constant indexes then need no other.
    #[inline]
    pub(crate) fn atomic_array<const N: usize>(&self, off: usize) -> Option<&[AtomicU64; N]> {
        self.words(off, N)?.try_into().ok()
    }

    /// Relaxed fetch-or; returns the previous value.
    #[inline]
    pub(crate) fn fetch_or(&self, off: usize, v: u64) -> u64 {
        self.word(off)
            .map_or(0, |w| w.fetch_or(v, Ordering::Relaxed))
    }

    /// Relaxed fetch-add; returns the previous value.
    #[inline]
    pub(crate) fn fetch_add(&self, off: usize, v: u64) -> u64 {
        self.word(off)
            .map_or(0, |w| w.fetch_add(v, Ordering::Relaxed))
    }

    /// Copies `out.len()` bytes starting at `off` (8-aligned) into `out`, word by word.
    /// The bytes may be torn if a writer races; the caller validates.
    pub(crate) fn read_bytes(&self, off: usize, out: &mut [u8]) {
        // One bounds check for the whole range, then plain relaxed loads: this copies a
        // 256-byte value in about a quarter of the time of a checked load per word.
        let Some(words) = self.words(off, out.len().div_ceil(WORD)) else {
            out.fill(0);
            return;
        };
        // Four words per step: one loop test per 32 bytes instead of per 8 (113 fewer
        // instructions for a 256-byte value, by callgrind).
        let whole = out.len() / (4 * WORD);
        let mut quads = out.chunks_exact_mut(4 * WORD);
        for (chunk, w) in (&mut quads).zip(words.chunks_exact(4)) {
            let (a, rest) = chunk.split_at_mut(WORD);
            let (b, rest) = rest.split_at_mut(WORD);
            let (c, d) = rest.split_at_mut(WORD);
            a.copy_from_slice(&w[0].load(Ordering::Relaxed).to_le_bytes());
            b.copy_from_slice(&w[1].load(Ordering::Relaxed).to_le_bytes());
            c.copy_from_slice(&w[2].load(Ordering::Relaxed).to_le_bytes());
            d.copy_from_slice(&w[3].load(Ordering::Relaxed).to_le_bytes());
        }
        // The words after the whole steps (`words` has one per started 8 bytes of `out`).
        let words = words.get(whole * 4..).unwrap_or(&[]);
        let mut chunks = quads.into_remainder().chunks_exact_mut(WORD);
        let mut words = words.iter();
        for (chunk, w) in (&mut chunks).zip(&mut words) {
            chunk.copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes());
        }
        let rest = chunks.into_remainder();
        if let Some(w) = words.next() {
            let n = rest.len();
            rest.copy_from_slice(&w.load(Ordering::Relaxed).to_le_bytes()[..n]);
        }
    }

    /// Writes `bytes` at `off` (8-aligned), word by word; the last word is zero-padded.
    pub(crate) fn write_bytes(&self, off: usize, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(WORD);
        let mut at = off;
        for chunk in &mut chunks {
            let mut w = [0u8; WORD];
            w.copy_from_slice(chunk);
            self.store(at, u64::from_le_bytes(w));
            at += WORD;
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; WORD];
            w[..rest.len()].copy_from_slice(rest);
            self.store(at, u64::from_le_bytes(w));
        }
    }

    /// Whether the bytes at `off` equal `bytes` (compared word by word; padding of the
    /// last word is ignored).
    pub(crate) fn bytes_eq(&self, off: usize, bytes: &[u8]) -> bool {
        if bytes.is_empty() {
            return true;
        }
        let Some(words) = self.words(off, bytes.len().div_ceil(WORD)) else {
            return false;
        };
        let mut chunks = bytes.chunks_exact(WORD);
        let mut words = words.iter();
        for (chunk, w) in (&mut chunks).zip(&mut words) {
            let mut b = [0u8; WORD];
            b.copy_from_slice(chunk);
            if w.load(Ordering::Relaxed) != u64::from_le_bytes(b) {
                return false;
            }
        }
        let rest = chunks.remainder();
        match words.next() {
            Some(w) => w.load(Ordering::Relaxed).to_le_bytes()[..rest.len()] == *rest,
            None => true,
        }
    }

    /// Copies `len` bytes (rounded up to words) from `src` to `dst`, forwards, word by
    /// word. Correct for overlapping ranges when `dst <= src`, which is how the log moves
    /// a record from its head to its tail.
    pub(crate) fn move_forward(&self, dst: usize, src: usize, len: usize) {
        debug_assert!(dst <= src || dst >= src + len);
        let mut i = 0;
        while i < len {
            self.store(dst + i, self.load(src + i));
            i += WORD;
        }
    }

    /// Zeroes `len` bytes at `off`.
    pub(crate) fn zero(&self, off: usize, len: usize) {
        let mut i = 0;
        while i < len {
            self.store(off + i, 0);
            i += WORD;
        }
    }

    /// A raw pointer to `len` bytes at `off`, for the pthread calls of `lock`, which are
    /// the only non-atomic users of region bytes.
    pub(crate) fn raw(&self, off: usize, len: usize) -> Option<NonNull<u8>> {
        if off % WORD != 0 || !self.contains(off, len) {
            debug_assert!(false, "raw region access out of bounds");
            return None;
        }
        // Inside the region (checked above); computing it dereferences nothing.
        let p = self.base.as_ptr().cast::<u8>().wrapping_add(off);
        NonNull::new(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_with_odd_lengths() {
        // Past four words too: reads copy four words per step, then the rest.
        let r = Region::heap(128);
        for len in 0..=100 {
            let data: Vec<u8> = (0..len as u8).map(|b| b.wrapping_mul(7) ^ 0x5a).collect();
            r.write_bytes(8, &data);
            let mut out = vec![0u8; len];
            r.read_bytes(8, &mut out);
            assert_eq!(out, data);
            assert!(r.bytes_eq(8, &data));
            if len > 0 {
                let mut other = data.clone();
                other[len - 1] ^= 1;
                assert!(!r.bytes_eq(8, &other));
            }
        }
    }

    #[test]
    fn overlapping_forward_move_keeps_content() {
        let r = Region::heap(128);
        let data: Vec<u8> = (0..64u8).collect();
        r.write_bytes(32, &data);
        r.move_forward(8, 32, 64);
        let mut out = vec![0u8; 64];
        r.read_bytes(8, &mut out);
        assert_eq!(out, data);
    }
}
