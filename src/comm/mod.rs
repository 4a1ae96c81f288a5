//! Transport: collectives over point-to-point messages, the threads backend, the
//! emulated link, and the all-reduce algorithms.
//!
//! The algorithms (`allreduce.rs`) are written once over the small [`Transport`] trait,
//! so every backend runs the same ring, tree and naive all-reduce and reports the same
//! [`Transfer`]s for the lab to animate.

mod allreduce;
mod compress;
pub mod heartbeat;
mod kernels;
mod link;
#[cfg(feature = "mpi")]
pub mod mpi;
mod pace;
mod threads;
mod wait;
mod wire;

use std::time::Instant;

use serde::{Deserialize, Serialize};

pub use allreduce::{all_reduce_sum, all_reduce_window, broadcast, chunk_range, Comm, Window};
pub use compress::{all_gather, top_k, Compress, LowRank, Matrix, MAX_RANK};
pub use link::{alpha_beta, alpha_beta_all_gather, alpha_beta_on, Link};
pub use pace::{Pace, MAX_FACTOR as MAX_PACE, SITES as PACE_SITES};
pub use threads::{thread_group, thread_group_on, AbortHandle, ThreadTransport, Topology};
pub use wait::{
    channel, follow_the_gathering, gather_with_the_group, precise_sleep, BellReceiver, BellSender, OthersMeter,
};
pub use wire::Wire;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommError {
    /// Another worker stopped (diverged, was stopped, or failed); nobody waits forever.
    #[error("the collective was aborted because another worker stopped")]
    Aborted,
    /// The backend lacks what was asked of it.
    #[error("{0}")]
    Unsupported(&'static str),
}

pub type Result<T> = std::result::Result<T, CommError>;

/// The operations every backend offers the training engines.
pub trait Collective: Send {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// Every rank ends with the element-wise sum of everyone's `buf`; all ranks get
    /// bit-identical results.
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<()>;
    /// Every rank ends with the element-wise mean.
    fn all_reduce_mean(&mut self, buf: &mut [f32]) -> Result<()> {
        self.all_reduce_sum(buf)?;
        let inv = 1.0 / self.size() as f32;
        buf.iter_mut().for_each(|v| *v *= inv);
        Ok(())
    }
    /// Every rank ends with `root`'s `buf`.
    fn broadcast(&mut self, buf: &mut [f32], root: usize) -> Result<()>;
    fn barrier(&mut self) -> Result<()>;
}

/// Which all-reduce algorithm to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AllReduceAlgo {
    /// Reduce-scatter then all-gather around a ring: 2(N−1) rounds, each moving 1/N of
    /// the buffer. Bandwidth-optimal.
    #[default]
    Ring,
    /// Recursive doubling (ranks beyond the largest power of two fold in first):
    /// log₂N rounds, each moving the whole buffer. Latency-optimal.
    Tree,
    /// Everyone sends to rank 0, which sums and sends the result back: 2(N−1) messages
    /// of the whole buffer through one rank.
    Naive,
    /// Over nodes: reduce inside each node, ring among one leader per node, broadcast
    /// inside each node (ChainerMN's hierarchical).
    Hierarchical,
    /// Over nodes: reduce-scatter inside each node, all-reduce each shard across nodes,
    /// all-gather inside each node (ChainerMN's two-dimensional).
    #[serde(rename = "2d")]
    TwoD,
    /// The MPI library's own `MPI_Allreduce` (`--backend mpi` only).
    Mpi,
}

impl AllReduceAlgo {
    /// Every algorithm every backend has (the flat ones first); `Mpi` needs MPI.
    pub const ALL: [AllReduceAlgo; 5] = [
        AllReduceAlgo::Ring,
        AllReduceAlgo::Tree,
        AllReduceAlgo::Naive,
        AllReduceAlgo::Hierarchical,
        AllReduceAlgo::TwoD,
    ];
    /// The algorithms that ignore nodes.
    pub const FLAT: [AllReduceAlgo; 3] = [AllReduceAlgo::Ring, AllReduceAlgo::Tree, AllReduceAlgo::Naive];

    /// Rounds of messages one all-reduce takes across `n` ranks (0 for one rank).
    pub fn rounds(self, n: usize) -> usize {
        if n <= 1 {
            return 0;
        }
        let log2 = (usize::BITS - 1 - n.leading_zeros()) as usize; // of the largest power of two ≤ n
        match self {
            AllReduceAlgo::Ring => 2 * (n - 1),
            AllReduceAlgo::Tree => log2 + if n.is_power_of_two() { 0 } else { 2 },
            AllReduceAlgo::Naive => 2,
            // (with one node: a reduce, nothing across, a broadcast)
            AllReduceAlgo::Hierarchical | AllReduceAlgo::TwoD => 2,
            // The library chooses; ring-like for large buffers.
            AllReduceAlgo::Mpi => 2 * (n - 1),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            AllReduceAlgo::Ring => "ring",
            AllReduceAlgo::Tree => "tree",
            AllReduceAlgo::Naive => "naive",
            AllReduceAlgo::Hierarchical => "hierarchical",
            AllReduceAlgo::TwoD => "2d",
            AllReduceAlgo::Mpi => "mpi",
        }
    }
}

impl std::str::FromStr for AllReduceAlgo {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        AllReduceAlgo::ALL
            .into_iter()
            .chain([AllReduceAlgo::Mpi])
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                format!("unknown all-reduce algorithm '{s}': use ring, tree, naive, hierarchical, 2d or mpi")
            })
    }
}

impl std::fmt::Display for AllReduceAlgo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What to do with a received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// into[i] += msg[i]
    Add,
    /// into[i] = msg[i]
    Copy,
}

/// Labels a message for the record: which chunk of the buffer, in which round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tag {
    pub chunk: u32,
    pub round: u32,
}

/// One message that really moved, as the sender saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    pub from: usize,
    pub to: usize,
    pub chunk: u32,
    pub round: u32,
    pub bytes: u64,
    /// Nanoseconds since the run's clock started: posted, and received.
    pub start_ns: u64,
    pub end_ns: u64,
}

/// Watches one rank's collectives as they happen (step mode and the lab's animation):
/// each message as soon as it has arrived, and each new round before it starts.
pub trait Observer: Send {
    /// A message this rank sent has been received (only while recording).
    fn transferred(&mut self, transfer: Transfer);
    /// This rank is about to send the first message of round `round` ≥ 1 of a
    /// collective (round 0 starts with the collective itself). An error aborts it.
    fn before_round(&mut self, round: u32) -> Result<()>;
}

/// Point-to-point messages between the ranks of one group: what an all-reduce algorithm
/// needs from a backend. Sends complete when the receiver has the data.
pub trait Transport: Send {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    fn send(&mut self, to: usize, data: &[f32], tag: Tag) -> Result<()>;
    fn recv(&mut self, from: usize, into: &mut [f32], op: Op) -> Result<()>;
    /// Send to one rank while receiving from another (both may be the same rank).
    fn send_recv(&mut self, to: usize, out: &[f32], tag: Tag, from: usize, into: &mut [f32], op: Op) -> Result<()>;
    fn barrier(&mut self) -> Result<()>;
    /// A collective begins: its rounds count from 0 again.
    fn begin_collective(&mut self) {}
    /// Hands each recorded transfer, and each new round, to `observer` from now on
    /// (None: record transfers for `drain_transfers`). Backends without it ignore it.
    fn set_observer(&mut self, _observer: Option<Box<dyn Observer>>) {}
    /// Moves the transfers recorded since the last call into `out` (when recording).
    fn drain_transfers(&mut self, out: &mut Vec<Transfer>);
    /// Starts or stops recording transfers.
    fn set_recording(&mut self, on: bool);
    /// The format values travel in (set for gradients; broadcasts always use f32).
    fn wire(&self) -> Wire {
        Wire::F32
    }
    fn set_wire(&mut self, _wire: Wire) {}
    /// The (emulated) node a rank runs on; hierarchical algorithms group by it.
    fn node_of(&self, _rank: usize) -> usize {
        0
    }
    /// Rounds `buf` to what it would be after a trip over the wire, so that a rank can
    /// keep exactly the values the others receive (replicas stay bit-identical).
    fn quantize(&self, buf: &mut [f32]) {
        let wire = self.wire();
        if wire != Wire::F32 {
            buf.iter_mut().for_each(|v| *v = wire.round(*v));
        }
    }
    /// The library's own all-reduce (sum, in place), where the backend has one.
    fn library_all_reduce(&mut self, _buf: &mut [f32]) -> Result<()> {
        Err(CommError::Unsupported(
            "the mpi all-reduce needs the MPI backend: use --backend mpi under mpirun, or ring, tree or naive",
        ))
    }
    /// The library's own all-reduce from `send` into `recv` (out of place).
    fn library_all_reduce_into(&mut self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        recv.copy_from_slice(send);
        self.library_all_reduce(recv)
    }
    /// Receives the next message from whichever rank sends first; returns its rank (a
    /// parameter server's loop). Only where each worker is a process (MPI).
    fn recv_any(&mut self, _into: &mut [f32]) -> Result<usize> {
        Err(CommError::Unsupported("receiving from any rank needs the MPI backend"))
    }
    /// Whether each rank is a process of its own (MPI), so that rank 0 must collect what
    /// the others report; threads report for themselves.
    fn process_per_rank(&self) -> bool {
        false
    }
    /// Rank 0 gets every rank's `mine` concatenated in rank order (the others an empty
    /// vector). Only where each rank is a process (MPI).
    fn gather_f64(&mut self, _mine: &[f64]) -> Result<Vec<f64>> {
        Err(CommError::Unsupported("gathering to rank 0 needs the MPI backend"))
    }
    /// Bytes this rank has sent since it was created.
    fn bytes_sent(&self) -> u64;
    /// Nanoseconds this rank has spent waiting for other ranks since it was created.
    fn waited_ns(&self) -> u64;
}

/// nccl-tests' bus bandwidth factor, busbw = algbw · 2(N−1)/N: the share of the buffer
/// each rank's link carries in a ring, so that figures compare across N (0 for one rank).
pub fn busbw_factor(n: usize) -> f64 {
    if n <= 1 {
        0.0
    } else {
        2.0 * (n as f64 - 1.0) / n as f64
    }
}

/// One all-reduce measurement, as nccl-tests reports it (`ddlab bench`, `ddlab check`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BandwidthRow {
    pub algorithm: String,
    pub workers: usize,
    pub bytes: usize,
    pub time_us: f64,
    pub algbw_gbps: f64,
    pub busbw_gbps: f64,
}

impl BandwidthRow {
    /// `bytes` all-reduced across `workers` in `time_us`.
    pub fn new(algorithm: &str, workers: usize, bytes: usize, time_us: f64) -> BandwidthRow {
        let algbw = bytes as f64 / (time_us * 1e-6).max(1e-12) / 1e9;
        BandwidthRow {
            algorithm: algorithm.to_string(),
            workers,
            bytes,
            time_us,
            algbw_gbps: algbw,
            busbw_gbps: algbw * busbw_factor(workers),
        }
    }
}

/// Monotonic nanoseconds since a run started; every event and transfer uses one clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    pub fn start() -> Self {
        Clock(Instant::now())
    }
    pub fn ns(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

/// Readies the calling thread to be one of the workers that hand data to each other
/// many times a step. Linux: it asks for short time slices (`sched_setattr`'s runtime
/// for a normal thread, honoured by the EEVDF scheduler since Linux 6.12; ignored
/// before), so that a worker woken by its partner runs at once instead of after another
/// program's whole slice; it leaves its priority and policy as they were.
///
/// Workers are not pinned to cores: a pinned worker cannot leave the core another
/// program is busy on (with one busy process beside a 4-worker run, pinned workers
/// made 46 steps/s, unpinned ones 1600 of an idle machine's 2300), and measured idle,
/// unpinned workers are as fast. Only while other programs fill the machine do a
/// thread group's threads gather on one core, and they leave it once the machine has
/// room (see `wait`).
pub fn worker_thread() {
    wait::watch_crowding();
    wait::not_on_one_core_by_birth();
    #[cfg(target_os = "linux")]
    short_slices(std::time::Duration::from_micros(100));
}

/// `sched_attr` as the kernel defines it (include/uapi/linux/sched/types.h).
#[cfg(target_os = "linux")]
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
    util_min: u32,
    util_max: u32,
}

/// Asks for time slices of `slice` for the calling thread, keeping the rest of its
/// scheduling attributes. Best effort: an older kernel or a refusal changes nothing.
#[cfg(target_os = "linux")]
fn short_slices(slice: std::time::Duration) {
    let size = std::mem::size_of::<SchedAttr>() as u32;
    let mut attr = SchedAttr::default();
    // SAFETY: sched_getattr/sched_setattr read or write exactly `size` bytes of `attr`, a
    // live, properly aligned struct of the layout the kernel expects; pid 0 is this thread.
    unsafe {
        if libc::syscall(libc::SYS_sched_getattr, 0, &mut attr as *mut SchedAttr, size, 0) != 0 {
            return;
        }
        // Only a normal (SCHED_OTHER) thread takes a slice request; leave others alone.
        if attr.policy != libc::SCHED_OTHER as u32 {
            return;
        }
        attr.size = size;
        attr.runtime = slice.as_nanos() as u64;
        let _ = libc::syscall(libc::SYS_sched_setattr, 0, &attr as *const SchedAttr, 0);
    }
}
