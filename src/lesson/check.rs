//! `ddlab lesson --check`: runs every page's experiment and every claim's runs headless
//! and verifies what the lesson says about them, so a lesson cannot rot into claiming
//! something the lab no longer shows.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Against, Lesson};
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

fn describe(exp: &Experiment) -> String {
    format!(
        "{} · {} workers · {} · lr {} · {}",
        exp.mode,
        exp.workers,
        exp.dataset,
        exp.lr,
        match exp.length {
            crate::config::Length::Steps(s) => format!("{s} steps"),
            crate::config::Length::Epochs(e) => format!("{e} epochs"),
        }
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
                    let (b, against) = match &c.against {
                        Against::Value(v) => (*v, fmt(*v)),
                        Against::Run(than) => {
                            let b = runs.metric(than, &c.metric)?;
                            (b, format!("{} ({})", fmt(b), describe(than)))
                        }
                    };
                    Ok((
                        c.op.holds(a, b),
                        format!(
                            "{} = {} ({}) {} {against}",
                            c.metric,
                            fmt(a),
                            describe(&c.with),
                            c.op.symbol()
                        ),
                    ))
                })();
                emit(&c.text, outcome);
            }
        }
    }
    all
}
