//! `ddlab compare`: one experiment under several modes, one table.

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use super::{CliError, ExperimentArgs};
use crate::config::Mode;
use crate::session::{Session, SessionError, SessionOptions};

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The modes to run, comma-separated: sync, async, ssp:K, backup:B.
    #[arg(
        long,
        value_name = "M1,M2,..",
        value_delimiter = ',',
        default_value = "sync,async,ssp:2,backup:1"
    )]
    pub modes: Vec<Mode>,
    /// Test accuracy whose first reaching is timed.
    #[arg(long, value_name = "ACC", default_value_t = 0.9)]
    pub target: f64,
    /// Also write the table as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub experiment: ExperimentArgs,
}

/// One mode's row.
#[derive(Debug, Clone, Serialize)]
pub struct CompareRow {
    pub mode: String,
    pub outcome: String,
    pub diverged: bool,
    pub test_accuracy: Option<f64>,
    /// Seconds until the test accuracy first reached the target; `None` if it never did.
    pub time_to_target_s: Option<f64>,
    pub steps: u64,
    pub samples: u64,
    pub steps_per_sec: f64,
    pub samples_per_sec: f64,
    pub staleness_mean: Option<f64>,
    pub idle_fraction: f64,
    pub dropped_gradients: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    pub target: f64,
    pub workers: usize,
    pub dataset: String,
    pub lr: f32,
    pub lr_scaling: String,
    pub rows: Vec<CompareRow>,
}

pub fn compare(args: &CompareArgs) -> Result<(), CliError> {
    if !(0.0..=1.0).contains(&args.target) {
        return Err(CliError::usage(format!(
            "--target: {} is not allowed: use an accuracy between 0 and 1, like 0.9",
            args.target
        )));
    }
    if args.modes.is_empty() {
        return Err(CliError::usage("--modes: name at least one mode, like sync,async"));
    }
    let base = args.experiment.experiment();
    // Check every mode before running any, so that a typo does not cost a minute.
    for &mode in &args.modes {
        crate::config::Experiment { mode, ..base.clone() }
            .validate()
            .map_err(|e| CliError::usage(e.to_string()))?;
    }
    let out = args
        .json
        .as_deref()
        .map(|p| super::create_output("json", p))
        .transpose()?;

    let data =
        std::sync::Arc::new(crate::data::Dataset::load(base.dataset).map_err(|e| CliError::usage(e.to_string()))?);
    say!(
        "ddlab compare: {} workers · {} · hidden {:?} · batch {}/worker · lr {} ({} scaling) · same seed and samples for every mode",
        base.workers, base.dataset, base.hidden, base.batch, base.lr, base.lr_scaling
    );
    say!(
        "{:<10} {:>9} {:>12} {:>9} {:>11} {:>11} {:>10} {:>6} {:>8}",
        "mode",
        "test acc",
        format!("time to {:.0}%", args.target * 100.0),
        "steps/s",
        "samples/s",
        "staleness",
        "idle",
        "dropped",
        "result"
    );
    let mut rows = Vec::new();
    for &mode in &args.modes {
        let exp = crate::config::Experiment { mode, ..base.clone() };
        let mut session = Session::start_with_data(exp, std::sync::Arc::clone(&data), SessionOptions::default(), None)
            .map_err(|e| match e {
                SessionError::Config(e) => CliError::usage(e.to_string()),
                SessionError::Data(e) => CliError::usage(e.to_string()),
                SessionError::Device(e) => CliError::usage(e),
            })?;
        session.run_to_end(|_| {});
        let s = session.summary();
        let reached = session
            .state()
            .evals
            .iter()
            .find(|e| e.test_accuracy >= args.target)
            .map(|e| e.t_ns as f64 / 1e9);
        let row = CompareRow {
            mode: mode.to_string(),
            outcome: s.outcome.to_string(),
            diverged: s.diverged,
            test_accuracy: s.test_accuracy,
            time_to_target_s: reached,
            steps: s.steps,
            samples: s.samples,
            steps_per_sec: s.steps_per_sec,
            samples_per_sec: s.samples_per_sec,
            staleness_mean: s.staleness_mean,
            idle_fraction: s.idle_fraction,
            dropped_gradients: s.dropped_gradients,
        };
        say!(
            "{:<10} {:>9} {:>12} {:>9.0} {:>11.0} {:>11} {:>9.1}% {:>6} {:>8}",
            row.mode,
            row.test_accuracy.map_or("–".into(), |a| format!("{:.2}%", a * 100.0)),
            row.time_to_target_s.map_or("never".into(), |t| format!("{t:.3} s")),
            row.steps_per_sec,
            row.samples_per_sec,
            row.staleness_mean.map_or("–".into(), |m| format!("{m:.2}")),
            row.idle_fraction * 100.0,
            row.dropped_gradients,
            if row.diverged { "DIVERGED" } else { row.outcome.as_str() }
        );
        rows.push(row);
    }
    if let Some(file) = out {
        let report = CompareReport {
            target: args.target,
            workers: base.workers,
            dataset: base.dataset.to_string(),
            lr: base.lr,
            lr_scaling: base.lr_scaling.to_string(),
            rows,
        };
        serde_json::to_writer_pretty(file, &report)
            .map_err(|e| CliError::failure(format!("--json: writing failed: {e}")))?;
    }
    Ok(())
}
