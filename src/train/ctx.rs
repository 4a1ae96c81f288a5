//! What every segment of a run shares, whichever engine runs it: the run's context
//! (`RunCtx`: experiment, data, network, sink, gate, clock, the front end's live
//! changes), a segment's settings (`Segment`), where it starts (`SegState`) and how it
//! ended (`SegEnd`), and the worker threads. `engine.rs` builds it; `sync.rs` and
//! `ps.rs` run segments on it. It imports neither, so that the engines' files point one
//! way: engine → sync, ps → ctx.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_channel::Sender;

use super::{Event, EventSink, Gate, Phase};
use crate::comm::{AllReduceAlgo, Clock, Link};
use crate::config::{Experiment, Mode, MAX_WORKERS};
use crate::data::{Dataset, Sharder};
use crate::nn::{LrScaling, LrSchedule, Mlp, Sgd};

/// At most one step in this long is reported in detail (a step of its own when steps are
/// slower, as in slow motion and step mode).
pub(super) const DETAIL_EVERY_NS: u64 = 20_000_000;
/// Knobs for how a run reports, not what it computes.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    /// Emit per-message `Transfer` and per-worker `Batch` events (for the lab's views).
    pub detail: bool,
    /// Start from these parameters instead of a fresh initialisation.
    pub initial_params: Option<Vec<f32>>,
    /// Continue a run: the updates and samples already done (with `initial_params`).
    pub resume: Option<(u64, u64)>,
    /// Train on past the experiment's length (the lab: a run never ends under the
    /// learner's hands); the length is still reported, as the point the run passes.
    pub endless: bool,
}

/// What front ends change while a run goes, shared with the running segment.
pub(super) struct Live {
    pub(super) aborted: AtomicBool,
    /// Releases whoever the running segment has blocked (collectives, the server).
    pub(super) aborter: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
    pub(super) switch_requested: AtomicBool,
    /// Settings for the next segment (its index is set when it starts).
    pub(super) next: Mutex<Segment>,
    /// Compute slow-down per worker, as f32 bits (1.0 = normal).
    pub(super) stragglers: Vec<AtomicU32>,
    /// The running segment's threads per worker, which the evaluator uses too.
    pub(super) threads: AtomicUsize,
}

impl Live {
    pub(super) fn new(exp: &Experiment) -> Live {
        let live = Live {
            aborted: AtomicBool::new(false),
            aborter: Mutex::new(None),
            switch_requested: AtomicBool::new(false),
            next: Mutex::new(Segment::first(exp)),
            stragglers: (0..MAX_WORKERS).map(|_| AtomicU32::new(1.0f32.to_bits())).collect(),
            threads: AtomicUsize::new(exp.threads),
        };
        for s in &exp.stragglers {
            live.stragglers[s.worker].store(s.factor.to_bits(), Ordering::Relaxed);
        }
        live
    }

    pub(super) fn straggler(&self, worker: usize) -> f32 {
        f32::from_bits(self.stragglers[worker].load(Ordering::Relaxed))
    }

    pub(super) fn switch_requested(&self) -> bool {
        self.switch_requested.load(Ordering::SeqCst)
    }

    /// Segments call this first: `f` releases their blocked threads on abort.
    pub(super) fn set_aborter(&self, f: Box<dyn Fn() + Send + Sync>) {
        let mut slot = self.aborter.lock().unwrap_or_else(|e| e.into_inner());
        if self.aborted.load(Ordering::SeqCst) {
            f();
        }
        *slot = Some(f);
    }

    pub(super) fn abort(&self) {
        self.aborted.store(true, Ordering::SeqCst);
        if let Some(f) = self.aborter.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            f();
        }
    }
}

/// A parameter snapshot to score: (updates done, samples done, parameters, when).
pub(super) type EvalJob = (u64, u64, Vec<f32>, u64);

/// What every segment of a run shares.
pub(super) struct RunCtx<'a> {
    pub exp: &'a Experiment,
    pub data: &'a Dataset,
    pub mlp: Mlp,
    pub sink: EventSink,
    pub gate: &'a Arc<Gate>,
    pub clock: Clock,
    pub options: &'a EngineOptions,
    pub live: &'a Live,
    /// The run ends when the workers have processed this many samples (never, when
    /// endless: `u64::MAX`).
    pub total_samples: u64,
    /// The GPUs found, with `--device gpu` (see `crate::gpu::gpu_of`).
    #[cfg_attr(not(feature = "gpu"), allow(dead_code))]
    pub gpus: Vec<crate::gpu::GpuInfo>,
    /// Taken (closed) when the run ends, so that the evaluator finishes.
    pub eval_tx: Mutex<Option<Sender<EvalJob>>>,
}

impl RunCtx<'_> {
    /// The LR rule of segment `seg`.
    pub fn schedule(&self, seg: &Segment) -> LrSchedule {
        LrSchedule {
            base: seg.lr,
            scaling: seg.lr_scaling,
            workers: seg.workers,
            warmup: self.exp.warmup,
        }
    }

    /// The optimizer of segment `seg`, going on with the momentum buffer `velocity`.
    pub fn sgd(&self, seg: &Segment, velocity: &[f32]) -> Sgd {
        let mut sgd = Sgd::new(self.mlp.num_params(), seg.momentum, self.exp.weight_decay);
        sgd.set_velocity(velocity);
        sgd
    }

    /// How segment `index` with `workers` workers shards the data.
    pub fn sharder(&self, index: usize, workers: usize) -> Sharder {
        Sharder {
            train_len: self.data.train_len(),
            workers,
            batch: self.exp.batch,
            seed: self.exp.seed.wrapping_add(index as u64),
        }
    }

    /// Asks for the test score of `params` after `updates` updates and `samples` samples
    /// (scored on the evaluator's thread: the caller never waits for it). An endless
    /// run's evaluator holds one request at most: while it is busy, newer requests are
    /// skipped, so that a fast run on a large test set cannot queue snapshots forever.
    pub fn evaluate(&self, updates: u64, samples: u64, params: &[f32], t_ns: u64) {
        if let Some(tx) = self.eval_tx.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            if !tx.is_full() {
                let _ = tx.try_send((updates, samples, params.to_vec(), t_ns));
            }
        }
    }

    pub fn should_evaluate(&self, updates: u64) -> bool {
        updates.is_multiple_of(self.exp.eval_every)
    }

    /// Runs `f` as `phase` of `step` for `worker`: waits at the gate first, times it,
    /// stretches it in slow motion (the work phases; communication is stretched message
    /// by message where it happens), moves the worker's virtual clock on, reports it.
    pub fn phase<T>(
        &self,
        worker: usize,
        step: u64,
        phase: Phase,
        phase_ns: &mut [u64; Phase::COUNT],
        f: impl FnOnce() -> T,
    ) -> Result<T, SegEnd> {
        self.enter(worker)?;
        let start_ns = self.clock.ns();
        let out = f();
        let real = std::time::Duration::from_nanos(self.clock.ns() - start_ns);
        let typical = if phase.is_work() {
            self.gate.pace().stretch(phase.index(), real)
        } else {
            real
        };
        self.gate.advance(worker, typical.as_nanos() as u64);
        self.record(worker, step, phase, start_ns, phase_ns);
        Ok(out)
    }

    /// Waits at the gate before worker `worker`'s next phase.
    pub fn enter(&self, worker: usize) -> Result<(), SegEnd> {
        self.gate.pass(worker).map_err(|_| SegEnd::Stopped)
    }

    /// Reports that `worker` went through `phase` from `start_ns` until now, and adds it
    /// to `phase_ns`.
    pub fn record(&self, worker: usize, step: u64, phase: Phase, start_ns: u64, phase_ns: &mut [u64; Phase::COUNT]) {
        let end_ns = self.clock.ns();
        phase_ns[phase.index()] += end_ns - start_ns;
        self.sink.send(Event::Phase {
            worker,
            step,
            phase,
            start_ns,
            end_ns,
        });
    }

    /// Sleeps as long as worker `worker`'s straggler factor says, given its compute in
    /// this step (its forward phase as reported, and the real time of the backward pass
    /// so far): a factor F makes its compute F times as long. It runs inside the backward
    /// phase, which slow motion then stretches whole, so the forward phase counts at its
    /// real length here (the report's is dilated).
    pub fn straggle(&self, worker: usize, forward_ns: u64, backward: std::time::Duration) {
        let factor = self.live.straggler(worker);
        if factor > 1.0 {
            let pace = self.gate.pace();
            let compute_ns = forward_ns as f64 / pace.factor() + backward.as_nanos() as f64;
            let extra = (f64::from(factor) - 1.0) * compute_ns;
            pace.sleep_real(std::time::Duration::from_nanos(extra as u64));
        }
    }
}

/// One segment: the settings a switch can change, fixed for its duration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Segment {
    pub index: usize,
    pub mode: Mode,
    pub workers: usize,
    /// Compute threads per worker.
    pub threads: usize,
    pub allreduce: AllReduceAlgo,
    pub link: Option<Link>,
    pub lr_scaling: LrScaling,
    /// The base learning rate (before its rule and warm-up) and the momentum.
    pub lr: f32,
    pub momentum: f32,
    /// The data order a sync segment draws from: the shuffling of segment `shuffle`,
    /// begun at update `shuffle_from`. A switch that keeps sync and the workers (threads,
    /// LR, momentum, algorithm, link) goes on with the order it found, so that it changes
    /// only what it says it changes: threads switched live give the bits of a run
    /// without the switch. Other switches start an order of their own.
    pub shuffle: usize,
    pub shuffle_from: u64,
}

impl Segment {
    pub(super) fn first(exp: &Experiment) -> Segment {
        Segment {
            index: 0,
            shuffle: 0,
            shuffle_from: 0,
            mode: exp.mode,
            workers: exp.workers,
            threads: exp.threads,
            allreduce: exp.allreduce,
            link: exp.link,
            lr_scaling: exp.lr_scaling,
            lr: exp.lr,
            momentum: exp.momentum,
        }
    }
}

/// Where a segment starts and where it left things.
#[derive(Debug, Clone)]
pub(super) struct SegState {
    pub params: Vec<f32>,
    pub velocity: Vec<f32>,
    /// Updates applied to the parameters so far (the LR schedule's step).
    pub updates: u64,
    pub samples: u64,
}

/// How a segment (or one worker's part of it) ended.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum SegEnd {
    Completed,
    /// A mode or worker-count switch was requested: start the next segment.
    Switch,
    Stopped,
    Diverged {
        step: u64,
        worker: usize,
    },
    /// Released from a wait because another worker ended.
    Aborted,
    Failed(String),
}

impl SegEnd {
    /// The end of a whole segment from its workers' ends: a divergence or failure wins,
    /// then a stop, then a switch.
    pub fn combine(ends: &[SegEnd]) -> SegEnd {
        if let Some(d) = ends
            .iter()
            .filter(|e| matches!(e, SegEnd::Diverged { .. }))
            .min_by_key(|e| match e {
                SegEnd::Diverged { step, .. } => *step,
                _ => u64::MAX,
            })
        {
            return d.clone();
        }
        if let Some(f) = ends.iter().find(|e| matches!(e, SegEnd::Failed(_))) {
            return f.clone();
        }
        if ends.contains(&SegEnd::Stopped) {
            return SegEnd::Stopped;
        }
        if ends.contains(&SegEnd::Switch) {
            return SegEnd::Switch;
        }
        if ends.iter().all(|e| *e == SegEnd::Completed || *e == SegEnd::Aborted) && ends.contains(&SegEnd::Completed) {
            return SegEnd::Completed;
        }
        if !ends.is_empty() && ends.iter().all(|e| *e == SegEnd::Aborted) {
            return SegEnd::Aborted; // released from their waits by a Stop
        }
        SegEnd::Failed("a worker left its collective unexpectedly".into())
    }
}

/// Runs one worker thread per input (`ddlab-worker-R`, gathered with the others on a
/// full machine, subnormals flushed) and returns how each ended. A panic becomes a
/// failure; any end but Completed or Switch calls `release` and ends the pace's sleeps,
/// so that nobody waits for the others forever. (Completed and Switch are ends every
/// worker reaches at the same step; releasing then would abort peers still finishing
/// the very all-reduce that carried the flag.) `one_at_a_time`: how step mode goes (see
/// `Gate`).
pub(super) fn run_workers<T: Send>(
    gate: &Gate,
    one_at_a_time: bool,
    inputs: Vec<T>,
    release: &(dyn Fn() + Sync),
    body: impl Fn(usize, T) -> SegEnd + Sync,
) -> Vec<SegEnd> {
    gate.begin_segment(0..inputs.len(), one_at_a_time);
    std::thread::scope(|s| {
        let handles: Vec<_> = inputs
            .into_iter()
            .enumerate()
            .map(|(rank, input)| {
                let body = &body;
                std::thread::Builder::new()
                    .name(format!("ddlab-worker-{rank}"))
                    .spawn_scoped(s, move || {
                        crate::nn::flush_denormals();
                        crate::comm::worker_thread();
                        crate::comm::gather_with_the_group();
                        let end = catch_unwind(AssertUnwindSafe(|| body(rank, input))).unwrap_or_else(|p| {
                            let msg = p
                                .downcast_ref::<&str>()
                                .map(|s| s.to_string())
                                .or_else(|| p.downcast_ref::<String>().cloned())
                                .unwrap_or_else(|| "panic".into());
                            SegEnd::Failed(format!("worker {rank} failed: {msg}"))
                        });
                        if !matches!(end, SegEnd::Completed | SegEnd::Switch) {
                            release();
                            gate.pace().interrupt();
                        }
                        gate.leave(rank);
                        end
                    })
                    .expect("the OS can start a thread")
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(SegEnd::Failed("a worker thread died".into())))
            .collect()
    })
}

/// A loss that is NaN, infinite, or over 100 times that of guessing uniformly
/// (100 · ln C nats): no run comes back from there, it only thrashes at chance accuracy
/// (an LR of 1e6 on digits reaches 1e29 while staying finite in f32).
pub fn diverged(mean_loss: f64, classes: usize) -> bool {
    !mean_loss.is_finite() || mean_loss > 100.0 * (classes as f64).ln()
}
