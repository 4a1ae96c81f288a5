//! How a thread waits for another: spin briefly, then yield, then sleep.
//!
//! Pure spinning collapses when workers outnumber cores (the spinner burns the slice the
//! worker it waits for needs); pure sleeping adds tens of microseconds to every message.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::{Clock, CommError, Result};

/// Spin this many times first: a partner that is running answers within a microsecond.
const SPINS: u32 = 100;
/// Then yield the core (to the worker we wait for, when workers outnumber cores) for up to
/// this long before sleeping: a step's all-reduce round rarely takes longer.
const YIELD_FOR: Duration = Duration::from_millis(2);
/// Then nap: a paused run or a straggler should not burn a core.
const NAP: Duration = Duration::from_micros(100);

/// Waits until `ready()` holds; fails with `Aborted` as soon as `abort` is set.
pub fn wait_until(abort: &AtomicBool, mut ready: impl FnMut() -> bool) -> Result<()> {
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
        if abort.load(Ordering::Relaxed) {
            return Err(CommError::Aborted);
        }
        if start.elapsed() < YIELD_FOR {
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
