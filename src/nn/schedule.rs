//! Learning-rate rules for data-parallel training.

use serde::{Deserialize, Serialize};

/// How the base learning rate changes with the number of workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LrScaling {
    /// Use the learning rate as given, whatever the worker count.
    #[default]
    None,
    /// Multiply it by the worker count: N workers take N-times-larger batches, so take
    /// N-times-larger steps (Goyal et al. 2017, "Accurate, Large Minibatch SGD").
    Linear,
}

impl std::str::FromStr for LrScaling {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(LrScaling::None),
            "linear" => Ok(LrScaling::Linear),
            _ => Err(format!("unknown LR scaling '{s}': use none or linear")),
        }
    }
}

impl std::fmt::Display for LrScaling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LrScaling::None => "none",
            LrScaling::Linear => "linear",
        })
    }
}

/// The learning rate at every step: base × scaling, ramped up linearly over the first
/// `warmup` steps (lr_t = target · (t+1)/warmup), constant after.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    pub base: f32,
    pub scaling: LrScaling,
    pub workers: usize,
    pub warmup: u64,
}

impl LrSchedule {
    /// The rate after warm-up.
    pub fn target(&self) -> f32 {
        match self.scaling {
            LrScaling::None => self.base,
            LrScaling::Linear => self.base * self.workers as f32,
        }
    }

    pub fn at(&self, step: u64) -> f32 {
        let target = self.target();
        if step < self.warmup {
            target * (step + 1) as f32 / self.warmup as f32
        } else {
            target
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_scaling_multiplies_by_workers_and_warmup_ramps_to_it() {
        let s = LrSchedule {
            base: 0.1,
            scaling: LrScaling::Linear,
            workers: 8,
            warmup: 4,
        };
        assert!((s.target() - 0.8).abs() < 1e-6);
        assert!((s.at(0) - 0.2).abs() < 1e-6);
        assert!((s.at(1) - 0.4).abs() < 1e-6);
        assert!((s.at(3) - 0.8).abs() < 1e-6);
        assert!((s.at(100) - 0.8).abs() < 1e-6);
    }

    #[test]
    fn no_scaling_and_no_warmup_is_constant() {
        let s = LrSchedule {
            base: 0.05,
            scaling: LrScaling::None,
            workers: 8,
            warmup: 0,
        };
        assert_eq!(s.at(0), 0.05);
        assert_eq!(s.at(1000), 0.05);
    }
}
