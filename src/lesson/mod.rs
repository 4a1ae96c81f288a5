//! Lessons: a versioned manifest (`lessons/info.toml`), and per lesson a `lesson.toml`
//! (for each page: the experiment, what to point at, "try this" prompts tied to actions
//! the lab detects, checks on the live run, claims verified headless, quiz questions) and
//! a `pages.md` narrative (pages separated by a line `---`). The course is embedded in
//! the binary; `--lessons DIR` loads an instructor's own folder in the same format.
//!
//! Every error names the file, the line and the key.

mod check;
mod embedded;
mod progress;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use clap::Parser;
use serde::Deserialize;
use toml::Spanned;

pub use check::{check_lessons, CheckLine};
pub use progress::{LessonProgress, Progress, ProgressStore};

use crate::config::flags::ExperimentArgs;
use crate::config::Experiment;

/// The manifest format this build reads.
pub const FORMAT_VERSION: u32 = 1;

/// A lesson file's problem: where, and what.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct LessonError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// Where lesson files come from: the binary, or a folder on disk.
pub trait Source {
    /// The text of `path` (relative to the lessons folder), None when missing, or why
    /// it cannot be read.
    fn read(&self, path: &str) -> Result<Option<String>, LessonError>;
    /// How to name `path` in errors.
    fn name(&self, path: &str) -> String;
}

/// The course built into the binary.
pub struct Embedded;

impl Source for Embedded {
    fn read(&self, path: &str) -> Result<Option<String>, LessonError> {
        Ok(embedded::FILES
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, text)| text.to_string()))
    }
    fn name(&self, path: &str) -> String {
        format!("lessons/{path}")
    }
}

/// The most one lesson file may hold. The built-in ones are a few KB; a file far larger
/// is a mistake, which would otherwise cost its size several times over in memory.
pub const MAX_LESSON_FILE: u64 = 1 << 20;

/// An instructor's folder.
pub struct Dir(pub PathBuf);

impl Source for Dir {
    fn read(&self, path: &str) -> Result<Option<String>, LessonError> {
        use std::io::Read;
        let error = |line: usize, message: String| LessonError {
            file: self.name(path),
            line,
            message,
        };
        let unreadable = |e: std::io::Error| error(1, format!("cannot be read ({e}): make it a file you can read"));
        let file = match std::fs::File::open(self.0.join(path)) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            file => file.map_err(unreadable)?,
        };
        let too_large = |bytes: u64| {
            error(
                1,
                format!(
                    "it is {bytes} bytes, more than the {} MiB a lesson file may hold: split the lesson or shorten its pages",
                    MAX_LESSON_FILE >> 20
                ),
            )
        };
        let length = file.metadata().map_err(unreadable)?.len();
        if length > MAX_LESSON_FILE {
            return Err(too_large(length));
        }
        // (read through a limit too: a file may grow, and a pipe has no length)
        let mut bytes = Vec::new();
        file.take(MAX_LESSON_FILE + 1)
            .read_to_end(&mut bytes)
            .map_err(unreadable)?;
        if bytes.len() as u64 > MAX_LESSON_FILE {
            return Err(too_large(bytes.len() as u64));
        }
        String::from_utf8(bytes).map(Some).map_err(|e| {
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            error(
                valid.iter().filter(|&&b| b == b'\n').count() + 1,
                format!("byte {} is not UTF-8 text: save the file as UTF-8", valid.len() + 1),
            )
        })
    }
    fn name(&self, path: &str) -> String {
        self.0.join(path).display().to_string()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestFile {
    format_version: u32,
    lesson: Vec<ManifestEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestEntry {
    /// The lesson's folder.
    id: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LessonFile {
    title: String,
    summary: String,
    #[serde(default)]
    sources: Vec<String>,
    page: Vec<Spanned<PageFile>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageFile {
    title: String,
    /// Flags of the experiment this page runs (the same names as the command line's,
    /// without `--`); absent: the previous page's run goes on.
    experiment: Option<BTreeMap<String, Spanned<toml::Value>>>,
    /// Whether the page's run starts paused (for stepping); on a page that goes on with
    /// the previous run, the page pauses it.
    #[serde(default)]
    start_paused: bool,
    /// Slow motion for the page's run: the dilation factor (1 = full speed); on a page
    /// that goes on with the previous run, the page sets the pace.
    slow: Option<f64>,
    /// The curves' x axis on this page (absent: the lab's own choice).
    axis: Option<Axis>,
    #[serde(default)]
    point_at: Vec<Panel>,
    #[serde(default, rename = "try")]
    tries: Vec<Try>,
    #[serde(default)]
    check: Vec<Check>,
    #[serde(default)]
    claim: Vec<ClaimFile>,
    #[serde(default)]
    quiz: Vec<Quiz>,
}

/// What the lab's curves are drawn against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Axis {
    /// Seconds of the run: where throughput is the point.
    Time,
    /// Samples processed: where runs are compared on what they learned.
    Samples,
}

/// A panel of the lab a page points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Panel {
    Header,
    Timeline,
    Collective,
    Curves,
    Numbers,
    Explain,
    Digits,
}

/// Something the learner does in the lab that a prompt waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LessonAction {
    Pause,
    StepPhase,
    SlowMotion,
    SwitchToSync,
    SwitchToAsync,
    SwitchToSsp,
    SwitchToBackup,
    SwitchToLocal,
    AddWorker,
    RemoveWorker,
    ChangeThreads,
    ChangeAllreduce,
    ChangeLink,
    AddStraggler,
    RemoveStraggler,
    LinearLrScaling,
    RaiseLr,
    LowerLr,
    MomentumOff,
    MomentumOn,
    KeepGhost,
    Restart,
}

impl LessonAction {
    pub const ALL: [LessonAction; 22] = [
        LessonAction::Pause,
        LessonAction::StepPhase,
        LessonAction::SlowMotion,
        LessonAction::SwitchToSync,
        LessonAction::SwitchToAsync,
        LessonAction::SwitchToSsp,
        LessonAction::SwitchToBackup,
        LessonAction::SwitchToLocal,
        LessonAction::AddWorker,
        LessonAction::RemoveWorker,
        LessonAction::ChangeThreads,
        LessonAction::ChangeAllreduce,
        LessonAction::ChangeLink,
        LessonAction::AddStraggler,
        LessonAction::RemoveStraggler,
        LessonAction::LinearLrScaling,
        LessonAction::RaiseLr,
        LessonAction::LowerLr,
        LessonAction::MomentumOff,
        LessonAction::MomentumOn,
        LessonAction::KeepGhost,
        LessonAction::Restart,
    ];
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Try {
    pub prompt: String,
    pub action: LessonAction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum CmpOp {
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = "<")]
    Lt,
    /// Exactly equal: for what must not change at all (threads never change the bits).
    #[serde(rename = "==")]
    Eq,
}

impl CmpOp {
    pub fn holds(self, a: f64, b: f64) -> bool {
        match self {
            CmpOp::Ge => a >= b,
            CmpOp::Le => a <= b,
            CmpOp::Gt => a > b,
            CmpOp::Lt => a < b,
            CmpOp::Eq => a == b,
        }
    }
    pub fn symbol(self) -> &'static str {
        match self {
            CmpOp::Ge => "≥",
            CmpOp::Le => "≤",
            CmpOp::Gt => ">",
            CmpOp::Lt => "<",
            CmpOp::Eq => "=",
        }
    }
}

/// The summary's numeric fields a check may name (as in `ddlab run --json`).
pub const METRICS: [&str; 15] = [
    "test_accuracy",
    "final_loss",
    "test_loss",
    "steps",
    "samples",
    "steps_per_sec",
    "samples_per_sec",
    "allreduce_bytes",
    "allreduce_ms",
    "allreduce_comm_ms",
    "allreduce_busbw_gbps",
    "staleness_mean",
    "dropped_gradients",
    "idle_fraction",
    "diverged",
];

/// A condition on the page's run: `metric op value`, checked live in the lab and at the
/// end of the run by `ddlab lesson --check`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    pub metric: String,
    pub op: CmpOp,
    pub value: f64,
    /// How the page words it.
    pub text: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClaimFile {
    text: String,
    metric: String,
    op: CmpOp,
    /// Flags changed from the page's experiment for the run the claim is about.
    #[serde(default)]
    with: BTreeMap<String, Spanned<toml::Value>>,
    /// Compared with a number…
    value: Option<f64>,
    /// …or with another run: flags changed from the page's experiment…
    than: Option<BTreeMap<String, Spanned<toml::Value>>>,
    /// …whose figure is first multiplied by this margin (`metric(with) >= 0.5 ×
    /// metric(than)`): timings that hold on a busy machine are relative, with room.
    factor: Option<f64>,
}

/// Something the text says about runs, verified headless: `metric(with) op value`, or
/// `metric(with) op metric(than)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    pub text: String,
    pub metric: String,
    pub op: CmpOp,
    pub with: Experiment,
    pub against: Against,
    /// The margin the other run's figure is multiplied by (1: none).
    pub factor: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Against {
    Value(f64),
    Run(Box<Experiment>),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quiz {
    pub question: String,
    pub choices: Vec<String>,
    /// The right choice, counting from 1.
    pub answer: usize,
    pub explain: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub title: String,
    /// The narrative (Markdown).
    pub text: String,
    /// The experiment the page's run uses: its own, or the previous page's.
    pub experiment: Experiment,
    /// Whether the page starts a new run (it names an experiment).
    pub starts_run: bool,
    pub start_paused: bool,
    /// The pace the page asks for (None: the run's own).
    pub slow: Option<f64>,
    /// The curves' axis the page asks for.
    pub axis: Option<Axis>,
    pub point_at: Vec<Panel>,
    pub tries: Vec<Try>,
    pub checks: Vec<Check>,
    pub claims: Vec<Claim>,
    pub quiz: Vec<Quiz>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Lesson {
    /// 1-based, in manifest order.
    pub number: usize,
    pub id: String,
    pub title: String,
    pub summary: String,
    pub sources: Vec<String>,
    pub pages: Vec<Page>,
}

/// Line (1-based) of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn toml_error(file: &str, text: &str, e: toml::de::Error) -> LessonError {
    LessonError {
        file: file.to_string(),
        line: e.span().map_or(1, |s| line_of(text, s.start)),
        // (toml's messages can run over several lines: one sentence here)
        message: e
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(": "),
    }
}

/// The experiment flags of a table, applied over `base`: each key is a command-line flag
/// without `--`, each value what the flag takes (`true` for a switch). They are parsed
/// by the command line's own parser, so a lesson can say exactly what a user can type.
fn experiment_from(
    file: &str,
    text: &str,
    table: &BTreeMap<String, Spanned<toml::Value>>,
    base: &Experiment,
) -> Result<Experiment, LessonError> {
    #[derive(Parser)]
    #[command(no_binary_name = true)]
    struct Flags {
        #[command(flatten)]
        experiment: ExperimentArgs,
    }
    let mut exp = base.clone();
    for (key, value) in table {
        let line = line_of(text, value.span().start);
        let err = |message: String| LessonError {
            file: file.to_string(),
            line,
            message: format!("experiment key `{key}`: {message}"),
        };
        let flag = format!("--{key}");
        let args: Vec<String> = match value.get_ref() {
            toml::Value::Boolean(true) => vec![flag],
            toml::Value::Boolean(false) => vec![],
            toml::Value::String(s) => vec![flag, s.clone()],
            toml::Value::Integer(i) => vec![flag, i.to_string()],
            toml::Value::Float(f) => vec![flag, f.to_string()],
            toml::Value::Array(items) => {
                let parts: Vec<String> = items
                    .iter()
                    .map(|v| match v {
                        toml::Value::Integer(i) => Ok(i.to_string()),
                        toml::Value::String(s) => Ok(s.clone()),
                        other => Err(err(format!(
                            "a list may hold numbers or text, not a {}",
                            other.type_str()
                        ))),
                    })
                    .collect::<Result<_, _>>()?;
                vec![flag, parts.join(",")]
            }
            other => {
                return Err(err(format!(
                    "a {} is not a flag value: use text, a number, true or a list",
                    other.type_str()
                )))
            }
        };
        let flags = Flags::try_parse_from(&args).map_err(|e| {
            let text = e.to_string();
            let first = text
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("error: ")
                .to_string();
            err(if first.contains("unexpected argument") {
                format!("there is no such experiment flag (`ddlab run --help` lists them): {first}")
            } else {
                first
            })
        })?;
        exp = flags.experiment.apply_to(exp);
        // a switch given as false turns it off
        if matches!(value.get_ref(), toml::Value::Boolean(false)) {
            match key.as_str() {
                "overlap" => exp.overlap = false,
                "nesterov" => exp.nesterov = false,
                "no-error-feedback" => exp.error_feedback = true,
                _ => {}
            }
        }
    }
    exp.validate().map_err(|e| LessonError {
        file: file.to_string(),
        line: table.values().next().map_or(1, |v| line_of(text, v.span().start)),
        message: format!("experiment: {e}"),
    })?;
    Ok(exp)
}

/// Splits a narrative into pages at lines that are exactly `---`.
fn split_pages(text: &str) -> Vec<String> {
    let mut pages = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" {
            pages.push(String::new());
        } else {
            let page = pages.last_mut().expect("one page at least");
            page.push_str(line);
            page.push('\n');
        }
    }
    pages.into_iter().map(|p| p.trim().to_string()).collect()
}

/// Parses one lesson from its two files.
pub fn parse_lesson(
    number: usize,
    id: &str,
    toml_name: &str,
    toml_text: &str,
    md_name: &str,
    md_text: &str,
) -> Result<Lesson, LessonError> {
    let file: LessonFile = toml::from_str(toml_text).map_err(|e| toml_error(toml_name, toml_text, e))?;
    let texts = split_pages(md_text);
    if texts.len() != file.page.len() {
        return Err(LessonError {
            file: md_name.to_string(),
            line: md_text.lines().count().max(1),
            message: format!(
                "{} pages of text (separated by lines of ---) but {} [[page]] tables in {toml_name}: every page needs both",
                texts.len(),
                file.page.len()
            ),
        });
    }
    if file.page.is_empty() {
        return Err(LessonError {
            file: toml_name.to_string(),
            line: 1,
            message: "a lesson needs at least one [[page]]".into(),
        });
    }
    let mut pages = Vec::new();
    let mut current = Experiment::default();
    for (i, (spanned, text)) in file.page.into_iter().zip(texts).enumerate() {
        let page_line = line_of(toml_text, spanned.span().start);
        let p = spanned.into_inner();
        let at = |message: String| LessonError {
            file: toml_name.to_string(),
            line: page_line,
            message: format!("page {}: {message}", i + 1),
        };
        if i == 0 && p.experiment.is_none() {
            return Err(at("the first page must set an experiment".into()));
        }
        let starts_run = p.experiment.is_some();
        if let Some(table) = &p.experiment {
            current = experiment_from(toml_name, toml_text, table, &Experiment::default())?;
        }
        if let Some(slow) = p.slow {
            Experiment {
                slow,
                ..Experiment::default()
            }
            .validate()
            .map_err(|e| at(format!("slow: {e}")))?;
        }
        for c in &p.check {
            if !METRICS.contains(&c.metric.as_str()) {
                return Err(at(format!(
                    "check metric `{}` is not one of {}",
                    c.metric,
                    METRICS.join(", ")
                )));
            }
        }
        let mut claims = Vec::new();
        for c in p.claim {
            if !METRICS.contains(&c.metric.as_str()) {
                return Err(at(format!(
                    "claim metric `{}` is not one of {}",
                    c.metric,
                    METRICS.join(", ")
                )));
            }
            let with = experiment_from(toml_name, toml_text, &c.with, &current)?;
            let against = match (c.value, c.than) {
                (Some(v), None) => Against::Value(v),
                (None, Some(than)) => Against::Run(Box::new(experiment_from(toml_name, toml_text, &than, &current)?)),
                _ => return Err(at(format!("claim \"{}\": give either `value` or `than`", c.text))),
            };
            let factor = match (c.factor, &against) {
                (None, _) => 1.0,
                (Some(f), Against::Run(_)) if f.is_finite() && f > 0.0 => f,
                (Some(f), Against::Run(_)) => {
                    return Err(at(format!("claim \"{}\": factor {f} is not a positive number", c.text)))
                }
                (Some(_), Against::Value(_)) => {
                    return Err(at(format!(
                        "claim \"{}\": a factor scales another run's figure: give `than`, or fold it into `value`",
                        c.text
                    )))
                }
            };
            claims.push(Claim {
                text: c.text,
                metric: c.metric,
                op: c.op,
                with,
                against,
                factor,
            });
        }
        for q in &p.quiz {
            if q.choices.len() < 2 || q.choices.len() > 4 {
                return Err(at(format!("quiz \"{}\": give 2 to 4 choices", q.question)));
            }
            if q.answer == 0 || q.answer > q.choices.len() {
                return Err(at(format!(
                    "quiz \"{}\": answer {} is not a choice (count from 1 to {})",
                    q.question,
                    q.answer,
                    q.choices.len()
                )));
            }
        }
        if text.is_empty() {
            return Err(LessonError {
                file: md_name.to_string(),
                line: 1,
                message: format!("page {} has no text", i + 1),
            });
        }
        pages.push(Page {
            title: p.title,
            text,
            experiment: current.clone(),
            starts_run,
            start_paused: p.start_paused,
            slow: p.slow,
            axis: p.axis,
            point_at: p.point_at,
            tries: p.tries,
            checks: p.check,
            claims,
            quiz: p.quiz,
        });
    }
    Ok(Lesson {
        number,
        id: id.to_string(),
        title: file.title,
        summary: file.summary,
        sources: file.sources,
        pages,
    })
}

/// Loads the manifest and every lesson it lists.
pub fn load(source: &dyn Source) -> Result<Vec<Lesson>, LessonError> {
    let manifest_name = source.name("info.toml");
    let text = source.read("info.toml")?.ok_or_else(|| LessonError {
        file: manifest_name.clone(),
        line: 1,
        message: "the lesson manifest is missing: a lessons folder needs an info.toml".into(),
    })?;
    let manifest: ManifestFile = toml::from_str(&text).map_err(|e| toml_error(&manifest_name, &text, e))?;
    if manifest.format_version != FORMAT_VERSION {
        return Err(LessonError {
            file: manifest_name,
            line: text
                .lines()
                .position(|l| l.contains("format_version"))
                .map_or(1, |i| i + 1),
            message: format!(
                "format_version {} is not one this ddlab reads ({FORMAT_VERSION}): update ddlab or the lessons",
                manifest.format_version
            ),
        });
    }
    let mut lessons = Vec::new();
    for (i, entry) in manifest.lesson.iter().enumerate() {
        let line = text
            .lines()
            .position(|l| l.contains(&format!("\"{}\"", entry.id)))
            .map_or(1, |i| i + 1);
        if entry.id.is_empty() || entry.id.contains(['/', '\\']) || entry.id.starts_with('.') {
            return Err(LessonError {
                file: manifest_name,
                line,
                message: format!("lesson id `{}` must be a plain folder name", entry.id),
            });
        }
        let toml_path = format!("{}/lesson.toml", entry.id);
        let md_path = format!("{}/pages.md", entry.id);
        let missing = |path: &str| LessonError {
            file: manifest_name.clone(),
            line,
            message: format!("lesson `{}` lists {} but it is missing", entry.id, source.name(path)),
        };
        let toml_text = source.read(&toml_path)?.ok_or_else(|| missing(&toml_path))?;
        let md_text = source.read(&md_path)?.ok_or_else(|| missing(&md_path))?;
        lessons.push(parse_lesson(
            i + 1,
            &entry.id,
            &source.name(&toml_path),
            &toml_text,
            &source.name(&md_path),
            &md_text,
        )?);
    }
    if lessons.is_empty() {
        return Err(LessonError {
            file: manifest_name,
            line: 1,
            message: "the manifest lists no lessons".into(),
        });
    }
    Ok(lessons)
}

/// The built-in course, or the folder given.
pub fn load_from(dir: Option<&Path>) -> Result<Vec<Lesson>, LessonError> {
    match dir {
        Some(d) => load(&Dir(d.to_path_buf())),
        None => load(&Embedded),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_split_at_rule_lines_only() {
        assert_eq!(split_pages("a\n---\nb --- c\n---\n\nd\n"), vec!["a", "b --- c", "d"]);
    }

    #[test]
    fn the_built_in_course_loads() {
        let lessons = load(&Embedded).unwrap();
        assert_eq!(lessons.len(), 12);
        for (i, l) in lessons.iter().enumerate() {
            assert_eq!(l.number, i + 1);
            assert!(!l.pages.is_empty());
        }
    }
}
