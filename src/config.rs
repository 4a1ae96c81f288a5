//! The experiment: one struct that command-line flags (and, later, lesson files) fill.
//!
//! Every field has a one-line reason for its default, nanoGPT-style. `validate` turns a
//! bad value into one sentence naming the flag and what is allowed.

use serde::{Deserialize, Serialize};

use crate::comm::{AllReduceAlgo, Link};
use crate::data::DatasetKind;
use crate::nn::LrScaling;

/// Most workers one run may have: beyond this, threads only thrash.
pub const MAX_WORKERS: usize = 256;

/// How workers combine their gradients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Forward, backward, all-reduce (mean), update; everyone in step.
    #[default]
    Sync,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Sync => "sync",
        }
    }
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "sync" => Ok(Mode::Sync),
            "async" | "ps" => Err(format!("mode '{s}' (parameter server) is not built yet: use sync")),
            _ if s.starts_with("ssp:") || s.starts_with("backup:") => {
                Err(format!("mode '{s}' is not built yet: use sync"))
            }
            _ => Err(format!("unknown mode '{s}': use sync")),
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How long to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Length {
    Steps(u64),
    /// Passes over the training set by all workers together.
    Epochs(u64),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Experiment {
    /// 4 workers: enough to see a ring and a straggler, few enough for a laptop.
    pub workers: usize,
    pub mode: Mode,
    /// Ring: what NCCL and Horovod use for large buffers.
    pub allreduce: AllReduceAlgo,
    /// Digits: real handwriting, embedded, hundreds of steps per second.
    pub dataset: DatasetKind,
    /// One hidden layer of 128: 98 % on digits within seconds.
    pub hidden: Vec<usize>,
    /// Per-worker batch; the global batch is workers × batch.
    pub batch: usize,
    /// Base learning rate, before the scaling rule and warm-up; 0.1 with momentum 0.9
    /// is stable for sync training at these batch sizes (about 97 % on digits).
    pub lr: f32,
    /// Heavy-ball momentum 0.9: the standard for SGD on such nets.
    pub momentum: f32,
    /// Off by default: the lessons are about parallelism, not regularisation.
    pub weight_decay: f32,
    /// None by default, so that the learner can switch linear on and see the difference.
    pub lr_scaling: LrScaling,
    /// Steps of linear warm-up; 0 = none.
    pub warmup: u64,
    /// 30 epochs of digits at 4 × 32: about 330 steps, a few seconds.
    pub length: Length,
    /// Emulated network between workers; none = shared memory at full speed.
    pub link: Option<Link>,
    pub seed: u64,
    /// Test-set accuracy every this many steps (and at the end).
    pub eval_every: u64,
}

impl Default for Experiment {
    fn default() -> Self {
        Experiment {
            workers: 4,
            mode: Mode::Sync,
            allreduce: AllReduceAlgo::Ring,
            dataset: DatasetKind::Digits,
            hidden: vec![128],
            batch: 32,
            lr: 0.1,
            momentum: 0.9,
            weight_decay: 0.0,
            lr_scaling: LrScaling::None,
            warmup: 0,
            length: Length::Epochs(30),
            link: None,
            seed: 1,
            eval_every: 25,
        }
    }
}

/// A value a user gave that cannot work; the message names the flag and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--{flag}: {problem}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub problem: String,
}

fn bad(flag: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        flag,
        problem: problem.into(),
    }
}

impl Experiment {
    /// Checks every value on its own; `check_against` then checks it against a data set.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.workers == 0 || self.workers > MAX_WORKERS {
            return Err(bad(
                "workers",
                format!("{} is not allowed: use 1 to {MAX_WORKERS} workers", self.workers),
            ));
        }
        if self.batch == 0 || self.batch > 65_536 {
            return Err(bad(
                "batch",
                format!("{} is not allowed: use a per-worker batch of 1 to 65536", self.batch),
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(bad(
                "lr",
                format!("{} is not allowed: the learning rate must be a number > 0", self.lr),
            ));
        }
        if !(self.momentum.is_finite() && (0.0..1.0).contains(&self.momentum)) {
            return Err(bad(
                "momentum",
                format!("{} is not allowed: use 0 ≤ momentum < 1", self.momentum),
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(bad(
                "weight-decay",
                format!("{} is not allowed: use a number ≥ 0", self.weight_decay),
            ));
        }
        if let Some(&w) = self.hidden.iter().find(|&&w| w == 0 || w > 16_384) {
            return Err(bad(
                "hidden",
                format!("a layer of {w} is not allowed: use widths 1 to 16384, like 64,32"),
            ));
        }
        if self.hidden.len() > 16 {
            return Err(bad(
                "hidden",
                format!("{} hidden layers is too many: use at most 16", self.hidden.len()),
            ));
        }
        match self.length {
            Length::Steps(0) => return Err(bad("steps", "0 is not allowed: train for at least 1 step")),
            Length::Epochs(0) => return Err(bad("epochs", "0 is not allowed: train for at least 1 epoch")),
            _ => {}
        }
        if self.eval_every == 0 {
            return Err(bad("eval-every", "0 is not allowed: evaluate every 1 or more steps"));
        }
        if let Some(link) = self.link {
            Link::new(link.latency_us, link.gbit_s).map_err(|e| bad("link", e))?;
        }
        Ok(())
    }

    /// Checks that the global batch fits in one epoch of `train_len` samples.
    pub fn check_against(&self, train_len: usize) -> Result<(), ConfigError> {
        let global = self.workers * self.batch;
        if global > train_len {
            return Err(bad(
                "batch",
                format!(
                    "{} workers × batch {} = {global} samples per step, more than the {train_len} training samples of {}: use fewer workers or a smaller batch",
                    self.workers, self.batch, self.dataset
                ),
            ));
        }
        Ok(())
    }

    /// Total steps, given the steps in one epoch.
    pub fn total_steps(&self, steps_per_epoch: u64) -> u64 {
        match self.length {
            Length::Steps(s) => s,
            Length::Epochs(e) => e * steps_per_epoch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        Experiment::default().validate().unwrap();
    }

    #[test]
    fn bad_values_name_their_flag() {
        let cases: [(Experiment, &str); 6] = [
            (
                Experiment {
                    workers: 0,
                    ..Default::default()
                },
                "--workers",
            ),
            (
                Experiment {
                    workers: 100_000,
                    ..Default::default()
                },
                "--workers",
            ),
            (
                Experiment {
                    batch: 0,
                    ..Default::default()
                },
                "--batch",
            ),
            (
                Experiment {
                    lr: -1.0,
                    ..Default::default()
                },
                "--lr",
            ),
            (
                Experiment {
                    hidden: vec![0],
                    ..Default::default()
                },
                "--hidden",
            ),
            (
                Experiment {
                    length: Length::Steps(0),
                    ..Default::default()
                },
                "--steps",
            ),
        ];
        for (exp, flag) in cases {
            let msg = exp.validate().unwrap_err().to_string();
            assert!(msg.starts_with(flag), "{msg}");
        }
        let too_big = Experiment {
            workers: 64,
            batch: 64,
            ..Default::default()
        };
        assert!(too_big
            .check_against(1438)
            .unwrap_err()
            .to_string()
            .contains("fewer workers"));
    }

    #[test]
    fn modes_not_built_yet_say_so() {
        assert!("async".parse::<Mode>().unwrap_err().contains("not built yet"));
        assert!("nonsense".parse::<Mode>().unwrap_err().contains("use sync"));
    }
}
