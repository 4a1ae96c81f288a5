//! Controls from front ends, applied by workers at phase boundaries: pause, step, the
//! pace (slow motion as time dilation, `comm::Pace`), stop, and switches of the
//! experiment (which the engine applies at the next step).
//!
//! Step mode keeps the physics (DESIGN.md decision 7): in sync training one press lets
//! every worker waiting at a gate through one gate (a phase, or one round inside the
//! all-reduce); with a parameter server one press lets through the one event that would
//! come next at full speed — the waiting worker that is earliest in *virtual time*, the
//! sum of the typical durations of the work it has done — so that workers interleave,
//! go stale, wait for the SSP bound and miss backup steps as they do at full speed.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::comm::Pace;

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Control {
    Pause,
    Resume,
    /// Step mode: let every worker waiting at a gate through one phase (or, with a
    /// parameter server, the next event in full-speed order), then halt. From a running
    /// state: halt at the next phase boundary.
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
    /// A new base learning rate from the next step (before its rule and warm-up).
    SetLr(f32),
    /// A new momentum from the next step (the momentum buffer goes on).
    SetMomentum(f32),
    /// Change every worker's compute threads at the next step (new pools; the numbers
    /// stay the same bits, only the time changes).
    SetThreads(usize),
    /// Time dilation: every piece of work lasts `factor` times as long (1 = full speed).
    SetPace {
        factor: f64,
    },
}

/// Whether the gate lets workers through (not a training mode: see `config::Mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Running,
    Paused,
    Stopped,
}

/// Where a worker is, as the gate knows it (kept up to date while paused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// Not a worker of the running segment (not started, or left).
    Absent,
    /// Between gates: computing or communicating; it will reach a gate.
    Busy,
    /// At a gate.
    Waiting,
    /// Let through by a press, not yet through the gate.
    Granted,
    /// Held by the parameter server (SSP bound, a backup step still open): it reaches
    /// no gate until another worker's push releases it.
    Parked,
}

#[derive(Debug)]
struct GateState {
    flow: Flow,
    /// Presses of "step" not yet carried out, and since when the first of them waits.
    pending: u64,
    pending_since: Option<Instant>,
    /// One event per press, in virtual-time order (parameter-server segments); else
    /// every worker at a gate per press.
    one_at_a_time: bool,
    at: Vec<At>,
}

/// A press waits for the workers on their way to reach their gates, so that each
/// press moves every worker one phase on. A sync worker may be on its way for good
/// (blocked in a collective by a partner held at its gate): after this long the press
/// goes to those that are there.
const SETTLE: Duration = Duration::from_millis(100);

/// Where workers stop between phases. The running case costs one atomic load.
#[derive(Debug)]
pub struct Gate {
    running: AtomicBool,
    pace: Arc<Pace>,
    /// Per worker: the typical work done since the segment began or the run was paused,
    /// in ns (only that worker adds to its own; a release may move it forward).
    virtual_ns: Vec<AtomicU64>,
    state: Mutex<GateState>,
    changed: Condvar,
}

/// The run was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped;

/// Presses of "step" beyond this many not yet carried out are forgotten.
const MAX_PENDING: u64 = 64;

impl Gate {
    /// A gate for up to `workers` workers, paused or not, at a pace (1 = full speed).
    pub fn new(workers: usize, start_paused: bool, pace: f64) -> Self {
        Gate {
            running: AtomicBool::new(!start_paused),
            pace: Arc::new(Pace::new(pace)),
            virtual_ns: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            state: Mutex::new(GateState {
                flow: if start_paused { Flow::Paused } else { Flow::Running },
                pending: 0,
                pending_since: None,
                one_at_a_time: false,
                at: vec![At::Absent; workers],
            }),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The run's time dilation, shared with its transports and server.
    pub fn pace(&self) -> &Arc<Pace> {
        &self.pace
    }

    /// A segment with `workers` (indices into this gate) starts: each will reach a gate.
    /// `one_at_a_time`: step mode lets one event through per press (parameter server).
    pub fn begin_segment(&self, workers: impl IntoIterator<Item = usize>, one_at_a_time: bool) {
        let mut s = self.lock();
        s.at.iter_mut().for_each(|a| *a = At::Absent);
        for w in workers {
            if let Some(a) = s.at.get_mut(w) {
                *a = At::Busy;
            }
        }
        s.one_at_a_time = one_at_a_time;
        self.virtual_ns.iter().for_each(|v| v.store(0, Ordering::Relaxed));
        self.changed.notify_all();
    }

    /// Worker `w` has left its segment: it will reach no gate any more.
    pub fn leave(&self, w: usize) {
        let mut s = self.lock();
        if let Some(a) = s.at.get_mut(w) {
            *a = At::Absent;
        }
        Self::carry_out(&mut s, &self.virtual_ns);
        self.changed.notify_all();
    }

    /// Applies a control.
    pub fn apply(&self, control: Control) {
        let mut s = self.lock();
        match control {
            Control::Pause if s.flow == Flow::Running => self.halt(&mut s),
            Control::Resume if s.flow == Flow::Paused => s.flow = Flow::Running,
            Control::StepPhase if s.flow == Flow::Running => self.halt(&mut s),
            Control::StepPhase if s.flow == Flow::Paused => {
                s.pending = (s.pending + 1).min(MAX_PENDING);
                s.pending_since.get_or_insert_with(Instant::now);
                Self::carry_out(&mut s, &self.virtual_ns);
            }
            Control::Stop => {
                s.flow = Flow::Stopped;
                self.pace.stop();
            }
            Control::SetPace { factor } => self.pace.set(factor),
            // The engine applies these; the gate only governs pausing and the pace.
            _ => {}
        }
        self.running.store(s.flow == Flow::Running, Ordering::Release);
        self.changed.notify_all();
    }

    /// Running → paused: every worker not held by the server will reach a gate, and
    /// virtual time starts again from zero (the order of events from here on is what
    /// step mode shows; what full speed did before is history).
    fn halt(&self, s: &mut GateState) {
        s.flow = Flow::Paused;
        s.pending = 0;
        s.pending_since = None;
        for a in s.at.iter_mut() {
            if matches!(a, At::Waiting | At::Granted) {
                *a = At::Busy;
            }
        }
        self.virtual_ns.iter().for_each(|v| v.store(0, Ordering::Relaxed));
    }

    /// Whether workers pass the gates without stopping (one atomic load).
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    pub fn is_paused(&self) -> bool {
        self.lock().flow == Flow::Paused
    }

    pub fn is_stopped(&self) -> bool {
        self.lock().flow == Flow::Stopped
    }

    /// Worker `w` did work whose typical length is `ns`: its virtual clock moves on.
    pub fn advance(&self, w: usize, ns: u64) {
        if let Some(v) = self.virtual_ns.get(w) {
            v.fetch_add(ns, Ordering::Relaxed);
        }
    }

    /// Worker `w`'s virtual clock.
    pub fn virtual_ns(&self, w: usize) -> u64 {
        self.virtual_ns.get(w).map_or(0, |v| v.load(Ordering::Relaxed))
    }

    /// Worker `w` is held by the parameter server until another worker releases it.
    pub fn park(&self, w: usize) {
        let mut s = self.lock();
        if let Some(a @ (At::Busy | At::Waiting | At::Granted)) = s.at.get_mut(w) {
            *a = At::Parked;
        }
        Self::carry_out(&mut s, &self.virtual_ns);
        self.changed.notify_all();
    }

    /// Worker `w`, parked, is released by an event at virtual time `at_ns` (called by
    /// the releaser, before `w` can run: so no press is decided while `w` is on its way
    /// to its next gate). Its clock moves on to the release.
    pub fn unpark(&self, w: usize, at_ns: u64) {
        let mut s = self.lock();
        if let Some(a @ At::Parked) = s.at.get_mut(w) {
            *a = At::Busy;
        }
        if let Some(v) = self.virtual_ns.get(w) {
            v.fetch_max(at_ns, Ordering::Relaxed);
        }
    }

    /// Carries out the presses waiting, one at a time, once no worker is on its way to
    /// a gate (for a sync press, at most `SETTLE` after it): one event per press goes to
    /// the waiting worker earliest in virtual time (the lower index on a tie); else
    /// every waiting worker goes one phase on.
    fn carry_out(s: &mut GateState, virtual_ns: &[AtomicU64]) {
        while s.flow == Flow::Paused && s.pending > 0 {
            let on_the_way = s.at.iter().any(|a| matches!(a, At::Busy | At::Granted));
            let patience_over = !s.one_at_a_time && s.pending_since.is_some_and(|t| t.elapsed() >= SETTLE);
            if on_the_way && !patience_over {
                return;
            }
            let waiting =
                s.at.iter()
                    .enumerate()
                    .filter(|(_, a)| **a == At::Waiting)
                    .map(|(w, _)| w);
            if s.one_at_a_time {
                match waiting.min_by_key(|&w| (virtual_ns[w].load(Ordering::Relaxed), w)) {
                    Some(w) => s.at[w] = At::Granted,
                    None => return, // (nobody to move: the press waits for someone)
                }
            } else {
                let all: Vec<usize> = waiting.collect();
                if all.is_empty() {
                    return;
                }
                all.into_iter().for_each(|w| s.at[w] = At::Granted);
            }
            s.pending -= 1;
            s.pending_since = (s.pending > 0).then(Instant::now);
        }
    }

    /// Called by worker `w` before each phase (and each all-reduce round): returns at
    /// once while running, waits while paused until a press lets it through, fails once
    /// stopped.
    pub fn pass(&self, w: usize) -> Result<(), Stopped> {
        if self.running.load(Ordering::Acquire) {
            return Ok(());
        }
        let mut s = self.lock();
        if w >= s.at.len() {
            return Ok(()); // (not a worker this gate governs)
        }
        s.at[w] = At::Waiting;
        Self::carry_out(&mut s, &self.virtual_ns);
        self.changed.notify_all();
        loop {
            let through = match s.flow {
                Flow::Stopped => return Err(Stopped),
                Flow::Running => true,
                Flow::Paused => s.at[w] == At::Granted,
            };
            if through {
                s.at[w] = At::Busy;
                self.changed.notify_all();
                return Ok(());
            }
            // (woken by every change; the timeout lets a sync press stop waiting for
            // workers that will not come)
            s = self
                .changed
                .wait_timeout(s, SETTLE / 2)
                .map_or_else(|e| e.into_inner().0, |(s, _)| s);
            Self::carry_out(&mut s, &self.virtual_ns);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    /// Runs `workers` threads that each pass the gate `passes` times, recording the
    /// order in which they got through.
    fn race(
        gate: &Arc<Gate>,
        workers: usize,
        passes: usize,
    ) -> (Vec<std::thread::JoinHandle<()>>, Arc<Mutex<Vec<usize>>>) {
        let order = Arc::new(Mutex::new(Vec::new()));
        let handles = (0..workers)
            .map(|w| {
                let (gate, order) = (Arc::clone(gate), Arc::clone(&order));
                std::thread::spawn(move || {
                    for _ in 0..passes {
                        if gate.pass(w).is_err() {
                            return;
                        }
                        order.lock().unwrap().push(w);
                    }
                })
            })
            .collect();
        (handles, order)
    }

    fn settle() {
        std::thread::sleep(Duration::from_millis(50));
    }

    #[test]
    fn a_press_lets_every_waiting_worker_through_exactly_once() {
        let gate = Arc::new(Gate::new(3, true, 1.0));
        gate.begin_segment(0..3, false);
        let (handles, order) = race(&gate, 3, 10);
        settle();
        assert!(order.lock().unwrap().is_empty(), "paused: nobody passes");
        for press in 1..=3 {
            gate.apply(Control::StepPhase);
            settle();
            let mut seen = order.lock().unwrap().clone();
            seen.sort();
            let expected: Vec<usize> = (0..3).flat_map(|w| std::iter::repeat_n(w, press)).collect();
            assert_eq!(seen, expected, "after {press} presses");
        }
        gate.apply(Control::Stop);
        handles.into_iter().for_each(|h| h.join().unwrap());
    }

    #[test]
    fn one_at_a_time_follows_virtual_time_and_waits_for_workers_on_their_way() {
        let gate = Arc::new(Gate::new(2, true, 1.0));
        gate.begin_segment(0..2, true);
        // Worker 1's work is three times as long as worker 0's.
        gate.advance(0, 10);
        gate.advance(1, 30);
        let order = Arc::new(Mutex::new(Vec::new()));
        let handles: Vec<_> = [(0usize, 10u64), (1, 30)]
            .into_iter()
            .map(|(w, cost)| {
                let (gate, order) = (Arc::clone(&gate), Arc::clone(&order));
                std::thread::spawn(move || {
                    while gate.pass(w).is_ok() {
                        order.lock().unwrap().push(w);
                        gate.advance(w, cost);
                    }
                })
            })
            .collect();
        settle();
        for _ in 0..8 {
            gate.apply(Control::StepPhase);
            settle();
        }
        // Virtual times of worker 0's events: 10, 20, 30, 40, …; worker 1's: 30, 60, …
        // Ties go to the lower index.
        assert_eq!(*order.lock().unwrap(), vec![0, 0, 0, 1, 0, 0, 0, 1]);
        gate.apply(Control::Stop);
        handles.into_iter().for_each(|h| h.join().unwrap());
    }

    #[test]
    fn a_parked_worker_is_no_event_until_released() {
        let gate = Arc::new(Gate::new(2, true, 1.0));
        gate.begin_segment(0..2, true);
        gate.park(1);
        let (handles, order) = race(&gate, 1, 2);
        settle();
        gate.apply(Control::StepPhase);
        settle();
        assert_eq!(*order.lock().unwrap(), vec![0], "worker 1 is parked: worker 0 goes");
        gate.unpark(1, 100);
        gate.apply(Control::StepPhase);
        settle();
        assert_eq!(
            *order.lock().unwrap(),
            vec![0],
            "worker 1 is on its way: the press waits for it"
        );
        gate.leave(1);
        settle();
        assert_eq!(*order.lock().unwrap(), vec![0, 0]);
        gate.apply(Control::Stop);
        handles.into_iter().for_each(|h| h.join().unwrap());
    }

    #[test]
    fn running_gate_passes_and_stop_releases_a_paused_worker() {
        let gate = Arc::new(Gate::new(1, false, 1.0));
        assert_eq!(gate.pass(0), Ok(()));
        gate.apply(Control::Pause);
        let g = gate.clone();
        let waiter = std::thread::spawn(move || g.pass(0));
        gate.apply(Control::Stop);
        assert_eq!(waiter.join().unwrap(), Err(Stopped));
    }

    #[test]
    fn step_from_running_halts_at_the_next_boundary_without_a_burst() {
        let gate = Arc::new(Gate::new(2, false, 1.0));
        gate.begin_segment(0..2, false);
        gate.apply(Control::StepPhase);
        let (handles, order) = race(&gate, 2, 5);
        settle();
        assert!(order.lock().unwrap().is_empty(), "halted before any phase");
        gate.apply(Control::StepPhase);
        settle();
        assert_eq!(order.lock().unwrap().len(), 2, "one phase of each worker");
        gate.apply(Control::Resume);
        handles.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(order.lock().unwrap().len(), 10);
    }
}
