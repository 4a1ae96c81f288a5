//! `ddlab bench`: runs the fixed benchmarks of [`crate::bench`] and prints them (and
//! writes them as JSON).

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::ExitError;
use crate::bench::{
    bench_allreduce, bench_memcpy, bench_step, bench_steps_on, bench_under_load, BenchReport, GpuBenchReport,
    MemcpyBench,
};
#[cfg(feature = "gpu")]
use crate::bench::{bench_gpu_step, CopyBench, KernelBench};
use crate::session::AllReduceAlgo;

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
    pub device: crate::session::Device,
    /// With --device gpu: the GPU to time (a number from `ddlab check`).
    #[arg(long, value_name = "I", default_value_t = 0)]
    pub gpu: usize,
}

/// The GPU part of `ddlab bench --device gpu`.
#[cfg(feature = "gpu")]
fn bench_gpu(args: &BenchArgs) -> Result<GpuBenchReport, ExitError> {
    let found = crate::gpu::list().map_err(ExitError::usage)?;
    let info = found.get(args.gpu).cloned().ok_or_else(|| {
        ExitError::usage(format!(
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
        let s = bench_gpu_step(args.gpu, sizes, batch, iters).map_err(ExitError::failure)?;
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
        let mlp = crate::nn::Mlp::new(784, &[1024], 10);
        let gpu = crate::gpu::open(args.gpu).map_err(|e| ExitError::failure(e.to_string()))?;
        let net = crate::gpu::GpuNet::new(gpu, &mlp, 256).map_err(|e| ExitError::failure(e.to_string()))?;
        net.set_params(&vec![0.01; mlp.num_params()])
            .map_err(|e| ExitError::failure(e.to_string()))?;
        let times = net
            .kernel_times(repeat)
            .map_err(|e| ExitError::failure(e.to_string()))?;
        times
            .into_iter()
            .map(|(kernel, us)| KernelBench { kernel, us })
            .collect()
    };
    for k in &kernels {
        say!("  {:>9.1}  {}", k.us, k.kernel);
    }
    say!("\ncopies between host and {} (GB/s, medians)", info.label());
    let gpu = crate::gpu::open(args.gpu).map_err(|e| ExitError::failure(e.to_string()))?;
    let mut copies = Vec::new();
    let sizes: &[usize] = if args.quick {
        &[1 << 20]
    } else {
        &[64 << 10, 1 << 20, 16 << 20, 64 << 20]
    };
    for &bytes in sizes {
        let (to_device_gbps, to_host_gbps) = crate::gpu::copy_bandwidth(&gpu, bytes, if args.quick { 3 } else { 20 })
            .map_err(|e| ExitError::failure(e.to_string()))?;
        say!(
            "  {:>10}: to device {:>7.2}   to host {:>7.2}",
            crate::units::bytes(bytes as u64),
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
fn bench_gpu(_args: &BenchArgs) -> Result<GpuBenchReport, ExitError> {
    Err(ExitError::usage(crate::gpu::not_built()))
}

pub fn bench(args: &BenchArgs) -> Result<(), ExitError> {
    // Open the output first: a bad path should fail before a minute of measuring.
    let out = args
        .json
        .as_deref()
        .map(|p| super::create_output("json", p))
        .transpose()?;
    // A GPU that cannot be used says so before the CPU's minute of measuring.
    if args.device == crate::session::Device::Gpu {
        crate::gpu::list().map_err(ExitError::usage)?;
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
        say!("  {:>10}: {:>7.2} GB/s", crate::units::bytes(m.bytes as u64), m.gbps);
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
                    crate::units::bytes(r.bytes as u64),
                    r.time_us,
                    r.algbw_gbps,
                    r.busbw_gbps
                );
                allreduce.push(r);
            }
        }
    }
    let tui_frame_ms = crate::tui::demo::frame_ms(16, (200, 60), if args.quick { 10 } else { 200 });
    say!("\nlab frame, 16 workers, 200×60: {tui_frame_ms:.2} ms (median)");
    say!("\nthe default run (`ddlab run`) beside busy processes (each spins on a core)");
    let (load_steps, trials) = if args.quick { (300, 1) } else { (2000, 3) };
    let under_load = bench_under_load(&[0, 1, 2], load_steps, trials).map_err(ExitError::failure)?;
    for r in &under_load {
        say!(
            "  {} busy: {:>8.0} steps/s  {:>5.2}× of idle",
            r.busy,
            r.steps_per_s,
            r.ratio
        );
    }
    let gpu = match args.device {
        crate::session::Device::Gpu => Some(bench_gpu(args)?),
        crate::session::Device::Cpu => None,
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
            .map_err(|e| ExitError::failure(format!("--json: writing failed: {e}")))?;
    }
    Ok(())
}
