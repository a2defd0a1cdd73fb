//! `larder`: inspect and manage larder cache files from the shell.
//!
//! The command is this library's [`main_from`]: the `larder` binary calls it with its
//! arguments, and so does the Python package's `larder` console script (the same
//! command in a wheel, with no other install).
//!
//! Every failure is one line on stderr and a non-zero exit status (1; `verify` uses 2
//! for "could not check"); output goes through one buffered stdout so that a closed
//! pipe (`larder keys authz | head`) ends the command quietly instead of panicking.
#![deny(unsafe_code)]

mod admin;
mod args;
#[cfg(feature = "bench")]
mod bench;
mod codec;
mod data;
mod listen;
mod ls;
mod stats;
mod units;

use std::io::{self, Write};
use std::process::ExitCode;

use clap::Parser;

use args::{Cli, Cmd, Global};

/// Why a command stopped: a message for stderr and the exit status.
#[derive(Debug)]
pub enum Failure {
    /// Print `larder: <message>` and exit with `code`.
    Message { message: String, code: u8 },
    /// stdout was closed by its reader: stop quietly.
    BrokenPipe,
}

impl Failure {
    pub fn new(message: impl Into<String>) -> Failure {
        Failure::Message {
            message: message.into(),
            code: 1,
        }
    }

    /// The same failure with another exit status (`verify`'s 2).
    pub fn with_code(self, code: u8) -> Failure {
        match self {
            Failure::Message { message, .. } => Failure::Message { message, code },
            other => other,
        }
    }
}

impl From<larder::Error> for Failure {
    /// In the command's terms (`larder rm NAME`), not the library's Rust calls.
    fn from(e: larder::Error) -> Failure {
        Failure::new(admin::message(&e))
    }
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Failure {
        if e.kind() == io::ErrorKind::BrokenPipe {
            Failure::BrokenPipe
        } else {
            Failure::new(format!("writing output: {e}"))
        }
    }
}

pub type Outcome = Result<ExitCode, Failure>;

/// The options every command attaches with.
pub fn options(g: &Global) -> larder::Options {
    let mut o = larder::Options::new();
    if let Some(t) = g.lock_timeout {
        o = o.lock_timeout(t);
    }
    for &uid in &g.allow_uid {
        o = o.allow_uid(uid);
    }
    o
}

/// Attaches to an existing cache with its own parameters.
pub fn attach(g: &Global, name: &str) -> Result<larder::Cache, Failure> {
    Ok(options(g).attach(name)?)
}

/// Buffered stdout; flushed by the caller before it returns.
pub fn stdout() -> io::BufWriter<io::StdoutLock<'static>> {
    io::BufWriter::new(io::stdout().lock())
}

fn run(cli: Cli) -> Outcome {
    let g = &cli.global;
    match cli.cmd {
        Cmd::Create {
            name,
            capacity,
            mode,
            group,
            max_key,
            max_value,
            shards,
            expected_entry,
            replace,
            generation,
        } => admin::create(
            g,
            &name,
            admin::CreateArgs {
                capacity,
                mode,
                group,
                max_key,
                max_value,
                shards,
                expected_entry,
                replace,
                generation,
            },
        ),
        Cmd::Stats {
            name,
            json,
            prometheus,
            shards,
            watch,
            count,
        } => {
            let format = if json {
                stats::Format::Json
            } else if prometheus {
                stats::Format::Prometheus
            } else {
                stats::Format::Text
            };
            stats::run(g, &name, format, shards, watch, count)
        }
        Cmd::Get {
            name,
            key,
            codec,
            raw,
        } => data::get(g, &name, &key, codec.key(), codec.value(), raw),
        Cmd::Set {
            name,
            key,
            value,
            ttl,
            codec,
        } => data::set(g, &name, &key, &value, ttl, codec.key(), codec.value()),
        Cmd::Incr {
            name,
            key,
            by,
            init,
            ttl,
            codec,
        } => data::incr(g, &name, &key, by, init, ttl, codec.key()),
        Cmd::Listen {
            name,
            redis,
            prefix,
            ping_every,
            bound,
            verbose,
        } => listen::run(g, &name, &redis, &prefix, ping_every, bound, verbose),
        Cmd::Del { name, key, codec } => data::del(g, &name, &key, codec.key()),
        Cmd::Keys {
            name,
            prefix,
            limit,
            codec,
        } => data::keys(g, &name, prefix.as_deref(), limit, codec.key()),
        Cmd::Dump {
            name,
            json,
            values,
            prefix,
            limit,
            codec,
        } => data::dump(
            g,
            &name,
            data::DumpArgs {
                json,
                values,
                prefix: prefix.as_deref(),
                limit,
                key_enc: codec.key(),
                value_enc: codec.value(),
            },
        ),
        Cmd::Verify { name } => admin::verify(g, &name),
        Cmd::Repair { name, online } => admin::repair(g, &name, online),
        Cmd::Clear { name } => admin::clear(g, &name),
        Cmd::Rm { name, force } => admin::rm(g, &name, force),
        Cmd::Ls { dir } => ls::run(g, &dir),
        #[cfg(feature = "bench")]
        Cmd::Bench(a) => bench::run(g, a),
        #[cfg(not(feature = "bench"))]
        Cmd::Bench { .. } => Err(Failure::new(
            "bench is not in this build of the command (its workers run the command's \
             executable again, which here is not the command): install the larder \
             command from cli/ (cargo install --path cli) to run it",
        )),
    }
}

/// One line, whatever the message holds.
fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// clap's message and usage on one line: the lines before `Usage:` hold the message
/// (a list of missing arguments continues on the next lines), then the usage itself.
fn usage_error(rendered: &str) -> String {
    let mut message = Vec::new();
    let mut usage = None;
    for line in rendered.lines().map(str::trim) {
        if let Some(u) = line.strip_prefix("Usage:") {
            usage = Some(u.trim().to_string());
            break;
        }
        if line.starts_with("For more information") {
            continue;
        }
        if let Some(tip) = line.strip_prefix("tip:") {
            message.push(format!("; tip: {}", tip.trim()));
        } else if !line.is_empty() {
            let line = line.strip_prefix("error:").unwrap_or(line).trim();
            message.push(if message.is_empty() {
                line.to_string()
            } else {
                format!(" {line}")
            });
        }
    }
    let mut text = message.concat();
    if text.is_empty() {
        text = "invalid arguments".into();
    }
    match usage {
        Some(u) => format!("{text} (usage: {u}; see --help)"),
        None => format!("{text} (see larder --help)"),
    }
}

/// Makes a panic end in one line on stderr, not a backtrace over the user's terminal.
/// Process-wide: for a process that is the command (the binary, the console script).
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!(
            "larder: internal error{at}: {}; please report it",
            one_line(&msg)
        );
    }));
}

/// Runs the command with `args` (the program name first, as `std::env::args_os`
/// gives them) and returns its exit status; what it prints goes to stdout and stderr.
///
/// A binary that offers `larder bench` must call
/// `larder_bench::worker_main_if_requested()` before this: the benchmark's workers
/// are the binary started again.
pub fn main_from<I, T>(args: I) -> u8
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return 0;
            }
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                // `larder` alone: the help is the useful answer (on stderr, like git).
                let _ = e.print();
                return 1;
            }
            eprintln!("larder: {}", usage_error(&e.render().to_string()));
            // `verify` promises 2 for anything that stopped it from checking.
            let is_verify = args.iter().skip(1).any(|a| a == "verify");
            return if is_verify { 2 } else { 1 };
        }
    };
    let result = run(cli);
    let result = result.and_then(|code| {
        io::stdout().flush()?;
        Ok(code)
    });
    match result {
        Ok(code) => status_of(code),
        Err(Failure::BrokenPipe) => 0,
        Err(Failure::Message { message, code }) => {
            let _ = io::stdout().flush();
            eprintln!("larder: {}", one_line(&message));
            code
        }
    }
}

/// The number in an `ExitCode` (std has no accessor for it; the commands make theirs
/// with `ExitCode::from(u8)`, so one of the 256 matches).
fn status_of(code: ExitCode) -> u8 {
    (0..=u8::MAX)
        .find(|&n| ExitCode::from(n) == code)
        .unwrap_or(1)
}

#[cfg(test)]
mod status_tests {
    use super::*;

    #[test]
    fn every_exit_status_comes_back_as_its_number() {
        assert_eq!(status_of(ExitCode::SUCCESS), 0);
        assert_eq!(status_of(ExitCode::FAILURE), 1);
        for n in 0..=u8::MAX {
            assert_eq!(status_of(ExitCode::from(n)), n);
        }
    }
}
