//! The lab's model and its update function (the Elm loop's M and U). The view reads it;
//! nothing here draws.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::session::{
    AllReduceAlgo, Control, Dataset, Event, Experiment, Link, LrScaling, Mode, Outcome, Phase, RunState, Session,
    SessionOptions, Transfer, WorkerStep,
};

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
/// How much slower the `s` key makes the selected worker's compute.
pub const STRAGGLER_FACTOR: f32 = 4.0;
/// The momentum the `M` key turns back on (the experiment's default).
pub const MOMENTUM: f32 = crate::session::DEFAULT_MOMENTUM;
/// What the `*` and `/` keys multiply and divide the learning rate by.
pub const LR_FACTOR: f64 = 10.0;
/// The link presets the `l` key cycles through.
pub const LINKS: [(&str, Option<Link>); 4] = [
    ("none", None),
    ("100 Gb/s InfiniBand", Some(Link::PRESETS[0].1)),
    ("10 GbE", Some(Link::PRESETS[1].1)),
    ("1 GbE", Some(Link::PRESETS[2].1)),
];
/// This machine's cores (1 when the OS does not say).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |c| c.get())
}

/// The compute threads per worker the `t` key cycles through on a machine of `cores`
/// cores: doubling from 1 up to the cores (and the cores themselves when they are not a
/// power of two), at least up to 2, so that even one core can show threads taking
/// turns. Never past the flag's own bound.
pub fn thread_counts(cores: usize) -> Vec<usize> {
    let top = cores.clamp(2, crate::session::MAX_THREADS);
    let mut counts: Vec<usize> = std::iter::successors(Some(1usize), |t| Some(t * 2))
        .take_while(|&t| t < top)
        .collect();
    counts.push(top);
    counts
}

/// The modes the `m` key cycles through.
pub const MODES: [Mode; 5] = [Mode::Sync, Mode::Async, Mode::Ssp(2), Mode::Backup(1), Mode::Local(8)];

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
            // (the broadcast of the parameters at a segment's start is not a step's
            // all-reduce: the collective view shows all-reduces)
            Event::Transfer {
                step,
                transfer,
                collective: crate::session::CollectiveKind::AllReduce | crate::session::CollectiveKind::AllGather,
            } => {
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

pub use crate::lesson::Axis;

/// A running (or, in tests, replayed) experiment and everything drawn about it.
pub struct Lab {
    /// `None` when the lab replays recorded events (tests, snapshots).
    pub session: Option<Session>,
    /// The state when there is no session.
    pub replay: RunState,
    pub view: LabView,
    /// The settings the run is going to: every switch changes them at once (so that
    /// switches made while paused add up), the run takes them at its next step, and a
    /// restart starts from them. `exp.slow` is the pace.
    pub exp: Experiment,
    pub data: Arc<Dataset>,
    pub ghosts: Vec<Ghost>,
    pub selected: usize,
    /// The pace `z` chose, in steps per second (None: full speed, or `--slow` as given).
    pub pace_target: Option<f64>,
    /// Paused on purpose (space) or stepping (n).
    pub paused: bool,
    pub stepping: bool,
    /// The curves' x axis as chosen (x, or a lesson page); None: samples when runs are
    /// compared (ghosts kept) or the run was held by hand, time otherwise.
    pub axis: Option<Axis>,
    /// This run was paused or stepped by a person: its seconds include their pace
    /// (20 s of presses would squeeze the whole run into the left edge of a time axis).
    pub held_by_hand: bool,
    /// What changed, and when (seconds into the run), newest last.
    pub messages: VecDeque<String>,
    /// The last control refused, as one sentence.
    pub error: Option<String>,
    /// The latest thing said (a change or a refusal), for the status line; when.
    pub said: Option<(String, Instant)>,
    /// The run has passed the length it was given (it trains on: the lab's runs never
    /// end under the learner's hands).
    pub passed_length: bool,
    runs: usize,
}

/// How long the status line shows what was last said before it shows the state again.
const SAID_FOR: Duration = Duration::from_secs(8);

/// Paces the `z` key cycles through, after full speed: about this many steps (sync) or
/// iterations of each worker (parameter server) per second.
pub const PACES: [Option<f64>; 4] = [None, Some(10.0), Some(1.0), Some(0.2)];

/// "10 steps/s", "1 step/s", "1 step per 5 s".
pub fn pace_words(steps_per_s: f64) -> String {
    if steps_per_s >= 1.0 {
        let n = steps_per_s.round();
        format!("{n} step{}/s", if n == 1.0 { "" } else { "s" })
    } else {
        format!("1 step per {:.0} s", 1.0 / steps_per_s)
    }
}

impl Lab {
    /// Starts `exp` in the lab: a run that trains on past its length (paused before
    /// the first phase when asked, to step from the very beginning).
    pub fn start(exp: Experiment, data: Arc<Dataset>, paused: bool) -> Result<Lab, String> {
        let session = Self::session_with(&exp, &data, paused)?;
        let over = exp.oversubscription();
        let mut lab = Lab {
            session: Some(session),
            paused,
            held_by_hand: paused,
            ..Lab::replay(exp, data)
        };
        // (allowed, as on an oversubscribed node: said once, as the run starts)
        if let Some(over) = over {
            lab.say(over);
        }
        Ok(lab)
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
            pace_target: None,
            paused: false,
            stepping: false,
            axis: None,
            held_by_hand: false,
            messages: VecDeque::new(),
            error: None,
            said: None,
            passed_length: false,
            runs: 1,
        }
    }

    fn session_with(exp: &Experiment, data: &Arc<Dataset>, start_paused: bool) -> Result<Session, String> {
        let options = SessionOptions {
            detail: true,
            start_paused,
            history_limit: Some(HISTORY_LIMIT),
            endless: true,
            ..SessionOptions::default()
        };
        if exp.backend == crate::session::Backend::Mpi {
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
        let st = self.state();
        if !self.passed_length && st.total_samples > 0 && st.samples() >= st.total_samples {
            self.passed_length = true;
            let length = match self.exp.length {
                crate::session::Length::Steps(s) => format!("{s} steps"),
                crate::session::Length::Epochs(e) => format!("{e} epochs"),
            };
            self.say(format!(
                "passed the run's length ({length}): training goes on (space pauses)"
            ));
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
        self.said = Some((what.clone(), Instant::now()));
        let line = format!("{:>7.2} s  {what}", self.now_s());
        self.messages.push_back(line);
        if self.messages.len() > MESSAGES_KEPT {
            self.messages.pop_front();
        }
    }

    fn refuse(&mut self, why: String) {
        self.said = Some((why.clone(), Instant::now()));
        self.error = Some(why);
    }

    /// What the status line says: the last refusal or change for a few seconds, else
    /// what the state allows (true: it is a refusal or an end, drawn as bad news).
    pub fn status(&self) -> (String, bool) {
        if let Some((what, when)) = &self.said {
            if when.elapsed() < SAID_FOR {
                return (what.clone(), self.error.as_deref() == Some(what.as_str()));
            }
        }
        if let Some(why) = self.ended() {
            return (why, true);
        }
        let pending = self.pending();
        let text = if self.stepping {
            "stepping: n moves one phase on (one round inside the all-reduce) · space resumes".to_string()
        } else if self.paused {
            "paused: space resumes · n steps one phase · switches made now apply together at the next step".to_string()
        } else {
            String::new()
        };
        match (text.is_empty(), pending.is_empty()) {
            (true, true) => self.not_learning().map_or((text, false), |hint| (hint, true)),
            (_, true) => (text, false),
            (true, false) => (format!("next step: {pending}"), false),
            (false, false) => (format!("{text} · on resume: {pending}"), false),
        }
    }

    /// A hint when the current segment's model stays near chance on the test set at
    /// its last two evaluations: stale gradients with this LR and momentum (lesson 7).
    fn not_learning(&self) -> Option<String> {
        let st = self.state();
        let seg = st.current()?;
        let chance = 1.0 / self.data.classes.max(2) as f64;
        let recent: Vec<f64> = st
            .evals
            .iter()
            .rev()
            .take_while(|e| e.samples > seg.samples)
            .take(2)
            .map(|e| e.test_accuracy)
            .collect();
        // (near: within a tenth of the way from chance to perfect)
        if recent.len() < 2 || recent.iter().any(|&a| a > chance + 0.1 * (1.0 - chance)) {
            return None;
        }
        let why = if seg.mode.uses_server() {
            "stale gradients with this learning rate and momentum: / lowers the LR, M turns momentum off (lesson 7)"
        } else {
            "the learning rate may be too high or too low: * and / change it"
        };
        Some(format!(
            "not learning: test accuracy {:.0} % is near chance ({:.0} %) — {why}",
            recent[0] * 100.0,
            chance * 100.0
        ))
    }

    /// Why the run does not go on, once it has ended (None while it runs).
    pub fn ended(&self) -> Option<String> {
        match self.state().outcome.as_ref()? {
            Outcome::Diverged { step, worker } => Some(format!(
                "DIVERGED at step {step} (worker {worker}'s loss blew up): R restarts with the current settings; a lower LR helps"
            )),
            Outcome::Failed { message } => Some(format!("the run FAILED: {message} — R restarts it")),
            Outcome::Stopped => Some("the run was stopped: R restarts it".into()),
            Outcome::Completed => Some("the run has finished: R restarts it, c keeps its curves as a ghost".into()),
        }
    }

    /// The switches made that the run has not taken yet, as "ssp:2 · 6 workers · 10 GbE".
    pub fn pending(&self) -> String {
        let Some(seg) = self.state().current() else {
            return String::new();
        };
        let mut parts = Vec::new();
        if seg.mode != self.exp.mode {
            parts.push(self.exp.mode.to_string());
        }
        if seg.workers != self.exp.workers {
            parts.push(format!("{} workers", self.exp.workers));
        }
        if seg.threads != self.exp.threads {
            parts.push(format!("{} per worker", super::view::threads_words(self.exp.threads)));
        }
        if seg.allreduce != self.exp.allreduce {
            parts.push(format!("{} all-reduce", self.exp.allreduce));
        }
        if seg.link != self.exp.link {
            parts.push(link_name(self.exp.link).to_string());
        }
        if seg.lr != self.exp.lr {
            parts.push(format!("LR {}", self.exp.lr));
        }
        if seg.momentum != self.exp.momentum {
            parts.push(format!("momentum {}", self.exp.momentum));
        }
        if seg.lr_scaling != self.exp.lr_scaling {
            parts.push(match self.exp.lr_scaling {
                LrScaling::Linear => "LR × workers".to_string(),
                LrScaling::None => "LR constant".to_string(),
            });
        }
        parts.join(" · ")
    }

    /// Asks the run for `control`, which turns the settings into `next`. While the run
    /// goes, the session checks it with every change before it; once the run has ended
    /// it is kept for the restart. A refusal becomes the error line.
    fn change(&mut self, control: Control, next: Experiment, what: String) {
        let result = match self.session.as_mut() {
            Some(s) if s.state().outcome.is_none() => s.control(control).map_err(|e| e.to_string()),
            Some(_) => {
                let ended = next.validate().and_then(|()| next.check_against(self.data.train_len()));
                match ended {
                    Ok(()) => {
                        self.exp = next;
                        self.error = None;
                        self.say(what); // (it says "when you restart (R)": `takes_effect`)
                        return;
                    }
                    Err(e) => Err(e.to_string()),
                }
            }
            None => Ok(()),
        };
        match result {
            Ok(()) => {
                self.exp = next;
                self.error = None;
                let said = match self.switch_step() {
                    Some(_) if self.paused || self.stepping => {
                        format!("{what} (on resume, or when n reaches it: a change travels with a step's gradients)")
                    }
                    _ if self.paused || self.stepping => format!("{what} (on resume, or at the next step with n)"),
                    _ => what,
                };
                self.say(said);
            }
            Err(e) => self.refuse(e),
        }
    }

    /// When a change asked for now takes effect, as the messages say it: once the run
    /// has ended, at the restart; while a person holds a sync run, from the step
    /// `switch_step` names; else from the next step.
    fn takes_effect(&self) -> String {
        match self.switch_step() {
            _ if self.ended().is_some() => "when you restart (R)".into(),
            Some(step) if self.paused || self.stepping => format!("from step {step}"),
            _ => "from the next step".into(),
        }
    }

    /// Sends pause, resume or step; refused (and said why) once the run has ended.
    fn send(&mut self, control: Control, what: &str) -> bool {
        if let Some(why) = self.ended() {
            self.refuse(why);
            return false;
        }
        let result = match self.session.as_mut() {
            Some(s) => s.control(control).map_err(|e| e.to_string()),
            None => Ok(()),
        };
        match result {
            Ok(()) => {
                self.error = None;
                self.say(what.to_string());
                true
            }
            Err(e) => {
                self.refuse(e);
                false
            }
        }
    }

    /// The curves' x axis: as chosen, else samples when runs are compared (ghosts are
    /// kept: at equal samples, the question is which learned more) and time otherwise.
    pub fn curves_axis(&self) -> Axis {
        self.axis.unwrap_or(if self.ghosts.is_empty() && !self.held_by_hand {
            Axis::Time
        } else {
            Axis::Samples
        })
    }

    /// While a person holds a sync run: the first step a change made now applies to.
    /// Rank 0 puts "switch" into a step's flags once its forward is done, and the
    /// workers switch after that step; so a change pressed at any point of step S, or
    /// after its update, applies from S + 2 — and before the run's first phase, from
    /// step 1.
    fn switch_step(&self) -> Option<u64> {
        if self.current_mode() != Mode::Sync {
            return None;
        }
        match self.last_span_in_segment(0) {
            Some(span) => Some(span.step + 2),
            None if self.state().current().is_none_or(|seg| seg.update == 0) => Some(1),
            None => None,
        }
    }

    /// Worker `w`'s last phase in the current segment (one from before a switch belongs
    /// to another mode or worker count, and says nothing of what comes next).
    pub fn last_span_in_segment(&self, w: usize) -> Option<&Span> {
        let since_ns = self.state().current().map_or(0, |seg| seg.t_ns);
        self.view.last_span(w).filter(|span| span.end_ns >= since_ns)
    }

    /// The mode and worker count now running (or last run).
    pub fn current_mode(&self) -> Mode {
        self.state().current().map_or(self.exp.mode, |s| s.mode)
    }
    pub fn current_workers(&self) -> usize {
        self.state().current().map_or(self.exp.workers, |s| s.workers)
    }

    /// The dilation factor that makes a step last about 1 / `steps_per_s` seconds,
    /// from the latest reports (their phases were measured at the current pace).
    fn factor_for(&self, steps_per_s: f64) -> f64 {
        let iterations: Vec<f64> = self
            .view
            .reports
            .iter()
            .flatten()
            .map(|r| r.phase_ns.iter().sum::<u64>() as f64 / 1e9)
            .filter(|&s| s > 0.0)
            .collect();
        // (before any report: a digits step takes about 100 µs on a laptop)
        let now_s = if iterations.is_empty() {
            1e-4 * self.exp.slow
        } else {
            iterations.iter().sum::<f64>() / iterations.len() as f64
        };
        let full_speed_s = now_s / self.exp.slow.max(1.0);
        (1.0 / steps_per_s / full_speed_s)
            .clamp(1.0, crate::session::MAX_PACE)
            .round()
    }

    pub fn update(&mut self, action: Action) {
        match action {
            Action::TogglePause => {
                if self.paused || self.stepping {
                    if self.send(Control::Resume, "resumed") {
                        self.paused = false;
                        self.stepping = false;
                    }
                } else if self.send(Control::Pause, "paused: space resumes, n steps one phase") {
                    self.paused = true;
                    self.held_by_hand = true;
                }
            }
            Action::StepPhase => {
                let what = if self.stepping {
                    "one phase on"
                } else {
                    "step mode: halted at the next phase; n moves one phase on"
                };
                if self.send(Control::StepPhase, what) {
                    self.stepping = true;
                    self.held_by_hand = true;
                }
            }
            Action::SlowMotion => {
                let i = PACES.iter().position(|&p| p == self.pace_target).map_or(0, |i| i + 1);
                let target = PACES[i % PACES.len()];
                let factor = target.map_or(1.0, |rate| self.factor_for(rate));
                self.set_pace(factor, target);
            }
            Action::CycleMode => {
                let i = MODES.iter().position(|&m| m == self.exp.mode).map_or(0, |i| i + 1);
                // The next mode this experiment allows (backup needs a worker to spare;
                // compressed gradients keep the run in sync): the cycle never sticks.
                let allowed = |m: Mode| {
                    Experiment {
                        mode: m,
                        ..self.exp.clone()
                    }
                    .validate()
                    .is_ok()
                };
                let mode = (0..MODES.len())
                    .map(|j| MODES[(i + j) % MODES.len()])
                    .find(|&m| allowed(m))
                    .unwrap_or(MODES[i % MODES.len()]);
                if mode == self.exp.mode {
                    // (nothing else is allowed: say why the next one is not, rather than
                    // "switching" to the mode the run is already in)
                    let why = Experiment {
                        mode: MODES[i % MODES.len()],
                        ..self.exp.clone()
                    }
                    .validate();
                    if let Err(e) = why {
                        self.refuse(format!("{} is the only mode this run allows: {e}", self.exp.mode));
                        return;
                    }
                }
                let next = Experiment {
                    mode,
                    ..self.exp.clone()
                };
                self.change(
                    Control::SetMode(mode),
                    next,
                    format!("switching to {mode} {}", self.takes_effect()),
                );
            }
            Action::MoreWorkers | Action::FewerWorkers => {
                let n = self.exp.workers;
                let n = if action == Action::MoreWorkers {
                    n + 1
                } else {
                    n.saturating_sub(1)
                };
                let mut next = Experiment {
                    workers: n,
                    ..self.exp.clone()
                };
                next.stragglers.retain(|s| s.worker < n);
                self.change(
                    Control::SetWorkers(n),
                    next,
                    // (a restart starts from new parameters: then nothing is kept)
                    match self.ended() {
                        None => format!("{n} workers {} (parameters kept)", self.takes_effect()),
                        Some(_) => format!("{n} workers {}", self.takes_effect()),
                    },
                );
            }
            Action::CycleThreads => {
                // The next count up the cycle (from a count off it, as `--threads 3`
                // gives: the next one above), else back to 1.
                let t = thread_counts(cores())
                    .into_iter()
                    .find(|&t| t > self.exp.threads)
                    .unwrap_or(1);
                let next = Experiment {
                    threads: t,
                    ..self.exp.clone()
                };
                // Over MPI a switch relaunches the job from the parameters, and momentum
                // restarts there: the threads keep the numbers, the relaunch does not.
                let mut what = if self.exp.backend == crate::session::Backend::Mpi {
                    format!(
                        "{} per rank {}: the MPI job relaunches from the same parameters (momentum restarts)",
                        super::view::threads_words(t),
                        self.takes_effect()
                    )
                } else {
                    format!(
                        "{} per worker {}: the same numbers, another speed",
                        super::view::threads_words(t),
                        self.takes_effect()
                    )
                };
                // (more threads than cores is allowed, as on a cluster node: said, shorter
                // than the flag's sentence, so that the status line holds it)
                if next.oversubscription_on(cores()).is_some() {
                    let here = match next.backend {
                        crate::session::Backend::Threads => next.workers,
                        crate::session::Backend::Mpi => 1,
                    };
                    what = format!(
                        "{what}; {} compute threads on {} cores will take turns",
                        here * t,
                        cores()
                    );
                }
                self.change(Control::SetThreads(t), next, what);
            }
            Action::CycleAllReduce => {
                let i = AllReduceAlgo::ALL
                    .iter()
                    .position(|&a| a == self.exp.allreduce)
                    .unwrap_or(0);
                let algo = AllReduceAlgo::ALL[(i + 1) % AllReduceAlgo::ALL.len()];
                let next = Experiment {
                    allreduce: algo,
                    ..self.exp.clone()
                };
                self.change(
                    Control::SetAllReduce(algo),
                    next,
                    format!("{algo} all-reduce {}", self.takes_effect()),
                );
            }
            Action::CycleLink => {
                let i = LINKS.iter().position(|(_, l)| *l == self.exp.link).unwrap_or(0);
                let (name, link) = LINKS[(i + 1) % LINKS.len()];
                let what = match link {
                    Some(l) => format!("emulated link: {name} ({l}) {}", self.takes_effect()),
                    None => format!("no emulated link: shared memory at full speed {}", self.takes_effect()),
                };
                let next = Experiment {
                    link,
                    ..self.exp.clone()
                };
                self.change(Control::SetLink(link), next, what);
            }
            Action::SelectWorker => {
                self.selected = (self.selected + 1) % self.current_workers().max(1);
                self.error = None;
                let w = self.selected;
                let s_does = if self.exp.stragglers.iter().any(|s| s.worker == w) {
                    "s makes it normal again"
                } else {
                    "s makes it a straggler"
                };
                self.say(format!("worker {w} selected: the explanation follows it, {s_does}"));
            }
            Action::ToggleStraggler => {
                let w = self.selected.min(self.exp.workers.saturating_sub(1));
                let slow = self.exp.stragglers.iter().any(|s| s.worker == w);
                let factor = if slow { 1.0 } else { STRAGGLER_FACTOR };
                let what = if slow {
                    format!("worker {w} back to normal speed {}", self.takes_effect())
                } else {
                    format!(
                        "worker {w} becomes a straggler {}: {STRAGGLER_FACTOR}× slower compute",
                        self.takes_effect()
                    )
                };
                let mut next = self.exp.clone();
                next.stragglers.retain(|s| s.worker != w);
                if !slow {
                    next.stragglers.push(crate::session::Straggler { worker: w, factor });
                }
                self.change(Control::Straggler { worker: w, factor }, next, what);
            }
            Action::CycleLrRule => {
                let rule = match self.exp.lr_scaling {
                    LrScaling::None => LrScaling::Linear,
                    LrScaling::Linear => LrScaling::None,
                };
                let what = match rule {
                    LrScaling::Linear => format!(
                        "LR × workers = {} {}",
                        self.exp.lr * self.exp.workers as f32,
                        self.takes_effect()
                    ),
                    LrScaling::None => format!("LR constant = {} {}", self.exp.lr, self.takes_effect()),
                };
                let next = Experiment {
                    lr_scaling: rule,
                    ..self.exp.clone()
                };
                self.change(Control::SetLrScaling(rule), next, what);
            }
            Action::RaiseLr | Action::LowerLr => {
                let lr = times_ten(self.exp.lr, action == Action::RaiseLr);
                let next = Experiment { lr, ..self.exp.clone() };
                self.change(
                    Control::SetLr(lr),
                    next,
                    format!("learning rate {lr} {}", self.takes_effect()),
                );
            }
            Action::ToggleMomentum => {
                let momentum = if self.exp.momentum > 0.0 { 0.0 } else { MOMENTUM };
                let what = if momentum > 0.0 {
                    format!("momentum {momentum} {}", self.takes_effect())
                } else {
                    format!("momentum off (plain SGD) {}", self.takes_effect())
                };
                let next = Experiment {
                    momentum,
                    ..self.exp.clone()
                };
                self.change(Control::SetMomentum(momentum), next, what);
            }
            Action::Restart => self.restart(),
            Action::ToggleBackend => {
                use crate::session::Backend;
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
                let axis = match self.curves_axis() {
                    Axis::Time => Axis::Samples,
                    Axis::Samples => Axis::Time,
                };
                self.axis = Some(axis);
                self.say(match axis {
                    Axis::Samples => "curves against samples seen: runs compare at equal data".into(),
                    Axis::Time => "curves against seconds of training: faster runs reach further".into(),
                });
            }
            Action::Help
            | Action::Quit
            | Action::FocusNext
            | Action::FocusPrev
            | Action::Zoom
            | Action::ScrollUp
            | Action::ScrollDown
            | Action::PageUp
            | Action::PageDown
            | Action::Up
            | Action::Down
            | Action::Enter
            | Action::NextPage
            | Action::PrevPage
            | Action::Answer(_)
            | Action::Back => {}
        }
    }

    /// Slow motion ×`factor` (1: full speed), chosen for about `target` steps a second
    /// (None: as given).
    pub fn set_pace(&mut self, factor: f64, target: Option<f64>) {
        let mut what = match target {
            _ if factor <= 1.0 => "full speed".to_string(),
            None => format!("slow motion ×{factor}: every phase, message and delay stretched alike"),
            Some(rate) => format!(
                "slow motion ×{factor}: about {} — every phase, message and delay stretched alike",
                pace_words(rate)
            ),
        };
        // (a pace applies at once while the run goes: only a restart waits)
        if self.ended().is_some() {
            what = format!("{what} — {}", self.takes_effect());
        }
        let next = Experiment {
            slow: factor,
            ..self.exp.clone()
        };
        self.change(Control::SetPace { factor }, next, what);
        if self.exp.slow == factor {
            self.pace_target = target;
        }
    }

    /// Starts the experiment again from fresh parameters with the current settings,
    /// pace included, and paused if it was paused.
    pub fn restart(&mut self) {
        if self.session.is_none() {
            return;
        }
        let paused = self.paused || self.stepping;
        match Self::session_with(&self.exp, &self.data, paused) {
            Ok(session) => {
                self.session = Some(session); // the old one stops as it drops
                self.view = LabView::default();
                self.paused = paused;
                self.stepping = false;
                self.held_by_hand = paused;
                self.passed_length = false;
                self.runs += 1;
                self.messages.clear();
                self.error = None;
                self.say(format!("restarted: run {}", self.runs));
            }
            Err(e) => self.refuse(e),
        }
    }
}

/// `lr` × 10 (`up`) or ÷ 10, kept to the digits a person typed (0.1 ÷ 10 = 0.01, not
/// 0.0099999998).
pub fn times_ten(lr: f32, up: bool) -> f32 {
    let x = if up {
        f64::from(lr) * LR_FACTOR
    } else {
        f64::from(lr) / LR_FACTOR
    };
    let digits = 6 - x.abs().log10().floor() as i32;
    let scale = 10f64.powi(digits);
    ((x * scale).round() / scale) as f32
}

/// The `l` key's name for a link (or "custom").
pub fn link_name(link: Option<Link>) -> &'static str {
    LINKS.iter().find(|(_, l)| *l == link).map_or("custom link", |(n, _)| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threads_cycle_doubles_up_to_the_cores_and_ends_on_them() {
        assert_eq!(thread_counts(1), [1, 2], "one core still shows threads taking turns");
        assert_eq!(thread_counts(2), [1, 2]);
        assert_eq!(thread_counts(6), [1, 2, 4, 6]);
        assert_eq!(thread_counts(16), [1, 2, 4, 8, 16]);
        assert_eq!(
            *thread_counts(10_000).last().unwrap(),
            crate::session::MAX_THREADS,
            "never past the flag's bound"
        );
    }
}
