//! The file as a whole: `create`, `verify`, `repair`, `clear`, `rm`.

use std::io::Write;
use std::process::ExitCode;

use larder::{Cache, Error, Mismatch, Opened, Remedy};

use crate::args::Global;
use crate::units::bytes;
use crate::{attach, ls, options, stdout, Failure, Outcome};

pub struct CreateArgs {
    pub capacity: u64,
    pub mode: u32,
    pub group: Option<u32>,
    pub max_key: u64,
    pub max_value: u64,
    pub shards: Option<usize>,
    pub expected_entry: Option<u64>,
    pub replace: bool,
    pub generation: u64,
}

/// A library error in this command's terms: what happened, then what to do as a
/// `larder` command line (the library's own text names Rust calls instead).
pub fn message(e: &Error) -> String {
    let summary = e.summary();
    let name = e.name().unwrap_or_else(|| "NAME".into());
    let remedy = match e.remedy() {
        None => return summary,
        Some(Remedy::UseOrRemove) => format!(
            "every command but create uses it with its own parameters; to change them, \
             replace it: larder create {name} ... --replace (with a higher --generation \
             unless every limit grows), or remove it first: larder rm {name}"
        ),
        Some(Remedy::Repair) => format!(
            "repair it: larder repair {name} (with no process attached; --online while \
             processes use it), or remove it if its header is damaged: larder rm {name}"
        ),
        Some(Remedy::RepairOffline) => format!(
            "repair it with no process attached: larder repair {name}, or remove it: \
             larder rm {name}"
        ),
        Some(Remedy::AllowOwner { uid }) => {
            format!("or accept its owner: larder --allow-uid {uid} ...")
        }
        Some(Remedy::Create) => format!(
            "create it: larder create {name} --capacity SIZE (or start the processes that \
             create it)"
        ),
        Some(Remedy::CreateAsOwner { uid, gid, mode }) => format!(
            "restart the process of uid {uid} that created it (a pool's master), or create it \
             as uid {uid}: larder create {name} --mode {mode:o} --group {gid} --capacity SIZE"
        ),
        Some(Remedy::RaiseLimit { what }) => format!(
            "create the cache with a larger --max-{what} (larder rm {name}, then larder \
             create {name} --max-{what} SIZE)"
        ),
        // A remedy this build does not know how to word: the summary alone.
        Some(_) => return summary,
    };
    format!("{summary}; {remedy}")
}

fn to_usize(what: &str, v: u64) -> Result<usize, Failure> {
    usize::try_from(v).map_err(|_| Failure::new(format!("{what} of {v} bytes is too large")))
}

pub fn create(g: &Global, name: &str, a: CreateArgs) -> Outcome {
    let path = Cache::path_of(name)?;
    let mut o = options(g)
        .capacity(a.capacity)
        .mode(a.mode)
        .max_key_len(to_usize("--max-key", a.max_key)?)
        .max_value_len(to_usize("--max-value", a.max_value)?);
    if let Some(g) = a.group {
        o = o.group(g);
    }
    if let Some(n) = a.shards {
        o = o.shards(n);
    }
    if let Some(e) = a.expected_entry {
        o = o.expected_entry_size(to_usize("--expected-entry", e)?);
    }
    o = o.generation(a.generation);
    if a.replace {
        o = o.on_mismatch(Mismatch::Replace);
    }
    // Creates the file, or attaches to an existing one if (and only if) it has these
    // parameters (with --replace: replaces it if it is older, or attaches to it with
    // its own): running `create` twice is harmless.
    let cache = o.open(name)?;
    let limits = cache.limits();
    let (capacity, max_key, max_value, shards) = (
        limits.capacity,
        limits.max_key_len,
        limits.max_value_len,
        limits.shards,
    );
    let mut out = stdout();
    writeln!(
        out,
        "{} {}: {} in {shards} shards, keys up to {}, values up to {}, generation {}",
        match cache.opened() {
            Opened::Created => "created",
            Opened::Replaced => "replaced",
            _ => "exists",
        },
        path.display(),
        bytes(capacity),
        bytes(max_key as u64),
        bytes(max_value as u64),
        limits.generation,
    )?;
    let asked = (a.capacity, a.max_key, a.max_value);
    let has = (capacity, max_key as u64, max_value as u64);
    if a.replace && cache.opened() == Opened::Attached && asked != has {
        writeln!(
            out,
            "kept it: it is not older than these parameters (raise --generation above {} \
             to replace it)",
            limits.generation
        )?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// Exit 0 clean, 1 problems found, 2 could not check.
pub fn verify(g: &Global, name: &str) -> Outcome {
    let cache = attach(g, name).map_err(|f| f.with_code(2))?;
    let report = cache.verify().map_err(|e| Failure::from(e).with_code(2))?;
    let mut out = stdout();
    if report.is_clean() {
        writeln!(out, "{}: clean", cache.path().display())?;
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    write!(out, "{}: {report}", cache.path().display())?;
    writeln!(
        out,
        "repair with: larder repair {name} (or --online while processes are attached)"
    )?;
    out.flush()?;
    Ok(ExitCode::from(1))
}

pub fn repair(g: &Global, name: &str, online: bool) -> Outcome {
    let path = Cache::path_of(name)?;
    let report = if online {
        attach(g, name)?.repair()?
    } else {
        match Cache::repair_offline(name, &options(g)) {
            Ok(r) => r,
            Err(Error::InUse { path, .. }) => {
                let who = match ls::attached(&path) {
                    Some(n) => format!("{n} attached process(es)"),
                    None => "attached processes".into(),
                };
                return Err(Failure::new(format!(
                    "{} is in use by {who}; stop them and retry, or repair shard by shard \
                     while they run: larder repair --online {name}",
                    path.display()
                )));
            }
            Err(e) => return Err(e.into()),
        }
    };
    let mut out = stdout();
    writeln!(
        out,
        "repaired {} ({}): {} shard(s) rebuilt, {} entr{} dropped",
        path.display(),
        if online {
            "online, shard by shard"
        } else {
            "offline, locks re-initialised"
        },
        report.shards,
        report.dropped,
        if report.dropped == 1 { "y" } else { "ies" },
    )?;
    if report.dropped > 0 {
        writeln!(
            out,
            "dropped entries could not be put back from the logs (a write cut short or \
             damaged records); they are misses now and will be refilled"
        )?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

pub fn clear(g: &Global, name: &str) -> Outcome {
    let cache = attach(g, name)?;
    let n = cache.clear()?;
    let mut out = stdout();
    writeln!(out, "removed {n} entries from {}", cache.path().display())?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

pub fn rm(g: &Global, name: &str, force: bool) -> Outcome {
    let path = Cache::path_of(name)?;
    if !force {
        // Never unlink a file that is not a cache because of a typo in a path: attach
        // first. A cache that cannot be used as it is (another boot, another version,
        // corrupt, locked by a repair) is still a cache and may go.
        match options(g).attach(name) {
            Ok(_) => {}
            Err(
                Error::OtherBoot { .. }
                | Error::OtherPidNamespace { .. }
                | Error::OtherTimeNamespace { .. }
                | Error::Version { .. }
                | Error::Corrupt { .. }
                | Error::Incompatible { .. }
                | Error::Timeout { .. },
            ) => {}
            Err(e @ Error::NotFound { .. }) | Err(e @ Error::InvalidName { .. }) => {
                return Err(e.into())
            }
            Err(e @ Error::UnsafeFile { .. }) => {
                return Err(Failure::new(format!(
                    "{}; not removing it (--allow-uid UID accepts another owner, --force \
                     removes it unchecked)",
                    e.summary()
                )))
            }
            Err(e) => {
                return Err(Failure::new(format!(
                    "cannot confirm that {} is a larder cache ({}); not removing it \
                     (--force removes it unchecked)",
                    path.display(),
                    e.summary()
                )))
            }
        }
    }
    let attached = ls::attached(&path).unwrap_or(0);
    Cache::unlink(name)?;
    let mut out = stdout();
    write!(out, "removed {}", path.display())?;
    if attached > 0 {
        write!(
            out,
            "; {attached} attached process(es) move to a new file on their next check"
        )?;
    }
    writeln!(out)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
