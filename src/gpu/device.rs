//! Finding GPUs and opening them: discovery (once per process, in `--gpus` order), the
//! limits ddlab needs, one `Opened` device per GPU shared by its workers, and the
//! buffers, submissions and copies every kernel and network uses; the copy benchmark.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};

use wgpu::util::DeviceExt;

use super::kernels::{uniform_bytes, Kernels};
use super::GpuInfo;
use crate::nn::Mlp;

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

/// One GPU, opened: shared by the workers that use it (each with its own buffers).
pub struct Opened {
    pub info: GpuInfo,
    pub(super) device: wgpu::Device,
    pub(super) queue: wgpu::Queue,
    pub(super) kernels: Kernels,
    /// The first error the device reported on its own (validation, out of memory, lost).
    pub(super) fault: Arc<Mutex<Option<String>>>,
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
impl Opened {
    pub(super) fn storage(&self, label: &str, floats: usize, extra: wgpu::BufferUsages) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: (floats.max(1) * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE | extra,
            mapped_at_creation: false,
        })
    }

    pub(super) fn uniform(&self, words: &[u32]) -> wgpu::Buffer {
        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("params of a dispatch"),
            contents: &uniform_bytes(words),
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        })
    }

    // One constructor per kernel: its parameters, its grid. (A bind group keeps the
    // buffers it binds alive, the uniform made here among them.)

    pub(super) fn encoder(&self) -> wgpu::CommandEncoder {
        self.device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
    }

    /// Submits `encoder` and waits until the GPU has run it.
    pub(super) fn run(&self, encoder: wgpu::CommandEncoder) -> Result<(), GpuError> {
        let index = self.queue.submit([encoder.finish()]);
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(index),
                timeout: None,
            })
            .map_err(|e| GpuError(format!("{}: {e}", self.info.label())))?;
        self.check()
    }

    pub(super) fn check(&self) -> Result<(), GpuError> {
        match self.fault.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            Some(msg) => Err(GpuError(format!("{}: {msg}", self.info.label()))),
            None => Ok(()),
        }
    }

    /// Copies the first `out.len()` floats of `src` into `out` through `staging`
    /// (a MAP_READ buffer at least as large).
    pub(super) fn read(&self, src: &wgpu::Buffer, staging: &wgpu::Buffer, out: &mut [f32]) -> Result<(), GpuError> {
        self.read_after(self.encoder(), &mut [(src, out)], staging)
    }

    /// Like `read`, for several buffers at once (one after the other in `staging`), after
    /// the commands already in `encoder`: one submission for all of it.
    pub(super) fn read_after(
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
    pub(super) fn write(&self, dst: &wgpu::Buffer, data: &[f32]) -> Result<(), GpuError> {
        self.queue.write_buffer(dst, 0, bytemuck::cast_slice(data));
        self.run(self.encoder())
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
