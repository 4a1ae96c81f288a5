//! Headless front ends: the command line and its commands (run, compare, bench, check,
//! lessons, and the MPI rank behind the lab, `worker`).

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

pub use crate::session::ExitError;
use crate::session::{flags_of, Experiment, ExperimentArgs, FlagValue};

/// Creates an output file named by `--flag`, or says in one sentence why it cannot.
/// Front ends call it before any work, so that a bad path fails at once.
pub fn create_output(flag: &str, path: &std::path::Path) -> Result<std::fs::File, ExitError> {
    std::fs::File::create(path).map_err(|e| ExitError::usage(format!("--{flag}: cannot write {}: {e}", path.display())))
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
    pub fn setup(&self) -> Result<Experiment, ExitError> {
        let bind = self.controller_addr.clone().unwrap_or_else(|| "127.0.0.1:0".into());
        crate::session::remote::check_bind(&bind, self.controller_public).map_err(ExitError::usage)?;
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
pub fn parse() -> Result<Cli, ExitError> {
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
            Err(ExitError::usage(first.trim_start_matches("error: ").to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
