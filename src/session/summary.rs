//! The end-of-run summary: one struct for the table, the JSON line and the tests.

use serde::Serialize;

use super::RunState;
use crate::config::Experiment;
use crate::train::{Outcome, Phase};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub kind: &'static str,
    pub outcome: &'static str,
    pub diverged: bool,
    pub diverged_step: Option<u64>,
    pub mode: String,
    pub workers: usize,
    pub allreduce: String,
    pub dataset: String,
    pub hidden: Vec<usize>,
    pub batch: usize,
    pub params: usize,
    pub steps: u64,
    pub samples: u64,
    pub elapsed_s: f64,
    pub steps_per_sec: f64,
    pub samples_per_sec: f64,
    pub final_loss: Option<f64>,
    pub test_accuracy: Option<f64>,
    pub test_loss: Option<f64>,
    /// Mean milliseconds per step in each phase, per worker: [forward, backward,
    /// all-reduce, update].
    pub phase_ms: Vec<[f64; Phase::COUNT]>,
    /// Bytes sent by all workers in all all-reduces.
    pub allreduce_bytes: u64,
    /// Mean all-reduce time per step (slowest worker), and its bus bandwidth:
    /// algbw = gradient bytes / time, busbw = algbw · 2(N−1)/N (nccl-tests).
    pub allreduce_ms: f64,
    pub allreduce_busbw_gbps: Option<f64>,
}

impl Summary {
    pub fn new(exp: &Experiment, state: &RunState) -> Summary {
        let steps = state.steps.len() as u64;
        let elapsed_s = state.elapsed_s();
        let per_sec = |n: f64| if elapsed_s > 0.0 { n / elapsed_s } else { 0.0 };
        let samples = state.last_step().map_or(0, |s| s.samples);
        let (outcome, diverged_step) = match &state.outcome {
            Some(Outcome::Completed) => ("completed", None),
            Some(Outcome::Stopped) => ("stopped", None),
            Some(Outcome::Diverged { step, .. }) => ("diverged", Some(*step)),
            Some(Outcome::Failed { .. }) => ("failed", None),
            None => ("running", None),
        };
        let allreduce_ns = state.steps.iter().map(|s| s.allreduce_ns as f64).sum::<f64>() / steps.max(1) as f64;
        let n = state.workers as f64;
        let grad_bytes = state.params as f64 * 4.0;
        let busbw = (state.workers > 1 && allreduce_ns > 0.0).then(|| grad_bytes / allreduce_ns * 2.0 * (n - 1.0) / n);
        let final_loss = state.last_step().map(|s| s.loss).filter(|l| l.is_finite());
        Summary {
            kind: "summary",
            outcome,
            diverged: diverged_step.is_some(),
            diverged_step,
            mode: exp.mode.to_string(),
            workers: state.workers,
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
            allreduce_busbw_gbps: busbw, // bytes/ns = GB/s
        }
    }
}
