//! Engines: the worker loops that train, emit [`Event`]s and obey [`Control`]s. They know
//! no terminal: the same run drives the TUI, the headless CLI, the exporters and tests.
//!
//! `engine.rs` runs a sequence of segments (one mode and worker count each); `sync.rs`
//! is the all-reduce engine, `ps.rs` the parameter-server engines (async, SSP, backup),
//! each on threads or as a process's rank (MPI); `ctx.rs` holds what they share (the
//! run's context, a segment's settings and ends, the worker threads), so that imports
//! go engine → sync, ps → ctx and never back.

mod compute;
mod control;
mod ctx;
mod engine;
mod event;
mod overlap;
mod ps;
mod sink;
mod sync;

pub use control::{Control, Gate, Stopped};
pub use ctx::{diverged, EngineOptions};
pub use engine::{spawn, spawn_rank, total_samples, EngineHandle};
pub use event::{params_hash, CollectiveKind, Event, Outcome, Phase, WorkerStep};
pub use sink::{event_channel, EventSink, EventStream, Next};
pub use sync::STEP_FLAGS;
