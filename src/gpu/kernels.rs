//! The kernels, one WGSL file each (`shaders/`): compiled once per device, recorded as
//! dispatches (a kernel, its buffers, its grid) that a network replays every step, and
//! each one alone on host data (`matmul`, `bias_act`, … below), which the tests hold
//! against the CPU's arithmetic.

use wgpu::util::DeviceExt;

use super::device::{GpuError, Opened};

/// The kernels, one WGSL file each (`shaders/`).
#[derive(Debug, Clone, Copy)]
enum Kernel {
    Matmul,
    BiasAct,
    SoftmaxCe,
    BiasGrad,
    ReluBack,
    Sgd,
}

impl Kernel {
    const ALL: [Kernel; 6] = [
        Kernel::Matmul,
        Kernel::BiasAct,
        Kernel::SoftmaxCe,
        Kernel::BiasGrad,
        Kernel::ReluBack,
        Kernel::Sgd,
    ];

    fn source(self) -> &'static str {
        match self {
            Kernel::Matmul => include_str!("shaders/matmul.wgsl"),
            Kernel::BiasAct => include_str!("shaders/bias_act.wgsl"),
            Kernel::SoftmaxCe => include_str!("shaders/softmax_ce.wgsl"),
            Kernel::BiasGrad => include_str!("shaders/bias_grad.wgsl"),
            Kernel::ReluBack => include_str!("shaders/relu_back.wgsl"),
            Kernel::Sgd => include_str!("shaders/sgd.wgsl"),
        }
    }
}

/// The compute pipelines, compiled once per device, in `Kernel::ALL` order.
pub(super) struct Kernels(Vec<wgpu::ComputePipeline>);

impl Kernels {
    pub(super) fn new(device: &wgpu::Device) -> Kernels {
        Kernels(
            Kernel::ALL
                .iter()
                .map(|k| {
                    let name = format!("{k:?}");
                    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                        label: Some(&name),
                        source: wgpu::ShaderSource::Wgsl(k.source().into()),
                    });
                    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                        label: Some(&name),
                        layout: None,
                        module: &module,
                        entry_point: Some("main"),
                        compilation_options: Default::default(),
                        cache: None,
                    })
                })
                .collect(),
        )
    }

    fn get(&self, k: Kernel) -> &wgpu::ComputePipeline {
        &self.0[k as usize]
    }
}
const TRANS_A: u32 = 1;
const TRANS_B: u32 = 2;
/// Elementwise kernels run 256 invocations per workgroup and stride over the rest.
const MAX_GROUPS: u32 = 65_535;

fn groups_for(n: usize, per_group: usize) -> u32 {
    (n.div_ceil(per_group) as u32).clamp(1, MAX_GROUPS)
}

/// A dispatch's parameters as its uniform buffer holds them: eight 32-bit words, the
/// ones not given zero.
pub(super) fn uniform_bytes(words: &[u32]) -> Vec<u8> {
    let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    bytes.resize(32, 0);
    bytes
}

/// The SGD kernel's parameters: length, learning rate, momentum, weight decay.
pub(super) fn sgd_words(n: usize, (lr, momentum, weight_decay): (f32, f32, f32)) -> [u32; 4] {
    [n as u32, lr.to_bits(), momentum.to_bits(), weight_decay.to_bits()]
}

impl Dispatch {
    pub(super) fn named(mut self, label: String) -> Dispatch {
        self.label = label;
        self
    }
}

/// One recorded dispatch: a kernel, its bindings, its grid.
pub(super) struct Dispatch {
    /// What it computes, for `kernel_times`: e.g. `matmul 256×784 · 784×1024`.
    pub(super) label: String,
    kernel: Kernel,
    bind: wgpu::BindGroup,
    groups: (u32, u32),
}
impl Opened {
    /// C (m×n) = op(A)·op(B) from `[a, b, c]` at element offsets `offsets`; `trans`:
    /// whether `a` holds A as k×m and `b` holds B as n×k.
    pub(super) fn matmul(
        &self,
        [a, b, c]: [&wgpu::Buffer; 3],
        (m, k, n): (usize, usize, usize),
        (trans_a, trans_b): (bool, bool),
        (a_off, b_off, c_off): (usize, usize, usize),
    ) -> Dispatch {
        let flags = u32::from(trans_a) * TRANS_A + u32::from(trans_b) * TRANS_B;
        let u = self.uniform(&[
            m as u32,
            n as u32,
            k as u32,
            flags,
            a_off as u32,
            b_off as u32,
            c_off as u32,
        ]);
        let grid = (n.div_ceil(64) as u32, m.div_ceil(64) as u32);
        self.dispatch(Kernel::Matmul, &[a, b, c, &u], grid)
    }

    /// z (rows × cols) += bias (at `b_off` in `bias`), then ReLU when `relu`.
    pub(super) fn bias_act(
        &self,
        [z, bias]: [&wgpu::Buffer; 2],
        (rows, cols): (usize, usize),
        b_off: usize,
        relu: bool,
    ) -> Dispatch {
        let u = self.uniform(&[rows as u32, cols as u32, b_off as u32, u32::from(relu)]);
        self.dispatch(Kernel::BiasAct, &[z, bias, &u], (groups_for(rows * cols, 256), 1))
    }

    /// Softmax cross-entropy of logits z (rows × classes) against `labels`: dz and the
    /// [loss, correct] pair of every row.
    pub(super) fn softmax_ce(
        &self,
        [z, labels, dz, stats]: [&wgpu::Buffer; 4],
        (rows, classes): (usize, usize),
    ) -> Dispatch {
        let u = self.uniform(&[rows as u32, classes as u32, (1.0 / rows as f32).to_bits()]);
        self.dispatch(
            Kernel::SoftmaxCe,
            &[z, labels, dz, stats, &u],
            (groups_for(rows, 64), 1),
        )
    }

    /// The column sums of dz (rows × cols) into `grads` at `out_off`.
    pub(super) fn bias_grad(
        &self,
        [dz, grads]: [&wgpu::Buffer; 2],
        (rows, cols): (usize, usize),
        out_off: usize,
    ) -> Dispatch {
        let u = self.uniform(&[rows as u32, cols as u32, out_off as u32]);
        self.dispatch(Kernel::BiasGrad, &[dz, grads, &u], (cols.div_ceil(16) as u32, 1))
    }

    /// d ⊙= [h > 0] over `n` elements.
    pub(super) fn relu_back(&self, [d, h]: [&wgpu::Buffer; 2], n: usize) -> Dispatch {
        let u = self.uniform(&[n as u32]);
        self.dispatch(Kernel::ReluBack, &[d, h, &u], (groups_for(n, 256), 1))
    }

    /// One SGD step over `n` parameters, and the uniform its learning rate, momentum and
    /// weight decay are written into (`sgd_words`) before each run.
    pub(super) fn sgd(&self, [p, g, v]: [&wgpu::Buffer; 3], n: usize) -> (Dispatch, wgpu::Buffer) {
        let u = self.uniform(&sgd_words(n, (0.0, 0.0, 0.0)));
        let d = self.dispatch(Kernel::Sgd, &[p, g, v, &u], (groups_for(n, 256), 1));
        (d, u)
    }

    fn dispatch(&self, kernel: Kernel, buffers: &[&wgpu::Buffer], groups: (u32, u32)) -> Dispatch {
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: b.as_entire_binding(),
            })
            .collect();
        let bind = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &self.kernels.get(kernel).get_bind_group_layout(0),
            entries: &entries,
        });
        Dispatch {
            label: format!("{kernel:?}"),
            kernel,
            bind,
            groups,
        }
    }

    /// Records `dispatches` into one compute pass of `encoder`.
    pub(super) fn record(&self, encoder: &mut wgpu::CommandEncoder, dispatches: &[&Dispatch]) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
        for d in dispatches {
            pass.set_pipeline(self.kernels.get(d.kernel));
            pass.set_bind_group(0, &d.bind, &[]);
            pass.dispatch_workgroups(d.groups.0, d.groups.1, 1);
        }
    }
}

// Each kernel on its own, for tests against the CPU: host data in, host data out.

fn input(g: &Opened, data: &[f32]) -> wgpu::Buffer {
    g.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("test input"),
        contents: bytemuck::cast_slice(if data.is_empty() { &[0.0f32] } else { data }),
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
    })
}

fn run_and_read(g: &Opened, d: Dispatch, outputs: &[(&wgpu::Buffer, usize)]) -> Result<Vec<Vec<f32>>, GpuError> {
    let mut encoder = g.encoder();
    g.record(&mut encoder, &[&d]);
    g.run(encoder)?;
    let largest = outputs.iter().map(|o| o.1).max().unwrap_or(1).max(1);
    let staging = g.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("test staging"),
        size: (largest * 4) as u64,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    outputs
        .iter()
        .map(|&(buf, n)| {
            let mut out = vec![0.0; n];
            g.read(buf, &staging, &mut out)?;
            Ok(out)
        })
        .collect()
}

/// C (m×n) = op(A)·op(B); `trans_a`: `a` holds A as k×m; `trans_b`: `b` holds B as n×k.
pub fn matmul(
    g: &Opened,
    a: &[f32],
    b: &[f32],
    (m, k, n): (usize, usize, usize),
    trans_a: bool,
    trans_b: bool,
) -> Result<Vec<f32>, GpuError> {
    let (ab, bb, cb) = (input(g, a), input(g, b), input(g, &vec![f32::NAN; m * n]));
    let d = g.matmul([&ab, &bb, &cb], (m, k, n), (trans_a, trans_b), (0, 0, 0));
    Ok(run_and_read(g, d, &[(&cb, m * n)])?.remove(0))
}

/// z (rows×cols) + bias, then ReLU when `relu`.
pub fn bias_act(g: &Opened, z: &[f32], bias: &[f32], relu: bool) -> Result<Vec<f32>, GpuError> {
    let cols = bias.len();
    let (zb, pb) = (input(g, z), input(g, bias));
    let d = g.bias_act([&zb, &pb], (z.len() / cols, cols), 0, relu);
    Ok(run_and_read(g, d, &[(&zb, z.len())])?.remove(0))
}

/// Softmax cross-entropy of logits (rows × classes): (d logits, [loss, correct] per row).
pub fn softmax_ce(g: &Opened, z: &[f32], labels: &[u8]) -> Result<(Vec<f32>, Vec<f32>), GpuError> {
    let rows = labels.len();
    let lab: Vec<f32> = labels.iter().map(|&l| f32::from_bits(u32::from(l))).collect();
    let (zb, lb) = (input(g, z), input(g, &lab));
    let (db, sb) = (input(g, &vec![f32::NAN; z.len()]), input(g, &vec![f32::NAN; 2 * rows]));
    let d = g.softmax_ce([&zb, &lb, &db, &sb], (rows, z.len() / rows));
    let mut out = run_and_read(g, d, &[(&db, z.len()), (&sb, 2 * rows)])?;
    let stats = out.pop().unwrap_or_default();
    Ok((out.pop().unwrap_or_default(), stats))
}

/// Column sums of dz (rows × cols).
pub fn bias_grad(g: &Opened, dz: &[f32], cols: usize) -> Result<Vec<f32>, GpuError> {
    let (db, gb) = (input(g, dz), input(g, &vec![f32::NAN; cols]));
    let d = g.bias_grad([&db, &gb], (dz.len() / cols, cols), 0);
    Ok(run_and_read(g, d, &[(&gb, cols)])?.remove(0))
}

/// d ⊙ [h > 0].
pub fn relu_back(g: &Opened, d: &[f32], h: &[f32]) -> Result<Vec<f32>, GpuError> {
    let (db, hb) = (input(g, d), input(g, h));
    let disp = g.relu_back([&db, &hb], d.len());
    Ok(run_and_read(g, disp, &[(&db, d.len())])?.remove(0))
}

/// One SGD step: (new parameters, new velocity).
pub fn sgd(
    g: &Opened,
    p: &[f32],
    grad: &[f32],
    v: &[f32],
    hyper: (f32, f32, f32),
) -> Result<(Vec<f32>, Vec<f32>), GpuError> {
    let (pb, gb, vb) = (input(g, p), input(g, grad), input(g, v));
    let (d, u) = g.sgd([&pb, &gb, &vb], p.len());
    g.queue.write_buffer(&u, 0, &uniform_bytes(&sgd_words(p.len(), hyper)));
    let mut out = run_and_read(g, d, &[(&pb, p.len()), (&vb, v.len())])?;
    let v = out.pop().unwrap_or_default();
    Ok((out.pop().unwrap_or_default(), v))
}
