//! Crash and pause points for the crash test suite (feature `crash-points`).
//!
//! Every step of every mutation is a named point. With the feature on, a process whose
//! environment has `LARDER_CRASH_AT=<point>` acts there, on the point's
//! `LARDER_CRASH_SKIP`-th hit (default 0, the first): `LARDER_CRASH_ACTION` is `abort`
//! (the default), `kill` (SIGKILL to itself), `stop` (SIGSTOP to itself; it carries on
//! after SIGCONT) or `panic` (unwinds, which is a different path from a crash). Without
//! the feature every point compiles to nothing.
//!
//! The crate's own unit tests (`cfg(test)`) can also arm a point per thread, with no
//! feature and no environment: see [`armed`]. Reaching the armed point panics with a
//! [`armed::Killed`] payload, which unwinds out of the real mutation and leaves the
//! region as a writer that died at that step leaves it.

/// Every point, in the order the code reaches them. A unit test checks that this list
/// and the points in the source agree, so a new step without a point is noticed.
#[cfg_attr(not(any(test, feature = "crash-points")), allow(dead_code))]
pub const POINTS: &[&str] = &[
    "overwrite.after_intent",
    "overwrite.mid_value",
    "overwrite.after_value",
    "overwrite.after_expiry",
    "set.after_make_room",
    "set.after_intent",
    "set.after_key",
    "set.mid_value",
    "set.after_value",
    "set.after_mark_old_dead",
    "set.before_publish",
    "set.after_publish",
    "set.after_slot",
    "evict_slot.after_mark_dead",
    "remove.after_intent",
    "remove.after_mark_dead",
    "remove.after_forget",
    "touch.after_intent",
    "touch.after_store",
    "clear.after_intent",
    "clear.after_small",
    "clear.after_main",
    "repair.start",
    "repair.after_clear_index",
    "repair.after_rebuild",
    "repair.after_in_flight",
    "evict.after_pop",
    "evict.after_cut",
    "move.after_pop",
    "move.after_copy",
    "move.after_publish",
    "fill.holding_slot",
    "create.after_init",
    "lock.held",
    "fence.after_bump",
    "incr.after_store",
    "incr.after_version",
    "versioned_set.before_old_dead",
    "version.after_bump",
    "near.lease_taken",
    "near.flush_after_epoch",
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
#[cfg(all(feature = "crash-points", not(test)))]
macro_rules! crash_point {
    ($name:literal) => {
        $crate::crashpoint::hit($name)
    };
}

/// Marks a crash point: the feature's, and the unit tests' per-thread arming.
#[cfg(all(feature = "crash-points", test))]
macro_rules! crash_point {
    ($name:literal) => {{
        $crate::crashpoint::hit($name);
        $crate::crashpoint::armed::hit($name);
    }};
}

/// Marks a crash point: the unit tests' per-thread arming.
#[cfg(all(not(feature = "crash-points"), test))]
macro_rules! crash_point {
    ($name:literal) => {
        $crate::crashpoint::armed::hit($name)
    };
}

/// Marks a crash point (nothing without the `crash-points` feature).
#[cfg(all(not(feature = "crash-points"), not(test)))]
macro_rules! crash_point {
    ($name:literal) => {};
}

/// Per-thread crash points for the crate's unit tests.
///
/// A test arms one point on its own thread ([`arm`]), with a number of hits to let
/// pass first; the thread's next hit past those panics with [`Killed`] and disarms.
/// The panic unwinds out of the code under test, and [`catch`] stops it: the
/// region is then exactly what a writer that died at that step leaves behind, since
/// the code holds no guards that would tidy up on the way out. Other threads, and
/// every thread that armed nothing, pass every point. [`trace`] lists the points a
/// call reaches, in order.
#[cfg(test)]
pub(crate) mod armed {
    use std::cell::RefCell;
    use std::panic::{self, AssertUnwindSafe};

    /// The panic payload of a writer killed at a point: the point's name.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct Killed(pub(crate) &'static str);

    #[derive(Default)]
    struct State {
        /// The armed point and the hits of it still to let pass.
        target: Option<(&'static str, u64)>,
        /// Every point reached while tracing.
        trace: Option<Vec<&'static str>>,
    }

    thread_local! {
        static STATE: RefCell<State> = RefCell::new(State::default());
    }

    /// A crash point was reached on this thread.
    pub(crate) fn hit(name: &'static str) {
        // `try_with`: a point reached while the thread's locals are torn down passes.
        let fire = STATE.try_with(|s| {
            let mut s = s.borrow_mut();
            if let Some(t) = s.trace.as_mut() {
                t.push(name);
            }
            match &mut s.target {
                Some((point, skip)) if *point == name => {
                    if *skip == 0 {
                        s.target = None;
                        true
                    } else {
                        *skip -= 1;
                        false
                    }
                }
                _ => false,
            }
        });
        if fire == Ok(true) {
            kill(name);
        }
    }

    /// Dies here, as a writer killed at `what` (a place without a crash point of its
    /// own, such as the start of a write section).
    pub(crate) fn kill(what: &'static str) -> ! {
        quiet_hook();
        panic::panic_any(Killed(what))
    }

    /// Disarms this thread's point when dropped.
    #[must_use = "the point is disarmed when this is dropped"]
    pub(crate) struct Armed(());

    impl Drop for Armed {
        fn drop(&mut self) {
            STATE.with(|s| s.borrow_mut().target = None);
        }
    }

    /// Arms `point` on this thread: its `skip + 1`-th hit from now on kills the thread.
    pub(crate) fn arm(point: &'static str, skip: u64) -> Armed {
        assert!(
            super::POINTS.contains(&point),
            "{point} is not a crash point"
        );
        quiet_hook();
        STATE.with(|s| s.borrow_mut().target = Some((point, skip)));
        Armed(())
    }

    /// Runs `f`; `Err` with the point if it was killed at one, which ends the unwind.
    /// Any other panic goes on unwinding.
    pub(crate) fn catch<R>(f: impl FnOnce() -> R) -> Result<R, Killed> {
        match panic::catch_unwind(AssertUnwindSafe(f)) {
            Ok(r) => Ok(r),
            Err(payload) => match payload.downcast::<Killed>() {
                Ok(k) => Err(*k),
                Err(other) => panic::resume_unwind(other),
            },
        }
    }

    /// Runs `f` and lists every point this thread reached in it, in order.
    pub(crate) fn trace<R>(f: impl FnOnce() -> R) -> (R, Vec<&'static str>) {
        /// Ends the trace, also if `f` unwinds.
        struct Tracing;
        impl Drop for Tracing {
            fn drop(&mut self) {
                STATE.with(|s| s.borrow_mut().trace = None);
            }
        }
        STATE.with(|s| s.borrow_mut().trace = Some(Vec::new()));
        let tracing = Tracing;
        let r = f();
        let points = STATE
            .with(|s| s.borrow_mut().trace.take())
            .unwrap_or_default();
        drop(tracing);
        (r, points)
    }

    /// Keeps the panic hook from printing a message for every simulated death; other
    /// panics are reported as before.
    fn quiet_hook() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let previous = panic::take_hook();
            panic::set_hook(Box::new(move |info| {
                if !info.payload().is::<Killed>() {
                    previous(info);
                }
            }));
        });
    }
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

    /// An armed point kills only the thread that armed it, on the hit after the ones it
    /// lets pass, and only once; other panics go on unwinding; a trace lists the hits.
    #[test]
    fn an_armed_point_kills_its_own_thread_at_the_chosen_hit() {
        use super::armed::{self, Killed};
        let point = "remove.after_intent";
        let armed = armed::arm(point, 2);
        std::thread::spawn(move || armed::hit(point))
            .join()
            .expect("another thread passes the point");
        let mut passed = 0;
        let result = armed::catch(|| {
            for _ in 0..5 {
                armed::hit("touch.after_intent");
                armed::hit(point);
                passed += 1;
            }
        });
        assert_eq!(result, Err(Killed(point)));
        assert_eq!(passed, 2);
        // Fired once: disarmed.
        assert_eq!(armed::catch(|| armed::hit(point)), Ok(()));
        drop(armed);
        let other = std::panic::catch_unwind(|| armed::catch(|| panic!("not a crash point")));
        let payload = other.expect_err("an ordinary panic goes on unwinding");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"not a crash point"));
        let ((), trace) = armed::trace(|| {
            armed::hit(point);
            armed::hit("touch.after_store");
        });
        assert_eq!(trace, [point, "touch.after_store"]);
        assert_eq!(armed::trace(|| ()).1, Vec::<&str>::new());
    }
}
