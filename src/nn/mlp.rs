//! A multi-layer perceptron over one flat parameter buffer, with backprop written out.
//!
//! Layout of the flat buffer (decision 1 of DESIGN.md), for sizes [in, h1, …, out]:
//! `[W1 (in×h1, row-major) | b1 (h1) | W2 (h1×h2) | b2 | … ]`. Gradients use the same
//! layout, so one all-reduce over one slice syncs the whole network.

use ndarray::{s, ArrayView2, ArrayViewMut2};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::linalg::matmul_on;
use super::loss::{softmax_cross_entropy, BatchScore};
use super::par::{Par, Threads};
use super::wide::wide;

/// Where one linear layer lives in the flat buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerShape {
    pub fan_in: usize,
    pub fan_out: usize,
    /// Offset of W (fan_in × fan_out, row-major); b follows it directly.
    pub offset: usize,
}

impl LayerShape {
    pub fn w_len(&self) -> usize {
        self.fan_in * self.fan_out
    }
    pub fn len(&self) -> usize {
        self.w_len() + self.fan_out
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len()
    }
}

/// An MLP: linear + ReLU for every hidden layer, a linear output layer, softmax
/// cross-entropy on top. It holds only shapes; parameters live in a `&[f32]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mlp {
    sizes: Vec<usize>,
    layers: Vec<LayerShape>,
}

impl Mlp {
    /// `hidden` may be empty (a linear softmax classifier).
    pub fn new(inputs: usize, hidden: &[usize], classes: usize) -> Self {
        let mut sizes = vec![inputs];
        sizes.extend_from_slice(hidden);
        sizes.push(classes);
        let mut layers = Vec::with_capacity(sizes.len() - 1);
        let mut offset = 0;
        for pair in sizes.windows(2) {
            let layer = LayerShape {
                fan_in: pair[0],
                fan_out: pair[1],
                offset,
            };
            offset += layer.len();
            layers.push(layer);
        }
        Mlp { sizes, layers }
    }

    /// Layer widths, input first: e.g. [64, 128, 10].
    pub fn sizes(&self) -> &[usize] {
        &self.sizes
    }
    pub fn layers(&self) -> &[LayerShape] {
        &self.layers
    }
    pub fn inputs(&self) -> usize {
        self.sizes[0]
    }
    pub fn classes(&self) -> usize {
        *self.sizes.last().expect("an MLP has at least two sizes")
    }
    pub fn num_params(&self) -> usize {
        self.layers.last().map_or(0, |l| l.offset + l.len())
    }

    /// Seeded initialisation: He (std √(2/fan_in)) for layers followed by ReLU, Xavier
    /// (std √(2/(fan_in+fan_out))) for the output layer, zero biases.
    pub fn init(&self, params: &mut [f32], seed: u64) {
        assert_eq!(params.len(), self.num_params());
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let last = self.layers.len() - 1;
        for (l, layer) in self.layers.iter().enumerate() {
            let std = if l < last {
                (2.0 / layer.fan_in as f64).sqrt()
            } else {
                (2.0 / (layer.fan_in + layer.fan_out) as f64).sqrt()
            };
            let normal = Normal::new(0.0, std).expect("a finite positive std");
            let (w, b) = params[layer.range()].split_at_mut(layer.w_len());
            for v in w.iter_mut() {
                *v = normal.sample(&mut rng) as f32;
            }
            b.fill(0.0);
        }
    }

    /// Layer `l`'s weights as a (fan_in, fan_out) view and its bias as a slice.
    fn views<'a>(&self, params: &'a [f32], l: usize) -> (ArrayView2<'a, f32>, &'a [f32]) {
        let layer = self.layers[l];
        let (w, b) = params[layer.range()].split_at(layer.w_len());
        let w = ArrayView2::from_shape((layer.fan_in, layer.fan_out), w).expect("layout matches");
        (w, b)
    }

    fn views_mut<'a>(&self, grads: &'a mut [f32], l: usize) -> (ArrayViewMut2<'a, f32>, &'a mut [f32]) {
        let layer = self.layers[l];
        let (w, b) = grads[layer.range()].split_at_mut(layer.w_len());
        let w = ArrayViewMut2::from_shape((layer.fan_in, layer.fan_out), w).expect("layout matches");
        (w, b)
    }

    /// Forward pass. Leaves every layer's output in `ws` and returns the logits (B, C).
    /// Runs on the workspace's threads.
    pub fn forward<'w>(&self, params: &[f32], x: &ArrayView2<f32>, ws: &'w mut Workspace) -> ArrayView2<'w, f32> {
        let threads = ws.threads.clone();
        threads.run(|par| self.forward_on(par, params, x, ws));
        act_view(&ws.acts[self.layers.len() - 1], x.nrows(), self.classes())
    }

    /// `forward`, inside `Threads::run`.
    fn forward_on(&self, par: Par, params: &[f32], x: &ArrayView2<f32>, ws: &mut Workspace) {
        let batch = x.nrows();
        assert_eq!(x.ncols(), self.inputs(), "input width");
        assert!(
            batch <= ws.max_batch,
            "batch {batch} exceeds the workspace's {}",
            ws.max_batch
        );
        let last = self.layers.len() - 1;
        for l in 0..self.layers.len() {
            let (w, b) = self.views(params, l);
            let (before, after) = ws.acts.split_at_mut(l);
            let input = if l == 0 {
                x.view()
            } else {
                act_view(&before[l - 1], batch, self.sizes[l])
            };
            let width = self.sizes[l + 1];
            // z = h · W : (B, in) · (in, out) -> (B, out)
            matmul_on(par, &mut act_view_mut(&mut after[0], batch, width), &input, &w, false);
            // z += b, then h = relu(z) = max(z, 0) on hidden layers (rows split over threads)
            let z = &mut after[0][..batch * width];
            let hidden = l < last;
            par.pieces_mut(z, width, batch * width, |_, rows| {
                wide(|| {
                    for row in rows.chunks_exact_mut(width) {
                        if hidden {
                            row.iter_mut().zip(b).for_each(|(v, &bias)| *v = (*v + bias).max(0.0));
                        } else {
                            row.iter_mut().zip(b).for_each(|(v, &bias)| *v += bias);
                        }
                    }
                })
            });
        }
    }

    /// Scores the logits of the last `forward` against `labels` and leaves
    /// d(mean loss)/d(logits) in the workspace, ready for `backward`.
    pub fn loss(&self, labels: &[u8], ws: &mut Workspace) -> BatchScore {
        let batch = labels.len();
        let last = self.layers.len() - 1;
        let logits = act_view(&ws.acts[last], batch, self.classes());
        let mut d_z = act_view_mut(&mut ws.d_cur, batch, self.classes());
        softmax_cross_entropy(&logits, labels, Some(&mut d_z))
    }

    /// Backward pass after `forward` and `loss` on the same batch `x`. Writes the batch's
    /// gradient into `grads` (overwriting it: no zeroing pass is needed).
    pub fn backward(&self, params: &[f32], x: &ArrayView2<f32>, ws: &mut Workspace, grads: &mut [f32]) {
        self.backward_with(params, x, ws, grads, |_, _| {});
    }

    /// `backward`, calling `layer_done(l, gradient of layer l)` as soon as layer l's
    /// gradient is final (last layer first): what lets communication start during
    /// backward (gradient buckets, as in PyTorch DDP and Horovod). Runs on the
    /// workspace's threads (`layer_done` too).
    pub fn backward_with(
        &self,
        params: &[f32],
        x: &ArrayView2<f32>,
        ws: &mut Workspace,
        grads: &mut [f32],
        layer_done: impl FnMut(usize, &[f32]) + Send,
    ) {
        let threads = ws.threads.clone();
        threads.run(|par| self.backward_on(par, params, x, ws, grads, layer_done));
    }

    /// `backward_with`, inside `Threads::run`.
    fn backward_on(
        &self,
        par: Par,
        params: &[f32],
        x: &ArrayView2<f32>,
        ws: &mut Workspace,
        grads: &mut [f32],
        mut layer_done: impl FnMut(usize, &[f32]),
    ) {
        assert_eq!(grads.len(), self.num_params());
        let batch = x.nrows();
        let Workspace {
            acts, d_cur, d_prev, ..
        } = ws;
        for l in (0..self.layers.len()).rev() {
            let (fan_in, fan_out) = (self.layers[l].fan_in, self.layers[l].fan_out);
            let d_z = act_view(d_cur, batch, fan_out);
            let input = if l == 0 {
                x.view()
            } else {
                act_view(&acts[l - 1], batch, fan_in)
            };
            let (mut d_w, d_b) = self.views_mut(grads, l);
            // d_W = hᵀ · d_z : (in, B) · (B, out) -> (in, out)
            matmul_on(par, &mut d_w, &input.t(), &d_z, false);
            // d_b = Σ_batch d_z : (B, out) -> (out); columns split over threads, each
            // summed over the batch in order
            let d_z_rows = &d_cur[..batch * fan_out];
            par.pieces_mut(d_b, 1, batch * fan_out, |c0, d_b| {
                wide(|| {
                    d_b.fill(0.0);
                    for row in d_z_rows.chunks_exact(fan_out) {
                        d_b.iter_mut().zip(&row[c0..]).for_each(|(db, &dz)| *db += dz);
                    }
                })
            });
            layer_done(l, &grads[self.layers[l].range()]);
            if l > 0 {
                let (w, _) = self.views(params, l);
                let mut d_h = act_view_mut(d_prev, batch, fan_in);
                // d_h = d_z · Wᵀ : (B, out) · (out, in) -> (B, in)
                matmul_on(par, &mut d_h, &d_z, &w.t(), false);
                // d_z = d_h · relu'(z), relu'(z) = [z > 0] = [h > 0]: a select, which
                // vectorizes (a branch would be mispredicted about half the time).
                let h = &acts[l - 1][..batch * fan_in];
                par.pieces_mut(&mut d_prev[..batch * fan_in], 1, batch * fan_in, |at, d| {
                    wide(|| {
                        for (d, &hv) in d.iter_mut().zip(&h[at..]) {
                            *d = if hv > 0.0 { *d } else { 0.0 };
                        }
                    })
                });
                std::mem::swap(d_cur, d_prev);
            }
        }
    }

    /// Forward, loss and backward for one batch: the whole per-worker computation.
    pub fn loss_and_grad(
        &self,
        params: &[f32],
        x: &ArrayView2<f32>,
        labels: &[u8],
        ws: &mut Workspace,
        grads: &mut [f32],
    ) -> BatchScore {
        self.forward(params, x, ws);
        let score = self.loss(labels, ws);
        self.backward(params, x, ws, grads);
        score
    }

    /// Scores a whole data set in batches of the workspace's size (no gradients), on the
    /// workspace's threads.
    pub fn evaluate(&self, params: &[f32], x: &ArrayView2<f32>, labels: &[u8], ws: &mut Workspace) -> BatchScore {
        let threads = ws.threads.clone();
        let last = self.layers.len() - 1;
        threads.run(|par| {
            let mut total = BatchScore::default();
            let mut start = 0;
            while start < x.nrows() {
                let end = (start + ws.max_batch).min(x.nrows());
                let xs = x.slice(s![start..end, ..]);
                self.forward_on(par, params, &xs, ws);
                let logits = act_view(&ws.acts[last], end - start, self.classes());
                total.add(softmax_cross_entropy(&logits, &labels[start..end], None));
                start = end;
            }
            total
        })
    }
}

/// Preallocated activations and gradient scratch for batches up to `max_batch`, so a
/// training step allocates nothing; and the threads that compute with them.
#[derive(Debug, Clone)]
pub struct Workspace {
    max_batch: usize,
    threads: Threads,
    /// Output of every layer (post-ReLU for hidden layers, logits last), each (B, width).
    acts: Vec<Vec<f32>>,
    /// Ping-pong buffers for d_z of the current layer and d_h of the one below.
    d_cur: Vec<f32>,
    d_prev: Vec<f32>,
}

impl Workspace {
    /// A workspace computed with on the calling thread.
    pub fn new(mlp: &Mlp, max_batch: usize) -> Self {
        Self::with_threads(mlp, max_batch, Threads::one())
    }

    /// A workspace whose forward, backward and evaluation run on `threads`.
    pub fn with_threads(mlp: &Mlp, max_batch: usize, threads: Threads) -> Self {
        let widest = mlp.sizes().iter().copied().max().unwrap_or(0);
        Workspace {
            max_batch,
            threads,
            acts: mlp.sizes()[1..].iter().map(|&w| vec![0.0; max_batch * w]).collect(),
            d_cur: vec![0.0; max_batch * widest],
            d_prev: vec![0.0; max_batch * widest],
        }
    }

    /// The threads this workspace computes on (the update runs on them too).
    pub fn threads(&self) -> &Threads {
        &self.threads
    }
}

fn act_view(buf: &[f32], rows: usize, cols: usize) -> ArrayView2<'_, f32> {
    ArrayView2::from_shape((rows, cols), &buf[..rows * cols]).expect("workspace is large enough")
}

fn act_view_mut(buf: &mut [f32], rows: usize, cols: usize) -> ArrayViewMut2<'_, f32> {
    ArrayViewMut2::from_shape((rows, cols), &mut buf[..rows * cols]).expect("workspace is large enough")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::check_close;
    use ndarray::Array2;
    use rand::Rng;

    fn numeric_grad(mlp: &Mlp, params: &[f32], x: &Array2<f32>, y: &[u8]) -> Vec<f32> {
        let mut ws = Workspace::new(mlp, x.nrows());
        let mut p = params.to_vec();
        let eps = 1e-3f32;
        let loss = |p: &[f32], ws: &mut Workspace| mlp.evaluate(p, &x.view(), y, ws).mean_loss();
        (0..p.len())
            .map(|i| {
                let orig = p[i];
                p[i] = orig + eps;
                let up = loss(&p, &mut ws);
                p[i] = orig - eps;
                let down = loss(&p, &mut ws);
                p[i] = orig;
                ((up - down) / (2.0 * f64::from(eps))) as f32
            })
            .collect()
    }

    #[test]
    fn backprop_matches_finite_differences_at_several_depths() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for hidden in [vec![], vec![7], vec![6, 5], vec![5, 4, 6]] {
            let mlp = Mlp::new(4, &hidden, 3);
            let mut params = vec![0.0; mlp.num_params()];
            mlp.init(&mut params, 3);
            // Non-zero biases so that ReLU kinks are unlikely to sit within ±eps.
            for v in params.iter_mut() {
                *v += rng.random_range(-0.1..0.1);
            }
            let x = Array2::from_shape_fn((5, 4), |_| rng.random_range(-1.0..1.0f32));
            let y: Vec<u8> = (0..5).map(|i| (i % 3) as u8).collect();
            let mut ws = Workspace::new(&mlp, 5);
            let mut grads = vec![f32::NAN; mlp.num_params()];
            mlp.loss_and_grad(&params, &x.view(), &y, &mut ws, &mut grads);
            let numeric = numeric_grad(&mlp, &params, &x, &y);
            check_close(&format!("hidden {hidden:?}"), &grads, &numeric, 2e-3, 2e-2);
        }
    }

    #[test]
    fn a_wrong_gradient_would_fail_the_check() {
        // The gradient check must be able to fail: flip one element and expect a panic.
        let mlp = Mlp::new(3, &[4], 2);
        let mut params = vec![0.0; mlp.num_params()];
        mlp.init(&mut params, 1);
        let x = Array2::from_shape_fn((4, 3), |(i, j)| (i as f32 - j as f32) * 0.3);
        let y = [0u8, 1, 1, 0];
        let mut ws = Workspace::new(&mlp, 4);
        let mut grads = vec![0.0; mlp.num_params()];
        mlp.loss_and_grad(&params, &x.view(), &y, &mut ws, &mut grads);
        let numeric = numeric_grad(&mlp, &params, &x, &y);
        let biggest = (0..grads.len())
            .max_by(|&a, &b| grads[a].abs().total_cmp(&grads[b].abs()))
            .unwrap();
        grads[biggest] *= 1.5;
        let result = std::panic::catch_unwind(|| check_close("tampered", &grads, &numeric, 2e-3, 2e-2));
        assert!(result.is_err());
    }

    #[test]
    fn forward_backward_and_evaluation_on_threads_give_the_bits_of_one_thread() {
        // Wide enough that gemm and the elementwise passes really split (see `par`).
        let mlp = Mlp::new(200, &[300, 40], 10);
        let batch = 128;
        let mut params = vec![0.0; mlp.num_params()];
        mlp.init(&mut params, 5);
        let x = Array2::from_shape_fn((batch, 200), |(i, j)| ((i * 17 + j * 3) % 23) as f32 / 23.0);
        let y: Vec<u8> = (0..batch).map(|i| (i * 7 % 10) as u8).collect();
        let run = |threads: usize| {
            let threads = Threads::new(threads, |_| {}).unwrap();
            let mut ws = Workspace::with_threads(&mlp, batch, threads);
            let mut grads = vec![0.0; mlp.num_params()];
            let score = mlp.loss_and_grad(&params, &x.view(), &y, &mut ws, &mut grads);
            let eval = mlp.evaluate(&params, &x.view(), &y, &mut ws);
            (score, eval, grads)
        };
        let one = run(1);
        for t in [2, 3] {
            let many = run(t);
            assert_eq!(many.0, one.0, "{t} threads: training score");
            assert_eq!(many.1, one.1, "{t} threads: evaluation score");
            let same = one.2.iter().zip(&many.2).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{t} threads: the gradient differs from one thread's");
        }
    }

    #[test]
    fn layout_puts_each_weight_matrix_before_its_bias() {
        let mlp = Mlp::new(64, &[128], 10);
        assert_eq!(mlp.num_params(), 64 * 128 + 128 + 128 * 10 + 10);
        assert_eq!(mlp.layers()[1].offset, 64 * 128 + 128);
    }

    #[test]
    fn init_is_seeded() {
        let mlp = Mlp::new(8, &[8], 3);
        let (mut a, mut b, mut c) = (
            vec![0.0; mlp.num_params()],
            vec![0.0; mlp.num_params()],
            vec![0.0; mlp.num_params()],
        );
        mlp.init(&mut a, 1);
        mlp.init(&mut b, 1);
        mlp.init(&mut c, 2);
        assert_eq!(a, b);
        assert_ne!(a, c);
    }
}
