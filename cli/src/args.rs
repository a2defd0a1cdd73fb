//! The command line, as clap reads it.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
#[cfg(feature = "bench")]
use larder_bench::{self as workload, Distribution, Mix};

use crate::codec::Encoding;
use crate::units;

/// Inspect and manage larder cache files.
///
/// NAME is a bare name (`authz` is /dev/shm/authz.larder4) or a path containing '/'.
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
    /// Create a cache file (or check that an existing one has these parameters, or
    /// with --replace replace an older one).
    Create {
        /// The cache.
        name: String,
        /// Bytes of the file, fixed at creation: 32MiB, 1GiB, ...
        #[arg(long, value_name = "SIZE", default_value = "32MiB", value_parser = units::size)]
        capacity: u64,
        /// File mode, octal; world-writable modes are refused.
        #[arg(long, value_name = "MODE", default_value = "0600", value_parser = units::mode)]
        mode: u32,
        /// Group of the file (a numeric gid) [default: the caller's]: for workers that
        /// share it through the group (--mode 0660).
        #[arg(long, value_name = "GID")]
        group: Option<u32>,
        /// Longest key in bytes.
        #[arg(long, value_name = "SIZE", default_value = "256", value_parser = units::size)]
        max_key: u64,
        /// Longest value in bytes.
        #[arg(long, value_name = "SIZE", default_value = "64KiB", value_parser = units::size)]
        max_value: u64,
        /// Number of shards, a power of two [default: up to 256, each at least 512 KiB].
        #[arg(long, value_name = "N")]
        shards: Option<usize>,
        /// Typical bytes per entry (key + value + 16), to size the index.
        #[arg(long, value_name = "SIZE", value_parser = units::size)]
        expected_entry: Option<u64>,
        /// Replace an existing file of other parameters if it is older than these: of a
        /// lower --generation, or of the same one with no limit larger and one smaller
        /// (attached processes move to the new file; one that is not older is kept).
        #[arg(long)]
        replace: bool,
        /// The deploy generation recorded in a file this creates; a higher one lets
        /// --replace (and workers' on_mismatch replace) shrink a cache.
        #[arg(long, value_name = "N", default_value_t = 0)]
        generation: u64,
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
    /// Add N to the counter at KEY and print its new value (an absent or expired key
    /// starts at --init; later increments keep its expiry, so a window ends on time).
    Incr {
        /// The cache.
        name: String,
        /// The key.
        key: String,
        /// What to add (negative to subtract).
        #[arg(
            long,
            value_name = "N",
            default_value_t = 1,
            allow_negative_numbers = true
        )]
        by: i64,
        /// The value an absent or expired counter starts from, before adding.
        #[arg(
            long,
            value_name = "N",
            default_value_t = 0,
            allow_negative_numbers = true
        )]
        init: i64,
        /// Expiry of a counter this call creates: 60s, 1h [default: never].
        #[arg(long, value_name = "DURATION", value_parser = units::positive_duration)]
        ttl: Option<Duration>,
        #[command(flatten)]
        codec: KeyOnlyCodec,
    },
    /// Run this host's near-cache listener for NAME in front of Redis: hold the
    /// file's lease (standing by while another process holds it), track the prefixes
    /// with Redis client-side caching in broadcast mode, drop what Redis says changed,
    /// flush on what it does not say (SWAPDB), and prove every --ping-every that the
    /// near cache is current. Runs until killed; exits with an error for a Redis it
    /// cannot keep the near cache current with (cluster mode, or a user without INFO).
    Listen {
        /// The cache (created by the workers, or with `larder create`).
        name: String,
        /// The Redis or Valkey URL: redis://HOST:PORT/DB, unix:///path/to/socket.
        #[arg(long, value_name = "URL")]
        redis: String,
        /// A key prefix to keep near (repeat for more; "" tracks every key).
        #[arg(long, value_name = "P", required = true)]
        prefix: Vec<String>,
        /// How often the listener proves it is current (P).
        #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = units::positive_duration)]
        ping_every: Duration,
        /// The bound on staleness (H) the readers are configured with: the listener
        /// flushes when its own proof is older, and waits at most H/2 for a PING's reply.
        #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = units::positive_duration)]
        bound: Duration,
        /// Also print each flush Redis asked for (FLUSHALL, FLUSHDB); the lease, the
        /// connection and flushes Redis did not ask for are always printed.
        #[arg(long, short)]
        verbose: bool,
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
    #[cfg(feature = "bench")]
    Bench(BenchArgs),
    /// `larder bench` in a build without it (the Python wheel's command): a one-line
    /// answer that says where to find it, rather than "unrecognized subcommand".
    #[cfg(not(feature = "bench"))]
    #[command(hide = true, disable_help_flag = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
        args: Vec<std::ffi::OsString>,
    },
}

#[cfg(feature = "bench")]
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The cache to use [default: a scratch cache in /dev/shm, removed afterwards]. One
    /// that exists keeps its parameters and gets the workload's keys added.
    pub name: Option<String>,
    /// Worker processes.
    #[arg(long, value_name = "N", default_value_t = 4)]
    pub procs: usize,
    /// Gets/sets in percent.
    #[arg(long, value_name = "GETS/SETS", default_value = "90/10", value_parser = parse_mix)]
    pub mix: Mix,
    /// How long the workers run: 10, 10s, 1m.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = units::positive_duration)]
    pub secs: Duration,
    /// Live keys, prefilled before the run.
    #[arg(long, value_name = "N", default_value_t = workload::LIVE_KEYS)]
    pub keys: u64,
    /// Bytes of every value.
    #[arg(long, value_name = "SIZE", default_value_t = workload::VALUE_LEN as u64, value_parser = units::size)]
    pub value_size: u64,
    /// Key choice: zipf (theta 0.99), zipf:<theta> or uniform.
    #[arg(long, value_name = "DIST", default_value = "zipf", value_parser = parse_distribution)]
    pub dist: Distribution,
}

/// The workload's own parsers, so that `larder bench` reads a mix as the benchmarks do.
#[cfg(feature = "bench")]
fn parse_mix(s: &str) -> Result<Mix, String> {
    Mix::parse(s).map_err(|e| e.to_string())
}

#[cfg(feature = "bench")]
fn parse_distribution(s: &str) -> Result<Distribution, String> {
    Distribution::parse(s).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[cfg(feature = "bench")]
    #[test]
    fn mixes_must_add_up() {
        assert_eq!(parse_mix("90/10").unwrap().get_percent(), 90);
        assert!(parse_mix("90/20").is_err());
        assert!(parse_mix("x").is_err());
    }
}
