//! `larder ls`: the cache files of a directory, and who is attached to each.
//!
//! Attached processes hold a shared `flock` on the file, so `/proc/locks` names them:
//! one `FLOCK` line per open file description, with the pid that took it and the
//! file's device and inode. A process with several handles shows up once. A lock
//! inherited over `fork` keeps the pid of the process that took it, and a pid outside
//! this pid namespace shows as 0 or -1: such lines are counted one process each.

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::ExitCode;

use crate::args::Global;
use crate::units::{bytes, percent};
use crate::{options, stdout, Failure, Outcome};

/// The processes holding a `flock` on the file `(dev, ino)`, other than this one, as
/// listed in `locks` (the text of /proc/locks).
pub fn holders(locks: &str, dev: u64, ino: u64) -> usize {
    let want = format!(
        "{:02x}:{:02x}:{ino}",
        rustix::fs::major(dev),
        rustix::fs::minor(dev)
    );
    let me = i64::from(std::process::id());
    let mut pids = BTreeSet::new();
    let mut unknown = 0;
    for line in locks.lines() {
        let mut f = line.split_whitespace().skip(1).peekable();
        if f.peek() == Some(&"->") {
            // A process waiting for the lock does not hold it.
            continue;
        }
        let fields: Vec<&str> = f.collect();
        if fields.len() < 5 || fields[0] != "FLOCK" || fields[4] != want {
            continue;
        }
        match fields[3].parse::<i64>() {
            Ok(pid) if pid == me => {}
            Ok(pid) if pid > 0 => {
                pids.insert(pid);
            }
            _ => unknown += 1,
        }
    }
    pids.len() + unknown
}

/// How many other processes are attached to the file at `path` (`None` if that cannot
/// be told).
pub fn attached(path: &Path) -> Option<usize> {
    let meta = std::fs::metadata(path).ok()?;
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    Some(holders(&locks, meta.dev(), meta.ino()))
}

/// User names by uid, from /etc/passwd.
fn users() -> HashMap<u32, String> {
    let text = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let uid = f.nth(1)?.parse().ok()?;
            Some((uid, name.to_string()))
        })
        .collect()
}

/// A few words for why a file's contents could not be read.
fn short(e: &larder::Error) -> String {
    use larder::Error as E;
    match e {
        E::NotACache { .. } => "not a larder cache".into(),
        E::UnsafeFile { reason, .. } => format!("refused: {reason}"),
        E::OtherBoot { .. } => "from another boot: larder repair or rm".into(),
        E::OtherPidNamespace { .. } => "from another pid namespace".into(),
        E::OtherTimeNamespace { .. } => "from another time namespace".into(),
        E::Version { found, .. } => format!("format version {found}"),
        E::Truncated { .. } => "truncated: larder rm".into(),
        E::Corrupt { .. } => "corrupt: larder repair".into(),
        E::Timeout { .. } => "locked: a repair is running".into(),
        other => crate::admin::message(other),
    }
}

struct Row {
    name: String,
    size: String,
    entries: String,
    fill: String,
    owner: String,
    mode: String,
    procs: String,
    note: String,
}

pub fn run(g: &Global, dir: &Path) -> Outcome {
    let listing = std::fs::read_dir(dir)
        .map_err(|e| Failure::new(format!("cannot list {}: {e}", dir.display())))?;
    // Where bare names live and the suffix this build gives them ("x.larder4").
    let probe = larder::Cache::path_of("x")?;
    let shm_dir = probe.parent().map(Path::to_path_buf);
    let suffix = probe
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix('x'))
        .unwrap_or(".larder4")
        .to_string();
    let family = suffix
        .trim_end_matches(|c: char| c.is_ascii_digit())
        .to_string();
    let in_shm = shm_dir.as_deref() == Some(dir);
    let locks = std::fs::read_to_string("/proc/locks").ok();
    let users = users();

    let mut files = Vec::new();
    for entry in listing {
        let entry = entry.map_err(|e| Failure::new(format!("listing {}: {e}", dir.display())))?;
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        // `<name>.larder<version>`: temporary files of a creator start with '.'.
        let Some((stem, version)) = file_name.rsplit_once(family.as_str()) else {
            continue;
        };
        if stem.is_empty()
            || stem.starts_with('.')
            || version.is_empty()
            || !version.bytes().all(|b| b.is_ascii_digit())
        {
            continue;
        }
        files.push((file_name.to_string(), stem.to_string()));
    }
    files.sort();

    let mut rows = Vec::new();
    for (file_name, stem) in files {
        let path = dir.join(&file_name);
        let current = file_name.ends_with(&suffix);
        let name = if in_shm && current {
            stem
        } else {
            path.display().to_string()
        };
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue; // removed meanwhile
        };
        let mut row = Row {
            name,
            size: bytes(meta.len()),
            entries: "-".into(),
            fill: "-".into(),
            owner: users
                .get(&meta.uid())
                .cloned()
                .unwrap_or_else(|| meta.uid().to_string()),
            mode: format!("{:04o}", meta.permissions().mode() & 0o7777),
            procs: "?".into(),
            note: String::new(),
        };
        if !meta.file_type().is_file() {
            row.note = "not a regular file".into();
            rows.push(row);
            continue;
        }
        // Counted before this process attaches (and it is left out anyway).
        if let Some(locks) = &locks {
            row.procs = holders(locks, meta.dev(), meta.ino()).to_string();
        }
        if !current {
            row.note = format!(
                "format version {}",
                file_name.rsplit(family.as_str()).next().unwrap_or("?")
            );
            rows.push(row);
            continue;
        }
        match path.to_str().map(|p| options(g).attach(p)).transpose() {
            Ok(Some(cache)) => {
                let s = cache.stats();
                row.entries = s.entries.to_string();
                row.fill = percent(s.bytes_used, s.bytes_used + s.bytes_free);
            }
            Ok(None) => row.note = "name is not UTF-8".into(),
            Err(e) => row.note = short(&e),
        }
        rows.push(row);
    }

    let mut out = stdout();
    if rows.is_empty() {
        writeln!(out, "no larder cache files in {}", dir.display())?;
        out.flush()?;
        return Ok(ExitCode::SUCCESS);
    }
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(4).max(4);
    let owner_w = rows.iter().map(|r| r.owner.len()).max().unwrap_or(5).max(5);
    writeln!(
        out,
        "{:<width$}  {:>10}  {:>8}  {:>6}  {:<owner_w$}  {:>4}  {:>5}  NOTE",
        "NAME", "SIZE", "ENTRIES", "FILL", "OWNER", "MODE", "PROCS"
    )?;
    for r in rows {
        let line = format!(
            "{:<width$}  {:>10}  {:>8}  {:>6}  {:<owner_w$}  {:>4}  {:>5}  {}",
            r.name, r.size, r.entries, r.fill, r.owner, r.mode, r.procs, r.note
        );
        writeln!(out, "{}", line.trim_end())?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::holders;

    const LOCKS: &str = "\
1: FLOCK  ADVISORY  READ 17899 fe:00:10010812 0 EOF
1: -> FLOCK  ADVISORY  WRITE 17909 fe:00:10010812 0 EOF
2: FLOCK  ADVISORY  READ 17897 fe:00:10010812 0 EOF
3: FLOCK  ADVISORY  READ 17897 fe:00:10010812 0 EOF
4: POSIX  ADVISORY  WRITE 555 fe:00:10010812 0 EOF
5: FLOCK  ADVISORY  READ 17000 fe:00:99 0 EOF
6: FLOCK  ADVISORY  READ -1 00:1b:2 0 EOF
7: FLOCK  ADVISORY  READ -1 00:1b:2 0 EOF
";

    #[test]
    fn counts_distinct_flock_holders_of_one_inode() {
        let dev = rustix::fs::makedev(0xfe, 0);
        assert_eq!(holders(LOCKS, dev, 10010812), 2);
        assert_eq!(holders(LOCKS, dev, 99), 1);
        assert_eq!(holders(LOCKS, rustix::fs::makedev(0, 0x1b), 2), 2);
        assert_eq!(holders(LOCKS, dev, 12345), 0);
    }
}
