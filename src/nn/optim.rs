//! SGD with momentum and weight decay, over the flat buffers.

/// Plain SGD with heavy-ball momentum and L2 weight decay (PyTorch's formulation):
///
/// g' = g + λ·p,   v = μ·v + g',   p = p − η·v
#[derive(Debug, Clone)]
pub struct Sgd {
    pub momentum: f32,
    pub weight_decay: f32,
    velocity: Vec<f32>,
}

impl Sgd {
    pub fn new(num_params: usize, momentum: f32, weight_decay: f32) -> Self {
        Sgd {
            momentum,
            weight_decay,
            velocity: vec![0.0; num_params],
        }
    }

    /// One update with learning rate `lr`; `grads` is the (averaged) gradient.
    pub fn step(&mut self, params: &mut [f32], grads: &[f32], lr: f32) {
        assert_eq!(params.len(), grads.len());
        assert_eq!(params.len(), self.velocity.len());
        let (mu, wd) = (self.momentum, self.weight_decay);
        let n = params.len();
        let (params, grads, velocity) = (&mut params[..n], &grads[..n], &mut self.velocity[..n]);
        for i in 0..n {
            let g = grads[i] + wd * params[i];
            velocity[i] = mu * velocity[i] + g;
            params[i] -= lr * velocity[i];
        }
    }

    /// The optimizer state (momentum buffer), e.g. to hand to a relaunched run.
    pub fn velocity(&self) -> &[f32] {
        &self.velocity
    }
    pub fn set_velocity(&mut self, v: &[f32]) {
        self.velocity.copy_from_slice(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn momentum_accumulates_like_the_formula() {
        let mut opt = Sgd::new(1, 0.9, 0.0);
        let mut p = [1.0f32];
        opt.step(&mut p, &[1.0], 0.1); // v = 1, p = 0.9
        opt.step(&mut p, &[1.0], 0.1); // v = 1.9, p = 0.71
        assert!((p[0] - 0.71).abs() < 1e-6);
    }

    #[test]
    fn weight_decay_shrinks_parameters_without_gradient() {
        let mut opt = Sgd::new(1, 0.0, 0.5);
        let mut p = [2.0f32];
        opt.step(&mut p, &[0.0], 0.1); // g' = 1, p = 1.9
        assert!((p[0] - 1.9).abs() < 1e-6);
    }
}
