//! Where a worker computes: on the CPU (the `nn` code on host buffers) or on a GPU (the
//! same network in GPU buffers, `crate::gpu`). The engines call the same phases on
//! either; on a GPU the gradient's trips between device and host are phases of their
//! own (`ToHost`, `ToDevice`).

use ndarray::ArrayView2;

use super::ctx::{RunCtx, SegEnd};
use super::Phase;
use crate::nn::{BatchScore, Sgd, Threads, Workspace};

/// One worker's compute for one segment.
pub(super) enum Compute {
    Cpu(Workspace),
    #[cfg(feature = "gpu")]
    Gpu(Box<crate::gpu::GpuNet>),
}

#[cfg(feature = "gpu")]
fn failed(e: crate::gpu::GpuError) -> SegEnd {
    SegEnd::Failed(e.to_string())
}

impl Compute {
    /// Worker `worker`'s compute (on a GPU: the GPU `--gpus` gives it, round-robin; for
    /// a process per worker, by its rank on its host), on `threads` CPU threads.
    pub fn new(ctx: &RunCtx, worker: usize, threads: usize) -> Result<Compute, SegEnd> {
        // Every thread that trains flushes subnormals (the pool's threads do it as they
        // start), so that one thread and many compute the same bits.
        crate::nn::flush_denormals();
        match ctx.exp.device {
            crate::config::Device::Cpu => {
                let pool = Self::threads(threads)?;
                Ok(Compute::Cpu(Workspace::with_threads(&ctx.mlp, ctx.exp.batch, pool)))
            }
            #[cfg(feature = "gpu")]
            crate::config::Device::Gpu => {
                let index = crate::gpu::gpu_of(&ctx.exp.gpus, worker, ctx.gpus.len());
                let gpu = crate::gpu::open(index).map_err(failed)?;
                let net = crate::gpu::GpuNet::new(gpu, &ctx.mlp, ctx.exp.batch).map_err(failed)?;
                Ok(Compute::Gpu(Box::new(net)))
            }
            #[cfg(not(feature = "gpu"))]
            crate::config::Device::Gpu => {
                let _ = worker;
                Err(SegEnd::Failed(crate::gpu::not_built()))
            }
        }
    }

    /// A worker's pool of `count` threads. Not pinned to cores, as the workers are
    /// not (see `comm::worker_thread`: a pinned thread cannot leave a core another
    /// program holds); the worker's own thread waits in the pool while it computes.
    fn threads(count: usize) -> Result<Threads, SegEnd> {
        Threads::new(count, |_| crate::comm::worker_thread()).map_err(SegEnd::Failed)
    }

    /// Makes the device hold `params` (and `velocity`, when given), e.g. at the start
    /// of a segment. Not a phase: the CPU needs nothing.
    pub fn load(&mut self, params: &[f32], velocity: Option<&[f32]>) -> Result<(), SegEnd> {
        match self {
            Compute::Cpu(_) => {
                let _ = (params, velocity);
                Ok(())
            }
            #[cfg(feature = "gpu")]
            Compute::Gpu(net) => {
                net.set_params(params).map_err(failed)?;
                if let Some(v) = velocity {
                    net.set_velocity(v).map_err(failed)?;
                }
                Ok(())
            }
        }
    }

    /// Brings the device's parameters (and momentum) into `params` (and `sgd`), e.g. to
    /// evaluate them or to end a segment. The CPU's are there already.
    pub fn store(&mut self, params: &mut [f32], sgd: Option<&mut Sgd>) -> Result<(), SegEnd> {
        match self {
            Compute::Cpu(_) => {
                let _ = (params, sgd);
                Ok(())
            }
            #[cfg(feature = "gpu")]
            Compute::Gpu(net) => {
                net.params(params).map_err(failed)?;
                if let Some(sgd) = sgd {
                    let mut v = vec![0.0; params.len()];
                    net.velocity(&mut v).map_err(failed)?;
                    sgd.set_velocity(&v);
                }
                Ok(())
            }
        }
    }

    /// Pulled parameters onto the device: the `ToDevice` phase of a parameter-server
    /// worker on a GPU (nothing on the CPU).
    pub fn pulled(
        &mut self,
        ctx: &RunCtx,
        (worker, step): (usize, u64),
        phase_ns: &mut [u64; Phase::COUNT],
        params: &[f32],
    ) -> Result<(), SegEnd> {
        match self {
            Compute::Cpu(_) => {
                let _ = (ctx, worker, step, phase_ns, params);
                Ok(())
            }
            #[cfg(feature = "gpu")]
            Compute::Gpu(net) => ctx
                .phase(worker, step, Phase::ToDevice, phase_ns, || net.set_params(params))?
                .map_err(failed),
        }
    }

    /// The forward phase: the batch through the network (the CPU's `params`, or the
    /// device's own), scored.
    pub fn forward(
        &mut self,
        ctx: &RunCtx,
        (worker, step): (usize, u64),
        phase_ns: &mut [u64; Phase::COUNT],
        params: &[f32],
        (x, labels): (&ArrayView2<f32>, &[u8]),
    ) -> Result<BatchScore, SegEnd> {
        let mlp = &ctx.mlp;
        if let Some(at) = injected_failure() {
            if step >= at {
                return Err(SegEnd::Failed(
                    "its compute failed (a failure injected with DDLAB_FAIL_AT_STEP)".into(),
                ));
            }
        }
        match self {
            Compute::Cpu(ws) => ctx.phase(worker, step, Phase::Forward, phase_ns, || {
                mlp.forward(params, x, ws);
                mlp.loss(labels, ws)
            }),
            #[cfg(feature = "gpu")]
            Compute::Gpu(net) => {
                let _ = params;
                let x = x.as_slice().expect("the batch is one contiguous block");
                ctx.phase(worker, step, Phase::Forward, phase_ns, || net.forward(x, labels))?
                    .map_err(failed)
            }
        }
    }

    /// The backward phase after `forward`, the gradient ending in `grads` on the host (on
    /// a GPU through a `ToHost` phase). A straggler's slow-down applies to forward and
    /// backward.
    pub fn backward(
        &mut self,
        ctx: &RunCtx,
        (worker, step): (usize, u64),
        phase_ns: &mut [u64; Phase::COUNT],
        params: &[f32],
        x: &ArrayView2<f32>,
        grads: &mut [f32],
    ) -> Result<(), SegEnd> {
        let forward_ns = phase_ns[Phase::Forward.index()];
        match self {
            Compute::Cpu(ws) => ctx.phase(worker, step, Phase::Backward, phase_ns, || {
                let t0 = std::time::Instant::now();
                ctx.mlp.backward(params, x, ws, grads);
                ctx.straggle(worker, forward_ns, t0.elapsed());
            }),
            #[cfg(feature = "gpu")]
            Compute::Gpu(net) => {
                let _ = (params, x);
                ctx.phase(worker, step, Phase::Backward, phase_ns, || {
                    let t0 = std::time::Instant::now();
                    let done = net.backward();
                    ctx.straggle(worker, forward_ns, t0.elapsed());
                    done
                })?
                .map_err(failed)?;
                ctx.phase(worker, step, Phase::ToHost, phase_ns, || net.grads_to_host(grads))?
                    .map_err(failed)
            }
        }
    }

    /// The update with the (all-reduced) gradient `grads`: on a GPU, a `ToDevice` phase
    /// first, then SGD on the device's parameters.
    #[allow(clippy::too_many_arguments)]
    pub fn update(
        &mut self,
        ctx: &RunCtx,
        (worker, step): (usize, u64),
        phase_ns: &mut [u64; Phase::COUNT],
        params: &mut [f32],
        grads: &[f32],
        sgd: &mut Sgd,
        lr: f32,
    ) -> Result<(), SegEnd> {
        match self {
            Compute::Cpu(ws) => ctx.phase(worker, step, Phase::Update, phase_ns, || {
                ws.threads().run(|par| sgd.step_on(par, params, grads, lr))
            }),
            #[cfg(feature = "gpu")]
            Compute::Gpu(net) => {
                let _ = params;
                ctx.phase(worker, step, Phase::ToDevice, phase_ns, || net.grads_to_device(grads))?
                    .map_err(failed)?;
                ctx.phase(worker, step, Phase::Update, phase_ns, || {
                    net.update(lr, sgd.momentum, sgd.weight_decay)
                })?
                .map_err(failed)
            }
        }
    }
}

/// A compute failure injected for tests, as `ddlab check --inject` injects faults:
/// `DDLAB_FAIL_AT_STEP=N` makes this process's compute fail from step N on, and
/// `N@R` only on the MPI rank R (as the launcher numbers it), so that one rank of a job
/// fails as a broken GPU or node would.
fn injected_failure() -> Option<u64> {
    static AT: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *AT.get_or_init(|| {
        let spec = std::env::var("DDLAB_FAIL_AT_STEP").ok()?;
        let (step, rank) = match spec.split_once('@') {
            Some((s, r)) => (s, Some(r)),
            None => (spec.as_str(), None),
        };
        let mine = ["OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"]
            .iter()
            .find_map(|v| std::env::var(v).ok());
        match rank {
            Some(r) if Some(r.trim()) != mine.as_deref().map(str::trim) => None,
            _ => step.trim().parse().ok(),
        }
    })
}
