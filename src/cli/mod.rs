//! Headless front ends: the command line, `ddlab run` and `ddlab bench`.

/// `println!` that shrugs off a closed pipe (`ddlab bench | head`) instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

pub mod bench;
pub mod check;
pub mod compare;
pub mod export;
pub mod lessons;
pub mod run;
pub mod worker;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::comm::{AllReduceAlgo, Link};
use crate::config::{Experiment, Length, Mode};
use crate::data::DatasetKind;
use crate::nn::LrScaling;

/// A failure the binary reports as one sentence and an exit code.
#[derive(Debug)]
pub struct CliError {
    /// 1 = a failure, 2 = bad input, 3 = the run diverged.
    pub code: i32,
    pub message: String,
}

impl CliError {
    pub fn usage(message: impl Into<String>) -> Self {
        CliError {
            code: 2,
            message: message.into(),
        }
    }
    pub fn failure(message: impl Into<String>) -> Self {
        CliError {
            code: 1,
            message: message.into(),
        }
    }
}

/// Creates an output file named by `--flag`, or says in one sentence why it cannot.
/// Front ends call it before any work, so that a bad path fails at once.
pub fn create_output(flag: &str, path: &std::path::Path) -> Result<std::fs::File, CliError> {
    std::fs::File::create(path).map_err(|e| CliError::usage(format!("--{flag}: cannot write {}: {e}", path.display())))
}

#[derive(Debug, Parser)]
#[command(
    name = "ddlab",
    version,
    about = "A terminal lab for data-parallel distributed deep learning"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open the lab straight into free play with this experiment.
    Lab(Box<LabArgs>),
    /// Train headless: a progress bar, a summary table, and optional exports.
    Run(Box<RunArgs>),
    /// The same experiment under several modes, one table: accuracy, time to target,
    /// throughput, staleness, idle time.
    Compare(Box<compare::CompareArgs>),
    /// Fixed benchmarks: µs per training step, all-reduce bandwidth, memcpy ceiling.
    Bench(bench::BenchArgs),
    /// Cluster sanity check: ranks, exact collectives, bandwidth, training equals one
    /// rank. Standalone on threads, or under mpirun (feature mpi). Exit 0 when all pass.
    Check(check::CheckArgs),
    /// List the lessons (with your progress).
    Lessons(LessonsArgs),
    /// Open lesson N in the lab, or verify lessons headless with --check [N|all].
    Lesson(LessonArgs),
    /// Internal: one MPI rank of a job the lab started (see `ddlab lab --backend mpi`).
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
}

#[derive(Debug, Args)]
pub struct LabArgs {
    #[command(flatten)]
    pub experiment: ExperimentArgs,
    /// With --backend mpi: the MPI launcher to run.
    #[arg(long, value_name = "PATH", default_value = "mpirun")]
    pub mpirun: String,
    /// With --backend mpi: extra arguments for the launcher, e.g. "--hostfile h".
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub mpirun_args: Option<String>,
    /// With --backend mpi: the address the lab listens on and the ranks connect to
    /// (default: loopback, a free port; for several nodes, this node's address with
    /// --controller-public and a shared --controller-token-dir).
    #[arg(long, value_name = "HOST:PORT")]
    pub controller_addr: Option<String>,
    /// With --backend mpi: allow a --controller-addr that other machines can reach.
    #[arg(long)]
    pub controller_public: bool,
    /// With --backend mpi: where the run's token file goes (a private folder inside it;
    /// default: the system's temporary folder). On several nodes, a folder every node
    /// sees at the same path.
    #[arg(long, value_name = "DIR")]
    pub controller_token_dir: Option<PathBuf>,
    /// Open paused, before the first phase (space starts, n steps).
    #[arg(long)]
    pub paused: bool,
    /// With --backend mpi: a rank that waits this many seconds in one MPI call names
    /// whom it waits for and ends the job (default: 30, or 100 steps, at least 5).
    #[arg(long, value_name = "SECONDS")]
    pub stall_timeout: Option<f64>,
}

impl LabArgs {
    /// Records how to launch MPI jobs, and returns the experiment; an address to listen
    /// on that the flags do not allow is refused here, before the lab opens.
    pub fn setup(&self) -> Result<Experiment, CliError> {
        let bind = self.controller_addr.clone().unwrap_or_else(|| "127.0.0.1:0".into());
        crate::session::remote::check_bind(&bind, self.controller_public).map_err(CliError::usage)?;
        crate::session::remote::set_launch(crate::session::remote::MpiLaunch {
            mpirun: self.mpirun.clone(),
            mpirun_args: self
                .mpirun_args
                .as_deref()
                .map(|a| a.split_whitespace().map(String::from).collect())
                .unwrap_or_default(),
            bind,
            exe: None,
            stall_timeout: self.stall_timeout,
            public: self.controller_public,
            token_dir: self.controller_token_dir.clone(),
        });
        Ok(self.experiment.experiment())
    }
}

#[derive(Debug, Args)]
pub struct LessonsArgs {
    /// Load lessons from this folder (same format as the built-in ones) instead.
    #[arg(long, value_name = "DIR")]
    pub lessons: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct LessonArgs {
    /// The lesson's number (see `ddlab lessons`).
    #[arg(value_name = "N")]
    pub number: Option<usize>,
    /// Run the lessons' experiments headless and verify every check and claim: all, or
    /// lesson N. Exit code 0 when all hold.
    #[arg(long, value_name = "N|all", num_args = 0..=1, default_missing_value = "all")]
    pub check: Option<String>,
    /// Load lessons from this folder (same format as the built-in ones) instead.
    #[arg(long, value_name = "DIR")]
    pub lessons: Option<PathBuf>,
    /// Open every page's run paused, whatever the page says (an instructor driving).
    #[arg(long)]
    pub paused: bool,
    /// Run every page at this slow-motion factor, whatever the page says (1 = full speed).
    #[arg(long, value_name = "F")]
    pub slow: Option<f64>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub experiment: ExperimentArgs,
    /// Write JSON lines: one object per step and evaluation, a summary object last.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write one CSV row per step.
    #[arg(long, value_name = "FILE")]
    pub csv: Option<PathBuf>,
    /// Write a Chrome trace (open in Perfetto or chrome://tracing): one track per worker.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// No progress bar, no table: just the exit code and the exports.
    #[arg(long, short)]
    pub quiet: bool,
    /// Over MPI: a rank that waits this many seconds in one call names whom it waits
    /// for and ends the job (default: 30, or 100 steps when steps are fast, at least 5).
    #[arg(long, value_name = "SECONDS")]
    pub stall_timeout: Option<f64>,
    /// Over MPI: after naming a stalled rank, keep waiting for it instead of ending the job.
    #[arg(long)]
    pub stall_wait: bool,
}

/// The experiment flags, the same for every command (and keys of lesson files).
#[derive(Debug, Args, Clone, Default)]
pub struct ExperimentArgs {
    /// Where workers run: threads (this process) or mpi (one rank each, under mpirun).
    #[arg(long, value_name = "threads|mpi")]
    pub backend: Option<crate::config::Backend>,
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
    pub straggler: Vec<crate::config::Straggler>,
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
    pub grad_dtype: Option<crate::comm::Wire>,
    /// Seed for initialisation and shuffling.
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// Test-set accuracy every this many steps.
    #[arg(long, value_name = "STEPS")]
    pub eval_every: Option<u64>,
    /// Where workers compute: cpu, or gpu (WGSL kernels through wgpu; cargo feature gpu).
    #[arg(long, value_name = "cpu|gpu")]
    pub device: Option<crate::gpu::Device>,
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
                crate::config::Backend::Threads => "threads".into(),
                crate::config::Backend::Mpi => "mpi".into(),
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

/// What `--help` shows as each experiment flag's default: `Experiment::default()` read
/// through [`flags_of`]. The length flag the default does not use names the one it does.
fn help_defaults() -> Vec<(&'static str, String)> {
    let flags = flags_of(&Experiment::default());
    let mut defaults: Vec<(&'static str, String)> =
        flags.iter().map(|(name, value)| (*name, value.words(name))).collect();
    for (flag, other) in [("steps", "epochs"), ("epochs", "steps")] {
        if let (false, Some((_, v))) = (
            flags.iter().any(|(n, _)| *n == flag),
            flags.iter().find(|(n, _)| *n == other),
        ) {
            defaults.push((flag, format!("none (--{other} {})", v.words(other))));
        }
    }
    defaults
}

/// The command line, with every experiment flag's help ending in its default.
///
/// The defaults are appended to the help text at run time, from `Experiment::default()`,
/// so that there is one copy of them. (clap's `default_value` would also set the value,
/// making every flag look given, and lesson pages lay only the given flags over their
/// base experiment.)
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    let defaults = help_defaults();
    // The subcommands that take the experiment flags: those holding all of them.
    let experiment_flags: Vec<String> = ExperimentArgs::augment_args(clap::Command::new("experiment"))
        .get_arguments()
        .filter_map(|a| a.get_long().map(String::from))
        .collect();
    Cli::command().mut_subcommands(|sub| {
        let longs: Vec<&str> = sub.get_arguments().filter_map(|a| a.get_long()).collect();
        if !experiment_flags.iter().all(|f| longs.contains(&f.as_str())) {
            return sub;
        }
        sub.mut_args(|arg| {
            let default = arg
                .get_long()
                .and_then(|long| defaults.iter().find(|(flag, _)| *flag == long));
            match default {
                Some((_, value)) => {
                    let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
                    // `--help` prints the long help where a flag has one
                    let long = arg.get_long_help().map(|h| format!("{h} [default: {value}]"));
                    let arg = arg.help(format!("{help} [default: {value}]"));
                    match long {
                        Some(long) => arg.long_help(long),
                        None => arg,
                    }
                }
                None => arg,
            }
        })
    })
}

/// Parses the command line; clap's errors become one line and exit code 2.
pub fn parse() -> Result<Cli, CliError> {
    use clap::FromArgMatches;
    match command()
        .try_get_matches()
        .and_then(|matches| Cli::from_arg_matches(&matches))
    {
        Ok(cli) => Ok(cli),
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp
                    | clap::error::ErrorKind::DisplayVersion
                    | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) =>
        {
            let _ = e.print();
            std::process::exit(0);
        }
        Err(e) => {
            let text = e.render().to_string();
            let first = text
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid arguments");
            Err(CliError::usage(first.trim_start_matches("error: ").to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::comm::Wire;
    use crate::config::{Backend, Straggler};

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
            device: crate::gpu::Device::Gpu,
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

    #[test]
    fn the_help_of_every_experiment_flag_ends_in_its_default() {
        let mut cmd = command();
        let run = cmd.find_subcommand_mut("run").expect("a run subcommand");
        let help = |long: &str| {
            run.get_arguments()
                .find(|a| a.get_long() == Some(long))
                .and_then(|a| a.get_help())
                .map(ToString::to_string)
                .unwrap_or_default()
        };
        let d = Experiment::default();
        assert!(help("workers").ends_with(&format!("[default: {}]", d.workers)));
        assert!(help("lr").ends_with(&format!("[default: {}]", d.lr)));
        assert!(help("mode").ends_with(&format!("[default: {}]", d.mode)));
        assert!(help("link").ends_with("[default: none]"));
        assert!(help("overlap").ends_with("[default: off]"));
        assert!(
            help("steps").ends_with("[default: none (--epochs 30)]"),
            "{}",
            help("steps")
        );
        // `bench --device` has its own default and no experiment: left alone
        let bench = cmd.find_subcommand_mut("bench").expect("a bench subcommand");
        let device = bench.get_arguments().find(|a| a.get_long() == Some("device")).unwrap();
        assert!(!device.get_help().unwrap().to_string().contains("[default:"));
    }
}
