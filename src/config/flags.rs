//! The experiment flags, the same for every command and the keys of lesson files: parsed
//! by clap into [`ExperimentArgs`], laid over an [`Experiment`], and spelt back by
//! [`flags_of`]. They live below the front ends, so that lessons are typed by them
//! without knowing the command line.

use clap::Args;

use super::{Backend, Device, Experiment, Length, Mode, Straggler};
use crate::comm::{AllReduceAlgo, Link, Wire};
use crate::data::DatasetKind;
use crate::nn::LrScaling;

/// The experiment flags, the same for every command (and keys of lesson files).
#[derive(Debug, Args, Clone, Default)]
pub struct ExperimentArgs {
    /// Where workers run: threads (this process) or mpi (one rank each, under mpirun).
    #[arg(long, value_name = "threads|mpi")]
    pub backend: Option<Backend>,
    /// Number of data-parallel workers (threads), 1 to 256.
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Compute threads per worker (per rank over MPI), like OMP_NUM_THREADS: 1 to 256.
    #[arg(long, value_name = "T")]
    pub threads: Option<usize>,
    /// How workers combine their work: sync, async, ssp:K, backup:B, or local:H (H local
    /// steps, then the parameters averaged).
    #[arg(long, value_name = "MODE")]
    pub mode: Option<Mode>,
    /// All-reduce algorithm: ring, tree, naive, hierarchical, 2d, or mpi (the library's own).
    #[arg(long, value_name = "ALGO")]
    pub allreduce: Option<AllReduceAlgo>,
    /// Data set: digits (8×8, built in), mnist (28×28, from assets/), spirals (2-D).
    #[arg(long, value_name = "NAME")]
    pub dataset: Option<DatasetKind>,
    /// Hidden layer widths, e.g. 128 or 64,32 (none for a linear model).
    #[arg(long, value_name = "W1,W2,..", value_parser = parse_hidden)]
    pub hidden: Option<Hidden>,
    /// Per-worker batch size.
    #[arg(long, value_name = "B")]
    pub batch: Option<usize>,
    /// Base learning rate (> 0).
    #[arg(long, value_name = "LR", allow_negative_numbers = true)]
    pub lr: Option<f32>,
    /// Momentum, 0 ≤ m < 1.
    #[arg(long, value_name = "M", allow_negative_numbers = true)]
    pub momentum: Option<f32>,
    /// L2 weight decay (≥ 0).
    #[arg(long, value_name = "WD", allow_negative_numbers = true)]
    pub weight_decay: Option<f32>,
    /// How the LR grows with the worker count: none or linear (× N, Goyal et al.).
    #[arg(long, value_name = "RULE")]
    pub lr_scaling: Option<LrScaling>,
    /// Linear warm-up over this many steps.
    #[arg(long, value_name = "STEPS")]
    pub warmup: Option<u64>,
    /// Train for this many steps.
    #[arg(long, value_name = "N", conflicts_with = "epochs")]
    pub steps: Option<u64>,
    /// Train for this many passes over the training set (all workers together).
    #[arg(long, value_name = "E")]
    pub epochs: Option<u64>,
    /// Emulated link between workers: latency_us,gbit_s (e.g. 20,10) or a preset
    /// (infiniband-100g, 10gbe, 1gbe).
    #[arg(long, value_name = "LAT_US,GBIT_S")]
    pub link: Option<Link>,
    /// Make worker W's compute F times slower (W:F, e.g. 2:4); may be given several times.
    #[arg(long, value_name = "W:F")]
    pub straggler: Vec<Straggler>,
    /// Group the workers into M emulated nodes (for hierarchical and 2d all-reduce).
    #[arg(long, value_name = "M")]
    pub nodes: Option<usize>,
    /// The link between workers of one node (--link is then the one between nodes).
    #[arg(long, value_name = "LAT_US,GBIT_S")]
    pub intra_link: Option<Link>,
    /// All-reduce gradient buckets while backward still runs (sync mode).
    #[arg(long)]
    pub overlap: bool,
    /// Gradient bucket size for --overlap, in KB.
    #[arg(long, value_name = "K")]
    pub bucket_kb: Option<usize>,
    /// Gradients on the wire: f32, f16 or bf16 (half the bytes; sums stay in f32).
    #[arg(long, value_name = "TYPE")]
    pub grad_dtype: Option<Wire>,
    /// Seed for initialisation and shuffling.
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// Test-set accuracy every this many steps.
    #[arg(long, value_name = "STEPS")]
    pub eval_every: Option<u64>,
    /// Where workers compute: cpu, or gpu (WGSL kernels through wgpu; cargo feature gpu).
    #[arg(long, value_name = "cpu|gpu")]
    pub device: Option<Device>,
    /// With --device gpu: the GPUs to use, e.g. 0,1 (numbers as `ddlab check` lists
    /// them), round-robin over the workers.
    #[arg(long, value_name = "I,J,..", value_delimiter = ',')]
    pub gpus: Option<Vec<usize>>,
    /// local:H: the outer learning rate on the averaged change (DiLoCo's outer step;
    /// 1 with no outer momentum = plain averaging).
    #[arg(long, value_name = "LR", allow_negative_numbers = true)]
    pub outer_lr: Option<f32>,
    /// local:H: the outer optimizer's momentum, 0 ≤ m < 1.
    #[arg(long, value_name = "M", allow_negative_numbers = true)]
    pub outer_momentum: Option<f32>,
    /// local:H: Nesterov's form of the outer momentum (as DiLoCo).
    #[arg(long)]
    pub nesterov: bool,
    /// Sync: compress gradients on the wire: none, topk:P (the largest P % of the
    /// values as (index, value) pairs, all-gathered) or powersgd:R (each weight matrix
    /// as rank-R factors, all-reduced).
    #[arg(long, value_name = "METHOD")]
    pub compress: Option<crate::comm::Compress>,
    /// With --compress: drop what was not sent instead of adding it to the next step's
    /// gradient (error feedback, on by default).
    #[arg(long)]
    pub no_error_feedback: bool,
    /// Slow motion: every phase, message and delay lasts F times as long, so the run
    /// keeps its shape at a person's pace (1 = full speed; e.g. 1000).
    #[arg(long, value_name = "F")]
    pub slow: Option<f64>,
}

/// Hidden layer widths as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hidden(pub Vec<usize>);

fn parse_hidden(s: &str) -> Result<Hidden, String> {
    // An empty value is more likely a variable that was not set than a wish for a
    // linear model: that is spelt out.
    if s.trim().is_empty() {
        return Err(
            "an empty value is not a network: give layer widths such as 128 or 64,32, or write none for a linear model"
                .into(),
        );
    }
    if s == "none" {
        return Ok(Hidden(Vec::new()));
    }
    s.split(',')
        .map(|w| w.trim().parse::<usize>())
        .collect::<Result<Vec<_>, _>>()
        .map(Hidden)
        .map_err(|_| "expected comma-separated layer widths such as 128 or 64,32".to_string())
}

impl ExperimentArgs {
    /// The flags given, laid over `base`.
    pub fn apply_to(&self, mut exp: Experiment) -> Experiment {
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = self.$field.clone() { exp.$field = v; } )* };
        }
        set!(
            backend,
            workers,
            threads,
            mode,
            allreduce,
            dataset,
            batch,
            lr,
            momentum,
            weight_decay,
            lr_scaling,
            warmup,
            seed,
            eval_every,
            grad_dtype,
            nodes,
            bucket_kb,
            device,
            gpus,
            outer_lr,
            outer_momentum,
            compress,
            slow
        );
        if self.no_error_feedback {
            exp.error_feedback = false;
        }
        if self.overlap {
            exp.overlap = true;
        }
        if self.nesterov {
            exp.nesterov = true;
        }
        if let Some(link) = self.intra_link {
            exp.intra_link = Some(link);
        }
        if let Some(h) = &self.hidden {
            exp.hidden = h.0.clone();
        }
        if let Some(link) = self.link {
            exp.link = Some(link);
        }
        if !self.straggler.is_empty() {
            exp.stragglers = self.straggler.clone();
        }
        if let Some(s) = self.steps {
            exp.length = Length::Steps(s);
        }
        if let Some(e) = self.epochs {
            exp.length = Length::Epochs(e);
        }
        exp
    }

    pub fn experiment(&self) -> Experiment {
        self.apply_to(Experiment::default())
    }
}

/// How one experiment flag is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlagValue {
    /// Given, followed by this value as a user types it.
    Given(String),
    /// A switch given (it takes no value).
    On,
    /// Not given: off, none, or (for --gpus) every GPU found.
    Unset,
}

impl FlagValue {
    /// The value as a person reads it after the flag's name: `0.1`, `on`, `none`.
    pub fn words(&self, flag: &str) -> String {
        match self {
            FlagValue::Given(v) => v.clone(),
            FlagValue::On => "on".into(),
            FlagValue::Unset => match flag {
                "overlap" | "nesterov" | "no-error-feedback" => "off".into(),
                "gpus" => "every GPU found".into(),
                _ => "none".into(),
            },
        }
    }
}

/// `exp` as the command line spells it: every experiment flag (its long name, which is
/// also its key in lesson files) with its value, in the order of `ddlab run --help`;
/// the length is one flag, `steps` or `epochs`, and `straggler` comes once per straggler.
/// It is the inverse of [`ExperimentArgs::apply_to`] (a test parses it back), so that
/// the help's defaults, lesson checks and hints name settings exactly as a user types
/// them.
pub fn flags_of(exp: &Experiment) -> Vec<(&'static str, FlagValue)> {
    // Every field by name, no `..`: a new field does not compile until it is spelled here.
    let Experiment {
        backend,
        workers,
        threads,
        mode,
        allreduce,
        dataset,
        hidden,
        batch,
        lr,
        momentum,
        weight_decay,
        lr_scaling,
        warmup,
        length,
        link,
        stragglers,
        grad_dtype,
        nodes,
        intra_link,
        overlap,
        bucket_kb,
        seed,
        eval_every,
        device,
        gpus,
        outer_lr,
        outer_momentum,
        nesterov,
        compress,
        error_feedback,
        slow,
    } = exp;
    let given = |v: String| FlagValue::Given(v);
    let link_text = |l: &Option<Link>| match l {
        // a preset by its name, as the lab's `l` key and the lessons write it
        Some(l) => given(Link::PRESETS.iter().find(|(_, p)| p == l).map_or_else(
            || format!("{},{}", l.latency_us, l.gbit_s),
            |(name, _)| name.to_string(),
        )),
        None => FlagValue::Unset,
    };
    let list = |v: &[usize]| v.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    let mut flags = vec![
        (
            "backend",
            given(match backend {
                Backend::Threads => "threads".into(),
                Backend::Mpi => "mpi".into(),
            }),
        ),
        ("workers", given(workers.to_string())),
        ("threads", given(threads.to_string())),
        ("mode", given(mode.to_string())),
        ("allreduce", given(allreduce.to_string())),
        ("dataset", given(dataset.to_string())),
        (
            "hidden",
            given(if hidden.is_empty() { "none".into() } else { list(hidden) }),
        ),
        ("batch", given(batch.to_string())),
        ("lr", given(lr.to_string())),
        ("momentum", given(momentum.to_string())),
        ("weight-decay", given(weight_decay.to_string())),
        ("lr-scaling", given(lr_scaling.to_string())),
        ("warmup", given(warmup.to_string())),
        match length {
            Length::Steps(s) => ("steps", given(s.to_string())),
            Length::Epochs(e) => ("epochs", given(e.to_string())),
        },
        ("link", link_text(link)),
    ];
    if stragglers.is_empty() {
        flags.push(("straggler", FlagValue::Unset));
    }
    for s in stragglers {
        flags.push(("straggler", given(format!("{}:{}", s.worker, s.factor))));
    }
    flags.extend([
        ("nodes", given(nodes.to_string())),
        ("intra-link", link_text(intra_link)),
        ("overlap", if *overlap { FlagValue::On } else { FlagValue::Unset }),
        ("bucket-kb", given(bucket_kb.to_string())),
        ("grad-dtype", given(grad_dtype.to_string())),
        ("seed", given(seed.to_string())),
        ("eval-every", given(eval_every.to_string())),
        ("device", given(device.name().into())),
        (
            "gpus",
            if gpus.is_empty() {
                FlagValue::Unset
            } else {
                given(list(gpus))
            },
        ),
        ("outer-lr", given(outer_lr.to_string())),
        ("outer-momentum", given(outer_momentum.to_string())),
        ("nesterov", if *nesterov { FlagValue::On } else { FlagValue::Unset }),
        ("compress", given(compress.to_string())),
        (
            "no-error-feedback",
            if *error_feedback {
                FlagValue::Unset
            } else {
                FlagValue::On
            },
        ),
        ("slow", given(slow.to_string())),
    ]);
    flags
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// The flags of `exp` as arguments, parsed back by the command line's parser.
    fn parse_back(exp: &Experiment) -> Experiment {
        #[derive(Parser)]
        #[command(no_binary_name = true)]
        struct Flags {
            #[command(flatten)]
            experiment: ExperimentArgs,
        }
        let mut args = Vec::new();
        for (name, value) in flags_of(exp) {
            match value {
                FlagValue::Given(v) => args.extend([format!("--{name}"), v]),
                FlagValue::On => args.push(format!("--{name}")),
                FlagValue::Unset => {}
            }
        }
        Flags::try_parse_from(&args)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
            .experiment
            .experiment()
    }

    #[test]
    fn flags_of_an_experiment_parse_back_to_the_same_experiment() {
        let default = Experiment::default();
        // every field away from its default
        let changed = Experiment {
            backend: Backend::Mpi,
            workers: 8,
            threads: 2,
            mode: Mode::Ssp(3),
            allreduce: AllReduceAlgo::TwoD,
            dataset: DatasetKind::Spirals,
            hidden: vec![64, 32],
            batch: 16,
            lr: 0.00625,
            momentum: 0.0,
            weight_decay: 1e-4,
            lr_scaling: LrScaling::Linear,
            warmup: 30,
            length: Length::Steps(40),
            link: Some("1gbe".parse().unwrap()),
            stragglers: vec![Straggler { worker: 1, factor: 8.0 }, "3:2.5".parse().unwrap()],
            grad_dtype: Wire::Bf16,
            nodes: 2,
            intra_link: Some("1.5,250".parse().unwrap()),
            overlap: true,
            bucket_kb: 16,
            seed: 7,
            eval_every: 5,
            device: Device::Gpu,
            gpus: vec![0, 1],
            outer_lr: 0.7,
            outer_momentum: 0.9,
            nesterov: true,
            compress: crate::comm::Compress::TopK(2.5),
            error_feedback: false,
            slow: 250.0,
        };
        let (a, b) = (flags_of(&default), flags_of(&changed));
        for flag in &a {
            assert!(!b.contains(flag), "the test experiment leaves {flag:?} at its default");
        }
        assert_eq!(parse_back(&default), default);
        assert_eq!(parse_back(&changed), changed);
        let no_hidden = Experiment {
            hidden: vec![],
            ..Experiment::default()
        };
        assert_eq!(parse_back(&no_hidden), no_hidden);
    }
}
