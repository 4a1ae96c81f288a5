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

/// For tests: compares two buffers element by element and panics naming the worst
/// offender unless |got − want| ≤ abs_tol + rel_tol·max(|got|, |want|) everywhere
/// (llm.c's check habit); a NaN on either side never passes. The unit tests and the GPU tests hold numbers to it alike.
pub fn check_close(label: &str, got: &[f32], want: &[f32], abs_tol: f32, rel_tol: f32) {
    assert_eq!(got.len(), want.len(), "{label}: lengths differ");
    let mut worst = (0usize, 0.0f32);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let excess = (g - w).abs() - (abs_tol + rel_tol * g.abs().max(w.abs()));
        // (a NaN matches nothing: a kernel that never wrote its output fails here)
        let excess = if excess.is_nan() { f32::INFINITY } else { excess };
        if excess > worst.1 {
            worst = (i, excess);
        }
    }
    let i = worst.0;
    assert!(
        worst.1 <= 0.0,
        "{label}: element {i} differs: got {} want {} (over tolerance by {})",
        got[i],
        want[i],
        worst.1
    );
}

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
    use super::{check_close, l2_norm, median};

    #[test]
    fn check_close_passes_within_tolerance_and_fails_on_an_outlier_or_a_nan() {
        check_close("close", &[1.0, 100.0], &[1.001, 100.5], 2e-3, 1e-2);
        let far = std::panic::catch_unwind(|| check_close("far", &[1.0, 2.0], &[1.0, 2.5], 1e-3, 1e-2));
        let msg = far.unwrap_err().downcast::<String>().unwrap();
        assert!(msg.starts_with("far: element 1 differs: got 2 want 2.5"), "{msg}");
        assert!(std::panic::catch_unwind(|| check_close("nan", &[f32::NAN], &[0.0], 1.0, 1.0)).is_err());
    }

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
