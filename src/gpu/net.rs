//! A worker's network on a GPU: its parameters, gradient and momentum in flat buffers,
//! its activations for a fixed batch, and every dispatch of a step recorded once.
//!
//! Every phase is one command encoder and one submission that the host waits for, so
//! each is timed like the CPU's phases are: forward (batch upload, every layer, the loss,
//! and the loss figures back), backward (every layer's gradient into the flat gradient
//! buffer), to-host (the gradient into host memory), to-device (the all-reduced gradient
//! back) and update (SGD with momentum on the GPU's own parameters).

use std::sync::Arc;

use super::device::{GpuError, Opened};
use super::kernels::{sgd_words, uniform_bytes, Dispatch};
use super::GpuInfo;
use crate::nn::{BatchScore, Mlp};

/// One worker's network on a GPU: parameters, gradient and momentum in flat buffers with
/// the CPU's layout, activations for a fixed batch, and every dispatch of a step recorded
/// once.
pub struct GpuNet {
    gpu: Arc<Opened>,
    mlp: Mlp,
    batch: usize,
    params: wgpu::Buffer,
    grads: wgpu::Buffer,
    velocity: wgpu::Buffer,
    x: wgpu::Buffer,
    labels: wgpu::Buffer,
    stats: wgpu::Buffer,
    staging: wgpu::Buffer,
    sgd_uniform: wgpu::Buffer,
    forward: Vec<Dispatch>,
    backward: Vec<Dispatch>,
    sgd: Dispatch,
    labels_u32: Vec<u32>,
    stats_host: Vec<f32>,
}

impl GpuNet {
    /// The network `mlp` on `gpu`, for batches of exactly `batch` samples.
    pub fn new(gpu: Arc<Opened>, mlp: &Mlp, batch: usize) -> Result<GpuNet, GpuError> {
        let g = &*gpu;
        let p = mlp.num_params();
        let sizes = mlp.sizes();
        let layers = mlp.layers();
        let last = layers.len() - 1;
        let rw = wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
        let params = g.storage("params", p, rw);
        let grads = g.storage("grads", p, rw);
        let velocity = g.storage("velocity", p, rw);
        let x = g.storage("batch", batch * mlp.inputs(), wgpu::BufferUsages::COPY_DST);
        let labels = g.storage("labels", batch, wgpu::BufferUsages::COPY_DST);
        let stats = g.storage("loss per sample", 2 * batch, wgpu::BufferUsages::COPY_SRC);
        let acts: Vec<wgpu::Buffer> = sizes[1..]
            .iter()
            .map(|&w| g.storage("activations", batch * w, wgpu::BufferUsages::COPY_SRC))
            .collect();
        let widest = sizes[1..].iter().copied().max().unwrap_or(1);
        let d = [
            g.storage("d_cur", batch * widest, wgpu::BufferUsages::empty()),
            g.storage("d_prev", batch * widest, wgpu::BufferUsages::empty()),
        ];
        let staging = g.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("to host"),
            size: ((p + 2 * batch).max(batch * widest) * 4) as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        // Forward: Z = H·W, then bias (+ ReLU) per layer; then the loss.
        let mut forward = Vec::new();
        for (l, layer) in layers.iter().enumerate() {
            let input = if l == 0 { &x } else { &acts[l - 1] };
            let (fi, fo) = (layer.fan_in, layer.fan_out);
            let mm = g.matmul(
                [input, &params, &acts[l]],
                (batch, fi, fo),
                (false, false),
                (0, layer.offset, 0),
            );
            forward.push(mm.named(format!("forward {l}: Z = H·W, {batch}×{fi} · {fi}×{fo}")));
            let relu = l < last;
            let bias = g.bias_act([&acts[l], &params], (batch, fo), layer.offset + layer.w_len(), relu);
            let what = if relu { "bias + ReLU" } else { "bias" };
            forward.push(bias.named(format!("forward {l}: {what}, {batch}×{fo}")));
        }
        let classes = mlp.classes();
        let loss = g.softmax_ce([&acts[last], &labels, &d[0], &stats], (batch, classes));
        forward.push(loss.named(format!("loss: softmax cross-entropy, {batch}×{classes}")));
        // Backward, last layer first; d_z of layer l sits in d[(last − l) % 2].
        let mut backward = Vec::new();
        for (l, layer) in layers.iter().enumerate().rev() {
            let dz = &d[(last - l) % 2];
            let dprev = &d[(last - l + 1) % 2];
            let input = if l == 0 { &x } else { &acts[l - 1] };
            let (fi, fo) = (layer.fan_in, layer.fan_out);
            let dw = g.matmul(
                [input, dz, &grads],
                (fi, batch, fo),
                (true, false),
                (0, 0, layer.offset),
            );
            backward.push(dw.named(format!("backward {l}: dW = Hᵀ·dZ, {fi}×{batch} · {batch}×{fo}")));
            let db = g.bias_grad([dz, &grads], (batch, fo), layer.offset + layer.w_len());
            backward.push(db.named(format!("backward {l}: db = Σ dZ, {batch}×{fo}")));
            if l > 0 {
                let dh = g.matmul(
                    [dz, &params, dprev],
                    (batch, fo, fi),
                    (false, true),
                    (0, layer.offset, 0),
                );
                backward.push(dh.named(format!("backward {l}: dH = dZ·Wᵀ, {batch}×{fo} · {fo}×{fi}")));
                let relu = g.relu_back([dprev, &acts[l - 1]], batch * fi);
                backward.push(relu.named(format!("backward {l}: ReLU', {batch}×{fi}")));
            }
        }
        let (sgd, sgd_uniform) = g.sgd([&params, &grads, &velocity], p);
        let sgd = sgd.named(format!("update: SGD with momentum, {p} parameters"));
        g.check()?;
        Ok(GpuNet {
            mlp: mlp.clone(),
            batch,
            params,
            grads,
            velocity,
            x,
            labels,
            stats,
            staging,
            sgd_uniform,
            forward,
            backward,
            sgd,
            labels_u32: vec![0; batch],
            stats_host: vec![0.0; 2 * batch],
            gpu,
        })
    }

    pub fn info(&self) -> &GpuInfo {
        &self.gpu.info
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    pub fn set_params(&self, params: &[f32]) -> Result<(), GpuError> {
        self.gpu.write(&self.params, params)
    }
    pub fn set_velocity(&self, velocity: &[f32]) -> Result<(), GpuError> {
        self.gpu.write(&self.velocity, velocity)
    }
    pub fn params(&self, out: &mut [f32]) -> Result<(), GpuError> {
        self.gpu.read(&self.params, &self.staging, out)
    }
    pub fn velocity(&self, out: &mut [f32]) -> Result<(), GpuError> {
        self.gpu.read(&self.velocity, &self.staging, out)
    }

    /// Forward and loss on one batch (`x`: batch × inputs, row-major): uploads it, runs
    /// every layer and the softmax cross-entropy, and reads back the loss per sample.
    /// Leaves d(mean loss)/d(logits) on the GPU for `backward`.
    pub fn forward(&mut self, x: &[f32], labels: &[u8]) -> Result<BatchScore, GpuError> {
        self.upload_batch(x, labels);
        let g = &*self.gpu;
        let mut encoder = g.encoder();
        g.record(&mut encoder, &self.forward.iter().collect::<Vec<_>>());
        g.read_after(encoder, &mut [(&self.stats, &mut self.stats_host)], &self.staging)?;
        Ok(self.score())
    }

    /// Queues the batch's upload (it happens at the next submission).
    fn upload_batch(&mut self, x: &[f32], labels: &[u8]) {
        assert_eq!(
            labels.len(),
            self.batch,
            "a GPU network trains on batches of {}",
            self.batch
        );
        assert_eq!(x.len(), self.batch * self.mlp.inputs(), "batch width");
        let g = &*self.gpu;
        g.queue.write_buffer(&self.x, 0, bytemuck::cast_slice(x));
        self.labels_u32
            .iter_mut()
            .zip(labels)
            .for_each(|(d, &l)| *d = u32::from(l));
        g.queue
            .write_buffer(&self.labels, 0, bytemuck::cast_slice(&self.labels_u32));
    }

    /// The batch's score from the loss figures read back.
    fn score(&self) -> BatchScore {
        let mut score = BatchScore {
            samples: self.batch,
            ..BatchScore::default()
        };
        for s in self.stats_host.chunks_exact(2) {
            score.loss_sum += f64::from(s[0]);
            score.correct += usize::from(s[1] > 0.5);
        }
        score
    }

    /// A whole step in two submissions instead of five: one command encoder records
    /// forward, loss, backward and the copies of the gradient and the loss figures to
    /// the host; then `all_reduce` has the gradient in `grads`; then one submission takes
    /// it back to the device and updates. What a step costs without a wait after every
    /// phase — and without phases to show (`ddlab bench --device gpu` compares both).
    pub fn fused_step(
        &mut self,
        x: &[f32],
        labels: &[u8],
        grads: &mut [f32],
        all_reduce: impl FnOnce(&mut [f32]),
        (lr, momentum, weight_decay): (f32, f32, f32),
    ) -> Result<BatchScore, GpuError> {
        self.upload_batch(x, labels);
        let g = &*self.gpu;
        let mut encoder = g.encoder();
        g.record(
            &mut encoder,
            &self.forward.iter().chain(&self.backward).collect::<Vec<_>>(),
        );
        g.read_after(
            encoder,
            &mut [(&self.grads, &mut *grads), (&self.stats, &mut self.stats_host)],
            &self.staging,
        )?;
        all_reduce(grads);
        g.queue.write_buffer(&self.grads, 0, bytemuck::cast_slice(grads));
        self.write_sgd_params(lr, momentum, weight_decay);
        let mut encoder = g.encoder();
        g.record(&mut encoder, &[&self.sgd]);
        g.run(encoder)?;
        Ok(self.score())
    }

    fn write_sgd_params(&self, lr: f32, momentum: f32, weight_decay: f32) {
        let words = sgd_words(self.mlp.num_params(), (lr, momentum, weight_decay));
        self.gpu
            .queue
            .write_buffer(&self.sgd_uniform, 0, &uniform_bytes(&words));
    }

    /// Backward after `forward`: every layer's gradient into the GPU's gradient buffer.
    pub fn backward(&self) -> Result<(), GpuError> {
        let mut encoder = self.gpu.encoder();
        self.gpu.record(&mut encoder, &self.backward.iter().collect::<Vec<_>>());
        self.gpu.run(encoder)
    }

    /// The gradient, device → host.
    pub fn grads_to_host(&self, out: &mut [f32]) -> Result<(), GpuError> {
        self.gpu.read(&self.grads, &self.staging, out)
    }

    /// A gradient (the all-reduced one), host → device.
    pub fn grads_to_device(&self, grads: &[f32]) -> Result<(), GpuError> {
        self.gpu.write(&self.grads, grads)
    }

    /// SGD with momentum and weight decay on the GPU: p −= lr·(μ·v + g + λ·p).
    pub fn update(&self, lr: f32, momentum: f32, weight_decay: f32) -> Result<(), GpuError> {
        self.write_sgd_params(lr, momentum, weight_decay);
        let mut encoder = self.gpu.encoder();
        self.gpu.record(&mut encoder, &[&self.sgd]);
        self.gpu.run(encoder)
    }
}

impl GpuNet {
    /// The GPU time of each dispatch of a step, in order (µs): each recorded `repeat`
    /// times in one pass and waited for, less the time of an empty submission, divided.
    /// (Repeating leaves the network's buffers changed: time a network, then drop it.)
    pub fn kernel_times(&self, repeat: usize) -> Result<Vec<(String, f64)>, GpuError> {
        let g = &*self.gpu;
        let timed = |dispatches: &[&Dispatch]| -> Result<f64, GpuError> {
            let mut best = f64::INFINITY;
            for _ in 0..3 {
                let mut encoder = g.encoder();
                g.record(&mut encoder, dispatches);
                let t = std::time::Instant::now();
                g.run(encoder)?;
                best = best.min(t.elapsed().as_secs_f64() * 1e6);
            }
            Ok(best)
        };
        let empty = timed(&[])?;
        self.forward
            .iter()
            .chain(&self.backward)
            .chain(std::iter::once(&self.sgd))
            .map(|d| {
                let reps: Vec<&Dispatch> = std::iter::repeat_n(d, repeat.max(1)).collect();
                Ok((d.label.clone(), (timed(&reps)? - empty).max(0.0) / repeat.max(1) as f64))
            })
            .collect()
    }
}
