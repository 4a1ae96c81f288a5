//! The session: the one door for front ends. Start an experiment from its config, read
//! its events, send controls, read its state (a pure reducer over the events).

pub mod remote;
pub mod spmd;
mod state;
mod summary;

use std::sync::Arc;
use std::time::Duration;

pub use state::{EvalRecord, RunState, SegmentRecord, StepRecord, WorkerTotals, STALENESS_BUCKETS};
pub use summary::Summary;

// The vocabulary front ends speak, from the layers below: what an experiment is (its
// settings, its flags, its data), what a run reports and what a control asks. Front
// ends name these through `session`, never through their homes (tests/layers.rs reads
// these lines and holds `tui` and `cli` to them).
pub use crate::comm::{busbw_factor, AllReduceAlgo, Compress, Link, Transfer, MAX_PACE};
pub use crate::config::flags::{flags_of, ExperimentArgs, FlagValue};
pub use crate::config::{
    Backend, Device, Experiment, Length, Mode, Straggler, DEFAULT_MOMENTUM, MAX_THREADS, MAX_WORKERS,
};
pub use crate::data::{Dataset, DatasetKind};
pub use crate::nn::LrScaling;
pub use crate::train::{CollectiveKind, Control, Event, Outcome, Phase, WorkerStep};

use crate::config::ConfigError;
use crate::data::DataError;
use crate::train::{self, event_channel, EngineHandle, EngineOptions, EventStream, Gate, Next};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Data(#[from] DataError),
    /// `--device gpu` cannot run here (no GPU, a build without the feature, …).
    #[error("{0}")]
    Device(String),
}

/// Why a command ends other than as it should: the exit code (see [`spmd::exit`]) and
/// the one sentence said for it (empty when it was said already).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitError {
    pub code: i32,
    pub message: String,
}

impl ExitError {
    /// Bad input: a flag, a file, a launch that cannot work.
    pub fn usage(message: impl Into<String>) -> Self {
        ExitError {
            code: spmd::exit::BAD_INPUT,
            message: message.into(),
        }
    }
    /// A failure of the run or of the machine.
    pub fn failure(message: impl Into<String>) -> Self {
        ExitError {
            code: spmd::exit::FAILED,
            message: message.into(),
        }
    }
}

/// A session that cannot start was given something that cannot work: bad input.
impl From<SessionError> for ExitError {
    fn from(e: SessionError) -> Self {
        ExitError::usage(e.to_string())
    }
}

/// How a session reports, for the front end that opened it.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Per-message transfers and per-worker batches (the lab's animations).
    pub detail: bool,
    /// Open paused, e.g. to step phase by phase from the first one.
    pub start_paused: bool,
    /// Visual events buffered before they are dropped.
    pub visual_capacity: usize,
    /// Bound on the step and eval records kept (see `RunState::history_limit`); `None`
    /// keeps all (exports need all).
    pub history_limit: Option<usize>,
    /// Train on past the experiment's length (the lab), instead of ending there.
    pub endless: bool,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            detail: false,
            start_paused: false,
            visual_capacity: 1 << 16,
            history_limit: None,
            endless: false,
        }
    }
}

/// Where a relaunched run goes on from.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Resume {
    pub params: Vec<f32>,
    pub updates: u64,
    pub samples: u64,
}

/// How long readers sleep between drains of the event stream.
const IDLE_POLL: Duration = Duration::from_millis(5);

pub struct Session {
    exp: Experiment,
    /// The experiment with every change sent so far: where the run is going.
    next: Experiment,
    data: Arc<Dataset>,
    gate: Arc<Gate>,
    stream: EventStream,
    runner: Runner,
    state: RunState,
    final_params: Option<Vec<f32>>,
}

/// What trains for a session.
enum Runner {
    /// An engine in this process (its threads, or this process's MPI rank).
    Engine(EngineHandle),
    /// The engine ended and was joined.
    Joined,
    /// An MPI job the lab drives, and what it must know about it.
    Job(Box<MpiRun>),
}

/// The MPI job behind a session, and the relaunch a control asked for.
struct MpiRun {
    job: remote::MpiJob,
    sink: crate::train::EventSink,
    launch: remote::MpiLaunch,
    /// The experiment to relaunch with once the job has stopped and said where it ended.
    relaunch: Option<Experiment>,
    /// Jobs started so far.
    jobs: usize,
    /// The ends of jobs stopped for a relaunch, not yet read: they are not the session's.
    swallow_finished: usize,
    notes: Vec<String>,
}

impl Session {
    /// Validates `exp`, loads its data set and starts training.
    pub fn start(exp: Experiment, options: SessionOptions) -> Result<Session, SessionError> {
        exp.validate()?;
        let data = Arc::new(Dataset::load(exp.dataset)?);
        Self::start_with_data(exp, data, options, None)
    }

    /// As `start`, on a data set already loaded, optionally from given parameters.
    pub fn start_with_data(
        exp: Experiment,
        data: Arc<Dataset>,
        options: SessionOptions,
        initial_params: Option<Vec<f32>>,
    ) -> Result<Session, SessionError> {
        Self::launch(exp, data, &options, |exp, data, sink, gate| {
            let engine = EngineOptions {
                detail: options.detail,
                initial_params,
                resume: None,
                endless: options.endless,
            };
            train::spawn(exp, data, sink, gate, engine)
        })
    }

    /// Drives an MPI job from here (the lab as controller): `mpirun` starts the ranks,
    /// which connect back and stream their events. Changing the experiment stops the
    /// job and relaunches it from the same parameters, so the curves go on.
    pub fn start_mpi(
        exp: Experiment,
        data: Arc<Dataset>,
        options: SessionOptions,
        launch: remote::MpiLaunch,
    ) -> Result<Session, String> {
        exp.validate().map_err(|e| e.to_string())?;
        exp.check_against(data.train_len()).map_err(|e| e.to_string())?;
        if exp.overlap || exp.link.is_some() || exp.nodes > 1 || exp.intra_link.is_some() {
            return Err("an emulated link, nodes and overlap are for the threads backend; over MPI the network is real: turn them off first (l cycles the link to none)".into());
        }
        let gate = Arc::new(Gate::new(crate::config::MAX_WORKERS, options.start_paused, exp.slow));
        let (sink, stream) = event_channel(options.visual_capacity);
        let job = remote::MpiJob::start(&exp, &launch, sink.clone(), None)?;
        if options.start_paused {
            // rank 0 pauses as soon as it is there
            let job = &job;
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while job.send(Control::Pause).is_err() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let notes = vec![format!("MPI job: {} (controller {})", job.command, job.address)];
        Ok(Session {
            next: exp.clone(),
            exp,
            data,
            gate,
            stream,
            runner: Runner::Job(Box::new(MpiRun {
                job,
                sink,
                launch,
                relaunch: None,
                jobs: 1,
                swallow_finished: 0,
                notes,
            })),
            state: RunState::with_history_limit(options.history_limit),
            final_params: None,
        })
    }

    /// What an MPI job has said since the last call (launch line, connections, refusals).
    pub fn take_notes(&mut self) -> Vec<String> {
        match &mut self.runner {
            Runner::Job(run) => {
                let mut notes = std::mem::take(&mut run.notes);
                notes.extend(run.job.take_notes());
                notes
            }
            _ => Vec::new(),
        }
    }

    /// Where an MPI job's controller listens (None on threads).
    pub fn controller_address(&self) -> Option<String> {
        match &self.runner {
            Runner::Job(run) => Some(run.job.address.clone()),
            _ => None,
        }
    }

    /// The hosts of an MPI job's ranks (empty on threads).
    pub fn hosts(&self) -> std::collections::BTreeMap<usize, String> {
        match &self.runner {
            Runner::Job(run) => run.job.hosts(),
            _ => Default::default(),
        }
    }

    /// This process's rank of a run in which every worker is a process (MPI, one rank
    /// per worker, `exp.workers` = the world's size). Every rank calls it; rank 0's
    /// session sees every worker's steps, the others' only their own.
    pub fn start_rank<T: crate::comm::Transport + 'static>(
        exp: Experiment,
        data: Arc<Dataset>,
        options: SessionOptions,
        comm: crate::comm::Comm<T>,
        resume: Option<Resume>,
    ) -> Result<Session, SessionError> {
        // (a resume without parameters: they reach this rank from rank 0 by broadcast)
        let initial_params = resume.as_ref().map(|r| r.params.clone()).filter(|p| !p.is_empty());
        Self::launch(exp, data, &options, |exp, data, sink, gate| {
            let engine = EngineOptions {
                detail: options.detail,
                initial_params,
                resume: resume.as_ref().map(|r| (r.updates, r.samples)),
                endless: options.endless,
            };
            train::spawn_rank(exp, data, sink, gate, engine, comm)
        })
    }

    /// Checks `exp` against `data`, then starts an engine with a new gate and channel.
    fn launch(
        exp: Experiment,
        data: Arc<Dataset>,
        options: &SessionOptions,
        spawn: impl FnOnce(&Experiment, Arc<Dataset>, crate::train::EventSink, Arc<Gate>) -> EngineHandle,
    ) -> Result<Session, SessionError> {
        exp.validate()?;
        exp.check_against(data.train_len())?;
        crate::gpu::preflight(
            exp.device,
            &exp.gpus,
            &crate::nn::Mlp::new(data.inputs(), &exp.hidden, data.classes),
            exp.batch,
        )
        .map_err(SessionError::Device)?;
        let gate = Arc::new(Gate::new(crate::config::MAX_WORKERS, options.start_paused, exp.slow));
        let (sink, stream) = event_channel(options.visual_capacity);
        let engine = spawn(&exp, Arc::clone(&data), sink, Arc::clone(&gate));
        Ok(Session {
            next: exp.clone(),
            exp,
            data,
            gate,
            stream,
            runner: Runner::Engine(engine),
            state: RunState::with_history_limit(options.history_limit),
            final_params: None,
        })
    }

    pub fn experiment(&self) -> &Experiment {
        &self.exp
    }
    pub fn state(&self) -> &RunState {
        &self.state
    }
    pub fn summary(&self) -> Summary {
        let mut summary = Summary::new(&self.exp, &self.state);
        summary.final_params_hash = self
            .final_params
            .as_ref()
            .map(|p| format!("{:016x}", train::params_hash(p)));
        summary
    }
    pub fn is_paused(&self) -> bool {
        self.gate.is_paused()
    }

    /// How the run ended, as decided beyond this process (an MPI job's ranks agree on
    /// it): the state, the summary and the exports then say so.
    pub fn settle(&mut self, outcome: Outcome) {
        self.state.outcome = Some(outcome);
    }
    /// Visual events dropped because this front end fell behind.
    pub fn dropped_events(&self) -> u64 {
        self.stream.dropped()
    }

    /// The replicas' parameters once the run has ended (rank 0's copy).
    pub fn final_params(&self) -> Option<Vec<f32>> {
        self.final_params.clone()
    }

    /// Sends a control to the run. Changes of the experiment are checked first, as flags
    /// are, together with every change sent before (changes made while paused add up,
    /// and apply together at the next step): a bad one is refused with the same
    /// one-sentence error.
    pub fn control(&mut self, control: Control) -> Result<(), ConfigError> {
        let mut next = self.next.clone();
        match control {
            Control::SetMode(m) => next.mode = m,
            Control::SetWorkers(n) => {
                next.workers = n;
                next.stragglers.retain(|s| s.worker < n);
            }
            Control::SetAllReduce(a) => next.allreduce = a,
            Control::SetLink(link) => next.link = link,
            Control::SetLrScaling(r) => next.lr_scaling = r,
            Control::SetLr(lr) => next.lr = lr,
            Control::SetMomentum(m) => next.momentum = m,
            Control::SetThreads(t) => next.threads = t,
            Control::SetPace { factor } => next.slow = factor,
            Control::Straggler { worker, factor } => {
                next.stragglers.retain(|s| s.worker != worker);
                next.stragglers.push(Straggler { worker, factor });
                next.validate()?;
                next.stragglers.retain(|s| s.factor > 1.0);
            }
            Control::Pause | Control::Resume | Control::StepPhase | Control::Stop => {}
        }
        next.validate()?;
        next.check_against(self.data.train_len())?;
        if let Runner::Job(run) = &mut self.runner {
            Self::control_job(&self.exp, run, control).map_err(|problem| ConfigError {
                flag: "backend",
                problem,
            })?;
            self.next = next;
            return Ok(());
        }
        self.gate.apply(control);
        if let Runner::Engine(engine) = &self.runner {
            engine.control(control);
        }
        self.next = next;
        Ok(())
    }

    /// An MPI job's world is fixed: pausing and stepping go to rank 0; a change of the
    /// experiment stops the job at a step boundary and relaunches it with the change.
    fn control_job(exp: &Experiment, run: &mut MpiRun, control: Control) -> Result<(), String> {
        let base = run.relaunch.clone().unwrap_or_else(|| exp.clone());
        let next = match control {
            Control::Pause | Control::Resume | Control::StepPhase | Control::SetPace { .. } | Control::Stop => {
                return run.job.send(control)
            }
            Control::SetMode(m) => Experiment { mode: m, ..base },
            Control::SetWorkers(n) => Experiment { workers: n, ..base },
            Control::SetAllReduce(a) => Experiment { allreduce: a, ..base },
            Control::SetLrScaling(r) => Experiment { lr_scaling: r, ..base },
            Control::SetLr(lr) => Experiment { lr, ..base },
            Control::SetMomentum(momentum) => Experiment { momentum, ..base },
            Control::SetThreads(t) => Experiment { threads: t, ..base },
            Control::SetLink(_) => {
                return Err("over MPI the network is real: an emulated link is for the threads backend".into())
            }
            Control::Straggler { worker, factor } => {
                let mut e = base;
                e.stragglers.retain(|s| s.worker != worker);
                if factor > 1.0 {
                    e.stragglers.push(Straggler { worker, factor });
                }
                e
            }
        };
        if run.relaunch.is_none() {
            run.job.send(Control::Stop)?;
            run.swallow_finished += 1;
        }
        run.notes.push(format!(
            "relaunching the MPI job with {} workers × {} thread{}, {} (parameters kept)",
            next.workers,
            next.threads,
            if next.threads == 1 { "" } else { "s" },
            next.mode
        ));
        run.relaunch = Some(next);
        Ok(())
    }

    /// Applies every waiting event to the state, handing each to `f` too. Returns true
    /// once the run has finished and every event has been read.
    pub fn poll(&mut self, mut f: impl FnMut(&Event)) -> bool {
        loop {
            if let Runner::Job(run) = &mut self.runner {
                // A job stopped for a relaunch: once its end has been read (its final
                // state came before it), go on from there.
                if run.relaunch.is_some() && run.swallow_finished == 0 {
                    if let Some(end) = run.job.final_state() {
                        let next = run.relaunch.take().expect("checked");
                        match remote::MpiJob::start(&next, &run.launch, run.sink.clone(), Some(end.clone())) {
                            Ok(job) => {
                                run.notes.push(format!(
                                    "relaunched from update {} with parameters {:016x}",
                                    end.updates,
                                    train::params_hash(&end.params)
                                ));
                                run.notes
                                    .push(format!("MPI job: {} (controller {})", job.command, job.address));
                                run.job = job;
                                run.jobs += 1;
                                self.exp = next;
                            }
                            Err(e) => {
                                let failed = Event::Finished {
                                    outcome: Outcome::Failed { message: e },
                                    t_ns: 0,
                                };
                                self.state.apply(&failed);
                                f(&failed);
                            }
                        }
                    }
                }
            }
            match self.stream.try_next() {
                Next::Event(event) => {
                    if let Runner::Job(run) = &mut self.runner {
                        // The relaunched job's start is not news; the end of a job stopped
                        // for a relaunch is not the end of the session.
                        match &event {
                            Event::Started { .. } if run.jobs > 1 || self.state.params > 0 => continue,
                            Event::Finished {
                                outcome: Outcome::Stopped,
                                ..
                            } if run.swallow_finished > 0 => {
                                run.swallow_finished -= 1;
                                continue;
                            }
                            // A job that failed while stopping does not relaunch.
                            Event::Finished { .. } if run.swallow_finished > 0 => {
                                run.swallow_finished = 0;
                                run.relaunch = None;
                            }
                            Event::Finished { .. } => self.final_params = run.job.final_state().map(|r| r.params),
                            _ => {}
                        }
                    }
                    self.state.apply(&event);
                    f(&event);
                }
                next => {
                    if let Runner::Job(run) = &self.runner {
                        // The stream of a job never closes (the sink lives here): the job is
                        // over once its end was reported and no relaunch is due.
                        let ended = self.state.outcome.is_some() && run.relaunch.is_none();
                        if ended && self.final_params.is_none() {
                            self.final_params = run.job.final_state().map(|r| r.params);
                        }
                        return ended;
                    }
                    return self.finish_if(matches!(next, Next::Closed));
                }
            }
        }
    }

    /// As `poll`, but waits up to `timeout` for the first event. (Blocking on the
    /// channel costs the senders a wake-up each; loops that read continuously should
    /// prefer `poll` and a short sleep.)
    pub fn poll_timeout(&mut self, timeout: Duration, mut f: impl FnMut(&Event)) -> bool {
        match self.stream.next_timeout(timeout) {
            Next::Event(event) => {
                self.state.apply(&event);
                f(&event);
                self.poll(f)
            }
            next => self.finish_if(matches!(next, Next::Closed)),
        }
    }

    fn finish_if(&mut self, over: bool) -> bool {
        if !over {
            return false;
        }
        if let Runner::Engine(engine) = &mut self.runner {
            engine.join();
            self.final_params = engine.final_params();
            self.runner = Runner::Joined;
        }
        true
    }

    /// Reads events until the run ends; returns how it ended. It drains what is there
    /// and then sleeps a little, rather than blocking on the channel: a blocked reader
    /// would make every worker's send a wake-up system call.
    pub fn run_to_end(&mut self, mut f: impl FnMut(&Event)) -> Outcome {
        while !self.poll(&mut f) {
            std::thread::sleep(IDLE_POLL);
        }
        self.state.outcome.clone().unwrap_or(Outcome::Failed {
            message: "the engine ended without a result".into(),
        })
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.gate.apply(Control::Stop);
        // EngineHandle's Drop aborts the collectives and joins the threads.
    }
}
