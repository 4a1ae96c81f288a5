//! What engines report: the event stream every front end reads.

use serde::{Deserialize, Serialize};

use crate::comm::Transfer;

/// The phases of a training iteration, as drawn on the timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Forward,
    Backward,
    AllReduce,
    Update,
    /// Fetch the parameters from the parameter server.
    Pull,
    /// Send the gradient to the parameter server (which applies it).
    Push,
    /// Idle: blocked by the SSP bound, or waiting for a backup step to close.
    Wait,
    /// On a GPU: the gradient copied device → host, for the all-reduce (or the push).
    #[serde(rename = "to_host")]
    ToHost,
    /// On a GPU: the all-reduced gradient (or pulled parameters) copied host → device.
    #[serde(rename = "to_device")]
    ToDevice,
}

impl Phase {
    pub const ALL: [Phase; 9] = [
        Phase::Forward,
        Phase::Backward,
        Phase::AllReduce,
        Phase::Update,
        Phase::Pull,
        Phase::Push,
        Phase::Wait,
        Phase::ToHost,
        Phase::ToDevice,
    ];
    pub const COUNT: usize = Self::ALL.len();
    pub fn index(self) -> usize {
        self as usize
    }
    /// Whether the phase is a worker's own work, which slow motion stretches as a
    /// whole (communication is stretched message by message, and waiting not at all).
    pub fn is_work(self) -> bool {
        matches!(
            self,
            Phase::Forward | Phase::Backward | Phase::Update | Phase::ToHost | Phase::ToDevice
        )
    }
    pub fn name(self) -> &'static str {
        match self {
            Phase::Forward => "forward",
            Phase::Backward => "backward",
            Phase::AllReduce => "all-reduce",
            Phase::Update => "update",
            Phase::Pull => "pull",
            Phase::Push => "push",
            Phase::Wait => "wait",
            Phase::ToHost => "to host",
            Phase::ToDevice => "to device",
        }
    }
}

/// Which collective a message belonged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CollectiveKind {
    /// The initial broadcast of rank 0's parameters to every replica.
    Broadcast,
    /// A step's gradient all-reduce.
    AllReduce,
    /// A step's all-gather of compressed gradients ((index, value) pairs, `--compress`).
    AllGather,
}

/// One worker's account of one step. Per-step metrics are never dropped.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerStep {
    pub worker: usize,
    /// The update this report belongs to: in sync mode the global step; with a parameter
    /// server the server's version after this push (for a dropped gradient, the version
    /// that closed without it).
    pub step: u64,
    /// This worker's own iteration count within the current segment.
    pub iteration: u64,
    pub epoch: u64,
    /// Mean loss over this worker's batch.
    pub loss: f64,
    pub correct: usize,
    pub samples: usize,
    /// ‖g‖ of this worker's own gradient, before the all-reduce.
    pub grad_norm: f64,
    /// ‖g‖ after the all-reduce: the averaged gradient every replica applies.
    pub grad_norm_reduced: f64,
    pub lr: f32,
    /// Nanoseconds this step spent in each phase, indexed by `Phase::index`.
    pub phase_ns: [u64; Phase::COUNT],
    /// Bytes this worker sent during this step's all-reduce (or push and pull).
    pub bytes_sent: u64,
    /// Time blocked waiting for other workers (inside the all-reduce, for the SSP bound,
    /// or for a backup step to close).
    pub idle_ns: u64,
    /// Parameter server only: server version at apply − version pulled.
    pub staleness: Option<u64>,
    /// Backup mode: the step closed before this gradient arrived, so it was dropped.
    pub dropped: bool,
    /// Parameter server only: how many iterations this worker was ahead of the slowest
    /// one when it pulled (SSP keeps this ≤ K).
    pub lead: u64,
    /// Sync only: when this worker entered the all-reduce.
    pub allreduce_start_ns: u64,
    pub end_ns: u64,
    /// Fingerprint (`params_hash`) of this worker's replica after the step, where the
    /// replicas must agree and the engine checks: after each averaging of local SGD,
    /// and at the last step of a sync segment. `None` elsewhere (hashing every step
    /// would cost as much as a small update).
    #[serde(default)]
    pub replica_hash: Option<u64>,
}

impl WorkerStep {
    /// The 32-bit words `to_words` writes.
    pub(super) const WORDS: usize = 36 + 2 * Phase::COUNT;

    /// This report as 32-bit words, every field by its bits (a count, a time or an f64 in
    /// two words, an option as a flag and its value), for a process to send it to
    /// another through a transport of f32 buffers (MPI): `from_words` gives back the very
    /// same report, however long the run (an f32 count is exact only to 2²⁴).
    pub(super) fn to_words(&self) -> Vec<u32> {
        let mut w = Vec::with_capacity(Self::WORDS);
        fn u64s(w: &mut Vec<u32>, values: &[u64]) {
            for &v in values {
                w.extend([v as u32, (v >> 32) as u32]);
            }
        }
        u64s(
            &mut w,
            &[
                self.worker as u64,
                self.step,
                self.iteration,
                self.epoch,
                self.loss.to_bits(),
                self.correct as u64,
                self.samples as u64,
                self.grad_norm.to_bits(),
                self.grad_norm_reduced.to_bits(),
                self.bytes_sent,
                self.idle_ns,
                self.lead,
                self.allreduce_start_ns,
                self.end_ns,
                self.staleness.unwrap_or(0),
                self.replica_hash.unwrap_or(0),
            ],
        );
        u64s(&mut w, &self.phase_ns);
        w.extend([
            self.lr.to_bits(),
            u32::from(self.staleness.is_some()),
            u32::from(self.replica_hash.is_some()),
            u32::from(self.dropped),
        ]);
        debug_assert_eq!(w.len(), Self::WORDS);
        w
    }

    /// The report `to_words` wrote into `w`.
    pub(super) fn from_words(w: &[u32]) -> WorkerStep {
        let u = |i: usize| u64::from(w[2 * i]) | u64::from(w[2 * i + 1]) << 32;
        let flags = 2 * (16 + Phase::COUNT);
        WorkerStep {
            worker: u(0) as usize,
            step: u(1),
            iteration: u(2),
            epoch: u(3),
            loss: f64::from_bits(u(4)),
            correct: u(5) as usize,
            samples: u(6) as usize,
            grad_norm: f64::from_bits(u(7)),
            grad_norm_reduced: f64::from_bits(u(8)),
            bytes_sent: u(9),
            idle_ns: u(10),
            lead: u(11),
            allreduce_start_ns: u(12),
            end_ns: u(13),
            staleness: (w[flags + 1] != 0).then(|| u(14)),
            replica_hash: (w[flags + 2] != 0).then(|| u(15)),
            phase_ns: std::array::from_fn(|i| u(16 + i)),
            lr: f32::from_bits(w[flags]),
            dropped: w[flags + 3] != 0,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "lowercase")]
pub enum Outcome {
    Completed,
    Stopped,
    /// The loss of `worker` became NaN, infinite or absurdly large at `step` (see
    /// `train::diverged`).
    Diverged {
        step: u64,
        worker: usize,
    },
    Failed {
        message: String,
    },
}

/// Everything a run tells the world. Times are ns since the run started.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A stretch of the run with one mode and worker count begins (at the start, and at
    /// every switch): `update` and `samples` count what the run did before it.
    Segment {
        index: usize,
        mode: crate::config::Mode,
        workers: usize,
        /// Compute threads per worker (per rank over MPI); 1 in records made before
        /// threads could change.
        #[serde(default = "one")]
        threads: usize,
        allreduce: crate::comm::AllReduceAlgo,
        link: Option<crate::comm::Link>,
        lr_scaling: crate::nn::LrScaling,
        /// The base learning rate and the momentum of the segment.
        lr: f32,
        momentum: f32,
        update: u64,
        samples: u64,
        /// Fingerprint of the parameters the segment starts from (see `params_hash`):
        /// across a switch they are exactly those the last segment ended with.
        params_hash: u64,
        t_ns: u64,
    },
    /// The run begins: the model's size and how many samples it will process in all.
    Started {
        params: usize,
        total_samples: u64,
        train_len: usize,
        /// The emulated nodes and the link inside them (fixed for the run).
        #[serde(default = "one")]
        nodes: usize,
        #[serde(default)]
        intra_link: Option<crate::comm::Link>,
        /// Bytes a gradient value takes on the wire (4, or 2 for f16/bf16).
        #[serde(default = "four")]
        wire_bytes: usize,
        /// What each worker of the first segment computes on: `cpu`, or a GPU's label.
        #[serde(default)]
        devices: Vec<String>,
        /// How sync gradients travel (fixed for the run), and with compression the
        /// values each of a step's collectives carries per worker.
        #[serde(default)]
        compress: crate::comm::Compress,
        #[serde(default)]
        compressed_buffers: Vec<usize>,
    },
    /// A phase one worker went through (visual: may be coalesced under load).
    Phase {
        worker: usize,
        step: u64,
        phase: Phase,
        start_ns: u64,
        end_ns: u64,
    },
    /// A message of a collective (visual).
    Transfer {
        step: u64,
        collective: CollectiveKind,
        transfer: Transfer,
    },
    /// The training samples a worker works on in this step (visual).
    Batch {
        worker: usize,
        step: u64,
        indices: Vec<u32>,
    },
    WorkerStep(WorkerStep),
    /// Test-set score of the replicas' parameters after `step` steps.
    Eval {
        step: u64,
        /// Samples processed when the parameters were taken.
        samples: u64,
        epoch: u64,
        test_loss: f64,
        test_accuracy: f64,
        t_ns: u64,
    },
    Finished {
        outcome: Outcome,
        t_ns: u64,
    },
}

impl Event {
    /// Visual events may be dropped when a front end falls behind; the rest never are.
    pub fn is_visual(&self) -> bool {
        matches!(self, Event::Phase { .. } | Event::Transfer { .. } | Event::Batch { .. })
    }
}

/// FNV-1a over the bit patterns of `params`: equal hashes mean bit-identical parameters
/// (up to the odds of a 64-bit collision).
pub fn params_hash(params: &[f32]) -> u64 {
    params.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, v| {
        v.to_bits()
            .to_le_bytes()
            .iter()
            .fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
    })
}

fn one() -> usize {
    1
}
fn four() -> usize {
    4
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_report_comes_back_from_its_words_bit_for_bit() {
        let report = WorkerStep {
            worker: 7,
            step: u64::MAX - 1,
            iteration: 1 << 40,
            epoch: 3,
            loss: f64::NAN,
            correct: 1 << 30,
            samples: 17,
            grad_norm: 0.1,
            grad_norm_reduced: f64::INFINITY,
            lr: 0.3,
            phase_ns: std::array::from_fn(|i| (1 << 33) + i as u64),
            bytes_sent: 123_456_789_012,
            idle_ns: 5,
            staleness: Some(0),
            dropped: true,
            lead: 2,
            allreduce_start_ns: 99,
            end_ns: u64::MAX,
            replica_hash: Some(0xdead_beef_cafe_f00d),
        };
        let words = report.to_words();
        assert_eq!(words.len(), WorkerStep::WORDS);
        let back = WorkerStep::from_words(&words);
        assert!(back.loss.is_nan());
        assert_eq!(
            WorkerStep { loss: 0.0, ..back },
            WorkerStep {
                loss: 0.0,
                ..report.clone()
            }
        );
        let none = WorkerStep {
            staleness: None,
            replica_hash: None,
            ..report
        };
        assert_eq!(WorkerStep::from_words(&none.to_words()).staleness, None);
        assert_eq!(WorkerStep::from_words(&none.to_words()).replica_hash, None);
    }
}
