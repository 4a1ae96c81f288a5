//! The cluster sanity check's ladder, run by every rank over any [`Transport`]: who is
//! here, are the collectives exact, how fast are they and every ring link, and does
//! distributed training equal training on one rank. Each rank measures; rank 0 collects
//! the [`RankReport`]s and [`judge`]s them.

use std::time::Instant;

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use crate::comm::{all_reduce_sum, broadcast, AllReduceAlgo, BandwidthRow, Op, Tag, Transport};
use crate::config::{Experiment, Length};
use crate::data::{Dataset, Sharder};
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
    /// Bytes each rank sends its ring neighbour in the link test.
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

/// One rank's median time for one all-reduce.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    pub algorithm: String,
    pub bytes: usize,
    pub time_us: f64,
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
    /// Median time of the link test's message from the left ring neighbour, µs.
    pub link_us: f64,
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

fn bytes_label(b: usize) -> String {
    match b {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KB", b >> 10),
        b => format!("{b} B"),
    }
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
        link_us: 0.0,
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
            let what = format!("{algo} all-reduce of {}", bytes_label(bytes));
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

    // 3. Bandwidth and latency.
    for &algo in &opts.algorithms {
        for &bytes in &opts.sizes {
            let len = (bytes / 4).max(1);
            let budget: usize = if opts.quick { 8 << 20 } else { 64 << 20 };
            let iters = (budget / bytes.max(1)).clamp(3, if opts.quick { 30 } else { 200 });
            let send: Vec<f32> = (0..len).map(|i| pattern(rank, i)).collect();
            let mut buf = send.clone();
            let mut times = Vec::with_capacity(iters);
            for it in 0..=iters {
                t.barrier()?;
                let t0 = Instant::now();
                if algo == AllReduceAlgo::Mpi {
                    t.library_all_reduce_into(&send, &mut buf)?;
                } else {
                    buf.copy_from_slice(&send);
                    all_reduce_sum(t, algo, &mut buf, &mut scratch)?;
                }
                if it > 0 {
                    times.push(t0.elapsed().as_secs_f64() * 1e6);
                }
            }
            report.timings.push(Timing {
                algorithm: algo.name().into(),
                bytes,
                time_us: crate::nn::median(times),
            });
        }
    }

    // Ring neighbours, one link at a time: rank r sends to r+1, which times the arrival
    // (so a slow sender or a slow wire shows on exactly that link).
    if n > 1 {
        let len = (opts.link_bytes / 4).max(1);
        let out = vec![1.0f32; len];
        let mut into = vec![0.0f32; len];
        for from in 0..n {
            let to = (from + 1) % n;
            let mut times = Vec::new();
            for it in 0..=5 {
                t.barrier()?;
                let t0 = Instant::now();
                if rank == from {
                    if opts.fault == Some(Fault::Slow(rank)) {
                        std::thread::sleep(std::time::Duration::from_millis(25));
                    }
                    t.send(to, &out, Tag::default())?;
                }
                if rank == to {
                    t.recv(from, &mut into, Op::Copy)?;
                    if it > 0 {
                        times.push(t0.elapsed().as_secs_f64() * 1e6);
                    }
                }
            }
            if rank == to {
                report.link_us = crate::nn::median(times);
            }
        }
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
    let mut x = Array2::<f32>::zeros((exp.batch, mlp.inputs()));
    let mut labels = vec![0u8; exp.batch];
    // The gradient, and the loss summed over ranks in the last slot.
    let mut grads = vec![0.0f32; p + 1];
    let mut scratch = Vec::new();
    let (mut first, mut last) = (0.0, 0.0);
    let spe = sharder.steps_per_epoch();
    let mut perm = (u64::MAX, Vec::new());
    for step in 0..steps {
        if perm.0 != step / spe {
            perm = (step / spe, sharder.permutation(step / spe));
        }
        for (row, &i) in sharder.batch(&perm.1, step % spe, rank).iter().enumerate() {
            x.row_mut(row).assign(&data.train_x.row(i as usize));
            labels[row] = data.train_y[i as usize];
        }
        let xv = x.view();
        mlp.forward(&params, &xv, &mut ws);
        let score = mlp.loss(&labels, &mut ws);
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

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LinkRow {
    pub from: usize,
    pub to: usize,
    pub from_host: String,
    pub to_host: String,
    pub gbps: f64,
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
    pub warnings: Vec<String>,
    pub wrong: Vec<Wrong>,
    pub bandwidth: Vec<CheckRow>,
    pub peak_busbw: Option<CheckRow>,
    pub links: Vec<LinkRow>,
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
    let hosts: std::collections::BTreeSet<&str> = reports.iter().map(|r| r.host.as_str()).collect();
    if under_launcher && n == 1 {
        warnings.push(
            "world size is 1 under mpirun: every process thinks it is alone (is this ddlab built with --features mpi, and the mpirun from the same MPI as the one it links?)".into(),
        );
    }
    if hostfile && hosts.len() == 1 && n > 1 {
        warnings.push(format!(
            "a hostfile was given but all {n} ranks run on {}: check the hostfile's slots and mpirun's mapping options",
            hosts.iter().next().copied().unwrap_or("?")
        ));
    }
    steps.push(Step {
        name: "ranks".into(),
        passed: true,
        line: format!(
            "{n} rank{} on {} host{}",
            if n == 1 { "" } else { "s" },
            hosts.len(),
            if hosts.len() == 1 { "" } else { "s" }
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
                bytes_label(p.row.bytes),
                bandwidth.iter().map(|b| b.row.time_us).fold(f64::INFINITY, f64::min)
            ),
            _ => "one rank: nothing to measure".into(),
        },
    });

    // Links: link (r−1 → r) as rank r saw it.
    let mut links = Vec::new();
    if n > 1 {
        for r in reports {
            let from = (r.rank + n - 1) % n;
            links.push(LinkRow {
                from,
                to: r.rank,
                from_host: reports[from].host.clone(),
                to_host: r.host.clone(),
                gbps: link_bytes as f64 / (r.link_us * 1e-6).max(1e-9) / 1e9,
            });
        }
        let fastest = links.iter().map(|l| l.gbps).fold(0.0, f64::max);
        let slow: Vec<&LinkRow> = links.iter().filter(|l| l.gbps < fastest / 4.0).collect();
        let slowest = links.iter().min_by(|a, b| a.gbps.total_cmp(&b.gbps));
        steps.push(Step {
            name: "links".into(),
            passed: slow.is_empty(),
            line: match (slow.first(), slowest) {
                (Some(l), _) => format!(
                    "slow link: rank {} ({}) → rank {} ({}) at {:.2} GB/s, under a quarter of the fastest ({fastest:.2} GB/s)",
                    l.from, l.from_host, l.to, l.to_host, l.gbps
                ),
                (None, Some(l)) => format!(
                    "ring neighbours {:.2} to {fastest:.2} GB/s; slowest rank {} → rank {}",
                    l.gbps, l.from, l.to
                ),
                (None, None) => String::new(),
            },
        });
    }

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
        warnings,
        wrong,
        bandwidth,
        peak_busbw,
        links,
        training_max_relative_diff: diff,
        training_first_loss: first,
        training_last_loss: last,
        steps,
        passed,
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
                        bytes_label(b.row.bytes),
                        b.row.time_us,
                        b.row.algbw_gbps,
                        b.row.busbw_gbps,
                        b.spread * 100.0,
                        b.late_rank
                    );
                }
            }
            "links" => {
                for l in &report.links {
                    let _ = writeln!(s, "    rank {} → rank {}: {:.2} GB/s", l.from, l.to, l.gbps);
                }
            }
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
    fn faults_parse_and_bad_ones_say_what_is_expected() {
        assert_eq!("corrupt:1".parse(), Ok(Fault::Corrupt(1)));
        assert_eq!("slow:0".parse(), Ok(Fault::Slow(0)));
        assert!("slow".parse::<Fault>().unwrap_err().contains("slow:RANK"));
    }
}
