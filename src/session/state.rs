//! The run's state as a pure reducer over events: what every front end reads.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::Mode;
use crate::train::{Event, Outcome, Phase, WorkerStep};

/// Staleness values above this share the histogram's last bucket.
pub const STALENESS_BUCKETS: usize = 64;

/// One record of the run's progress. In sync mode: one step, combined from every
/// worker's report. With a parameter server: one push (applied, or dropped in backup
/// mode).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRecord {
    /// The update this record belongs to (0-based).
    pub step: u64,
    pub epoch: u64,
    /// Which worker pushed (parameter-server modes); `None` for a combined sync step.
    pub worker: Option<usize>,
    /// Mean loss over the batch (the global batch in sync mode).
    pub loss: f64,
    /// Accuracy on that batch (before the update).
    pub batch_accuracy: f64,
    /// Mean over workers of ‖own gradient‖.
    pub grad_norm: f64,
    /// ‖averaged gradient‖, the one the parameters moved by.
    pub grad_norm_reduced: f64,
    pub lr: f32,
    /// Samples processed by all workers together, up to and including this record.
    pub samples: u64,
    /// When the last worker finished this step (or the push arrived).
    pub t_ns: u64,
    /// The slowest worker's all-reduce time in this step (sync).
    pub allreduce_ns: u64,
    /// The all-reduce's own time: from the last worker's arrival to the last worker's
    /// finish (the waiting for late workers left out).
    pub allreduce_comm_ns: u64,
    /// What the α-β model predicts for the communication (sync over an emulated link).
    pub allreduce_model_ns: Option<u64>,
    /// Bytes all workers sent for this record.
    pub bytes_sent: u64,
    pub staleness: Option<u64>,
    pub dropped: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalRecord {
    pub step: u64,
    /// Samples processed when the parameters were taken.
    pub samples: u64,
    pub epoch: u64,
    pub test_loss: f64,
    pub test_accuracy: f64,
    pub t_ns: u64,
}

/// Where a segment (one mode and worker count) began.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SegmentRecord {
    pub index: usize,
    pub mode: Mode,
    pub workers: usize,
    /// Compute threads per worker.
    pub threads: usize,
    pub allreduce: crate::comm::AllReduceAlgo,
    pub link: Option<crate::comm::Link>,
    pub lr_scaling: crate::nn::LrScaling,
    pub lr: f32,
    pub momentum: f32,
    pub update: u64,
    pub samples: u64,
    /// Fingerprint of the parameters the segment started from (`train::params_hash`).
    pub params_hash: u64,
    pub t_ns: u64,
}

/// Running totals of one worker.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WorkerTotals {
    pub steps: u64,
    pub phase_ns: [u64; Phase::COUNT],
    pub idle_ns: u64,
    pub bytes_sent: u64,
}

#[derive(Debug, Clone, Default)]
pub struct RunState {
    /// Keep at most about this many step and eval records (None: all). Past it, the
    /// older half is thinned to every other record, so a long run keeps its whole shape
    /// at a coarser grain in bounded memory (the TUI); exports need every record (None).
    pub history_limit: Option<usize>,
    /// Records ever made, including those thinned away.
    pub steps_total: u64,
    pub params: usize,
    pub total_samples: u64,
    pub train_len: usize,
    /// Emulated nodes, the link inside them, and bytes per gradient value on the wire.
    pub nodes: usize,
    pub intra_link: Option<crate::comm::Link>,
    pub wire_bytes: usize,
    /// How sync gradients travel (from `Event::Started`).
    pub compress: crate::comm::Compress,
    /// With compression: the values each of a step's collectives carries per worker.
    pub compressed_buffers: Vec<usize>,
    /// What each worker computes on (`cpu`, or a GPU's label), as the run started.
    pub devices: Vec<String>,
    pub segments: Vec<SegmentRecord>,
    pub steps: Vec<StepRecord>,
    pub evals: Vec<EvalRecord>,
    pub per_worker: Vec<WorkerTotals>,
    /// Applied gradients by staleness (the last bucket holds everything larger).
    pub staleness_histogram: Vec<u64>,
    pub staleness_max: u64,
    pub dropped_gradients: u64,
    pub outcome: Option<Outcome>,
    pub finished_ns: Option<u64>,
    /// Worker reports of sync steps not every worker has reported yet.
    pending: BTreeMap<u64, Vec<WorkerStep>>,
}

impl RunState {
    pub fn with_history_limit(history_limit: Option<usize>) -> RunState {
        RunState {
            history_limit,
            ..RunState::default()
        }
    }

    /// The mode and worker count now running.
    pub fn current(&self) -> Option<&SegmentRecord> {
        self.segments.last()
    }
    pub fn workers(&self) -> usize {
        self.current().map_or(0, |s| s.workers)
    }
    pub fn mode(&self) -> Mode {
        self.current().map_or(Mode::Sync, |s| s.mode)
    }

    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::Started {
                params,
                total_samples,
                train_len,
                nodes,
                intra_link,
                wire_bytes,
                devices,
                compress,
                compressed_buffers,
            } => {
                self.devices = devices.clone();
                self.compress = *compress;
                self.compressed_buffers = compressed_buffers.clone();
                self.nodes = *nodes;
                self.intra_link = *intra_link;
                self.wire_bytes = *wire_bytes;
                self.params = *params;
                self.total_samples = *total_samples;
                self.train_len = *train_len;
                self.staleness_histogram = vec![0; STALENESS_BUCKETS];
            }
            Event::Segment {
                index,
                mode,
                workers,
                threads,
                allreduce,
                link,
                lr_scaling,
                lr,
                momentum,
                update,
                samples,
                params_hash,
                t_ns,
            } => {
                self.pending.clear(); // a switch ends the segment on a whole step
                if self.per_worker.len() < *workers {
                    self.per_worker.resize(*workers, WorkerTotals::default());
                }
                self.segments.push(SegmentRecord {
                    index: *index,
                    mode: *mode,
                    workers: *workers,
                    threads: *threads,
                    allreduce: *allreduce,
                    link: *link,
                    lr_scaling: *lr_scaling,
                    lr: *lr,
                    momentum: *momentum,
                    update: *update,
                    samples: *samples,
                    params_hash: *params_hash,
                    t_ns: *t_ns,
                });
            }
            Event::WorkerStep(ws) => self.worker_step(ws),
            Event::Eval {
                step,
                samples,
                epoch,
                test_loss,
                test_accuracy,
                t_ns,
            } => {
                self.evals.push(EvalRecord {
                    step: *step,
                    samples: *samples,
                    epoch: *epoch,
                    test_loss: *test_loss,
                    test_accuracy: *test_accuracy,
                    t_ns: *t_ns,
                });
                if let Some(limit) = self.history_limit {
                    thin(&mut self.evals, limit);
                }
            }
            Event::Finished { outcome, t_ns } => {
                self.outcome = Some(outcome.clone());
                self.finished_ns = Some(*t_ns);
            }
            Event::Phase { .. } | Event::Transfer { .. } | Event::Batch { .. } => {}
        }
    }

    fn worker_step(&mut self, ws: &WorkerStep) {
        if self.per_worker.len() <= ws.worker {
            self.per_worker.resize(ws.worker + 1, WorkerTotals::default());
        }
        let t = &mut self.per_worker[ws.worker];
        t.steps += 1;
        t.bytes_sent += ws.bytes_sent;
        t.idle_ns += ws.idle_ns;
        for (acc, ns) in t.phase_ns.iter_mut().zip(ws.phase_ns) {
            *acc += ns;
        }
        if let Some(s) = ws.staleness.filter(|_| !ws.dropped) {
            if self.staleness_histogram.is_empty() {
                self.staleness_histogram = vec![0; STALENESS_BUCKETS];
            }
            self.staleness_histogram[(s as usize).min(STALENESS_BUCKETS - 1)] += 1;
            self.staleness_max = self.staleness_max.max(s);
        }
        self.dropped_gradients += u64::from(ws.dropped);

        if self.mode().uses_server() {
            self.push_record(std::slice::from_ref(ws), Some(ws.worker));
            return;
        }
        let workers = self.workers();
        let reports = self.pending.entry(ws.step).or_default();
        reports.push(ws.clone());
        if reports.len() == workers {
            let reports = self.pending.remove(&ws.step).unwrap_or_default();
            self.push_record(&reports, None);
        }
    }

    /// Bytes one sync all-reduce moves per rank's buffer: the gradient and the flags the
    /// engine sends with it, in the wire format.
    /// With `--compress`, what a step's collectives carry (f32 values): top-k's block
    /// of flags and (index, value) pairs each rank all-gathers, PowerSGD's two factors.
    pub fn allreduce_buffer_bytes(&self) -> usize {
        match self.compress {
            crate::comm::Compress::None => (self.params + crate::train::STEP_FLAGS) * self.wire_bytes.max(1),
            _ => self.compressed_buffers.iter().sum::<usize>() * 4,
        }
    }

    /// The α-β model's time for one all-reduce of the gradient in the current segment.
    pub fn allreduce_model(&self) -> Option<std::time::Duration> {
        let seg = self.current().filter(|s| !s.mode.uses_server())?;
        let link = seg.link.as_ref()?;
        let bytes = self.allreduce_buffer_bytes();
        // As the engine does: without an intra-node link, one node talks at the link's speed.
        let intra = self.intra_link.as_ref().unwrap_or(link);
        match self.compress {
            crate::comm::Compress::TopK(_) if seg.mode == Mode::Sync => {
                let flat = if self.nodes > 1 { link } else { intra };
                return Some(crate::comm::alpha_beta_all_gather(seg.workers, bytes, flat));
            }
            crate::comm::Compress::PowerSgd(_) if seg.mode == Mode::Sync => {
                // two all-reduces, one after the other
                let each = self.compressed_buffers.iter().map(|&values| {
                    crate::comm::alpha_beta_on(seg.allreduce, seg.workers, self.nodes, values * 4, link, Some(intra))
                });
                return Some(each.sum());
            }
            _ => {}
        }
        Some(crate::comm::alpha_beta_on(
            seg.allreduce,
            seg.workers,
            self.nodes,
            bytes,
            link,
            Some(intra),
        ))
    }

    fn push_record(&mut self, reports: &[WorkerStep], worker: Option<usize>) {
        let samples: usize = reports.iter().map(|r| r.samples).sum();
        let loss_sum: f64 = reports.iter().map(|r| r.loss * r.samples as f64).sum();
        let correct: usize = reports.iter().map(|r| r.correct).sum();
        let first = &reports[0];
        let before = self.steps.last().map_or(0, |s| s.samples);
        self.steps.push(StepRecord {
            step: first.step,
            epoch: first.epoch,
            worker,
            loss: loss_sum / samples.max(1) as f64,
            batch_accuracy: correct as f64 / samples.max(1) as f64,
            grad_norm: reports.iter().map(|r| r.grad_norm).sum::<f64>() / reports.len() as f64,
            grad_norm_reduced: first.grad_norm_reduced,
            lr: first.lr,
            samples: before + samples as u64,
            t_ns: reports.iter().map(|r| r.end_ns).max().unwrap_or(0),
            allreduce_ns: reports
                .iter()
                .map(|r| r.phase_ns[Phase::AllReduce.index()])
                .max()
                .unwrap_or(0),
            allreduce_comm_ns: {
                let last_in = reports.iter().map(|r| r.allreduce_start_ns).max().unwrap_or(0);
                let last_out = reports
                    .iter()
                    .map(|r| r.allreduce_start_ns + r.phase_ns[Phase::AllReduce.index()])
                    .max()
                    .unwrap_or(0);
                last_out.saturating_sub(last_in)
            },
            allreduce_model_ns: (worker.is_none() && reports.iter().any(|r| r.phase_ns[Phase::AllReduce.index()] > 0))
                .then(|| self.allreduce_model())
                .flatten()
                .map(|d| d.as_nanos() as u64),
            bytes_sent: reports.iter().map(|r| r.bytes_sent).sum(),
            staleness: first.staleness,
            dropped: first.dropped,
        });
        self.steps_total += 1;
        if let Some(limit) = self.history_limit {
            thin(&mut self.steps, limit);
        }
    }

    pub fn is_finished(&self) -> bool {
        self.outcome.is_some()
    }
    pub fn last_step(&self) -> Option<&StepRecord> {
        self.steps.last()
    }
    pub fn last_eval(&self) -> Option<&EvalRecord> {
        self.evals.last()
    }
    /// Updates applied to the parameters so far.
    pub fn updates(&self) -> u64 {
        self.steps
            .iter()
            .filter(|s| !s.dropped)
            .map(|s| s.step + 1)
            .max()
            .unwrap_or(0)
    }
    /// Samples processed so far.
    pub fn samples(&self) -> u64 {
        self.steps.last().map_or(0, |s| s.samples)
    }
    /// Seconds from the start to the last record.
    pub fn elapsed_s(&self) -> f64 {
        self.steps.last().map_or(0.0, |s| s.t_ns as f64 / 1e9)
    }
    /// Mean staleness of the applied gradients (parameter-server modes).
    pub fn staleness_mean(&self) -> Option<f64> {
        let n: u64 = self.staleness_histogram.iter().sum();
        (n > 0).then(|| {
            let total: u64 = self
                .staleness_histogram
                .iter()
                .enumerate()
                .map(|(s, &c)| s as u64 * c)
                .sum();
            total as f64 / n as f64
        })
    }
    /// Share of the workers' time spent waiting for each other.
    pub fn idle_fraction(&self) -> f64 {
        let busy_ns = self.elapsed_s() * 1e9 * self.per_worker.iter().filter(|w| w.steps > 0).count() as f64;
        if busy_ns <= 0.0 {
            return 0.0;
        }
        self.per_worker.iter().map(|w| w.idle_ns as f64).sum::<f64>() / busy_ns
    }
}

/// Past `limit` records, drops every other record of the older half.
fn thin<T>(records: &mut Vec<T>, limit: usize) {
    if records.len() <= limit.max(4) {
        return;
    }
    let half = records.len() / 2;
    let mut i = 0;
    records.retain(|_| {
        i += 1;
        i > half || i % 2 == 1 // the older half keeps every other record, the first included
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn thinning_keeps_the_first_record_and_the_recent_half_whole() {
        let mut v: Vec<u32> = (0..11).collect();
        super::thin(&mut v, 10);
        assert_eq!(v, vec![0, 2, 4, 5, 6, 7, 8, 9, 10]);
        let mut v: Vec<u32> = (0..5).collect();
        super::thin(&mut v, 10);
        assert_eq!(v.len(), 5);
    }
}
