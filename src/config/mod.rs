//! The experiment: one struct that command-line flags and lesson files fill.
//!
//! Every field has a one-line reason for its default, nanoGPT-style. `validate` turns a
//! bad value into one sentence naming the flag and what is allowed.

pub mod flags;

use serde::{Deserialize, Serialize};

use crate::comm::{AllReduceAlgo, Compress, Link, Wire};
use crate::data::DatasetKind;
use crate::nn::LrScaling;

/// Where a worker computes (`--device`).
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

/// Most workers one run may have: beyond this, threads only thrash.
pub const MAX_WORKERS: usize = 256;

/// The slowest a straggler may be: 100× its compute already shows every effect, and a
/// step a hundred times longer than the others' keeps a run (and Ctrl-C) responsive.
pub const MAX_STRAGGLER_FACTOR: f32 = 100.0;

/// Most compute threads one worker may have: more than the largest nodes' cores.
pub const MAX_THREADS: usize = 256;

/// The default heavy-ball momentum (see `Experiment::momentum`), which the lab's `M` key
/// turns back on.
pub const DEFAULT_MOMENTUM: f32 = 0.9;

/// Most compute threads one process may start (workers × threads on the threads backend):
/// beyond this, a run is more thread stacks than work.
pub const MAX_PROCESS_THREADS: usize = 1024;

/// Where the workers run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// One thread per worker in this process.
    #[default]
    Threads,
    /// One MPI rank per worker, launched by mpirun (cargo feature `mpi`).
    Mpi,
}

impl std::str::FromStr for Backend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "threads" => Ok(Backend::Threads),
            "mpi" => Ok(Backend::Mpi),
            _ => Err(format!("unknown backend '{s}': use threads or mpi")),
        }
    }
}

/// How workers combine their gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(try_from = "String", into = "String")]
pub enum Mode {
    /// Forward, backward, all-reduce (mean), update; everyone in step.
    #[default]
    Sync,
    /// Parameter server: pull, forward, backward, push; the server applies each gradient
    /// as it arrives; nobody waits (Dean et al. 2012, DistBelief).
    Async,
    /// Stale synchronous parallel: async, but no worker runs more than K steps ahead of
    /// the slowest (Ho et al. 2013).
    Ssp(u32),
    /// Sync through the parameter server that applies the mean of the first N−B
    /// gradients of each step and drops the rest (Chen et al. 2016).
    Backup(usize),
    /// Local SGD: every worker takes H steps alone on its own shard, then the workers
    /// all-reduce their parameters (Stich 2018; Lin et al. 2018); with an outer optimizer
    /// over the averaged change, DiLoCo (Douillard et al. 2023). local:1 is sync with
    /// parameters averaged instead of gradients.
    Local(u32),
}

impl Mode {
    /// Whether the mode runs through a parameter server (rather than an all-reduce).
    pub fn uses_server(self) -> bool {
        !matches!(self, Mode::Sync | Mode::Local(_))
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let number = |v: &str, what: &str| {
            v.parse::<u32>().map_err(|_| {
                format!(
                    "'{s}': {what} must be a whole number ≥ 0, like {}",
                    &s[..s.len() - v.len()]
                )
            })
        };
        match s {
            "sync" => Ok(Mode::Sync),
            "async" => Ok(Mode::Async),
            _ => {
                if let Some(k) = s.strip_prefix("ssp:") {
                    Ok(Mode::Ssp(number(k, "the staleness bound K")?))
                } else if let Some(b) = s.strip_prefix("backup:") {
                    Ok(Mode::Backup(number(b, "the number of backup workers B")? as usize))
                } else if let Some(h) = s.strip_prefix("local:") {
                    match number(h, "the number of local steps H")? {
                        0 => Err(format!(
                            "'{s}': workers must take at least 1 local step between averages: use local:H with H ≥ 1, like local:8"
                        )),
                        h => Ok(Mode::Local(h)),
                    }
                } else {
                    Err(format!(
                        "unknown mode '{s}': use sync, async, ssp:K, backup:B or local:H"
                    ))
                }
            }
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mode::Sync => f.write_str("sync"),
            Mode::Async => f.write_str("async"),
            Mode::Ssp(k) => write!(f, "ssp:{k}"),
            Mode::Backup(b) => write!(f, "backup:{b}"),
            Mode::Local(h) => write!(f, "local:{h}"),
        }
    }
}

impl TryFrom<String> for Mode {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Mode> for String {
    fn from(m: Mode) -> String {
        m.to_string()
    }
}

/// A worker whose compute is made `factor` times slower.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Straggler {
    pub worker: usize,
    pub factor: f32,
}

impl std::str::FromStr for Straggler {
    type Err = String;
    /// `W:F`, e.g. `2:4` makes worker 2 four times slower.
    fn from_str(s: &str) -> Result<Self, String> {
        let usage = format!("'{s}': expected WORKER:FACTOR such as 2:4 (worker 2, four times slower)");
        let (w, f) = s.split_once(':').ok_or_else(|| usage.clone())?;
        let worker = w.trim().parse::<usize>().map_err(|_| usage.clone())?;
        let factor = f.trim().parse::<f32>().map_err(|_| usage.clone())?;
        if !(factor.is_finite() && (1.0..=MAX_STRAGGLER_FACTOR).contains(&factor)) {
            return Err(format!(
                "'{s}': the factor must be a number from 1 (not slowed) to {MAX_STRAGGLER_FACTOR}, got {f}"
            ));
        }
        Ok(Straggler { worker, factor })
    }
}

/// How long to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Length {
    Steps(u64),
    /// Passes over the training set by all workers together.
    Epochs(u64),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Experiment {
    /// Threads: no MPI needed.
    #[serde(default)]
    pub backend: Backend,
    /// 4 workers: enough to see a ring and a straggler, few enough for a laptop.
    pub workers: usize,
    /// Compute threads per worker (per rank over MPI), as `OMP_NUM_THREADS`: 1, so that
    /// parallelism comes from the workers until the learner asks for more.
    pub threads: usize,
    pub mode: Mode,
    /// Ring: what NCCL and Horovod use for large buffers.
    pub allreduce: AllReduceAlgo,
    /// Digits: real handwriting, embedded, hundreds of steps per second.
    pub dataset: DatasetKind,
    /// One hidden layer of 128: 98 % on digits within seconds.
    pub hidden: Vec<usize>,
    /// Per-worker batch; the global batch is workers × batch.
    pub batch: usize,
    /// Base learning rate, before the scaling rule and warm-up; 0.1 with momentum 0.9
    /// is stable for sync training at these batch sizes (about 97 % on digits).
    pub lr: f32,
    /// Heavy-ball momentum 0.9: the standard for SGD on such nets.
    pub momentum: f32,
    /// Off by default: the lessons are about parallelism, not regularisation.
    pub weight_decay: f32,
    /// None by default, so that the learner can switch linear on and see the difference.
    pub lr_scaling: LrScaling,
    /// Steps of linear warm-up; 0 = none.
    pub warmup: u64,
    /// 30 epochs of digits at 4 × 32: about 330 steps, a few seconds.
    pub length: Length,
    /// Emulated network between workers (and the parameter server); none = shared
    /// memory at full speed.
    pub link: Option<Link>,
    /// Workers made slower on purpose, to watch who waits for whom.
    pub stragglers: Vec<Straggler>,
    /// Gradients on the wire: f32, or f16/bf16 to halve the bytes (sums stay in f32).
    pub grad_dtype: Wire,
    /// Emulated nodes the workers are grouped into (contiguous, as even as possible);
    /// `link` joins nodes, `intra_link` the workers inside one.
    pub nodes: usize,
    pub intra_link: Option<Link>,
    /// All-reduce gradient buckets while backward still runs (sync mode).
    pub overlap: bool,
    /// Bucket size for `overlap`, in KB: layers are grouped, last first, until a bucket
    /// holds at least this much.
    pub bucket_kb: usize,
    pub seed: u64,
    /// Test-set accuracy every this many steps (and at the end).
    pub eval_every: u64,
    /// Where each worker computes: the CPU, or a GPU (cargo feature `gpu`).
    #[serde(default)]
    pub device: Device,
    /// With `device` gpu: the GPUs to use (numbers from `ddlab check`), round-robin over
    /// the workers; empty = round-robin over every GPU found.
    #[serde(default)]
    pub gpus: Vec<usize>,
    /// local:H only: the outer optimizer's learning rate on the averaged change of the
    /// parameters (DiLoCo's outer step); 1 with no outer momentum is plain averaging.
    pub outer_lr: f32,
    /// local:H only: the outer optimizer's momentum; 0 = plain averaging (DiLoCo uses 0.9
    /// with Nesterov and an outer LR of 0.7).
    pub outer_momentum: f32,
    /// local:H only: Nesterov's form of the outer momentum, as DiLoCo.
    pub nesterov: bool,
    /// Sync only: gradients compressed on the wire (top-k as (index, value) pairs, or
    /// PowerSGD's rank-R factors);
    /// none by default, so that the learner sees the whole gradient first.
    pub compress: Compress,
    /// With `compress`: keep what was not sent and add it to the next step's gradient
    /// (on by default: without it top-k loses most of every gradient).
    pub error_feedback: bool,
    /// Slow motion: every phase, message, straggler delay and server action lasts this
    /// many times as long (time dilation, so that the run keeps its shape); 1 = full
    /// speed, the default for headless runs.
    pub slow: f64,
}

impl Default for Experiment {
    fn default() -> Self {
        Experiment {
            backend: Backend::Threads,
            workers: 4,
            threads: 1,
            mode: Mode::Sync,
            allreduce: AllReduceAlgo::Ring,
            dataset: DatasetKind::Digits,
            hidden: vec![128],
            batch: 32,
            lr: 0.1,
            momentum: DEFAULT_MOMENTUM,
            weight_decay: 0.0,
            lr_scaling: LrScaling::None,
            warmup: 0,
            length: Length::Epochs(30),
            link: None,
            stragglers: Vec::new(),
            grad_dtype: Wire::F32,
            nodes: 1,
            intra_link: None,
            overlap: false,
            bucket_kb: 64,
            seed: 1,
            eval_every: 25,
            device: Device::Cpu,
            gpus: Vec::new(),
            outer_lr: 1.0,
            outer_momentum: 0.0,
            nesterov: false,
            compress: Compress::None,
            error_feedback: true,
            slow: 1.0,
        }
    }
}

/// A value a user gave that cannot work; the message names the flag and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--{flag}: {problem}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub problem: String,
}

fn bad(flag: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        flag,
        problem: problem.into(),
    }
}

impl Experiment {
    /// Checks every value on its own; `check_against` then checks it against a data set.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.workers == 0 || self.workers > MAX_WORKERS {
            return Err(bad(
                "workers",
                format!("{} is not allowed: use 1 to {MAX_WORKERS} workers", self.workers),
            ));
        }
        if self.threads == 0 || self.threads > MAX_THREADS {
            return Err(bad(
                "threads",
                format!(
                    "{} is not allowed: use 1 to {MAX_THREADS} threads per worker",
                    self.threads
                ),
            ));
        }
        if self.backend == Backend::Threads && self.workers * self.threads > MAX_PROCESS_THREADS {
            return Err(bad(
                "threads",
                format!(
                    "{} workers × {} threads = {} compute threads in one process is too many: keep workers × threads at most {MAX_PROCESS_THREADS}",
                    self.workers,
                    self.threads,
                    self.workers * self.threads
                ),
            ));
        }
        if self.batch == 0 || self.batch > 65_536 {
            return Err(bad(
                "batch",
                format!("{} is not allowed: use a per-worker batch of 1 to 65536", self.batch),
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(bad(
                "lr",
                format!("{} is not allowed: the learning rate must be a number > 0", self.lr),
            ));
        }
        if !(self.momentum.is_finite() && (0.0..1.0).contains(&self.momentum)) {
            return Err(bad(
                "momentum",
                format!("{} is not allowed: use 0 ≤ momentum < 1", self.momentum),
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(bad(
                "weight-decay",
                format!("{} is not allowed: use a number ≥ 0", self.weight_decay),
            ));
        }
        if let Some(&w) = self.hidden.iter().find(|&&w| w == 0 || w > 16_384) {
            return Err(bad(
                "hidden",
                format!("a layer of {w} is not allowed: use widths 1 to 16384, like 64,32"),
            ));
        }
        if self.hidden.len() > 16 {
            return Err(bad(
                "hidden",
                format!("{} hidden layers is too many: use at most 16", self.hidden.len()),
            ));
        }
        match self.length {
            Length::Steps(0) => return Err(bad("steps", "0 is not allowed: train for at least 1 step")),
            Length::Epochs(0) => return Err(bad("epochs", "0 is not allowed: train for at least 1 epoch")),
            _ => {}
        }
        if !(self.slow.is_finite() && (1.0..=crate::comm::MAX_PACE).contains(&self.slow)) {
            return Err(bad(
                "slow",
                format!(
                    "{} is not allowed: use a dilation factor from 1 (full speed) to {}, e.g. 1000",
                    self.slow,
                    crate::comm::MAX_PACE
                ),
            ));
        }
        if self.eval_every == 0 {
            return Err(bad("eval-every", "0 is not allowed: evaluate every 1 or more steps"));
        }
        if let Some(link) = self.link {
            Link::new(link.latency_us, link.gbit_s).map_err(|e| bad("link", e))?;
        }
        if let Some(link) = self.intra_link {
            Link::new(link.latency_us, link.gbit_s).map_err(|e| bad("intra-link", e))?;
        }
        if self.allreduce == AllReduceAlgo::Mpi && self.backend != Backend::Mpi {
            return Err(bad(
                "allreduce",
                "mpi is the MPI library's own all-reduce: use it with --backend mpi under mpirun, or choose ring, tree or naive",
            ));
        }
        if !self.gpus.is_empty() && self.device != Device::Gpu {
            return Err(bad("gpus", "GPUs are chosen for --device gpu: add it, or drop --gpus"));
        }
        if self.device == Device::Gpu && self.overlap {
            return Err(bad(
                "overlap",
                "overlap all-reduces each layer's gradient while backward runs, but on --device gpu the gradient reaches the host only after backward: drop --overlap, or use --device cpu",
            ));
        }
        if self.device == Device::Gpu && self.threads > 1 {
            return Err(bad(
                "threads",
                format!(
                    "{} threads per worker is for --device cpu: a GPU worker computes on its GPU, not on CPU threads; drop --threads, or use --device cpu",
                    self.threads
                ),
            ));
        }
        if self.bucket_kb == 0 {
            return Err(bad("bucket-kb", "0 is not allowed: use a bucket of 1 KB or more"));
        }
        if self.nodes == 0 || self.nodes > self.workers {
            return Err(bad(
                "nodes",
                format!(
                    "{} is not allowed with {} workers: use 1 to {} nodes",
                    self.nodes, self.workers, self.workers
                ),
            ));
        }
        if !(self.outer_lr.is_finite() && self.outer_lr > 0.0 && self.outer_lr <= 10.0) {
            return Err(bad(
                "outer-lr",
                format!(
                    "{} is not allowed: use an outer learning rate above 0 and at most 10 (1 = plain averaging, DiLoCo uses 0.7)",
                    self.outer_lr
                ),
            ));
        }
        if !(self.outer_momentum.is_finite() && (0.0..1.0).contains(&self.outer_momentum)) {
            return Err(bad(
                "outer-momentum",
                format!("{} is not allowed: use 0 ≤ outer momentum < 1", self.outer_momentum),
            ));
        }
        if self.nesterov && self.outer_momentum == 0.0 {
            return Err(bad(
                "nesterov",
                "Nesterov is a form of outer momentum, and the outer momentum is 0: add --outer-momentum 0.9, or drop --nesterov",
            ));
        }
        if self.compress != Compress::None {
            if self.mode != Mode::Sync {
                return Err(bad(
                    "compress",
                    format!(
                        "{} compresses the gradients of sync's all-reduce, and --mode {} exchanges no such gradients: use --mode sync, or drop --compress",
                        self.compress, self.mode
                    ),
                ));
            }
            if self.overlap {
                return Err(bad(
                    "compress",
                    "compression works on the whole gradient once backward has finished, and overlap sends it in pieces before that: drop --overlap, or drop --compress",
                ));
            }
            if self.grad_dtype != Wire::F32 {
                return Err(bad(
                    "compress",
                    format!(
                        "{} sends its values in f32, so --grad-dtype {} would change nothing: drop --grad-dtype, or drop --compress",
                        self.compress, self.grad_dtype
                    ),
                ));
            }
        } else if !self.error_feedback {
            return Err(bad(
                "no-error-feedback",
                "error feedback belongs to gradient compression, and there is none: add --compress topk:1, or drop --no-error-feedback",
            ));
        }
        match self.mode {
            Mode::Backup(b) if b >= self.workers => {
                return Err(bad(
                    "mode",
                    format!(
                        "backup:{b} would drop every gradient of {} workers: use backup:B with B < {}",
                        self.workers, self.workers
                    ),
                ))
            }
            _ => {}
        }
        for s in &self.stragglers {
            if s.worker >= self.workers {
                return Err(bad(
                    "straggler",
                    format!(
                        "worker {} does not exist with {} workers: use 0 to {}",
                        s.worker,
                        self.workers,
                        self.workers - 1
                    ),
                ));
            }
            if !(s.factor.is_finite() && (1.0..=MAX_STRAGGLER_FACTOR).contains(&s.factor)) {
                return Err(bad(
                    "straggler",
                    format!(
                        "factor {} is not allowed: use a number from 1 (not slowed) to {MAX_STRAGGLER_FACTOR}",
                        s.factor
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Checks that the global batch fits in one epoch of `train_len` samples, and that
    /// the run fits in this machine's memory.
    pub fn check_against(&self, train_len: usize) -> Result<(), ConfigError> {
        let global = self.workers * self.batch;
        if global > train_len {
            return Err(bad(
                "batch",
                format!(
                    "{} workers × batch {} = {global} samples per step, more than the {train_len} training samples of {}: use fewer workers or a smaller batch",
                    self.workers, self.batch, self.dataset
                ),
            ));
        }
        self.check_memory()
    }

    /// One sentence when this run asks for more compute threads than this machine has
    /// cores (allowed: the threads then take turns, as on an oversubscribed node). Front
    /// ends show it once, as the run starts. Only for `threads` > 1: several workers
    /// sharing cores one thread each is how the lab shows many workers on a laptop.
    pub fn oversubscription(&self) -> Option<String> {
        self.oversubscription_on(std::thread::available_parallelism().map_or(1, |c| c.get()))
    }

    /// `oversubscription` on a machine of `cores` cores.
    pub fn oversubscription_on(&self, cores: usize) -> Option<String> {
        // Over MPI the workers are ranks, perhaps on other hosts: each rank's threads count.
        let here = match self.backend {
            Backend::Threads => self.workers,
            Backend::Mpi => 1,
        };
        let threads = here * self.threads;
        (self.threads > 1 && threads > cores).then(|| match self.backend {
            Backend::Threads => format!(
                "{} workers × {} threads = {threads} compute threads on {cores} cores: they will take turns, so each step is slower than with workers × threads ≤ {cores}",
                self.workers, self.threads
            ),
            Backend::Mpi => format!(
                "{threads} threads per rank on a machine of {cores} cores: a rank's threads will take turns; use --threads {cores} or fewer",
            ),
        })
    }

    /// Refuses a run larger than the memory this machine has left. The data set is
    /// loaded by now, so what is left already excludes it. Over MPI each rank checks its
    /// own worker (ranks may be on other hosts).
    fn check_memory(&self) -> Result<(), ConfigError> {
        let (inputs, classes) = self.dataset.shape();
        let sizes = [&[inputs][..], &self.hidden, &[classes]].concat();
        let here = match self.backend {
            Backend::Threads => self.workers,
            Backend::Mpi => 1,
        };
        let need = crate::memory::training_bytes(&crate::memory::Training {
            sizes: &sizes,
            workers: here,
            batch: self.batch,
            server: self.mode.uses_server(),
        });
        let hidden: Vec<String> = self.hidden.iter().map(usize::to_string).collect();
        let what = format!(
            "this run ({here} worker{}, hidden layers [{}], {})",
            if here == 1 { "" } else { "s" },
            hidden.join(","),
            self.dataset
        );
        crate::memory::check_fits(need, &what).map_err(|e| {
            bad(
                "hidden",
                format!("{e}: use fewer or narrower hidden layers, fewer workers or a smaller batch"),
            )
        })
    }
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
    fn defaults_are_valid() {
        Experiment::default().validate().unwrap();
    }

    #[test]
    fn bad_values_name_their_flag() {
        let cases: [(Experiment, &str); 6] = [
            (
                Experiment {
                    workers: 0,
                    ..Default::default()
                },
                "--workers",
            ),
            (
                Experiment {
                    workers: 100_000,
                    ..Default::default()
                },
                "--workers",
            ),
            (
                Experiment {
                    batch: 0,
                    ..Default::default()
                },
                "--batch",
            ),
            (
                Experiment {
                    lr: -1.0,
                    ..Default::default()
                },
                "--lr",
            ),
            (
                Experiment {
                    hidden: vec![0],
                    ..Default::default()
                },
                "--hidden",
            ),
            (
                Experiment {
                    length: Length::Steps(0),
                    ..Default::default()
                },
                "--steps",
            ),
        ];
        for (exp, flag) in cases {
            let msg = exp.validate().unwrap_err().to_string();
            assert!(msg.starts_with(flag), "{msg}");
        }
        let too_big = Experiment {
            workers: 64,
            batch: 64,
            ..Default::default()
        };
        assert!(too_big
            .check_against(1438)
            .unwrap_err()
            .to_string()
            .contains("fewer workers"));
    }

    #[test]
    fn threads_are_bounded_refused_on_gpus_and_oversubscription_is_one_sentence() {
        let with = |workers: usize, threads: usize| Experiment {
            workers,
            threads,
            ..Default::default()
        };
        for (exp, says) in [
            (with(1, 0), "--threads: 0 is not allowed: use 1 to 256"),
            (with(1, 257), "--threads: 257 is not allowed"),
            (with(16, 128), "--threads: 16 workers × 128 threads = 2048"),
            (
                Experiment {
                    device: Device::Gpu,
                    ..with(1, 2)
                },
                "--threads: 2 threads per worker is for --device cpu",
            ),
        ] {
            let msg = exp.validate().unwrap_err().to_string();
            assert!(msg.starts_with(says), "{msg}");
            assert!(!msg.contains('\n'), "one sentence: {msg}");
        }
        with(2, 2).validate().unwrap();
        assert_eq!(with(1, 2).oversubscription_on(2), None);
        assert_eq!(
            with(8, 1).oversubscription_on(2),
            None,
            "one thread each: the lab's usual"
        );
        let said = with(2, 2).oversubscription_on(2).unwrap();
        assert!(
            said.starts_with("2 workers × 2 threads = 4 compute threads on 2 cores"),
            "{said}"
        );
        let rank = Experiment {
            backend: Backend::Mpi,
            ..with(16, 4)
        };
        assert_eq!(rank.oversubscription_on(4), None, "over MPI, per rank");
        assert!(rank.oversubscription_on(2).unwrap().contains("4 threads per rank"));
    }

    #[test]
    fn modes_parse_and_print_back() {
        for m in ["sync", "async", "ssp:0", "ssp:3", "backup:1", "local:1", "local:8"] {
            assert_eq!(m.parse::<Mode>().unwrap().to_string(), m);
        }
        assert!("nonsense"
            .parse::<Mode>()
            .unwrap_err()
            .contains("use sync, async, ssp:K, backup:B or local:H"));
        assert!("local:0".parse::<Mode>().unwrap_err().contains("H ≥ 1"));
        assert!("local:x".parse::<Mode>().unwrap_err().contains("whole number ≥ 0"));
        assert!("ssp:-1".parse::<Mode>().unwrap_err().contains("whole number ≥ 0"));
        assert!("backup:x".parse::<Mode>().unwrap_err().contains("whole number ≥ 0"));
    }

    #[test]
    fn backup_must_leave_a_gradient_and_stragglers_must_exist() {
        let e = Experiment {
            workers: 4,
            mode: Mode::Backup(4),
            ..Default::default()
        };
        assert!(e.validate().unwrap_err().to_string().contains("B < 4"));
        let e = Experiment {
            workers: 4,
            stragglers: vec!["9:2".parse().unwrap()],
            ..Default::default()
        };
        assert!(e.validate().unwrap_err().to_string().contains("use 0 to 3"));
        assert!("1:0"
            .parse::<Straggler>()
            .unwrap_err()
            .contains("from 1 (not slowed) to 100"));
    }
}
