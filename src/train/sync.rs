//! The synchronous data-parallel engine: every step is
//! `next_batch → forward → backward → all_reduce → update`, each phase an event. One
//! worker loop serves both worlds: `run_segment` runs a thread per worker in this
//! process, `run_rank` this process's worker as one MPI rank (the step's flags then
//! carry what one rank decides alone, and rank 0 gathers everyone's step reports).
//! With it: local SGD (`local:H`) and compressed gradients (top-k, PowerSGD).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::compute::Compute;
use super::ctx::{diverged, run_workers, RunCtx, SegEnd, SegState, Segment, DETAIL_EVERY_NS};
use super::overlap::Overlap;
use super::{CollectiveKind, Event, EventSink, Gate, Phase, WorkerStep};
use crate::comm::{
    thread_group_on, Collective, Comm, CommError, Compress, Observer, ThreadTransport, Topology, Transfer, Transport,
    Wire,
};
use crate::config::Mode;
use crate::data::Batches;
use crate::nn::{l2_norm, Sgd};

/// Values all-reduced with the gradient, past its end, so that every replica agrees on
/// them after the same step (the all-reduce takes their mean: a count is N × it).
mod flag {
    /// A switch (of mode, workers, …) after this step.
    pub const SWITCH: usize = 0;
    /// Detail (batches, messages) in the next step, rank 0's choice.
    pub const DETAIL: usize = 1;
    /// The pace: log₂ of the dilation factor, from rank 0 (MPI ranks learn it so).
    pub const PACE: usize = 2;
    /// Workers whose loss diverged in this step, and (when one did) its rank + 1.
    pub const DIVERGED: usize = 3;
    pub const DIVERGED_WHO: usize = 4;
    /// Workers whose compute failed in this step.
    pub const FAILED: usize = 5;
}
pub const STEP_FLAGS: usize = 6;

/// PowerSGD's state for a worker of segment `index`: every weight matrix of the network,
/// and a first Q drawn from the run's seed, the same on every worker.
fn low_rank(ctx: &RunCtx, index: usize, rank: u32) -> crate::comm::LowRank {
    crate::comm::LowRank::new(
        ctx.mlp.num_params(),
        &matrices_of(&ctx.mlp),
        rank as usize,
        ctx.exp.error_feedback,
        ctx.exp.seed.wrapping_add(index as u64),
    )
}

/// The values each collective of a sync step carries per worker, with `--compress`
/// (for the α-β model): top-k's all-gathered block; PowerSGD's two all-reduces. Empty
/// without compression (the gradient and its flags).
pub fn compressed_buffers(exp: &crate::config::Experiment, mlp: &crate::nn::Mlp) -> Vec<usize> {
    match exp.compress {
        Compress::None => Vec::new(),
        Compress::TopK(_) => vec![STEP_FLAGS + 2 * exp.compress.values_sent(mlp.num_params())],
        Compress::PowerSgd(rank) => {
            let low = crate::comm::LowRank::new(mlp.num_params(), &matrices_of(mlp), rank as usize, false, 0);
            vec![low.first_len() + STEP_FLAGS, low.second_len()]
        }
    }
}

/// The network's weight matrices (W: fan_in × fan_out, row-major) in the flat buffer.
fn matrices_of(mlp: &crate::nn::Mlp) -> Vec<crate::comm::Matrix> {
    mlp.layers()
        .iter()
        .map(|l| crate::comm::Matrix {
            offset: l.offset,
            rows: l.fan_in,
            cols: l.fan_out,
        })
        .collect()
}

/// Runs one sync segment from `state` until the sample budget is spent, a switch is
/// requested, or the run stops; leaves the replicas' parameters and optimizer state in
/// `state`.
pub(super) fn run_segment(ctx: &RunCtx, seg: Segment, state: &mut SegState) -> SegEnd {
    let n = seg.workers;
    let global_batch = (n * ctx.exp.batch) as u64;
    let steps = ctx.total_samples.saturating_sub(state.samples) / global_batch;
    // Without an intra-node link, workers of one node talk at the inter-node speed.
    let intra = ctx.exp.intra_link.or(seg.link);
    let nodes = ctx.exp.nodes.min(n);
    let group = thread_group_on(
        Topology::nodes(n, nodes, seg.link, intra),
        ctx.clock,
        ctx.options.detail,
    );
    let abort = group[0].abort_handle();
    ctx.live.set_aborter(Box::new({
        let abort = abort.clone();
        move || abort.abort()
    }));
    let start: &SegState = state;
    let out: Mutex<Option<Rank0End>> = Mutex::new(None);
    let release = abort.clone();
    let ends = run_workers(
        ctx.gate,
        false,
        group,
        &move || release.abort(),
        |rank, mut transport| {
            transport.set_pace(Arc::clone(ctx.gate.pace()));
            let mut comm = Comm::new(transport, seg.allreduce);
            let mut worker = Worker::new(ctx, seg, start, rank);
            let end = worker.run(&mut comm, steps).err().unwrap_or(SegEnd::Completed);
            if rank == 0 {
                *out.lock().unwrap_or_else(|e| e.into_inner()) = Some(Rank0End {
                    velocity: worker.sgd.velocity().to_vec(),
                    steps: worker.steps_done,
                    params: worker.params,
                });
            }
            end
        },
    );
    if let Some(end) = out.into_inner().unwrap_or_else(|e| e.into_inner()) {
        state.params = end.params;
        state.velocity = end.velocity;
        state.updates += end.steps;
        state.samples += end.steps * global_batch;
    }
    SegEnd::combine(&ends)
}

/// How a worker's gradient is all-reduced: in one piece after backward, or bucket by
/// bucket during it on a communication thread (`--overlap`).
enum Exchange<'o, T: Transport> {
    Direct(&'o mut Comm<T>),
    Overlap(&'o mut Overlap),
}

/// What rank 0 (whose replica equals everyone's) leaves behind.
struct Rank0End {
    params: Vec<f32>,
    velocity: Vec<f32>,
    steps: u64,
}

/// One worker's replica and scratch space.
struct Worker<'a> {
    ctx: &'a RunCtx<'a>,
    seg: Segment,
    rank: usize,
    first_update: u64,
    first_samples: u64,
    params: Vec<f32>,
    /// The gradient, then the step's flags (`STEP_FLAGS`).
    grads: Vec<f32>,
    sgd: Sgd,
    steps_done: u64,
    /// The step now running and its all-reduce's pieces, shared with its `RoundWatch`.
    now: Arc<InFlight>,
    /// local:H: the outer optimizer over the averaged change.
    outer: Outer,
    /// --compress: what this worker did not send yet (error feedback), and the buffers
    /// of its picks, its message and everyone's.
    residual: Vec<f32>,
    picked: (Vec<u32>, Vec<f32>),
    message: Vec<f32>,
    gathered: Vec<f32>,
    /// --compress powersgd:R: the factors' state (its own residual inside).
    low_rank: Option<crate::comm::LowRank>,
}

/// DiLoCo's outer step (Douillard et al. 2023): the change the workers' average made
/// since the last averaging, `anchor − mean`, is an "outer gradient" for SGD with
/// momentum (optionally Nesterov) on the anchor. With LR 1 and no momentum it is plain
/// averaging, which is then done by copying the mean, so that it stays exact.
struct Outer {
    lr: f32,
    momentum: f32,
    nesterov: bool,
    /// The replicas' parameters after the last averaging (empty for plain averaging).
    anchor: Vec<f32>,
    velocity: Vec<f32>,
}

impl Outer {
    fn new(exp: &crate::config::Experiment) -> Outer {
        Outer {
            lr: exp.outer_lr,
            momentum: exp.outer_momentum,
            nesterov: exp.nesterov,
            anchor: Vec::new(),
            velocity: Vec::new(),
        }
    }

    fn plain(&self) -> bool {
        self.lr == 1.0 && self.momentum == 0.0
    }

    /// The replicas agree on `params` (a segment starts, or an averaging ended).
    fn anchor_at(&mut self, params: &[f32]) {
        if !self.plain() {
            self.anchor.clear();
            self.anchor.extend_from_slice(params);
            self.velocity.resize(params.len(), 0.0);
        }
    }

    /// Sets `params` from the workers' `mean`; every replica computes the same bits.
    fn apply(&mut self, params: &mut [f32], mean: &[f32]) {
        if self.plain() {
            params.copy_from_slice(mean);
            return;
        }
        let (lr, mu) = (self.lr, self.momentum);
        for (((a, v), p), &m) in self.anchor.iter_mut().zip(&mut self.velocity).zip(params).zip(mean) {
            let delta = *a - m; // the outer gradient: where the average moved, reversed
            *v = mu * *v + delta;
            let step = if self.nesterov { delta + mu * *v } else { *v };
            *a -= lr * step;
            *p = *a;
        }
    }
}

/// Where a worker's all-reduce is: its step, and (in step mode, where it is cut into
/// rounds) when its current piece began and how long the pieces before it lasted, so
/// that the time a person takes between presses is no part of it.
#[derive(Default)]
struct InFlight {
    step: AtomicU64,
    /// The collective is top-k's all-gather (not an all-reduce).
    gathering: std::sync::atomic::AtomicBool,
    piece_start_ns: AtomicU64,
    pieces_ns: AtomicU64,
}

/// Shows a worker's all-reduce as it happens: each message as soon as it has arrived,
/// and in step mode each round held at the gate (one round per press), the rounds so
/// far reported as a piece of the phase.
struct RoundWatch {
    gate: Arc<Gate>,
    sink: EventSink,
    clock: crate::comm::Clock,
    rank: usize,
    now: Arc<InFlight>,
}

impl Observer for RoundWatch {
    fn transferred(&mut self, transfer: Transfer) {
        self.sink.send(Event::Transfer {
            step: self.now.step.load(Ordering::Relaxed),
            collective: if self.now.gathering.load(Ordering::Relaxed) {
                CollectiveKind::AllGather
            } else {
                CollectiveKind::AllReduce
            },
            transfer,
        });
    }
    fn before_round(&mut self, _round: u32) -> crate::comm::Result<()> {
        if self.gate.is_running() {
            return Ok(());
        }
        let (start_ns, end_ns) = (self.now.piece_start_ns.load(Ordering::Relaxed), self.clock.ns());
        self.now.pieces_ns.fetch_add(end_ns - start_ns, Ordering::Relaxed);
        self.sink.send(Event::Phase {
            worker: self.rank,
            step: self.now.step.load(Ordering::Relaxed),
            phase: Phase::AllReduce,
            start_ns,
            end_ns,
        });
        self.gate.pass(self.rank).map_err(|_| CommError::Aborted)?;
        self.now.piece_start_ns.store(self.clock.ns(), Ordering::Relaxed);
        Ok(())
    }
}

impl<'a> Worker<'a> {
    fn new(ctx: &'a RunCtx<'a>, seg: Segment, start: &SegState, rank: usize) -> Self {
        let p = ctx.mlp.num_params();
        let sgd = ctx.sgd(&seg, &start.velocity);
        Worker {
            ctx,
            seg,
            rank,
            first_update: start.updates,
            first_samples: start.samples,
            // Rank 0 holds the parameters; the others receive them by broadcast below.
            params: if rank == 0 { start.params.clone() } else { vec![0.0; p] },
            grads: vec![0.0; p + STEP_FLAGS],
            sgd,
            steps_done: 0,
            now: Arc::new(InFlight::default()),
            outer: Outer::new(ctx.exp),
            residual: if ctx.exp.error_feedback && matches!(ctx.exp.compress, Compress::TopK(_)) {
                vec![0.0; p]
            } else {
                Vec::new()
            },
            picked: (Vec::new(), Vec::new()),
            message: Vec::new(),
            gathered: Vec::new(),
            low_rank: match ctx.exp.compress {
                Compress::PowerSgd(rank) => Some(low_rank(ctx, seg.index, rank)),
                _ => None,
            },
        }
    }

    fn run(&mut self, comm: &mut Comm<ThreadTransport>, steps: u64) -> Result<(), SegEnd> {
        // (local SGD has no gradient all-reduce to overlap: it averages parameters; top-k
        // needs the whole gradient)
        if !(self.ctx.exp.overlap && self.seg.workers > 1)
            || matches!(self.seg.mode, Mode::Local(_))
            || self.ctx.exp.compress != Compress::None
        {
            return self.run_direct(comm, steps);
        }
        let ctx = self.ctx;
        self.prepare(comm)?;
        std::thread::scope(|s| {
            let mut overlap = Overlap::start(s, ctx, comm, self.rank, STEP_FLAGS, ctx.options.detail);
            self.train(Exchange::<ThreadTransport>::Overlap(&mut overlap), steps)
        })
    }

    /// Training with the all-reduce after backward, over any transport: its messages
    /// reach the lab as they arrive, and in step mode each round waits at the gate.
    fn run_direct<T: Transport>(&mut self, comm: &mut Comm<T>, steps: u64) -> Result<(), SegEnd> {
        self.prepare(comm)?;
        let watch = RoundWatch {
            gate: Arc::clone(self.ctx.gate),
            sink: self.ctx.sink.clone(),
            clock: self.ctx.clock,
            rank: self.rank,
            now: Arc::clone(&self.now),
        };
        comm.transport_mut().set_observer(Some(Box::new(watch)));
        let trained = self.train(Exchange::Direct(comm), steps);
        comm.transport_mut().set_observer(None);
        trained
    }

    /// Identical replicas: everyone receives rank 0's parameters; then gradients travel
    /// in the run's wire format.
    fn prepare<T: Transport>(&mut self, comm: &mut Comm<T>) -> Result<(), SegEnd> {
        let ctx = self.ctx;
        comm.broadcast(&mut self.params, 0).map_err(|_| SegEnd::Aborted)?;
        let mut transfers: Vec<Transfer> = Vec::new();
        report_transfers(ctx, comm, &mut transfers, self.first_update, CollectiveKind::Broadcast);
        comm.transport_mut().set_wire(ctx.exp.grad_dtype);
        self.outer.anchor_at(&self.params);
        Ok(())
    }

    /// Trains on this worker's device: the CPU, or a GPU holding the replica (whose
    /// parameters and momentum come back to the host when the segment ends).
    fn train<T: Transport>(&mut self, exchange: Exchange<T>, steps: u64) -> Result<(), SegEnd> {
        // A process per worker takes the GPUs of its host by its rank on that host.
        let slot = match &exchange {
            Exchange::Direct(comm) if comm.transport().process_per_rank() => crate::gpu::local_rank(self.rank),
            _ => self.rank,
        };
        let mut compute = Compute::new(self.ctx, slot, self.seg.threads)?;
        compute.load(&self.params, Some(self.sgd.velocity()))?;
        let trained = self.train_on(&mut compute, exchange, steps);
        let stored = compute.store(&mut self.params, Some(&mut self.sgd));
        trained.and(stored)
    }

    fn train_on<T: Transport>(
        &mut self,
        compute: &mut Compute,
        mut exchange: Exchange<T>,
        steps: u64,
    ) -> Result<(), SegEnd> {
        let (ctx, rank) = (self.ctx, self.rank);
        let (mlp, data, exp) = (&ctx.mlp, ctx.data, ctx.exp);
        let p = mlp.num_params();
        let mut transfers: Vec<Transfer> = Vec::new();

        let mut batches = Batches::new(ctx.sharder(self.seg.shuffle, self.seg.workers), rank, mlp.inputs());
        // Steps of this segment's data order taken before it began (see `Segment`).
        let before = self.first_update - self.seg.shuffle_from;
        let schedule = ctx.schedule(&self.seg);
        let global_batch = (self.seg.workers * exp.batch) as u64;
        let mut detail = ctx.options.detail;
        let mut last_detail_ns = 0u64;

        let per_rank = matches!(&exchange, Exchange::Direct(comm) if comm.transport().process_per_rank());
        // local:H: the steps after which the workers average (every H-th of the segment,
        // and its last, so that a segment always ends with identical replicas).
        let local_h = match self.seg.mode {
            Mode::Local(h) => Some(u64::from(h.max(1))),
            _ => None,
        };
        // local:H evaluates the average, so an evaluation waits for the next averaging.
        let mut eval_due = false;
        let compress = if local_h.is_none() {
            exp.compress
        } else {
            Compress::None
        };
        let gathering = matches!(compress, Compress::TopK(_));
        let collective = if gathering {
            CollectiveKind::AllGather
        } else {
            CollectiveKind::AllReduce
        };
        self.now.gathering.store(gathering, Ordering::Relaxed);
        for local in 0..steps {
            let step = self.first_update + local;
            self.now.step.store(step, Ordering::Relaxed);
            let samples_before = self.first_samples + local * global_batch;
            let epoch = samples_before / data.train_len() as u64; // of the whole run
                                                                  // next_batch: gather this worker's shard of the global batch (the step's
                                                                  // place in this data order, whose shuffling may have begun before this
                                                                  // segment).
            batches.load(data, before + local);
            if detail {
                ctx.sink.send(Event::Batch {
                    worker: rank,
                    step,
                    indices: batches.indices().to_vec(),
                });
            }
            let (xv, labels) = (batches.x(), batches.labels());
            let mut phase_ns = [0u64; Phase::COUNT];
            let (params, grads) = (&mut self.params, &mut self.grads);

            // A worker that diverges or fails alone: on threads it leaves at once (its
            // peers are released from the collective); a process per worker (MPI) says
            // so in the step's flags instead, so that every rank leaves after the same
            // all-reduce and none is left waiting in it.
            let mut trouble: Option<SegEnd> = None;
            let score = match compute.forward(ctx, (rank, step), &mut phase_ns, params, (&xv, labels)) {
                Ok(score) => Some(score),
                Err(SegEnd::Failed(e)) if per_rank => {
                    trouble = Some(SegEnd::Failed(format!("at step {step}: {e}")));
                    None
                }
                Err(end) => return Err(end),
            };
            let diverged_here = score.as_ref().is_some_and(|s| diverged(s.mean_loss(), data.classes));
            if diverged_here {
                if !per_rank {
                    return Err(SegEnd::Diverged { step, worker: rank });
                }
                trouble = Some(SegEnd::Diverged { step, worker: rank });
            }
            // The step's flags travel with the gradient (see `grads`): a switch after this
            // step? Detail (batches, messages) for the next? Detail comes at most every
            // DETAIL_EVERY: a screen cannot show more, and every step at full speed would
            // cost training time; but every step while a person holds the run (paused or
            // stepping: each press must show its round). Rank 0 decides; the all-reduce
            // tells everyone.
            let flags = &mut grads[p..];
            flags.fill(0.0);
            flags[flag::SWITCH] = if ctx.live.switch_requested() { 1.0 } else { 0.0 };
            let person_holds = !ctx.gate.is_running();
            if rank == 0
                && ctx.options.detail
                && (local == 0 || person_holds || ctx.clock.ns() >= last_detail_ns + DETAIL_EVERY_NS)
            {
                flags[flag::DETAIL] = 1.0;
                last_detail_ns = ctx.clock.ns();
            }
            // (the mean divides by N; log₂ keeps the factor within f16's range)
            if rank == 0 && per_rank {
                flags[flag::PACE] = ctx.gate.pace().factor().log2() as f32 * self.seg.workers as f32;
            }
            if diverged_here {
                flags[flag::DIVERGED] = 1.0;
                flags[flag::DIVERGED_WHO] = (rank + 1) as f32;
            }
            let flags: [f32; STEP_FLAGS] = std::array::from_fn(|i| flags[i]);
            let forward_ns = phase_ns[Phase::Forward.index()];
            match (&mut exchange, &mut *compute) {
                // (nothing worth computing: the step only carries the news)
                _ if trouble.is_some() => grads[..p].fill(0.0),
                (Exchange::Overlap(overlap), Compute::Cpu(ws)) => {
                    ctx.phase(rank, step, Phase::Backward, &mut phase_ns, || {
                        let t0 = std::time::Instant::now();
                        let layers = mlp.layers();
                        mlp.backward_with(params, &xv, ws, &mut grads[..p], |l, g| {
                            overlap.layer_done(l, g, layers[l].offset, &flags, step)
                        });
                        ctx.straggle(rank, forward_ns, t0.elapsed());
                    })?;
                }
                _ => match compute.backward(ctx, (rank, step), &mut phase_ns, params, &xv, &mut grads[..p]) {
                    Err(SegEnd::Failed(e)) if per_rank => {
                        grads[..p].fill(0.0);
                        trouble = Some(SegEnd::Failed(format!("at step {step}: {e}")));
                    }
                    done => done?,
                },
            }
            if matches!(trouble, Some(SegEnd::Failed(_))) {
                grads[p + flag::FAILED] = 1.0;
            }
            let mut allreduce_start_ns = 0;
            let mut replica_hash = None;
            // (false where local SGD's flags did not travel: they are then this worker's)
            let mut exchanged = true;
            let lr = schedule.at(step);
            let (grad_norm, bytes_sent, idle_ns) = match &mut exchange {
                Exchange::Direct(comm) if local_h.is_some() => {
                    // Local SGD: this worker's own gradient updates its own replica; every
                    // H steps the replicas' parameters are all-reduced (the gradient's
                    // buffer carries them, the step's flags past their end).
                    let grad_norm = l2_norm(&grads[..p]);
                    if trouble.is_none() {
                        compute.update(ctx, (rank, step), &mut phase_ns, params, &grads[..p], &mut self.sgd, lr)?;
                    }
                    let averaging = local_h.is_some_and(|h| (local + 1) % h == 0) || local + 1 == steps;
                    let (bytes_before, waited_before) = (comm.bytes_sent(), comm.transport().waited_ns());
                    if averaging {
                        compute.store(params, None)?;
                        grads[..p].copy_from_slice(params);
                        allreduce_start_ns =
                            all_reduce_timed(ctx, &self.now, comm, grads, (rank, step), &mut phase_ns)?;
                        self.outer.apply(params, &grads[..p]);
                        self.outer.anchor_at(params);
                        compute.load(params, None)?;
                        replica_hash = Some(super::event::params_hash(params));
                    } else {
                        // A switch waits for the averaging, where the replicas agree.
                        grads[p + flag::SWITCH] = 0.0;
                        if per_rank {
                            // A process per worker cannot release its peers: the flags
                            // still travel every step (24 bytes), so that a rank that
                            // diverges or fails is known to all after the same step.
                            allreduce_start_ns =
                                all_reduce_timed(ctx, &self.now, comm, &mut grads[p..], (rank, step), &mut phase_ns)?;
                        } else {
                            // Threads: nothing to say (a worker in trouble has left and
                            // released the others); the detail stays as it was.
                            grads[p + flag::DETAIL] = if detail { 1.0 } else { 0.0 };
                            grads[p + flag::PACE] = 0.0;
                            exchanged = false;
                        }
                    }
                    let sent = comm.bytes_sent() - bytes_before;
                    (grad_norm, sent, comm.transport().waited_ns() - waited_before)
                }
                Exchange::Direct(comm) if self.low_rank.is_some() && compress != Compress::None => {
                    // PowerSGD: P = M·Q of every weight matrix (biases and the flags
                    // beside them) all-reduced, then Q = Mᵀ·P̂ all-reduced: two
                    // all-reduces of thin factors, summed on the way as any all-reduce.
                    let grad_norm = l2_norm(&grads[..p]);
                    let (bytes_before, waited_before) = (comm.bytes_sent(), comm.transport().waited_ns());
                    let low = self.low_rank.as_mut().expect("PowerSGD's state");
                    let (first_len, second_len) = (low.first_len(), low.second_len());
                    let first = &mut self.message;
                    first.resize(first_len + STEP_FLAGS, 0.0);
                    low.encode_p(&grads[..p], &mut first[..first_len]);
                    first[first_len..].copy_from_slice(&grads[p..]);
                    let second = &mut self.gathered;
                    second.resize(second_len, 0.0);
                    allreduce_start_ns = collective_timed(ctx, &self.now, (rank, step), &mut phase_ns, || {
                        comm.all_reduce_mean(first)?;
                        low.encode_q(&first[..first_len], second);
                        comm.all_reduce_mean(second)
                    })?;
                    low.decode(&first[..first_len], second, &mut grads[..p]);
                    grads[p..].copy_from_slice(&first[first_len..]);
                    let sent = comm.bytes_sent() - bytes_before;
                    (grad_norm, sent, comm.transport().waited_ns() - waited_before)
                }
                Exchange::Direct(comm) if gathering => {
                    // Top-k: this worker's largest values as (index, value) pairs, its
                    // flags in front; all-gathered, then added up in rank order, so that
                    // every replica computes the same sum.
                    let grad_norm = l2_norm(&grads[..p]);
                    let (bytes_before, waited_before) = (comm.bytes_sent(), comm.transport().waited_ns());
                    let k = compress.values_sent(p);
                    let residual = exp.error_feedback.then_some(&mut self.residual[..]);
                    let (picked, values) = (&mut self.picked.0, &mut self.picked.1);
                    crate::comm::top_k(&grads[..p], residual, k, picked, values);
                    let message = &mut self.message;
                    message.clear();
                    message.extend_from_slice(&grads[p..]);
                    // (an index travels as the bits of an f32: gathering copies, never adds)
                    message.extend(picked.iter().map(|&i| f32::from_bits(i)));
                    message.extend_from_slice(values);
                    let n = self.seg.workers;
                    self.gathered.resize(n * message.len(), 0.0);
                    let gathered = &mut self.gathered;
                    allreduce_start_ns = collective_timed(ctx, &self.now, (rank, step), &mut phase_ns, || {
                        crate::comm::all_gather(comm.transport_mut(), message, gathered)
                    })?;
                    grads.fill(0.0);
                    for (r, block) in gathered.chunks(message.len()).enumerate() {
                        let (flags, pairs) = block.split_at(STEP_FLAGS);
                        let (indices, values) = pairs.split_at(k);
                        // (the first block is copied, as the naive all-reduce starts from
                        // rank 0's buffer: P = 100 % then gives its very bits)
                        let add = |g: &mut f32, v: f32| if r == 0 { *g = v } else { *g += v };
                        for (&i, &v) in indices.iter().zip(values) {
                            add(&mut grads[i.to_bits() as usize], v);
                        }
                        grads[p..].iter_mut().zip(flags).for_each(|(g, &f)| add(g, f));
                    }
                    let inv = 1.0 / n as f32;
                    grads.iter_mut().for_each(|v| *v *= inv);
                    let sent = comm.bytes_sent() - bytes_before;
                    (grad_norm, sent, comm.transport().waited_ns() - waited_before)
                }
                Exchange::Direct(comm) => {
                    let grad_norm = l2_norm(&grads[..p]);
                    let (bytes_before, waited_before) = (comm.bytes_sent(), comm.transport().waited_ns());
                    allreduce_start_ns = all_reduce_timed(ctx, &self.now, comm, grads, (rank, step), &mut phase_ns)?;
                    let sent = comm.bytes_sent() - bytes_before;
                    (grad_norm, sent, comm.transport().waited_ns() - waited_before)
                }
                Exchange::Overlap(overlap) => {
                    // Our own gradient's norm: the buckets already in flight carry copies.
                    let grad_norm = l2_norm(&grads[..p]);
                    // Only what is left of the communication shows as the all-reduce phase.
                    let (sent, waited) = ctx.phase(rank, step, Phase::AllReduce, &mut phase_ns, || {
                        allreduce_start_ns = ctx.clock.ns();
                        overlap.finish(grads)
                    })??;
                    (grad_norm, sent, waited)
                }
            };
            if local_h.is_none() && exp.grad_dtype == Wire::F16 && grads[..p].iter().any(|v| !v.is_finite()) {
                // Every replica holds the same result, so every worker stops here alike.
                return Err(SegEnd::Failed(format!(
                    "the f16 all-reduce produced an infinite gradient at step {step} (a value beyond {}, the largest f16 holds): use --grad-dtype bf16, which has f32's range, or a lower --lr",
                    Wire::F16.max()
                )));
            }
            // (flags that did not travel are this worker's own, and counted as such)
            let n = if exchanged { self.seg.workers as f32 } else { 1.0 };
            let count = |i: usize| (grads[p + i] * n).round() as usize;
            if count(flag::FAILED) > 0 {
                // (the others stop: the failing rank's own end says why)
                return Err(match trouble {
                    Some(failed @ SegEnd::Failed(_)) => failed,
                    _ => SegEnd::Stopped,
                });
            }
            if count(flag::DIVERGED) > 0 {
                // (who, when exactly one did; else each names itself, the others none)
                let worker = match trouble {
                    Some(SegEnd::Diverged { worker, .. }) => worker,
                    _ if count(flag::DIVERGED) == 1 => count(flag::DIVERGED_WHO).saturating_sub(1),
                    _ => usize::MAX,
                };
                return Err(SegEnd::Diverged { step, worker });
            }
            // (a worker with no score had trouble, and every worker has left above)
            let Some(score) = score else {
                return Err(trouble.unwrap_or(SegEnd::Failed("a step without a score".into())));
            };
            detail = grads[p + flag::DETAIL] > 0.0;
            if per_rank && rank != 0 {
                ctx.gate.pace().set(f64::from(grads[p + flag::PACE]).exp2());
            }
            match &mut exchange {
                Exchange::Direct(comm) => {
                    report_transfers(ctx, comm, &mut transfers, step, collective);
                    comm.transport_mut().set_recording(detail);
                }
                Exchange::Overlap(overlap) => overlap.set_recording(detail),
            }
            let grad_norm_reduced = if local_h.is_some() {
                grad_norm // (each replica applied its own)
            } else {
                let reduced = l2_norm(&grads[..p]);
                compute.update(ctx, (rank, step), &mut phase_ns, params, &grads[..p], &mut self.sgd, lr)?;
                reduced
            };
            self.steps_done = local + 1;
            if replica_hash.is_none() && local + 1 == steps {
                // The segment's last step: every mode's replicas must agree here.
                compute.store(params, None)?;
                replica_hash = Some(super::event::params_hash(params));
            }

            let end_ns = ctx.clock.ns();
            let report = WorkerStep {
                worker: rank,
                step,
                iteration: local,
                epoch,
                loss: score.mean_loss(),
                correct: score.correct,
                samples: score.samples,
                grad_norm,
                grad_norm_reduced,
                lr,
                phase_ns,
                bytes_sent,
                idle_ns,
                staleness: None,
                dropped: false,
                lead: 0,
                allreduce_start_ns,
                end_ns,
                replica_hash,
            };
            // One process per worker (MPI): rank 0 reports everyone's step.
            if let Exchange::Direct(comm) = &mut exchange {
                if comm.transport().process_per_rank() {
                    // (a 32-bit word is exact in an f64)
                    let mine: Vec<f64> = report.to_words().into_iter().map(f64::from).collect();
                    let all = comm.transport_mut().gather_f64(&mine).map_err(|_| SegEnd::Aborted)?;
                    for theirs in all.chunks(WorkerStep::WORDS).skip(1) {
                        let words: Vec<u32> = theirs.iter().map(|&v| v as u32).collect();
                        ctx.sink.send(Event::WorkerStep(WorkerStep::from_words(&words)));
                    }
                }
            }
            ctx.sink.send(Event::WorkerStep(report));
            let updates = step + 1;
            eval_due |= ctx.should_evaluate(updates);
            if rank == 0 && eval_due && (local_h.is_none() || replica_hash.is_some()) {
                eval_due = false;
                compute.store(params, None)?;
                ctx.evaluate(updates, samples_before + global_batch, params, end_ns);
            }
            if grads[p + flag::SWITCH] > 0.0 {
                return Err(SegEnd::Switch); // everyone saw the same flag after the same step
            }
        }
        Ok(())
    }
}

/// One segment on this process's rank of a world of processes (MPI): the same worker
/// as a thread runs, over `comm`. Every rank ends with the same parameters.
pub(super) fn run_rank<T: Transport>(ctx: &RunCtx, seg: Segment, state: &mut SegState, comm: &mut Comm<T>) -> SegEnd {
    let global_batch = (seg.workers * ctx.exp.batch) as u64;
    let steps = ctx.total_samples.saturating_sub(state.samples) / global_batch;
    let rank = comm.transport().rank();
    ctx.gate.begin_segment([rank], false);
    let start: &SegState = state;
    let mut worker = Worker::new(ctx, seg, start, rank);
    let end = worker.run_direct(comm, steps).err().unwrap_or(SegEnd::Completed);
    state.params = worker.params;
    state.velocity = worker.sgd.velocity().to_vec();
    state.updates += worker.steps_done;
    state.samples += worker.steps_done * global_batch;
    end
}

/// All-reduces (mean) `buf` as worker `rank`'s all-reduce phase of `step`, timed as
/// `ctx.phase` would, but in pieces: step mode holds each round at the gate. Returns
/// when the phase began.
fn all_reduce_timed<T: Transport>(
    ctx: &RunCtx,
    now: &InFlight,
    comm: &mut Comm<T>,
    buf: &mut [f32],
    (rank, step): (usize, u64),
    phase_ns: &mut [u64; Phase::COUNT],
) -> Result<u64, SegEnd> {
    collective_timed(ctx, now, (rank, step), phase_ns, || comm.all_reduce_mean(buf))
}

/// Runs the collective `f` as worker `rank`'s all-reduce phase of `step` (see
/// `all_reduce_timed`).
fn collective_timed(
    ctx: &RunCtx,
    now: &InFlight,
    (rank, step): (usize, u64),
    phase_ns: &mut [u64; Phase::COUNT],
    f: impl FnOnce() -> crate::comm::Result<()>,
) -> Result<u64, SegEnd> {
    ctx.enter(rank)?;
    let start_ns = ctx.clock.ns();
    now.piece_start_ns.store(start_ns, Ordering::Relaxed);
    let reduced = f();
    let last_piece = now.piece_start_ns.load(Ordering::Relaxed);
    ctx.record(rank, step, Phase::AllReduce, last_piece, phase_ns);
    phase_ns[Phase::AllReduce.index()] += now.pieces_ns.swap(0, Ordering::Relaxed);
    reduced.map_err(|_| SegEnd::Aborted)?;
    Ok(start_ns)
}

/// Sends the messages the last collective moved as events (in detail mode).
fn report_transfers<T: Transport>(
    ctx: &RunCtx,
    comm: &mut Comm<T>,
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
