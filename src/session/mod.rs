//! The session: the one door for front ends. Start an experiment from its config, read
//! its events, send controls, read its state (a pure reducer over the events).

mod state;
mod summary;

use std::sync::Arc;
use std::time::Duration;

pub use state::{EvalRecord, RunState, SegmentRecord, StepRecord, WorkerTotals, STALENESS_BUCKETS};
pub use summary::Summary;

use crate::comm::Link;
use crate::config::{ConfigError, Experiment, Straggler};
use crate::data::{DataError, Dataset};
use crate::train::{self, event_channel, Control, EngineHandle, EngineOptions, Event, EventStream, Gate, Outcome};

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Data(#[from] DataError),
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
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            detail: false,
            start_paused: false,
            visual_capacity: 1 << 16,
            history_limit: None,
        }
    }
}

/// How long readers sleep between drains of the event stream.
const IDLE_POLL: Duration = Duration::from_millis(5);

pub struct Session {
    exp: Experiment,
    data: Arc<Dataset>,
    gate: Arc<Gate>,
    stream: EventStream,
    engine: Option<EngineHandle>,
    state: RunState,
    final_params: Option<Vec<f32>>,
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
        exp.validate()?;
        exp.check_against(data.train_len())?;
        let gate = Arc::new(Gate::new(crate::config::MAX_WORKERS, options.start_paused));
        let (sink, stream) = event_channel(options.visual_capacity);
        let engine = train::spawn(
            &exp,
            Arc::clone(&data),
            sink,
            Arc::clone(&gate),
            EngineOptions {
                detail: options.detail,
                initial_params,
            },
        );
        Ok(Session {
            exp,
            data,
            gate,
            stream,
            engine: Some(engine),
            state: RunState::with_history_limit(options.history_limit),
            final_params: None,
        })
    }

    /// This process's rank of a run in which every worker is a process (MPI, one rank
    /// per worker, `exp.workers` = the world's size). Every rank calls it; rank 0's
    /// session sees every worker's steps, the others' only their own.
    pub fn start_rank<T: crate::comm::Transport + 'static>(
        exp: Experiment,
        data: Arc<Dataset>,
        options: SessionOptions,
        comm: crate::comm::Comm<T>,
    ) -> Result<Session, SessionError> {
        exp.validate()?;
        exp.check_against(data.train_len())?;
        let gate = Arc::new(Gate::new(crate::config::MAX_WORKERS, options.start_paused));
        let (sink, stream) = event_channel(options.visual_capacity);
        let engine = train::spawn_rank(
            &exp,
            Arc::clone(&data),
            sink,
            Arc::clone(&gate),
            EngineOptions {
                detail: options.detail,
                initial_params: None,
            },
            comm,
        );
        Ok(Session {
            exp,
            data,
            gate,
            stream,
            engine: Some(engine),
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
    /// Visual events dropped because this front end fell behind.
    pub fn dropped_events(&self) -> u64 {
        self.stream.dropped()
    }

    /// The replicas' parameters once the run has ended (rank 0's copy).
    pub fn final_params(&self) -> Option<Vec<f32>> {
        self.final_params.clone()
    }

    /// Sends a control to the run. Mode, worker-count and straggler changes are checked
    /// first, as flags are: a bad one is refused with the same one-sentence error.
    pub fn control(&mut self, control: Control) -> Result<(), ConfigError> {
        let (mode, workers) = self
            .state
            .current()
            .map_or((self.exp.mode, self.exp.workers), |s| (s.mode, s.workers));
        let check = |mode, workers, stragglers: Vec<Straggler>| {
            let next = Experiment {
                mode,
                workers,
                stragglers,
                ..self.exp.clone()
            };
            next.validate()?;
            next.check_against(self.data.train_len())
        };
        match control {
            Control::SetMode(m) => check(m, workers, Vec::new())?,
            Control::SetWorkers(n) => check(mode, n, Vec::new())?,
            Control::Straggler { worker, factor } => check(mode, workers, vec![Straggler { worker, factor }])?,
            Control::SetLink(Some(link)) => {
                Link::new(link.latency_us, link.gbit_s).map_err(|problem| ConfigError { flag: "link", problem })?;
            }
            _ => {}
        }
        self.gate.apply(control);
        if let Some(engine) = &self.engine {
            engine.control(control);
        }
        Ok(())
    }

    /// Applies every waiting event to the state, handing each to `f` too. Returns true
    /// once the run has finished and every event has been read.
    pub fn poll(&mut self, mut f: impl FnMut(&Event)) -> bool {
        loop {
            match self.stream.try_next() {
                Ok(event) => {
                    self.state.apply(&event);
                    f(&event);
                }
                Err(over) => return self.finish_if(over),
            }
        }
    }

    /// As `poll`, but waits up to `timeout` for the first event. (Blocking on the
    /// channel costs the senders a wake-up each; loops that read continuously should
    /// prefer `poll` and a short sleep.)
    pub fn poll_timeout(&mut self, timeout: Duration, mut f: impl FnMut(&Event)) -> bool {
        match self.stream.next_timeout(timeout) {
            Ok(event) => {
                self.state.apply(&event);
                f(&event);
                self.poll(f)
            }
            Err(over) => self.finish_if(over),
        }
    }

    fn finish_if(&mut self, over: bool) -> bool {
        if over {
            if let Some(mut engine) = self.engine.take() {
                engine.join();
                self.final_params = engine.final_params();
            }
        }
        over
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
