//! The wgpu side: finding GPUs, opening them once per process, and a worker's network in
//! GPU buffers with the kernels that train it.
//!
//! Every phase is one command encoder and one submission that the host waits for, so
//! each is timed like the CPU's phases are: forward (batch upload, every layer, the loss,
//! and the loss figures back), backward (every layer's gradient into the flat gradient
//! buffer), to-host (the gradient into host memory), to-device (the all-reduced gradient
//! back) and update (SGD with momentum on the GPU's own parameters).

use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

use wgpu::util::DeviceExt;

use super::GpuInfo;
use crate::nn::{BatchScore, Mlp};

/// A GPU failure, as one sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct GpuError(pub String);

/// The adapters found, once per process, in `list` order.
struct Found {
    adapters: Vec<wgpu::Adapter>,
    infos: Vec<GpuInfo>,
}

fn found() -> &'static Result<Found, String> {
    static FOUND: OnceLock<Result<Found, String>> = OnceLock::new();
    FOUND.get_or_init(discover)
}

/// Backends to search: `WGPU_BACKEND` (e.g. vulkan) when set, else every one built in.
fn backends() -> wgpu::Backends {
    wgpu::Backends::from_env().unwrap_or(wgpu::Backends::all())
}

fn discover() -> Result<Found, String> {
    let backends = backends();
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends;
    let instance = wgpu::Instance::new(desc);
    let all = pollster::block_on(instance.enumerate_adapters(backends));
    // Only adapters that run compute shaders (some GL drivers cannot).
    let mut usable: Vec<wgpu::Adapter> = all
        .into_iter()
        .filter(|a| {
            a.get_downlevel_capabilities()
                .flags
                .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
        })
        .collect();
    let is_gl = |a: &wgpu::Adapter| a.get_info().backend == wgpu::Backend::Gl;
    if usable.iter().any(|a| !is_gl(a)) {
        usable.retain(|a| !is_gl(a)); // the same GPU again through GL
    }
    let is_soft = |a: &wgpu::Adapter| a.get_info().device_type == wgpu::DeviceType::Cpu;
    if usable.iter().any(|a| !is_soft(a)) {
        usable.retain(|a| !is_soft(a)); // lavapipe beside a real GPU
    }
    let rank = |a: &wgpu::Adapter| match a.get_info().device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    usable.sort_by_key(rank);
    if usable.is_empty() {
        let looked = if std::env::var_os("WGPU_BACKEND").is_some() {
            let names: Vec<&str> = [
                (wgpu::Backends::VULKAN, "Vulkan"),
                (wgpu::Backends::METAL, "Metal"),
                (wgpu::Backends::DX12, "DX12"),
                (wgpu::Backends::GL, "GL"),
            ]
            .iter()
            .filter(|(b, _)| backends.contains(*b))
            .map(|&(_, name)| name)
            .collect();
            format!("{} (as WGPU_BACKEND says)", names.join(" and "))
        } else {
            "Vulkan, Metal, DX12 and GL".to_string()
        };
        return Err(format!(
            "--device gpu: no GPU found (wgpu looked for {looked} adapters that run compute shaders): install your GPU's Vulkan driver (Debian/Ubuntu without a GPU: apt-get install mesa-vulkan-drivers libvulkan1 gives a software one), or use --device cpu"
        ));
    }
    let infos = usable
        .iter()
        .enumerate()
        .map(|(index, a)| {
            let i = a.get_info();
            GpuInfo {
                index,
                name: i.name.clone(),
                backend: i.backend.to_str().to_string(),
                kind: match i.device_type {
                    wgpu::DeviceType::DiscreteGpu => "discrete",
                    wgpu::DeviceType::IntegratedGpu => "integrated",
                    wgpu::DeviceType::VirtualGpu => "virtual",
                    wgpu::DeviceType::Cpu => "cpu",
                    wgpu::DeviceType::Other => "other",
                }
                .to_string(),
                driver: [i.driver.as_str(), i.driver_info.as_str()]
                    .iter()
                    .filter(|s| !s.is_empty())
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" "),
            }
        })
        .collect();
    Ok(Found {
        adapters: usable,
        infos,
    })
}

pub(super) fn list() -> Result<Vec<GpuInfo>, String> {
    found().as_ref().map(|f| f.infos.clone()).map_err(Clone::clone)
}

/// The limits ddlab asks every GPU for: WebGPU's defaults, which Metal, DX12, Vulkan
/// and lavapipe all meet (the adapter may offer more; asking for more would break on the
/// smaller ones).
fn needed_limits() -> wgpu::Limits {
    wgpu::Limits::default()
}

/// Checks that `mlp` at `batch` rows fits the buffers every GPU allows.
pub(super) fn fits(mlp: &Mlp, batch: usize) -> Result<(), String> {
    let limit = needed_limits().max_storage_buffer_binding_size;
    let widest = mlp.sizes().iter().copied().max().unwrap_or(1);
    for (what, floats) in [
        ("the parameters", mlp.num_params()),
        ("a layer's activations", batch * widest),
    ] {
        let bytes = floats as u64 * 4;
        if bytes > limit {
            return Err(format!(
                "--device gpu: {what} take {}, over the {} one GPU buffer may hold on every GPU (WebGPU's default limit): use a smaller --hidden or --batch, or --device cpu",
                crate::units::bytes(bytes),
                crate::units::bytes(limit)
            ));
        }
    }
    Ok(())
}

/// Refuses, in one sentence naming each limit that falls short, a GPU whose limits are
/// below what ddlab asks for.
fn check_limits(info: &GpuInfo, offered: &wgpu::Limits) -> Result<(), GpuError> {
    let mut short = Vec::new();
    needed_limits().check_limits_with_fail_fn(offered, false, |name, wanted, allowed| {
        short.push(format!("{name} is {allowed}, ddlab needs {wanted}"));
    });
    if short.is_empty() {
        return Ok(());
    }
    Err(GpuError(format!(
        "--device gpu: {} lacks what ddlab needs ({}; WebGPU's default limits): update its driver, pick another GPU with --gpus, or use --device cpu",
        info.label(),
        short.join(", ")
    )))
}

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
struct Kernels(Vec<wgpu::ComputePipeline>);

impl Kernels {
    fn new(device: &wgpu::Device) -> Kernels {
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

/// One GPU, opened: shared by the workers that use it (each with its own buffers).
pub struct Opened {
    pub info: GpuInfo,
    device: wgpu::Device,
    queue: wgpu::Queue,
    kernels: Kernels,
    /// The first error the device reported on its own (validation, out of memory, lost).
    fault: Arc<Mutex<Option<String>>>,
}

/// Opens GPU `index` of `list` (once per process; later calls share it).
pub fn open(index: usize) -> Result<Arc<Opened>, GpuError> {
    static OPEN: Mutex<Vec<Option<Arc<Opened>>>> = Mutex::new(Vec::new());
    let found = found().as_ref().map_err(|e| GpuError(e.clone()))?;
    let adapter = found.adapters.get(index).ok_or_else(|| {
        GpuError(format!(
            "--gpus: there is no GPU {index}: this machine has {}",
            found.adapters.len()
        ))
    })?;
    let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
    if open.len() <= index {
        open.resize(index + 1, None);
    }
    if let Some(o) = &open[index] {
        return Ok(Arc::clone(o));
    }
    let info = found.infos[index].clone();
    check_limits(&info, &adapter.limits())?;
    let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
        label: Some("ddlab"),
        required_features: wgpu::Features::empty(),
        required_limits: needed_limits(),
        experimental_features: wgpu::ExperimentalFeatures::disabled(),
        memory_hints: wgpu::MemoryHints::Performance,
        trace: wgpu::Trace::Off,
    }))
    .map_err(|e| {
        GpuError(format!(
            "--device gpu: {} could not be opened: {e}; update its driver, pick another GPU with --gpus, or use --device cpu",
            info.label()
        ))
    })?;
    let fault: Arc<Mutex<Option<String>>> = Arc::default();
    device.on_uncaptured_error(Arc::new({
        let fault = Arc::clone(&fault);
        move |e: wgpu::Error| {
            let mut f = fault.lock().unwrap_or_else(|e| e.into_inner());
            f.get_or_insert_with(|| e.to_string().lines().next().unwrap_or("").to_string());
        }
    }));
    device.set_device_lost_callback({
        let fault = Arc::clone(&fault);
        move |_, msg| {
            let mut f = fault.lock().unwrap_or_else(|e| e.into_inner());
            f.get_or_insert_with(|| format!("the GPU was lost: {msg}"));
        }
    });
    let kernels = Kernels::new(&device);
    let opened = Arc::new(Opened {
        info,
        device,
        queue,
        kernels,
        fault,
    });
    open[index] = Some(Arc::clone(&opened));
    Ok(opened)
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
fn uniform_bytes(words: &[u32]) -> Vec<u8> {
    let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    bytes.resize(32, 0);
    bytes
}

/// The SGD kernel's parameters: length, learning rate, momentum, weight decay.
fn sgd_words(n: usize, (lr, momentum, weight_decay): (f32, f32, f32)) -> [u32; 4] {
    [n as u32, lr.to_bits(), momentum.to_bits(), weight_decay.to_bits()]
}

impl Dispatch {
    fn named(mut self, label: String) -> Dispatch {
        self.label = label;
        self
    }
}

/// One recorded dispatch: a kernel, its bindings, its grid.
struct Dispatch {
    /// What it computes, for `kernel_times`: e.g. `matmul 256×784 · 784×1024`.
    label: String,
    kernel: Kernel,
    bind: wgpu::BindGroup,
    groups: (u32, u32),
}

impl Opened {
    fn storage(&self, label: &str, floats: usize, extra: wgpu::BufferUsages) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (floats.max(1) * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE | extra,
            mapped_at_creation: false,
        })
    }

    fn uniform(&self, words: &[u32]) -> wgpu::Buffer {
        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("params of a dispatch"),
            contents: &uniform_bytes(words),
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        })
    }

    // One constructor per kernel: its parameters, its grid. (A bind group keeps the
    // buffers it binds alive, the uniform made here among them.)

    /// C (m×n) = op(A)·op(B) from `[a, b, c]` at element offsets `offsets`; `trans`:
    /// whether `a` holds A as k×m and `b` holds B as n×k.
    fn matmul(
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
    fn bias_act(
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
    fn softmax_ce(&self, [z, labels, dz, stats]: [&wgpu::Buffer; 4], (rows, classes): (usize, usize)) -> Dispatch {
        let u = self.uniform(&[rows as u32, classes as u32, (1.0 / rows as f32).to_bits()]);
        self.dispatch(
            Kernel::SoftmaxCe,
            &[z, labels, dz, stats, &u],
            (groups_for(rows, 64), 1),
        )
    }

    /// The column sums of dz (rows × cols) into `grads` at `out_off`.
    fn bias_grad(&self, [dz, grads]: [&wgpu::Buffer; 2], (rows, cols): (usize, usize), out_off: usize) -> Dispatch {
        let u = self.uniform(&[rows as u32, cols as u32, out_off as u32]);
        self.dispatch(Kernel::BiasGrad, &[dz, grads, &u], (cols.div_ceil(16) as u32, 1))
    }

    /// d ⊙= [h > 0] over `n` elements.
    fn relu_back(&self, [d, h]: [&wgpu::Buffer; 2], n: usize) -> Dispatch {
        let u = self.uniform(&[n as u32]);
        self.dispatch(Kernel::ReluBack, &[d, h, &u], (groups_for(n, 256), 1))
    }

    /// One SGD step over `n` parameters, and the uniform its learning rate, momentum and
    /// weight decay are written into (`sgd_words`) before each run.
    fn sgd(&self, [p, g, v]: [&wgpu::Buffer; 3], n: usize) -> (Dispatch, wgpu::Buffer) {
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
    fn record(&self, encoder: &mut wgpu::CommandEncoder, dispatches: &[&Dispatch]) {
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor::default());
        for d in dispatches {
            pass.set_pipeline(self.kernels.get(d.kernel));
            pass.set_bind_group(0, &d.bind, &[]);
            pass.dispatch_workgroups(d.groups.0, d.groups.1, 1);
        }
    }

    fn encoder(&self) -> wgpu::CommandEncoder {
        self.device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
    }

    /// Submits `encoder` and waits until the GPU has run it.
    fn run(&self, encoder: wgpu::CommandEncoder) -> Result<(), GpuError> {
        let index = self.queue.submit([encoder.finish()]);
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(index),
                timeout: None,
            })
            .map_err(|e| GpuError(format!("{}: {e}", self.info.label())))?;
        self.check()
    }

    fn check(&self) -> Result<(), GpuError> {
        match self.fault.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some(msg) => Err(GpuError(format!("{}: {msg}", self.info.label()))),
            None => Ok(()),
        }
    }

    /// Copies the first `out.len()` floats of `src` into `out` through `staging`
    /// (a MAP_READ buffer at least as large).
    fn read(&self, src: &wgpu::Buffer, staging: &wgpu::Buffer, out: &mut [f32]) -> Result<(), GpuError> {
        self.read_after(self.encoder(), &mut [(src, out)], staging)
    }

    /// Like `read`, for several buffers at once (one after the other in `staging`), after
    /// the commands already in `encoder`: one submission for all of it.
    fn read_after(
        &self,
        mut encoder: wgpu::CommandEncoder,
        parts: &mut [(&wgpu::Buffer, &mut [f32])],
        staging: &wgpu::Buffer,
    ) -> Result<(), GpuError> {
        let mut bytes = 0u64;
        for (src, out) in parts.iter() {
            let len = (out.len() * 4) as u64;
            if len > 0 {
                encoder.copy_buffer_to_buffer(src, 0, staging, bytes, len);
            }
            bytes += len;
        }
        if bytes == 0 {
            return Ok(());
        }
        self.queue.submit([encoder.finish()]);
        let slice = staging.slice(0..bytes);
        let (tx, rx) = mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError(format!("{}: {e}", self.info.label())))?;
        rx.recv()
            .map_err(|_| GpuError(format!("{}: a copy to the host never finished", self.info.label())))?
            .map_err(|e| GpuError(format!("{}: a copy to the host failed: {e}", self.info.label())))?;
        {
            let view = slice
                .get_mapped_range()
                .map_err(|e| GpuError(format!("{}: a copy to the host failed: {e}", self.info.label())))?;
            let mut floats: &[f32] = bytemuck::cast_slice(&view);
            for (_, out) in parts.iter_mut() {
                let (mine, rest) = floats.split_at(out.len());
                out.copy_from_slice(mine);
                floats = rest;
            }
        }
        staging.unmap();
        self.check()
    }

    /// Writes `data` into `dst` and waits until it is there.
    fn write(&self, dst: &wgpu::Buffer, data: &[f32]) -> Result<(), GpuError> {
        self.queue.write_buffer(dst, 0, bytemuck::cast_slice(data));
        self.run(self.encoder())
    }
}

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

/// Host → device and device → host bandwidth (GB/s) for a buffer of `bytes`, each the
/// median of `trials` timed copies (submitted and waited for, as training does).
pub fn copy_bandwidth(gpu: &Opened, bytes: usize, trials: usize) -> Result<(f64, f64), GpuError> {
    let floats = bytes / 4;
    let host = vec![1.0f32; floats];
    let mut back = vec![0.0f32; floats];
    let rw = wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::COPY_SRC;
    let dev = gpu.storage("copy bench", floats, rw);
    let staging = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("copy bench staging"),
        size: (floats.max(1) * 4) as u64,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for i in 0..trials.max(1) + 1 {
        let t = std::time::Instant::now();
        gpu.write(&dev, &host)?;
        let t_up = t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        gpu.read(&dev, &staging, &mut back)?;
        let t_down = t.elapsed().as_secs_f64();
        if i > 0 {
            up.push(bytes as f64 / t_up / 1e9); // after one warm-up copy each way
            down.push(bytes as f64 / t_down / 1e9);
        }
    }
    Ok((crate::nn::median(up), crate::nn::median(down)))
}

/// Each kernel on its own, for tests against the CPU: host data in, host data out.
pub mod kernels {
    use super::*;

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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gpu_below_the_default_limits_is_refused_by_name() {
        let info = GpuInfo {
            index: 1,
            name: "Old GPU".into(),
            backend: "gl".into(),
            kind: "integrated".into(),
            driver: String::new(),
        };
        assert_eq!(check_limits(&info, &wgpu::Limits::default()), Ok(()));
        // WebGL2-class hardware has no storage buffers in compute shaders.
        let e = check_limits(&info, &wgpu::Limits::downlevel_webgl2_defaults())
            .unwrap_err()
            .0;
        assert!(
            e.starts_with("--device gpu: gpu1 Old GPU (gl) lacks what ddlab needs ("),
            "{e}"
        );
        assert!(
            e.contains("max_storage_buffers_per_shader_stage is 0, ddlab needs 8"),
            "{e}"
        );
        assert!(e.contains("--device cpu") && !e.contains('\n'), "{e}");
    }

    #[test]
    fn a_network_too_large_for_one_buffer_is_refused() {
        let e = fits(&Mlp::new(784, &[16_384, 16_384], 10), 64).unwrap_err();
        assert!(e.contains("the parameters take 1.0 GiB, over the 128 MiB"), "{e}");
        let default = crate::config::Experiment::default();
        assert!(fits(&Mlp::new(784, &default.hidden, 10), default.batch).is_ok());
    }
}
