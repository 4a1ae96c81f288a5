//! The lab's model and its update function (the Elm loop's M and U). The view reads it;
//! nothing here draws.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::comm::{AllReduceAlgo, Link, Transfer};
use crate::config::{Experiment, Mode};
use crate::data::Dataset;
use crate::nn::LrScaling;
use crate::session::{RunState, Session, SessionOptions};
use crate::train::{Control, Event, Outcome, Phase, WorkerStep};

use super::keys::Action;

/// Phase spans kept per worker for the timeline.
const SPANS_PER_WORKER: usize = 256;
/// Messages kept for the all-reduce view.
const TRANSFERS_KEPT: usize = 256;
/// Lines of "what changed" kept.
const MESSAGES_KEPT: usize = 4;
/// Step and eval records kept by the session: a 30-minute run stays in bounded memory.
pub const HISTORY_LIMIT: usize = 4096;
/// Points kept per ghost curve.
const GHOST_POINTS: usize = 512;
/// Slow-motion settings the `z` key cycles through, in ms per phase.
const SLOW_MOTION_MS: [u32; 3] = [0, 20, 200];
/// The link presets the `l` key cycles through.
pub const LINKS: [(&str, Option<Link>); 4] = [
    ("none", None),
    ("100 Gb/s InfiniBand", Some(Link::PRESETS[0].1)),
    ("10 GbE", Some(Link::PRESETS[1].1)),
    ("1 GbE", Some(Link::PRESETS[2].1)),
];
/// The modes the `m` key cycles through.
pub const MODES: [Mode; 4] = [Mode::Sync, Mode::Async, Mode::Ssp(2), Mode::Backup(1)];

/// One phase of one worker, for the timeline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Span {
    pub phase: Phase,
    pub step: u64,
    pub start_ns: u64,
    pub end_ns: u64,
}

/// What the panels draw, fed from the event stream; every buffer is bounded.
#[derive(Debug, Clone, Default)]
pub struct LabView {
    pub spans: Vec<VecDeque<Span>>,
    /// Messages of recent all-reduces, newest last.
    pub transfers: VecDeque<(u64, Transfer)>,
    /// The samples each worker is working on.
    pub batches: Vec<Option<(u64, Vec<u32>)>>,
    /// Each worker's latest report.
    pub reports: Vec<Option<WorkerStep>>,
    /// The latest time any event carried.
    pub now_ns: u64,
}

impl LabView {
    fn worker<T: Default + Clone>(v: &mut Vec<T>, w: usize) -> &mut T {
        if v.len() <= w {
            v.resize(w + 1, T::default());
        }
        &mut v[w]
    }

    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::Phase {
                worker,
                step,
                phase,
                start_ns,
                end_ns,
            } => {
                let spans = Self::worker(&mut self.spans, *worker);
                spans.push_back(Span {
                    phase: *phase,
                    step: *step,
                    start_ns: *start_ns,
                    end_ns: *end_ns,
                });
                if spans.len() > SPANS_PER_WORKER {
                    spans.pop_front();
                }
                self.now_ns = self.now_ns.max(*end_ns);
            }
            Event::Transfer { step, transfer, .. } => {
                self.transfers.push_back((*step, *transfer));
                if self.transfers.len() > TRANSFERS_KEPT {
                    self.transfers.pop_front();
                }
            }
            Event::Batch { worker, step, indices } => {
                *Self::worker(&mut self.batches, *worker) = Some((*step, indices.clone()));
            }
            Event::WorkerStep(ws) => {
                self.now_ns = self.now_ns.max(ws.end_ns);
                *Self::worker(&mut self.reports, ws.worker) = Some(ws.clone());
            }
            Event::Segment { workers, .. } => {
                // Workers beyond the new count are gone: forget what they showed.
                self.spans.truncate(*workers);
                self.batches.truncate(*workers);
                self.reports.truncate(*workers);
                self.transfers.clear();
            }
            _ => {}
        }
    }

    /// The phase worker `w` went through last.
    pub fn last_span(&self, w: usize) -> Option<&Span> {
        self.spans.get(w).and_then(|s| s.back())
    }
}

/// A finished or abandoned run's curves, drawn faded for comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct Ghost {
    pub label: String,
    /// (seconds, samples, loss)
    pub loss: Vec<(f64, f64, f64)>,
    /// (seconds, samples, test accuracy)
    pub accuracy: Vec<(f64, f64, f64)>,
}

impl Ghost {
    pub fn of(label: String, state: &RunState) -> Ghost {
        let every = (state.steps.len() / GHOST_POINTS).max(1);
        Ghost {
            label,
            loss: state
                .steps
                .iter()
                .step_by(every)
                .map(|s| (s.t_ns as f64 / 1e9, s.samples as f64, s.loss))
                .collect(),
            accuracy: state
                .evals
                .iter()
                .map(|e| (e.t_ns as f64 / 1e9, e.samples as f64, e.test_accuracy))
                .collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Axis {
    Time,
    Samples,
}

/// A running (or, in tests, replayed) experiment and everything drawn about it.
pub struct Lab {
    /// `None` when the lab replays recorded events (tests, snapshots).
    pub session: Option<Session>,
    /// The state when there is no session.
    pub replay: RunState,
    pub view: LabView,
    /// The settings the next restart uses; switches update them too.
    pub exp: Experiment,
    pub data: Arc<Dataset>,
    pub ghosts: Vec<Ghost>,
    pub selected: usize,
    pub slow_ms: u32,
    /// Paused on purpose (space) or stepping (n).
    pub paused: bool,
    pub stepping: bool,
    pub axis: Axis,
    /// What changed, and when (seconds into the run), newest last.
    pub messages: VecDeque<String>,
    /// The last control refused, as one sentence.
    pub error: Option<String>,
    runs: usize,
}

impl Lab {
    pub fn start(exp: Experiment, data: Arc<Dataset>) -> Result<Lab, String> {
        let session = Self::session(&exp, &data)?;
        Ok(Lab {
            session: Some(session),
            ..Lab::replay(exp, data)
        })
    }

    /// A lab without a session, fed by `apply` (for tests and snapshots).
    pub fn replay(exp: Experiment, data: Arc<Dataset>) -> Lab {
        Lab {
            session: None,
            replay: RunState::with_history_limit(Some(HISTORY_LIMIT)),
            view: LabView::default(),
            exp,
            data,
            ghosts: Vec::new(),
            selected: 0,
            slow_ms: 0,
            paused: false,
            stepping: false,
            axis: Axis::Time,
            messages: VecDeque::new(),
            error: None,
            runs: 1,
        }
    }

    /// As `start`, paused before the first phase (to step from the very beginning).
    pub fn start_paused(exp: Experiment, data: Arc<Dataset>) -> Result<Lab, String> {
        let session = Self::session_with(&exp, &data, true)?;
        Ok(Lab {
            session: Some(session),
            paused: true,
            ..Lab::replay(exp, data)
        })
    }

    fn session(exp: &Experiment, data: &Arc<Dataset>) -> Result<Session, String> {
        Self::session_with(exp, data, false)
    }

    fn session_with(exp: &Experiment, data: &Arc<Dataset>, start_paused: bool) -> Result<Session, String> {
        let options = SessionOptions {
            detail: true,
            start_paused,
            history_limit: Some(HISTORY_LIMIT),
            ..SessionOptions::default()
        };
        if exp.backend == crate::config::Backend::Mpi {
            return Session::start_mpi(exp.clone(), Arc::clone(data), options, crate::session::remote::launch());
        }
        Session::start_with_data(exp.clone(), Arc::clone(data), options, None).map_err(|e| e.to_string())
    }

    pub fn state(&self) -> &RunState {
        self.session.as_ref().map_or(&self.replay, |s| s.state())
    }

    /// Feeds a recorded event (replay mode).
    pub fn apply(&mut self, event: &Event) {
        self.replay.apply(event);
        self.view.apply(event);
    }

    /// Reads whatever the run has produced since the last frame (never blocks).
    pub fn drain(&mut self) {
        if let Some(session) = self.session.as_mut() {
            let view = &mut self.view;
            session.poll(|e| view.apply(e));
            for note in session.take_notes() {
                self.say(note);
            }
        }
    }

    pub fn is_finished(&self) -> bool {
        self.state().outcome.is_some()
    }

    pub fn diverged_at(&self) -> Option<u64> {
        match self.state().outcome {
            Some(Outcome::Diverged { step, .. }) => Some(step),
            _ => None,
        }
    }

    fn now_s(&self) -> f64 {
        self.view.now_ns as f64 / 1e9
    }

    fn say(&mut self, what: String) {
        let line = format!("{:>7.2} s  {what}", self.now_s());
        self.messages.push_back(line);
        if self.messages.len() > MESSAGES_KEPT {
            self.messages.pop_front();
        }
    }

    /// Sends a control; a refusal becomes the on-screen error line.
    fn send(&mut self, control: Control, what: String) -> bool {
        let result = match self.session.as_mut() {
            Some(s) if s.state().outcome.is_none() => s.control(control).map_err(|e| e.to_string()),
            Some(_) => Err("the run has ended: press R to restart it".into()),
            None => Ok(()),
        };
        match result {
            Ok(()) => {
                self.error = None;
                self.say(what);
                true
            }
            Err(e) => {
                self.error = Some(e);
                false
            }
        }
    }

    /// The mode and worker count now running (or last run).
    pub fn current_mode(&self) -> Mode {
        self.state().current().map_or(self.exp.mode, |s| s.mode)
    }
    pub fn current_workers(&self) -> usize {
        self.state().current().map_or(self.exp.workers, |s| s.workers)
    }

    pub fn update(&mut self, action: Action) {
        match action {
            Action::TogglePause => {
                if self.paused || self.stepping {
                    if self.send(Control::Resume, "resumed".into()) {
                        self.paused = false;
                        self.stepping = false;
                    }
                } else if self.send(Control::Pause, "paused: space resumes, n steps one phase".into()) {
                    self.paused = true;
                }
            }
            Action::StepPhase => {
                if self.send(Control::StepPhase, "one phase of every worker".into()) {
                    self.stepping = true;
                }
            }
            Action::SlowMotion => {
                let i = SLOW_MOTION_MS.iter().position(|&m| m == self.slow_ms).unwrap_or(0);
                let ms = SLOW_MOTION_MS[(i + 1) % SLOW_MOTION_MS.len()];
                let what = if ms == 0 {
                    "slow motion off".to_string()
                } else {
                    format!("slow motion: every phase takes at least {ms} ms")
                };
                if self.send(Control::SlowMotion { ms }, what) {
                    self.slow_ms = ms;
                }
            }
            Action::CycleMode => {
                let i = MODES
                    .iter()
                    .position(|&m| m == self.current_mode())
                    .map_or(0, |i| i + 1);
                let mode = MODES[i % MODES.len()];
                let workers = self.current_workers();
                let mode = match mode {
                    Mode::Backup(_) if workers < 2 => Mode::Sync, // backup needs a worker to spare
                    m => m,
                };
                if self.send(Control::SetMode(mode), format!("switching to {mode} at the next step")) {
                    self.exp.mode = mode;
                }
            }
            Action::MoreWorkers | Action::FewerWorkers => {
                let n = self.current_workers();
                let n = if action == Action::MoreWorkers {
                    n + 1
                } else {
                    n.saturating_sub(1)
                };
                if self.send(
                    Control::SetWorkers(n),
                    format!("{n} workers from the next step (parameters kept)"),
                ) {
                    self.exp.workers = n;
                    self.exp.stragglers.retain(|s| s.worker < n);
                }
            }
            Action::CycleAllReduce => {
                let now = self.state().current().map_or(self.exp.allreduce, |s| s.allreduce);
                let i = AllReduceAlgo::ALL.iter().position(|&a| a == now).unwrap_or(0);
                let next = AllReduceAlgo::ALL[(i + 1) % AllReduceAlgo::ALL.len()];
                if self.send(
                    Control::SetAllReduce(next),
                    format!("{next} all-reduce from the next step"),
                ) {
                    self.exp.allreduce = next;
                }
            }
            Action::CycleLink => {
                let now = self.state().current().map_or(self.exp.link, |s| s.link);
                let i = LINKS.iter().position(|(_, l)| *l == now).unwrap_or(0);
                let (name, link) = LINKS[(i + 1) % LINKS.len()];
                let what = match link {
                    Some(l) => format!("emulated link: {name} ({l}) from the next step"),
                    None => "no emulated link: shared memory at full speed".into(),
                };
                if self.send(Control::SetLink(link), what) {
                    self.exp.link = link;
                }
            }
            Action::SelectWorker => {
                self.selected = (self.selected + 1) % self.current_workers().max(1);
                self.error = None;
            }
            Action::ToggleStraggler => {
                let w = self.selected.min(self.current_workers().saturating_sub(1));
                let slow = self.exp.stragglers.iter().any(|s| s.worker == w);
                let factor = if slow { 1.0 } else { 4.0 };
                let what = if slow {
                    format!("worker {w} back to normal speed")
                } else {
                    format!("worker {w} is now a straggler: 4× slower compute")
                };
                if self.send(Control::Straggler { worker: w, factor }, what) {
                    self.exp.stragglers.retain(|s| s.worker != w);
                    if !slow {
                        self.exp.stragglers.push(crate::config::Straggler { worker: w, factor });
                    }
                }
            }
            Action::CycleLrRule => {
                let now = self.state().current().map_or(self.exp.lr_scaling, |s| s.lr_scaling);
                let next = match now {
                    LrScaling::None => LrScaling::Linear,
                    LrScaling::Linear => LrScaling::None,
                };
                let what = match next {
                    LrScaling::Linear => format!("LR × workers = {}", self.exp.lr * self.current_workers() as f32),
                    LrScaling::None => format!("LR constant = {}", self.exp.lr),
                };
                if self.send(Control::SetLrScaling(next), what) {
                    self.exp.lr_scaling = next;
                }
            }
            Action::Restart => self.restart(),
            Action::ToggleBackend => {
                use crate::config::Backend;
                let before = self.exp.backend;
                self.exp.backend = match before {
                    Backend::Threads => Backend::Mpi,
                    Backend::Mpi => Backend::Threads,
                };
                if self.session.is_none() {
                    self.say(format!("backend: {:?}", self.exp.backend));
                    return;
                }
                self.restart();
                if self.error.is_some() {
                    // the run goes on where it was
                    self.exp.backend = before;
                }
            }
            Action::KeepGhost => {
                let label = format!(
                    "run {} ({} × {})",
                    self.runs,
                    self.current_mode(),
                    self.current_workers()
                );
                let ghost = Ghost::of(label.clone(), self.state());
                self.ghosts.push(ghost);
                if self.ghosts.len() > 3 {
                    self.ghosts.remove(0);
                }
                self.say(format!("kept {label} as a ghost"));
            }
            Action::ToggleAxis => {
                self.axis = match self.axis {
                    Axis::Time => Axis::Samples,
                    Axis::Samples => Axis::Time,
                }
            }
            Action::Help
            | Action::Quit
            | Action::Up
            | Action::Down
            | Action::Enter
            | Action::NextPage
            | Action::PrevPage
            | Action::Answer(_)
            | Action::Back => {}
        }
    }

    /// Starts the experiment again from fresh parameters with the current settings.
    pub fn restart(&mut self) {
        if self.session.is_none() {
            return;
        }
        match Self::session(&self.exp, &self.data) {
            Ok(session) => {
                self.session = Some(session); // the old one stops as it drops
                self.view = LabView::default();
                self.paused = false;
                self.stepping = false;
                self.slow_ms = 0;
                self.runs += 1;
                self.messages.clear();
                self.error = None;
                self.say(format!("restarted: run {}", self.runs));
            }
            Err(e) => self.error = Some(e),
        }
    }
}
