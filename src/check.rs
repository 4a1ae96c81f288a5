//! The cluster sanity check's ladder, run by every rank over any [`Transport`]: who is
//! here and on which host, are the collectives exact, how fast are they, how fast is
//! every link between two ranks (a link map, as LLNL's mpiGraph draws one), and does
//! distributed training equal training on one rank. Each rank measures; rank 0 collects
//! the [`RankReport`]s and [`judge`]s them.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::comm::{all_reduce_sum, broadcast, AllReduceAlgo, BandwidthRow, Op, Tag, Transport};
use crate::config::{Experiment, Length};
use crate::data::{Batches, Dataset, Sharder};
use crate::nn::{Mlp, Sgd, Workspace};

/// A fault a test can inject into one rank, to prove the check notices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Fault {
    /// The rank corrupts one element of every all-reduce result it checks.
    Corrupt(usize),
    /// The rank sleeps before every message of the link test (a slow rank or link).
    Slow(usize),
}

impl std::str::FromStr for Fault {
    type Err = String;
    fn from_str(s: &str) -> Result<Fault, String> {
        let usage = || format!("'{s}': expected corrupt:RANK or slow:RANK");
        let (kind, rank) = s.split_once(':').ok_or_else(usage)?;
        let rank = rank.parse().map_err(|_| usage())?;
        match kind {
            "corrupt" => Ok(Fault::Corrupt(rank)),
            "slow" => Ok(Fault::Slow(rank)),
            _ => Err(usage()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// All-reduce sizes in bytes, for correctness and bandwidth.
    pub sizes: Vec<usize>,
    pub algorithms: Vec<AllReduceAlgo>,
    /// Bytes of each message of the link map.
    pub link_bytes: usize,
    /// Training steps compared against one rank.
    pub train_steps: u64,
    pub quick: bool,
    pub fault: Option<Fault>,
}

impl CheckOptions {
    /// 4 B to 64 MB in steps of 16× (quick: 4 B to 4 MB).
    pub fn default_sizes(quick: bool) -> Vec<usize> {
        let top = if quick { 4 << 20 } else { 64 << 20 };
        std::iter::successors(Some(4usize), |s| (s * 16 <= top).then_some(s * 16))
            .chain([top])
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect()
    }
}

/// One wrong element, as the rank that holds it saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Wrong {
    pub what: String,
    pub rank: usize,
    pub index: usize,
    pub got: f32,
    pub want: f32,
}

/// One rank's time for one all-reduce: the median over batches of back-to-back calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    pub algorithm: String,
    pub bytes: usize,
    pub time_us: f64,
}

/// One link of the map as its receiver timed a message from rank `from`: the fastest of
/// its repetitions (what the link can do: other processes can only delay a message), and
/// the median (what it did).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkTime {
    pub from: usize,
    pub us: f64,
    pub median_us: f64,
    /// A link that looked slow, measured again alone beside a yardstick.
    #[serde(default)]
    pub alone: Option<Alone>,
}

/// A suspect link measured again alone, alternated with a yardstick link of its kind:
/// the suspect's fastest time and the yardstick's median.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alone {
    pub us: f64,
    pub against_from: usize,
    pub against_to: usize,
    pub against_us: f64,
}

/// What one rank measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankReport {
    pub rank: usize,
    pub host: String,
    pub pid: u32,
    pub cores: usize,
    /// The GPUs this rank can use (builds with the `gpu` feature), as `--gpus` numbers them.
    #[serde(default)]
    pub gpus: Vec<String>,
    /// Collective operations checked (the same on every rank).
    pub checked: Vec<String>,
    pub wrong: Vec<Wrong>,
    /// Wrong elements past the first few recorded.
    pub wrong_more: usize,
    pub timings: Vec<Timing>,
    /// The link map's links into this rank (every rank it heard from).
    pub links: Vec<LinkTime>,
    /// Training: this rank's final parameters (rank 0 only) and the mean loss of the
    /// first and the last step, over all ranks.
    pub params: Vec<f32>,
    pub first_loss: f64,
    pub last_loss: f64,
}

/// The GPUs this process finds, labelled (none without the `gpu` feature or a driver).
fn gpu_labels() -> Vec<String> {
    if !crate::gpu::BUILT {
        return Vec::new();
    }
    crate::gpu::list()
        .map(|l| l.iter().map(crate::gpu::GpuInfo::label).collect())
        .unwrap_or_default()
}

/// The exactly representable value rank `rank` contributes at `i`: any order of
/// summation gives the exact sum, so results are compared with `==`.
fn pattern(rank: usize, i: usize) -> f32 {
    ((rank * 7 + i * 13) % 17) as f32 - 8.0
}

/// Runs the whole ladder on this rank. Every rank calls it with the same options.
pub fn run_rank<T: Transport + ?Sized>(
    t: &mut T,
    opts: &CheckOptions,
    host: String,
    data: &Dataset,
) -> crate::comm::Result<RankReport> {
    let (rank, n) = (t.rank(), t.size());
    let mut report = RankReport {
        rank,
        host,
        pid: std::process::id(),
        cores: std::thread::available_parallelism().map_or(1, |c| c.get()),
        gpus: gpu_labels(),
        checked: Vec::new(),
        wrong: Vec::new(),
        wrong_more: 0,
        timings: Vec::new(),
        links: Vec::new(),
        params: Vec::new(),
        first_loss: 0.0,
        last_loss: 0.0,
    };
    let note_wrong = |report: &mut RankReport, what: &str, got: &[f32], want: &dyn Fn(usize) -> f32| {
        for (i, &g) in got.iter().enumerate() {
            let w = want(i);
            if g != w {
                if report.wrong.len() < 8 {
                    report.wrong.push(Wrong {
                        what: what.to_string(),
                        rank,
                        index: i,
                        got: g,
                        want: w,
                    });
                } else {
                    report.wrong_more += 1;
                }
            }
        }
    };
    let mut scratch = Vec::new();

    // 2. Collectives are correct.
    for &algo in &opts.algorithms {
        for &bytes in &opts.sizes {
            let len = (bytes / 4).max(1);
            let mut buf: Vec<f32> = (0..len).map(|i| pattern(rank, i)).collect();
            all_reduce_sum(t, algo, &mut buf, &mut scratch)?;
            if opts.fault == Some(Fault::Corrupt(rank)) {
                buf[(len - 1) / 2] += 1.0;
            }
            let what = format!("{algo} all-reduce of {}", crate::units::bytes(bytes as u64));
            note_wrong(&mut report, &what, &buf, &|i| (0..n).map(|r| pattern(r, i)).sum());
            report.checked.push(what);
        }
    }
    for root in [0, n - 1] {
        let len = 10_007;
        let mut buf: Vec<f32> = (0..len).map(|i| pattern(rank, i)).collect();
        broadcast(t, &mut buf, root)?;
        let what = format!("broadcast from rank {root}");
        note_wrong(&mut report, &what, &buf, &|i| pattern(root, i));
        report.checked.push(what);
    }
    t.barrier()?;
    report.checked.push("barrier".into());

    // 3. Bandwidth and latency, timed as OSU's benchmarks and a plain C loop of
    // MPI_Allreduce time them: a barrier, then one call, read on the clock; a rank's
    // figure is the median call (a call that another process on the core interrupted
    // does not move it). Sizes outside, algorithms inside and the library's own first,
    // so that every algorithm of one size is measured at nearly the same moment.
    let mut order: Vec<AllReduceAlgo> = opts.algorithms.clone();
    order.sort_by_key(|&a| a != AllReduceAlgo::Mpi);
    let mut timings = Vec::new();
    for &bytes in &opts.sizes {
        for &algo in &order {
            let len = (bytes / 4).max(1);
            let calls = bandwidth_calls(bytes, opts.quick);
            let send: Vec<f32> = (0..len).map(|i| pattern(rank, i)).collect();
            let mut buf = send.clone();
            let mut times = Vec::with_capacity(calls);
            for call in 0..=calls {
                if algo != AllReduceAlgo::Mpi {
                    buf.copy_from_slice(&send);
                }
                t.barrier()?;
                let t0 = Instant::now();
                if algo == AllReduceAlgo::Mpi {
                    t.library_all_reduce_into(&send, &mut buf)?;
                } else {
                    all_reduce_sum(t, algo, &mut buf, &mut scratch)?;
                }
                // (the first call warms up: first touch of the library's buffers, connections)
                if call > 0 {
                    times.push(t0.elapsed().as_secs_f64() * 1e6);
                }
            }
            timings.push(Timing {
                algorithm: algo.name().into(),
                bytes,
                time_us: crate::nn::median(times),
            });
        }
    }
    // Reported algorithm by algorithm, in the order asked for.
    for &algo in &opts.algorithms {
        report
            .timings
            .extend(timings.iter().filter(|x| x.algorithm == algo.name()).cloned());
    }

    // The link map: every ordered pair, in shifted rounds (mpiGraph's pattern); a link
    // that looks slow is measured again alone before it is called slow.
    if n > 1 {
        report.links = link_map_rank(t, opts)?;
        confirm_slow_links(t, opts, &mut report.links)?;
    }

    // 4. Training works: a short sync run on digits.
    let (params, first, last) = train_rank(t, &train_experiment(n, opts), data, n, rank)?;
    if rank == 0 {
        report.params = params;
    }
    report.first_loss = first;
    report.last_loss = last;
    Ok(report)
}

/// Timed calls (after one warm-up call) for one all-reduce size: 64 MB of calls (16 MB
/// quick), at least 5 and at most 200 (50 quick).
pub fn bandwidth_calls(bytes: usize, quick: bool) -> usize {
    let (budget, most) = if quick { (16 << 20, 50) } else { (64 << 20, 200) };
    (budget / bytes.max(1)).clamp(5, most)
}

/// Above this many ranks `--quick` samples the link map's rounds.
pub const LINK_MAP_ALL_RANKS: usize = 16;
/// Rounds the quick link map measures above [`LINK_MAP_ALL_RANKS`].
pub const LINK_MAP_QUICK_SHIFTS: usize = 8;

/// The shifts k the link map measures among `n` ranks: round k has every rank r send to
/// r+k and receive from r−k, so the N−1 rounds cover every ordered pair once. Quick,
/// above [`LINK_MAP_ALL_RANKS`] ranks: [`LINK_MAP_QUICK_SHIFTS`] shifts spread evenly
/// from 1 to N−1 (every rank still sends and receives in each).
pub fn link_shifts(n: usize, quick: bool) -> Vec<usize> {
    if n < 2 {
        return Vec::new();
    }
    if !quick || n <= LINK_MAP_ALL_RANKS {
        return (1..n).collect();
    }
    let m = LINK_MAP_QUICK_SHIFTS;
    let mut shifts: Vec<usize> = (0..m).map(|i| 1 + i * (n - 2) / (m - 1)).collect();
    shifts.dedup();
    shifts
}

/// Round k split into phases so that each link's time is its own: in one phase no rank
/// sends or receives twice, no host's network link carries more than one message (either
/// way: a message the other way would queue the acknowledgements of this one behind its
/// data on a slow link), and no host copies more than one message in its shared memory.
/// (mpiGraph starts a whole round at once and so measures links under each other's
/// load; the check compares links, so it keeps them apart.) Returns the senders of each
/// phase; `node[r]` is rank r's host. Every rank computes the same plan.
pub fn shift_phases(k: usize, node: &[usize]) -> Vec<Vec<usize>> {
    #[derive(Default)]
    struct Phase {
        senders: Vec<usize>,
        busy: Vec<usize>,
        net: Vec<usize>,
        local: Vec<usize>,
    }
    let n = node.len();
    let mut phases: Vec<Phase> = Vec::new();
    for from in 0..n {
        let to = (from + k) % n;
        if to == from {
            continue;
        }
        let (a, b) = (node[from], node[to]);
        let fits = |p: &Phase| {
            !p.busy.contains(&from)
                && !p.busy.contains(&to)
                && if a == b {
                    !p.local.contains(&a)
                } else {
                    !p.net.contains(&a) && !p.net.contains(&b)
                }
        };
        let i = match phases.iter().position(fits) {
            Some(i) => i,
            None => {
                phases.push(Phase::default());
                phases.len() - 1
            }
        };
        let p = &mut phases[i];
        p.senders.push(from);
        p.busy.extend([from, to]);
        if a == b {
            p.local.push(a);
        } else {
            p.net.extend([a, b]);
        }
    }
    phases.into_iter().map(|p| p.senders).collect()
}

/// This rank's part of the link map: for each shift, each phase after a barrier, the
/// senders send one message and the receivers time it from the barrier. Returns the
/// links into this rank (a warm-up round first, then 5 repetitions, 9 without `--quick`).
fn link_map_rank<T: Transport + ?Sized>(t: &mut T, opts: &CheckOptions) -> crate::comm::Result<Vec<LinkTime>> {
    let (rank, n) = (t.rank(), t.size());
    let node: Vec<usize> = (0..n).map(|r| t.node_of(r)).collect();
    let reps = if opts.quick { 5 } else { 9 };
    let len = (opts.link_bytes / 4).max(1);
    let out = vec![1.0f32; len];
    let mut into = vec![0.0f32; len];
    let mut links = Vec::new();
    for k in link_shifts(n, opts.quick) {
        let phases = shift_phases(k, &node);
        let (to, from) = ((rank + k) % n, (rank + n - k) % n);
        let mut times = Vec::with_capacity(reps);
        for rep in 0..=reps {
            for senders in &phases {
                t.barrier()?;
                let t0 = Instant::now();
                if senders.contains(&rank) {
                    if opts.fault == Some(Fault::Slow(rank)) {
                        std::thread::sleep(std::time::Duration::from_millis(25));
                    }
                    t.send(to, &out, Tag::default())?;
                }
                if senders.contains(&from) {
                    t.recv(from, &mut into, Op::Copy)?;
                    if rep > 0 {
                        times.push(t0.elapsed().as_secs_f64() * 1e6);
                    }
                }
            }
        }
        links.push(LinkTime {
            from,
            us: times.iter().copied().fold(f64::INFINITY, f64::min),
            median_us: crate::nn::median(times),
            alone: None,
        });
    }
    Ok(links)
}

/// At most this many links that look slow are measured again (the slowest first).
pub const CONFIRM_MOST: usize = 32;
/// Repetitions of a suspect link and its yardstick, alternated, measured alone.
const CONFIRM_REPS: usize = 9;

/// Whether a link's fastest figure `gbps` looks slow beside `best`, the best of its kind.
fn looks_slow(gbps: f64, best: f64) -> bool {
    gbps < best * SLOW_SHARE
}

/// Measures again each link that looks slow in the map, alternated with a yardstick
/// measured the same way at the same time: the fastest typical link of the best pair of
/// hosts of its kind. Each is alone on the whole job; a suspect stays slow only if even
/// its fastest repetition is under a quarter of the yardstick's median one (a lucky
/// repetition of the yardstick must not condemn it). (On a busy machine, links
/// measured seconds apart see different neighbours: a healthy link can look slow beside
/// one measured in a quiet moment, and a slow one fast beside one measured in a busy
/// moment.) Every rank learns every link's figures (a sum of the matrix each rank fills
/// its column of) and so picks the same suspects; `links` are this rank's links in.
fn confirm_slow_links<T: Transport + ?Sized>(
    t: &mut T,
    opts: &CheckOptions,
    links: &mut [LinkTime],
) -> crate::comm::Result<()> {
    let (rank, n) = (t.rank(), t.size());
    let node: Vec<usize> = (0..n).map(|r| t.node_of(r)).collect();
    // [fastest | median] µs of link (from → to) at [from·n + to | n² + from·n + to]
    let mut matrix = vec![0.0f32; 2 * n * n];
    for l in links.iter() {
        matrix[l.from * n + rank] = l.us as f32;
        matrix[n * n + l.from * n + rank] = l.median_us as f32;
    }
    let mut scratch = Vec::new();
    all_reduce_sum(t, AllReduceAlgo::Ring, &mut matrix, &mut scratch)?;
    let gbps = |us: f32| opts.link_bytes as f64 / (f64::from(us) * 1e-6).max(1e-9) / 1e9;
    let measured: Vec<(usize, usize)> = (0..n * n)
        .filter(|&i| matrix[i] > 0.0)
        .map(|i| (i / n, i % n))
        .collect();
    let fastest: Vec<(usize, usize, f64)> = measured
        .iter()
        .map(|&(from, to)| (node[from], node[to], gbps(matrix[from * n + to])))
        .collect();
    let best = best_of_kinds(&fastest);
    let mut suspects: Vec<(usize, usize, f64)> = measured
        .iter()
        .map(|&(from, to)| (from, to, gbps(matrix[from * n + to])))
        .filter(|&(from, to, g)| best[usize::from(node[from] != node[to])].is_some_and(|(b, _, _)| looks_slow(g, b)))
        .collect();
    suspects.sort_by(|a, b| a.2.total_cmp(&b.2));
    suspects.truncate(CONFIRM_MOST);
    let len = (opts.link_bytes / 4).max(1);
    let (out, mut into) = (vec![1.0f32; len], vec![0.0f32; len]);
    for (from, to, _) in suspects {
        // the yardstick: the best pair of hosts' link of the highest median figure
        let Some((_, ha, hb)) = best[usize::from(node[from] != node[to])] else {
            continue;
        };
        let yardstick = measured
            .iter()
            .copied()
            .filter(|&(f, r)| node[f] == ha && node[r] == hb && (f, r) != (from, to))
            .max_by(|a, b| matrix[n * n + b.0 * n + b.1].total_cmp(&matrix[n * n + a.0 * n + a.1]));
        let Some(yardstick) = yardstick else { continue };
        // the suspect's fastest repetition, the yardstick's median one
        let (mut fastest, mut yard) = (f64::INFINITY, Vec::with_capacity(CONFIRM_REPS));
        for rep in 0..=CONFIRM_REPS {
            for (which, (f, r)) in [(from, to), yardstick].into_iter().enumerate() {
                t.barrier()?;
                let t0 = Instant::now();
                if rank == f {
                    if opts.fault == Some(Fault::Slow(rank)) {
                        std::thread::sleep(std::time::Duration::from_millis(25));
                    }
                    t.send(r, &out, Tag::default())?;
                }
                if rank == r {
                    t.recv(f, &mut into, Op::Copy)?;
                    let us = t0.elapsed().as_secs_f64() * 1e6;
                    match (rep, which) {
                        (0, _) => {}
                        (_, 0) => fastest = fastest.min(us),
                        _ => yard.push(us),
                    }
                }
            }
        }
        // the suspect's receiver learns the yardstick's figure
        let mut both = [0.0f32; 2];
        if rank == to {
            both[0] = fastest as f32;
        }
        if rank == yardstick.1 {
            both[1] = crate::nn::median(yard) as f32;
        }
        all_reduce_sum(t, AllReduceAlgo::Ring, &mut both, &mut scratch)?;
        if let Some(l) = links.iter_mut().find(|l| rank == to && l.from == from) {
            l.alone = Some(Alone {
                us: f64::from(both[0]),
                against_from: yardstick.0,
                against_to: yardstick.1,
                against_us: f64::from(both[1]),
            });
        }
    }
    Ok(())
}

/// The experiment the training check runs with `n` ranks (per-rank batch 16).
pub fn train_experiment(n: usize, opts: &CheckOptions) -> Experiment {
    Experiment {
        workers: n,
        batch: 16,
        hidden: vec![32],
        lr: 0.1,
        momentum: 0.9,
        length: Length::Steps(opts.train_steps),
        ..Experiment::default()
    }
}

/// Sync SGD over `t` — forward, backward, ring all-reduce (mean), update — written out
/// plainly so that it is checked against the engine's one-worker run. Returns rank's
/// final parameters and the mean loss over all ranks of the first and last step.
pub fn train_rank<T: Transport + ?Sized>(
    t: &mut T,
    exp: &Experiment,
    data: &Dataset,
    n: usize,
    rank: usize,
) -> crate::comm::Result<(Vec<f32>, f64, f64)> {
    let mlp = Mlp::new(data.inputs(), &exp.hidden, data.classes);
    let p = mlp.num_params();
    let mut params = vec![0.0f32; p];
    if rank == 0 {
        mlp.init(&mut params, exp.seed);
    }
    broadcast(t, &mut params, 0)?;
    let sharder = Sharder {
        train_len: data.train_len(),
        workers: n,
        batch: exp.batch,
        seed: exp.seed,
    };
    let steps = match exp.length {
        Length::Steps(s) => s,
        Length::Epochs(e) => e * sharder.steps_per_epoch(),
    };
    let mut sgd = Sgd::new(p, exp.momentum, exp.weight_decay);
    let mut ws = Workspace::new(&mlp, exp.batch);
    // The gradient, and the loss summed over ranks in the last slot.
    let mut grads = vec![0.0f32; p + 1];
    let mut scratch = Vec::new();
    let (mut first, mut last) = (0.0, 0.0);
    let mut batches = Batches::new(sharder, rank, mlp.inputs());
    for step in 0..steps {
        batches.load(data, step);
        let xv = batches.x();
        mlp.forward(&params, &xv, &mut ws);
        let score = mlp.loss(batches.labels(), &mut ws);
        mlp.backward(&params, &xv, &mut ws, &mut grads[..p]);
        grads[p] = score.mean_loss() as f32;
        all_reduce_sum(t, AllReduceAlgo::Ring, &mut grads, &mut scratch)?;
        let inv = 1.0 / n as f32;
        grads.iter_mut().for_each(|g| *g *= inv);
        if step == 0 {
            first = grads[p] as f64;
        }
        last = grads[p] as f64;
        sgd.step(&mut params, &grads[..p], exp.lr);
    }
    Ok((params, first, last))
}

/// One row of the bandwidth table: `ddlab bench`'s row, and how the ranks differed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckRow {
    /// The slowest rank's median time.
    #[serde(flatten)]
    pub row: BandwidthRow,
    /// (slowest − fastest rank's median) / slowest.
    pub spread: f64,
    /// The rank the others waited for (the shortest time: it arrived last).
    pub late_rank: usize,
}

/// What carries a link: memory shared inside a host, or the network between hosts.
/// Links are only ever compared with links of the same kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkKind {
    /// Both ranks on one host.
    Shm,
    /// Ranks on different hosts.
    Net,
}

impl LinkKind {
    pub fn label(self) -> &'static str {
        match self {
            LinkKind::Shm => "shared-memory",
            LinkKind::Net => "network",
        }
    }
}

/// One link of the map: `link_bytes` from one rank to another, alone on its path.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinkRow {
    pub from_rank: usize,
    pub to_rank: usize,
    pub from_host: String,
    pub to_host: String,
    pub kind: LinkKind,
    /// The fastest repetition's figure, which is judged.
    pub gbps: f64,
    /// The median repetition's.
    pub median_gbps: f64,
    /// Where it looked slow: measured again alone beside a yardstick link.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alone: Option<AloneRow>,
    /// Its fastest repetition under [`SLOW_SHARE`] of the best of its kind, and (where
    /// measured again) under that share of its yardstick's.
    pub slow: bool,
}

/// A suspect link measured again alone, and the yardstick it was alternated with.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AloneRow {
    pub gbps: f64,
    pub against_from_rank: usize,
    pub against_to_rank: usize,
    pub against_gbps: f64,
}

/// A link whose fastest repetition is under this share of the best of its kind fails
/// the check.
pub const SLOW_SHARE: f64 = 0.25;

/// The best figure of one kind of link: the fastest host pair's median of its links'
/// fastest figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinkReference {
    pub kind: LinkKind,
    pub gbps: f64,
    pub from_host: String,
    pub to_host: String,
    /// Links of this kind measured.
    pub links: usize,
}

/// How the link map was measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinkMapInfo {
    /// Bytes of each message.
    pub bytes: usize,
    /// The shifts measured (round k: rank r sends to r+k).
    pub shifts: Vec<usize>,
    /// Ordered pairs measured, and how many there are.
    pub pairs: usize,
    pub pairs_total: usize,
    pub references: Vec<LinkReference>,
}

/// One host and its ranks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostRow {
    pub host: String,
    pub ranks: Vec<usize>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    pub name: String,
    pub passed: bool,
    pub line: String,
}

/// Everything rank 0 reports.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub backend: String,
    pub workers: usize,
    pub ranks: Vec<RankRow>,
    /// Hosts in the order of their first rank.
    pub hosts: Vec<HostRow>,
    pub warnings: Vec<String>,
    pub wrong: Vec<Wrong>,
    pub bandwidth: Vec<CheckRow>,
    pub peak_busbw: Option<CheckRow>,
    /// Every measured ordered pair of ranks.
    pub links: Vec<LinkRow>,
    pub link_map: Option<LinkMapInfo>,
    pub training_max_relative_diff: f64,
    pub training_first_loss: f64,
    pub training_last_loss: f64,
    pub steps: Vec<Step>,
    pub passed: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RankRow {
    pub rank: usize,
    pub host: String,
    pub pid: u32,
    pub cores: usize,
    pub gpus: Vec<String>,
}

/// Judges every rank's report. `reference` is the one-rank run's parameters;
/// `hostfile` says whether the launcher was given a list of hosts.
pub fn judge(
    backend: &str,
    reports: &[RankReport],
    reference: &[f32],
    link_bytes: usize,
    under_launcher: bool,
    hostfile: bool,
) -> CheckReport {
    let hosts = hosts_of(reports);
    let n = reports.len();
    let mut steps = Vec::new();
    let mut warnings = Vec::new();
    let ranks: Vec<RankRow> = reports
        .iter()
        .map(|r| RankRow {
            rank: r.rank,
            host: r.host.clone(),
            pid: r.pid,
            cores: r.cores,
            gpus: r.gpus.clone(),
        })
        .collect();
    if under_launcher && n == 1 {
        warnings.push(
            "world size is 1 under mpirun: every process thinks it is alone (is this ddlab built with --features mpi, and the mpirun from the same MPI as the one it links?)".into(),
        );
    }
    if hostfile && hosts.len() == 1 && n > 1 {
        warnings.push(format!(
            "a hostfile was given but all {n} ranks run on {}: check the hostfile's slots and mpirun's mapping options",
            hosts.first().map_or("?", |h| h.host.as_str())
        ));
    }
    steps.push(Step {
        name: "ranks".into(),
        passed: true,
        line: format!(
            "{n} rank{} on {} host{}{}",
            if n == 1 { "" } else { "s" },
            hosts.len(),
            if hosts.len() == 1 { "" } else { "s" },
            if hosts.len() > 1 {
                let shown: Vec<String> = hosts
                    .iter()
                    .take(8)
                    .map(|h| {
                        format!(
                            "{} (rank{} {})",
                            h.host,
                            if h.ranks.len() == 1 { "" } else { "s" },
                            rank_list(&h.ranks)
                        )
                    })
                    .collect();
                format!(": {}{}", shown.join(", "), if hosts.len() > 8 { ", …" } else { "" })
            } else {
                String::new()
            }
        ),
    });

    // Collectives.
    let wrong: Vec<Wrong> = reports.iter().flat_map(|r| r.wrong.iter().cloned()).collect();
    let wrong_total = wrong.len() + reports.iter().map(|r| r.wrong_more).sum::<usize>();
    let checked = reports.first().map_or(0, |r| r.checked.len());
    steps.push(Step {
        name: "collectives".into(),
        passed: wrong.is_empty(),
        line: match wrong.first() {
            None => format!("{checked} collectives exact on every rank (all-reduce at every size, broadcast, barrier)"),
            Some(w) => format!(
                "{wrong_total} wrong element{}; first: {} on rank {} ({}), element {}: got {} but the sum is {}",
                if wrong_total == 1 { "" } else { "s" },
                w.what,
                w.rank,
                reports[w.rank].host,
                w.index,
                w.got,
                w.want
            ),
        },
    });

    // Bandwidth: per (algorithm, size), the slowest rank's median.
    let mut bandwidth = Vec::new();
    if let Some(first) = reports.first() {
        for (k, t0) in first.timings.iter().enumerate() {
            let times: Vec<f64> = reports.iter().map(|r| r.timings[k].time_us).collect();
            let slowest = times.iter().copied().fold(0.0, f64::max);
            let (late_rank, fastest) = times
                .iter()
                .copied()
                .enumerate()
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .unwrap_or((0, 0.0));
            bandwidth.push(CheckRow {
                row: BandwidthRow::new(&t0.algorithm, n, t0.bytes, slowest),
                spread: if slowest > 0.0 {
                    (slowest - fastest) / slowest
                } else {
                    0.0
                },
                late_rank,
            });
        }
    }
    let peak_busbw = bandwidth
        .iter()
        .max_by(|a, b| a.row.busbw_gbps.total_cmp(&b.row.busbw_gbps))
        .cloned();
    steps.push(Step {
        name: "bandwidth".into(),
        passed: true,
        line: match &peak_busbw {
            Some(p) if n > 1 => format!(
                "peak busbw {:.2} GB/s ({} at {}); smallest latency {:.1} µs",
                p.row.busbw_gbps,
                p.row.algorithm,
                crate::units::bytes(p.row.bytes as u64),
                bandwidth.iter().map(|b| b.row.time_us).fold(f64::INFINITY, f64::min)
            ),
            _ => "one rank: nothing to measure".into(),
        },
    });

    // Links: the map, each link against the best of its kind.
    let (links, link_map) = if n > 1 {
        let (links, info) = link_rows(reports, link_bytes);
        steps.push(links_step(&links, &info));
        (links, Some(info))
    } else {
        (Vec::new(), None)
    };

    // Training.
    let params = reports.first().map(|r| r.params.as_slice()).unwrap_or(&[]);
    let norm = reference
        .iter()
        .map(|v| (*v as f64).powi(2))
        .sum::<f64>()
        .sqrt()
        .max(1e-12);
    let diff = params
        .iter()
        .zip(reference)
        .map(|(a, b)| ((*a - *b) as f64).powi(2))
        .sum::<f64>()
        .sqrt()
        / norm;
    let diff = if params.len() == reference.len() {
        diff
    } else {
        f64::INFINITY
    };
    let (first, last) = reports.first().map_or((0.0, 0.0), |r| (r.first_loss, r.last_loss));
    let falls = last < first;
    steps.push(Step {
        name: "training".into(),
        passed: diff <= 1e-5 && falls,
        line: format!(
            "{n} rank{} = 1 rank with the {n}× batch: parameters differ by {diff:.1e} (relative; at most 1e-5), loss {first:.3} → {last:.3}{}",
            if n == 1 { "" } else { "s" },
            if falls { "" } else { ": it did not fall" }
        ),
    });
    let passed = steps.iter().all(|s| s.passed);
    CheckReport {
        backend: backend.into(),
        workers: n,
        ranks,
        hosts,
        warnings,
        wrong,
        bandwidth,
        peak_busbw,
        links,
        link_map,
        training_max_relative_diff: diff,
        training_first_loss: first,
        training_last_loss: last,
        steps,
        passed,
    }
}

/// Hosts in the order of their first rank, with their ranks.
fn hosts_of(reports: &[RankReport]) -> Vec<HostRow> {
    let mut hosts: Vec<HostRow> = Vec::new();
    for r in reports {
        match hosts.iter_mut().find(|h| h.host == r.host) {
            Some(h) => h.ranks.push(r.rank),
            None => hosts.push(HostRow {
                host: r.host.clone(),
                ranks: vec![r.rank],
            }),
        }
    }
    hosts
}

/// `0–3`, `0, 2, 4`, `0–1, 5`: ranks with consecutive runs joined.
fn rank_list(ranks: &[usize]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ranks.len() {
        let mut j = i;
        while j + 1 < ranks.len() && ranks[j + 1] == ranks[j] + 1 {
            j += 1;
        }
        parts.push(if j == i {
            ranks[i].to_string()
        } else {
            format!("{}–{}", ranks[i], ranks[j])
        });
        i = j + 1;
    }
    parts.join(", ")
}

/// The best link of each kind — shared memory (both ends on one host), then network —
/// as the fastest pair of hosts' median, with that pair; `links` are (from host, to host,
/// GB/s). A median per pair of hosts, so that one lucky link does not set the bar.
fn best_of_kinds<H: Ord + Copy>(links: &[(H, H, f64)]) -> [Option<(f64, H, H)>; 2] {
    let mut pairs: std::collections::BTreeMap<(H, H), Vec<f64>> = Default::default();
    for &(a, b, gbps) in links {
        pairs.entry((a, b)).or_default().push(gbps);
    }
    let mut best: [Option<(f64, H, H)>; 2] = [None, None];
    for ((a, b), g) in pairs {
        let (median, kind) = (crate::nn::median(g), usize::from(a != b));
        if best[kind].is_none_or(|(m, _, _)| median > m) {
            best[kind] = Some((median, a, b));
        }
    }
    best
}

/// The map's rows, and each kind's best figure (the fastest host pair's median, so that
/// one lucky link does not set the bar): a link whose fastest repetition is under
/// [`SLOW_SHARE`] of it, and under that share of its yardstick where it was measured
/// again, is slow.
fn link_rows(reports: &[RankReport], link_bytes: usize) -> (Vec<LinkRow>, LinkMapInfo) {
    let n = reports.len();
    let mut links: Vec<LinkRow> = Vec::new();
    for r in reports {
        for l in &r.links {
            let Some(from) = reports.get(l.from) else { continue };
            links.push(LinkRow {
                from_rank: l.from,
                to_rank: r.rank,
                from_host: from.host.clone(),
                to_host: r.host.clone(),
                kind: if from.host == r.host {
                    LinkKind::Shm
                } else {
                    LinkKind::Net
                },
                gbps: link_bytes as f64 / (l.us * 1e-6).max(1e-9) / 1e9,
                median_gbps: link_bytes as f64 / (l.median_us * 1e-6).max(1e-9) / 1e9,
                alone: l.alone.as_ref().map(|a| AloneRow {
                    gbps: link_bytes as f64 / (a.us * 1e-6).max(1e-9) / 1e9,
                    against_from_rank: a.against_from,
                    against_to_rank: a.against_to,
                    against_gbps: link_bytes as f64 / (a.against_us * 1e-6).max(1e-9) / 1e9,
                }),
                slow: false,
            });
        }
    }
    links.sort_by_key(|l| (l.from_rank, l.to_rank));
    let figures: Vec<(&str, &str, f64)> = links
        .iter()
        .map(|l| (l.from_host.as_str(), l.to_host.as_str(), l.gbps))
        .collect();
    let mut references = Vec::new();
    for (kind, best) in [LinkKind::Shm, LinkKind::Net].into_iter().zip(best_of_kinds(&figures)) {
        if let Some((gbps, from_host, to_host)) = best {
            references.push(LinkReference {
                kind,
                gbps,
                from_host: from_host.to_string(),
                to_host: to_host.to_string(),
                links: links.iter().filter(|l| l.kind == kind).count(),
            });
        }
    }
    for l in &mut links {
        let best = references.iter().find(|r| r.kind == l.kind).map_or(0.0, |r| r.gbps);
        l.slow = looks_slow(l.gbps, best) && l.alone.as_ref().is_none_or(|a| looks_slow(a.gbps, a.against_gbps));
    }
    let shifts: std::collections::BTreeSet<usize> = links.iter().map(|l| (l.to_rank + n - l.from_rank) % n).collect();
    let info = LinkMapInfo {
        bytes: link_bytes,
        shifts: shifts.into_iter().collect(),
        pairs: links.len(),
        pairs_total: n * (n - 1),
        references,
    };
    (links, info)
}

fn rank_at(rank: usize, host: &str) -> String {
    format!("rank {rank} ({host})")
}

/// What the slow links have in common, as a reader would say it: one rank that sends or
/// receives them all, one host that every one goes through (or leaves, or enters), or
/// the two hosts they join.
fn blame(slow: &[&LinkRow]) -> String {
    let all = |f: &dyn Fn(&LinkRow) -> bool| slow.iter().all(|l| f(l));
    let (first, many) = (slow[0], slow.len() > 1);
    if !many {
        return format!(
            "{} → {}",
            rank_at(first.from_rank, &first.from_host),
            rank_at(first.to_rank, &first.to_host)
        );
    }
    if all(&|l| l.from_rank == first.from_rank) {
        return format!("every one sent by {}", rank_at(first.from_rank, &first.from_host));
    }
    if all(&|l| l.to_rank == first.to_rank) {
        return format!("every one received by {}", rank_at(first.to_rank, &first.to_host));
    }
    let mut hosts: Vec<&str> = Vec::new();
    for l in slow {
        for h in [l.from_host.as_str(), l.to_host.as_str()] {
            if !hosts.contains(&h) {
                hosts.push(h);
            }
        }
    }
    let common: Vec<&str> = hosts
        .iter()
        .copied()
        .filter(|h| all(&|l| l.from_host == *h || l.to_host == *h))
        .collect();
    match common.as_slice() {
        [h] if all(&|l| l.from_host == *h) => format!("every one leaving host {h}"),
        [h] if all(&|l| l.to_host == *h) => format!("every one entering host {h}"),
        [h] => format!("every one to or from host {h}: suspect its network link"),
        [a, b] if all(&|l| l.from_host == *a) => format!("every one from host {a} to host {b}"),
        [a, b] if all(&|l| l.from_host == *b) => format!("every one from host {b} to host {a}"),
        [a, b] => format!("every one between hosts {a} and {b}"),
        _ => {
            // No one culprit: name the host that most of them touch.
            let worst = hosts
                .iter()
                .copied()
                .max_by_key(|h| slow.iter().filter(|l| l.from_host == *h || l.to_host == *h).count())
                .unwrap_or("?");
            format!("on several hosts, most through {worst}")
        }
    }
}

fn links_step(links: &[LinkRow], info: &LinkMapInfo) -> Step {
    let slow: Vec<&LinkRow> = links.iter().filter(|l| l.slow).collect();
    let ranges: Vec<String> = info
        .references
        .iter()
        .map(|r| {
            let of_kind = links.iter().filter(|l| l.kind == r.kind);
            let lo = of_kind.clone().map(|l| l.gbps).fold(f64::INFINITY, f64::min);
            let hi = of_kind.map(|l| l.gbps).fold(0.0, f64::max);
            format!("{} {} {lo:.2}–{hi:.2} GB/s", r.links, r.kind.label())
        })
        .collect();
    let sampled = if info.pairs < info.pairs_total {
        format!(" (quick: {} of {} pairs)", info.pairs, info.pairs_total)
    } else {
        String::new()
    };
    let line = if slow.is_empty() {
        format!(
            "{} links{sampled}: {}; none under a quarter of the best of its kind",
            info.pairs,
            ranges.join(", ")
        )
    } else {
        format!(
            "{} of {} links under a quarter of the best of their kind{sampled}, {}",
            slow.len(),
            info.pairs,
            blame(&slow)
        )
    };
    Step {
        name: "links".into(),
        passed: slow.is_empty(),
        line,
    }
}

/// The report as the terminal shows it.
pub fn render(report: &CheckReport, quick: bool) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let mark = |ok: bool| if ok { "✓" } else { "✗" };
    let _ = writeln!(
        s,
        "ddlab check: {} rank{} ({}){}",
        report.workers,
        if report.workers == 1 { "" } else { "s" },
        report.backend,
        if quick { ", quick" } else { "" }
    );
    for step in &report.steps {
        let _ = writeln!(s, "{} {:<12} {}", mark(step.passed), step.name, step.line);
        match step.name.as_str() {
            "ranks" => {
                // GPUs are listed by builds that can use them.
                let gpus = |r: &RankRow| match (crate::gpu::BUILT, r.gpus.is_empty()) {
                    (false, _) => String::new(),
                    (true, true) => "  none found".into(),
                    (true, false) => format!("  {}", r.gpus.join(", ")),
                };
                let head = if crate::gpu::BUILT { "  gpus" } else { "" };
                let _ = writeln!(s, "    {:>4}  {:<24} {:>8} {:>5}{head}", "rank", "host", "pid", "cores");
                for r in &report.ranks {
                    let _ = writeln!(
                        s,
                        "    {:>4}  {:<24} {:>8} {:>5}{}",
                        r.rank,
                        r.host,
                        r.pid,
                        r.cores,
                        gpus(r)
                    );
                }
                for w in &report.warnings {
                    let _ = writeln!(s, "  ⚠ {w}");
                }
            }
            "collectives" => {
                for w in report.wrong.iter().skip(1).take(4) {
                    let _ = writeln!(
                        s,
                        "    {} on rank {}, element {}: got {} but the sum is {}",
                        w.what, w.rank, w.index, w.got, w.want
                    );
                }
            }
            "bandwidth" if report.workers > 1 => {
                let _ = writeln!(
                    s,
                    "    {:<6} {:>8} {:>11} {:>10} {:>10} {:>7}  late rank",
                    "algo", "size", "time µs", "algbw GB/s", "busbw GB/s", "spread"
                );
                for b in &report.bandwidth {
                    let _ = writeln!(
                        s,
                        "    {:<6} {:>8} {:>11.1} {:>10.3} {:>10.3} {:>6.0}%  {}",
                        b.row.algorithm,
                        crate::units::bytes(b.row.bytes as u64),
                        b.row.time_us,
                        b.row.algbw_gbps,
                        b.row.busbw_gbps,
                        b.spread * 100.0,
                        b.late_rank
                    );
                }
            }
            "links" => render_links(&mut s, report),
            _ => {}
        }
    }
    let failed: Vec<&str> = report
        .steps
        .iter()
        .filter(|s| !s.passed)
        .map(|s| s.name.as_str())
        .collect();
    if failed.is_empty() {
        let _ = writeln!(s, "verdict: PASS — every check passed");
    } else {
        let _ = writeln!(s, "verdict: FAIL — {} failed", failed.join(", "));
    }
    s
}

/// A link's share of the best of its kind, as judged: beside its yardstick where it was
/// measured again alone.
fn share(l: &LinkRow, best: f64) -> f64 {
    match &l.alone {
        Some(a) => a.gbps / a.against_gbps.max(1e-12),
        None => l.gbps / best.max(1e-12),
    }
}

/// A heat-map cell: a link's share of the best of its kind, in four shades.
fn shade(share: f64) -> &'static str {
    match share {
        s if s >= 0.75 => "██",
        s if s >= 0.5 => "▓▓",
        s if s >= SLOW_SHARE => "▒▒",
        _ => "░░",
    }
}

/// Rank × rank heat maps up to this many ranks, host × host above.
const MAP_RANKS: usize = 16;
/// No map at all above this many hosts (the rows are in the JSON).
const MAP_HOSTS: usize = 32;

/// The slow links named one by one (the first few), the heat map and its legend.
fn render_links(s: &mut String, report: &CheckReport) {
    use std::fmt::Write as _;
    let Some(info) = &report.link_map else { return };
    let best = |kind: LinkKind| info.references.iter().find(|r| r.kind == kind).map_or(0.0, |r| r.gbps);
    let slow: Vec<&LinkRow> = report.links.iter().filter(|l| l.slow).collect();
    for l in slow.iter().take(8) {
        let alone = l.alone.as_ref().map_or(String::new(), |a| {
            format!(
                "; alone {:.3} GB/s beside rank {} → rank {} at {:.2}",
                a.gbps, a.against_from_rank, a.against_to_rank, a.against_gbps
            )
        });
        let _ = writeln!(
            s,
            "    slow link: {} → {}: {:.3} GB/s, best {} {:.2} GB/s{alone}",
            rank_at(l.from_rank, &l.from_host),
            rank_at(l.to_rank, &l.to_host),
            l.gbps,
            l.kind.label(),
            best(l.kind)
        );
    }
    if slow.len() > 8 {
        let _ = writeln!(s, "    … and {} more slow links (all in --json)", slow.len() - 8);
    }
    let n = report.workers;
    let label = |h: &str| -> String {
        let h: String = h.chars().take(14).collect();
        format!("{h:<14}")
    };
    if n <= MAP_RANKS {
        let _ = writeln!(
            s,
            "    link map, {} from each rank (row) to each rank (column):",
            crate::units::bytes(info.bytes as u64)
        );
        let mut head = format!("    {:<14}{:>5} ", "", "to");
        for to in 0..n {
            let _ = write!(head, "{to:>3}");
        }
        let _ = writeln!(s, "{head}");
        for from in 0..n {
            let host = &report.ranks[from].host;
            let first_of_host = from == 0 || report.ranks[from - 1].host != *host;
            let _ = write!(
                s,
                "    {}{:>5} ",
                if first_of_host { label(host) } else { label("") },
                from
            );
            for to in 0..n {
                let cell = match report.links.iter().find(|l| l.from_rank == from && l.to_rank == to) {
                    _ if from == to => "  ·".to_string(),
                    Some(l) => format!(" {}", shade(share(l, best(l.kind)))),
                    None => "   ".into(),
                };
                s.push_str(&cell);
            }
            s.push('\n');
        }
    } else if report.hosts.len() <= MAP_HOSTS {
        let _ = writeln!(
            s,
            "    link map, {} between ranks, median per pair of hosts (row sends, column receives):",
            crate::units::bytes(info.bytes as u64)
        );
        let mut head = format!("    {:<14}{:>5} ", "", "to");
        for to in 0..report.hosts.len() {
            let _ = write!(head, "{to:>3}");
        }
        let _ = writeln!(s, "{head}");
        for (a, ha) in report.hosts.iter().enumerate() {
            let _ = write!(s, "    {}{a:>5} ", label(&ha.host));
            for hb in &report.hosts {
                let between: Vec<&LinkRow> = report
                    .links
                    .iter()
                    .filter(|l| l.from_host == ha.host && l.to_host == hb.host)
                    .collect();
                let cell = if between.is_empty() {
                    "  ·".to_string()
                } else {
                    let shares = between.iter().map(|l| share(l, best(l.kind))).collect();
                    format!(" {}", shade(crate::nn::median(shares)))
                };
                s.push_str(&cell);
            }
            s.push('\n');
        }
    }
    let refs: Vec<String> = info
        .references
        .iter()
        .map(|r| {
            let between = if r.from_host == r.to_host {
                format!("inside {}", r.from_host)
            } else {
                format!("{} → {}", r.from_host, r.to_host)
            };
            format!("best {} {:.2} GB/s ({between})", r.kind.label(), r.gbps)
        })
        .collect();
    let _ = writeln!(
        s,
        "    share of the best link of its kind: ██ ≥ ¾  ▓▓ ≥ ½  ▒▒ ≥ ¼  ░░ slow (under ¼){}",
        if n <= MAP_RANKS && info.pairs < info.pairs_total {
            "  blank: not measured"
        } else {
            ""
        },
    );
    let _ = writeln!(s, "    {}", refs.join("; "));
    if info.pairs < info.pairs_total {
        let _ = writeln!(
            s,
            "    quick: {} of the {} shifted rounds (k = {}), {} of {} pairs; without --quick every pair",
            info.shifts.len(),
            n - 1,
            info.shifts.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(", "),
            info.pairs,
            info.pairs_total
        );
    }
    if report.hosts.len() == 2 {
        let _ = writeln!(
            s,
            "    (two hosts: a network link slow both ways has no other network link to be compared with; one slow direction shows)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_run_from_four_bytes_to_the_top_by_sixteen() {
        assert_eq!(
            CheckOptions::default_sizes(true),
            vec![4, 64, 1024, 16384, 262144, 4194304]
        );
        assert_eq!(*CheckOptions::default_sizes(false).last().unwrap(), 64 << 20);
    }

    #[test]
    fn the_shifted_rounds_cover_every_ordered_pair_once_and_quick_samples_them_above_16_ranks() {
        for n in [2, 3, 5, 16] {
            let mut seen = std::collections::BTreeSet::new();
            for k in link_shifts(n, true) {
                for from in 0..n {
                    assert!(seen.insert((from, (from + k) % n)), "n={n} k={k}: a pair twice");
                }
            }
            assert_eq!(seen.len(), n * (n - 1), "n={n}");
        }
        assert_eq!(link_shifts(64, false).len(), 63);
        let quick = link_shifts(64, true);
        assert_eq!(quick.len(), LINK_MAP_QUICK_SHIFTS);
        assert_eq!((quick[0], *quick.last().unwrap()), (1, 63));
        assert!(link_shifts(1, false).is_empty());
    }

    #[test]
    fn a_phase_keeps_every_link_alone_on_its_ranks_and_its_hosts_paths() {
        // 3 hosts of 4 ranks, and one host of 8
        for node in [vec![0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2], vec![0; 8]] {
            let n = node.len();
            for k in 1..n {
                let phases = shift_phases(k, &node);
                let mut senders: Vec<usize> = phases.concat();
                senders.sort_unstable();
                assert_eq!(senders, (0..n).collect::<Vec<_>>(), "k={k}: every rank sends once");
                for phase in &phases {
                    let mut ranks = std::collections::BTreeSet::new();
                    let (mut net, mut local) = (Vec::new(), Vec::new());
                    for &from in phase {
                        let to = (from + k) % n;
                        assert!(
                            ranks.insert(from) && ranks.insert(to),
                            "k={k}: a rank twice in {phase:?}"
                        );
                        if node[from] == node[to] {
                            assert!(!local.contains(&node[from]), "k={k}: two copies on one host");
                            local.push(node[from]);
                        } else {
                            assert!(
                                !net.contains(&node[from]) && !net.contains(&node[to]),
                                "k={k}: a host's link twice"
                            );
                            net.extend([node[from], node[to]]);
                        }
                    }
                }
            }
        }
    }

    /// Reports of `hosts[r]`-placed ranks whose links run at `gbps(from, to)`.
    fn reports(hosts: &[&str], gbps: impl Fn(usize, usize) -> f64) -> Vec<RankReport> {
        let n = hosts.len();
        (0..n)
            .map(|rank| RankReport {
                rank,
                host: hosts[rank].into(),
                pid: rank as u32,
                cores: 1,
                gpus: Vec::new(),
                checked: Vec::new(),
                wrong: Vec::new(),
                wrong_more: 0,
                timings: Vec::new(),
                links: (0..n)
                    .filter(|&f| f != rank)
                    .map(|from| {
                        let us = (1 << 20) as f64 / (gbps(from, rank) * 1e9) * 1e6;
                        LinkTime {
                            from,
                            us,
                            median_us: us,
                            alone: None,
                        }
                    })
                    .collect(),
                params: Vec::new(),
                first_loss: 2.0,
                last_loss: 1.0,
            })
            .collect()
    }

    #[test]
    fn network_links_are_compared_with_network_links_only_so_a_healthy_two_host_cluster_passes() {
        // shared memory 9 GB/s inside a host, 0.3 GB/s between: both healthy
        let hosts = ["a", "a", "b", "b"];
        let r = reports(&hosts, |f, t| if hosts[f] == hosts[t] { 9.0 } else { 0.3 });
        let report = judge("mpi", &r, &[], 1 << 20, true, true);
        let links = report.steps.iter().find(|s| s.name == "links").unwrap();
        assert!(links.passed, "{}", links.line);
        assert_eq!(report.links.len(), 12);
        assert_eq!(report.links.iter().filter(|l| l.kind == LinkKind::Net).count(), 8);
        assert_eq!(report.hosts.len(), 2);
        assert_eq!(report.hosts[1].ranks, vec![2, 3]);
        assert!(report.steps[0]
            .line
            .contains("4 ranks on 2 hosts: a (ranks 0–1), b (ranks 2–3)"));
    }

    #[test]
    fn a_host_at_a_tenth_is_named_with_every_pair_through_it() {
        let hosts = ["a", "a", "b", "b", "c", "c"];
        let r = reports(&hosts, |f, t| match (hosts[f], hosts[t]) {
            (x, y) if x == y => 9.0,
            ("c", _) | (_, "c") => 0.03,
            _ => 0.3,
        });
        let report = judge("mpi", &r, &[], 1 << 20, true, true);
        let links = report.steps.iter().find(|s| s.name == "links").unwrap();
        assert!(!links.passed);
        assert!(links.line.contains("every one to or from host c"), "{}", links.line);
        for l in &report.links {
            assert_eq!(
                l.slow,
                l.kind == LinkKind::Net && (l.from_host == "c" || l.to_host == "c"),
                "{l:?}"
            );
        }
        let text = render(&report, false);
        assert!(text.contains("slow link: rank 0 (a) → rank 4 (c)"), "{text}");
        // the heat map: rank 4's row is slow towards hosts a and b, fast inside c
        assert!(text.contains("4  ░░ ░░ ░░ ░░  · ██"), "{text}");
    }

    #[test]
    fn a_link_that_looked_slow_but_kept_up_with_its_yardstick_alone_passes() {
        let hosts = ["a", "a", "b", "b"];
        let mut r = reports(&hosts, |f, t| if hosts[f] == hosts[t] { 9.0 } else { 1.0 });
        // 0 → 2 looked slow in the map (a busy moment), but alone kept pace with 1 → 3
        let l = r[2].links.iter_mut().find(|l| l.from == 0).unwrap();
        l.us *= 10.0;
        l.alone = Some(Alone {
            us: 1000.0,
            against_from: 1,
            against_to: 3,
            against_us: 900.0,
        });
        let report = judge("mpi", &r, &[], 1 << 20, true, true);
        assert!(report.links.iter().all(|l| !l.slow), "{:?}", report.links);
        // and one that fell behind it alone too is slow
        r[2].links
            .iter_mut()
            .find(|l| l.from == 0)
            .unwrap()
            .alone
            .as_mut()
            .unwrap()
            .us = 9000.0;
        let report = judge("mpi", &r, &[], 1 << 20, true, true);
        let slow: Vec<_> = report
            .links
            .iter()
            .filter(|l| l.slow)
            .map(|l| (l.from_rank, l.to_rank))
            .collect();
        assert_eq!(slow, vec![(0, 2)]);
        assert!(render(&report, false).contains("alone 0.117 GB/s beside rank 1 → rank 3 at 1.17"));
    }

    #[test]
    fn one_slow_direction_between_two_hosts_is_named_by_its_direction() {
        let hosts = ["a", "b"];
        let r = reports(&hosts, |f, _| if f == 1 { 0.03 } else { 0.3 });
        let report = judge("mpi", &r, &[], 1 << 20, true, true);
        let links = report.steps.iter().find(|s| s.name == "links").unwrap();
        assert!(!links.passed);
        assert!(links.line.contains("rank 1 (b) → rank 0 (a)"), "{}", links.line);
    }

    #[test]
    fn a_quick_map_of_many_ranks_says_what_it_sampled_and_draws_hosts() {
        // 20 ranks on 4 hosts, measured in the quick shifts only
        let hosts: Vec<String> = (0..20).map(|r| format!("h{}", r / 5)).collect();
        let names: Vec<&str> = hosts.iter().map(String::as_str).collect();
        let mut r = reports(&names, |f, t| if f / 5 == t / 5 { 9.0 } else { 1.0 });
        let shifts = link_shifts(20, true);
        for rank in &mut r {
            let to = rank.rank;
            rank.links.retain(|l| shifts.contains(&((to + 20 - l.from) % 20)));
        }
        let report = judge("mpi", &r, &[], 1 << 20, true, true);
        let info = report.link_map.as_ref().unwrap();
        assert_eq!((info.pairs, info.pairs_total), (8 * 20, 380));
        let text = render(&report, true);
        assert!(
            text.contains("quick: 8 of the 19 shifted rounds (k = 1, 3, 6, 8, 11, 13, 16, 19), 160 of 380 pairs"),
            "{text}"
        );
        assert!(text.contains("median per pair of hosts"), "{text}");
        assert!(text.contains("h3                3  ██ ██ ██ ██"), "{text}");
    }

    #[test]
    fn faults_parse_and_bad_ones_say_what_is_expected() {
        assert_eq!("corrupt:1".parse(), Ok(Fault::Corrupt(1)));
        assert_eq!("slow:0".parse(), Ok(Fault::Slow(0)));
        assert!("slow".parse::<Fault>().unwrap_err().contains("slow:RANK"));
    }
}
