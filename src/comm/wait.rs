//! How a thread waits for another: spin briefly, yield a little, then block.
//!
//! Pure spinning collapses when workers outnumber cores (the spinner burns the slice the
//! worker it waits for needs), and inside a virtual machine even yielding keeps the
//! virtual CPU busy while its sibling may be the one descheduled. So after a short spin
//! and a few yields a waiter sleeps on a futex ([`Doorbell`]) until the state it waits
//! for changes.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{Clock, CommError, Result};

/// Spin this many times first: a partner that is running answers within a microsecond.
const SPINS: u32 = 200;
/// Then yield the core for up to this long (cheap when workers outnumber cores).
const YIELD_FOR: Duration = Duration::from_micros(20);

/// A futex word that changes whenever the state a waiter may wait for changes.
#[derive(Debug, Default)]
pub struct Doorbell {
    rings: AtomicU32,
    sleepers: AtomicU32,
}

impl Doorbell {
    /// Call after changing the watched state: wakes whoever sleeps on it.
    pub fn ring(&self) {
        self.rings.fetch_add(1, Ordering::SeqCst);
        if self.sleepers.load(Ordering::SeqCst) > 0 {
            atomic_wait::wake_all(&self.rings);
        }
    }
}

/// Waits until `ready()` holds, sleeping on `bell` once spinning did not pay; fails with
/// `Aborted` as soon as `abort` is set (abort rings every bell).
pub fn wait_until(abort: &AtomicBool, bell: &Doorbell, mut ready: impl FnMut() -> bool) -> Result<()> {
    for _ in 0..SPINS {
        if ready() {
            return Ok(());
        }
        std::hint::spin_loop();
    }
    let start = Instant::now();
    loop {
        if ready() {
            return Ok(());
        }
        if abort.load(Ordering::SeqCst) {
            return Err(CommError::Aborted);
        }
        if start.elapsed() < YIELD_FOR {
            std::thread::yield_now();
            continue;
        }
        // Announce ourselves, then look once more: a ring after this point wakes us, a
        // ring before it changed `rings` (so the futex returns at once) or `ready()`.
        bell.sleepers.fetch_add(1, Ordering::SeqCst);
        let seen = bell.rings.load(Ordering::SeqCst);
        if !ready() && !abort.load(Ordering::SeqCst) {
            atomic_wait::wait(&bell.rings, seen);
        }
        bell.sleepers.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Waits until the clock reads `deadline_ns`: sleeps while far away, yields when close.
pub fn wait_for_clock(abort: &AtomicBool, clock: &Clock, deadline_ns: u64) -> Result<()> {
    const SLACK_NS: u64 = 120_000; // sleep() overshoots by tens of µs
    loop {
        let now = clock.ns();
        if now >= deadline_ns {
            return Ok(());
        }
        if abort.load(Ordering::Relaxed) {
            return Err(CommError::Aborted);
        }
        let left = deadline_ns - now;
        if left > SLACK_NS {
            std::thread::sleep(Duration::from_nanos((left - SLACK_NS).min(20_000_000)));
        } else {
            // Spin, not yield: when threads outnumber cores, a yield hands the core to a
            // computing thread for its whole time slice (milliseconds), not 100 µs.
            std::hint::spin_loop();
        }
    }
}

/// Sleeps for `d` more precisely than `thread::sleep` alone (which overshoots by tens of
/// microseconds): sleeps most of it, then yields until the time is up.
pub fn precise_sleep(d: Duration) {
    const SLACK: Duration = Duration::from_micros(120);
    let until = Instant::now() + d;
    if d > SLACK {
        std::thread::sleep(d - SLACK);
    }
    while Instant::now() < until {
        std::hint::spin_loop(); // (see `wait_for_clock`)
    }
}
