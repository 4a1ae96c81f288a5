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
    /// (default: loopback, a free port; give this node's address for several nodes).
    #[arg(long, value_name = "HOST:PORT")]
    pub controller_addr: Option<String>,
    /// Open paused, before the first phase (space starts, n steps).
    #[arg(long)]
    pub paused: bool,
}

impl LabArgs {
    /// Records how to launch MPI jobs, and returns the experiment.
    pub fn setup(&self) -> Experiment {
        crate::session::remote::set_launch(crate::session::remote::MpiLaunch {
            mpirun: self.mpirun.clone(),
            mpirun_args: self
                .mpirun_args
                .as_deref()
                .map(|a| a.split_whitespace().map(String::from).collect())
                .unwrap_or_default(),
            bind: self.controller_addr.clone().unwrap_or_else(|| "127.0.0.1:0".into()),
            exe: None,
        });
        self.experiment.experiment()
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
    /// How workers combine gradients: sync, async, ssp:K or backup:B.
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
    /// them), round-robin over the workers. Default: every GPU found.
    #[arg(long, value_name = "I,J,..", value_delimiter = ',')]
    pub gpus: Option<Vec<usize>>,
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
            slow
        );
        if self.overlap {
            exp.overlap = true;
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

/// Parses the command line; clap's errors become one line and exit code 2.
pub fn parse() -> Result<Cli, CliError> {
    match Cli::try_parse() {
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
