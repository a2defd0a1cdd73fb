//! The command line, as clap reads it.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::codec::Encoding;
use crate::units;

/// Inspect and manage larder cache files.
///
/// NAME is a bare name (`authz` is /dev/shm/authz.larder1) or a path containing '/'.
#[derive(Debug, Parser)]
#[command(name = "larder", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Also accept cache files owned by this uid (by default only the caller's own);
    /// repeatable.
    #[arg(long = "allow-uid", value_name = "UID", global = true)]
    pub allow_uid: Vec<u32>,
    /// How long to wait for a shard lock or the file lock [default: 500ms].
    #[arg(long, value_name = "DURATION", global = true, value_parser = units::positive_duration)]
    pub lock_timeout: Option<Duration>,
}

/// How keys and values are written on the command line and printed: UTF-8 text unless
/// one of these is given (binary values with text keys are the common case).
#[derive(Debug, Args)]
pub struct Codec {
    /// Values (arguments, stdin and output) are hexadecimal.
    #[arg(long, conflicts_with = "base64")]
    pub hex: bool,
    /// Values (arguments, stdin and output) are base64.
    #[arg(long)]
    pub base64: bool,
    #[command(flatten)]
    pub key: KeyCodec,
}

/// How keys are written: UTF-8 text unless one of these is given.
#[derive(Debug, Args)]
pub struct KeyCodec {
    /// Keys (arguments, --prefix and output) are hexadecimal.
    #[arg(long, conflicts_with = "key_base64")]
    pub key_hex: bool,
    /// Keys (arguments, --prefix and output) are base64.
    #[arg(long)]
    pub key_base64: bool,
}

/// For commands that handle keys only (`del`, `keys`): `--hex` and `--base64` name the
/// key encoding there.
#[derive(Debug, Args)]
pub struct KeyOnlyCodec {
    /// Keys (arguments, --prefix and output) are hexadecimal.
    #[arg(long, visible_alias = "hex", conflicts_with = "key_base64")]
    pub key_hex: bool,
    /// Keys (arguments, --prefix and output) are base64.
    #[arg(long, visible_alias = "base64")]
    pub key_base64: bool,
}

fn pick(hex: bool, base64: bool) -> Encoding {
    if hex {
        Encoding::Hex
    } else if base64 {
        Encoding::Base64
    } else {
        Encoding::Text
    }
}

impl Codec {
    pub fn value(&self) -> Encoding {
        pick(self.hex, self.base64)
    }

    pub fn key(&self) -> Encoding {
        pick(self.key.key_hex, self.key.key_base64)
    }
}

impl KeyOnlyCodec {
    pub fn key(&self) -> Encoding {
        pick(self.key_hex, self.key_base64)
    }
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Create a cache file (or check that an existing one has these parameters).
    Create {
        /// The cache.
        name: String,
        /// Bytes of the file, fixed at creation: 32MiB, 1GiB, ...
        #[arg(long, value_name = "SIZE", default_value = "32MiB", value_parser = units::size)]
        capacity: u64,
        /// File mode, octal; world-writable modes are refused.
        #[arg(long, value_name = "MODE", default_value = "0600", value_parser = units::mode)]
        mode: u32,
        /// Longest key in bytes.
        #[arg(long, value_name = "SIZE", default_value = "256", value_parser = units::size)]
        max_key: u64,
        /// Longest value in bytes.
        #[arg(long, value_name = "SIZE", default_value = "64KiB", value_parser = units::size)]
        max_value: u64,
        /// Number of shards, a power of two [default: as many as fit, up to 256].
        #[arg(long, value_name = "N")]
        shards: Option<usize>,
        /// Typical bytes per entry (key + value + 16), to size the index.
        #[arg(long, value_name = "SIZE", value_parser = units::size)]
        expected_entry: Option<u64>,
    },
    /// Show every counter, in human units, JSON or the Prometheus text format.
    Stats {
        /// The cache.
        name: String,
        /// Print JSON.
        #[arg(long, conflicts_with = "prometheus")]
        json: bool,
        /// Print the Prometheus text exposition format.
        #[arg(long)]
        prometheus: bool,
        /// Also show each shard's counters.
        #[arg(long)]
        shards: bool,
        /// Redraw every INTERVAL (1s, 500ms, ...) until interrupted.
        #[arg(long, value_name = "INTERVAL", value_parser = units::positive_duration)]
        watch: Option<Duration>,
        /// With --watch: stop after N frames.
        #[arg(long, value_name = "N", requires = "watch")]
        count: Option<u64>,
    },
    /// Print the value of KEY (exit 1 if it has no fresh entry).
    Get {
        /// The cache.
        name: String,
        /// The key.
        key: String,
        #[command(flatten)]
        codec: Codec,
        /// Write the value's bytes exactly, with no newline.
        #[arg(long, conflicts_with_all = ["hex", "base64"])]
        raw: bool,
    },
    /// Store VALUE under KEY ('-' reads the value from stdin).
    Set {
        /// The cache.
        name: String,
        /// The key.
        key: String,
        /// The value, or '-' to read it from stdin.
        value: String,
        /// Expire after this long: 300s, 5m, 1h [default: never].
        #[arg(long, value_name = "DURATION", value_parser = units::positive_duration)]
        ttl: Option<Duration>,
        #[command(flatten)]
        codec: Codec,
    },
    /// Remove KEY.
    #[command(visible_alias = "delete")]
    Del {
        /// The cache.
        name: String,
        /// The key.
        key: String,
        #[command(flatten)]
        codec: KeyOnlyCodec,
    },
    /// List keys, one shard at a time (each shard is locked only while it is copied).
    Keys {
        /// The cache.
        name: String,
        /// Only keys starting with P (in the same encoding as keys).
        #[arg(long, value_name = "P")]
        prefix: Option<String>,
        /// Stop after N keys.
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
        #[command(flatten)]
        codec: KeyOnlyCodec,
    },
    /// List entries with their sizes and remaining TTLs (values with --values).
    Dump {
        /// The cache.
        name: String,
        /// Print a JSON array, one entry per line.
        #[arg(long)]
        json: bool,
        /// Include values.
        #[arg(long)]
        values: bool,
        /// Only keys starting with P (in the same encoding as keys).
        #[arg(long, value_name = "P")]
        prefix: Option<String>,
        /// Stop after N entries.
        #[arg(long, value_name = "N")]
        limit: Option<u64>,
        #[command(flatten)]
        codec: Codec,
    },
    /// Check every invariant: exit 0 clean, 1 problems found (listed), 2 could not check.
    Verify {
        /// The cache.
        name: String,
    },
    /// Rebuild every shard from its logs, under the file's exclusive lock (refused while
    /// processes are attached, unless --online).
    Repair {
        /// The cache.
        name: String,
        /// Repair shard by shard under the shard locks while processes keep working.
        #[arg(long)]
        online: bool,
    },
    /// Remove every entry.
    Clear {
        /// The cache.
        name: String,
    },
    /// Remove a cache file (attached processes move to a new one).
    Rm {
        /// The cache.
        name: String,
        /// Remove the file even if it cannot be confirmed to be a larder cache.
        #[arg(long)]
        force: bool,
    },
    /// List cache files with size, entries, fill, owner, mode and attached processes.
    Ls {
        /// Directory to list.
        #[arg(long, value_name = "DIR", default_value = "/dev/shm")]
        dir: PathBuf,
    },
    /// Run the multi-process workload against a scratch cache (or NAME) and print a
    /// summary.
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The cache to use [default: a scratch cache, removed afterwards].
    pub name: Option<String>,
    /// Worker processes.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub procs: usize,
    /// Percent of reads / percent of writes.
    #[arg(long, value_name = "R/W", default_value = "90/10", value_parser = parse_mix)]
    pub mix: (u32, u32),
    /// Seconds to run.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = units::positive_duration)]
    pub secs: Duration,
}

/// `90/10`: reads and writes in percent, summing to 100.
fn parse_mix(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{s:?} is not a mix: use READS/WRITES in percent, like 90/10");
    let (r, w) = s.split_once('/').ok_or_else(bad)?;
    let r: u32 = r.trim().parse().map_err(|_| bad())?;
    let w: u32 = w.trim().parse().map_err(|_| bad())?;
    if r + w != 100 {
        return Err(format!("{s:?}: reads and writes must add up to 100"));
    }
    Ok((r, w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn mixes_must_add_up() {
        assert_eq!(parse_mix("90/10").unwrap(), (90, 10));
        assert!(parse_mix("90/20").is_err());
        assert!(parse_mix("90").is_err());
    }
}
