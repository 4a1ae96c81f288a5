//! Disjoint per-worker shards, reshuffled every epoch from the seed.
//!
//! Each epoch draws one permutation of the training set from (seed, epoch) alone. Step s
//! of that epoch uses the global batch `perm[s·N·b .. (s+1)·N·b]`, and worker w takes the
//! w-th block of b samples in it. So within an epoch the workers' samples are disjoint,
//! and N workers × batch b see exactly the samples one worker with batch N·b sees, in the
//! same order — the basis of the sync-equivalence invariant (DESIGN.md decision 6).

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

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
        let start = (step_in_epoch as usize * self.workers + worker) * self.batch;
        &perm[start..start + self.batch]
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
}
