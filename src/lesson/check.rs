//! `ddlab lesson --check`: runs every page's experiment and every claim's runs headless
//! and verifies what the lesson says about them, so a lesson cannot rot into claiming
//! something the lab no longer shows.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Against, CmpOp, Lesson};
use crate::config::flags::flags_of;
use crate::config::Experiment;
use crate::data::Dataset;
use crate::data::DatasetKind;
use crate::session::{Session, SessionOptions};

/// One verified statement.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckLine {
    pub lesson: usize,
    pub page: usize,
    pub text: String,
    pub passed: bool,
    /// The figures behind the verdict.
    pub detail: String,
}

/// Runs experiments once each (by their settings) and keeps their summaries.
#[derive(Default)]
struct Runs {
    data: Vec<(DatasetKind, Arc<Dataset>)>,
    summaries: HashMap<String, serde_json::Value>,
}

impl Runs {
    fn summary(&mut self, exp: &Experiment) -> Result<&serde_json::Value, String> {
        // Figures are the same at any pace (slow motion dilates time): verify at full speed.
        let exp = &Experiment {
            slow: 1.0,
            ..exp.clone()
        };
        let key = serde_json::to_string(exp).map_err(|e| e.to_string())?;
        if !self.summaries.contains_key(&key) {
            let data = match self.data.iter().find(|(k, _)| *k == exp.dataset) {
                Some((_, d)) => Arc::clone(d),
                None => {
                    let d = Arc::new(Dataset::load(exp.dataset).map_err(|e| e.to_string())?);
                    self.data.push((exp.dataset, Arc::clone(&d)));
                    d
                }
            };
            let mut session = Session::start_with_data(exp.clone(), data, SessionOptions::default(), None)
                .map_err(|e| e.to_string())?;
            session.run_to_end(|_| {});
            let summary = serde_json::to_value(session.summary()).map_err(|e| e.to_string())?;
            self.summaries.insert(key.clone(), summary);
        }
        Ok(&self.summaries[&key])
    }

    fn metric(&mut self, exp: &Experiment, metric: &str) -> Result<f64, String> {
        let summary = self.summary(exp)?;
        match &summary[metric] {
            serde_json::Value::Number(n) => n.as_f64().ok_or_else(|| format!("{metric} is not a number")),
            serde_json::Value::Bool(b) => Ok(f64::from(u8::from(*b))),
            _ => Err(format!("the run has no {metric} (e.g. staleness in sync mode)")),
        }
    }
}

/// One run's settings as `flag value` words (`mode async`, `lr 0.05`), in the command
/// line's order.
fn settings(exp: &Experiment) -> Vec<String> {
    flags_of(exp)
        .into_iter()
        .map(|(flag, value)| format!("{flag} {}", value.words(flag)))
        .collect()
}

/// Whether a setting two runs share is worth repeating in a check's line: those a reader
/// always wants (mode, workers, LR, momentum, length) and any that is not the default.
fn worth_naming(setting: &str, defaults: &[String]) -> bool {
    const ALWAYS: [&str; 6] = ["mode ", "workers ", "lr ", "momentum ", "steps ", "epochs "];
    ALWAYS.iter().any(|p| setting.starts_with(p)) || !defaults.iter().any(|d| d == setting)
}

/// What tells two compared runs apart, flag by flag, and what they share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// The settings of the first run that the second lacks (`mode async`, `lr 0.0125`).
    pub first: Vec<String>,
    /// … and of the second that the first lacks (`mode sync`, `lr 0.1`).
    pub second: Vec<String>,
    /// The settings both have, where worth naming (see `worth_naming`).
    pub shared: Vec<String>,
}

/// Compares two runs field by field (through their command-line flags, so every field
/// of `Experiment` counts and is named as a user would type it).
pub fn difference(a: &Experiment, b: &Experiment) -> Difference {
    let (a, b) = (settings(a), settings(b));
    let defaults = settings(&Experiment::default());
    Difference {
        first: a.iter().filter(|s| !b.contains(s)).cloned().collect(),
        second: b.iter().filter(|s| !a.contains(s)).cloned().collect(),
        shared: a
            .iter()
            .filter(|s| b.contains(s) && worth_naming(s, &defaults))
            .cloned()
            .collect(),
    }
}

/// One run for a check's line: the settings worth naming.
fn describe(exp: &Experiment) -> String {
    let defaults = settings(&Experiment::default());
    settings(exp)
        .into_iter()
        .filter(|s| worth_naming(s, &defaults))
        .collect::<Vec<_>>()
        .join(" · ")
}

/// A claim comparing two runs: each run's value with what sets it apart, then what they
/// share, e.g. `test_accuracy = 0.089 with mode async < 0.944 with mode sync (both:
/// workers 8 · lr 0.05 · epochs 20)`.
fn compared(metric: &str, a: f64, op: CmpOp, b: f64, with: &Experiment, than: &Experiment) -> String {
    let d = difference(with, than);
    let side = |settings: &[String]| {
        if settings.is_empty() {
            // (a lesson comparing a run with itself: say so rather than print nothing)
            "the same settings".to_string()
        } else {
            settings.join(" · ")
        }
    };
    format!(
        "{metric} = {} with {} {} {} with {} (both: {})",
        fmt(a),
        side(&d.first),
        op.symbol(),
        fmt(b),
        side(&d.second),
        d.shared.join(" · ")
    )
}

fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// Verifies the checks and claims of `lessons` (all, or lesson `only`), reporting each
/// line as it is decided. Returns whether all passed.
pub fn check_lessons(lessons: &[Lesson], only: Option<usize>, mut report: impl FnMut(&CheckLine)) -> bool {
    let mut runs = Runs::default();
    let mut all = true;
    for lesson in lessons.iter().filter(|l| only.is_none_or(|n| l.number == n)) {
        for (p, page) in lesson.pages.iter().enumerate() {
            let mut emit = |text: &str, outcome: Result<(bool, String), String>| {
                let (passed, detail) = outcome.unwrap_or_else(|e| (false, e));
                all &= passed;
                report(&CheckLine {
                    lesson: lesson.number,
                    page: p + 1,
                    text: text.to_string(),
                    passed,
                    detail,
                });
            };
            for c in &page.checks {
                let outcome = runs.metric(&page.experiment, &c.metric).map(|v| {
                    (
                        c.op.holds(v, c.value),
                        format!(
                            "{} = {} {} {} ({})",
                            c.metric,
                            fmt(v),
                            c.op.symbol(),
                            fmt(c.value),
                            describe(&page.experiment)
                        ),
                    )
                });
                emit(&c.text, outcome);
            }
            for c in &page.claims {
                let outcome = (|| {
                    let a = runs.metric(&c.with, &c.metric)?;
                    match &c.against {
                        Against::Value(v) => Ok((
                            c.op.holds(a, *v),
                            format!(
                                "{} = {} ({}) {} {}",
                                c.metric,
                                fmt(a),
                                describe(&c.with),
                                c.op.symbol(),
                                fmt(*v)
                            ),
                        )),
                        Against::Run(than) => {
                            let b = runs.metric(than, &c.metric)?;
                            let mut line = compared(&c.metric, a, c.op, b, &c.with, than);
                            if c.factor != 1.0 {
                                // (the margin, said where the comparison is)
                                line = line.replacen(
                                    &format!(" {} ", c.op.symbol()),
                                    &format!(" {} {} × ", c.op.symbol(), fmt(c.factor)),
                                    1,
                                );
                            }
                            Ok((c.op.holds(a, c.factor * b), line))
                        }
                    }
                })();
                emit(&c.text, outcome);
            }
        }
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Length, Mode};

    #[test]
    fn a_comparison_names_what_differs_between_the_two_runs() {
        let sync = Experiment {
            workers: 8,
            lr: 0.1,
            ..Experiment::default()
        };
        let async_low = Experiment {
            mode: Mode::Async,
            lr: 0.0125,
            ..sync.clone()
        };
        let d = difference(&async_low, &sync);
        assert_eq!(d.first, ["mode async", "lr 0.0125"]);
        assert_eq!(d.second, ["mode sync", "lr 0.1"]);
        assert_eq!(d.shared, ["workers 8", "momentum 0.9", "epochs 30"]);
        let line = compared("test_accuracy", 0.089, CmpOp::Lt, 0.944, &async_low, &sync);
        assert_eq!(
            line,
            "test_accuracy = 0.089 with mode async · lr 0.0125 < 0.944 with mode sync · lr 0.1 (both: workers 8 · momentum 0.9 · epochs 30)"
        );
    }

    #[test]
    fn changing_any_one_setting_shows_on_both_sides_and_nowhere_else() {
        let base = Experiment::default();
        let one_change = [
            Experiment {
                workers: 2,
                ..base.clone()
            },
            Experiment {
                mode: Mode::Backup(1),
                ..base.clone()
            },
            Experiment {
                momentum: 0.0,
                ..base.clone()
            },
            Experiment {
                length: Length::Steps(20),
                ..base.clone()
            },
            Experiment {
                link: Some("1gbe".parse().unwrap()),
                ..base.clone()
            },
            Experiment {
                stragglers: vec!["1:8".parse().unwrap()],
                ..base.clone()
            },
            Experiment {
                overlap: true,
                ..base.clone()
            },
            Experiment {
                grad_dtype: crate::comm::Wire::F16,
                ..base.clone()
            },
            Experiment {
                hidden: vec![512],
                ..base.clone()
            },
        ];
        for changed in &one_change {
            let d = difference(changed, &base);
            assert_eq!((d.first.len(), d.second.len()), (1, 1), "{d:?}");
            assert_ne!(d.first, d.second);
            let flag = |s: &str| s.split(' ').next().unwrap().to_string();
            // the same flag on both sides, except when the length switches flags
            if !matches!(changed.length, Length::Steps(_)) {
                assert_eq!(flag(&d.first[0]), flag(&d.second[0]), "{d:?}");
            }
            assert!(!d.shared.iter().any(|s| d.first.contains(s) || d.second.contains(s)));
        }
        assert_eq!(
            difference(&one_change[4], &base).first,
            ["link 1gbe"],
            "presets by name"
        );
        assert_eq!(difference(&one_change[4], &base).second, ["link none"]);
    }

    #[test]
    fn one_run_is_described_by_what_a_reader_needs() {
        let exp = Experiment {
            stragglers: vec!["1:8".parse().unwrap()],
            hidden: vec![256, 256],
            length: Length::Epochs(10),
            ..Experiment::default()
        };
        assert_eq!(
            describe(&exp),
            "workers 4 · mode sync · hidden 256,256 · lr 0.1 · momentum 0.9 · epochs 10 · straggler 1:8"
        );
    }
}
