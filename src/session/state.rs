//! The run's state as a pure reducer over events: what every front end reads.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::train::{Event, Outcome, Phase, WorkerStep};

/// One step of the whole run, combined from every worker's report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRecord {
    pub step: u64,
    pub epoch: u64,
    /// Mean loss over the global batch.
    pub loss: f64,
    /// Accuracy on the global batch (before the update).
    pub batch_accuracy: f64,
    /// Mean over workers of ‖own gradient‖.
    pub grad_norm: f64,
    /// ‖averaged gradient‖, the one every replica applied.
    pub grad_norm_reduced: f64,
    pub lr: f32,
    /// Samples processed by all workers together, up to and including this step.
    pub samples: u64,
    /// When the last worker finished this step.
    pub t_ns: u64,
    /// The slowest worker's all-reduce time in this step.
    pub allreduce_ns: u64,
    /// Bytes all workers sent in this step's all-reduce.
    pub bytes_sent: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalRecord {
    pub step: u64,
    pub epoch: u64,
    pub test_loss: f64,
    pub test_accuracy: f64,
    pub t_ns: u64,
}

/// Running totals of one worker.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WorkerTotals {
    pub steps: u64,
    pub phase_ns: [u64; Phase::COUNT],
    pub bytes_sent: u64,
}

#[derive(Debug, Clone, Default)]
pub struct RunState {
    pub workers: usize,
    pub params: usize,
    pub steps_per_epoch: u64,
    pub total_steps: u64,
    pub steps: Vec<StepRecord>,
    pub evals: Vec<EvalRecord>,
    pub per_worker: Vec<WorkerTotals>,
    pub outcome: Option<Outcome>,
    pub finished_ns: Option<u64>,
    /// Worker reports of steps not every worker has reported yet.
    pending: BTreeMap<u64, Vec<WorkerStep>>,
}

impl RunState {
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::Started {
                workers,
                params,
                steps_per_epoch,
                total_steps,
            } => {
                self.workers = *workers;
                self.params = *params;
                self.steps_per_epoch = *steps_per_epoch;
                self.total_steps = *total_steps;
                self.per_worker = vec![WorkerTotals::default(); *workers];
            }
            Event::WorkerStep(ws) => {
                if let Some(t) = self.per_worker.get_mut(ws.worker) {
                    t.steps += 1;
                    t.bytes_sent += ws.bytes_sent;
                    for (acc, ns) in t.phase_ns.iter_mut().zip(ws.phase_ns) {
                        *acc += ns;
                    }
                }
                let reports = self.pending.entry(ws.step).or_default();
                reports.push(ws.clone());
                if reports.len() == self.workers {
                    let reports = self.pending.remove(&ws.step).unwrap_or_default();
                    self.combine(&reports);
                }
            }
            Event::Eval {
                step,
                epoch,
                test_loss,
                test_accuracy,
                t_ns,
            } => self.evals.push(EvalRecord {
                step: *step,
                epoch: *epoch,
                test_loss: *test_loss,
                test_accuracy: *test_accuracy,
                t_ns: *t_ns,
            }),
            Event::Finished { outcome, t_ns } => {
                self.outcome = Some(outcome.clone());
                self.finished_ns = Some(*t_ns);
            }
            Event::Phase { .. } | Event::Transfer { .. } | Event::Batch { .. } => {}
        }
    }

    fn combine(&mut self, reports: &[WorkerStep]) {
        let samples: usize = reports.iter().map(|r| r.samples).sum();
        let loss_sum: f64 = reports.iter().map(|r| r.loss * r.samples as f64).sum();
        let correct: usize = reports.iter().map(|r| r.correct).sum();
        let first = &reports[0];
        let before = self.steps.last().map_or(0, |s| s.samples);
        self.steps.push(StepRecord {
            step: first.step,
            epoch: first.epoch,
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
            bytes_sent: reports.iter().map(|r| r.bytes_sent).sum(),
        });
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
    /// Seconds from the start to the last completed step.
    pub fn elapsed_s(&self) -> f64 {
        self.steps.last().map_or(0.0, |s| s.t_ns as f64 / 1e9)
    }
}
