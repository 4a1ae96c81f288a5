//! The synchronous data-parallel engine on threads: every step is
//! `next_batch → forward → backward → all_reduce → update`, each phase an event.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use ndarray::{Array2, ArrayView2};

use super::{CollectiveKind, Event, EventSink, Gate, Outcome, Phase, WorkerStep};
use crate::comm::{
    thread_group, AbortHandle, Clock, Collective, Comm, CommError, ThreadTransport, Transfer, Transport,
};
use crate::config::Experiment;
use crate::data::{Dataset, Sharder};
use crate::nn::{l2_norm, LrSchedule, Mlp, Sgd, Workspace};

/// Knobs for how a run reports, not what it computes.
#[derive(Debug, Clone, Default)]
pub struct EngineOptions {
    /// Emit per-message `Transfer` and per-worker `Batch` events (for the lab's views).
    pub detail: bool,
    /// Start from these parameters instead of a fresh initialisation.
    pub initial_params: Option<Vec<f32>>,
}

/// A running engine: join it, or abort its collectives (after a Stop control).
pub struct EngineHandle {
    join: Option<JoinHandle<Outcome>>,
    abort: AbortHandle,
    final_params: Arc<Mutex<Option<Vec<f32>>>>,
}

impl EngineHandle {
    /// Releases workers blocked in a collective; use together with `Control::Stop`.
    pub fn abort(&self) {
        self.abort.abort();
    }
    /// Waits for the run to end.
    pub fn join(mut self) -> Outcome {
        self.join_inner()
    }
    /// Rank 0's parameters when the run ended (completed, stopped or diverged); `None`
    /// while it runs.
    pub fn final_params(&self) -> Option<Vec<f32>> {
        self.final_params.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    /// Where the final parameters will be, readable after `join`.
    pub fn final_params_handle(&self) -> Arc<Mutex<Option<Vec<f32>>>> {
        Arc::clone(&self.final_params)
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
            self.abort.abort();
            let _ = self.join_inner();
        }
    }
}

/// Everything the workers of one run share.
struct Ctx<'a> {
    exp: &'a Experiment,
    data: &'a Dataset,
    mlp: Mlp,
    sharder: Sharder,
    schedule: LrSchedule,
    total_steps: u64,
    sink: EventSink,
    gate: &'a Gate,
    clock: Clock,
    options: &'a EngineOptions,
    final_params: &'a Mutex<Option<Vec<f32>>>,
}

/// How one worker's loop ended.
#[derive(Debug, Clone, PartialEq)]
enum WorkerEnd {
    Done,
    Stopped,
    Diverged {
        step: u64,
    },
    /// Released from a collective because another worker stopped.
    Aborted,
    Panicked(String),
}

/// Starts a sync run of `exp` on `data` (already validated) on threads.
pub fn spawn(
    exp: &Experiment,
    data: Arc<Dataset>,
    sink: EventSink,
    gate: Arc<Gate>,
    options: EngineOptions,
) -> EngineHandle {
    let exp = exp.clone();
    let clock = Clock::start();
    let group = thread_group(exp.workers, clock, exp.link, options.detail);
    let abort = group[0].abort_handle();
    let final_params = Arc::new(Mutex::new(None));
    let out = Arc::clone(&final_params);
    let join = std::thread::Builder::new()
        .name("ddlab-engine".into())
        .spawn(move || run(&exp, &data, sink, &gate, clock, group, &options, &out))
        .expect("the OS can start a thread");
    EngineHandle {
        join: Some(join),
        abort,
        final_params,
    }
}

#[allow(clippy::too_many_arguments)]
fn run(
    exp: &Experiment,
    data: &Dataset,
    sink: EventSink,
    gate: &Gate,
    clock: Clock,
    group: Vec<ThreadTransport>,
    options: &EngineOptions,
    final_params: &Mutex<Option<Vec<f32>>>,
) -> Outcome {
    let mlp = Mlp::new(data.inputs(), &exp.hidden, data.classes);
    let sharder = Sharder {
        train_len: data.train_len(),
        workers: exp.workers,
        batch: exp.batch,
        seed: exp.seed,
    };
    let total_steps = exp.total_steps(sharder.steps_per_epoch());
    let schedule = LrSchedule {
        base: exp.lr,
        scaling: exp.lr_scaling,
        workers: exp.workers,
        warmup: exp.warmup,
    };
    sink.send(Event::Started {
        workers: exp.workers,
        params: mlp.num_params(),
        steps_per_epoch: sharder.steps_per_epoch(),
        total_steps,
    });
    let ctx = Ctx {
        exp,
        data,
        mlp,
        sharder,
        schedule,
        total_steps,
        sink: sink.clone(),
        gate,
        clock,
        options,
        final_params,
    };
    let (eval_tx, eval_rx) = crossbeam_channel::unbounded::<(u64, Vec<f32>, u64)>();

    let ends: Vec<WorkerEnd> = std::thread::scope(|s| {
        let ctx = &ctx;
        let evaluator = s.spawn(move || evaluate_loop(ctx, eval_rx));
        let workers: Vec<_> = group
            .into_iter()
            .map(|transport| {
                let eval_tx = eval_tx.clone();
                let abort = transport.abort_handle();
                std::thread::Builder::new()
                    .name(format!("ddlab-worker-{}", transport.rank()))
                    .spawn_scoped(s, move || {
                        crate::nn::flush_denormals();
                        crate::comm::pin_to_core(transport.rank());
                        let comm = Comm::new(transport, ctx.exp.allreduce);
                        let end = catch_unwind(AssertUnwindSafe(|| worker(ctx, comm, &eval_tx)))
                            .unwrap_or_else(|p| WorkerEnd::Panicked(panic_message(&p)));
                        if end != WorkerEnd::Done {
                            abort.abort(); // nobody may wait for us forever
                        }
                        end
                    })
                    .expect("the OS can start a thread")
            })
            .collect();
        drop(eval_tx);
        let ends = workers
            .into_iter()
            .map(|h| h.join().unwrap_or(WorkerEnd::Panicked("unknown".into())))
            .collect();
        let _ = evaluator.join();
        ends
    });

    let outcome = if let Some(step) = ends
        .iter()
        .filter_map(|e| {
            if let WorkerEnd::Diverged { step } = e {
                Some(*step)
            } else {
                None
            }
        })
        .min()
    {
        let worker = ends
            .iter()
            .position(|e| *e == WorkerEnd::Diverged { step })
            .unwrap_or(0);
        Outcome::Diverged { step, worker }
    } else if let Some((w, msg)) = ends.iter().enumerate().find_map(|(w, e)| {
        if let WorkerEnd::Panicked(m) = e {
            Some((w, m))
        } else {
            None
        }
    }) {
        Outcome::Failed {
            message: format!("worker {w} failed: {msg}"),
        }
    } else if ends.contains(&WorkerEnd::Stopped) || gate.is_stopped() {
        Outcome::Stopped
    } else if ends.iter().all(|e| *e == WorkerEnd::Done) {
        Outcome::Completed
    } else {
        Outcome::Failed {
            message: "a worker left its collective unexpectedly".into(),
        }
    };
    sink.send(Event::Finished {
        outcome: outcome.clone(),
        t_ns: clock.ns(),
    });
    outcome
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".into())
}

/// Runs `f` as `phase` of `step`: waits at the gate first, times it, reports it.
fn phase<T>(
    ctx: &Ctx,
    rank: usize,
    step: u64,
    phase: Phase,
    phase_ns: &mut [u64; Phase::COUNT],
    f: impl FnOnce() -> T,
) -> Result<T, WorkerEnd> {
    ctx.gate.pass(rank).map_err(|_| WorkerEnd::Stopped)?;
    let start_ns = ctx.clock.ns();
    let out = f();
    let end_ns = ctx.clock.ns();
    phase_ns[phase.index()] = end_ns - start_ns;
    ctx.sink.send(Event::Phase {
        worker: rank,
        step,
        phase,
        start_ns,
        end_ns,
    });
    Ok(out)
}

fn worker(
    ctx: &Ctx,
    mut comm: Comm<ThreadTransport>,
    eval_tx: &crossbeam_channel::Sender<(u64, Vec<f32>, u64)>,
) -> WorkerEnd {
    let mut params = vec![0.0f32; ctx.mlp.num_params()];
    let end = match worker_loop(ctx, &mut comm, &mut params, eval_tx) {
        Ok(()) => WorkerEnd::Done,
        Err(end) => end,
    };
    if comm.rank() == 0 {
        *ctx.final_params.lock().unwrap_or_else(|e| e.into_inner()) = Some(params);
    }
    end
}

fn comm_err(_: CommError) -> WorkerEnd {
    WorkerEnd::Aborted
}

fn worker_loop(
    ctx: &Ctx,
    comm: &mut Comm<ThreadTransport>,
    params: &mut [f32],
    eval_tx: &crossbeam_channel::Sender<(u64, Vec<f32>, u64)>,
) -> Result<(), WorkerEnd> {
    let rank = comm.rank();
    let (mlp, data, exp) = (&ctx.mlp, ctx.data, ctx.exp);

    // Identical replicas: rank 0 initialises, everyone receives its parameters.
    if rank == 0 {
        match &ctx.options.initial_params {
            Some(p) => params.copy_from_slice(p),
            None => mlp.init(params, exp.seed),
        }
    }
    comm.broadcast(params, 0).map_err(comm_err)?;
    let mut transfers: Vec<Transfer> = Vec::new();
    report_transfers(ctx, comm, &mut transfers, 0, CollectiveKind::Broadcast);
    let mut grads = vec![0.0f32; mlp.num_params()];
    let mut ws = Workspace::new(mlp, exp.batch);
    let mut sgd = Sgd::new(mlp.num_params(), exp.momentum, exp.weight_decay);
    let mut x = Array2::<f32>::zeros((exp.batch, mlp.inputs()));
    let mut labels = vec![0u8; exp.batch];
    let mut perm: (u64, Vec<u32>) = (u64::MAX, Vec::new());
    let steps_per_epoch = ctx.sharder.steps_per_epoch();

    for step in 0..ctx.total_steps {
        let epoch = step / steps_per_epoch;
        if perm.0 != epoch {
            perm = (epoch, ctx.sharder.permutation(epoch));
        }
        // next_batch: gather this worker's shard of the global batch.
        let indices = ctx.sharder.batch(&perm.1, step % steps_per_epoch, rank);
        for (row, (&i, label)) in indices.iter().zip(labels.iter_mut()).enumerate() {
            x.row_mut(row).assign(&data.train_x.row(i as usize));
            *label = data.train_y[i as usize];
        }
        if ctx.options.detail {
            ctx.sink.send(Event::Batch {
                worker: rank,
                step,
                indices: indices.to_vec(),
            });
        }
        let xv: ArrayView2<f32> = x.view();
        let mut phase_ns = [0u64; Phase::COUNT];

        let score = phase(ctx, rank, step, Phase::Forward, &mut phase_ns, || {
            mlp.forward(params, &xv, &mut ws);
            mlp.loss(&labels, &mut ws)
        })?;
        if diverged(score.mean_loss(), data.classes) {
            return Err(WorkerEnd::Diverged { step });
        }
        phase(ctx, rank, step, Phase::Backward, &mut phase_ns, || {
            mlp.backward(params, &xv, &mut ws, &mut grads)
        })?;
        let grad_norm = l2_norm(&grads);
        let bytes_before = comm.bytes_sent();
        phase(ctx, rank, step, Phase::AllReduce, &mut phase_ns, || {
            comm.all_reduce_mean(&mut grads)
        })?
        .map_err(comm_err)?;
        let bytes_sent = comm.bytes_sent() - bytes_before;
        report_transfers(ctx, comm, &mut transfers, step, CollectiveKind::AllReduce);
        let grad_norm_reduced = l2_norm(&grads);
        let lr = ctx.schedule.at(step);
        phase(ctx, rank, step, Phase::Update, &mut phase_ns, || {
            sgd.step(params, &grads, lr)
        })?;

        let end_ns = ctx.clock.ns();
        ctx.sink.send(Event::WorkerStep(WorkerStep {
            worker: rank,
            step,
            epoch,
            loss: score.mean_loss(),
            correct: score.correct,
            samples: score.samples,
            grad_norm,
            grad_norm_reduced,
            lr,
            phase_ns,
            bytes_sent,
            end_ns,
        }));
        let done = step + 1;
        if rank == 0 && (done % exp.eval_every == 0 || done == ctx.total_steps) {
            // Evaluation runs on its own thread so that it never stalls the step.
            let _ = eval_tx.send((done, params.to_vec(), end_ns));
        }
    }
    Ok(())
}

/// Sends the messages the last collective moved as events (in detail mode).
fn report_transfers(
    ctx: &Ctx,
    comm: &mut Comm<ThreadTransport>,
    buf: &mut Vec<Transfer>,
    step: u64,
    collective: CollectiveKind,
) {
    if ctx.options.detail {
        comm.drain_transfers(buf);
        for transfer in buf.drain(..) {
            ctx.sink.send(Event::Transfer {
                step,
                collective,
                transfer,
            });
        }
    }
}

/// A loss that is NaN, infinite, or over 100 times that of guessing uniformly
/// (100 · ln C nats): no run comes back from there, it only thrashes at chance accuracy
/// (an LR of 1e6 on digits reaches 1e29 while staying finite in f32).
pub fn diverged(mean_loss: f64, classes: usize) -> bool {
    !mean_loss.is_finite() || mean_loss > 100.0 * (classes as f64).ln()
}

/// Scores parameter snapshots on the test set as they come.
fn evaluate_loop(ctx: &Ctx, rx: crossbeam_channel::Receiver<(u64, Vec<f32>, u64)>) {
    crate::nn::flush_denormals();
    let mut ws = Workspace::new(&ctx.mlp, 512);
    let steps_per_epoch = ctx.sharder.steps_per_epoch();
    for (step, params, t_ns) in rx {
        let score = ctx
            .mlp
            .evaluate(&params, &ctx.data.test_x.view(), &ctx.data.test_y, &mut ws);
        ctx.sink.send(Event::Eval {
            step,
            epoch: step / steps_per_epoch,
            test_loss: score.mean_loss(),
            test_accuracy: score.accuracy(),
            t_ns,
        });
    }
}
