//! The MPI backend (cargo feature `mpi`): one rank per process, launched by `mpirun`.
//! The same ring, tree and naive algorithms run over MPI point-to-point messages, and
//! [`AllReduceAlgo::Mpi`](super::AllReduceAlgo::Mpi) calls the library's own
//! `MPI_Allreduce`.

use std::mem::ManuallyDrop;

use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;
use mpi::Threading;

use super::{Clock, Op, Result, Tag, Transfer, Transport, Wire};

/// MPI, initialised once per process; dropping it finalises MPI.
pub struct MpiWorld {
    _universe: Universe,
}

impl MpiWorld {
    /// Initialises MPI asking for `MPI_THREAD_SERIALIZED`: the worker thread, not the
    /// main one, makes the MPI calls, one at a time. Refuses a library that offers less.
    pub fn init() -> std::result::Result<MpiWorld, String> {
        let (universe, threading) = mpi::initialize_with_threading(Threading::Serialized)
            .ok_or("MPI was already initialised in this process")?;
        if threading < Threading::Serialized {
            return Err(format!(
                "the MPI library offers only {threading:?} threading; ddlab needs Serialized: use an MPI built with thread support (OpenMPI and MPICH are)"
            ));
        }
        Ok(MpiWorld { _universe: universe })
    }
    /// Initialises MPI at `MPI_THREAD_SINGLE`, for `ddlab check`: it makes every MPI call
    /// from its main thread (its other threads never call MPI), and above SINGLE OpenMPI
    /// takes its internal locks in every call — measured on OpenMPI 4.1, a 4-byte
    /// all-reduce of 0.49 µs becomes 0.62 µs — which a plain `MPI_Init` program, the
    /// yardstick of the check's figures, does not pay.
    pub fn init_single() -> std::result::Result<MpiWorld, String> {
        let (universe, _) =
            mpi::initialize_with_threading(Threading::Single).ok_or("MPI was already initialised in this process")?;
        Ok(MpiWorld { _universe: universe })
    }
    /// A transport over a communicator of its own, a duplicate of the world's
    /// (collective: every rank creates its transports in the same order). Each has its
    /// own message space, so no message of one can match a receive of another: a
    /// parameter server's receive from any rank must never take the bytes a departing
    /// worker sends rank 0 for the job's verdict.
    pub fn transport(&self, clock: Clock) -> MpiTransport {
        MpiTransport::new(ManuallyDrop::new(SimpleCommunicator::world().duplicate()), clock)
    }
}

/// What this process's MPI calls are blocked on, kept for the stall watchdog (a thread
/// that makes no MPI call itself, so that `MPI_THREAD_SERIALIZED` holds): every
/// blocking call of [`MpiTransport`] says whom it waits for while it waits.
pub mod waiting {
    use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    /// Not in an MPI call.
    const NONE: i64 = -1;
    /// Waiting for whichever rank sends first (a parameter server).
    pub const ANY: i64 = -2;
    /// In a collective of every rank (the library's all-reduce, a barrier).
    pub const ALL: i64 = -3;

    static PEER: AtomicI64 = AtomicI64::new(NONE);
    static SINCE_NS: AtomicU64 = AtomicU64::new(0);
    /// A person holds the run (the lab is paused or stepping): waits are theirs, not a
    /// stall; 0 when not held, else when the hold began (+1, so that 0 stays free).
    static HELD_SINCE_NS: AtomicU64 = AtomicU64::new(0);
    /// When the last hold ended: a wait is counted from then at the earliest.
    static RELEASED_NS: AtomicU64 = AtomicU64::new(0);

    fn now_ns() -> u64 {
        static START: OnceLock<Instant> = OnceLock::new();
        START.get_or_init(Instant::now).elapsed().as_nanos() as u64
    }

    /// Marks the start of a blocking call waiting for `peer` (a rank, [`ANY`] or [`ALL`]).
    pub fn enter(peer: i64) {
        SINCE_NS.store(now_ns(), Ordering::SeqCst);
        PEER.store(peer, Ordering::SeqCst);
    }

    pub fn leave() {
        PEER.store(NONE, Ordering::SeqCst);
    }

    /// A person holds the run (true) or lets it go on (false): while held no wait is a
    /// stall, and after it a wait counts from the release.
    pub fn hold(on: bool) {
        if on {
            let _ = HELD_SINCE_NS.compare_exchange(0, now_ns() + 1, Ordering::SeqCst, Ordering::SeqCst);
        } else if HELD_SINCE_NS.swap(0, Ordering::SeqCst) != 0 {
            RELEASED_NS.fetch_max(now_ns(), Ordering::SeqCst);
        }
    }

    /// This process itself was not running until now (stopped with SIGSTOP, or starved
    /// of the CPU): a wait counts from now at the earliest, so that a rank resumed after
    /// a stop does not blame the peer it was waiting for when it stopped.
    pub fn count_from_now() {
        RELEASED_NS.fetch_max(now_ns(), Ordering::SeqCst);
    }

    /// Whom the process waits for, held or not (what it tells the other ranks).
    pub fn peer() -> Option<i64> {
        Some(PEER.load(Ordering::SeqCst)).filter(|&p| p != NONE)
    }

    /// Whom the process waits for, and for how long, if it is in a blocking MPI call
    /// that nobody holds on purpose.
    pub fn now() -> Option<(i64, Duration)> {
        let peer = PEER.load(Ordering::SeqCst);
        if peer == NONE || HELD_SINCE_NS.load(Ordering::SeqCst) != 0 {
            return None;
        }
        let since = SINCE_NS.load(Ordering::SeqCst).max(RELEASED_NS.load(Ordering::SeqCst));
        Some((peer, Duration::from_nanos(now_ns().saturating_sub(since))))
    }
}

/// Runs a blocking MPI call that waits for `peer`, for the stall watchdog to see.
fn blocking<T>(peer: i64, call: impl FnOnce() -> T) -> T {
    waiting::enter(peer);
    let out = call();
    waiting::leave();
    out
}

/// This host's name as MPI reports it.
pub fn host_name() -> String {
    mpi::environment::processor_name().unwrap_or_else(|_| "?".into())
}

/// Stops every rank of the job at once (for a panicking or failing rank, so that nobody
/// waits forever in a collective).
pub fn abort_world(code: i32) -> ! {
    SimpleCommunicator::world().abort(code)
}

/// One rank's end of the world communicator.
pub struct MpiTransport {
    /// Never freed: `MPI_Finalize` frees it. Freeing it on drop would be one more MPI
    /// call from whichever thread drops the transport (the engine's, perhaps while the
    /// main thread agrees on the job's end: `MPI_THREAD_SERIALIZED` forbids the overlap),
    /// or one after `MPI_Finalize`.
    world: ManuallyDrop<SimpleCommunicator>,
    rank: usize,
    size: usize,
    clock: Clock,
    recording: bool,
    transfers: Vec<Transfer>,
    bytes_sent: u64,
    waited_ns: u64,
    wire: Wire,
    scratch: Vec<f32>,
    out16: Vec<u16>,
    in16: Vec<u16>,
    /// node_of[rank]: ranks on the same host share a node (for hierarchical and 2d).
    node_of: Vec<usize>,
}

// SAFETY: an MPI communicator handle may be used from any thread under
// MPI_THREAD_SERIALIZED (checked in `MpiWorld::init`) as long as calls never overlap;
// a transport is owned by one thread at a time and is not `Sync`.
unsafe impl Send for MpiTransport {}

impl MpiTransport {
    /// (Collective: every rank creates its transport together.)
    fn new(world: ManuallyDrop<SimpleCommunicator>, clock: Clock) -> MpiTransport {
        // Nodes are the real hosts: everyone learns everyone's host (as a hash).
        let mine = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            host_name().hash(&mut h);
            h.finish()
        };
        let mut hosts = vec![0u64; world.size() as usize];
        world.all_gather_into(&mine, &mut hosts[..]);
        let node_of = hosts
            .iter()
            .map(|h| hosts.iter().position(|x| x == h).unwrap_or(0))
            .collect();
        MpiTransport {
            node_of,
            rank: world.rank() as usize,
            size: world.size() as usize,
            world,
            clock,
            recording: false,
            transfers: Vec::new(),
            bytes_sent: 0,
            waited_ns: 0,
            wire: Wire::F32,
            scratch: Vec::new(),
            out16: Vec::new(),
            in16: Vec::new(),
        }
    }

    fn record(&mut self, to: usize, tag: Tag, values: usize, start_ns: u64) {
        let bytes = (values * self.wire.bytes()) as u64;
        self.bytes_sent += bytes;
        if self.recording {
            self.transfers.push(Transfer {
                from: self.rank,
                to,
                chunk: tag.chunk,
                round: tag.round,
                bytes,
                start_ns,
                end_ns: self.clock.ns(),
            });
        }
    }

    fn apply(into: &mut [f32], msg: impl Iterator<Item = f32>, op: Op) {
        match op {
            Op::Add => into.iter_mut().zip(msg).for_each(|(a, b)| *a += b),
            Op::Copy => into.iter_mut().zip(msg).for_each(|(a, b)| *a = b),
        }
    }

    /// Rank 0 gets every rank's bytes (in rank order); the others get `None`.
    pub fn gather_bytes(&mut self, data: &[u8]) -> Option<Vec<Vec<u8>>> {
        let root = self.world.process_at_rank(0);
        let len = data.len() as u64;
        if self.rank == 0 {
            let mut lens = vec![0u64; self.size];
            blocking(waiting::ALL, || root.gather_into_root(&len, &mut lens[..]));
            let mut out = vec![data.to_vec()];
            for (r, &l) in lens.iter().enumerate().skip(1) {
                let mut buf = vec![0u8; l as usize];
                // (nothing is sent for an empty buffer: MPI refuses one)
                if l > 0 {
                    blocking(r as i64, || {
                        self.world.process_at_rank(r as i32).receive_into(&mut buf[..])
                    });
                }
                out.push(buf);
            }
            Some(out)
        } else {
            blocking(waiting::ALL, || root.gather_into(&len));
            if len > 0 {
                blocking(0, || root.send(data));
            }
            None
        }
    }

    /// Every rank gets rank `root`'s bytes.
    pub fn broadcast_bytes(&mut self, data: &mut Vec<u8>, root: usize) {
        let root = self.world.process_at_rank(root as i32);
        let mut len = data.len() as u64;
        blocking(waiting::ALL, || root.broadcast_into(&mut len));
        data.resize(len as usize, 0);
        if len > 0 {
            blocking(waiting::ALL, || root.broadcast_into(&mut data[..]));
        }
    }
}

impl Transport for MpiTransport {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }

    fn send(&mut self, to: usize, data: &[f32], tag: Tag) -> Result<()> {
        let t0 = self.clock.ns();
        let dest = self.world.process_at_rank(to as i32);
        match self.wire {
            Wire::F32 => blocking(to as i64, || dest.send(data)),
            wire => {
                self.out16.clear();
                self.out16.extend(data.iter().map(|&v| wire.encode(v)));
                blocking(to as i64, || dest.send(&self.out16[..]));
            }
        }
        self.record(to, tag, data.len(), t0);
        Ok(())
    }

    fn recv(&mut self, from: usize, into: &mut [f32], op: Op) -> Result<()> {
        let t0 = self.clock.ns();
        let src = self.world.process_at_rank(from as i32);
        let peer = from as i64;
        match (self.wire, op) {
            (Wire::F32, Op::Copy) => {
                blocking(peer, || src.receive_into(into));
            }
            (Wire::F32, Op::Add) => {
                self.scratch.resize(into.len(), 0.0);
                blocking(peer, || src.receive_into(&mut self.scratch[..]));
                super::kernels::add_assign(into, &self.scratch);
            }
            (wire, op) => {
                self.in16.resize(into.len(), 0);
                blocking(peer, || src.receive_into(&mut self.in16[..]));
                Self::apply(into, self.in16.iter().map(|&b| wire.decode(b)), op);
            }
        }
        self.waited_ns += self.clock.ns() - t0;
        Ok(())
    }

    fn send_recv(&mut self, to: usize, out: &[f32], tag: Tag, from: usize, into: &mut [f32], op: Op) -> Result<()> {
        let t0 = self.clock.ns();
        let dest = self.world.process_at_rank(to as i32);
        let src = self.world.process_at_rank(from as i32);
        match self.wire {
            Wire::F32 => {
                self.scratch.resize(into.len(), 0.0);
                blocking(from as i64, || {
                    mpi::point_to_point::send_receive_into(out, &dest, &mut self.scratch[..], &src)
                });
                match op {
                    Op::Add => super::kernels::add_assign(into, &self.scratch),
                    Op::Copy => into.copy_from_slice(&self.scratch),
                }
            }
            wire => {
                self.out16.clear();
                self.out16.extend(out.iter().map(|&v| wire.encode(v)));
                self.in16.resize(into.len(), 0);
                blocking(from as i64, || {
                    mpi::point_to_point::send_receive_into(&self.out16[..], &dest, &mut self.in16[..], &src)
                });
                Self::apply(into, self.in16.iter().map(|&b| wire.decode(b)), op);
            }
        }
        self.waited_ns += self.clock.ns() - t0;
        self.record(to, tag, out.len(), t0);
        Ok(())
    }

    fn barrier(&mut self) -> Result<()> {
        let t0 = self.clock.ns();
        blocking(waiting::ALL, || self.world.barrier());
        self.waited_ns += self.clock.ns() - t0;
        Ok(())
    }

    fn library_all_reduce(&mut self, buf: &mut [f32]) -> Result<()> {
        // MPI_IN_PLACE is not portable through rsmpi: reduce from a copy.
        let mut send = std::mem::take(&mut self.scratch);
        send.clear();
        send.extend_from_slice(buf);
        let t0 = self.clock.ns();
        blocking(waiting::ALL, || {
            self.world.all_reduce_into(&send[..], buf, SystemOperation::sum())
        });
        self.waited_ns += self.clock.ns() - t0;
        self.bytes_sent += (buf.len() * 4) as u64;
        self.scratch = send;
        Ok(())
    }

    /// `MPI_Allreduce` from `send` into `recv` (out of place, as nccl-tests measures).
    /// Only `ddlab check` times it, so it reads no clock: at 170 ns a read on some VMs,
    /// two reads would add half again to a 4-byte all-reduce's 0.6 µs.
    fn library_all_reduce_into(&mut self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        self.world.all_reduce_into(send, recv, SystemOperation::sum());
        self.bytes_sent += (send.len() * 4) as u64;
        Ok(())
    }

    fn recv_any(&mut self, into: &mut [f32]) -> Result<usize> {
        let t0 = self.clock.ns();
        let status = blocking(waiting::ANY, || self.world.any_process().receive_into(into));
        self.waited_ns += self.clock.ns() - t0;
        Ok(status.source_rank() as usize)
    }

    fn process_per_rank(&self) -> bool {
        true
    }

    fn gather_f64(&mut self, mine: &[f64]) -> Result<Vec<f64>> {
        let root = self.world.process_at_rank(0);
        if self.rank == 0 {
            let mut all = vec![0.0f64; mine.len() * self.size];
            blocking(waiting::ALL, || root.gather_into_root(mine, &mut all[..]));
            Ok(all)
        } else {
            blocking(waiting::ALL, || root.gather_into(mine));
            Ok(Vec::new())
        }
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
        self.node_of[rank]
    }
    fn bytes_sent(&self) -> u64 {
        self.bytes_sent
    }
    fn waited_ns(&self) -> u64 {
        self.waited_ns
    }
}
