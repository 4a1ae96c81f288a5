//! How a thread waits for another: spin briefly, yield a little, then block — when
//! spinning pays.
//!
//! Pure spinning collapses when workers outnumber cores (the spinner burns the slice the
//! worker it waits for needs), and inside a virtual machine even yielding keeps the
//! virtual CPU busy while its sibling may be the one descheduled. So after a short spin
//! and a few yields a waiter sleeps on a futex ([`Doorbell`]) until the state it waits
//! for changes.
//!
//! On a busy machine (other programs using the cores) spinning and yielding stop paying
//! and start costing: a spin burns the share of the CPU the awaited thread needs, and a
//! yield hands the core to the other program for its whole time slice. A watcher thread
//! therefore measures how much CPU other programs use (`/proc/stat` less this process's
//! own time, every quarter second); while they use half a core or more, waiters go to
//! sleep at once, and the worker they wait for wakes them within its short time slice
//! (see `comm::worker_thread`). Measured on 2 cores beside two busy processes, 4 workers:
//! 51 steps/s spinning first, about 600 sleeping at once; on an idle machine spinning
//! first stays (a sleeping virtual CPU takes long to wake).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{Clock, CommError, Result};

/// Spin this many times first: a partner that is running answers within a microsecond.
const SPINS: u32 = 200;
/// Then yield the core for up to this long (cheap when workers outnumber cores).
const YIELD_FOR: Duration = Duration::from_micros(20);

/// Whether other programs keep the cores busy now (see the module's comment).
static CROWDED: AtomicBool = AtomicBool::new(false);

/// Starts the watcher of other programs' CPU use (once per process; where the system
/// does not say, it never finds the machine crowded).
pub fn watch_crowding() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let _ = std::thread::Builder::new()
            .name("ddlab-crowding".into())
            .spawn(|| loop {
                let meter = OthersMeter::start();
                std::thread::sleep(WATCH_EVERY);
                CROWDED.store(meter.cores().is_some_and(|c| c >= 0.5), Ordering::Relaxed);
            });
    });
}

/// How often the watcher looks.
const WATCH_EVERY: Duration = Duration::from_millis(250);

/// Cores that programs other than this one used between two looks `took` apart.
fn others_cores((all0, ours0): (u64, u64), (all1, ours1): (u64, u64), ticks_per_s: f64, took: Duration) -> f64 {
    let others = all1.saturating_sub(all0).saturating_sub(ours1.saturating_sub(ours0));
    others as f64 / (ticks_per_s * took.as_secs_f64())
}

/// Measures how many cores other programs use from its start to a look.
pub struct OthersMeter {
    start: Option<(u64, u64)>,
    at: Instant,
}

impl OthersMeter {
    pub fn start() -> Self {
        #[cfg(target_os = "linux")]
        let start = cpu_ticks();
        #[cfg(not(target_os = "linux"))]
        let start = None;
        OthersMeter {
            start,
            at: Instant::now(),
        }
    }

    /// Cores other programs used on average since the start (None where the system does
    /// not say: only Linux's `/proc` is read).
    pub fn cores(&self) -> Option<f64> {
        #[cfg(target_os = "linux")]
        {
            Some(others_cores(
                self.start?,
                cpu_ticks()?,
                clock_ticks(),
                self.at.elapsed(),
            ))
        }
        #[cfg(not(target_os = "linux"))]
        None
    }
}

/// The unit of `/proc`'s CPU times, per second.
#[cfg(target_os = "linux")]
fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        t if t > 0 => t as f64,
        _ => 100.0,
    }
}

/// Whether other programs were using half a core or more at the last look.
pub fn crowded() -> bool {
    CROWDED.load(Ordering::Relaxed)
}

/// (CPU ticks busy on the whole machine, this process's ticks), from `/proc`.
#[cfg(target_os = "linux")]
fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq (steal: the host's, not this machine's)
    let busy = cpu.first()? + cpu.get(1)? + cpu.get(2)? + cpu.get(5)? + cpu.get(6)?;
    let me = std::fs::read_to_string("/proc/self/stat").ok()?;
    // fields after the command (which may hold spaces), from the closing parenthesis
    let rest: Vec<&str> = me.rsplit_once(')')?.1.split_whitespace().collect();
    let ours = rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?;
    Some((busy, ours))
}

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
    if ready() {
        return Ok(());
    }
    // (crowded: even a short spin measured slower than sleeping at once)
    if !crowded() && spin_then_yield(abort, &mut ready) {
        return Ok(());
    }
    loop {
        if ready() {
            return Ok(());
        }
        if abort.load(Ordering::SeqCst) {
            return Err(CommError::Aborted);
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

/// Spins, then yields for a moment, until `ready()` (true) or that time is over.
fn spin_then_yield(abort: &AtomicBool, ready: &mut impl FnMut() -> bool) -> bool {
    for _ in 0..SPINS {
        if ready() {
            return true;
        }
        std::hint::spin_loop();
    }
    let start = Instant::now();
    while start.elapsed() < YIELD_FOR && !abort.load(Ordering::Relaxed) {
        if ready() {
            return true;
        }
        std::thread::yield_now();
    }
    ready()
}

/// Waits until the clock reads `deadline_ns`: sleeps while far away, spins when close.
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
/// microseconds): sleeps most of it, then spins until the time is up.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn others_use_what_the_machine_used_less_this_process() {
        // 100 ticks a second; in 0.5 s the machine was busy 80 ticks, this process 30.
        let cores = others_cores((1000, 200), (1080, 230), 100.0, Duration::from_millis(500));
        assert!((cores - 1.0).abs() < 1e-9, "{cores}");
        // this process alone: nobody else; counters never go back below zero
        assert_eq!(
            others_cores((1000, 200), (1030, 230), 100.0, Duration::from_millis(500)),
            0.0
        );
        assert_eq!(
            others_cores((1000, 200), (1010, 230), 100.0, Duration::from_millis(500)),
            0.0
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_busy_process_beside_this_one_is_measured() {
        let meter = OthersMeter::start();
        let mut busy = std::process::Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(800));
        let cores = meter.cores();
        let _ = busy.kill();
        let _ = busy.wait();
        // (a whole core, less the moment it took to start; more if the machine is busier)
        assert!(cores.unwrap() >= 0.6, "{cores:?}");
    }

    #[test]
    fn a_crowded_wait_still_sees_the_state_change() {
        // Sleeping at once (crowded) must not miss a ring that came before the sleep.
        CROWDED.store(true, Ordering::Relaxed);
        let abort = AtomicBool::new(false);
        let bell = std::sync::Arc::new(Doorbell::default());
        let flag = std::sync::Arc::new(AtomicBool::new(false));
        let (b, f) = (std::sync::Arc::clone(&bell), std::sync::Arc::clone(&flag));
        let ringer = std::thread::spawn(move || {
            for _ in 0..1000 {
                std::thread::yield_now();
            }
            f.store(true, Ordering::SeqCst);
            b.ring();
        });
        wait_until(&abort, &bell, || flag.load(Ordering::SeqCst)).unwrap();
        ringer.join().unwrap();
        CROWDED.store(false, Ordering::Relaxed);
    }
}
