//! Scripted runs: deterministic events for the screen snapshots and the frame benchmark.

use std::sync::Arc;

use super::lab::Lab;
use crate::data::digits;
use crate::session::{AllReduceAlgo, CollectiveKind, Event, Experiment, LrScaling, Mode, Phase, Transfer, WorkerStep};

/// The start of a digits run with the default network (64-128-10), f32 gradients.
pub fn started() -> Event {
    Event::Started {
        params: 9610,
        total_samples: 42240,
        train_len: 1438,
        nodes: 1,
        intra_link: None,
        wire_bytes: 4,
        devices: Vec::new(),
        compress: crate::session::Compress::None,
        compressed_buffers: Vec::new(),
    }
}

pub fn segment(mode: Mode, workers: usize) -> Event {
    Event::Segment {
        index: 0,
        mode,
        workers,
        threads: 1,
        allreduce: AllReduceAlgo::Ring,
        link: None,
        lr_scaling: LrScaling::None,
        lr: 0.1,
        momentum: 0.9,
        update: 0,
        samples: 0,
        params_hash: 0,
        t_ns: 0,
    }
}

pub fn report(worker: usize, step: u64, end_ns: u64, staleness: Option<u64>) -> WorkerStep {
    WorkerStep {
        worker,
        step,
        iteration: step,
        epoch: 0,
        loss: 2.0 / (1.0 + step as f64),
        correct: 10 + step as usize,
        samples: 32,
        grad_norm: 0.8,
        grad_norm_reduced: 0.4,
        lr: 0.1,
        phase_ns: [10_000, 20_000, 30_000, 5_000, 0, 0, 0, 0, 0],
        bytes_sent: 1000,
        idle_ns: 3_000,
        staleness,
        dropped: false,
        lead: staleness.map_or(0, |_| 1),
        allreduce_start_ns: end_ns.saturating_sub(45_000),
        replica_hash: None,
        end_ns,
    }
}

/// A sync run of `workers` workers, `steps` steps scripted phase by phase; the last
/// step stops inside the all-reduce when `mid_all_reduce`.
pub fn sync_lab(workers: usize, steps: u64, mid_all_reduce: bool) -> Lab {
    let exp = Experiment {
        workers,
        ..Default::default()
    };
    sync_lab_on(exp, steps, mid_all_reduce)
}

/// `sync_lab` for `exp`'s workers and device: on a GPU (named "gpu0 demo GPU (vulkan)"),
/// with the copies to and from the host around the all-reduce.
pub fn sync_lab_on(exp: Experiment, steps: u64, mid_all_reduce: bool) -> Lab {
    let workers = exp.workers;
    let gpu = exp.device == crate::session::Device::Gpu;
    let mut start = started();
    if let (Event::Started { devices, .. }, true) = (&mut start, gpu) {
        *devices = vec!["gpu0 demo GPU (vulkan)".into(); workers];
    }
    let mut lab = Lab::replay(exp, Arc::new(digits()));
    lab.apply(&start);
    lab.apply(&segment(Mode::Sync, workers));
    let step_ns = 100_000u64;
    for step in 0..steps {
        let t = step * step_ns;
        for w in 0..workers {
            lab.apply(&Event::Batch {
                worker: w,
                step,
                indices: (0..32).map(|i| (w * 32 + i) as u32).collect(),
            });
            let slow = if w == workers - 1 { 10_000 } else { 0 };
            let cpu = [
                (Phase::Forward, t, t + 20_000 + slow),
                (Phase::Backward, t + 20_000 + slow, t + 50_000 + slow),
                (Phase::AllReduce, t + 50_000 + slow, t + 90_000),
                (Phase::Update, t + 90_000, t + 95_000),
            ];
            let on_gpu = [
                (Phase::Forward, t, t + 20_000 + slow),
                (Phase::Backward, t + 20_000 + slow, t + 40_000 + slow),
                (Phase::ToHost, t + 40_000 + slow, t + 50_000 + slow),
                (Phase::AllReduce, t + 50_000 + slow, t + 80_000),
                (Phase::ToDevice, t + 80_000, t + 90_000),
                (Phase::Update, t + 90_000, t + 95_000),
            ];
            let phases: &[(Phase, u64, u64)] = if gpu { &on_gpu } else { &cpu };
            let last_step = step + 1 == steps;
            for &(phase, start_ns, end_ns) in phases {
                lab.apply(&Event::Phase {
                    worker: w,
                    step,
                    phase,
                    start_ns,
                    end_ns,
                });
                if last_step && mid_all_reduce && phase == Phase::AllReduce {
                    break;
                }
            }
            if !(last_step && mid_all_reduce) {
                lab.apply(&Event::WorkerStep(report(w, step, t + 95_000, None)));
            }
        }
        for w in 0..workers {
            let transfer = Transfer {
                from: w,
                to: (w + 1) % workers,
                chunk: ((w + workers - 1) % workers) as u32,
                round: 0,
                bytes: 9_600,
                start_ns: t + 60_000,
                end_ns: t + 64_000,
            };
            lab.apply(&Event::Transfer {
                step,
                collective: CollectiveKind::AllReduce,
                transfer,
            });
        }
        if step % 5 == 4 {
            lab.apply(&Event::Eval {
                step: step + 1,
                samples: (step + 1) * (workers as u64) * 32,
                epoch: 0,
                test_loss: 0.5,
                test_accuracy: 0.5 + step as f64 / 40.0,
                t_ns: t + 95_000,
            });
        }
    }
    lab
}

/// Median ms to render the lab (for `ddlab bench`) with `workers` scripted workers into a `w`×`h` buffer.
pub fn frame_ms(workers: usize, (w, h): (u16, u16), frames: usize) -> f64 {
    use super::{theme::Theme, view, App, Screen};
    // A long run: the curves hold thousands of records, as after minutes of training.
    let lab = sync_lab(workers, 3000, false);
    let data = std::sync::Arc::clone(&lab.data);
    let app = App::new(
        Screen::Lab,
        Some(lab),
        crate::session::Experiment::default(),
        data,
        Theme { color: true },
    );
    let area = ratatui::layout::Rect::new(0, 0, w, h);
    let times: Vec<f64> = (0..frames)
        .map(|_| {
            let mut buf = ratatui::buffer::Buffer::empty(area);
            let t = std::time::Instant::now();
            view::render(&app, area, &mut buf);
            std::hint::black_box(&buf);
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    crate::nn::median(times)
}
