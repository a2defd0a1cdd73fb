//! The file format: header, statistics slots, fill slots, shards, records.
//!
//! # Byte map (format version 4)
//!
//! Every field is a little-endian `u64` word unless it says otherwise, and every word is
//! read and written with 8-byte atomic operations (see `region`).
//! The bit-packed words (slot, record, log state, intent) are coded in `words` only.
//!
//! ```text
//! offset                      size            what
//! 0                           4096            FileHeader (below), rest zero
//! 4096                        129 * 128       StatsSlot[129]: slot 0 is shared overflow,
//!                                             1..=128 are claimed by processes, one
//!                                             per stripe of their threads (up to 4)
//! stats_off + 16512 (page up) 256 * 128       FillSlot[256]: a robust mutex, then on a
//!                                             line of its own the fill's word (see
//!                                             "Fences")
//! fill_off + 32768            256             NearArea: the near-cache lease, epoch,
//!                                             heartbeat, counters (see "Near area")
//! near_off + 256 (page up)    n * shard_size  Shard[n], each page aligned:
//!
//!   shard + 0                 256             ShardHeader: lock, sequence counter,
//!                                             intent record, log states, counters
//!   shard + 256               64 * 8          fence ring: the hashes of the shard's last
//!                                             64 revocations (see "Fences")
//!   shard + 768               64 * 8          fence classes: one revocation counter per
//!                                             class of the shard's keys
//!   shard + 1280              buckets * 64    index: Bucket[buckets], 8 slot words each
//!   + index                   slots / 8       visited bits, one per slot (u64 words)
//!   + bitmap                  ghost_len * 8   ghost fingerprints (S3-FIFO's ghost queue)
//!   + ghost                   small_cap       small log (S3-FIFO's small FIFO)
//!   + small                   main_cap        main log (S3-FIFO's main FIFO)
//! ```
//!
//! ## Stamp (header bytes 456..512, outside the header checksum)
//! Where the file may be used: the boot id (2 words), the creator's pid namespace
//! (`st_dev`, `st_ino` of `/proc/self/ns/pid`), its time namespace (the same of
//! `/proc/self/ns/time`, 0 where the kernel has none), and an xxh3 checksum of those six
//! words. Only an offline repair rewrites it (the six words, then the checksum), so a
//! crash in between leaves a stamp whose checksum fails, which the next offline repair
//! writes again; the checksummed header is never touched after creation.
//!
//! ## Near area
//! What a host's listener (`larder-redis`) and its readers share when the cache is a
//! near cache in front of another store: a robust mutex held by the one listener (the
//! lease), then on one cache line the epoch (bumped by every flush), the heartbeat
//! (`CLOCK_MONOTONIC` ns of the last proven-current instant, 0 for none), the lease
//! holder's pid and the scope (a hash of the prefixes it tracks), then on a line of
//! their own counters (leases, takeovers, invalidations, flushes by reason). A near
//! cache's invalidation is a remove, fenced like any other (below).
//!
//! ## Fences
//! What a revocation leaves for the fills in flight to find (see `fence`), all written
//! under the shard lock by every write that revokes a key (remove, set, add, replace,
//! incr, set_if_version), before it changes anything else, in this order:
//! - the class counter of the key (`FENCE_CLASSES` per shard, `hash % FENCE_CLASSES`),
//!   plus one;
//! - the key's hash into the ring at `(fence_seq + 1) % FENCE_RING`;
//! - `fence_seq` (in the shard header), plus one.
//!
//! `clear` (and a near-cache flush) adds one to every class counter and `FENCE_RING` to
//! `fence_seq`. A fill of `get_or_insert_with` also writes its key's hash, with bit 0
//! set, into its fill slot's word while it holds the slot; a revocation of that hash
//! clears bit 0 there. Nothing ever lowers a counter: repair and clear leave them.
//!
//! ## Statistics slot claims
//! A process claims statistics slot `i` by holding an open file description lock
//! (`F_OFD_SETLK`, write) on byte `i` of the file, through a description of its own;
//! the kernel drops the lock when that description closes, however the process ends.
//! The slot's words are plain counters.
//!
//! ## Slot word (index)
//! `0` is empty. Otherwise bits 0..32 hold the record's location, `offset / 8 + 1`
//! with the offset counted from the start of the small log, and bits 32..64 hold a
//! 32-bit tag from the key's hash.
//!
//! ## Record (in a log, 8-aligned, contiguous)
//! ```text
//! word 0   bits 0..16 key length, bits 16..64 expiry (ms on CLOCK_MONOTONIC, 0 = none)
//! word 1   bits 0..2 state (1 live, 2 dead, 3 pad), bits 2..28 value length,
//!          bit 28 versioned, bits 29..32 zero,
//!          bits 32..64 index slot that points at the record (back reference)
//! word 2   only if versioned: the entry's version (see "Versions")
//! then     key bytes, zero-padded to 8; value bytes, zero-padded to 8
//! ```
//! A pad record fills the rest of a log to its end; fewer than 16 bytes left at the end
//! are an implicit pad.
//!
//! ## Versions
//! Each shard header holds the last version it gave out (`version`, starting at 0).
//! Writing a versioned record first stores the shard's next version there, then the
//! record, so no crash can hand a version out twice; repair never lowers it (it raises it
//! to the largest version found in the logs). `incr` of a versioned counter, the one
//! in-place change of a versioned record, stores a new version in the record before the
//! value (a versioned set never overwrites in place). A record without a version matches
//! no version.
//!
//! ## Log state word
//! bits 0..32 head, bits 32..64 tail, both in 8-byte units from the log's start. The log
//! holds the records in `[head, tail)`, wrapping at its end; `head == tail` is empty, and
//! a log always keeps 8 bytes free so that full and empty differ. Both ends move with
//! one store, which a crash cannot split.

use core::mem::offset_of;

/// "LARDER" and a format family byte; any other value is not a larder file.
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"LARDERc\x01");

/// Format versions, one per change to anything in this file:
/// - 1: the first format.
/// - 2: the boot id moves out of the checksummed header into the stamp, which also
///   records the creator's pid and time namespaces; statistics slots lose their mutex
///   (claimed with open file description locks instead).
/// - 3: the near area (lease, epoch, heartbeat, invalidation counters) between the fill
///   slots and the shards; records may carry a version word (bit 28 of word 1), and each
///   shard header the last version it gave out.
/// - 4: each shard's fences (a ring of revoked hashes and revocation counters) follow
///   its header, which counts revocations; fill slots are 128 bytes, with a word for the
///   fill in flight; the near area loses its invalidation counters (a near invalidation
///   is a fenced remove); statistics slots count fills that a revocation fenced off.
pub(crate) const FORMAT_VERSION: u32 = 4;

/// Bytes of the header page.
pub(crate) const HEADER_SIZE: usize = 4096;
/// Alignment of areas and shards: a page, so that shards never share a page.
pub(crate) const PAGE: usize = 4096;

/// Statistics slots, claimed by processes, one per stripe of a process's threads (up to
/// `stats::STAT_STRIPES` per process; slot 0 is the shared overflow
/// for processes that find none free).
pub(crate) const STATS_SLOTS: usize = 129;
/// Single-flight fill slots; a key uses slot `hash % FILL_SLOTS`.
pub(crate) const FILL_SLOTS: usize = 256;

/// Largest key length a file may be created with: keys are hashed from a stack copy
/// during repair, so this bounds that buffer.
pub(crate) const MAX_KEY_LIMIT: usize = 4096;
/// Largest value length: the record stores it in 26 bits.
pub(crate) const MAX_VALUE_LIMIT: usize = (1 << 26) - 1;

/// Record header bytes.
pub(crate) const RECORD_HEADER: usize = 16;
/// Bytes of the secret that keys xxh3 (xxh3's default secret size).
pub(crate) const SECRET_SIZE: usize = 192;
/// Slots per index bucket: one cache line of slot words.
pub(crate) const BUCKET_SLOTS: usize = 8;

/// Record states.
pub(crate) const STATE_LIVE: u64 = 1;
pub(crate) const STATE_DEAD: u64 = 2;
pub(crate) const STATE_PAD: u64 = 3;

/// The file header, as written at offset 0. Never referenced over shared bytes: its
/// field offsets are used to read and write words.
#[repr(C)]
pub(crate) struct FileHeader {
    pub magic: u64,
    pub version: u64,
    pub total_size: u64,
    pub capacity: u64,
    pub shard_count: u64,
    pub shard_size: u64,
    pub max_key_len: u64,
    pub max_value_len: u64,
    pub buckets: u64,
    pub small_cap: u64,
    pub main_cap: u64,
    pub ghost_len: u64,
    pub expected_entry: u64,
    pub stats_slots: u64,
    pub fill_slots: u64,
    pub arch: u64,
    pub libc: u64,
    pub mutex_size: u64,
    pub mutex_kind: u64,
    pub fingerprint: u64,
    /// Zero, but for word 1: the file's deploy generation (`Options::generation`,
    /// written by `header`; 0 in files made before it was).
    pub reserved: [u64; 12],
    pub secret: [u64; SECRET_SIZE / 8],
    pub checksum: u64,
    /// Not covered by `checksum`: see "Stamp" above.
    pub stamp: [u64; STAMP_WORDS],
}

/// Words of the stamp: boot id (2), pid namespace (2), time namespace (2), checksum.
pub(crate) const STAMP_WORDS: usize = 7;

const _: () = assert!(offset_of!(FileHeader, magic) == 0);
const _: () = assert!(offset_of!(FileHeader, version) == 8);
const _: () = assert!(offset_of!(FileHeader, secret) == 256);
const _: () = assert!(offset_of!(FileHeader, checksum) == 448);
const _: () = assert!(offset_of!(FileHeader, stamp) == 456);
const _: () = assert!(core::mem::size_of::<FileHeader>() == 512);
const _: () = assert!(core::mem::size_of::<FileHeader>() <= HEADER_SIZE);

/// One shard's header. The lock comes first and has its own cache line.
#[repr(C)]
pub(crate) struct ShardHeader {
    pub lock: [u64; 8],
    pub seq: u64,
    pub intent: u64,
    pub small: u64,
    pub main: u64,
    pub entries: u64,
    pub live_bytes: u64,
    pub inserts: u64,
    pub updates: u64,
    pub removals: u64,
    pub evictions: u64,
    pub expirations: u64,
    pub recoveries: u64,
    pub dropped: u64,
    /// Of `evictions`, those made because both of a key's index buckets were full.
    pub index_evictions: u64,
    /// The last version this shard gave out (see "Versions").
    pub version: u64,
    /// Bytes of records appended by sets.
    pub written: u64,
    /// Bytes of records moved by eviction and cleaning (small to main, reinsertion,
    /// compaction).
    pub moved: u64,
    /// Revocations made in this shard (see "Fences").
    pub fence_seq: u64,
    pub reserved: [u64; 6],
}

/// Revoked hashes a shard remembers (see "Fences"): a ticket whose shard saw fewer
/// revocations than this since it was taken is checked against each of them, exactly.
pub(crate) const FENCE_RING: usize = 64;
/// Revocation counters per shard, for a ticket that outlived the ring: it is then
/// fenced off by a revocation of any key of its class (spuriously, which costs that
/// store, never correctness), so enough classes that this is rare.
pub(crate) const FENCE_CLASSES: usize = 64;
/// Offset of the fence ring in a shard, right after its header.
pub(crate) const SH_FENCE_RING: usize = core::mem::size_of::<ShardHeader>();
/// Offset of the fence classes in a shard.
pub(crate) const SH_FENCE_CLASSES: usize = SH_FENCE_RING + FENCE_RING * 8;
/// Bytes before a shard's index: its header and its fences.
pub(crate) const SHARD_HEADER: usize = SH_FENCE_CLASSES + FENCE_CLASSES * 8;
const _: () = assert!(core::mem::size_of::<ShardHeader>() == 256);
const _: () = assert!(SHARD_HEADER == 1280);
const _: () = assert!(offset_of!(ShardHeader, seq) == 64);
const _: () = assert!(offset_of!(ShardHeader, dropped) == 160);

pub(crate) const SH_SEQ: usize = offset_of!(ShardHeader, seq);
pub(crate) const SH_INTENT: usize = offset_of!(ShardHeader, intent);
pub(crate) const SH_SMALL: usize = offset_of!(ShardHeader, small);
pub(crate) const SH_MAIN: usize = offset_of!(ShardHeader, main);
pub(crate) const SH_ENTRIES: usize = offset_of!(ShardHeader, entries);
pub(crate) const SH_LIVE_BYTES: usize = offset_of!(ShardHeader, live_bytes);
pub(crate) const SH_INSERTS: usize = offset_of!(ShardHeader, inserts);
pub(crate) const SH_UPDATES: usize = offset_of!(ShardHeader, updates);
pub(crate) const SH_REMOVALS: usize = offset_of!(ShardHeader, removals);
pub(crate) const SH_EVICTIONS: usize = offset_of!(ShardHeader, evictions);
pub(crate) const SH_EXPIRATIONS: usize = offset_of!(ShardHeader, expirations);
pub(crate) const SH_RECOVERIES: usize = offset_of!(ShardHeader, recoveries);
pub(crate) const SH_DROPPED: usize = offset_of!(ShardHeader, dropped);
pub(crate) const SH_INDEX_EVICTIONS: usize = offset_of!(ShardHeader, index_evictions);
pub(crate) const SH_VERSION: usize = offset_of!(ShardHeader, version);
pub(crate) const SH_WRITTEN: usize = offset_of!(ShardHeader, written);
pub(crate) const SH_MOVED: usize = offset_of!(ShardHeader, moved);
pub(crate) const SH_FENCE_SEQ: usize = offset_of!(ShardHeader, fence_seq);

/// Flush reasons counted in the near area (see `near::FlushReason`).
pub(crate) const NEAR_FLUSH_REASONS: usize = 5;

/// The near area (see "Near area").
#[repr(C)]
pub(crate) struct NearArea {
    pub lease: [u64; 8],
    /// The line every near-cache get reads: written only by flushes, the lease's
    /// holder and its heartbeat.
    pub epoch: u64,
    pub heartbeat: u64,
    pub holder: u64,
    /// A hash of the key prefixes the holder tracks (see `near::scope_of`).
    pub scope: u64,
    pub line_pad: [u64; 4],
    /// Counters, on a line of their own.
    pub leases: u64,
    pub takeovers: u64,
    pub invalidations: u64,
    pub flushes: [u64; NEAR_FLUSH_REASONS],
    pub reserved: [u64; 8],
}

pub(crate) const NEAR_SIZE: usize = core::mem::size_of::<NearArea>();
const _: () = assert!(NEAR_SIZE == 256);
const _: () = assert!(offset_of!(NearArea, epoch) == 64);
const _: () = assert!(offset_of!(NearArea, leases) == 128);
pub(crate) const NA_EPOCH: usize = offset_of!(NearArea, epoch);
pub(crate) const NA_HEARTBEAT: usize = offset_of!(NearArea, heartbeat);
pub(crate) const NA_HOLDER: usize = offset_of!(NearArea, holder);
pub(crate) const NA_SCOPE: usize = offset_of!(NearArea, scope);
pub(crate) const NA_LEASES: usize = offset_of!(NearArea, leases);
pub(crate) const NA_TAKEOVERS: usize = offset_of!(NearArea, takeovers);
pub(crate) const NA_INVALIDATIONS: usize = offset_of!(NearArea, invalidations);
pub(crate) const NA_FLUSHES: usize = offset_of!(NearArea, flushes);

/// One per-process statistics slot: its counters, then a cache line of padding (the
/// adjacent-line prefetcher moves 64-byte lines in pairs, so two processes' slots never
/// share a pair). The claim is an open file description lock on a byte of the file (see
/// "Statistics slot claims"). A new owner keeps adding to the counters it finds, so a
/// dead process's counts stay in the totals.
#[repr(C)]
pub(crate) struct StatsSlot {
    pub hits: u64,
    pub misses: u64,
    pub stale_hits: u64,
    pub lock_timeouts: u64,
    pub fills: u64,
    pub fill_timeouts: u64,
    pub locks: u64,
    pub fill_handovers: u64,
    pub fills_fenced: u64,
    pub padding: [u64; 7],
}

pub(crate) const STATS_SLOT_SIZE: usize = 128;
const _: () = assert!(core::mem::size_of::<StatsSlot>() == STATS_SLOT_SIZE);
pub(crate) const SS_HITS: usize = offset_of!(StatsSlot, hits);
pub(crate) const SS_MISSES: usize = offset_of!(StatsSlot, misses);
pub(crate) const SS_STALE_HITS: usize = offset_of!(StatsSlot, stale_hits);
pub(crate) const SS_LOCK_TIMEOUTS: usize = offset_of!(StatsSlot, lock_timeouts);
pub(crate) const SS_FILLS: usize = offset_of!(StatsSlot, fills);
pub(crate) const SS_FILL_TIMEOUTS: usize = offset_of!(StatsSlot, fill_timeouts);
pub(crate) const SS_LOCKS: usize = offset_of!(StatsSlot, locks);
pub(crate) const SS_FILL_HANDOVERS: usize = offset_of!(StatsSlot, fill_handovers);
pub(crate) const SS_FILLS_FENCED: usize = offset_of!(StatsSlot, fills_fenced);

/// One fill slot: a robust mutex on its own cache line, then the word of the fill its
/// holder runs (see "Fences") on the next, which revocations read.
pub(crate) const FILL_SLOT_SIZE: usize = 128;
/// Offset of the fill's word in a fill slot.
pub(crate) const FILL_WORD: usize = 64;

/// Intent record operations (bits 0..8 of the intent word; bits 32..64 hold the slot of
/// the entry in flight).
pub(crate) const INTENT_NONE: u64 = 0;
pub(crate) const INTENT_SET: u64 = 1;
pub(crate) const INTENT_REMOVE: u64 = 2;
pub(crate) const INTENT_TOUCH: u64 = 3;
pub(crate) const INTENT_MOVE: u64 = 4;
pub(crate) const INTENT_EVICT: u64 = 5;
pub(crate) const INTENT_CLEAR: u64 = 6;
/// A value overwritten in place (same lengths): repair drops that entry, whose bytes may
/// be half old and half new.
pub(crate) const INTENT_OVERWRITE: u64 = 7;

pub(crate) const fn align8(n: usize) -> usize {
    (n + 7) & !7
}

pub(crate) const fn align_page(n: usize) -> usize {
    (n + PAGE - 1) & !(PAGE - 1)
}

/// Bytes a record of this key and value length takes in a log.
pub(crate) const fn record_size(klen: usize, vlen: usize) -> usize {
    RECORD_HEADER + align8(klen) + align8(vlen)
}

/// The machine tag stored in the header: the target architecture.
pub(crate) fn arch_tag() -> u64 {
    tag8(std::env::consts::ARCH)
}

/// The libc tag stored in the header.
pub(crate) fn libc_tag() -> u64 {
    tag8(if cfg!(target_env = "gnu") {
        "glibc"
    } else {
        "other"
    })
}

fn tag8(s: &str) -> u64 {
    let mut b = [0u8; 8];
    for (d, s) in b.iter_mut().zip(s.bytes()) {
        *d = s;
    }
    u64::from_le_bytes(b)
}

/// A text for a tag, for error messages.
pub(crate) fn tag_text(t: u64) -> String {
    String::from_utf8_lossy(&t.to_le_bytes())
        .trim_end_matches('\0')
        .to_string()
}

/// Hash of every layout constant of this build: sizes and offsets of the on-file structs
/// and the record encoding. Two builds share files only when it matches.
pub(crate) fn fingerprint() -> u64 {
    let parts: [u64; 18] = [
        FORMAT_VERSION as u64,
        core::mem::size_of::<FileHeader>() as u64,
        SHARD_HEADER as u64,
        STATS_SLOT_SIZE as u64,
        FILL_SLOT_SIZE as u64,
        STATS_SLOTS as u64,
        FILL_SLOTS as u64,
        RECORD_HEADER as u64,
        BUCKET_SLOTS as u64,
        PAGE as u64,
        SH_SEQ as u64,
        SS_HITS as u64,
        crate::lock::MUTEX_SPACE as u64,
        core::mem::size_of::<libc::pthread_mutex_t>() as u64,
        NEAR_SIZE as u64,
        FENCE_RING as u64,
        FENCE_CLASSES as u64,
        SH_VERSION as u64,
    ];
    let mut bytes = Vec::with_capacity(parts.len() * 8);
    for p in parts {
        bytes.extend_from_slice(&p.to_le_bytes());
    }
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

/// The creation parameters of a cache: everything the layout is derived from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Params {
    pub capacity: u64,
    pub max_key_len: usize,
    pub max_value_len: usize,
    /// 0 picks a count from the capacity and limits.
    pub shards: usize,
    pub expected_entry: usize,
}

/// Where everything is, derived from [`Params`] alone (so a header can be checked by
/// deriving it again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Geometry {
    pub params: Params,
    pub total_size: usize,
    pub stats_off: usize,
    pub fill_off: usize,
    pub near_off: usize,
    pub shards_off: usize,
    pub shard_count: usize,
    pub shard_bits: u32,
    pub shard_size: usize,
    pub buckets: usize,
    pub bitmap_off: usize,
    pub bitmap_words: usize,
    pub ghost_off: usize,
    pub ghost_len: usize,
    pub small_off: usize,
    pub small_cap: usize,
    pub main_off: usize,
    pub main_cap: usize,
}

/// Largest capacity: 1 TiB, which keeps every size computation far from overflow.
pub(crate) const MAX_CAPACITY: u64 = 1 << 40;

/// Smallest data area (both logs) a shard may have.
const MIN_SHARD_DATA: usize = 16 << 10;
/// Most shards a file has when the count is picked automatically: enough to keep
/// writers of many cores apart.
const MAX_AUTO_SHARDS: usize = 256;
/// Fewest bytes per shard when the count is picked automatically: each shard pays a
/// header, index rounding and up to a record's worth of unusable space at each log's
/// end, and a shard of a few hundred records approximates S3-FIFO less well, so small
/// files get fewer, larger shards (64 in a 64 MiB file, 256 above 128 MiB).
const MIN_AUTO_SHARD_BYTES: usize = 512 << 10;
/// The largest record must fit this many times in the main log ("comfortably").
const RECORDS_PER_MAIN: usize = 8;
/// Index slots per expected entry, times 4: a load of 0.8 when the logs are full of
/// entries of the expected size, where two-choice buckets of 8 almost never overflow.
const SLOTS_PER_ENTRY_X4: usize = 5;

impl Geometry {
    /// Derives the layout, or says why the parameters cannot make a working cache.
    pub(crate) fn compute(p: &Params) -> Result<Geometry, String> {
        if p.max_key_len == 0 || p.max_key_len > MAX_KEY_LIMIT {
            return Err(format!(
                "max_key_len {} must be between 1 and {MAX_KEY_LIMIT}",
                p.max_key_len
            ));
        }
        if p.max_value_len > MAX_VALUE_LIMIT {
            return Err(format!(
                "max_value_len {} is over the format's limit of {MAX_VALUE_LIMIT}",
                p.max_value_len
            ));
        }
        if p.expected_entry < 16 || p.expected_entry > 1 << 26 {
            return Err(format!(
                "expected_entry_size {} must be between 16 and {}",
                p.expected_entry,
                1 << 26
            ));
        }
        if p.shards != 0 && (!p.shards.is_power_of_two() || p.shards > 1 << 16) {
            return Err(format!(
                "shards {} must be a power of two up to 65536",
                p.shards
            ));
        }
        if p.capacity > MAX_CAPACITY {
            return Err(format!(
                "capacity {} is over the largest supported, {MAX_CAPACITY} bytes",
                p.capacity
            ));
        }
        let capacity = usize::try_from(p.capacity)
            .map_err(|_| "capacity does not fit this machine's address space".to_string())?;
        let stats_off = HEADER_SIZE;
        let fill_off = align_page(stats_off + STATS_SLOTS * STATS_SLOT_SIZE);
        let near_off = align_page(fill_off + FILL_SLOTS * FILL_SLOT_SIZE);
        let shards_off = align_page(near_off + NEAR_SIZE);
        // (A versioned record is 8 bytes larger: it fits as long as one record does.)
        let max_record = record_size(p.max_key_len, p.max_value_len);
        let min_main = max_record.saturating_mul(RECORDS_PER_MAIN);
        // Data bytes a shard needs at least: the main log (90%) must hold min_main.
        let min_data = (min_main.saturating_mul(10) / 9 + 8).max(MIN_SHARD_DATA);
        let avail = capacity.saturating_sub(shards_off);
        let overhead_per_data = |data: usize| -> usize {
            // index + bitmap + ghost for a data area of `data` bytes
            let buckets = buckets_for(data, p.expected_entry);
            let slots = buckets * BUCKET_SLOTS;
            SHARD_HEADER + slots * 8 + slots.div_ceil(64) * 8 + (slots / 4).max(1) * 8
        };
        let fits = |count: usize| -> bool {
            let size = (avail / count) & !(PAGE - 1);
            size > overhead_per_data(min_data) + min_data
        };
        let shard_count = if p.shards != 0 {
            if !fits(p.shards) {
                return Err(format!(
                    "{} shards of a {}-byte capacity leave too little room per shard for \
                     values of up to {} bytes; ask for fewer shards, a larger capacity or \
                     a smaller max_value_len",
                    p.shards, p.capacity, p.max_value_len
                ));
            }
            p.shards
        } else {
            let by_size = (avail / MIN_AUTO_SHARD_BYTES).max(1);
            // The largest power of two within both bounds.
            let mut n = 1usize << (usize::BITS - 1 - by_size.min(MAX_AUTO_SHARDS).leading_zeros());
            while n > 1 && !fits(n) {
                n /= 2;
            }
            if !fits(n) {
                return Err(format!(
                    "a capacity of {} bytes is too small for values of up to {} bytes \
                     (need about {} bytes); raise the capacity or lower max_value_len",
                    p.capacity,
                    p.max_value_len,
                    shards_off + overhead_per_data(min_data) + min_data + PAGE
                ));
            }
            n
        };
        let shard_size = (avail / shard_count) & !(PAGE - 1);
        // Split the shard: find the largest data area whose index still fits.
        let room = shard_size - SHARD_HEADER;
        let per_entry_overhead = (SLOTS_PER_ENTRY_X4 * (8 * 4 + 2)) / 4 + 1;
        // In u128: room (< 2^40) times the expected entry (< 2^26) overflows 64 bits.
        let mut data = (room as u128 * p.expected_entry as u128
            / (p.expected_entry + per_entry_overhead) as u128) as usize;
        while data > 0 && overhead_per_data(data) - SHARD_HEADER + data > room {
            data -= data / 64 + 8;
        }
        let buckets = buckets_for(data, p.expected_entry);
        let slots = buckets * BUCKET_SLOTS;
        let bitmap_words = slots.div_ceil(64);
        let ghost_len = (slots / 4).max(1);
        let index_end = SHARD_HEADER + slots * 8;
        let bitmap_off = index_end;
        let ghost_off = bitmap_off + bitmap_words * 8;
        let small_off = ghost_off + ghost_len * 8;
        let data = (shard_size - small_off) & !7;
        let small_cap = align8(data / 10);
        let main_cap = data - small_cap;
        let main_off = small_off + small_cap;
        if main_cap < min_main || small_cap < 64 {
            return Err(format!(
                "values of up to {} bytes do not fit comfortably in shards of {} bytes; \
                 raise the capacity or lower max_value_len",
                p.max_value_len, shard_size
            ));
        }
        if data / 8 >= u32::MAX as usize - 1 || slots > u32::MAX as usize {
            return Err("shards this large are not supported; ask for more shards".into());
        }
        let total_size = shards_off + shard_count * shard_size;
        Ok(Geometry {
            params: *p,
            total_size,
            stats_off,
            fill_off,
            near_off,
            shards_off,
            shard_count,
            shard_bits: shard_count.trailing_zeros(),
            shard_size,
            buckets,
            bitmap_off,
            bitmap_words,
            ghost_off,
            ghost_len,
            small_off,
            small_cap,
            main_off,
            main_cap,
        })
    }

    /// Offset of shard `i`.
    pub(crate) fn shard_base(&self, i: usize) -> usize {
        self.shards_off + i * self.shard_size
    }

    /// Offset of statistics slot `i`.
    pub(crate) fn stats_slot(&self, i: usize) -> usize {
        self.stats_off + i * STATS_SLOT_SIZE
    }

    /// Offset of fill slot `i`.
    pub(crate) fn fill_slot(&self, i: usize) -> usize {
        self.fill_off + i * FILL_SLOT_SIZE
    }

    /// The shard a hash belongs to.
    #[inline]
    pub(crate) fn shard_of(&self, h: u64) -> usize {
        ((h >> 32) as usize) & (self.shard_count - 1)
    }
}

fn buckets_for(data: usize, expected_entry: usize) -> usize {
    let entries = data / expected_entry;
    (entries * SLOTS_PER_ENTRY_X4 / 4)
        .div_ceil(BUCKET_SLOTS)
        .max(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(capacity: u64, max_value: usize) -> Params {
        Params {
            capacity,
            max_key_len: 256,
            max_value_len: max_value,
            shards: 0,
            expected_entry: 320,
        }
    }

    #[test]
    fn geometry_fits_in_capacity_and_is_ordered() {
        for cap in [1u64 << 20, 4 << 20, 32 << 20, 256 << 20] {
            let g = Geometry::compute(&params(cap, 4096)).expect("geometry");
            assert!(g.total_size as u64 <= cap);
            assert!(g.shard_count.is_power_of_two());
            assert!(g.small_off < g.main_off);
            assert_eq!(
                g.main_off + g.main_cap,
                g.small_off + g.small_cap + g.main_cap
            );
            assert!(g.main_off + g.main_cap <= g.shard_size);
            assert!(g.main_cap >= 8 * record_size(256, 4096));
        }
    }

    #[test]
    fn automatic_shard_count_grows_with_the_file_up_to_its_cap() {
        for (cap, want) in [
            (1u64 << 20, 1),
            (4 << 20, 4),
            (64 << 20, 64),
            (128 << 20, 128),
            (129 << 20, 256),
            (1 << 40, 256),
        ] {
            let g = Geometry::compute(&params(cap, 4096)).expect("geometry");
            assert_eq!(g.shard_count, want, "capacity {cap}");
            assert!(g.shard_size >= MIN_AUTO_SHARD_BYTES || g.shard_count == 1);
        }
    }

    #[test]
    fn value_limit_that_does_not_fit_is_refused() {
        let err = Geometry::compute(&params(1 << 20, 1 << 20)).expect_err("too big");
        assert!(
            err.contains("too small") || err.contains("comfortably"),
            "{err}"
        );
    }
}
