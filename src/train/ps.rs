//! Parameter-server engines: async, SSP and backup workers, on threads (`run_segment`:
//! the server is state the workers lock) or over MPI (`run_rank`: rank 0 serves,
//! ranks 1..N work, and messages carry the pushes and the replies). Both follow the same
//! release rules (`Hold`) and the same server state (`ServerState`).
//!
//! The server holds the master parameters and the optimizer state. Each worker loops:
//! pull (parameters and their version) → forward → backward → push (gradient). With
//! `--link`, every pull and push of the whole parameter vector crosses the server's one
//! link, one at a time: the bottleneck a real parameter server has.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};

use super::compute::Compute;
use super::ctx::{diverged, run_workers, RunCtx, SegEnd, SegState, Segment, DETAIL_EVERY_NS};
use super::{Event, Gate, Phase, WorkerStep};
use crate::comm::{Link, Pace};
use crate::config::Mode;
use crate::data::Batches;
use crate::nn::{l2_norm, Sgd};

/// The pace's record of the server's typical work (copying out, applying) is its own.
const SERVER_SITE: usize = crate::comm::PACE_SITES - 2;

/// Why a worker waits for the server before its next iteration: the SSP and backup
/// release rules, one copy for the threads and the MPI server.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Hold {
    /// SSP: iteration `next` may start once the slowest worker is at most `k` behind.
    Ssp { next: u64, k: u32 },
    /// Backup: until the step the worker's gradient counted towards (the update that
    /// follows version `round`) has closed.
    Step { round: u64 },
}

impl Hold {
    /// What `mode` makes a worker wait for before iteration `next`, given the step its
    /// last gradient counted towards (backup mode).
    fn before(mode: Mode, next: u64, counted_in: Option<u64>) -> Option<Hold> {
        match mode {
            Mode::Ssp(k) => Some(Hold::Ssp { next, k }),
            Mode::Backup(_) => counted_in.map(|round| Hold::Step { round }),
            _ => None,
        }
    }
}

struct ServerState {
    params: Vec<f32>,
    sgd: Sgd,
    /// Updates applied so far in the whole run.
    version: u64,
    /// Samples whose gradients reached the server (applied or dropped).
    samples_done: u64,
    /// Backup mode: the sum and count of the gradients of the open step.
    sum: Vec<f32>,
    count: usize,
    /// Iterations each worker has completed (for the SSP bound); `u64::MAX` once a worker
    /// has spent its share of the budget, so that it holds nobody back.
    finished: Vec<u64>,
    /// Workers still training (a backup step needs min(N−B, active) gradients).
    active: usize,
    /// Set when any worker leaves: waiters wake up and leave too.
    closed: bool,
    /// What each held worker waits for (threads: the waiter sleeps until it is cleared).
    held: Vec<Option<Hold>>,
}

struct Server {
    mode: Mode,
    workers: usize,
    state: Mutex<ServerState>,
    changed: Condvar,
    /// The server's network link: one transfer at a time.
    nic: Mutex<()>,
    link: Option<Link>,
    pace: std::sync::Arc<Pace>,
    /// Samples handed out to workers so far; the budget check.
    claimed: AtomicU64,
}

impl Server {
    fn lock(&self) -> MutexGuard<'_, ServerState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// Moves `bytes` over the server's link (with an emulated link: α + bytes/β, one
    /// transfer at a time, dilated in slow motion).
    fn transfer(&self, bytes: usize) {
        if let Some(link) = self.link {
            let _nic = self.nic.lock().unwrap_or_else(|e| e.into_inner());
            self.pace.sleep_scaled(link.message_time(bytes));
        }
    }

    /// Holds worker `w` while `hold` says so (its gate knows it is parked: in step mode
    /// it is no event until another worker's push releases it); returns whether the
    /// server is still open.
    fn wait(&self, gate: &Gate, w: usize, hold: Hold) -> bool {
        let mut st = self.lock();
        if !st.closed && st.holds(hold) {
            st.held[w] = Some(hold);
            gate.park(w);
            while !st.closed && st.held[w].is_some() {
                st = self.changed.wait(st).unwrap_or_else(|e| e.into_inner());
            }
        }
        !st.closed
    }

    /// Runs `f` on the server's state as its own work: in slow motion the server stays
    /// busy (locked) for the dilated time. Releases whoever `f` unblocked, at the
    /// virtual time of worker `w`'s event.
    fn work<T>(&self, gate: &Gate, w: usize, f: impl FnOnce(&mut ServerState) -> T) -> T {
        let mut st = self.lock();
        let t0 = std::time::Instant::now();
        let out = f(&mut st);
        self.pace.stretch(SERVER_SITE, t0.elapsed());
        st.release(|held| gate.unpark(held, gate.virtual_ns(w)));
        drop(st);
        self.changed.notify_all();
        out
    }
}

/// Runs one parameter-server segment from `state`; leaves the server's parameters and
/// optimizer state in `state`.
pub(super) fn run_segment(ctx: &RunCtx, seg: Segment, state: &mut SegState) -> SegEnd {
    let server = std::sync::Arc::new(Server {
        mode: seg.mode,
        workers: seg.workers,
        state: Mutex::new(ServerState::resume(ctx, &seg, state)),
        changed: Condvar::new(),
        nic: Mutex::new(()),
        link: seg.link,
        pace: std::sync::Arc::clone(ctx.gate.pace()),
        claimed: AtomicU64::new(state.samples),
    });
    ctx.live.set_aborter(Box::new({
        let server = std::sync::Arc::clone(&server);
        move || server.close()
    }));
    let server = &*server;
    let ends = run_workers(ctx.gate, true, vec![(); seg.workers], &|| server.close(), |rank, ()| {
        let end = worker(ctx, seg, server, rank);
        if end == SegEnd::Completed {
            // The budget is spent: stop holding the others back.
            server.work(ctx.gate, rank, |st| {
                let lr = ctx.schedule(&seg).at(st.version);
                st.leave(rank, server.mode, server.workers, lr);
            });
        } else {
            server.close(); // release every waiter: the segment is over
        }
        end
    });
    let st = server.lock();
    st.save(state);
    SegEnd::combine(&ends)
}

fn worker(ctx: &RunCtx, seg: Segment, server: &Server, rank: usize) -> SegEnd {
    match worker_loop(ctx, seg, server, rank) {
        Ok(()) => SegEnd::Completed,
        Err(end) => end,
    }
}

fn worker_loop(ctx: &RunCtx, seg: Segment, server: &Server, rank: usize) -> Result<(), SegEnd> {
    let (mlp, data, exp) = (&ctx.mlp, ctx.data, ctx.exp);
    let p = mlp.num_params();
    let bytes = p * std::mem::size_of::<f32>();
    // Gradients may travel in 16 bits (parameters always in f32).
    let grad_bytes = p * exp.grad_dtype.bytes();
    let batch = exp.batch as u64;
    let mut batches = Batches::new(ctx.sharder(seg.index, seg.workers), rank, mlp.inputs());
    let schedule = ctx.schedule(&seg);
    let mut params = vec![0.0f32; p];
    let mut grads = vec![0.0f32; p];
    let mut compute = Compute::new(ctx, rank, seg.threads)?;
    // Backup mode: the step this worker's last gradient counted towards.
    let mut counted_in: Option<u64> = None;
    let mut last_batch_ns = 0u64;

    for i in 0.. {
        if ctx.live.switch_requested() {
            return Err(SegEnd::Switch);
        }
        if server.claimed.fetch_add(batch, Ordering::SeqCst) + batch > ctx.total_samples {
            return Ok(());
        }
        let mut phase_ns = [0u64; Phase::COUNT];
        // (onto one core while other programs fill the machine, and back: this loop
        // waits on the server's lock, not as the transports do, who move as they wait)
        crate::comm::follow_the_gathering();

        // Wait: for the SSP bound, or for the backup step we contributed to to close.
        let wait_start = ctx.clock.ns();
        let open = Hold::before(server.mode, i, counted_in).is_none_or(|hold| server.wait(ctx.gate, rank, hold));
        let idle_ns = ctx.clock.ns() - wait_start;
        if idle_ns > 0 && server.mode != Mode::Async {
            phase_ns[Phase::Wait.index()] = idle_ns;
            ctx.sink.send(Event::Phase {
                worker: rank,
                step: server.lock().version,
                phase: Phase::Wait,
                start_ns: wait_start,
                end_ns: wait_start + idle_ns,
            });
        }
        if !open {
            return Err(SegEnd::Aborted);
        }

        // next_batch: this worker's shard, at its own pace.
        batches.load(data, i);
        let (xv, labels) = (batches.x(), batches.labels());

        // pull: the server's parameters and their version.
        let (pulled, lead) = ctx.phase(rank, i, Phase::Pull, &mut phase_ns, || {
            let (version, lead) = server.work(ctx.gate, rank, |st| {
                params.copy_from_slice(&st.params);
                (st.version, i - st.slowest().min(i))
            });
            server.transfer(bytes);
            (version, lead)
        })?;
        // Let the other workers take their turn between our pull and our push, as they
        // would on devices of their own: when workers outnumber cores, this is what makes
        // them interleave (staleness ≈ N−1) instead of each running many iterations in
        // one time slice. With a core per worker it returns at once.
        std::thread::yield_now();
        let person_holds = !ctx.gate.is_running(); // (stepping: every event in detail)
        if ctx.options.detail && (person_holds || ctx.clock.ns() >= last_batch_ns + DETAIL_EVERY_NS) {
            last_batch_ns = ctx.clock.ns();
            ctx.sink.send(Event::Batch {
                worker: rank,
                step: pulled,
                indices: batches.indices().to_vec(),
            });
        }
        compute.pulled(ctx, (rank, pulled), &mut phase_ns, &params)?;
        let score = compute.forward(ctx, (rank, pulled), &mut phase_ns, &params, (&xv, labels))?;
        if diverged(score.mean_loss(), data.classes) {
            return Err(SegEnd::Diverged {
                step: pulled,
                worker: rank,
            });
        }
        compute.backward(ctx, (rank, pulled), &mut phase_ns, &params, &xv, &mut grads)?;
        let wire = exp.grad_dtype;
        if wire != crate::comm::Wire::F32 {
            grads.iter_mut().for_each(|g| *g = wire.round(*g));
        }
        let grad_norm = l2_norm(&grads);

        // push: the server applies the gradient (or, in backup mode, counts or drops it).
        let (pushed, lr, snapshot) = ctx.phase(rank, pulled, Phase::Push, &mut phase_ns, || {
            server.transfer(grad_bytes);
            server.work(ctx.gate, rank, |st| {
                let lr = schedule.at(st.version);
                let before = st.version;
                let pushed = st.push(server.mode, server.workers, pulled, &grads, lr);
                st.samples_done += batch;
                st.finished[rank] += 1;
                let snapshot = (st.version > before && ctx.should_evaluate(st.version))
                    .then(|| (st.version, st.samples_done, st.params.clone()));
                (pushed, lr, snapshot)
            })
        })?;
        counted_in = (!pushed.dropped).then_some(pulled);

        let end_ns = ctx.clock.ns();
        if let Some((updates, samples, snapshot)) = snapshot {
            ctx.evaluate(updates, samples, &snapshot, end_ns);
        }
        ctx.sink.send(Event::WorkerStep(WorkerStep {
            worker: rank,
            step: pushed.step,
            iteration: i,
            epoch: server.lock().samples_done / data.train_len() as u64,
            loss: score.mean_loss(),
            correct: score.correct,
            samples: score.samples,
            grad_norm,
            grad_norm_reduced: pushed.reduced_norm.unwrap_or(grad_norm),
            lr,
            phase_ns,
            bytes_sent: grad_bytes as u64,
            idle_ns,
            staleness: pushed.staleness,
            dropped: pushed.dropped,
            lead,
            allreduce_start_ns: 0,
            replica_hash: None,
            end_ns,
        }));
    }
    Ok(())
}

// A worker's message to the server: its kind, its step's report (`WorkerStep::to_words`,
// each word's bits in an f32 slot; `step` is the version it pulled), then the gradient.
// Counters (versions, leads) travel as u64 in two f32 slots of raw bits, exact to 2⁶⁴
// however long a run goes (an f32 count is exact only to 2²⁴: nine minutes of async at
// 30 000 updates a second).
const KIND: usize = 0;
const REPORT: usize = 1;
const HEADER: usize = REPORT + WorkerStep::WORDS;
// The server's reply: a header, then the parameters.
const GO: usize = 0;
const VERSION: usize = 1; // u64
const REPLY_LEAD: usize = 3; // u64
/// The pace (dilation factor) the server runs at: every rank goes at rank 0's.
const PACE: usize = 5;
const REPLY: usize = 6;
const HELLO: f32 = 0.0;
const PUSH: f32 = 1.0;
const DIVERGED: f32 = 2.0;
/// The worker's compute failed: it leaves (its own sentence says why at the end).
const FAILED: f32 = 3.0;

/// Writes `v` exactly into `buf[at..at + 2]` (its bits, not its value).
fn put_u64(buf: &mut [f32], at: usize, v: u64) {
    buf[at] = f32::from_bits(v as u32);
    buf[at + 1] = f32::from_bits((v >> 32) as u32);
}

fn get_u64(buf: &[f32], at: usize) -> u64 {
    u64::from(buf[at].to_bits()) | u64::from(buf[at + 1].to_bits()) << 32
}

/// Writes a worker's message: its kind and its report.
fn put_report(msg: &mut [f32], kind: f32, report: &WorkerStep) {
    msg[KIND] = kind;
    for (m, w) in msg[REPORT..HEADER].iter_mut().zip(report.to_words()) {
        *m = f32::from_bits(w);
    }
}

/// The report in a worker's message.
fn get_report(msg: &[f32]) -> WorkerStep {
    let words: Vec<u32> = msg[REPORT..HEADER].iter().map(|v| v.to_bits()).collect();
    WorkerStep::from_words(&words)
}

/// A parameter-server segment where every worker is a process (MPI): rank 0 is the
/// server, ranks 1..N the workers (worker w = rank w+1). A worker sends its gradient
/// with its step's figures; the server applies it (or counts it, or drops it) and
/// replies with the parameters to go on from — at once (async), once the slowest worker
/// is no more than K iterations behind (ssp:K), or once the step closes (backup:B).
pub(super) fn run_rank<T: crate::comm::Transport>(
    ctx: &RunCtx,
    seg: Segment,
    state: &mut SegState,
    comm: &mut crate::comm::Comm<T>,
) -> SegEnd {
    let t = comm.transport_mut();
    if t.size() != seg.workers + 1 {
        return SegEnd::Failed(format!(
            "a parameter server over MPI needs one rank more than workers: {} ranks for {} workers",
            t.size(),
            seg.workers
        ));
    }
    let result = if t.rank() == 0 {
        serve(ctx, seg, state, t)
    } else {
        let rank = t.rank();
        ctx.gate.begin_segment([rank - 1], false);
        work(ctx, seg, t, rank - 1)
    };
    match result {
        Ok(end) => end,
        Err(_) => SegEnd::Aborted,
    }
}

/// A worker waiting for the server's reply.
struct Waiting {
    worker: usize,
    /// The iteration it will run next.
    next: u64,
    /// Backup mode: the step its gradient counts towards.
    counted_in: Option<u64>,
    /// Its last step's report, sent once it is released (with the time it was held).
    report: Option<WorkerStep>,
    since_ns: u64,
}

fn serve<T: crate::comm::Transport + ?Sized>(
    ctx: &RunCtx,
    seg: Segment,
    state: &mut SegState,
    t: &mut T,
) -> crate::comm::Result<SegEnd> {
    let p = ctx.mlp.num_params();
    let w_count = seg.workers;
    let batch = ctx.exp.batch as u64;
    let schedule = ctx.schedule(&seg);
    let mut st = ServerState::resume(ctx, &seg, state);
    let mut claimed = state.samples;
    let mut msg = vec![0.0f32; HEADER + p];
    let mut reply = vec![0.0f32; REPLY + p];
    let mut waiting: Vec<Waiting> = Vec::new();
    let mut end = SegEnd::Completed;
    let grad_bytes = (p * ctx.exp.grad_dtype.bytes()) as u64;
    while st.active > 0 {
        let from = t.recv_any(&mut msg)?;
        let w = from - 1;
        let now = ctx.clock.ns();
        let kind = msg[KIND];
        let sent = get_report(&msg);
        let (pulled, iteration) = (sent.step, sent.iteration);
        if kind == DIVERGED || kind == FAILED {
            if end == SegEnd::Completed {
                end = if kind == DIVERGED {
                    SegEnd::Diverged {
                        step: pulled,
                        worker: w,
                    }
                } else {
                    SegEnd::Stopped // (the failed worker's own end says why)
                };
            }
            st.closed = true;
        }
        let mut report = None;
        let mut counted_in = None;
        if kind == PUSH {
            let lr = schedule.at(st.version);
            let before = st.version;
            let pushed = st.push(seg.mode, w_count, pulled, &msg[HEADER..], lr);
            st.samples_done += batch;
            st.finished[w] += 1;
            if st.version > before && ctx.should_evaluate(st.version) {
                ctx.evaluate(st.version, st.samples_done, &st.params, now);
            }
            counted_in = (!pushed.dropped).then_some(pulled);
            // (the worker's own figures, and what only the server knows)
            report = Some(WorkerStep {
                worker: w,
                step: pushed.step,
                epoch: st.samples_done / ctx.data.train_len() as u64,
                grad_norm_reduced: pushed.reduced_norm.unwrap_or(sent.grad_norm),
                lr,
                bytes_sent: grad_bytes,
                idle_ns: 0,
                staleness: pushed.staleness,
                dropped: pushed.dropped,
                allreduce_start_ns: 0,
                replica_hash: None,
                end_ns: now,
                ..sent
            });
        }
        let next = if kind == PUSH { iteration + 1 } else { 0 };
        waiting.push(Waiting {
            worker: w,
            next,
            counted_in,
            report,
            since_ns: now,
        });
        // Release whoever may go on (a leaving worker can close a backup step, which
        // may release others: repeat until nothing changes).
        loop {
            let mut changed = false;
            let mut i = 0;
            while i < waiting.len() {
                let wt = &waiting[i];
                let stop = st.closed || ctx.live.switch_requested() || claimed + batch > ctx.total_samples;
                let held = Hold::before(seg.mode, wt.next, wt.counted_in).is_some_and(|hold| st.holds(hold));
                if !stop && held {
                    i += 1;
                    continue;
                }
                let wt = waiting.swap_remove(i);
                let held_ns = ctx.clock.ns() - wt.since_ns;
                if let Some(mut r) = wt.report {
                    if seg.mode != Mode::Async {
                        r.idle_ns = held_ns;
                        r.phase_ns[Phase::Wait.index()] = held_ns;
                    }
                    ctx.sink.send(Event::WorkerStep(r));
                }
                reply[GO] = if stop { 0.0 } else { 1.0 };
                put_u64(&mut reply, VERSION, st.version);
                put_u64(&mut reply, REPLY_LEAD, wt.next - st.slowest().min(wt.next));
                reply[PACE] = ctx.gate.pace().factor() as f32;
                if stop {
                    let lr = schedule.at(st.version);
                    st.leave(wt.worker, seg.mode, w_count, lr);
                } else {
                    claimed += batch;
                    reply[REPLY..].copy_from_slice(&st.params);
                }
                t.send(wt.worker + 1, &reply, crate::comm::Tag::default())?;
                changed = true;
            }
            if !changed {
                break;
            }
        }
    }
    st.save(state);
    if end == SegEnd::Completed && ctx.live.switch_requested() {
        end = SegEnd::Switch;
    }
    Ok(end)
}

fn work<T: crate::comm::Transport + ?Sized>(
    ctx: &RunCtx,
    seg: Segment,
    t: &mut T,
    w: usize,
) -> crate::comm::Result<SegEnd> {
    let (mlp, data, exp) = (&ctx.mlp, ctx.data, ctx.exp);
    let p = mlp.num_params();
    let mut batches = Batches::new(ctx.sharder(seg.index, seg.workers), w, mlp.inputs());
    let mut msg = vec![0.0f32; HEADER + p];
    let mut reply = vec![0.0f32; REPLY + p];
    // Worker w is rank w + 1; it takes the GPUs of its host by its rank there.
    let mut compute = match Compute::new(ctx, crate::gpu::local_rank(w + 1), seg.threads) {
        Ok(c) => c,
        Err(end) => return Ok(end),
    };
    put_report(&mut msg, HELLO, &WorkerStep::default());
    for i in 0.. {
        // push the last gradient (or hello) and pull the parameters to go on from
        let t0 = ctx.clock.ns();
        t.send(0, &msg, crate::comm::Tag::default())?;
        let t1 = ctx.clock.ns();
        t.recv(0, &mut reply, crate::comm::Op::Copy)?;
        let mut phase_ns = [0u64; Phase::COUNT];
        phase_ns[Phase::Push.index()] = t1 - t0;
        phase_ns[Phase::Pull.index()] = ctx.clock.ns() - t1;
        if reply[GO] == 0.0 {
            return Ok(SegEnd::Completed);
        }
        ctx.gate.pace().set(f64::from(reply[PACE]));
        let pulled = get_u64(&reply, VERSION);
        let params = &reply[REPLY..];
        batches.load(data, i);
        let (xv, labels) = (batches.x(), batches.labels());
        let score = compute
            .pulled(ctx, (w, pulled), &mut phase_ns, params)
            .and_then(|()| compute.forward(ctx, (w, pulled), &mut phase_ns, params, (&xv, labels)));
        let at = |e: String| SegEnd::Failed(format!("at server version {pulled}: {e}"));
        let score = match score {
            Ok(score) => score,
            Err(SegEnd::Failed(e)) => return leave_with(t, &mut msg, FAILED, (pulled, i), at(e)),
            Err(_) => return Ok(SegEnd::Stopped),
        };
        if diverged(score.mean_loss(), data.classes) {
            let end = SegEnd::Diverged {
                step: pulled,
                worker: w,
            };
            return leave_with(t, &mut msg, DIVERGED, (pulled, i), end);
        }
        if let Err(SegEnd::Failed(e)) =
            compute.backward(ctx, (w, pulled), &mut phase_ns, params, &xv, &mut msg[HEADER..])
        {
            return leave_with(t, &mut msg, FAILED, (pulled, i), at(e));
        }
        let grads = &mut msg[HEADER..];
        let wire = exp.grad_dtype;
        if wire != crate::comm::Wire::F32 {
            grads.iter_mut().for_each(|g| *g = wire.round(*g));
        }
        let grad_norm = l2_norm(grads);
        let report = WorkerStep {
            worker: w,
            step: pulled,
            iteration: i,
            loss: score.mean_loss(),
            correct: score.correct,
            samples: score.samples,
            grad_norm,
            phase_ns,
            lead: get_u64(&reply, REPLY_LEAD),
            ..WorkerStep::default()
        };
        put_report(&mut msg, PUSH, &report);
    }
    Ok(SegEnd::Completed)
}

/// A worker that diverged or failed tells the server before it leaves, so that the
/// server (and through it every worker) ends instead of waiting for it; it takes the
/// server's last reply and ends with `end`.
fn leave_with<T: crate::comm::Transport + ?Sized>(
    t: &mut T,
    msg: &mut [f32],
    kind: f32,
    (pulled, iteration): (u64, u64),
    end: SegEnd,
) -> crate::comm::Result<SegEnd> {
    let report = WorkerStep {
        step: pulled,
        iteration,
        ..WorkerStep::default()
    };
    put_report(msg, kind, &report);
    t.send(0, msg, crate::comm::Tag::default())?;
    let mut reply = vec![0.0f32; REPLY + msg.len() - HEADER];
    t.recv(0, &mut reply, crate::comm::Op::Copy)?;
    Ok(end)
}

/// What a push did, for the worker's report.
#[derive(Debug, Clone, PartialEq)]
struct Pushed {
    /// The update it belongs to (0-based).
    step: u64,
    /// Server version at apply − version pulled (for gradients that were used).
    staleness: Option<u64>,
    /// Backup mode: the step had closed; the gradient was thrown away.
    dropped: bool,
    /// ‖applied gradient‖ when this push applied an average of several (backup mode).
    reduced_norm: Option<f64>,
}

impl ServerState {
    /// Takes a gradient computed on parameters of version `pulled`. Async and SSP apply it
    /// at once; backup mode adds it to the open step if it is for that step (applying
    /// the mean once N−B are in) and drops it otherwise.
    fn push(&mut self, mode: Mode, workers: usize, pulled: u64, grads: &[f32], lr: f32) -> Pushed {
        match mode {
            Mode::Backup(_) if self.version != pulled => Pushed {
                step: pulled,
                staleness: None,
                dropped: true, // the step closed without us
                reduced_norm: None,
            },
            Mode::Backup(b) => {
                self.sum.iter_mut().zip(grads).for_each(|(s, &g)| *s += g);
                self.count += 1;
                Pushed {
                    step: pulled,
                    staleness: Some(0),
                    dropped: false,
                    reduced_norm: self.close_step_if_full(workers - b, lr),
                }
            }
            _ => {
                let staleness = self.version - pulled;
                self.sgd.step(&mut self.params, grads, lr);
                self.version += 1;
                Pushed {
                    step: self.version - 1,
                    staleness: Some(staleness),
                    dropped: false,
                    reduced_norm: None,
                }
            }
        }
    }
}

impl ServerState {
    /// The server of a segment that starts where `state` left off.
    fn resume(ctx: &RunCtx, seg: &Segment, state: &SegState) -> ServerState {
        let (p, workers) = (ctx.mlp.num_params(), seg.workers);
        let sgd = ctx.sgd(seg, &state.velocity);
        ServerState {
            params: state.params.clone(),
            sgd,
            version: state.updates,
            samples_done: state.samples,
            sum: vec![0.0; p],
            count: 0,
            finished: vec![0; workers],
            active: workers,
            closed: false,
            held: vec![None; workers],
        }
    }

    /// Iterations the slowest worker still training has completed.
    fn slowest(&self) -> u64 {
        self.finished.iter().min().copied().unwrap_or(0)
    }

    /// Whether `hold` still keeps its worker waiting.
    fn holds(&self, hold: Hold) -> bool {
        match hold {
            Hold::Ssp { next, k } => self.slowest().saturating_add(u64::from(k)) < next,
            Hold::Step { round } => self.version <= round,
        }
    }

    /// Clears the holds that no longer hold, telling `released` who goes on.
    fn release(&mut self, mut released: impl FnMut(usize)) {
        for w in 0..self.held.len() {
            if self.held[w].is_some_and(|hold| !self.holds(hold)) {
                self.held[w] = None;
                released(w);
            }
        }
    }

    /// Leaves the parameters, optimizer state and counts in `state` for what comes next.
    fn save(&self, state: &mut SegState) {
        state.params.copy_from_slice(&self.params);
        state.velocity.copy_from_slice(self.sgd.velocity());
        state.updates = self.version;
        state.samples = self.samples_done;
    }

    /// Backup mode: once the open step holds min(`needed`, active workers) gradients,
    /// applies their mean; returns its norm if it did.
    fn close_step_if_full(&mut self, needed: usize, lr: f32) -> Option<f64> {
        if self.count == 0 || self.count < needed.min(self.active) {
            return None;
        }
        let inv = 1.0 / self.count as f32;
        self.sum.iter_mut().for_each(|s| *s *= inv);
        let norm = l2_norm(&self.sum);
        self.sgd.step(&mut self.params, &self.sum, lr);
        self.sum.fill(0.0);
        self.count = 0;
        self.version += 1;
        Some(norm)
    }

    /// Worker `rank` has spent its share of the budget and leaves.
    fn leave(&mut self, rank: usize, mode: Mode, workers: usize, lr: f32) {
        self.finished[rank] = u64::MAX;
        self.active -= 1;
        if let Mode::Backup(b) = mode {
            self.close_step_if_full(workers - b, lr);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(workers: usize) -> ServerState {
        ServerState {
            params: vec![0.0; 2],
            sgd: Sgd::new(2, 0.0, 0.0),
            version: 0,
            samples_done: 0,
            sum: vec![0.0; 2],
            count: 0,
            finished: vec![0; workers],
            active: workers,
            closed: false,
            held: vec![None; workers],
        }
    }

    #[test]
    fn async_staleness_follows_a_scripted_schedule() {
        // Three workers pull version 0, then push in turn; w0 pulls again in between.
        let mut st = server(3);
        let g = |v: f32| [v, -v];
        let mut staleness = Vec::new();
        let mut push = |st: &mut ServerState, pulled, v| {
            let p = st.push(Mode::Async, 3, pulled, &g(v), 0.5);
            staleness.push(p.staleness.unwrap());
            p.step
        };
        assert_eq!(push(&mut st, 0, 1.0), 0); // w0: fresh
        assert_eq!(push(&mut st, 0, 2.0), 1); // w1: one update behind
        let w0_pulled = st.version; // w0 pulls version 2
        assert_eq!(push(&mut st, 0, 4.0), 2); // w2: two behind
        push(&mut st, w0_pulled, 8.0); // w0: one behind (version 3 − 2)
        assert_eq!(staleness, vec![0, 1, 2, 1]);
        assert_eq!(st.version, 4);
        // Every gradient was applied with lr 0.5: p = −0.5 · (1 + 2 + 4 + 8).
        assert_eq!(st.params, vec![-7.5, 7.5]);
    }

    #[test]
    fn backup_applies_the_mean_of_the_first_n_minus_b_and_drops_the_rest() {
        let mut st = server(3);
        let a = st.push(Mode::Backup(1), 3, 0, &[2.0, 0.0], 1.0);
        assert_eq!((a.dropped, st.version), (false, 0), "one of two: the step stays open");
        let b = st.push(Mode::Backup(1), 3, 0, &[4.0, 2.0], 1.0);
        assert_eq!((b.dropped, st.version), (false, 1), "two of two: applied");
        assert_eq!(st.params, vec![-3.0, -1.0], "the mean of exactly two gradients");
        let late = st.push(Mode::Backup(1), 3, 0, &[100.0, 100.0], 1.0);
        assert!(late.dropped);
        assert_eq!(st.params, vec![-3.0, -1.0], "a dropped gradient changes nothing");
    }
}
