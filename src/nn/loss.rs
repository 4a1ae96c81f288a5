//! Softmax cross-entropy: the loss every ddlab network minimises.

use ndarray::{ArrayView2, ArrayViewMut2};

use super::wide::{exp_nonpositive, wide};

/// What one batch scored.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BatchScore {
    /// Sum (not mean) of the per-sample losses, so scores of shards can be added.
    pub loss_sum: f64,
    /// How many samples the arg-max of the logits got right.
    pub correct: usize,
    pub samples: usize,
}

impl BatchScore {
    pub fn mean_loss(&self) -> f64 {
        if self.samples == 0 {
            0.0
        } else {
            self.loss_sum / self.samples as f64
        }
    }
    pub fn accuracy(&self) -> f64 {
        if self.samples == 0 {
            0.0
        } else {
            self.correct as f64 / self.samples as f64
        }
    }
    pub fn add(&mut self, other: BatchScore) {
        self.loss_sum += other.loss_sum;
        self.correct += other.correct;
        self.samples += other.samples;
    }
}

/// Scores `logits` against `labels` and, when `d_logits` is given, writes the gradient of
/// the **mean** loss with respect to the logits into it.
///
/// loss_i = −log softmax(z_i)[y_i] = logsumexp(z_i) − z_i[y_i]
/// ∂(mean loss)/∂z_ij = (softmax(z_i)_j − [j = y_i]) / B
///
/// Shapes: logits: (B, C), labels: B, d_logits: (B, C).
pub fn softmax_cross_entropy(
    logits: &ArrayView2<f32>,
    labels: &[u8],
    d_logits: Option<&mut ArrayViewMut2<f32>>,
) -> BatchScore {
    let (batch, classes) = logits.dim();
    assert_eq!(labels.len(), batch, "one label per row of logits");
    let inv_batch = 1.0 / batch as f32;
    let mut score = BatchScore {
        samples: batch,
        ..BatchScore::default()
    };
    let logits = logits.as_standard_layout();
    let z_all = logits.as_slice().expect("standard layout");
    match d_logits {
        Some(d) => {
            let d_all = d.as_slice_mut().expect("the gradient is one contiguous block");
            // Three passes, so that the middle one (the exponentials, the costly part)
            // runs over all B·C values at once, vectorized, instead of 10 at a time.
            // 1. z − max per row (subtracting the max keeps exp() from overflowing).
            for ((z, d_row), &y) in z_all
                .chunks_exact(classes)
                .zip(d_all.chunks_exact_mut(classes))
                .zip(labels)
            {
                let (argmax, max) = arg_max(z);
                debug_assert!((y as usize) < classes);
                score.correct += usize::from(argmax == y as usize);
                d_row.iter_mut().zip(z).for_each(|(dz, &v)| *dz = v - max);
            }
            // 2. e^(z−max), kept in the gradient's rows.
            wide(|| d_all.iter_mut().for_each(|dz| *dz = exp_nonpositive(*dz)));
            // 3. loss_i = max + ln Σ e^(z−max) − z[y] = ln Σ e^(z−max) − (z[y] − max);
            //    the gradient is e^(z−max)/Σ /B (softmax / B), − 1/B at the label.
            for ((z, d_row), &y) in z_all
                .chunks_exact(classes)
                .zip(d_all.chunks_exact_mut(classes))
                .zip(labels)
            {
                let y = y as usize;
                let sum_exp: f32 = d_row.iter().sum();
                let (_, max) = arg_max(z);
                score.loss_sum += f64::from(max + sum_exp.ln() - z[y]);
                let scale = inv_batch / sum_exp;
                d_row.iter_mut().for_each(|dz| *dz *= scale);
                d_row[y] -= inv_batch;
            }
        }
        None => {
            for (z, &y) in z_all.chunks_exact(classes).zip(labels) {
                let (argmax, max) = arg_max(z);
                score.correct += usize::from(argmax == y as usize);
                let sum_exp: f32 = z.iter().map(|&v| exp_nonpositive(v - max)).sum();
                score.loss_sum += f64::from(max + sum_exp.ln() - z[y as usize]);
            }
        }
    }
    // A NaN logit makes max stay −∞ and argmax 0: report the loss as NaN, not a number.
    if z_all.iter().any(|v| !v.is_finite()) {
        score.loss_sum = f64::NAN;
    }
    score
}

/// The first index of the largest value of `z`, and that value (−∞ for none or NaNs).
fn arg_max(z: &[f32]) -> (usize, f32) {
    let (mut argmax, mut max) = (0, f32::NEG_INFINITY);
    for (j, &v) in z.iter().enumerate() {
        if v > max {
            max = v;
            argmax = j;
        }
    }
    (argmax, max)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array2};

    #[test]
    fn uniform_logits_give_log_of_class_count() {
        let logits = Array2::<f32>::zeros((3, 10));
        let s = softmax_cross_entropy(&logits.view(), &[0, 4, 9], None);
        assert!((s.mean_loss() - 10f64.ln()).abs() < 1e-6);
    }

    #[test]
    fn gradient_is_softmax_minus_onehot_over_batch() {
        let logits = array![[1.0f32, 2.0, 3.0], [0.5, 0.5, -1.0]];
        let mut d = Array2::zeros((2, 3));
        let s = softmax_cross_entropy(&logits.view(), &[2, 0], Some(&mut d.view_mut()));
        // row 0: argmax 2 = label; row 1: the tie 0/1 goes to the first, 0 = label
        assert_eq!(s.correct, 2);
        let e: Vec<f32> = [1.0f32, 2.0, 3.0].iter().map(|v| v.exp()).collect();
        let t: f32 = e.iter().sum();
        assert!((d[[0, 2]] - (e[2] / t - 1.0) / 2.0).abs() < 1e-6);
        assert!((d[[0, 0]] - (e[0] / t) / 2.0).abs() < 1e-6);
        // every row of the gradient sums to zero
        for row in d.rows() {
            assert!(row.sum().abs() < 1e-6);
        }
    }

    #[test]
    fn nan_logits_give_nan_loss() {
        let logits = array![[f32::NAN, 0.0]];
        assert!(softmax_cross_entropy(&logits.view(), &[0], None).loss_sum.is_nan());
    }
}
