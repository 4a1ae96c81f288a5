//! `ddlab compare`: one experiment under several modes, one table.

use std::path::PathBuf;

use clap::Args;
use serde::Serialize;

use super::{ExitError, ExperimentArgs};
use crate::session::{Experiment, Length, LrScaling, Mode, Session, SessionOptions};

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The modes to run, comma-separated: sync, async, ssp:K, backup:B, local:H.
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
    /// Bytes all workers sent (all-reduces, averages, all-gathers, pushes and pulls):
    /// what local SGD and compression save.
    pub bytes_sent: u64,
    /// Gradients in one step (one update of the parameters): N for sync, N − B for
    /// backup:B, 1 for async and ssp. Steps/s of modes with different counts are not
    /// comparable; samples/s are.
    pub gradients_per_step: usize,
}

/// How many gradients one update of the parameters holds in `mode` with `workers`.
pub fn gradients_per_step(mode: Mode, workers: usize) -> usize {
    match mode {
        // (local SGD: each step is N workers' own updates, averaged every H)
        Mode::Sync | Mode::Local(_) => workers,
        Mode::Backup(b) => workers.saturating_sub(b),
        Mode::Async | Mode::Ssp(_) => 1,
    }
}

/// The learning-rate rule as a person says it: "LR 0.05, constant", or "LR 0.05 × 8 =
/// 0.4 (linear scaling)", and the warm-up if there is one.
pub fn lr_words(exp: &Experiment) -> String {
    let rule = match exp.lr_scaling {
        LrScaling::None => format!("LR {}, constant", exp.lr),
        LrScaling::Linear => format!(
            "LR {} × {} = {} (linear scaling)",
            exp.lr,
            exp.workers,
            exp.lr * exp.workers as f32
        ),
    };
    match exp.warmup {
        0 => rule,
        w => format!("{rule}, warmed up over {w} steps"),
    }
}

/// A learning rate to suggest, to three significant digits: `0.00625`, `0.0333`, not
/// `0.033333335`.
fn suggested(lr: f32) -> String {
    if !(lr.is_finite() && lr > 0.0) {
        return lr.to_string(); // (validation keeps the LR > 0; a quotient could underflow)
    }
    let decimals = (2 - lr.abs().log10().floor() as i32).max(0) as usize;
    let text = format!("{lr:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        text
    }
}

/// A run that learned next to nothing: within a quarter of the way from guessing
/// (1/classes) to perfect.
fn near_chance(accuracy: f64, classes: usize) -> bool {
    let chance = 1.0 / classes.max(1) as f64;
    accuracy < chance + 0.25 * (1.0 - chance)
}

/// One line on why a mode diverged or ended near chance, and what to try; `None` for a
/// run that learned. The suggestion is a flag to type, with its value.
pub fn hint(exp: &Experiment, row: &CompareRow, classes: usize) -> Option<String> {
    let n = exp.workers;
    let mode = exp.mode;
    let chance = 100.0 / classes.max(1) as f64;
    let ended = match (row.diverged, row.test_accuracy) {
        (true, _) => "diverged (the loss blew up)".to_string(),
        (false, Some(a)) if near_chance(a, classes) => format!(
            "ended at {:.1} %, {} chance ({chance:.0} %)",
            a * 100.0,
            if a * 100.0 <= chance * 1.2 {
                "about"
            } else {
                "not far above"
            }
        ),
        _ => return None,
    };
    let lower = |by: f32| suggested(exp.lr / by);
    Some(if mode.uses_server() && gradients_per_step(mode, n) == 1 && n > 1 {
        // Two reasons, both true whatever the scheduling: each update is one worker's
        // small batch at a rate chosen for N of them, and it lands on newer parameters
        // than it was computed from (by the staleness measured, not the N − 1 of theory).
        let late = row
            .staleness_mean
            .map_or(String::new(), |s| format!(", applied {s:.1} updates late on average"));
        let momentum = if exp.momentum > 0.0 {
            format!(", and momentum {} carries every push further", exp.momentum)
        } else {
            String::new()
        };
        format!(
            "{mode} {ended}: each of its updates is one worker's gradient (batch {}, where a sync step averages {n}){late}{momentum}, so at this LR the updates overshoot. Try --lr {} (the LR divided by the {n} workers){}.",
            exp.batch,
            lower(n as f32),
            if exp.momentum > 0.0 { " or --momentum 0" } else { "" }
        )
    } else {
        let effective = match exp.lr_scaling {
            LrScaling::None => exp.lr,
            LrScaling::Linear => exp.lr * n as f32,
        };
        format!(
            "{mode} {ended}: a learning rate of {effective} is too large for this network and batch. Try --lr {}{}.",
            lower(10.0),
            if exp.warmup == 0 {
                ", or a warm-up such as --warmup 30"
            } else {
                ""
            }
        )
    })
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

pub fn compare(args: &CompareArgs) -> Result<(), ExitError> {
    if !(0.0..=1.0).contains(&args.target) {
        return Err(ExitError::usage(format!(
            "--target: {} is not allowed: use an accuracy between 0 and 1, like 0.9",
            args.target
        )));
    }
    if args.modes.is_empty() {
        return Err(ExitError::usage("--modes: name at least one mode, like sync,async"));
    }
    let base = args.experiment.experiment();
    // Check every mode before running any, so that a typo does not cost a minute.
    for &mode in &args.modes {
        crate::session::Experiment { mode, ..base.clone() }
            .validate()
            .map_err(|e| ExitError::usage(e.to_string()))?;
    }
    let out = args
        .json
        .as_deref()
        .map(|p| super::create_output("json", p))
        .transpose()?;

    let data =
        std::sync::Arc::new(crate::session::Dataset::load(base.dataset).map_err(|e| ExitError::usage(e.to_string()))?);
    say!(
        "ddlab compare: {} workers · {} · hidden {} · batch {}/worker · {} · momentum {} · {} · same seed and samples for every mode",
        base.workers,
        base.dataset,
        if base.hidden.is_empty() {
            "none".to_string()
        } else {
            base.hidden.iter().map(usize::to_string).collect::<Vec<_>>().join(",")
        },
        base.batch,
        lr_words(&base),
        base.momentum,
        match base.length {
            Length::Steps(s) => format!("{s} steps"),
            Length::Epochs(e) => format!("{e} epochs"),
        }
    );
    say!(
        "{:<10} {:>9} {:>12} {:>9} {:>9} {:>11} {:>11} {:>10} {:>6} {:>8}",
        "mode",
        "test acc",
        format!("time to {:.0}%", args.target * 100.0),
        "sent",
        "steps/s",
        "samples/s",
        "staleness",
        "idle",
        "dropped",
        "result"
    );
    let mut rows = Vec::new();
    let mut hints = Vec::new();
    for &mode in &args.modes {
        let exp = crate::session::Experiment { mode, ..base.clone() };
        let mut session = Session::start_with_data(
            exp.clone(),
            std::sync::Arc::clone(&data),
            SessionOptions::default(),
            None,
        )?;
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
            bytes_sent: s.allreduce_bytes,
            gradients_per_step: gradients_per_step(mode, exp.workers),
        };
        hints.extend(hint(&exp, &row, data.classes));
        say!(
            "{:<10} {:>9} {:>12} {:>9} {:>9.0} {:>11.0} {:>11} {:>9.1}% {:>6} {:>8}",
            row.mode,
            row.test_accuracy.map_or("–".into(), |a| format!("{:.2}%", a * 100.0)),
            row.time_to_target_s.map_or("never".into(), |t| format!("{t:.3} s")),
            crate::units::bytes(row.bytes_sent),
            row.steps_per_sec,
            row.samples_per_sec,
            row.staleness_mean.map_or("–".into(), |m| format!("{m:.2}")),
            row.idle_fraction * 100.0,
            row.dropped_gradients,
            if row.diverged { "DIVERGED" } else { row.outcome.as_str() }
        );
        rows.push(row);
    }
    // A step is one update of the parameters, and modes put different numbers of
    // gradients into one: say so where that makes steps/s incomparable.
    let per_step: Vec<usize> = rows.iter().map(|r| r.gradients_per_step).collect();
    if per_step.iter().any(|&g| g != per_step[0]) {
        say!(
            "\nsteps/s counts updates of the parameters, and one update holds {}: compare throughput in samples/s.",
            rows.iter()
                .map(|r| format!(
                    "{} gradient{} in {}",
                    r.gradients_per_step,
                    if r.gradients_per_step == 1 { "" } else { "s" },
                    r.mode
                ))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if !hints.is_empty() {
        say!("");
    }
    for h in &hints {
        say!("{h}");
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
            .map_err(|e| ExitError::failure(format!("--json: writing failed: {e}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(mode: &str, accuracy: f64, diverged: bool) -> CompareRow {
        CompareRow {
            mode: mode.into(),
            outcome: "completed".into(),
            diverged,
            test_accuracy: Some(accuracy),
            time_to_target_s: None,
            steps: 100,
            samples: 3200,
            steps_per_sec: 1.0,
            samples_per_sec: 32.0,
            staleness_mean: (mode != "sync").then_some(6.6),
            idle_fraction: 0.0,
            dropped_gradients: 0,
            bytes_sent: 0,
            gradients_per_step: 1,
        }
    }

    #[test]
    fn the_lr_rule_reads_as_a_person_says_it() {
        let exp = Experiment {
            lr: 0.05,
            workers: 8,
            ..Experiment::default()
        };
        assert_eq!(lr_words(&exp), "LR 0.05, constant");
        let linear = Experiment {
            lr_scaling: LrScaling::Linear,
            warmup: 30,
            ..exp
        };
        assert_eq!(
            lr_words(&linear),
            "LR 0.05 × 8 = 0.4 (linear scaling), warmed up over 30 steps"
        );
    }

    #[test]
    fn async_at_chance_is_told_to_divide_its_lr_by_the_workers() {
        let exp = Experiment {
            mode: Mode::Async,
            workers: 8,
            lr: 0.05,
            momentum: 0.9,
            ..Experiment::default()
        };
        let h = hint(&exp, &row("async", 0.089, false), 10).expect("a hint");
        assert!(h.starts_with("async ended at 8.9 %, about chance (10 %)"), "{h}");
        assert!(
            h.contains("one worker's gradient (batch 32, where a sync step averages 8), applied 6.6 updates late on average, and momentum 0.9"),
            "{h}"
        );
        assert!(
            h.contains("Try --lr 0.00625 (the LR divided by the 8 workers) or --momentum 0."),
            "{h}"
        );
        assert_eq!(h.lines().count(), 1);
        let ssp = Experiment {
            mode: Mode::Ssp(2),
            ..exp.clone()
        };
        let h = hint(&ssp, &row("ssp:2", 0.22, false), 10).expect("a hint");
        assert!(
            h.starts_with("ssp:2 ended at 22.0 %, not far above chance (10 %)"),
            "{h}"
        );
        // a run that learned gets none; one just above the line neither
        assert_eq!(hint(&exp, &row("async", 0.93, false), 10), None);
        assert_eq!(hint(&exp, &row("async", 0.33, false), 10), None);
    }

    #[test]
    fn sync_at_chance_or_diverged_is_told_to_lower_its_lr() {
        let exp = Experiment {
            workers: 16,
            lr: 0.12,
            lr_scaling: LrScaling::Linear,
            ..Experiment::default()
        };
        let h = hint(&exp, &row("sync", 0.15, false), 10).expect("a hint");
        assert!(h.contains("a learning rate of 1.92 is too large"), "{h}");
        assert!(h.contains("Try --lr 0.012, or a warm-up such as --warmup 30."), "{h}");
        let h = hint(&exp, &row("sync", 0.5, true), 10).expect("a hint");
        assert!(h.starts_with("sync diverged"), "{h}");
    }

    #[test]
    fn suggested_rates_have_three_significant_digits() {
        assert_eq!(suggested(0.05 / 8.0), "0.00625");
        assert_eq!(suggested(0.1 / 3.0), "0.0333");
        assert_eq!(suggested(0.12 / 10.0), "0.012");
        assert_eq!(suggested(5.0 / 4.0), "1.25");
        assert_eq!(suggested(1000.0 / 10.0), "100");
    }

    #[test]
    fn gradients_per_step_follow_the_mode() {
        assert_eq!(gradients_per_step(Mode::Sync, 8), 8);
        assert_eq!(gradients_per_step(Mode::Backup(1), 8), 7);
        assert_eq!(gradients_per_step(Mode::Async, 8), 1);
        assert_eq!(gradients_per_step(Mode::Ssp(2), 8), 1);
    }
}
