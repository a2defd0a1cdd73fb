//! Time for TTLs: milliseconds on `CLOCK_MONOTONIC`, which every process of one boot and
//! one time namespace shares (the header's stamp guarantees both), behind a clock tests
//! control.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The clock a cache handle reads expiry times from.
///
/// [`Clock::system`] (the default) is `CLOCK_MONOTONIC_COARSE`, read through the vDSO
/// (no system call, a few milliseconds of resolution). [`Clock::manual`] adds an offset
/// that only [`Clock::advance`] changes, for tests of expiry: it is local to the
/// handle's process, so processes sharing a file each advance their own.
///
/// ```
/// use std::time::Duration;
/// let clock = larder::Clock::manual();
/// let before = clock.now();
/// clock.advance(Duration::from_secs(60));
/// assert!(clock.now() >= before + Duration::from_secs(60));
/// ```
#[derive(Clone, Debug, Default)]
pub struct Clock {
    offset: Option<Arc<AtomicU64>>,
}

impl Clock {
    /// The system's monotonic clock.
    pub fn system() -> Clock {
        Clock { offset: None }
    }

    /// A clock that runs with the system's but can be moved forward by
    /// [`Clock::advance`]; clones share the offset.
    pub fn manual() -> Clock {
        Clock {
            offset: Some(Arc::new(AtomicU64::new(0))),
        }
    }

    /// Moves a manual clock forward (no effect on the system clock).
    pub fn advance(&self, by: Duration) {
        if let Some(o) = &self.offset {
            o.fetch_add(
                by.as_millis().min(u64::MAX as u128) as u64,
                Ordering::Relaxed,
            );
        }
    }

    /// The current time since the clock's epoch (boot, plus any advance).
    pub fn now(&self) -> Duration {
        Duration::from_millis(self.now_ms())
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.at(coarse_ms())
    }

    /// This clock's time for a reading of [`coarse_ms`] (one clock read serves both the
    /// handle's file check and the TTLs of an operation).
    #[inline]
    pub(crate) fn at(&self, base: u64) -> u64 {
        match &self.offset {
            Some(o) => base.saturating_add(o.load(Ordering::Relaxed)),
            None => base,
        }
    }
}

/// Milliseconds on `CLOCK_MONOTONIC_COARSE`.
pub(crate) fn coarse_ms() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    (t.tv_sec as u64)
        .saturating_mul(1000)
        .saturating_add(t.tv_nsec as u64 / 1_000_000)
}
