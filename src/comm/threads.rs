//! The threads backend: ranks are threads of one process, messages are zero-copy.
//!
//! A send publishes a pointer to the sender's slice in the (sender → receiver) slot; the
//! receiver adds or copies straight out of it and marks the slot done; only then does the
//! send return, so the slice stays untouched while it is read (a rendezvous, like MPI's
//! synchronous send). Shared memory makes this about as fast as memory itself.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;

use super::wait::{wait_for_clock, wait_until, Doorbell};
use super::{Clock, CommError, Link, Observer, Op, Pace, Result, Tag, Transfer, Transport, Wire};

// Slot state = sequence number << 2 | phase.
const POSTED: u64 = 0;
const TAKEN: u64 = 1;
const DONE: u64 = 2;
const REVOKED: u64 = 3;

fn state(seq: u64, phase: u64) -> u64 {
    seq << 2 | phase
}

/// One direction of one pair of ranks.
struct Slot {
    state: AtomicU64,
    /// Rung on every change of `state`; both the sender and the receiver wait on it.
    bell: Doorbell,
    /// The message: `len` f32 values, or 16-bit ones when the sender's wire format
    /// (`wire`, which travels with the message) says so. The receiver reads it in that
    /// format whatever its own is: a rank that switched format alone gets the values
    /// right, never a read past the sender's buffer.
    ptr: AtomicPtr<u8>,
    len: AtomicUsize,
    wire: AtomicU8,
    posted_ns: AtomicU64,
}

struct Shared {
    size: usize,
    /// slots[from * size + to]
    slots: Vec<Slot>,
    abort: AtomicBool,
    barrier_count: AtomicUsize,
    barrier_generation: AtomicU64,
    barrier_bell: Doorbell,
    clock: Clock,
    topology: Topology,
}

impl Shared {
    fn slot(&self, from: usize, to: usize) -> &Slot {
        &self.slots[from * self.size + to]
    }

    /// Sets the abort flag and wakes every sleeper, so that each sees it.
    fn abort(&self) {
        self.abort.store(true, Ordering::SeqCst);
        for slot in &self.slots {
            slot.bell.ring();
        }
        self.barrier_bell.ring();
    }
}

/// Where ranks run: which (emulated) node each rank is on, and the links between them.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    /// node_of[rank]
    pub node_of: Vec<usize>,
    /// Between ranks on different nodes (None: shared memory at full speed).
    pub inter: Option<Link>,
    /// Between ranks on the same node.
    pub intra: Option<Link>,
}

impl Topology {
    /// `size` ranks on one node, every pair joined by `link`.
    pub fn flat(size: usize, link: Option<Link>) -> Topology {
        Topology {
            node_of: vec![0; size],
            inter: link,
            intra: link,
        }
    }

    /// `size` ranks in `nodes` contiguous groups as even as possible (the first nodes
    /// get one more rank when `size` is not a multiple of `nodes`).
    pub fn nodes(size: usize, nodes: usize, inter: Option<Link>, intra: Option<Link>) -> Topology {
        let nodes = nodes.clamp(1, size.max(1));
        let (base, extra) = (size / nodes, size % nodes);
        let mut node_of = Vec::with_capacity(size);
        for node in 0..nodes {
            let count = base + usize::from(node < extra);
            node_of.extend(std::iter::repeat_n(node, count));
        }
        Topology { node_of, inter, intra }
    }

    pub fn link(&self, from: usize, to: usize) -> Option<Link> {
        if self.node_of[from] == self.node_of[to] {
            self.intra
        } else {
            self.inter
        }
    }
}

/// One rank's end of a group of threads.
pub struct ThreadTransport {
    rank: usize,
    shared: Arc<Shared>,
    /// Sequence numbers of the last message sent to / received from each rank.
    sent: Vec<u64>,
    received: Vec<u64>,
    /// With an emulated link: when this rank's incoming ports (intra-node, inter-node)
    /// are free again.
    rx_free_ns: [u64; 2],
    recording: bool,
    transfers: Vec<Transfer>,
    bytes_sent: u64,
    waited_ns: u64,
    wire: Wire,
    /// Encoded 16-bit messages, one per destination: alive until the receiver is done.
    staging: Vec<Vec<u16>>,
    /// Slow motion: every message's transfer (and emulated link time) dilated.
    pace: Option<Arc<Pace>>,
    /// Sees each transfer as it completes and each round before it starts.
    observer: Option<Box<dyn Observer>>,
    /// The highest round this rank has posted in the current collective.
    round: u32,
}

/// The pace's record of typical message times is kept apart from the phases'.
const MESSAGE_SITE: usize = crate::comm::PACE_SITES - 1;

/// Makes the `size` ends of a new group; hand one to each worker thread. `link` emulates
/// a network between every pair; `record` keeps a [`Transfer`] per message.
pub fn thread_group(size: usize, clock: Clock, link: Option<Link>, record: bool) -> Vec<ThreadTransport> {
    thread_group_on(Topology::flat(size, link), clock, record)
}

/// As `thread_group`, with ranks placed on emulated nodes.
pub fn thread_group_on(topology: Topology, clock: Clock, record: bool) -> Vec<ThreadTransport> {
    let size = topology.node_of.len();
    assert!(size >= 1, "a group has at least one rank");
    let shared = Arc::new(Shared {
        size,
        slots: (0..size * size)
            .map(|_| Slot {
                state: AtomicU64::new(state(0, DONE)),
                bell: Doorbell::default(),
                ptr: AtomicPtr::new(std::ptr::null_mut()),
                len: AtomicUsize::new(0),
                wire: AtomicU8::new(Wire::F32.code()),
                posted_ns: AtomicU64::new(0),
            })
            .collect(),
        abort: AtomicBool::new(false),
        barrier_count: AtomicUsize::new(0),
        barrier_generation: AtomicU64::new(0),
        barrier_bell: Doorbell::default(),
        clock,
        topology,
    });
    (0..size)
        .map(|rank| ThreadTransport {
            rank,
            shared: Arc::clone(&shared),
            sent: vec![0; size],
            received: vec![0; size],
            rx_free_ns: [0; 2],
            recording: record,
            transfers: Vec::new(),
            bytes_sent: 0,
            waited_ns: 0,
            wire: Wire::F32,
            staging: vec![Vec::new(); size],
            pace: None,
            observer: None,
            round: 0,
        })
        .collect()
}

impl ThreadTransport {
    /// Makes every wait in this group fail at once: for a worker that stops early.
    pub fn abort_group(&self) {
        self.shared.abort();
    }

    /// A handle that can abort the group from outside (e.g. the session on stop).
    pub fn abort_handle(&self) -> AbortHandle {
        AbortHandle(Arc::clone(&self.shared))
    }

    /// Dilates every message this rank receives by the run's pace (slow motion).
    pub fn set_pace(&mut self, pace: Arc<Pace>) {
        self.pace = Some(pace);
    }

    /// Tells the observer about a new round before its first message goes out.
    fn enter_round(&mut self, tag: Tag) -> Result<()> {
        if tag.round > self.round {
            self.round = tag.round;
            if let Some(observer) = self.observer.as_mut() {
                observer.before_round(tag.round)?;
            }
        }
        Ok(())
    }

    /// Publishes `data` for rank `to`. The returned guard must be completed (see
    /// [`complete`](Self::complete)); dropped without it — a panic between posting and
    /// completing — it aborts the group and waits until the receiver no longer reads,
    /// so the sender's buffer is never freed under a reader.
    fn post(&mut self, to: usize, data: &[f32]) -> Posted {
        let seq = self.sent[to] + 1;
        self.sent[to] = seq;
        let slot = self.shared.slot(self.rank, to);
        let now = self.shared.clock.ns();
        let ptr = match self.wire {
            Wire::F32 => data.as_ptr().cast::<u8>(),
            wire => {
                let staged = &mut self.staging[to];
                staged.clear();
                staged.extend(data.iter().map(|&v| wire.encode(v)));
                staged.as_ptr().cast::<u8>()
            }
        };
        slot.ptr.store(ptr.cast_mut(), Ordering::Relaxed);
        slot.len.store(data.len(), Ordering::Relaxed);
        slot.wire.store(self.wire.code(), Ordering::Relaxed);
        slot.posted_ns.store(now, Ordering::Relaxed);
        slot.state.store(state(seq, POSTED), Ordering::Release);
        slot.bell.ring();
        Posted {
            shared: Arc::as_ptr(&self.shared),
            from: self.rank,
            to,
            seq,
            posted_ns: now,
            values: data.len(),
        }
    }

    /// Waits until the receiver is done with the posted message. If the group aborts
    /// before the receiver took it, revokes it; if the receiver is reading, waits for it
    /// to finish (reading is bounded), so the slice is never read after we return.
    fn complete(&mut self, posted: Posted, tag: Tag) -> Result<()> {
        let Posted {
            to,
            seq,
            posted_ns,
            values,
            ..
        } = posted;
        let slot = self.shared.slot(self.rank, to);
        let t0 = self.shared.clock.ns();
        let waited = wait_until(&self.shared.abort, &slot.bell, || {
            slot.state.load(Ordering::Acquire) == state(seq, DONE)
        });
        self.waited_ns += self.shared.clock.ns() - t0;
        if waited.is_err() {
            posted.revoke();
            return Err(CommError::Aborted);
        }
        posted.disarm();
        let bytes = (values * self.wire.bytes()) as u64;
        self.bytes_sent += bytes;
        if self.recording {
            let transfer = Transfer {
                from: self.rank,
                to,
                chunk: tag.chunk,
                round: tag.round,
                bytes,
                start_ns: posted_ns,
                end_ns: self.shared.clock.ns(),
            };
            match self.observer.as_mut() {
                Some(observer) => observer.transferred(transfer),
                None => self.transfers.push(transfer),
            }
        }
        Ok(())
    }

    fn take(&mut self, from: usize, into: &mut [f32], op: Op) -> Result<()> {
        let seq = self.received[from] + 1;
        self.received[from] = seq;
        let shared = &*self.shared;
        let slot = shared.slot(from, self.rank);
        let t0 = shared.clock.ns();
        let waited = wait_until(&shared.abort, &slot.bell, || {
            slot.state.load(Ordering::Acquire) == state(seq, POSTED)
        });
        self.waited_ns += shared.clock.ns() - t0;
        waited?;
        let len = slot.len.load(Ordering::Relaxed);
        assert_eq!(
            len,
            into.len(),
            "rank {from} sent {len} values, rank {} expected {}",
            self.rank,
            into.len()
        );
        // Slow motion stretches the link's α and n/β; in shared memory, the hand-over
        // itself: from when both sides were there (the message posted, this rank
        // waiting for it) to the end of the copy, wake-up included, as full speed has it.
        let dilation = self.pace.as_ref().map_or(1.0, |p| p.factor());
        let both_there_ns = slot.posted_ns.load(Ordering::Relaxed).max(t0);
        let link = shared.topology.link(from, self.rank);
        if let Some(link) = link {
            // The message occupies our incoming port for n/β, and arrives α later.
            let port = usize::from(shared.topology.node_of[from] != shared.topology.node_of[self.rank]);
            let posted = slot.posted_ns.load(Ordering::Relaxed);
            let bytes = len * Wire::from_code(slot.wire.load(Ordering::Relaxed)).bytes();
            let start = posted.max(self.rx_free_ns[port]);
            // (float casts saturate and the sums saturate: no extreme link or dilation wraps)
            self.rx_free_ns[port] = start.saturating_add((link.transfer_ns(bytes) as f64 * dilation) as u64);
            let latency = (link.latency_ns() as f64 * dilation) as u64;
            wait_for_clock(
                &shared.abort,
                &shared.clock,
                self.rx_free_ns[port].saturating_add(latency),
            )?;
        }
        let copy_start_ns = shared.clock.ns();
        if slot
            .state
            .compare_exchange(
                state(seq, POSTED),
                state(seq, TAKEN),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            return Err(CommError::Aborted); // the sender revoked it
        }
        // From TAKEN on, the sender waits for DONE: should anything below unwind, DONE
        // is still stored (the group aborted first), so the sender is never left spinning.
        let reading = Reading { shared, slot, seq };
        let ptr = slot.ptr.load(Ordering::Relaxed);
        let wire = Wire::from_code(slot.wire.load(Ordering::Relaxed));
        // SAFETY: the sender published a live buffer of `len` values in the wire format
        // it stored beside it (read here, not ours), and blocks until we mark the slot
        // DONE — it cannot revoke after our TAKEN, and a panic on its side waits for DONE
        // too (`Posted`'s drop) — so the buffer is valid and unchanged while we read. It
        // never overlaps `into`: that is our own buffer.
        match wire {
            Wire::F32 => {
                let msg = unsafe { std::slice::from_raw_parts(ptr.cast::<f32>(), len) };
                match op {
                    Op::Add => super::kernels::add_assign(into, msg),
                    Op::Copy => into.copy_from_slice(msg),
                }
            }
            wire => {
                let msg = unsafe { std::slice::from_raw_parts(ptr.cast::<u16>(), len) };
                // Sums stay in f32: only what travelled was rounded.
                match op {
                    Op::Add => into.iter_mut().zip(msg).for_each(|(a, &b)| *a += wire.decode(b)),
                    Op::Copy => into.iter_mut().zip(msg).for_each(|(a, &b)| *a = wire.decode(b)),
                }
            }
        }
        if dilation > 1.0 {
            if let Some(pace) = &self.pace {
                // The data "arrives" only once its dilated transfer is over.
                let from_ns = if link.is_some() { copy_start_ns } else { both_there_ns };
                let real = std::time::Duration::from_nanos(shared.clock.ns().saturating_sub(from_ns));
                pace.stretch(MESSAGE_SITE, real);
            }
        }
        std::mem::forget(reading);
        slot.state.store(state(seq, DONE), Ordering::Release);
        slot.bell.ring();
        Ok(())
    }
}

/// A message posted and not yet completed: see [`ThreadTransport::post`].
struct Posted {
    /// The group (a pointer, not a borrow: the sender receives while its message is
    /// posted, which needs `&mut` of the transport that owns the group's `Arc`).
    shared: *const Shared,
    from: usize,
    to: usize,
    seq: u64,
    posted_ns: u64,
    values: usize,
}

impl Posted {
    fn shared(&self) -> &Shared {
        // SAFETY: a `Posted` lives inside one call of a method of the transport that
        // made it, and that transport holds an `Arc` of the group all along.
        unsafe { &*self.shared }
    }

    /// The receiver is done with the message: nothing is left to guard.
    fn disarm(self) {
        std::mem::forget(self);
    }

    /// The group aborted: takes the message back if the receiver has not taken it, else
    /// waits out its read; then nothing is left to guard.
    fn revoke(self) {
        self.revoke_or_outwait_the_read();
        std::mem::forget(self);
    }

    /// Takes the message back if the receiver has not taken it (true), else waits
    /// until its read is over (reading is bounded).
    fn revoke_or_outwait_the_read(&self) -> bool {
        let slot = self.shared().slot(self.from, self.to);
        let revoked = slot
            .state
            .compare_exchange(
                state(self.seq, POSTED),
                state(self.seq, REVOKED),
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok();
        if !revoked {
            while slot.state.load(Ordering::Acquire) != state(self.seq, DONE) {
                std::thread::yield_now();
            }
        }
        revoked
    }
}

impl Drop for Posted {
    /// Reached only when unwinding between post and complete: the collective cannot
    /// finish, so the group aborts (no peer waits forever), and the message is taken
    /// back or its read waited out before the sender's buffer goes.
    fn drop(&mut self) {
        self.shared().abort();
        self.revoke_or_outwait_the_read();
    }
}

/// A message this rank has TAKEN and reads: see [`ThreadTransport::take`].
struct Reading<'a> {
    shared: &'a Shared,
    slot: &'a Slot,
    seq: u64,
}

impl Drop for Reading<'_> {
    /// Reached only when unwinding mid-read: the collective cannot finish, so the group
    /// aborts, and the sender is told the read is over (its buffer may go).
    fn drop(&mut self) {
        self.shared.abort();
        self.slot.state.store(state(self.seq, DONE), Ordering::Release);
        self.slot.bell.ring();
    }
}

/// Aborts a thread group from outside it.
#[derive(Clone)]
pub struct AbortHandle(Arc<Shared>);

impl AbortHandle {
    pub fn abort(&self) {
        self.0.abort();
    }
}

impl Transport for ThreadTransport {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.shared.size
    }

    fn send(&mut self, to: usize, data: &[f32], tag: Tag) -> Result<()> {
        self.enter_round(tag)?;
        let posted = self.post(to, data);
        self.complete(posted, tag)
    }

    fn recv(&mut self, from: usize, into: &mut [f32], op: Op) -> Result<()> {
        self.take(from, into, op)
    }

    fn send_recv(&mut self, to: usize, out: &[f32], tag: Tag, from: usize, into: &mut [f32], op: Op) -> Result<()> {
        self.enter_round(tag)?;
        let posted = self.post(to, out);
        let received = self.take(from, into, op);
        let sent = self.complete(posted, tag);
        received.and(sent)
    }

    fn barrier(&mut self) -> Result<()> {
        let shared = &*self.shared;
        let generation = shared.barrier_generation.load(Ordering::Acquire);
        if shared.barrier_count.fetch_add(1, Ordering::AcqRel) + 1 == shared.size {
            shared.barrier_count.store(0, Ordering::Relaxed);
            shared.barrier_generation.fetch_add(1, Ordering::AcqRel);
            shared.barrier_bell.ring();
            return Ok(());
        }
        wait_until(&shared.abort, &shared.barrier_bell, || {
            shared.barrier_generation.load(Ordering::Acquire) != generation
        })
    }

    fn begin_collective(&mut self) {
        self.round = 0;
    }

    fn set_observer(&mut self, observer: Option<Box<dyn Observer>>) {
        self.observer = observer;
    }

    fn drain_transfers(&mut self, out: &mut Vec<Transfer>) {
        out.append(&mut self.transfers);
    }

    fn set_recording(&mut self, on: bool) {
        self.recording = on;
    }

    fn wire(&self) -> Wire {
        self.wire
    }

    fn set_wire(&mut self, wire: Wire) {
        self.wire = wire;
    }

    fn node_of(&self, rank: usize) -> usize {
        self.shared.topology.node_of[rank]
    }

    fn bytes_sent(&self) -> u64 {
        self.bytes_sent
    }

    fn waited_ns(&self) -> u64 {
        self.waited_ns
    }
}
