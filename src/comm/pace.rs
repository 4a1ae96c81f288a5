//! Slow motion as time dilation: every piece of work (a phase's compute, a message's
//! transfer, the server's update, an emulated link's delay, a straggler's extra time)
//! lasts `factor` times as long as it really does, so that a person can follow a run
//! whose phases take microseconds while ratios, idle shares, races and staleness keep
//! the shape they have at full speed. (Padding every phase to a minimum length instead
//! would erase them: a straggler's 4× becomes 1×.)
//!
//! Waiting is never stretched: a worker that waits for a stretched partner waits
//! proportionally longer by itself. Every stretch sleeps in short slices, so a new
//! factor, a stop or an interrupt takes effect within one slice.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The slowest pace offered: 10⁶ turns a 10 µs phase into 10 s.
pub const MAX_FACTOR: f64 = 1e6;

/// A sleep is cut into slices of at most this long, to notice changes.
const SLICE: Duration = Duration::from_millis(10);

/// Kinds of work whose typical duration is tracked apart (see [`Pace::stretch`]).
pub const SITES: usize = 16;

/// The run's time-dilation factor, shared by its workers, transports and server.
#[derive(Debug)]
pub struct Pace {
    /// f64 bits; 1.0 = full speed.
    factor: AtomicU64,
    /// Set once the run stops: sleepers return at once, for good.
    stopped: AtomicBool,
    /// Bumped to release whoever sleeps now (a worker failed, a segment is aborted).
    interrupts: AtomicU64,
}

impl Default for Pace {
    fn default() -> Self {
        Pace::new(1.0)
    }
}

thread_local! {
    /// Per thread: how much longer than asked the thread's last sleeps lasted (ns),
    /// paid back by the next stretch, so that the long-run ratio stays exact although a
    /// single sleep overshoots by tens of microseconds.
    static OVERSLEPT_NS: Cell<i64> = const { Cell::new(0) };
    /// Per thread and site: a moving average of real durations (ns), to tell a
    /// preempted measurement from the work's typical length.
    static TYPICAL_NS: Cell<[f64; SITES]> = const { Cell::new([0.0; SITES]) };
}

impl Pace {
    pub fn new(factor: f64) -> Pace {
        Pace {
            factor: AtomicU64::new(clamp(factor).to_bits()),
            stopped: AtomicBool::new(false),
            interrupts: AtomicU64::new(0),
        }
    }

    /// 1 = full speed; 1000 = every piece of work lasts 1000 times as long.
    pub fn factor(&self) -> f64 {
        f64::from_bits(self.factor.load(Ordering::Relaxed))
    }

    pub fn set(&self, factor: f64) {
        self.factor.store(clamp(factor).to_bits(), Ordering::Relaxed);
    }

    pub fn is_dilated(&self) -> bool {
        self.factor() > 1.0
    }

    /// Ends every sleep now and later (the run is over).
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }

    /// Ends the sleeps in progress (a segment is being torn down).
    pub fn interrupt(&self) {
        self.interrupts.fetch_add(1, Ordering::SeqCst);
    }

    /// After work of kind `site` that really took `real`: sleeps (factor − 1) × its
    /// typical length, so that the work as a whole lasts factor × as long, and returns
    /// that typical length (step mode orders events by it). The typical length is
    /// `real`, unless `real` is over three times the recent average of this site on this
    /// thread (the thread was preempted: do not stretch the preemption a thousandfold).
    /// At full speed it only keeps the average.
    pub fn stretch(&self, site: usize, real: Duration) -> Duration {
        let real_ns = real.as_nanos() as f64;
        let typical = TYPICAL_NS.with(|t| {
            let mut all = t.get();
            let avg = &mut all[site % SITES];
            let used = if *avg > 0.0 { real_ns.min(3.0 * *avg) } else { real_ns };
            *avg = if *avg > 0.0 { 0.8 * *avg + 0.2 * used } else { used };
            t.set(all);
            used
        });
        if self.is_dilated() {
            self.sleep_for(|f| (f - 1.0) * typical);
        }
        Duration::from_nanos(typical as u64)
    }

    /// Sleeps `d` of real time (a straggler's extra compute), precisely (the last
    /// stretch spins) and ending early on a stop or an interrupt.
    pub fn sleep_real(&self, d: Duration) {
        const SPIN: Duration = Duration::from_micros(120); // sleep() overshoots by tens of µs
        let until = Instant::now() + d;
        let interrupts = self.interrupts.load(Ordering::SeqCst);
        loop {
            if self.stopped.load(Ordering::Relaxed) || self.interrupts.load(Ordering::Relaxed) != interrupts {
                return;
            }
            let now = Instant::now();
            if now >= until {
                return;
            }
            let left = until - now;
            if left > SPIN {
                std::thread::sleep((left - SPIN).min(SLICE));
            } else {
                std::hint::spin_loop();
            }
        }
    }

    /// Sleeps factor × `virtual_time`: for delays that stand for work (an emulated
    /// link's α + n/β), which are dilated as a whole. At full speed, precisely.
    pub fn sleep_scaled(&self, virtual_time: Duration) {
        if !self.is_dilated() {
            return self.sleep_real(virtual_time);
        }
        let ns = virtual_time.as_nanos() as f64;
        self.sleep_for(|f| f * ns);
    }

    /// Sleeps `target(factor)` ns, re-reading the factor every slice (a new pace applies
    /// at once), minus what earlier sleeps of this thread overslept.
    fn sleep_for(&self, target: impl Fn(f64) -> f64) {
        let start = Instant::now();
        let interrupts = self.interrupts.load(Ordering::SeqCst);
        let debt = OVERSLEPT_NS.with(Cell::get);
        loop {
            if self.stopped.load(Ordering::Relaxed) || self.interrupts.load(Ordering::Relaxed) != interrupts {
                OVERSLEPT_NS.with(|d| d.set(0));
                return;
            }
            let want = target(self.factor()) - debt as f64;
            let slept = start.elapsed().as_nanos() as f64;
            let left = want - slept;
            if left <= 0.0 {
                OVERSLEPT_NS.with(|d| d.set((-left).min(1e9) as i64));
                return;
            }
            std::thread::sleep(Duration::from_nanos(left as u64).min(SLICE));
        }
    }
}

fn clamp(factor: f64) -> f64 {
    if factor.is_finite() {
        factor.clamp(1.0, MAX_FACTOR)
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_speed_never_sleeps_and_factors_are_clamped() {
        let pace = Pace::default();
        let t = Instant::now();
        pace.stretch(0, Duration::from_millis(50));
        assert!(t.elapsed() < Duration::from_millis(20));
        pace.set(0.2);
        assert_eq!(pace.factor(), 1.0);
        pace.set(f64::NAN);
        assert_eq!(pace.factor(), 1.0);
        pace.set(1e12);
        assert_eq!(pace.factor(), MAX_FACTOR);
    }

    #[test]
    fn a_stretch_makes_work_last_factor_times_as_long_over_many_calls() {
        let pace = Pace::new(11.0);
        let t = Instant::now();
        for _ in 0..20 {
            pace.stretch(1, Duration::from_micros(100)); // 20 × 1 ms of sleep
        }
        let took = t.elapsed();
        // Overshoot is paid back, so the total is close to 20 ms whatever one sleep does.
        assert!(took >= Duration::from_millis(19), "{took:?}");
    }

    #[test]
    fn stop_and_interrupt_end_a_long_sleep() {
        let pace = std::sync::Arc::new(Pace::new(MAX_FACTOR));
        let p = std::sync::Arc::clone(&pace);
        let sleeper = std::thread::spawn(move || {
            let t = Instant::now();
            p.sleep_scaled(Duration::from_secs(1)); // would be 10⁶ s
            t.elapsed()
        });
        std::thread::sleep(Duration::from_millis(30));
        pace.interrupt();
        let took = sleeper.join().unwrap();
        assert!(took < Duration::from_secs(5), "{took:?}");
        pace.stop();
        let t = Instant::now();
        pace.sleep_scaled(Duration::from_secs(1));
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn a_preempted_measurement_is_not_stretched_a_thousandfold() {
        let pace = Pace::new(101.0);
        for _ in 0..5 {
            pace.stretch(2, Duration::from_micros(10)); // typical: 10 µs → 1 ms sleeps
        }
        let t = Instant::now();
        pace.stretch(2, Duration::from_millis(20)); // preempted: 2 s if taken at face value
        assert!(t.elapsed() < Duration::from_millis(500), "{:?}", t.elapsed());
    }
}
