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
