//! SGD with momentum and weight decay, over the flat buffers.

use rayon::prelude::*;

use super::par::Par;
use super::wide::wide;

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
        self.step_on(Par::SERIAL, params, grads, lr);
    }

    /// `step` with the parameters cut into ranges, one per thread of `par` (inside
    /// `Threads::run`). Each parameter's update reads only its own values, so the split
    /// changes no bit.
    pub fn step_on(&mut self, par: Par, params: &mut [f32], grads: &[f32], lr: f32) {
        assert_eq!(params.len(), grads.len());
        assert_eq!(params.len(), self.velocity.len());
        let (mu, wd) = (self.momentum, self.weight_decay);
        let update = |params: &mut [f32], velocity: &mut [f32], grads: &[f32]| {
            wide(|| {
                for ((p, v), &g) in params.iter_mut().zip(velocity.iter_mut()).zip(grads) {
                    let g = g + wd * *p;
                    *v = mu * *v + g;
                    *p -= lr * *v;
                }
            })
        };
        // (work: three values read and two written per parameter)
        match par.piece_len(params.len(), 1, 5 * params.len()) {
            None => update(params, &mut self.velocity, grads),
            Some(len) => params
                .par_chunks_mut(len)
                .zip(self.velocity.par_chunks_mut(len))
                .zip(grads.par_chunks(len))
                .for_each(|((p, v), g)| update(p, v, g)),
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

    #[test]
    fn an_update_split_over_threads_equals_one_thread_bit_for_bit() {
        let n = 300_001;
        let grads: Vec<f32> = (0..n).map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0).collect();
        let start: Vec<f32> = (0..n).map(|i| ((i * 13) % 97) as f32 / 40.0 - 1.2).collect();
        let run = |threads: usize| {
            let mut opt = Sgd::new(n, 0.9, 1e-3);
            let mut p = start.clone();
            let threads = crate::nn::Threads::new(threads, |_| {}).unwrap();
            for _ in 0..3 {
                threads.run(|par| opt.step_on(par, &mut p, &grads, 0.05));
            }
            (p, opt.velocity().to_vec())
        };
        let one = run(1);
        for t in [2, 3] {
            let many = run(t);
            assert!(
                one.0.iter().zip(&many.0).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{t} threads: parameters"
            );
            assert!(
                one.1.iter().zip(&many.1).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{t} threads: velocity"
            );
        }
    }
}
