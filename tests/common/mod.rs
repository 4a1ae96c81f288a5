//! Helpers shared by the integration tests.

/// ‖a − b‖ / ‖b‖, and the worst element, for a readable failure.
pub fn relative_difference(a: &[f32], b: &[f32]) -> (f64, usize) {
    let (mut diff, mut norm, mut worst) = (0.0f64, 0.0f64, (0usize, 0.0f32));
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        diff += f64::from(x - y).powi(2);
        norm += f64::from(y).powi(2);
        if (x - y).abs() > worst.1 {
            worst = (i, (x - y).abs());
        }
    }
    ((diff / norm).sqrt(), worst.0)
}
