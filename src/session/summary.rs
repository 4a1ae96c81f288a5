//! The end-of-run summary: one struct for the table, the JSON line and the tests.

use serde::Serialize;

use super::RunState;
use crate::config::Experiment;
use crate::train::{Outcome, Phase};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub kind: &'static str,
    pub outcome: &'static str,
    /// Why the run failed, when it did (for an MPI job: the rank, its host and the step).
    pub failure: Option<String>,
    pub diverged: bool,
    pub diverged_step: Option<u64>,
    /// threads or mpi.
    pub backend: String,
    /// Fingerprint of the final parameters (`params_hash`, hex), once the run has ended:
    /// equal runs end with equal fingerprints.
    pub final_params_hash: Option<String>,
    pub mode: String,
    pub workers: usize,
    /// Compute threads per worker (per rank over MPI), as the run ended.
    pub threads: usize,
    pub allreduce: String,
    pub dataset: String,
    pub hidden: Vec<usize>,
    pub batch: usize,
    pub params: usize,
    /// Updates applied to the parameters (sync steps, or server updates).
    pub steps: u64,
    pub samples: u64,
    pub elapsed_s: f64,
    pub steps_per_sec: f64,
    pub samples_per_sec: f64,
    pub final_loss: Option<f64>,
    pub test_accuracy: Option<f64>,
    pub test_loss: Option<f64>,
    /// Steps (or pushes) per second of each worker: a straggler shows here.
    pub worker_steps_per_sec: Vec<f64>,
    /// Mean milliseconds per step in each phase, per worker, in `Phase::ALL` order:
    /// [forward, backward, all-reduce, update, pull, push, wait].
    pub phase_ms: Vec<[f64; Phase::COUNT]>,
    /// Bytes sent by all workers in all all-reduces.
    pub allreduce_bytes: u64,
    /// Mean all-reduce time per step (slowest worker), and its bus bandwidth:
    /// algbw = gradient bytes / time, busbw = algbw · 2(N−1)/N (nccl-tests).
    pub allreduce_ms: f64,
    /// Mean time of the all-reduce itself: last arrival to last finish.
    pub allreduce_comm_ms: f64,
    /// The α-β model's prediction for that communication (with an emulated link).
    pub allreduce_model_ms: Option<f64>,
    pub allreduce_busbw_gbps: Option<f64>,
    /// Parameter-server modes: staleness of the applied gradients.
    pub staleness_mean: Option<f64>,
    pub staleness_max: Option<u64>,
    pub staleness_histogram: Vec<u64>,
    /// Backup mode: gradients that arrived after their step closed.
    pub dropped_gradients: u64,
    /// Share of the workers' time spent waiting for each other.
    pub idle_fraction: f64,
    /// Mode switches during the run (0 = the run kept one mode and worker count).
    pub switches: usize,
}

impl Summary {
    pub fn new(exp: &Experiment, state: &RunState) -> Summary {
        let steps = state.updates();
        let elapsed_s = state.elapsed_s();
        let per_sec = |n: f64| if elapsed_s > 0.0 { n / elapsed_s } else { 0.0 };
        let samples = state.samples();
        let (outcome, diverged_step) = match &state.outcome {
            Some(Outcome::Completed) => ("completed", None),
            Some(Outcome::Stopped) => ("stopped", None),
            Some(Outcome::Diverged { step, .. }) => ("diverged", Some(*step)),
            Some(Outcome::Failed { .. }) => ("failed", None),
            None => ("running", None),
        };
        let sync_steps: Vec<_> = state.steps.iter().filter(|s| s.worker.is_none()).collect();
        let allreduce_ns =
            sync_steps.iter().map(|s| s.allreduce_ns).sum::<u64>() as f64 / sync_steps.len().max(1) as f64;
        let workers = state.workers();
        let grad_bytes = state.allreduce_buffer_bytes() as f64;
        let busbw = (workers > 1 && allreduce_ns > 0.0 && !state.mode().uses_server() && state.segments.len() == 1)
            .then(|| grad_bytes / allreduce_ns * crate::comm::busbw_factor(workers));
        let hist = &state.staleness_histogram;
        let last_nonzero = hist.iter().rposition(|&c| c > 0).map_or(0, |i| i + 1);
        let final_loss = state.last_step().map(|s| s.loss).filter(|l| l.is_finite());
        Summary {
            kind: "summary",
            backend: match exp.backend {
                crate::config::Backend::Threads => "threads".into(),
                crate::config::Backend::Mpi => "mpi".into(),
            },
            final_params_hash: None,
            outcome,
            failure: match &state.outcome {
                Some(Outcome::Failed { message }) => Some(message.clone()),
                _ => None,
            },
            diverged: diverged_step.is_some(),
            diverged_step,
            mode: state.mode().to_string(),
            workers,
            threads: state.current().map_or(exp.threads, |s| s.threads),
            allreduce: exp.allreduce.to_string(),
            dataset: exp.dataset.to_string(),
            hidden: exp.hidden.clone(),
            batch: exp.batch,
            params: state.params,
            steps,
            samples,
            elapsed_s,
            steps_per_sec: per_sec(steps as f64),
            samples_per_sec: per_sec(samples as f64),
            final_loss,
            test_accuracy: state.last_eval().map(|e| e.test_accuracy),
            test_loss: state.last_eval().map(|e| e.test_loss),
            worker_steps_per_sec: state.per_worker.iter().map(|w| per_sec(w.steps as f64)).collect(),
            phase_ms: state
                .per_worker
                .iter()
                .map(|w| {
                    w.phase_ns.map(|ns| {
                        if w.steps == 0 {
                            0.0
                        } else {
                            ns as f64 / w.steps as f64 / 1e6
                        }
                    })
                })
                .collect(),
            allreduce_bytes: state.per_worker.iter().map(|w| w.bytes_sent).sum(),
            allreduce_ms: allreduce_ns / 1e6,
            allreduce_comm_ms: sync_steps.iter().map(|s| s.allreduce_comm_ns).sum::<u64>() as f64
                / sync_steps.len().max(1) as f64
                / 1e6,
            allreduce_model_ms: (!sync_steps.is_empty())
                .then(|| state.allreduce_model())
                .flatten()
                .map(|d| d.as_secs_f64() * 1e3),
            allreduce_busbw_gbps: busbw, // bytes/ns = GB/s
            staleness_mean: state.staleness_mean(),
            staleness_max: state.staleness_mean().map(|_| state.staleness_max),
            staleness_histogram: hist[..last_nonzero].to_vec(),
            dropped_gradients: state.dropped_gradients,
            idle_fraction: state.idle_fraction(),
            switches: state.segments.len().saturating_sub(1),
        }
    }
}
