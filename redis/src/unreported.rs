//! What client-side caching does not tell the listener, and how it finds out anyway.
//!
//! Tracking reports every write to a key by the key's name, whatever the database
//! (a write to `p:x` in db 1 invalidates `p:x` for a listener on db 0), `MOVE` and
//! `COPY … DB` included, and reports a flush (`FLUSHALL`, `FLUSHDB`, `DEBUG RELOAD`,
//! a replica's full resynchronisation, whatever its `repl-diskless-load`) as a
//! null invalidation. It does not report (checked on redis-server 7.0.15 by
//! `tests/protocol.rs`, findings (g) to (k)):
//! - `SWAPDB`, alone, in `MULTI`/`EXEC`, in a script, or replicated from the primary
//!   of a replica the listener is on: every key of the database changes at once;
//! - `DEBUG RELOAD NOFLUSH MERGE`: the RDB file's values replace the dataset's;
//! - the writes of other nodes, in cluster mode.
//!
//! Each of these runs a command, and Redis counts every command it runs in
//! `INFO commandstats`, for every client, in transactions, scripts and the
//! replication stream alike. So with every `PING` the listener reads the server's
//! [`Reading`]: its `run_id` and the calls of the [`WATCHED`] commands, and flushes
//! when they moved since the last one. `CONFIG RESETSTAT` zeroes the counters (a
//! reset followed by as many `SWAPDB`s as were counted would leave `swapdb` where it
//! was), so the sum of every command's calls must have grown too: the listener's
//! own `INFO` and `PING` since the last reading count in it, so it grows unless the
//! statistics were reset. Cluster mode is refused when the listener connects
//! ([`refuse_cluster`]).

use crate::{Error, Result};

/// Commands that change the dataset without an invalidation (`swapdb`, `debug`),
/// or empty it (`flushall`, `flushdb`: reported, and watched too, so a server that
/// did not report them would still be caught), or zero these counters
/// (`config|resetstat`; Redis 7 counts subcommands apart, so `CONFIG GET` from a
/// monitoring tool does not count here).
pub(crate) const WATCHED: [&str; 5] =
    ["swapdb", "debug", "flushall", "flushdb", "config|resetstat"];

/// What proves, from one reply to the next, that the server holds the dataset it
/// held: the same process, and no watched command run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reading {
    /// `run_id` of `INFO server`: a new one each time redis-server starts.
    run_id: String,
    /// The calls of each of [`WATCHED`] (0 for a command not run since the last
    /// reset: it has no line).
    watched: [u64; WATCHED.len()],
    /// The calls of every command, summed.
    total: u64,
}

/// How a [`Reading`] compares with the one before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Since {
    /// Nothing tracking leaves unreported happened in between.
    Same,
    /// The dataset may have changed unreported: flush. Says what happened.
    Changed(String),
    /// Another server process answers (its `run_id` changed): this connection's
    /// tracking is not the one that was turned on. Reconnect (which flushes).
    Restarted,
}

impl Reading {
    /// Adds the commands whose replies [`Reading::parse`] reads to `pipe`, in this
    /// order. Two `INFO`s rather than one with two sections: Redis 6 takes one
    /// section per `INFO`.
    pub(crate) fn request(pipe: &mut redis::Pipeline) {
        pipe.cmd("INFO")
            .arg("server")
            .cmd("INFO")
            .arg("commandstats");
    }

    /// The reading in the replies to `INFO server` and `INFO commandstats`.
    pub(crate) fn parse(server: &str, commandstats: &str) -> Result<Reading, String> {
        let run_id = field(server, "run_id")
            .filter(|id| !id.is_empty())
            .ok_or("INFO server has no run_id")?
            .to_string();
        let mut watched = [0; WATCHED.len()];
        let mut total = 0u64;
        for line in commandstats.lines() {
            let Some(stat) = line.strip_prefix("cmdstat_") else {
                continue;
            };
            let Some((name, values)) = stat.split_once(':') else {
                continue;
            };
            let calls = values
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .ok_or_else(|| format!("INFO commandstats: no count of calls in {line:?}"))?;
            total = total.saturating_add(calls);
            if let Some(i) = WATCHED.iter().position(|w| name.eq_ignore_ascii_case(w)) {
                watched[i] = calls;
            }
        }
        if total == 0 {
            // At least the INFO server before it ran since any reset.
            return Err("INFO commandstats counts no command".into());
        }
        Ok(Reading {
            run_id,
            watched,
            total,
        })
    }

    /// How this reading, taken after `earlier` on the same connection, compares with
    /// it.
    pub(crate) fn since(&self, earlier: &Reading) -> Since {
        if self.run_id != earlier.run_id {
            return Since::Restarted;
        }
        let moved: Vec<String> = WATCHED
            .iter()
            .zip(self.watched.iter().zip(&earlier.watched))
            .filter(|(_, (now, then))| now != then)
            .map(|(name, (now, then))| format!("{} {then} -> {now}", name.to_uppercase()))
            .collect();
        if !moved.is_empty() {
            return Since::Changed(format!("calls of {}", moved.join(", ")));
        }
        // The listener's own INFO and PING ran in between: the sum grows unless the
        // counters were reset.
        if self.total <= earlier.total {
            return Since::Changed(format!(
                "the command statistics were reset (calls of all commands {} -> {})",
                earlier.total, self.total
            ));
        }
        Since::Same
    }
}

/// The value of `name` in an `INFO` reply (`name:value` lines).
fn field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    info.lines().find_map(|line| {
        line.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(':'))
            .map(str::trim)
    })
}

/// Refuses a server in cluster mode (`cluster_enabled:1` in `INFO cluster`): its
/// tracking reports the writes of the node the listener is connected to, never those
/// of the other nodes.
pub(crate) fn refuse_cluster(info_cluster: &str) -> Result<()> {
    if field(info_cluster, "cluster_enabled") == Some("1") {
        return Err(Error::Unsupported(
            "the server runs in cluster mode, where client-side caching reports the \
             writes of one node only: a near cache would keep serving values changed on \
             the other nodes. Use a standalone Redis or Valkey (a primary, or a replica \
             that the readers read too)"
                .into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: &str = "# Server\r\nredis_version:7.0.15\r\nrun_id:abc\r\ntcp_port:6379\r\n";

    fn stats(lines: &[(&str, u64)]) -> String {
        let mut s = String::from("# Commandstats\r\n");
        for (name, calls) in lines {
            s.push_str(&format!(
                "cmdstat_{name}:calls={calls},usec=3,usec_per_call=1.00,rejected_calls=0,\
                 failed_calls=0\r\n"
            ));
        }
        s
    }

    fn reading(lines: &[(&str, u64)]) -> Reading {
        Reading::parse(SERVER, &stats(lines)).unwrap()
    }

    #[test]
    fn parses_the_watched_counts_and_the_sum() {
        let r = reading(&[
            ("info", 10),
            ("swapdb", 2),
            ("config|resetstat", 1),
            ("get", 7),
        ]);
        assert_eq!(r.run_id, "abc");
        assert_eq!(r.watched, [2, 0, 0, 0, 1]);
        assert_eq!(r.total, 20);
        // Redis 6's lines have no rejected or failed calls.
        let six = Reading::parse(
            SERVER,
            "cmdstat_swapdb:calls=4,usec=1,usec_per_call=0.25\r\n",
        )
        .unwrap();
        assert_eq!(six.watched[0], 4);
    }

    #[test]
    fn a_reply_without_what_the_check_needs_is_an_error() {
        assert!(Reading::parse("# Server\r\nredis_version:7\r\n", &stats(&[("info", 1)])).is_err());
        assert!(Reading::parse(SERVER, "# Commandstats\r\n").is_err());
        assert!(Reading::parse(SERVER, "cmdstat_get:usec=1\r\n").is_err());
    }

    #[test]
    fn more_calls_of_other_commands_are_the_same_dataset() {
        let a = reading(&[("info", 10), ("swapdb", 1)]);
        let b = reading(&[("info", 12), ("swapdb", 1), ("set", 5)]);
        assert_eq!(b.since(&a), Since::Same);
    }

    #[test]
    fn a_watched_command_run_is_a_change() {
        let a = reading(&[("info", 10)]);
        for w in WATCHED {
            let b = reading(&[("info", 12), (w, 1)]);
            match b.since(&a) {
                Since::Changed(why) => assert!(why.contains(&w.to_uppercase()), "{why}"),
                other => panic!("{w}: {other:?}"),
            }
        }
    }

    #[test]
    fn counters_that_went_back_are_a_change() {
        // CONFIG RESETSTAT then as many SWAPDBs as before: the watched counts match.
        let a = reading(&[("info", 500), ("swapdb", 1), ("config|resetstat", 1)]);
        let b = reading(&[("info", 1), ("swapdb", 1), ("config|resetstat", 1)]);
        assert!(matches!(b.since(&a), Since::Changed(why) if why.contains("reset")));
        assert!(matches!(a.since(&a), Since::Changed(_)));
    }

    #[test]
    fn another_run_id_is_a_restart() {
        let a = reading(&[("info", 10)]);
        let other = Reading::parse(&SERVER.replace("abc", "def"), &stats(&[("info", 11)])).unwrap();
        assert_eq!(other.since(&a), Since::Restarted);
    }

    #[test]
    fn cluster_mode_is_refused() {
        assert!(refuse_cluster("# Cluster\r\ncluster_enabled:0\r\n").is_ok());
        let e = refuse_cluster("# Cluster\r\ncluster_enabled:1\r\n").unwrap_err();
        assert!(matches!(e, Error::Unsupported(_)), "{e:?}");
        assert!(e.to_string().contains("cluster mode"), "{e}");
    }
}
