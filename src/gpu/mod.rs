//! GPUs: each worker's forward, backward and update in WGSL compute shaders through
//! wgpu (cargo feature `gpu`) — one path for Vulkan, Metal, DX12 and GL, so laptops of any
//! vendor and NVIDIA clusters are served alike, and CI tests it on Mesa's software Vulkan
//! driver (lavapipe).
//!
//! A worker's parameters, gradient and momentum live in flat GPU buffers with the CPU's
//! layout (see `nn::mlp`). Gradients go device → host → all-reduce → host → device, and
//! those copies are phases of their own (`Phase::ToHost`, `Phase::ToDevice`): the learner
//! sees what a non-GPU-aware all-reduce costs.
//!
//! Without the feature this module still parses `--device` and says in one sentence how
//! to get a GPU build.

use serde::{Deserialize, Serialize};

use crate::config::Device;
use crate::nn::Mlp;

#[cfg(feature = "gpu")]
mod device;
#[cfg(feature = "gpu")]
pub mod kernels;
#[cfg(feature = "gpu")]
mod net;
#[cfg(feature = "gpu")]
pub use device::{copy_bandwidth, open, GpuError, Opened};
#[cfg(feature = "gpu")]
pub use net::GpuNet;

/// A GPU as ddlab lists it; `index` is what `--gpus` takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    pub index: usize,
    pub name: String,
    /// vulkan, metal, dx12 or gl.
    pub backend: String,
    /// discrete, integrated, virtual, cpu (a software driver such as lavapipe) or other.
    pub kind: String,
    pub driver: String,
}

impl GpuInfo {
    /// `gpu0 NVIDIA H100 (vulkan)`.
    pub fn label(&self) -> String {
        format!("gpu{} {} ({})", self.index, self.name, self.backend)
    }
}

/// Whether this ddlab was built with the `gpu` feature.
pub const BUILT: bool = cfg!(feature = "gpu");

/// The sentence for `--device gpu` on a build without the feature.
pub fn not_built() -> String {
    "--device gpu: this ddlab was built without GPU support: rebuild with `cargo build --release --features gpu` (it needs a Vulkan, Metal or DX12 driver; Debian/Ubuntu without a GPU: apt-get install mesa-vulkan-drivers libvulkan1), or use --device cpu".into()
}

/// The GPUs this process can use, in the order `--gpus` numbers them: real GPUs before
/// software ones (which are listed only when there is nothing else), and Vulkan, Metal
/// or DX12 before GL (which is listed only when nothing else is there).
pub fn list() -> Result<Vec<GpuInfo>, String> {
    #[cfg(feature = "gpu")]
    {
        device::list()
    }
    #[cfg(not(feature = "gpu"))]
    {
        Err(not_built())
    }
}

/// This process's rank among the ranks on its host, from what MPI launchers export
/// (OpenMPI, MPICH/Hydra, PMI, Slurm); `rank` when none is set.
pub fn local_rank(rank: usize) -> usize {
    [
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "PMI_LOCAL_RANK",
        "SLURM_LOCALID",
    ]
    .iter()
    .find_map(|v| std::env::var(v).ok()?.parse().ok())
    .unwrap_or(rank)
}

/// Which listed GPU worker `worker` uses: round-robin over the `chosen` ones
/// (`--gpus`) when given, else over all `found` (several workers may share one GPU).
pub fn gpu_of(chosen: &[usize], worker: usize, found: usize) -> usize {
    if chosen.is_empty() {
        worker % found.max(1)
    } else {
        chosen[worker % chosen.len()]
    }
}

/// Checks before a run that it can run where it asks to: on `device` GPU, that this
/// build has GPUs, that there is one, that the `chosen` ones (`--gpus`) exist, and that
/// `net` at `batch` rows fits. Returns the GPUs found (empty on the CPU).
pub fn preflight(device: Device, chosen: &[usize], net: &Mlp, batch: usize) -> Result<Vec<GpuInfo>, String> {
    if device == Device::Cpu {
        return Ok(Vec::new());
    }
    #[cfg(not(feature = "gpu"))]
    let _ = (net, batch);
    let found = list()?;
    if let Some(&bad) = chosen.iter().find(|&&g| g >= found.len()) {
        let names: Vec<String> = found.iter().map(GpuInfo::label).collect();
        return Err(format!(
            "--gpus: there is no GPU {bad}: this machine has {} ({}); use numbers from 0 to {}",
            found.len(),
            names.join(", "),
            found.len() - 1
        ));
    }
    #[cfg(feature = "gpu")]
    device::fits(net, batch)?;
    Ok(found)
}

/// What each of `workers` workers computes on, as the lab's header shows it: `cpu`, or
/// the label of the GPU it gets from the `chosen` ones (see [`gpu_of`]).
pub fn worker_devices(device: Device, chosen: &[usize], workers: usize, found: &[GpuInfo]) -> Vec<String> {
    (0..workers)
        .map(|w| match device {
            Device::Cpu => "cpu".to_string(),
            Device::Gpu => found
                .get(gpu_of(chosen, w, found.len()))
                .map_or_else(|| "gpu".to_string(), GpuInfo::label),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_go_round_robin_over_the_gpus_or_the_chosen_ones() {
        assert_eq!((0..5).map(|w| gpu_of(&[], w, 2)).collect::<Vec<_>>(), [0, 1, 0, 1, 0]);
        assert_eq!((0..3).map(|w| gpu_of(&[1], w, 2)).collect::<Vec<_>>(), [1, 1, 1]);
        assert_eq!((0..3).map(|w| gpu_of(&[2, 0], w, 3)).collect::<Vec<_>>(), [2, 0, 2]);
    }

    #[test]
    fn the_cpu_needs_no_preflight_and_labels_itself() {
        let net = Mlp::new(64, &[128], 10);
        assert_eq!(preflight(Device::Cpu, &[], &net, 64), Ok(Vec::new()));
        assert_eq!(worker_devices(Device::Cpu, &[], 2, &[]), ["cpu", "cpu"]);
    }

    #[cfg(not(feature = "gpu"))]
    #[test]
    fn a_build_without_the_feature_says_how_to_get_one() {
        let e = preflight(Device::Gpu, &[], &Mlp::new(64, &[128], 10), 64).unwrap_err();
        assert!(e.contains("--features gpu") && e.contains("--device cpu"), "{e}");
    }
}
