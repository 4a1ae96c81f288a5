//! The two-lane event channel between engines and front ends.
//!
//! Metrics (worker steps, evaluations, state changes) go through an unbounded lane and
//! are never dropped; visual detail (phases, transfers, batches) goes through a bounded
//! lane and is dropped, and counted, when the front end falls behind. Either way a send
//! never blocks training.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};

use super::Event;

#[derive(Clone)]
pub struct EventSink {
    metrics: Sender<Event>,
    visual: Sender<Event>,
    dropped: Arc<AtomicU64>,
}

/// What an [`EventStream`] has next.
// (matched at once and never kept, so its size costs nothing; a box would cost an
// allocation per event)
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Next {
    Event(Event),
    /// Nothing now; more may come.
    Empty,
    /// Every sender is gone and every event was read: nothing more will come.
    Closed,
}

pub struct EventStream {
    metrics: Receiver<Event>,
    visual: Receiver<Event>,
    dropped: Arc<AtomicU64>,
}

/// A new channel whose visual lane holds up to `visual_capacity` events.
pub fn event_channel(visual_capacity: usize) -> (EventSink, EventStream) {
    let (mt, mr) = crossbeam_channel::unbounded();
    let (vt, vr) = crossbeam_channel::bounded(visual_capacity.max(1));
    let dropped = Arc::new(AtomicU64::new(0));
    (
        EventSink {
            metrics: mt,
            visual: vt,
            dropped: Arc::clone(&dropped),
        },
        EventStream {
            metrics: mr,
            visual: vr,
            dropped,
        },
    )
}

impl EventSink {
    pub fn send(&self, event: Event) {
        if event.is_visual() {
            if let Err(TrySendError::Full(_)) = self.visual.try_send(event) {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        } else {
            // A closed receiver means nobody listens any more: nothing to do.
            let _ = self.metrics.send(event);
        }
    }
}

impl EventStream {
    /// The next event if one is waiting, visual detail first (it happened earlier than
    /// the metrics that summarise it).
    pub fn try_next(&self) -> Next {
        match self.visual.try_recv() {
            Ok(e) => return Next::Event(e),
            Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => {}
        }
        match self.metrics.try_recv() {
            Ok(e) => Next::Event(e),
            Err(TryRecvError::Empty) => Next::Empty,
            Err(TryRecvError::Disconnected) if self.visual.is_empty() => Next::Closed,
            Err(TryRecvError::Disconnected) => Next::Empty,
        }
    }

    /// Waits up to `timeout` for an event.
    pub fn next_timeout(&self, timeout: std::time::Duration) -> Next {
        match self.try_next() {
            Next::Empty => {}
            next => return next,
        }
        crossbeam_channel::select! {
            recv(self.visual) -> e => e.map_or(Next::Empty, Next::Event),
            recv(self.metrics) -> e => match e {
                Ok(e) => Next::Event(e),
                Err(_) if self.visual.is_empty() => Next::Closed,
                Err(_) => Next::Empty,
            },
            default(timeout) => Next::Empty,
        }
    }

    /// Visual events dropped so far because the front end fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}
