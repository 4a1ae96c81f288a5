//! Engines: the worker loops that train, emit [`Event`]s and obey [`Control`]s. They know
//! no terminal: the same run drives the TUI, the headless CLI, the exporters and tests.

mod control;
mod event;
mod sink;
mod sync;

pub use control::{Control, Gate, Stopped};
pub use event::{CollectiveKind, Event, Outcome, Phase, WorkerStep};
pub use sink::{event_channel, EventSink, EventStream};
pub use sync::{diverged, spawn, EngineHandle, EngineOptions};
