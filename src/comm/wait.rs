//! How a thread waits for another: spin briefly, then yield, then sleep.
//!
//! Pure spinning collapses when workers outnumber cores (the spinner burns the slice the
//! worker it waits for needs); pure sleeping adds tens of microseconds to every message.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{Clock, CommError, Result};

const SPINS: u32 = 64;
const YIELDS: u32 = 256;
const NAP: Duration = Duration::from_micros(50);

/// Waits until `ready()` holds; fails with `Aborted` as soon as `abort` is set.
pub fn wait_until(abort: &AtomicBool, mut ready: impl FnMut() -> bool) -> Result<()> {
    let mut tries = 0u32;
    loop {
        if ready() {
            return Ok(());
        }
        if abort.load(Ordering::Relaxed) {
            return Err(CommError::Aborted);
        }
        tries = tries.saturating_add(1);
        if tries < SPINS {
            std::hint::spin_loop();
        } else if tries < SPINS + YIELDS {
            std::thread::yield_now();
        } else {
            std::thread::sleep(NAP);
        }
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
            std::thread::yield_now();
        }
    }
}
