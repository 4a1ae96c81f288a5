//! Numbers: the network, its loss, its optimizer, over one flat parameter buffer.
//!
//! Read `mlp.rs` top to bottom to follow backprop: every forward step has its backward
//! step beside it, with shapes in the comments.

pub mod linalg;
pub mod loss;
pub mod mlp;
pub mod optim;
pub mod par;
pub mod schedule;
pub mod wide;

pub use loss::{softmax_cross_entropy, BatchScore};
pub use mlp::{LayerShape, Mlp, Workspace};
pub use optim::Sgd;
pub use par::{Par, Threads};
pub use schedule::{LrScaling, LrSchedule};
use wide::wide;

/// The median of `values` (the upper one of an even count; 0 for none): what benchmarks
/// and checks report, so that one burst of noise moves no figure.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// L2 norm of a flat buffer, accumulated in f64. Sixteen running sums rather than one:
/// a single sum waits for each addition before the next (4 cycles each), which made two
/// norms per step cost as much as a whole step of a small network.
pub fn l2_norm(v: &[f32]) -> f64 {
    const LANES: usize = 16;
    wide(|| {
        let mut sums = [0.0f64; LANES];
        let chunks = v.chunks_exact(LANES);
        let rest = chunks.remainder();
        for chunk in chunks {
            for (s, &x) in sums.iter_mut().zip(chunk) {
                *s += f64::from(x) * f64::from(x);
            }
        }
        for (s, &x) in sums.iter_mut().zip(rest) {
            *s += f64::from(x) * f64::from(x);
        }
        sums.iter().sum::<f64>().sqrt()
    })
}

/// Makes this thread treat subnormal floats as zero (x86 FTZ and DAZ), as training
/// frameworks do. Without it, momentum buffers of dead ReLU units decay into subnormals
/// and one arithmetic instruction on them costs about a hundred cycles. Call it first
/// thing on every thread that trains.
pub fn flush_denormals() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: reads and writes this thread's MXCSR; setting FTZ (bit 15) and DAZ (bit 6)
    // changes only how subnormals round, and the register is saved per thread.
    unsafe {
        let mut csr: u32 = 0;
        std::arch::asm!("stmxcsr [{}]", in(reg) &mut csr, options(nostack));
        csr |= 0x8040;
        std::arch::asm!("ldmxcsr [{}]", in(reg) &csr, options(nostack));
    }
}

#[cfg(test)]
mod tests {
    use super::{l2_norm, median};

    #[test]
    fn l2_norm_is_the_root_of_the_sum_of_squares() {
        let v: Vec<f32> = (0..1001).map(|i| (i % 7) as f32 - 3.0).collect();
        let exact: f64 = v.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
        assert!((l2_norm(&v) - exact).abs() <= 1e-12 * exact);
        assert_eq!(l2_norm(&[3.0, 4.0]), 5.0);
        assert_eq!(l2_norm(&[]), 0.0);
    }

    #[test]
    fn median_takes_the_middle_of_the_sorted_values() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 3.0); // the upper of two
        assert_eq!(median(vec![]), 0.0);
    }
}
