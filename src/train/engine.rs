//! The engine driver: a run is a sequence of segments, each with one mode and worker
//! count. A switch (mode or workers) ends the segment at a step boundary and starts the
//! next from the same parameters and optimizer state, so the curves continue.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::Sender;

use super::{Control, Event, EventSink, Gate, Outcome, Phase};
use crate::comm::{AllReduceAlgo, Clock, Link};
use crate::config::{Experiment, Length, Mode, MAX_WORKERS};
use crate::data::{Dataset, Sharder};
use crate::nn::{LrScaling, LrSchedule, Mlp, Sgd, Threads, Workspace};

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
    aborted: AtomicBool,
    /// Releases whoever the running segment has blocked (collectives, the server).
    aborter: Mutex<Option<Box<dyn Fn() + Send + Sync>>>,
    switch_requested: AtomicBool,
    /// Settings for the next segment (its index is set when it starts).
    next: Mutex<Segment>,
    /// Compute slow-down per worker, as f32 bits (1.0 = normal).
    stragglers: Vec<AtomicU32>,
    /// The running segment's threads per worker, which the evaluator uses too.
    threads: AtomicUsize,
}

impl Live {
    fn new(exp: &Experiment) -> Live {
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

    fn abort(&self) {
        self.aborted.store(true, Ordering::SeqCst);
        if let Some(f) = self.aborter.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            f();
        }
    }
}

/// A running engine: send it controls, join it.
pub struct EngineHandle {
    join: Option<JoinHandle<Outcome>>,
    live: Arc<Live>,
    final_params: Arc<Mutex<Option<Vec<f32>>>>,
}

impl EngineHandle {
    /// Applies the controls that change the computation (mode, workers, stragglers) and
    /// releases blocked workers on Stop. Pausing is the gate's business. The caller has
    /// validated the values.
    pub fn control(&self, control: Control) {
        match control {
            Control::Stop => self.live.abort(),
            Control::SetMode(mode) => self.switch(|s| s.mode = mode),
            Control::SetWorkers(n) => self.switch(|s| s.workers = n),
            Control::SetAllReduce(a) => self.switch(|s| s.allreduce = a),
            Control::SetLink(link) => self.switch(|s| s.link = link),
            Control::SetLrScaling(r) => self.switch(|s| s.lr_scaling = r),
            Control::SetLr(lr) => self.switch(|s| s.lr = lr),
            Control::SetMomentum(m) => self.switch(|s| s.momentum = m),
            Control::SetThreads(t) => self.switch(|s| s.threads = t),
            Control::Straggler { worker, factor } => {
                if let Some(s) = self.live.stragglers.get(worker) {
                    s.store(factor.max(1.0).to_bits(), Ordering::Relaxed);
                }
            }
            Control::Pause | Control::Resume | Control::StepPhase | Control::SetPace { .. } => {}
        }
    }

    /// Changes the next segment's settings and asks for a switch at the next step.
    fn switch(&self, change: impl FnOnce(&mut Segment)) {
        change(&mut self.live.next.lock().unwrap_or_else(|e| e.into_inner()));
        self.live.switch_requested.store(true, Ordering::SeqCst);
    }

    /// Waits for the run to end (again: returns `Stopped` once joined).
    pub fn join(&mut self) -> Outcome {
        self.join_inner()
    }

    /// The replicas' parameters when the run ended; `None` while it runs.
    pub fn final_params(&self) -> Option<Vec<f32>> {
        self.final_params.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn join_inner(&mut self) -> Outcome {
        match self.join.take().map(JoinHandle::join) {
            Some(Ok(outcome)) => outcome,
            Some(Err(_)) => Outcome::Failed {
                message: "the engine thread panicked".into(),
            },
            None => Outcome::Stopped,
        }
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        if self.join.is_some() {
            self.live.abort();
            let _ = self.join_inner();
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
    eval_tx: Mutex<Option<Sender<EvalJob>>>,
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
    fn first(exp: &Experiment) -> Segment {
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

/// Runs one worker thread per input (`ddlab-worker-R`, pinned to a core, subnormals
/// flushed) and returns how each ended. A panic becomes a failure; any end but
/// Completed or Switch calls `release` and ends the pace's sleeps, so that nobody waits
/// for the others forever. (Completed and Switch are ends every worker reaches at the
/// same step; releasing then would abort peers still finishing the very all-reduce that
/// carried the flag.) `one_at_a_time`: how step mode goes (see `Gate`).
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

/// Samples the whole run processes: `--steps` counts steps of the first segment's global
/// batch, `--epochs` whole global batches per pass over the training set.
pub fn total_samples(exp: &Experiment, train_len: usize) -> u64 {
    let global = (exp.workers * exp.batch) as u64;
    match exp.length {
        Length::Steps(s) => s * global,
        Length::Epochs(e) => e * (train_len as u64 / global.max(1)) * global,
    }
}

/// Starts a run of `exp` on `data` (already validated) on threads.
pub fn spawn(
    exp: &Experiment,
    data: Arc<Dataset>,
    sink: EventSink,
    gate: Arc<Gate>,
    options: EngineOptions,
) -> EngineHandle {
    spawn_with(exp, data, sink, gate, options, "ddlab-engine", |ctx, seg, state| {
        if seg.mode.uses_server() {
            super::ps::run_segment(ctx, seg, state)
        } else {
            super::sync::run_segment(ctx, seg, state)
        }
    })
}

/// Starts this process's rank of a run in which every worker is a process (MPI): sync
/// training over `comm`, one worker here. Rank 0's sink receives every rank's step
/// reports (gathered each step); the others' sinks only their own.
pub fn spawn_rank<T: crate::comm::Transport + 'static>(
    exp: &Experiment,
    data: Arc<Dataset>,
    sink: EventSink,
    gate: Arc<Gate>,
    options: EngineOptions,
    mut comm: crate::comm::Comm<T>,
) -> EngineHandle {
    spawn_with(exp, data, sink, gate, options, "ddlab-rank", move |ctx, seg, state| {
        let end = if seg.mode.uses_server() {
            super::ps::run_rank(ctx, seg, state, &mut comm)
        } else {
            super::sync::run_rank(ctx, seg, state, &mut comm)
        };
        // A process's world is fixed: a switch ends the job (its controller relaunches).
        match end {
            SegEnd::Switch => SegEnd::Stopped,
            end => end,
        }
    })
}

/// Runs `run` with `segments` on a thread of its own.
fn spawn_with(
    exp: &Experiment,
    data: Arc<Dataset>,
    sink: EventSink,
    gate: Arc<Gate>,
    options: EngineOptions,
    name: &str,
    mut segments: impl FnMut(&RunCtx, Segment, &mut SegState) -> SegEnd + Send + 'static,
) -> EngineHandle {
    let exp = exp.clone();
    let live = Arc::new(Live::new(&exp));
    let final_params = Arc::new(Mutex::new(None));
    let (live2, out) = (Arc::clone(&live), Arc::clone(&final_params));
    let join = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || run(&exp, &data, sink, (&gate, &live2), &options, &out, &mut segments))
        .expect("the OS can start a thread");
    EngineHandle {
        join: Some(join),
        live,
        final_params,
    }
}

/// Runs one segment of a run.
type SegmentRunner<'r> = dyn FnMut(&RunCtx, Segment, &mut SegState) -> SegEnd + 'r;

fn run(
    exp: &Experiment,
    data: &Dataset,
    sink: EventSink,
    (gate, live): (&Arc<Gate>, &Live),
    options: &EngineOptions,
    final_params: &Mutex<Option<Vec<f32>>>,
    run_segment: &mut SegmentRunner,
) -> Outcome {
    let clock = Clock::start();
    let mlp = Mlp::new(data.inputs(), &exp.hidden, data.classes);
    let total = total_samples(exp, data.train_len());
    // (an endless run still reports its length, as the point it passes)
    let budget = if options.endless { u64::MAX } else { total };
    let gpus = match crate::gpu::preflight(exp.device, &exp.gpus, &mlp, exp.batch) {
        Ok(gpus) => gpus,
        Err(message) => {
            let outcome = Outcome::Failed { message };
            sink.send(Event::Finished {
                outcome: outcome.clone(),
                t_ns: clock.ns(),
            });
            return outcome;
        }
    };
    sink.send(Event::Started {
        devices: crate::gpu::worker_devices(exp.device, &exp.gpus, exp.workers, &gpus),
        params: mlp.num_params(),
        total_samples: total,
        train_len: data.train_len(),
        nodes: exp.nodes,
        intra_link: exp.intra_link,
        wire_bytes: exp.grad_dtype.bytes(),
        compress: exp.compress,
        compressed_buffers: super::sync::compressed_buffers(exp, &mlp),
    });
    let mut params = vec![0.0f32; mlp.num_params()];
    match &options.initial_params {
        Some(p) => params.copy_from_slice(p),
        None => mlp.init(&mut params, exp.seed),
    }
    let (updates, samples) = options.resume.unwrap_or((0, 0));
    let mut state = SegState {
        velocity: vec![0.0; params.len()],
        params,
        updates,
        samples,
    };
    let (eval_tx, eval_rx) = if options.endless {
        crossbeam_channel::bounded::<EvalJob>(1)
    } else {
        crossbeam_channel::unbounded::<EvalJob>()
    };
    let ctx = RunCtx {
        exp,
        data,
        mlp,
        sink: sink.clone(),
        gate,
        clock,
        options,
        live,
        total_samples: budget,
        gpus,
        eval_tx: Mutex::new(Some(eval_tx)),
    };

    let outcome = std::thread::scope(|s| {
        let ctx = &ctx;
        let evaluator = s.spawn(move || evaluate_loop(ctx, eval_rx));
        let mut segment = Segment::first(exp);
        let outcome = loop {
            sink.send(Event::Segment {
                index: segment.index,
                mode: segment.mode,
                workers: segment.workers,
                threads: segment.threads,
                allreduce: segment.allreduce,
                link: segment.link,
                lr_scaling: segment.lr_scaling,
                lr: segment.lr,
                momentum: segment.momentum,
                update: state.updates,
                samples: state.samples,
                params_hash: super::event::params_hash(&state.params),
                t_ns: clock.ns(),
            });
            live.threads.store(segment.threads, Ordering::Relaxed);
            let end = run_segment(ctx, segment, &mut state);
            match end {
                SegEnd::Switch if !live.aborted.load(Ordering::SeqCst) => {
                    live.switch_requested.store(false, Ordering::SeqCst);
                    let next = *live.next.lock().unwrap_or_else(|e| e.into_inner());
                    let same_order =
                        next.mode == Mode::Sync && segment.mode == Mode::Sync && next.workers == segment.workers;
                    segment = Segment {
                        index: segment.index + 1,
                        shuffle: if same_order { segment.shuffle } else { segment.index + 1 },
                        shuffle_from: if same_order {
                            segment.shuffle_from
                        } else {
                            state.updates
                        },
                        ..next
                    };
                }
                SegEnd::Switch | SegEnd::Stopped => break Outcome::Stopped,
                SegEnd::Aborted if live.aborted.load(Ordering::SeqCst) => break Outcome::Stopped,
                SegEnd::Aborted => {
                    break Outcome::Failed {
                        message: "the workers were released from their collectives without a stop".into(),
                    }
                }
                SegEnd::Completed => break Outcome::Completed,
                SegEnd::Diverged { step, worker } => break Outcome::Diverged { step, worker },
                SegEnd::Failed(message) => break Outcome::Failed { message },
            }
        };
        // The final score, unless the last periodic evaluation already was of these
        // parameters.
        if outcome == Outcome::Completed && !ctx.should_evaluate(state.updates) {
            ctx.evaluate(state.updates, state.samples, &state.params, clock.ns());
        }
        ctx.eval_tx.lock().unwrap_or_else(|e| e.into_inner()).take(); // the evaluator may end
        let _ = evaluator.join();
        outcome
    });
    *final_params.lock().unwrap_or_else(|e| e.into_inner()) = Some(state.params);
    sink.send(Event::Finished {
        outcome: outcome.clone(),
        t_ns: clock.ns(),
    });
    outcome
}

/// Scores parameter snapshots on the test set as they come, on a pool of as many threads
/// as each worker has (its own pool, unpinned: it runs beside the workers).
fn evaluate_loop(ctx: &RunCtx, rx: crossbeam_channel::Receiver<EvalJob>) {
    crate::nn::flush_denormals();
    let mut ws = Workspace::new(&ctx.mlp, 512);
    let epoch_samples = ctx.data.train_len().max(1) as u64;
    for (updates, samples, params, t_ns) in rx {
        let threads = ctx.live.threads.load(Ordering::Relaxed);
        if ws.threads().count() != threads {
            // (no pool: the scores come on one thread, later but the same)
            let pool = Threads::new(threads, |_| {}).unwrap_or_default();
            ws = Workspace::with_threads(&ctx.mlp, 512, pool);
        }
        let score = ctx
            .mlp
            .evaluate(&params, &ctx.data.test_x.view(), &ctx.data.test_y, &mut ws);
        ctx.sink.send(Event::Eval {
            step: updates,
            samples,
            epoch: samples / epoch_samples,
            test_loss: score.mean_loss(),
            test_accuracy: score.accuracy(),
            t_ns,
        });
    }
}
