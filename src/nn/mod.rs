//! Numbers: the network, its loss, its optimizer, over one flat parameter buffer.
//!
//! Read `mlp.rs` top to bottom to follow backprop: every forward step has its backward
//! step beside it, with shapes in the comments.

pub mod linalg;
pub mod loss;
pub mod mlp;
pub mod optim;
pub mod schedule;

pub use loss::{softmax_cross_entropy, BatchScore};
pub use mlp::{LayerShape, Mlp, Workspace};
pub use optim::Sgd;
pub use schedule::{LrScaling, LrSchedule};

/// L2 norm of a flat buffer, accumulated in f64.
pub fn l2_norm(v: &[f32]) -> f64 {
    v.iter().map(|&x| f64::from(x) * f64::from(x)).sum::<f64>().sqrt()
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
