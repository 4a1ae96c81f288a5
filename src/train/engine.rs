//! The engine driver: a run is a sequence of segments, each with one mode and worker
//! count. A switch (mode or workers) ends the segment at a step boundary and starts the
//! next from the same parameters and optimizer state, so the curves continue.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::ctx::{EngineOptions, EvalJob, Live, RunCtx, SegEnd, SegState, Segment};
use super::{Control, Event, EventSink, Gate, Outcome};
use crate::comm::Clock;
use crate::config::{Experiment, Length, Mode};
use crate::data::Dataset;
use crate::nn::{Mlp, Threads, Workspace};

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
