//! Memory bounds: what a run will allocate, estimated before it does, and a check
//! against what the machine has left, so that an experiment too large for the machine
//! is refused with one sentence instead of aborting on a failed allocation.
//!
//! Each flag is bounded on its own (widths, layers, workers, batch), but not their
//! product: 16 layers of 16384 or 256 workers × [16384, 16384] pass every bound and
//! need hundreds of GB. This module takes plain numbers, so that any layer can use it.

/// A training run's shape, as far as its memory goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Training<'a> {
    /// Layer widths, inputs first, classes last: e.g. [64, 128, 10].
    pub sizes: &'a [usize],
    /// Workers whose replicas live in this process (one per rank over MPI).
    pub workers: usize,
    /// Per-worker batch.
    pub batch: usize,
    /// Whether a parameter server lives in this process too.
    pub server: bool,
}

/// Copies of the parameter buffer each worker holds: its parameters, its gradient, its
/// momentum, and one for the gradient in flight (the transport's staging in f16/bf16,
/// overlap's buckets, a parameter-server worker's pulled copy and message).
const WORKER_COPIES: u64 = 4;
/// Copies the engine holds beside the workers: the run's parameters and momentum
/// between segments, the evaluator's snapshot, the final parameters.
const ENGINE_COPIES: u64 = 4;
/// A parameter server's: its parameters, momentum and the sum of pushed gradients.
const SERVER_COPIES: u64 = 3;
/// The evaluator's batch (`Workspace::new(.., 512)` in the engine).
const EVAL_BATCH: u64 = 512;
const F32: u64 = 4;

/// Parameters of an MLP with `sizes`: a weight matrix and a bias per layer.
pub fn parameters(sizes: &[usize]) -> u64 {
    sizes
        .windows(2)
        .map(|p| (p[0] as u64).saturating_mul(p[1] as u64).saturating_add(p[1] as u64))
        .fold(0, u64::saturating_add)
}

/// Bytes a run allocates once its data set is loaded: the parameter buffer's copies
/// (workers, engine, server), and per worker its batch and the activations and
/// backward scratch for it (`nn::Workspace`), plus the evaluator's.
pub fn training_bytes(t: &Training) -> u64 {
    let p = parameters(t.sizes);
    let widths = |skip| t.sizes.iter().skip(skip).map(|&w| w as u64);
    // Per sample: every layer's output, two rows of the widest layer for backward, and
    // the input itself (the batch is copied out of the data set).
    let per_sample = widths(1)
        .fold(0, u64::saturating_add)
        .saturating_add(widths(0).max().unwrap_or(0).saturating_mul(2))
        .saturating_add(widths(0).next().unwrap_or(0));
    let workers = t.workers as u64;
    let copies = workers
        .saturating_mul(WORKER_COPIES)
        .saturating_add(ENGINE_COPIES)
        .saturating_add(if t.server { SERVER_COPIES } else { 0 });
    let floats = p
        .saturating_mul(copies)
        .saturating_add(per_sample.saturating_mul(workers.saturating_mul(t.batch as u64).saturating_add(EVAL_BATCH)));
    floats.saturating_mul(F32)
}

/// Refuses `bytes` for `what` when they exceed the memory this machine has available,
/// in one clause the caller can end with a fix: "`what` needs ~29.2 GiB of memory; this
/// machine has 22.4 GiB available". Where the OS does not say (not Linux), it passes.
pub fn check_fits(bytes: u64, what: &str) -> Result<(), String> {
    fits(bytes, available(), what)
}

fn fits(bytes: u64, available: Option<u64>, what: &str) -> Result<(), String> {
    match available {
        Some(have) if bytes > have => Err(format!(
            "{what} needs ~{} of memory; this machine has {} available",
            crate::units::bytes(bytes),
            crate::units::bytes(have)
        )),
        _ => Ok(()),
    }
}

/// Memory the kernel says can be allocated without swapping (`MemAvailable`), in bytes.
pub fn available() -> Option<u64> {
    mem_available(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find_map(|l| l.strip_prefix("MemAvailable:"))?;
    let kb = line.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
    Some(kb.saturating_mul(1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_count_weights_and_biases() {
        assert_eq!(parameters(&[64, 128, 10]), 64 * 128 + 128 + 128 * 10 + 10);
        assert_eq!(parameters(&[2, 3]), 2 * 3 + 3);
        assert_eq!(parameters(&[5]), 0);
    }

    #[test]
    fn the_estimate_adds_up_copies_and_activations() {
        let t = Training {
            sizes: &[64, 128, 10],
            workers: 4,
            batch: 32,
            server: false,
        };
        let p = 9610;
        // outputs 128 + 10, scratch 2 × 128, input 64 = 458 floats per sample
        let activations = 458 * (4 * 32 + 512);
        assert_eq!(training_bytes(&t), 4 * (p * (4 * 4 + 4) + activations));
        let with_server = Training { server: true, ..t };
        assert_eq!(training_bytes(&with_server) - training_bytes(&t), 4 * 3 * p);
    }

    #[test]
    fn the_issues_cases_need_far_more_than_any_laptop() {
        let sixteen = [vec![64], vec![16_384; 16], vec![10]].concat();
        let t = Training {
            sizes: &sixteen,
            workers: 4,
            batch: 32,
            server: false,
        };
        // 15 × 16384² weights alone are 4.0 billion parameters: 16 GB per copy
        assert!(training_bytes(&t) > 300_000_000_000, "{}", training_bytes(&t));
        let wide = Training {
            sizes: &[784, 16_384, 16_384, 10],
            workers: 256,
            ..t
        };
        assert!(training_bytes(&wide) > 1_000_000_000_000, "{}", training_bytes(&wide));
        // and a huge product saturates instead of wrapping to a small number
        let absurd = Training {
            sizes: &[usize::MAX, usize::MAX],
            ..t
        };
        assert_eq!(training_bytes(&absurd), u64::MAX);
    }

    #[test]
    fn a_run_larger_than_the_machine_is_refused_in_one_clause() {
        let err = fits(31_400_000_000, Some(24_100_000_000), "this run").unwrap_err();
        assert_eq!(
            err,
            "this run needs ~29.2 GiB of memory; this machine has 22.4 GiB available"
        );
        assert_eq!(fits(1_000, Some(1_000), "x"), Ok(()));
        assert!(fits(1_001, Some(1_000), "x").is_err());
        // where the OS does not say, nothing is refused
        assert_eq!(fits(u64::MAX, None, "x"), Ok(()));
        assert!(fits(4_200_000_000, Some(512_300_000), "x")
            .unwrap_err()
            .ends_with("~3.9 GiB of memory; this machine has 488.6 MiB available"));
        assert!(fits(1_158_000_000_000, Some(24_000_000_000), "x")
            .unwrap_err()
            .contains("~1.1 TiB of memory"));
    }

    #[test]
    fn mem_available_is_read_from_meminfo() {
        let meminfo = "MemTotal:       24684084 kB\nMemFree:        15855556 kB\nMemAvailable:   23629596 kB\n";
        assert_eq!(mem_available(meminfo), Some(23_629_596 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
        assert_eq!(mem_available("MemAvailable: lots\n"), None);
    }
}
