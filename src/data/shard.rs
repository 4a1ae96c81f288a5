//! Disjoint per-worker shards, reshuffled every epoch from the seed.
//!
//! Each epoch draws one permutation of the training set from (seed, epoch) alone. Step s
//! of that epoch uses the global batch `perm[s·N·b .. (s+1)·N·b]`, and worker w takes the
//! w-th block of b samples in it. So within an epoch the workers' samples are disjoint,
//! and N workers × batch b see exactly the samples one worker with batch N·b sees, in the
//! same order — the basis of the sync-equivalence invariant (DESIGN.md decision 6).

use ndarray::{Array2, ArrayView2};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::Dataset;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sharder {
    pub train_len: usize,
    pub workers: usize,
    /// Per-worker batch.
    pub batch: usize,
    pub seed: u64,
}

impl Sharder {
    /// Samples every worker together consumes per step.
    pub fn global_batch(&self) -> usize {
        self.workers * self.batch
    }

    /// Whole steps in one pass over the training set; the remainder of each (reshuffled)
    /// epoch is skipped.
    pub fn steps_per_epoch(&self) -> u64 {
        (self.train_len / self.global_batch().max(1)) as u64
    }

    /// The epoch's permutation of training indices. Depends on (seed, epoch) only — not on
    /// the worker count.
    pub fn permutation(&self, epoch: u64) -> Vec<u32> {
        let mut perm: Vec<u32> = (0..self.train_len as u32).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed ^ 0xda7a_5eed_u64.wrapping_mul(epoch + 1));
        perm.shuffle(&mut rng);
        perm
    }

    /// Worker `worker`'s sample indices at `step_in_epoch`, given the epoch's permutation.
    pub fn batch<'p>(&self, perm: &'p [u32], step_in_epoch: u64, worker: usize) -> &'p [u32] {
        let start = self.batch_start(step_in_epoch, worker);
        &perm[start..start + self.batch]
    }

    /// Where worker `worker`'s batch at `step_in_epoch` starts in the epoch's permutation.
    fn batch_start(&self, step_in_epoch: u64, worker: usize) -> usize {
        (step_in_epoch as usize * self.workers + worker) * self.batch
    }
}

/// One worker's batches in the order a `Sharder` deals them, loaded into buffers of its
/// own: every engine, and the cluster check's plain loop, reads its data through this.
/// It keeps the epoch's permutation while the steps stay in that epoch (drawing one costs
/// a shuffle of the whole training set).
#[derive(Debug, Clone)]
pub struct Batches {
    sharder: Sharder,
    worker: usize,
    /// The epoch whose permutation `perm` is (`u64::MAX`: none yet).
    epoch: u64,
    perm: Vec<u32>,
    /// Where the loaded batch starts in `perm`.
    start: usize,
    /// The loaded batch: x: (batch, inputs), and its labels.
    x: Array2<f32>,
    labels: Vec<u8>,
}

impl Batches {
    /// Worker `worker`'s batches of `sharder`'s order, for inputs of `inputs` values.
    pub fn new(sharder: Sharder, worker: usize, inputs: usize) -> Batches {
        Batches {
            x: Array2::zeros((sharder.batch, inputs)),
            labels: vec![0; sharder.batch],
            sharder,
            worker,
            epoch: u64::MAX,
            perm: Vec::new(),
            start: 0,
        }
    }

    /// Loads the batch of step `step` of the order (counted from its first step, across
    /// epochs): copies its rows of `data` into x and labels.
    pub fn load(&mut self, data: &Dataset, step: u64) {
        let steps_per_epoch = self.sharder.steps_per_epoch();
        let epoch = step / steps_per_epoch;
        if self.epoch != epoch {
            self.perm = self.sharder.permutation(epoch);
            self.epoch = epoch;
        }
        self.start = self.sharder.batch_start(step % steps_per_epoch, self.worker);
        let indices = &self.perm[self.start..self.start + self.sharder.batch];
        for (row, &i) in indices.iter().enumerate() {
            self.x.row_mut(row).assign(&data.train_x.row(i as usize));
            self.labels[row] = data.train_y[i as usize];
        }
    }

    /// The loaded batch's sample indices into the training set.
    pub fn indices(&self) -> &[u32] {
        &self.perm[self.start..self.start + self.sharder.batch]
    }

    /// The loaded batch's inputs: (batch, inputs).
    pub fn x(&self) -> ArrayView2<'_, f32> {
        self.x.view()
    }

    /// The loaded batch's labels.
    pub fn labels(&self) -> &[u8] {
        &self.labels
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn shards_are_disjoint_within_an_epoch_and_reshuffled_across_epochs() {
        let s = Sharder {
            train_len: 1000,
            workers: 4,
            batch: 16,
            seed: 9,
        };
        let perm = s.permutation(0);
        let mut seen = HashSet::new();
        for step in 0..s.steps_per_epoch() {
            for w in 0..4 {
                for &i in s.batch(&perm, step, w) {
                    assert!(seen.insert(i), "sample {i} used twice in one epoch");
                }
            }
        }
        assert_eq!(seen.len(), 15 * 64);
        assert_ne!(s.permutation(0), s.permutation(1));
        assert_eq!(s.permutation(3), s.permutation(3));
    }

    #[test]
    fn n_workers_see_what_one_worker_with_n_times_the_batch_sees() {
        let n = Sharder {
            train_len: 500,
            workers: 3,
            batch: 8,
            seed: 1,
        };
        let one = Sharder {
            workers: 1,
            batch: 24,
            ..n
        };
        let perm = n.permutation(2);
        assert_eq!(perm, one.permutation(2));
        for step in 0..n.steps_per_epoch() {
            let joined: Vec<u32> = (0..3).flat_map(|w| n.batch(&perm, step, w).to_vec()).collect();
            assert_eq!(joined, one.batch(&perm, step, 0));
        }
    }

    #[test]
    fn batches_load_the_rows_the_sharder_deals_across_epochs() {
        let data = crate::data::spirals::spirals(3, 40);
        let s = Sharder {
            train_len: data.train_len(),
            workers: 2,
            batch: 5,
            seed: 4,
        };
        let mut batches = Batches::new(s, 1, data.inputs());
        let spe = s.steps_per_epoch();
        for step in [0, 1, spe - 1, spe, 2 * spe + 1, 0] {
            batches.load(&data, step);
            let perm = s.permutation(step / spe);
            let want = s.batch(&perm, step % spe, 1);
            assert_eq!(batches.indices(), want, "step {step}");
            for (row, &i) in want.iter().enumerate() {
                assert_eq!(batches.x().row(row), data.train_x.row(i as usize));
                assert_eq!(batches.labels()[row], data.train_y[i as usize]);
            }
        }
    }
}
