//! Entry points for the fuzz targets (`fuzz/`): the header parser on arbitrary bytes,
//! and the table logic on an in-memory region that the fuzzer may scribble over. Not a
//! stable API.

use std::path::Path;

use crate::error::{Error, Result};
use crate::layout::{Geometry, Params, SECRET_SIZE};
use crate::region::Region;
use crate::seqlock;
use crate::shard::{Damaged, Hasher, Probe, SetOutcome, Shard};

/// Parses and checks a header page as `open` does (everything but boot id and size).
pub fn check_header(bytes: &[u8]) -> Result<()> {
    crate::header::parse_header(Path::new("<fuzz>"), bytes).map(|_| ())
}

/// A whole cache layout on the heap, driven like `Cache` drives a mapping, with a
/// single caller standing in for the shard locks.
pub struct Table {
    region: Region,
    geo: Geometry,
    hasher: Hasher,
}

impl Table {
    /// A table of `capacity` bytes with the given limits.
    pub fn new(capacity: u64, max_key_len: usize, max_value_len: usize) -> Result<Table> {
        let geo = Geometry::compute(&Params {
            capacity,
            max_key_len,
            max_value_len,
            shards: 0,
            expected_entry: crate::options::DEFAULT_EXPECTED_ENTRY,
        })
        .map_err(Error::InvalidOptions)?;
        let secret: Vec<u8> = (0..SECRET_SIZE as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        Ok(Table {
            region: Region::heap(geo.total_size),
            hasher: Hasher::new(&secret),
            geo,
        })
    }

    /// Bytes of the region.
    pub fn size(&self) -> usize {
        self.geo.total_size
    }

    /// `(offset, length)` of every shard, for targeted mutations.
    pub fn shard_ranges(&self) -> Vec<(usize, usize)> {
        (0..self.geo.shard_count)
            .map(|i| (self.geo.shard_base(i), self.geo.shard_size))
            .collect()
    }

    /// Writes one 8-byte word (the offset is aligned down and wrapped into the region).
    pub fn poke(&self, off: usize, value: u64) {
        let off = (off % self.geo.total_size) & !7;
        self.region.store(off, value);
    }

    /// Reads one 8-byte word.
    pub fn peek(&self, off: usize) -> u64 {
        let off = (off % self.geo.total_size) & !7;
        self.region.load(off)
    }

    fn with_shard<R>(
        &self,
        key: &[u8],
        f: impl Fn(&Shard<'_>, u64) -> std::result::Result<R, Damaged>,
    ) -> std::result::Result<R, String> {
        let h = self.hasher.hash(key);
        let shard = Shard::new(&self.region, &self.geo, self.geo.shard_of(h), &self.hasher);
        let seq = self
            .region
            .atomic(shard.seq_off())
            .ok_or_else(|| "no sequence counter".to_string())?;
        if seqlock::is_dirty(seq) {
            shard.repair();
        }
        seqlock::write_begin(seq);
        let mut result = f(&shard, h);
        if result.is_err() {
            shard.repair();
            result = f(&shard, h);
        }
        seqlock::write_end(seq);
        result.map_err(|d| d.0)
    }

    fn check(&self, key: &[u8], value: usize) -> std::result::Result<(), String> {
        if key.len() > self.geo.params.max_key_len || value > self.geo.params.max_value_len {
            return Err("too large".into());
        }
        Ok(())
    }

    /// `set` (or `insert_if_absent`); true if it stored the value.
    pub fn set(
        &self,
        key: &[u8],
        value: &[u8],
        expire: u64,
        only_if_absent: bool,
        now: u64,
    ) -> std::result::Result<bool, String> {
        self.check(key, value.len())?;
        self.with_shard(key, |s, h| {
            let kh = s.locate(h);
            s.set(
                key,
                &kh,
                value,
                expire.min(crate::shard::MAX_EXPIRE),
                only_if_absent,
                now,
            )
            .map(|o| o != SetOutcome::Exists)
        })
    }

    /// `get`: the value if present and not expired at `now`.
    pub fn get(&self, key: &[u8], now: u64) -> std::result::Result<Option<Vec<u8>>, String> {
        self.check(key, 0)?;
        self.with_shard(key, |s, h| {
            let kh = s.locate(h);
            match s.find(key, &kh) {
                Probe::Hit { rec, .. } if !rec.expired(now) => {
                    let mut out = Vec::new();
                    s.read_value(&rec, &mut out);
                    Ok(Some(out))
                }
                Probe::Hit { .. } | Probe::Miss => Ok(None),
                Probe::Bad => Err(Damaged("bad slot".into())),
            }
        })
    }

    /// `remove`.
    pub fn remove(&self, key: &[u8], now: u64) -> std::result::Result<bool, String> {
        self.check(key, 0)?;
        self.with_shard(key, |s, h| {
            let kh = s.locate(h);
            s.remove(key, &kh, now)
        })
    }

    /// Rebuilds every shard; returns entries dropped.
    pub fn repair_all(&self) -> u64 {
        (0..self.geo.shard_count)
            .map(|i| Shard::new(&self.region, &self.geo, i, &self.hasher).repair())
            .sum()
    }

    /// Marks a shard mid-write, as a writer that died would leave it.
    pub fn mark_dirty(&self, shard: usize) {
        let s = Shard::new(
            &self.region,
            &self.geo,
            shard % self.geo.shard_count,
            &self.hasher,
        );
        if let Some(seq) = self.region.atomic(s.seq_off()) {
            seqlock::write_begin(seq);
        }
    }

    /// Every problem `verify` would report for the shards.
    pub fn verify(&self) -> Vec<String> {
        let mut out = Vec::new();
        for i in 0..self.geo.shard_count {
            Shard::new(&self.region, &self.geo, i, &self.hasher).verify(&mut out);
        }
        out
    }
}
