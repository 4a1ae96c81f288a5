//! Exports of a run: JSON lines, CSV, and a Chrome trace. Written as the run goes, so a
//! crash loses at most the buffered tail.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::json;

use super::ExitError;
use crate::session::{Event, RunState, Summary};

struct Out {
    path: PathBuf,
    flag: &'static str,
    w: BufWriter<std::fs::File>,
}

impl Out {
    fn create(flag: &'static str, path: &Path) -> Result<Out, ExitError> {
        let file = super::create_output(flag, path)?;
        Ok(Out {
            path: path.to_owned(),
            flag,
            w: BufWriter::new(file),
        })
    }
    fn line(&mut self, text: &str) -> Result<(), ExitError> {
        writeln!(self.w, "{text}").map_err(|e| self.failed(e))
    }
    fn failed(&self, e: std::io::Error) -> ExitError {
        ExitError::failure(format!("--{}: writing {} failed: {e}", self.flag, self.path.display()))
    }
    fn finish(mut self) -> Result<(), ExitError> {
        self.w.flush().map_err(|e| self.failed(e))
    }
}

/// Refuses two exports to one file, under one name or two (`./m`, a link, a hard link):
/// their lines would interleave into a file that no reader of either format can read.
/// Devices (`/dev/null`, a terminal) may take several.
fn distinct(files: &[(&'static str, Option<&Path>)]) -> Result<(), ExitError> {
    let given: Vec<(&str, &Path)> = files.iter().filter_map(|&(flag, path)| Some((flag, path?))).collect();
    for (i, &(flag, path)) in given.iter().enumerate() {
        if let Some((other, _)) = given[..i].iter().find(|(_, p)| same_file(p, path)) {
            return Err(ExitError::usage(format!(
                "--{flag}: {} is also the file of --{other}: give each export a file of its own",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Whether `a` and `b` are one regular file, or will be once created.
fn same_file(a: &Path, b: &Path) -> bool {
    if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
        if !(x.is_file() && y.is_file()) {
            return false;
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            return (x.dev(), x.ino()) == (y.dev(), y.ino());
        }
    }
    a == b || matches!((resolved(a), resolved(b)), (Some(x), Some(y)) if x == y)
}

/// `path` with its folder resolved (links, `.` and `..`), for a file not created yet.
fn resolved(path: &Path) -> Option<PathBuf> {
    if let Ok(p) = std::fs::canonicalize(path) {
        return Some(p);
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    Some(std::fs::canonicalize(dir).ok()?.join(path.file_name()?))
}

/// The exports one `ddlab run` asked for.
pub struct Exports {
    json: Option<Out>,
    csv: Option<Out>,
    trace: Option<Out>,
    trace_events: usize,
    steps_written: usize,
    evals_written: usize,
    segments_written: usize,
}

impl Exports {
    /// Opens every file up front, so that a bad path fails before training starts.
    pub fn open(json: Option<&Path>, csv: Option<&Path>, trace: Option<&Path>) -> Result<Exports, ExitError> {
        distinct(&[("json", json), ("csv", csv), ("trace", trace)])?;
        let mut exports = Exports {
            json: json.map(|p| Out::create("json", p)).transpose()?,
            csv: csv.map(|p| Out::create("csv", p)).transpose()?,
            trace: trace.map(|p| Out::create("trace", p)).transpose()?,
            trace_events: 0,
            steps_written: 0,
            evals_written: 0,
            segments_written: 0,
        };
        if let Some(csv) = &mut exports.csv {
            csv.line(
                "step,epoch,loss,batch_accuracy,grad_norm,grad_norm_reduced,lr,samples,time_s,allreduce_ms,bytes_sent",
            )?;
        }
        if let Some(trace) = &mut exports.trace {
            trace.line(r#"{"displayTimeUnit":"ms","traceEvents":["#)?;
        }
        Ok(exports)
    }

    fn trace_event(&mut self, value: serde_json::Value) -> Result<(), ExitError> {
        if let Some(trace) = &mut self.trace {
            let sep = if self.trace_events == 0 { "" } else { "," };
            self.trace_events += 1;
            trace.line(&format!("{sep}{value}"))?;
        }
        Ok(())
    }

    /// Feeds one event (for the trace).
    pub fn on_event(&mut self, event: &Event) -> Result<(), ExitError> {
        if self.trace.is_none() {
            return Ok(());
        }
        match event {
            Event::Started { .. } => {
                self.trace_event(json!({"name": "process_name", "ph": "M", "pid": 1, "args": {"name": "ddlab run"}}))?;
            }
            Event::Segment {
                index,
                mode,
                workers,
                t_ns,
                ..
            } => {
                if *index > 0 {
                    self.trace_event(json!({
                        "name": format!("switch to {mode} × {workers}"), "cat": "switch", "ph": "i", "s": "g",
                        "pid": 1, "tid": 0, "ts": *t_ns as f64 / 1e3,
                    }))?;
                }
                for w in 0..*workers {
                    self.trace_event(json!({"name": "thread_name", "ph": "M", "pid": 1, "tid": w, "args": {"name": format!("worker {w}")}}))?;
                }
            }
            Event::Phase {
                worker,
                step,
                phase,
                start_ns,
                end_ns,
            } => self.trace_event(json!({
                "name": phase.name(), "cat": "phase", "ph": "X", "pid": 1, "tid": worker,
                "ts": *start_ns as f64 / 1e3, "dur": (end_ns - start_ns) as f64 / 1e3, "args": {"step": step},
            }))?,
            Event::Eval {
                step,
                test_accuracy,
                t_ns,
                ..
            } => self.trace_event(json!({
                "name": "eval", "cat": "eval", "ph": "i", "s": "g", "pid": 1, "tid": 0,
                "ts": *t_ns as f64 / 1e3, "args": {"step": step, "test_accuracy": test_accuracy},
            }))?,
            _ => {}
        }
        Ok(())
    }

    /// Writes the steps and evaluations the state has gained since the last call.
    pub fn sync(&mut self, state: &RunState) -> Result<(), ExitError> {
        // Records the state made since the last call are the last ones it holds (exports
        // run with the full history, but count from the total to be safe).
        let new = (state.steps_total as usize - self.steps_written).min(state.steps.len());
        for rec in &state.steps[state.steps.len() - new..] {
            if let Some(json) = &mut self.json {
                let mut v = serde_json::to_value(rec).expect("records serialise");
                v["kind"] = json!("step");
                json.line(&v.to_string())?;
            }
            if let Some(csv) = &mut self.csv {
                csv.line(&format!(
                    "{},{},{},{},{},{},{},{},{:.6},{:.6},{}",
                    rec.step,
                    rec.epoch,
                    rec.loss,
                    rec.batch_accuracy,
                    rec.grad_norm,
                    rec.grad_norm_reduced,
                    rec.lr,
                    rec.samples,
                    rec.t_ns as f64 / 1e9,
                    rec.allreduce_ns as f64 / 1e6,
                    rec.bytes_sent
                ))?;
            }
        }
        self.steps_written = state.steps_total as usize;
        for rec in &state.evals[self.evals_written..] {
            if let Some(json) = &mut self.json {
                let mut v = serde_json::to_value(rec).expect("records serialise");
                v["kind"] = json!("eval");
                json.line(&v.to_string())?;
            }
        }
        self.evals_written = state.evals.len();
        // Where each switch happened (the first segment is the start).
        for seg in &state.segments[self.segments_written..] {
            if let Some(json) = &mut self.json {
                let mut v = serde_json::to_value(seg).expect("records serialise");
                v["kind"] = json!("segment");
                json.line(&v.to_string())?;
            }
        }
        self.segments_written = state.segments.len();
        // Flush as we go: what was measured survives a crash or a kill.
        for out in [&mut self.json, &mut self.csv, &mut self.trace].into_iter().flatten() {
            out.w.flush().map_err(|e| out.failed(e))?;
        }
        Ok(())
    }

    /// Writes the summary line and closes every file.
    pub fn finish(mut self, state: &RunState, summary: &Summary) -> Result<(), ExitError> {
        self.sync(state)?;
        if let Some(mut json) = self.json.take() {
            json.line(&serde_json::to_string(summary).expect("the summary serialises"))?;
            json.finish()?;
        }
        if let Some(csv) = self.csv.take() {
            csv.finish()?;
        }
        if let Some(mut trace) = self.trace.take() {
            trace.line("]}")?;
            trace.finish()?;
        }
        Ok(())
    }
}
