//! `ddlab bench`: fixed benchmarks. µs per training step, all-reduce time and bandwidth
//! per algorithm, size and worker count (nccl-tests' algbw and busbw), and single-thread
//! memcpy as the ceiling.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::CliError;
use crate::comm::{thread_group, AllReduceAlgo, BandwidthRow, Clock, Collective, Comm};
use crate::nn::{median, Mlp, Sgd, Threads, Workspace};

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Also write the results as one JSON object.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Fewer sizes and shorter measurements (a smoke test, not for reporting).
    #[arg(long)]
    pub quick: bool,
    /// gpu: also time training steps on the GPU (beside the CPU's, same models) and the
    /// copies between host and GPU (cargo feature gpu).
    #[arg(long, value_name = "cpu|gpu", default_value = "cpu")]
    pub device: crate::gpu::Device,
    /// With --device gpu: the GPU to time (a number from `ddlab check`).
    #[arg(long, value_name = "I", default_value_t = 0)]
    pub gpu: usize,
}

/// One training step on a GPU, phase by phase (medians, µs).
#[derive(Debug, Clone, Serialize)]
pub struct GpuStepBench {
    pub model: String,
    pub batch: usize,
    /// The whole step: forward, backward, to host, to device, update.
    pub median_us: f64,
    pub min_us: f64,
    pub forward_us: f64,
    pub backward_us: f64,
    pub to_host_us: f64,
    pub to_device_us: f64,
    pub update_us: f64,
    /// The same step in two submissions (`GpuNet::fused_step`): no wait after each phase.
    pub fused_us: f64,
    /// The same model and batch on one CPU thread, for comparison.
    pub cpu_median_us: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct KernelBench {
    pub kernel: String,
    pub us: f64,
}

/// Copies between host and GPU of one buffer size.
#[derive(Debug, Clone, Serialize)]
pub struct CopyBench {
    pub bytes: usize,
    pub to_device_gbps: f64,
    pub to_host_gbps: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GpuBenchReport {
    pub gpu: crate::gpu::GpuInfo,
    pub steps: Vec<GpuStepBench>,
    /// Each dispatch of one step of MLP 784-1024-10, batch 256: GPU µs (amortised over
    /// repeats, without the cost of a submission).
    pub kernels: Vec<KernelBench>,
    pub copies: Vec<CopyBench>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepBench {
    pub model: String,
    pub batch: usize,
    /// Compute threads of the one worker (`--threads`).
    pub threads: usize,
    pub median_us: f64,
    pub min_us: f64,
    /// The median of one thread over this one's (1 for one thread).
    pub speedup: f64,
}

/// The default run (`ddlab run`'s experiment) beside `busy` processes that spin.
#[derive(Debug, Clone, Serialize)]
pub struct LoadBench {
    pub busy: usize,
    /// Median steps/s.
    pub steps_per_s: f64,
    /// Against the same run with no busy process beside it.
    pub ratio: f64,
}

/// Steps/s of the default run with `busy` spinning child processes beside it (which it
/// starts and stops itself): the median of `trials`, each `steps` long.
pub fn bench_under_load(busy: &[usize], steps: u64, trials: usize) -> Result<Vec<LoadBench>, String> {
    use crate::config::{Experiment, Length};
    use crate::session::{Session, SessionOptions};
    let exp = Experiment {
        length: Length::Steps(steps),
        ..Experiment::default()
    };
    let data = std::sync::Arc::new(crate::data::Dataset::load(exp.dataset).map_err(|e| e.to_string())?);
    let one = || -> Result<f64, String> {
        let mut s = Session::start_with_data(
            exp.clone(),
            std::sync::Arc::clone(&data),
            SessionOptions::default(),
            None,
        )
        .map_err(|e| e.to_string())?;
        s.run_to_end(|_| {});
        Ok(s.summary().steps_per_sec)
    };
    // Trials of every load interleaved, so that a slow minute of the machine touches all.
    let mut seen: Vec<Vec<f64>> = vec![Vec::new(); busy.len()];
    for _ in 0..trials {
        for (i, &k) in busy.iter().enumerate() {
            let children = Busy::start(k)?;
            std::thread::sleep(Duration::from_millis(300)); // (they get going; ddlab notices)
            let r = one();
            drop(children);
            seen[i].push(r?);
        }
    }
    let medians: Vec<f64> = seen.into_iter().map(median).collect();
    let idle = busy.iter().position(|&k| k == 0).map_or(f64::NAN, |i| medians[i]);
    Ok(busy
        .iter()
        .zip(medians)
        .map(|(&busy, steps_per_s)| LoadBench {
            busy,
            steps_per_s,
            ratio: steps_per_s / idle,
        })
        .collect())
}

/// Processes that keep a core busy (`sh -c 'while :; do :; done'`), ended when dropped.
struct Busy(Vec<std::process::Child>);

impl Busy {
    fn start(k: usize) -> Result<Busy, String> {
        let mut busy = Busy(Vec::new());
        for _ in 0..k {
            let child = std::process::Command::new("sh")
                .args(["-c", "while :; do :; done"])
                .stdin(std::process::Stdio::null())
                .spawn()
                .map_err(|e| format!("cannot start a busy process (sh): {e}"))?;
            busy.0.push(child);
        }
        Ok(busy)
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct MemcpyBench {
    pub bytes: usize,
    pub gbps: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Median µs per training step (forward, backward, update), MLP 64-128-10, batch 64,
    /// one worker on one thread.
    pub step_us: f64,
    pub steps: Vec<StepBench>,
    /// MLP 784-1024-10, batch 256, on 1, 2, 4, … threads up to the cores (`--threads`).
    pub thread_steps: Vec<StepBench>,
    /// Single-thread memcpy bandwidth of a 4 MB buffer, GB/s.
    pub memcpy_gbps: f64,
    pub memcpy: Vec<MemcpyBench>,
    pub allreduce: Vec<BandwidthRow>,
    /// Median milliseconds to draw one lab frame of 16 workers at 200×60.
    pub tui_frame_ms: f64,
    /// The default run beside 0, 1 and 2 busy processes.
    pub under_load: Vec<LoadBench>,
    /// With --device gpu.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuBenchReport>,
}

/// Median ms to render the lab with `workers` scripted workers into a `w`×`h` buffer.
pub fn bench_frame(workers: usize, (w, h): (u16, u16), frames: usize) -> f64 {
    use crate::tui::{demo::sync_lab, theme::Theme, view, App, Screen};
    // A long run: the curves hold thousands of records, as after minutes of training.
    let lab = sync_lab(workers, 3000, false);
    let data = std::sync::Arc::clone(&lab.data);
    let app = App::new(
        Screen::Lab,
        Some(lab),
        crate::config::Experiment::default(),
        data,
        Theme { color: true },
    );
    let area = ratatui::layout::Rect::new(0, 0, w, h);
    let times: Vec<f64> = (0..frames)
        .map(|_| {
            let mut buf = ratatui::buffer::Buffer::empty(area);
            let t = Instant::now();
            view::render(&app, area, &mut buf);
            std::hint::black_box(&buf);
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    median(times)
}

/// Median and minimum µs of one training step of an MLP with `sizes`, on one thread.
pub fn bench_step(sizes: &[usize], batch: usize, steps: usize) -> StepBench {
    bench_steps_on(sizes, batch, steps, &[1], 1).remove(0)
}

/// One worker's training step (forward, backward, update) of an MLP with `sizes` on
/// each thread count of `threads`, as `--threads` runs it. The counts take turns for
/// `rounds` rounds of `steps` steps, so that a burst of load from elsewhere falls on all
/// of them alike; medians and minima over every step.
pub fn bench_steps_on(sizes: &[usize], batch: usize, steps: usize, threads: &[usize], rounds: usize) -> Vec<StepBench> {
    crate::nn::flush_denormals();
    let (inputs, classes) = (sizes[0], *sizes.last().expect("sizes"));
    let mlp = Mlp::new(inputs, &sizes[1..sizes.len() - 1], classes);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let x = Array2::from_shape_fn((batch, inputs), |_| rng.random_range(0.0..1.0f32));
    let y: Vec<u8> = (0..batch).map(|i| (i % classes) as u8).collect();
    let mut start = vec![0.0; mlp.num_params()];
    mlp.init(&mut start, 1);
    let mut runs: Vec<_> = threads
        .iter()
        .map(|&t| {
            let pool =
                Threads::new(t, |_| crate::comm::worker_thread()).expect("the OS starts the benchmark's threads");
            let ws = Workspace::with_threads(&mlp, batch, pool);
            let sgd = Sgd::new(mlp.num_params(), 0.9, 0.0);
            (
                ws,
                sgd,
                start.clone(),
                vec![0.0; mlp.num_params()],
                Vec::with_capacity(steps * rounds),
            )
        })
        .collect();
    for _ in 0..rounds {
        for (ws, sgd, params, grads, times) in runs.iter_mut() {
            for i in 0..steps + steps / 4 {
                let t = Instant::now();
                mlp.loss_and_grad(params, &x.view(), &y, ws, grads);
                ws.threads().run(|par| sgd.step_on(par, params, grads, 1e-3));
                if i >= steps / 4 {
                    times.push(t.elapsed().as_secs_f64() * 1e6); // after a warm-up quarter
                }
            }
        }
    }
    let name = sizes.iter().map(ToString::to_string).collect::<Vec<_>>().join("-");
    let medians: Vec<f64> = runs.iter().map(|r| median(r.4.clone())).collect();
    runs.into_iter()
        .zip(&medians)
        .map(|((ws, .., times), &median_us)| StepBench {
            model: name.clone(),
            batch,
            threads: ws.threads().count(),
            min_us: times.iter().copied().fold(f64::INFINITY, f64::min),
            median_us,
            speedup: medians[0] / median_us,
        })
        .collect()
}

/// A training step on GPU `index` for an MLP with `sizes` (as in training: forward,
/// backward, gradient to the host, back to the device, update), against the CPU's.
#[cfg(feature = "gpu")]
pub fn bench_gpu_step(index: usize, sizes: &[usize], batch: usize, steps: usize) -> Result<GpuStepBench, String> {
    let (inputs, classes) = (sizes[0], *sizes.last().expect("sizes"));
    let mlp = Mlp::new(inputs, &sizes[1..sizes.len() - 1], classes);
    let gpu = crate::gpu::open(index).map_err(|e| e.to_string())?;
    let mut net = crate::gpu::GpuNet::new(gpu, &mlp, batch).map_err(|e| e.to_string())?;
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let x: Vec<f32> = (0..batch * inputs).map(|_| rng.random_range(0.0..1.0f32)).collect();
    let y: Vec<u8> = (0..batch).map(|i| (i % classes) as u8).collect();
    let mut params = vec![0.0; mlp.num_params()];
    mlp.init(&mut params, 1);
    net.set_params(&params).map_err(|e| e.to_string())?;
    net.set_velocity(&vec![0.0; params.len()]).map_err(|e| e.to_string())?;
    let mut grads = vec![0.0; mlp.num_params()];
    let mut phases: [Vec<f64>; 6] = Default::default();
    let us = |t: Instant| t.elapsed().as_secs_f64() * 1e6;
    for i in 0..steps + steps / 4 {
        // Instants between the phases: the step's, then each phase's, durations.
        let mut marks = [Instant::now(); 6];
        net.forward(&x, &y).map_err(|e| e.to_string())?;
        marks[1] = Instant::now();
        net.backward().map_err(|e| e.to_string())?;
        marks[2] = Instant::now();
        net.grads_to_host(&mut grads).map_err(|e| e.to_string())?;
        marks[3] = Instant::now();
        net.grads_to_device(&grads).map_err(|e| e.to_string())?;
        marks[4] = Instant::now();
        net.update(1e-3, 0.9, 0.0).map_err(|e| e.to_string())?;
        marks[5] = Instant::now();
        if i >= steps / 4 {
            let span = |a: usize, b: usize| (marks[b] - marks[a]).as_secs_f64() * 1e6;
            phases[0].push(span(0, 5));
            for k in 0..5 {
                phases[k + 1].push(span(k, k + 1));
            }
        }
    }
    let mut fused = Vec::with_capacity(steps);
    for i in 0..steps + steps / 4 {
        let t0 = Instant::now();
        net.fused_step(&x, &y, &mut grads, |_| {}, (1e-3, 0.9, 0.0))
            .map_err(|e| e.to_string())?;
        if i >= steps / 4 {
            fused.push(us(t0));
        }
    }
    let cpu = bench_step(sizes, batch, steps);
    let min_us = phases[0].iter().copied().fold(f64::INFINITY, f64::min);
    let [step, forward, backward, to_host, to_device, update] = phases.map(median);
    Ok(GpuStepBench {
        model: cpu.model,
        batch,
        median_us: step,
        min_us,
        forward_us: forward,
        backward_us: backward,
        to_host_us: to_host,
        to_device_us: to_device,
        update_us: update,
        fused_us: median(fused),
        cpu_median_us: cpu.median_us,
    })
}

/// The GPU part of `ddlab bench --device gpu`.
#[cfg(feature = "gpu")]
fn bench_gpu(args: &BenchArgs) -> Result<GpuBenchReport, CliError> {
    let found = crate::gpu::list().map_err(CliError::usage)?;
    let info = found.get(args.gpu).cloned().ok_or_else(|| {
        CliError::usage(format!(
            "--gpu: there is no GPU {}: this machine has {}; use a number from 0 to {}",
            args.gpu,
            found.len(),
            found.len().saturating_sub(1)
        ))
    })?;
    say!(
        "\ntraining step on {} [{}] (each phase waited for; fused: the step in two submissions; µs, medians)",
        info.label(),
        info.kind
    );
    say!(
        "  {:<13} {:>5} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}   {:>9} {:>9}",
        "MLP",
        "batch",
        "step",
        "forward",
        "backward",
        "to host",
        "to dev",
        "update",
        "fused",
        "CPU step"
    );
    let iters = if args.quick { 20 } else { 200 };
    let models: [(&[usize], usize); 3] = [(&[64, 128, 10], 64), (&[784, 128, 10], 64), (&[784, 1024, 10], 256)];
    let mut steps = Vec::new();
    for (sizes, batch) in models {
        let s = bench_gpu_step(args.gpu, sizes, batch, iters).map_err(CliError::failure)?;
        say!(
            "  {:<13} {:>5} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}   {:>9.1} {:>9.1}",
            s.model,
            s.batch,
            s.median_us,
            s.forward_us,
            s.backward_us,
            s.to_host_us,
            s.to_device_us,
            s.update_us,
            s.fused_us,
            s.cpu_median_us
        );
        steps.push(s);
    }
    let repeat = if args.quick { 2 } else { 20 };
    say!("\neach dispatch of a step of MLP 784-1024-10, batch 256 (GPU µs, amortised over {repeat} in one pass)");
    let kernels: Vec<KernelBench> = {
        let mlp = Mlp::new(784, &[1024], 10);
        let gpu = crate::gpu::open(args.gpu).map_err(|e| CliError::failure(e.to_string()))?;
        let net = crate::gpu::GpuNet::new(gpu, &mlp, 256).map_err(|e| CliError::failure(e.to_string()))?;
        net.set_params(&vec![0.01; mlp.num_params()])
            .map_err(|e| CliError::failure(e.to_string()))?;
        let times = net.kernel_times(repeat).map_err(|e| CliError::failure(e.to_string()))?;
        times
            .into_iter()
            .map(|(kernel, us)| KernelBench { kernel, us })
            .collect()
    };
    for k in &kernels {
        say!("  {:>9.1}  {}", k.us, k.kernel);
    }
    say!("\ncopies between host and {} (GB/s, medians)", info.label());
    let gpu = crate::gpu::open(args.gpu).map_err(|e| CliError::failure(e.to_string()))?;
    let mut copies = Vec::new();
    let sizes: &[usize] = if args.quick {
        &[1 << 20]
    } else {
        &[64 << 10, 1 << 20, 16 << 20, 64 << 20]
    };
    for &bytes in sizes {
        let (to_device_gbps, to_host_gbps) = crate::gpu::copy_bandwidth(&gpu, bytes, if args.quick { 3 } else { 20 })
            .map_err(|e| CliError::failure(e.to_string()))?;
        say!(
            "  {:>10}: to device {:>7.2}   to host {:>7.2}",
            super::run::binary_bytes(bytes),
            to_device_gbps,
            to_host_gbps
        );
        copies.push(CopyBench {
            bytes,
            to_device_gbps,
            to_host_gbps,
        });
    }
    Ok(GpuBenchReport {
        gpu: info,
        steps,
        kernels,
        copies,
    })
}

#[cfg(not(feature = "gpu"))]
fn bench_gpu(_args: &BenchArgs) -> Result<GpuBenchReport, CliError> {
    Err(CliError::usage(crate::gpu::not_built()))
}

const TRIALS: usize = 5;

/// Time of one all-reduce of `bytes` across `workers` threads: the median of five trials,
/// each the mean over many calls, timed by its slowest rank.
pub fn bench_allreduce(algo: AllReduceAlgo, workers: usize, bytes: usize, budget: Duration) -> BandwidthRow {
    let len = bytes / 4;
    let group = thread_group(workers, Clock::start(), None, false);
    let times: Vec<Vec<f64>> = std::thread::scope(|s| {
        let handles: Vec<_> = group
            .into_iter()
            .map(|t| {
                s.spawn(move || {
                    crate::comm::worker_thread();
                    let mut comm = Comm::new(t, algo);
                    let mut buf = vec![0.0f32; len]; // zeros stay zeros: no overflow to inf over thousands of sums
                    let mut once = || comm.all_reduce_sum(&mut buf).expect("no one aborts a benchmark");
                    once();
                    once();
                    // Rank 0 sizes the run from one timed call; everyone follows it.
                    let t0 = Instant::now();
                    once();
                    let mut iters =
                        [(budget.as_secs_f64() / t0.elapsed().as_secs_f64().max(1e-9)).clamp(3.0, 2000.0) as f32];
                    comm.broadcast(&mut iters, 0).expect("broadcast");
                    // Several trials, so that a burst of noise from elsewhere on the
                    // machine spoils one trial rather than the figure.
                    let per_trial = (iters[0] as usize).div_ceil(TRIALS).max(1);
                    (0..TRIALS)
                        .map(|_| {
                            comm.barrier().expect("barrier");
                            let start = Instant::now();
                            for _ in 0..per_trial {
                                comm.all_reduce_sum(&mut buf).expect("no one aborts a benchmark");
                            }
                            start.elapsed().as_secs_f64() / per_trial as f64
                        })
                        .collect::<Vec<f64>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("benchmark thread"))
            .collect()
    });
    // A trial is done when its slowest rank is done; report the median trial.
    let trials: Vec<f64> = (0..TRIALS)
        .map(|i| times.iter().map(|r| r[i]).fold(0.0, f64::max))
        .collect();
    BandwidthRow::new(algo.name(), workers, bytes, median(trials) * 1e6)
}

pub fn bench_memcpy(bytes: usize, budget: Duration) -> MemcpyBench {
    let src = vec![1.0f32; bytes / 4];
    let mut dst = vec![0.0f32; bytes / 4];
    dst.copy_from_slice(&src);
    let start = Instant::now();
    let mut iters = 0u32;
    while start.elapsed() < budget || iters < 3 {
        dst.copy_from_slice(std::hint::black_box(&src));
        std::hint::black_box(&mut dst);
        iters += 1;
    }
    MemcpyBench {
        bytes,
        gbps: bytes as f64 * f64::from(iters) / start.elapsed().as_secs_f64() / 1e9,
    }
}

pub fn bench(args: &BenchArgs) -> Result<(), CliError> {
    // Open the output first: a bad path should fail before a minute of measuring.
    let out = args
        .json
        .as_deref()
        .map(|p| super::create_output("json", p))
        .transpose()?;
    // A GPU that cannot be used says so before the CPU's minute of measuring.
    if args.device == crate::gpu::Device::Gpu {
        crate::gpu::list().map_err(CliError::usage)?;
    }
    let (step_iters, budget) = if args.quick {
        (200, Duration::from_millis(10))
    } else {
        (4000, Duration::from_millis(150))
    };
    let sizes: Vec<usize> = if args.quick {
        vec![4 << 10, 1 << 20]
    } else {
        (0..7).map(|i| (4 << 10) << (2 * i)).collect()
    };
    let workers: &[usize] = if args.quick { &[2, 4] } else { &[2, 4, 8] };

    say!("training step (forward + backward + update, one thread)");
    let steps = vec![
        bench_step(&[64, 128, 10], 64, step_iters),
        bench_step(&[784, 128, 10], 64, step_iters / 4),
    ];
    for s in &steps {
        say!(
            "  MLP {:<12} batch {:>3}: median {:>8.1} µs   min {:>8.1} µs",
            s.model,
            s.batch,
            s.median_us,
            s.min_us
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    say!("\ntraining step of one worker on T threads (--threads T), MLP 784-1024-10, batch 256, {cores} cores");
    let counts: Vec<usize> = std::iter::successors(Some(1usize), |t| Some(t * 2))
        .take_while(|&t| t < cores)
        .chain([cores, 2])
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let (thread_steps_each, rounds) = if args.quick { (4, 2) } else { (20, 5) };
    let thread_steps = bench_steps_on(&[784, 1024, 10], 256, thread_steps_each, &counts, rounds);
    for s in &thread_steps {
        say!(
            "  T = {:<3}: median {:>9.1} µs   min {:>9.1} µs   speed-up {:>5.2}×",
            s.threads,
            s.median_us,
            s.min_us,
            s.speedup
        );
    }
    say!("\nmemcpy, one thread");
    let memcpy: Vec<MemcpyBench> = [4 << 20, 64 << 20].iter().map(|&b| bench_memcpy(b, budget)).collect();
    for m in &memcpy {
        say!("  {:>10}: {:>7.2} GB/s", super::run::binary_bytes(m.bytes), m.gbps);
    }
    say!("\nall-reduce across threads (algbw = bytes/time, busbw = algbw·2(N−1)/N)");
    say!(
        "  {:<6} {:>3} {:>10} {:>12} {:>11} {:>11}",
        "algo",
        "N",
        "bytes",
        "time µs",
        "algbw GB/s",
        "busbw GB/s"
    );
    let mut allreduce = Vec::new();
    for algo in AllReduceAlgo::FLAT {
        for &n in workers {
            for &bytes in &sizes {
                let r = bench_allreduce(algo, n, bytes, budget);
                say!(
                    "  {:<6} {:>3} {:>10} {:>12.1} {:>11.2} {:>11.2}",
                    r.algorithm,
                    r.workers,
                    super::run::binary_bytes(r.bytes),
                    r.time_us,
                    r.algbw_gbps,
                    r.busbw_gbps
                );
                allreduce.push(r);
            }
        }
    }
    let tui_frame_ms = bench_frame(16, (200, 60), if args.quick { 10 } else { 200 });
    say!("\nlab frame, 16 workers, 200×60: {tui_frame_ms:.2} ms (median)");
    say!("\nthe default run (`ddlab run`) beside busy processes (each spins on a core)");
    let (load_steps, trials) = if args.quick { (300, 1) } else { (2000, 3) };
    let under_load = bench_under_load(&[0, 1, 2], load_steps, trials).map_err(CliError::failure)?;
    for r in &under_load {
        say!(
            "  {} busy: {:>8.0} steps/s  {:>5.2}× of idle",
            r.busy,
            r.steps_per_s,
            r.ratio
        );
    }
    let gpu = match args.device {
        crate::gpu::Device::Gpu => Some(bench_gpu(args)?),
        crate::gpu::Device::Cpu => None,
    };
    let report = BenchReport {
        step_us: steps[0].median_us,
        steps,
        thread_steps,
        memcpy_gbps: memcpy[0].gbps,
        memcpy,
        allreduce,
        tui_frame_ms,
        under_load,
        gpu,
    };
    if let Some(file) = out {
        serde_json::to_writer_pretty(file, &report)
            .map_err(|e| CliError::failure(format!("--json: writing failed: {e}")))?;
    }
    Ok(())
}
