//! Controls from front ends, applied by workers at phase boundaries.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Control {
    Pause,
    Resume,
    /// Let every worker go through one more phase, then pause again.
    StepPhase,
    Stop,
    /// Switch the mode at the next step boundary, keeping parameters and optimizer state.
    SetMode(crate::config::Mode),
    /// Change the number of workers at the next step boundary (re-shards the data).
    SetWorkers(usize),
    /// Make one worker's compute `factor` times slower from now on (1 = normal speed).
    Straggler {
        worker: usize,
        factor: f32,
    },
    /// Switch the all-reduce algorithm at the next step.
    SetAllReduce(crate::comm::AllReduceAlgo),
    /// Switch the emulated link (None = shared memory) at the next step.
    SetLink(Option<crate::comm::Link>),
    /// Switch the LR scaling rule at the next step.
    SetLrScaling(crate::nn::LrScaling),
    /// Hold every phase at least this long, so that a person can follow it (0 = off).
    SlowMotion {
        ms: u32,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Running,
    Paused,
    Stopped,
}

#[derive(Debug)]
struct GateState {
    mode: Mode,
    /// Phases granted by StepPhase so far (compared with each worker's `used`).
    granted: u64,
}

/// Where workers stop between phases. The running case costs one atomic load.
#[derive(Debug)]
pub struct Gate {
    running: AtomicBool,
    /// Slow motion: nanoseconds to hold before each phase (0 = full speed).
    slow_ns: AtomicU64,
    /// Phases each worker has entered; only that worker writes its own counter.
    used: Vec<AtomicU64>,
    state: Mutex<GateState>,
    changed: Condvar,
}

/// The run was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped;

impl Gate {
    pub fn new(workers: usize, start_paused: bool) -> Self {
        Gate {
            running: AtomicBool::new(!start_paused),
            slow_ns: AtomicU64::new(0),
            used: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            state: Mutex::new(GateState {
                mode: if start_paused { Mode::Paused } else { Mode::Running },
                granted: 0,
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies a control.
    pub fn apply(&self, control: Control) {
        let mut s = self.lock();
        match control {
            Control::Pause if s.mode == Mode::Running => s.mode = Mode::Paused,
            Control::Resume if s.mode == Mode::Paused => s.mode = Mode::Running,
            Control::StepPhase if s.mode != Mode::Stopped => {
                if s.mode == Mode::Running {
                    // Stepping from a running state: workers finish the phase they are in
                    // (plus this one) and stop; line up the grants with what they used.
                    s.granted = self.used.iter().map(|u| u.load(Ordering::Acquire)).max().unwrap_or(0);
                }
                s.mode = Mode::Paused;
                s.granted += 1;
            }
            Control::Stop => s.mode = Mode::Stopped,
            Control::SlowMotion { ms } => self.slow_ns.store(u64::from(ms) * 1_000_000, Ordering::Relaxed),
            // The engine applies these; the gate only governs pausing.
            _ => {}
        }
        self.running.store(s.mode == Mode::Running, Ordering::Release);
        self.changed.notify_all();
    }

    pub fn is_paused(&self) -> bool {
        self.lock().mode == Mode::Paused
    }

    pub fn is_stopped(&self) -> bool {
        self.lock().mode == Mode::Stopped
    }

    /// Called by `worker` before each phase: returns at once while running, blocks while
    /// paused (unless a StepPhase grant is left), fails once stopped.
    pub fn pass(&self, worker: usize) -> Result<(), Stopped> {
        let used = &self.used[worker];
        let slow = self.slow_ns.load(Ordering::Relaxed);
        if slow > 0 {
            std::thread::sleep(std::time::Duration::from_nanos(slow));
        }
        if self.running.load(Ordering::Acquire) {
            used.fetch_add(1, Ordering::AcqRel);
            return Ok(());
        }
        let mut s = self.lock();
        loop {
            let granted =
                s.mode == Mode::Running || (s.mode == Mode::Paused && used.load(Ordering::Acquire) < s.granted);
            if s.mode == Mode::Stopped {
                return Err(Stopped);
            }
            if granted {
                used.fetch_add(1, Ordering::AcqRel);
                return Ok(());
            }
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_phase_grants_each_worker_exactly_one_phase() {
        let gate = Gate::new(2, true);
        gate.apply(Control::StepPhase);
        assert_eq!(gate.pass(0), Ok(()));
        assert_eq!(gate.pass(1), Ok(()));
        // a third pass by worker 0 would block: check the grant arithmetic instead
        assert!(gate.used[0].load(Ordering::Relaxed) >= gate.lock().granted);
        gate.apply(Control::Stop);
        assert_eq!(gate.pass(0), Err(Stopped));
    }

    #[test]
    fn running_gate_passes_and_stop_releases_a_paused_worker() {
        let gate = std::sync::Arc::new(Gate::new(1, false));
        assert_eq!(gate.pass(0), Ok(()));
        gate.apply(Control::Pause);
        let g = gate.clone();
        let waiter = std::thread::spawn(move || g.pass(0));
        gate.apply(Control::Stop);
        assert_eq!(waiter.join().unwrap(), Err(Stopped));
    }
}
