//! The demo (examples/auth_workers.rs) shows its headline: a short run of it, with
//! workers in processes of their own, kills one of them inside a shard lock, the pool
//! repairs the shard and carries on, and nothing torn is ever read.
//!
//! The deliberate kill needs larder's crash points, which this package's tests always
//! have (Cargo.toml: a dev-dependency on itself); a packaged copy of the crate, whose
//! manifest loses that path dependency, builds this file empty.
#![cfg(feature = "crash-points")]

mod common;

// The example itself, run from this test binary: its workers are this binary again,
// started for this test only (`common::self_command`), which hands them to the
// example's own entry point.
#[path = "../examples/auth_workers.rs"]
#[allow(dead_code)] // its `main`, which this binary does not use
mod auth_workers;

use auth_workers::parent;

const TEST: &str = "a_short_demo_run_kills_a_lock_holder_and_the_pool_repairs_its_shard";

#[test]
fn a_short_demo_run_kills_a_lock_holder_and_the_pool_repairs_its_shard() {
    if common::child_role().is_some() {
        let code = auth_workers::child().expect("started as a demo worker");
        std::process::exit(i32::from(code));
    }
    // Short and small: 3 workers for 2 s, one random kill besides the deliberate one.
    let args = parent::Args {
        workers: 3,
        secs: 2,
        kills: 1,
    };
    let launch = || common::self_command(TEST, "demo-worker");
    let summary = parent::run(&args, &launch)
        .expect("the demo runs")
        .expect("a run, not --help");
    assert!(summary.problems.is_empty(), "{:?}", summary.problems);
    let killed = summary
        .deliberate
        .expect("this package's tests have larder's crash points (its dev-dependency on itself)");
    assert!(
        killed.repaired_after.is_some(),
        "shard {} not repaired after its lock holder was killed",
        killed.shard
    );
    assert_eq!(killed.dropped, 1, "the repair drops the half-written entry");
    assert!(summary.recoveries >= 1);
    assert_eq!(summary.torn, 0);
    assert!(summary.verify_clean);
}
