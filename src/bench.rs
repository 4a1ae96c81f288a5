//! Fixed benchmarks, for `ddlab bench` and `benches/`: µs per training step (one thread,
//! and on `--threads` pools), all-reduce time and bandwidth per algorithm, size and
//! worker count (nccl-tests' algbw and busbw), single-thread memcpy as the ceiling, the
//! default run beside busy processes, and a GPU step phase by phase. A diagnostic, as
//! `check` is: front ends print what it measures.

use std::time::{Duration, Instant};

use ndarray::Array2;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use crate::comm::{thread_group, AllReduceAlgo, BandwidthRow, Clock, Collective, Comm};
use crate::nn::{median, Mlp, Sgd, Threads, Workspace};

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
