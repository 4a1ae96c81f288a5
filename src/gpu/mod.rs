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

use crate::config::Experiment;

#[cfg(feature = "gpu")]
mod net;
#[cfg(feature = "gpu")]
pub use net::{copy_bandwidth, kernels, open, GpuError, GpuNet, Opened};

/// Where a worker computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    /// This process's CPU cores (one per worker).
    #[default]
    Cpu,
    /// A GPU through wgpu (cargo feature `gpu`).
    Gpu,
}

impl Device {
    pub fn name(self) -> &'static str {
        match self {
            Device::Cpu => "cpu",
            Device::Gpu => "gpu",
        }
    }
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "gpu" => Ok(Device::Gpu),
            _ => Err(format!("unknown device '{s}': use cpu or gpu")),
        }
    }
}

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
        net::list()
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

/// Which listed GPU worker `worker` uses: `--gpus` round-robin when given, else
/// round-robin over all of them (several workers may share one GPU).
pub fn gpu_of(exp: &Experiment, worker: usize, found: usize) -> usize {
    if exp.gpus.is_empty() {
        worker % found.max(1)
    } else {
        exp.gpus[worker % exp.gpus.len()]
    }
}

/// Checks before a run that `exp` can run where it asks to: on `--device gpu`, that
/// this build has GPUs, that there is one, that `--gpus` names GPUs that exist, and
/// that the network (on `inputs` features and `classes` classes) fits. Returns the GPUs
/// found (empty on the CPU).
pub fn preflight(exp: &Experiment, inputs: usize, classes: usize) -> Result<Vec<GpuInfo>, String> {
    if exp.device == Device::Cpu {
        return Ok(Vec::new());
    }
    #[cfg(not(feature = "gpu"))]
    let _ = (inputs, classes);
    let found = list()?;
    if let Some(&bad) = exp.gpus.iter().find(|&&g| g >= found.len()) {
        let names: Vec<String> = found.iter().map(GpuInfo::label).collect();
        return Err(format!(
            "--gpus: there is no GPU {bad}: this machine has {} ({}); use numbers from 0 to {}",
            found.len(),
            names.join(", "),
            found.len() - 1
        ));
    }
    #[cfg(feature = "gpu")]
    net::fits(exp, inputs, classes)?;
    Ok(found)
}

/// What each of `workers` workers computes on, as the lab's header shows it: `cpu`, or
/// the GPU's label.
pub fn worker_devices(exp: &Experiment, workers: usize, found: &[GpuInfo]) -> Vec<String> {
    (0..workers)
        .map(|w| match exp.device {
            Device::Cpu => "cpu".to_string(),
            Device::Gpu => found
                .get(gpu_of(exp, w, found.len()))
                .map_or_else(|| "gpu".to_string(), GpuInfo::label),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_parses_and_names_itself() {
        assert_eq!("gpu".parse::<Device>(), Ok(Device::Gpu));
        assert_eq!("cpu".parse::<Device>(), Ok(Device::Cpu));
        assert!("tpu".parse::<Device>().unwrap_err().contains("use cpu or gpu"));
        assert_eq!(Device::Gpu.name(), "gpu");
    }

    #[test]
    fn workers_go_round_robin_over_the_gpus_or_the_chosen_ones() {
        let mut exp = Experiment::default();
        assert_eq!((0..5).map(|w| gpu_of(&exp, w, 2)).collect::<Vec<_>>(), [0, 1, 0, 1, 0]);
        exp.gpus = vec![1];
        assert_eq!((0..3).map(|w| gpu_of(&exp, w, 2)).collect::<Vec<_>>(), [1, 1, 1]);
        exp.gpus = vec![2, 0];
        assert_eq!((0..3).map(|w| gpu_of(&exp, w, 3)).collect::<Vec<_>>(), [2, 0, 2]);
    }

    #[test]
    fn the_cpu_needs_no_preflight_and_labels_itself() {
        let exp = Experiment::default();
        assert_eq!(preflight(&exp, 64, 10), Ok(Vec::new()));
        assert_eq!(worker_devices(&exp, 2, &[]), ["cpu", "cpu"]);
    }

    #[cfg(not(feature = "gpu"))]
    #[test]
    fn a_build_without_the_feature_says_how_to_get_one() {
        let exp = Experiment {
            device: Device::Gpu,
            ..Experiment::default()
        };
        let e = preflight(&exp, 64, 10).unwrap_err();
        assert!(e.contains("--features gpu") && e.contains("--device cpu"), "{e}");
    }
}
