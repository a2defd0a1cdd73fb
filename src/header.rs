//! The header page's codec: builds and checks the page `layout` maps as [`FileHeader`],
//! and the stamp of where a file may be used (its boot, pid namespace and time
//! namespace), with the reads of this process's own.
//!
//! Nothing here opens, locks or maps the cache file: that is `file`'s. Parsing takes the
//! page's bytes, however they were read (from the file before mapping it, from the
//! mapping by `verify`, or from a fuzzer).

use core::mem::offset_of;
use std::path::Path;

use crate::error::{Error, Result};
use crate::layout::{
    arch_tag, fingerprint, libc_tag, tag_text, FileHeader, Geometry, Params, FILL_SLOTS,
    FORMAT_VERSION, HEADER_SIZE, MAGIC, SECRET_SIZE, STAMP_WORDS, STATS_SLOTS,
};
use crate::lock;
use crate::region::Region;

/// Where the kernel gives the current boot's id.
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

/// The current boot's id, from the kernel. Read afresh on every call (opens are rare):
/// a value cached behind a `Once` would hang a child forked while another thread was
/// inside the initialiser, since the child inherits the `Once` half-run.
///
/// [`Error::ProcUnavailable`] where /proc is not mounted (or hides it): without the
/// boot id no file's locks can be trusted, and a made-up id would call every file one
/// of another boot.
pub(crate) fn boot_id() -> Result<[u64; 2]> {
    crash_point!("open.read_boot_id");
    let unavailable = || Error::ProcUnavailable {
        read: BOOT_ID.into(),
    };
    let text = std::fs::read_to_string(BOOT_ID).map_err(|_| unavailable())?;
    let hex: String = text.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    let half = |r: std::ops::Range<usize>| {
        hex.get(r)
            .and_then(|h| u64::from_str_radix(h, 16).ok())
            .ok_or_else(unavailable)
    };
    Ok([half(0..16)?, half(16..32)?])
}

/// Whether a namespace must be readable where /proc is mounted.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kernel {
    /// Every kernel larder runs on has it (pid namespaces: Linux 3.8).
    Always,
    /// A kernel may lack it (time namespaces: Linux 5.6): `(0, 0)` then.
    Maybe,
}

/// `(st_dev, st_ino)` of one of this process's namespaces. [`Error::ProcUnavailable`]
/// where /proc does not show it (not mounted, or a procfs of another pid namespace in
/// which this process has no `/proc/self`), unless the kernel may lack the namespace.
fn namespace(which: &str, kernel: Kernel) -> Result<(u64, u64)> {
    let at = format!("/proc/self/ns/{which}");
    match rustix::fs::stat(at.as_str()) {
        Ok(st) => Ok((st.st_dev, st.st_ino)),
        Err(rustix::io::Errno::NOENT) if kernel == Kernel::Maybe => Ok((0, 0)),
        Err(_) => Err(Error::ProcUnavailable { read: at.into() }),
    }
}

/// Where a file may be used: the boot, the pid namespace and the time namespace it was
/// created in (the header's stamp; see `layout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Origin {
    pub boot: [u64; 2],
    pub pid_ns: (u64, u64),
    pub time_ns: (u64, u64),
}

impl Origin {
    /// This process's; [`Error::ProcUnavailable`] where /proc cannot tell (larder
    /// refuses to share a file it cannot prove is of this boot and these namespaces).
    pub(crate) fn here() -> Result<Origin> {
        let boot = boot_id()?;
        // Where /proc/self is missing the pid namespace check would fail too: say so.
        let pid_ns = namespace("pid", Kernel::Always)?;
        Ok(Origin {
            boot,
            pid_ns,
            time_ns: namespace("time", Kernel::Maybe)?,
        })
    }

    fn words(&self) -> [u64; STAMP_WORDS - 1] {
        [
            self.boot[0],
            self.boot[1],
            self.pid_ns.0,
            self.pid_ns.1,
            self.time_ns.0,
            self.time_ns.1,
        ]
    }

    /// The stamp's words, checksum last.
    pub(crate) fn stamp(&self) -> [u64; STAMP_WORDS] {
        let w = self.words();
        let mut out = [0u64; STAMP_WORDS];
        out[..STAMP_WORDS - 1].copy_from_slice(&w);
        out[STAMP_WORDS - 1] = stamp_sum(&w);
        out
    }

    /// The origin a header page records; `None` if its stamp's checksum fails (an
    /// offline repair died while writing it, or the bytes were damaged).
    pub(crate) fn of_header(buf: &[u8]) -> Option<Origin> {
        let at = offset_of!(FileHeader, stamp);
        let w: Vec<u64> = (0..STAMP_WORDS).map(|i| word(buf, at + 8 * i)).collect();
        if stamp_sum(&w[..STAMP_WORDS - 1]) != w[STAMP_WORDS - 1] {
            return None;
        }
        Some(Origin {
            boot: [w[0], w[1]],
            pid_ns: (w[2], w[3]),
            time_ns: (w[4], w[5]),
        })
    }

    /// Whether a process here may attach to a file of origin `file`; the error says why
    /// not.
    pub(crate) fn admit(&self, path: &Path, file: Option<Origin>) -> Result<()> {
        let Some(file) = file else {
            return Err(Error::Corrupt {
                path: path.to_path_buf(),
                detail: "its boot and namespace stamp does not match its checksum (an offline \
                         repair was interrupted, or the header was damaged)"
                    .into(),
            });
        };
        if file.boot != self.boot {
            return Err(Error::OtherBoot {
                path: path.to_path_buf(),
            });
        }
        // A robust futex records its owner's thread id as the owner's pid namespace sees
        // it, and the kernel marks a futex owner-dead when a thread dies while waiting on
        // it (glibc's `list_op_pending`) if the owner field equals the dying thread's own
        // id. Across pid namespaces equal small tids are common, so a waiter's death in
        // one namespace could hand a lock held in another to a third process: two
        // owners of one shard. Sharing a file is therefore confined to one namespace.
        if file.pid_ns != self.pid_ns {
            return Err(Error::OtherPidNamespace {
                path: path.to_path_buf(),
            });
        }
        // Expiry times are CLOCK_MONOTONIC readings, which a time namespace offsets: a
        // TTL written in one would be wrong by the offset in another.
        if file.time_ns != self.time_ns {
            return Err(Error::OtherTimeNamespace {
                path: path.to_path_buf(),
            });
        }
        Ok(())
    }
}

fn stamp_sum(words: &[u64]) -> u64 {
    let mut bytes = Vec::with_capacity(words.len() * 8);
    for w in words {
        bytes.extend_from_slice(&w.to_le_bytes());
    }
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

fn word(buf: &[u8], off: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&buf[off..off + 8]);
    u64::from_le_bytes(w)
}

/// The checked contents of a header.
pub(crate) struct HeaderInfo {
    pub geo: Geometry,
    pub kind: u32,
    pub secret: Vec<u8>,
    /// The deploy generation the file was created with (`Options::generation`).
    pub generation: u64,
}

/// The header word holding the file's deploy generation (`Options::generation`): the
/// second of the reserved words, covered by the header checksum. It changes nothing in
/// the layout (files made before it was written hold 0 there, generation 0), so it is
/// not part of the layout fingerprint.
const GENERATION_OFF: usize = offset_of!(FileHeader, reserved) + 8;

const CHECKSUM_OFF: usize = offset_of!(FileHeader, checksum);

/// The header checksum: xxh3 over the page up to the checksum word (the stamp after it
/// is covered by its own).
fn checksum(page: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(&page[..CHECKSUM_OFF])
}

/// Parses and checks a header page: everything but the boot id and the file size.
pub(crate) fn parse_header(path: &Path, buf: &[u8]) -> Result<HeaderInfo> {
    let path = path.to_path_buf();
    if buf.len() < HEADER_SIZE {
        return Err(Error::Truncated {
            path,
            len: buf.len() as u64,
            expected: HEADER_SIZE as u64,
        });
    }
    let f = |field: usize| word(buf, field);
    if f(offset_of!(FileHeader, magic)) != MAGIC {
        return Err(Error::NotACache { path });
    }
    let version = f(offset_of!(FileHeader, version));
    if version != FORMAT_VERSION as u64 {
        return Err(Error::Version {
            path,
            found: version.min(u32::MAX as u64) as u32,
            expected: FORMAT_VERSION,
        });
    }
    if f(CHECKSUM_OFF) != checksum(buf) {
        return Err(Error::Corrupt {
            path,
            detail: "the header checksum does not match".into(),
        });
    }
    let native = lock::native_kind().map_err(lock::init_error)?;
    let mut diffs = Vec::new();
    let mut cmp = |name: &str, found: u64, want: u64, text: &dyn Fn(u64) -> String| {
        if found != want {
            diffs.push(format!(
                "{name}: file {}, this build {}",
                text(found),
                text(want)
            ));
        }
    };
    let num = |v: u64| v.to_string();
    cmp(
        "architecture",
        f(offset_of!(FileHeader, arch)),
        arch_tag(),
        &tag_text,
    );
    cmp(
        "libc",
        f(offset_of!(FileHeader, libc)),
        libc_tag(),
        &tag_text,
    );
    cmp(
        "sizeof(pthread_mutex_t)",
        f(offset_of!(FileHeader, mutex_size)),
        core::mem::size_of::<libc::pthread_mutex_t>() as u64,
        &num,
    );
    cmp(
        "mutex kind",
        f(offset_of!(FileHeader, mutex_kind)),
        native as u64,
        &|v| format!("{v:#x}"),
    );
    cmp(
        "layout fingerprint",
        f(offset_of!(FileHeader, fingerprint)),
        fingerprint(),
        &|v| format!("{v:#018x}"),
    );
    cmp(
        "stats slots",
        f(offset_of!(FileHeader, stats_slots)),
        STATS_SLOTS as u64,
        &num,
    );
    cmp(
        "fill slots",
        f(offset_of!(FileHeader, fill_slots)),
        FILL_SLOTS as u64,
        &num,
    );
    if !diffs.is_empty() {
        return Err(Error::Incompatible {
            path,
            differences: diffs,
        });
    }
    let usize_of = |field: usize| usize::try_from(f(field)).unwrap_or(usize::MAX);
    let params = Params {
        capacity: f(offset_of!(FileHeader, capacity)),
        max_key_len: usize_of(offset_of!(FileHeader, max_key_len)),
        max_value_len: usize_of(offset_of!(FileHeader, max_value_len)),
        shards: usize_of(offset_of!(FileHeader, shard_count)),
        expected_entry: usize_of(offset_of!(FileHeader, expected_entry)),
    };
    let geo = Geometry::compute(&params).map_err(|e| Error::Corrupt {
        path: path.clone(),
        detail: format!("the header's parameters do not make a layout: {e}"),
    })?;
    let derived = [
        (
            "total size",
            geo.total_size as u64,
            f(offset_of!(FileHeader, total_size)),
        ),
        (
            "shard size",
            geo.shard_size as u64,
            f(offset_of!(FileHeader, shard_size)),
        ),
        (
            "buckets",
            geo.buckets as u64,
            f(offset_of!(FileHeader, buckets)),
        ),
        (
            "small log",
            geo.small_cap as u64,
            f(offset_of!(FileHeader, small_cap)),
        ),
        (
            "main log",
            geo.main_cap as u64,
            f(offset_of!(FileHeader, main_cap)),
        ),
        (
            "ghost",
            geo.ghost_len as u64,
            f(offset_of!(FileHeader, ghost_len)),
        ),
    ];
    for (name, want, found) in derived {
        if want != found {
            return Err(Error::Corrupt {
                path,
                detail: format!("header field {name} is {found}, its parameters give {want}"),
            });
        }
    }
    let secret =
        buf[offset_of!(FileHeader, secret)..offset_of!(FileHeader, secret) + SECRET_SIZE].to_vec();
    Ok(HeaderInfo {
        geo,
        kind: native,
        secret,
        generation: f(GENERATION_OFF),
    })
}

/// Builds a header page for `geo`.
pub(crate) fn build_header(
    geo: &Geometry,
    kind: u32,
    secret: &[u8],
    generation: u64,
    origin: &Origin,
) -> Vec<u8> {
    let mut buf = vec![0u8; HEADER_SIZE];
    let mut put = |field: usize, v: u64| buf[field..field + 8].copy_from_slice(&v.to_le_bytes());
    put(offset_of!(FileHeader, magic), MAGIC);
    put(offset_of!(FileHeader, version), FORMAT_VERSION as u64);
    put(offset_of!(FileHeader, total_size), geo.total_size as u64);
    put(offset_of!(FileHeader, capacity), geo.params.capacity);
    put(offset_of!(FileHeader, shard_count), geo.shard_count as u64);
    put(offset_of!(FileHeader, shard_size), geo.shard_size as u64);
    put(
        offset_of!(FileHeader, max_key_len),
        geo.params.max_key_len as u64,
    );
    put(
        offset_of!(FileHeader, max_value_len),
        geo.params.max_value_len as u64,
    );
    put(offset_of!(FileHeader, buckets), geo.buckets as u64);
    put(offset_of!(FileHeader, small_cap), geo.small_cap as u64);
    put(offset_of!(FileHeader, main_cap), geo.main_cap as u64);
    put(offset_of!(FileHeader, ghost_len), geo.ghost_len as u64);
    put(
        offset_of!(FileHeader, expected_entry),
        geo.params.expected_entry as u64,
    );
    put(offset_of!(FileHeader, stats_slots), STATS_SLOTS as u64);
    put(offset_of!(FileHeader, fill_slots), FILL_SLOTS as u64);
    put(offset_of!(FileHeader, arch), arch_tag());
    put(offset_of!(FileHeader, libc), libc_tag());
    put(
        offset_of!(FileHeader, mutex_size),
        core::mem::size_of::<libc::pthread_mutex_t>() as u64,
    );
    put(offset_of!(FileHeader, mutex_kind), kind as u64);
    put(offset_of!(FileHeader, fingerprint), fingerprint());
    put(GENERATION_OFF, generation);
    let s = offset_of!(FileHeader, secret);
    buf[s..s + SECRET_SIZE].copy_from_slice(&secret[..SECRET_SIZE]);
    let sum = checksum(&buf);
    buf[CHECKSUM_OFF..CHECKSUM_OFF + 8].copy_from_slice(&sum.to_le_bytes());
    let at = offset_of!(FileHeader, stamp);
    for (i, w) in origin.stamp().iter().enumerate() {
        buf[at + 8 * i..at + 8 * i + 8].copy_from_slice(&w.to_le_bytes());
    }
    buf
}

/// Re-stamps the header with `origin` (this process's boot and namespaces). Only for a
/// file held exclusively, whose locks were just re-initialised. The six words go first
/// and their checksum last, so a crash in between leaves a stamp that fails its
/// checksum: no process attaches to it, and the next offline repair writes it again.
pub(crate) fn restamp(region: &Region, origin: &Origin) {
    let stamp = origin.stamp();
    let at = offset_of!(FileHeader, stamp);
    for (i, w) in stamp[..STAMP_WORDS - 1].iter().enumerate() {
        region.store(at + 8 * i, *w);
    }
    crash_point!("restamp.after_ids");
    region.store(at + 8 * (STAMP_WORDS - 1), stamp[STAMP_WORDS - 1]);
}
