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
    /// the metrics that summarise it). `Err(true)` once every sender is gone and both
    /// lanes are empty.
    pub fn try_next(&self) -> Result<Event, bool> {
        match self.visual.try_recv() {
            Ok(e) => return Ok(e),
            Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => {}
        }
        match self.metrics.try_recv() {
            Ok(e) => Ok(e),
            Err(TryRecvError::Empty) => Err(false),
            Err(TryRecvError::Disconnected) => Err(self.visual.is_empty()),
        }
    }

    /// Waits up to `timeout` for an event.
    pub fn next_timeout(&self, timeout: std::time::Duration) -> Result<Event, bool> {
        match self.try_next() {
            Ok(e) => return Ok(e),
            Err(true) => return Err(true),
            Err(false) => {}
        }
        crossbeam_channel::select! {
            recv(self.visual) -> e => e.map_err(|_| false),
            recv(self.metrics) -> e => e.map_err(|_| self.visual.is_empty()),
            default(timeout) => Err(false),
        }
    }

    /// Visual events dropped so far because the front end fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}
