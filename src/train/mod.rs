//! Engines: the worker loops that train, emit [`Event`]s and obey [`Control`]s. They know
//! no terminal: the same run drives the TUI, the headless CLI, the exporters and tests.
//!
//! `engine.rs` runs a sequence of segments (one mode and worker count each); `sync.rs`
//! is the all-reduce engine, `ps.rs` the parameter-server engines (async, SSP, backup).

mod compute;
mod control;
mod engine;
mod event;
mod overlap;
mod ps;
mod sink;
mod sync;

pub use control::{Control, Gate, Stopped};
pub use engine::{diverged, spawn, spawn_rank, total_samples, EngineHandle, EngineOptions};
pub use event::{params_hash, CollectiveKind, Event, Outcome, Phase, WorkerStep};
pub use sink::{event_channel, EventSink, EventStream, Next};
pub use sync::STEP_FLAGS;
