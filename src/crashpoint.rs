//! Crash and pause points for the crash test suite (feature `crash-points`).
//!
//! Every step of every mutation is a named point. With the feature on, a process whose
//! environment has `LARDER_CRASH_AT=<point>` acts there, on the point's
//! `LARDER_CRASH_SKIP`-th hit (default 0, the first): `LARDER_CRASH_ACTION` is `abort`
//! (the default), `kill` (SIGKILL to itself), `stop` (SIGSTOP to itself; it carries on
//! after SIGCONT) or `panic` (unwinds, which is a different path from a crash). Without
//! the feature every point compiles to nothing.

/// Every point, in the order the code reaches them. A unit test checks that this list
/// and the points in the source agree, so a new step without a point is noticed.
#[cfg_attr(not(any(test, feature = "crash-points")), allow(dead_code))]
pub const POINTS: &[&str] = &[
    "overwrite.after_intent",
    "overwrite.mid_value",
    "overwrite.after_value",
    "set.after_make_room",
    "set.after_intent",
    "set.after_key",
    "set.after_value",
    "set.after_mark_old_dead",
    "set.after_publish",
    "set.after_slot",
    "evict_slot.after_mark_dead",
    "remove.after_intent",
    "remove.after_mark_dead",
    "touch.after_intent",
    "touch.after_store",
    "clear.after_intent",
    "clear.after_small",
    "clear.after_main",
    "repair.start",
    "repair.after_clear_index",
    "repair.after_rebuild",
    "evict.after_pop",
    "move.after_pop",
    "move.after_copy",
    "move.after_publish",
    "fill.holding_slot",
    "create.after_init",
    "lock.held",
    "incr.after_store",
    "open.register_atfork",
    "open.read_boot_id",
    "restamp.after_ids",
];

#[cfg(feature = "crash-points")]
mod imp {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;

    struct Target {
        point: String,
        action: String,
        skip: u64,
    }

    static TARGET: OnceLock<Option<Target>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);

    fn target() -> Option<&'static Target> {
        TARGET
            .get_or_init(|| {
                let point = std::env::var("LARDER_CRASH_AT").ok()?;
                Some(Target {
                    point,
                    action: std::env::var("LARDER_CRASH_ACTION").unwrap_or_else(|_| "abort".into()),
                    skip: std::env::var("LARDER_CRASH_SKIP")
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0),
                })
            })
            .as_ref()
    }

    // The crate denies `unsafe` outside `region`, `lock` and `mapping`; this one call is
    // allowed here because it is test machinery, compiled only with the `crash-points`
    // feature, and does not belong among `lock`'s production calls. (rustix's safe
    // `kill_process` would signal the process, not this thread; see `hit`.)
    #[allow(unsafe_code)]
    fn raise(sig: i32) {
        // SAFETY: raise has no memory-safety preconditions; it only sends a signal to the
        // calling thread.
        let _ = unsafe { libc::raise(sig) };
    }

    /// Holds this thread until the pause file is removed (or 60 s pass).
    fn pause() {
        let Some(file) = std::env::var_os("LARDER_CRASH_PAUSE_FILE") else {
            return;
        };
        if std::fs::write(&file, b"paused").is_err() {
            return;
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::path::Path::new(&file).exists() && std::time::Instant::now() < deadline {
            // The poll interval of a test-only hold; the deadline bounds it.
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    /// Acts if `name` is the configured point.
    pub fn hit(name: &str) {
        let Some(t) = target() else { return };
        if t.point != name {
            return;
        }
        let n = HITS.fetch_add(1, Ordering::Relaxed);
        if n < t.skip || (t.action == "pause" && n != t.skip) {
            return;
        }
        match t.action.as_str() {
            "pause" => return pause(),
            // Signals go to this thread (raise is tgkill on the caller): a stop sent to the
            // process would let this thread run on past the point before it stopped.
            "kill" => raise(libc::SIGKILL),
            "stop" => {
                raise(libc::SIGSTOP);
                return;
            }
            "panic" => panic!("crash point {name}"),
            _ => {}
        }
        std::process::abort();
    }
}

#[cfg(feature = "crash-points")]
pub use imp::hit;

/// Marks a crash point (nothing without the `crash-points` feature).
#[cfg(feature = "crash-points")]
macro_rules! crash_point {
    ($name:literal) => {
        $crate::crashpoint::hit($name)
    };
}

/// Marks a crash point (nothing without the `crash-points` feature).
#[cfg(not(feature = "crash-points"))]
macro_rules! crash_point {
    ($name:literal) => {};
}

#[cfg(test)]
mod tests {
    /// The list of points matches the points in the source, in both directions.
    #[test]
    fn every_crash_point_is_listed() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src");
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).expect("src") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("crashpoint.rs") {
                let text = std::fs::read_to_string(&path).expect("read");
                for part in text.split("crash_point!(\"").skip(1) {
                    found.push(part.split('"').next().unwrap_or_default().to_string());
                }
            }
        }
        found.sort();
        found.dedup();
        let mut listed: Vec<String> = super::POINTS.iter().map(|s| s.to_string()).collect();
        listed.sort();
        assert_eq!(found, listed);
    }
}
