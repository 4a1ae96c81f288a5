//! The GPU path (cargo feature `gpu`): every kernel against the CPU's implementation on
//! small shapes (sizes that are not multiples of the workgroup's among them), a whole
//! network's steps against the CPU's, training through the engine, and the faults.
//!
//! CI runs these on Mesa's software Vulkan driver (lavapipe) with `WGPU_BACKEND=vulkan`
//! and `DDLAB_GPU_ADAPTER=llvmpipe`, so that a silent fallback to another adapter fails.
#![cfg(feature = "gpu")]

mod common;

use std::sync::Arc;

use assert_cmd::Command;
use common::relative_difference;
use ddlab::config::Device;
use ddlab::config::{Experiment, Length, Mode};
use ddlab::data::{digits, Dataset};
use ddlab::gpu::{self, kernels};
use ddlab::nn::linalg::matmul_into;
use ddlab::nn::{check_close, softmax_cross_entropy, Mlp, Sgd, Workspace};
use ddlab::session::{Session, SessionOptions};
use ddlab::train::{Event, Outcome, Phase};
use ndarray::{Array2, ArrayView2};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn gpu0() -> Arc<gpu::Opened> {
    gpu::open(0).unwrap_or_else(|e| panic!("a GPU (lavapipe in CI) is needed for these tests: {e}"))
}

fn random(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0..1.0)).collect()
}

#[test]
fn the_adapter_is_the_one_asked_for() {
    let found = gpu::list().expect("a GPU");
    let first = &found[0];
    eprintln!(
        "GPU tests run on {} [{}; driver {}]",
        first.label(),
        first.kind,
        first.driver
    );
    if let Ok(want) = std::env::var("DDLAB_GPU_ADAPTER") {
        assert!(
            first.name.to_lowercase().contains(&want.to_lowercase()),
            "expected adapter '{want}', got {}",
            first.label()
        );
    }
    if let Ok(backend) = std::env::var("WGPU_BACKEND") {
        assert!(found.iter().all(|g| g.backend == backend.to_lowercase()), "{found:?}");
    }
    assert_eq!(gpu0().info, *first);
}

#[test]
fn matmul_matches_the_cpu_in_every_orientation_and_odd_shape() {
    let g = gpu0();
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for (m, k, n) in [
        (1, 1, 1),
        (7, 5, 3),
        (64, 16, 64),
        (65, 17, 130),
        (33, 200, 70),
        (3, 129, 1),
    ] {
        let a = random(&mut rng, m * k);
        let b = random(&mut rng, k * n);
        let av = ArrayView2::from_shape((m, k), &a).unwrap();
        let bv = ArrayView2::from_shape((k, n), &b).unwrap();
        let mut want = Array2::<f32>::zeros((m, n));
        matmul_into(&mut want.view_mut(), &av, &bv, false);
        let want = want.as_slice().unwrap();
        // The same product with A and/or B stored transposed.
        let at: Vec<f32> = av.t().iter().copied().collect();
        let bt: Vec<f32> = bv.t().iter().copied().collect();
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let (aa, bb) = (if ta { &at } else { &a }, if tb { &bt } else { &b });
            let got = kernels::matmul(&g, aa, bb, (m, k, n), ta, tb).unwrap();
            check_close(&format!("{m}×{k}·{k}×{n} trans {ta}/{tb}"), &got, want, 1e-5, 1e-5);
        }
    }
}

#[test]
fn bias_relu_and_its_backward_match_the_cpu() {
    let g = gpu0();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for (rows, cols) in [(1, 1), (3, 300), (257, 5)] {
        let z = random(&mut rng, rows * cols);
        let b = random(&mut rng, cols);
        for relu in [false, true] {
            let want: Vec<f32> = z
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    let v = v + b[i % cols];
                    if relu {
                        v.max(0.0)
                    } else {
                        v
                    }
                })
                .collect();
            let got = kernels::bias_act(&g, &z, &b, relu).unwrap();
            assert_eq!(got, want, "bias (relu {relu}) on {rows}×{cols}");
        }
        let d = random(&mut rng, rows * cols);
        let want: Vec<f32> = d
            .iter()
            .zip(&z)
            .map(|(&d, &h)| d * f32::from(u8::from(h > 0.0)))
            .collect();
        assert_eq!(
            kernels::relu_back(&g, &d, &z).unwrap(),
            want,
            "relu backward {rows}×{cols}"
        );
        let sums: Vec<f32> = (0..cols).map(|j| (0..rows).map(|r| d[r * cols + j]).sum()).collect();
        check_close(
            &format!("bias gradient {rows}×{cols}"),
            &kernels::bias_grad(&g, &d, cols).unwrap(),
            &sums,
            1e-5,
            1e-5,
        );
    }
}

#[test]
fn softmax_cross_entropy_matches_the_cpu() {
    let g = gpu0();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    for (rows, classes) in [(1, 2), (5, 10), (67, 3)] {
        let z: Vec<f32> = random(&mut rng, rows * classes).iter().map(|v| v * 8.0).collect();
        let labels: Vec<u8> = (0..rows).map(|_| rng.random_range(0..classes) as u8).collect();
        let zv = ArrayView2::from_shape((rows, classes), &z).unwrap();
        let mut want = Array2::<f32>::zeros((rows, classes));
        let score = softmax_cross_entropy(&zv, &labels, Some(&mut want.view_mut()));
        let (d, stats) = kernels::softmax_ce(&g, &z, &labels).unwrap();
        check_close(
            &format!("d logits {rows}×{classes}"),
            &d,
            want.as_slice().unwrap(),
            1e-6,
            1e-4,
        );
        let loss: f64 = stats.chunks(2).map(|s| f64::from(s[0])).sum();
        let correct = stats.chunks(2).filter(|s| s[1] > 0.5).count();
        assert!(
            (loss - score.loss_sum).abs() <= 1e-4 * score.loss_sum.abs().max(1.0),
            "{loss} vs {}",
            score.loss_sum
        );
        assert_eq!(correct, score.correct);
    }
}

#[test]
fn sgd_with_momentum_and_weight_decay_matches_the_cpu() {
    let g = gpu0();
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for n in [1, 255, 1000] {
        let mut p = random(&mut rng, n);
        let grad = random(&mut rng, n);
        let v0 = random(&mut rng, n);
        let (gp, gv) = kernels::sgd(&g, &p, &grad, &v0, (0.1, 0.9, 0.01)).unwrap();
        let mut sgd = Sgd::new(n, 0.9, 0.01);
        sgd.set_velocity(&v0);
        sgd.step(&mut p, &grad, 0.1);
        check_close(&format!("sgd parameters, {n}"), &gp, &p, 1e-6, 1e-6);
        check_close(&format!("sgd velocity, {n}"), &gv, sgd.velocity(), 1e-6, 1e-6);
    }
}

#[test]
fn twenty_gpu_steps_equal_twenty_cpu_steps() {
    let g = gpu0();
    let data = digits();
    // Two hidden layers of odd widths; a batch that is not a multiple of 64.
    let mlp = Mlp::new(data.inputs(), &[37, 19], data.classes);
    let batch = 29;
    let mut cpu_params = vec![0.0; mlp.num_params()];
    mlp.init(&mut cpu_params, 5);
    let mut net = gpu::GpuNet::new(Arc::clone(&g), &mlp, batch).unwrap();
    net.set_params(&cpu_params).unwrap();
    net.set_velocity(&vec![0.0; mlp.num_params()]).unwrap();
    let mut sgd = Sgd::new(mlp.num_params(), 0.9, 1e-4);
    let mut ws = Workspace::new(&mlp, batch);
    let (mut cpu_grads, mut gpu_grads) = (vec![0.0; mlp.num_params()], vec![0.0; mlp.num_params()]);
    for step in 0..20 {
        let rows: Vec<usize> = (0..batch).map(|i| (step * batch + i) % data.train_len()).collect();
        let x: Vec<f32> = rows.iter().flat_map(|&r| data.train_x.row(r).to_vec()).collect();
        let labels: Vec<u8> = rows.iter().map(|&r| data.train_y[r]).collect();
        let xv = ArrayView2::from_shape((batch, mlp.inputs()), &x).unwrap();
        let cpu = mlp.loss_and_grad(&cpu_params, &xv, &labels, &mut ws, &mut cpu_grads);
        let gpu_score = net.forward(&x, &labels).unwrap();
        net.backward().unwrap();
        net.grads_to_host(&mut gpu_grads).unwrap();
        assert!(
            (gpu_score.mean_loss() - cpu.mean_loss()).abs() < 1e-4,
            "step {step} loss"
        );
        assert!(
            relative_difference(&gpu_grads, &cpu_grads).0 < 1e-4,
            "step {step} gradient"
        );
        // The host's gradient goes back (as after an all-reduce) and both update.
        net.grads_to_device(&cpu_grads).unwrap();
        net.update(0.05, 0.9, 1e-4).unwrap();
        sgd.step(&mut cpu_params, &cpu_grads, 0.05);
    }
    let mut gpu_params = vec![0.0; mlp.num_params()];
    net.params(&mut gpu_params).unwrap();
    let rel = relative_difference(&gpu_params, &cpu_params).0;
    eprintln!("after 20 steps the GPU's parameters differ from the CPU's by {rel:.2e} (relative)");
    assert!(rel < 1e-4, "after 20 steps: {rel:e}");
}

/// Trains `exp` to the end: the session, and every event it sent.
fn run(exp: Experiment, data: &Arc<Dataset>) -> (Session, Vec<Event>) {
    let mut s = Session::start_with_data(exp, Arc::clone(data), SessionOptions::default(), None).expect("valid");
    let mut events = Vec::new();
    let outcome = s.run_to_end(|e| events.push(e.clone()));
    assert_eq!(outcome, Outcome::Completed);
    (s, events)
}

fn accuracy(s: &Session) -> f64 {
    s.state().last_eval().expect("an evaluation").test_accuracy
}

#[test]
fn sync_training_on_the_gpu_follows_the_cpu_and_shows_the_copies() {
    let data = Arc::new(digits());
    let exp = Experiment {
        workers: 2,
        hidden: vec![32],
        batch: 16,
        length: Length::Steps(20),
        eval_every: 1000,
        ..Experiment::default()
    };
    let (cpu, cpu_events) = run(exp.clone(), &data);
    let (on_gpu, events) = run(
        Experiment {
            device: Device::Gpu,
            ..exp
        },
        &data,
    );
    let (c, g) = (cpu.final_params().unwrap(), on_gpu.final_params().unwrap());
    let rel = relative_difference(&g, &c).0;
    assert!(rel < 1e-4, "2 workers, 20 steps: GPU vs CPU {rel:e}");
    // The copies are phases of their own, on the GPU run only.
    let phases = |events: &[Event], p: Phase| {
        events
            .iter()
            .filter(|e| matches!(e, Event::Phase { phase, .. } if *phase == p))
            .count()
    };
    assert_eq!(phases(&events, Phase::ToHost), 40);
    assert_eq!(phases(&events, Phase::ToDevice), 40);
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::Started { devices, .. } if devices.iter().all(|d| d.starts_with("gpu0")))));
    assert_eq!(phases(&cpu_events, Phase::ToHost), 0);
}

#[test]
fn parameter_server_modes_run_on_the_gpu() {
    let data = Arc::new(digits());
    for mode in [Mode::Async, Mode::Backup(1)] {
        let exp = Experiment {
            workers: 3,
            mode,
            hidden: vec![32],
            lr: 0.05,
            momentum: 0.5,
            length: Length::Steps(150),
            device: Device::Gpu,
            ..Experiment::default()
        };
        let (s, events) = run(exp, &data);
        assert!(accuracy(&s) > 0.85, "{mode:?}: {}", accuracy(&s));
        assert!(events.iter().any(|e| matches!(
            e,
            Event::Phase {
                phase: Phase::ToHost,
                ..
            }
        )));
    }
}

/// Local SGD and compressed gradients run on the GPU as on the CPU: the same replicas'
/// average every H steps, the same top-k and low-rank exchanges with error feedback, so
/// the final parameters follow the CPU's.
#[test]
fn local_sgd_and_compressed_gradients_on_the_gpu_follow_the_cpu() {
    use ddlab::comm::Compress;
    let data = Arc::new(digits());
    for (mode, compress) in [
        (Mode::Local(4), Compress::None),
        (Mode::Sync, "topk:1".parse::<Compress>().unwrap()),
        (Mode::Sync, "powersgd:2".parse::<Compress>().unwrap()),
    ] {
        let exp = Experiment {
            workers: 2,
            hidden: vec![32],
            batch: 16,
            mode,
            compress,
            length: Length::Steps(24),
            eval_every: 1000,
            ..Experiment::default()
        };
        let cpu = run(exp.clone(), &data).0;
        let on_gpu = run(
            Experiment {
                device: Device::Gpu,
                ..exp
            },
            &data,
        )
        .0;
        let rel = relative_difference(&on_gpu.final_params().unwrap(), &cpu.final_params().unwrap()).0;
        assert!(rel < 1e-4, "{mode} {compress:?}: GPU vs CPU {rel:e}");
    }
}

#[test]
fn digits_reach_the_same_accuracy_on_the_gpu_as_on_the_cpu() {
    let data = Arc::new(digits());
    let exp = Experiment {
        workers: 2,
        length: Length::Epochs(10),
        ..Experiment::default()
    };
    let cpu = accuracy(&run(exp.clone(), &data).0);
    let on_gpu = accuracy(
        &run(
            Experiment {
                device: Device::Gpu,
                ..exp
            },
            &data,
        )
        .0,
    );
    eprintln!("digits, 2 workers, 10 epochs: test accuracy CPU {cpu:.4}, GPU {on_gpu:.4}");
    assert!(on_gpu > 0.93 && (on_gpu - cpu).abs() < 0.01, "CPU {cpu}, GPU {on_gpu}");
}

#[test]
fn no_adapter_is_one_sentence_and_exit_code_2() {
    let out = Command::cargo_bin("ddlab")
        .unwrap()
        .args(["run", "--device", "gpu", "--steps", "2"])
        .env("WGPU_BACKEND", "vulkan")
        .env("VK_ICD_FILENAMES", "/nonexistent")
        .env("VK_DRIVER_FILES", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no GPU found") && err.contains("--device cpu"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_gpu_that_does_not_exist_is_refused() {
    let out = Command::cargo_bin("ddlab")
        .unwrap()
        .args(["run", "--device", "gpu", "--gpus", "7", "--steps", "2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--gpus: there is no GPU 7"), "{err}");
}

#[test]
fn a_fused_step_computes_what_the_phased_step_does() {
    let g = gpu0();
    let data = digits();
    let mlp = Mlp::new(data.inputs(), &[23], data.classes);
    let batch = 13;
    let mut params = vec![0.0; mlp.num_params()];
    mlp.init(&mut params, 9);
    let zeros = vec![0.0; mlp.num_params()];
    let mut phased = gpu::GpuNet::new(Arc::clone(&g), &mlp, batch).unwrap();
    let mut fused = gpu::GpuNet::new(Arc::clone(&g), &mlp, batch).unwrap();
    for net in [&phased, &fused] {
        net.set_params(&params).unwrap();
        net.set_velocity(&zeros).unwrap();
    }
    let (mut a, mut b) = (vec![0.0; mlp.num_params()], vec![0.0; mlp.num_params()]);
    for step in 0..5 {
        let rows: Vec<usize> = (0..batch).map(|i| step * batch + i).collect();
        let x: Vec<f32> = rows.iter().flat_map(|&r| data.train_x.row(r).to_vec()).collect();
        let labels: Vec<u8> = rows.iter().map(|&r| data.train_y[r]).collect();
        let s1 = phased.forward(&x, &labels).unwrap();
        phased.backward().unwrap();
        phased.grads_to_host(&mut a).unwrap();
        a.iter_mut().for_each(|v| *v *= 0.5); // an "all-reduce" that halves
        phased.grads_to_device(&a).unwrap();
        phased.update(0.1, 0.9, 0.0).unwrap();
        let s2 = fused
            .fused_step(
                &x,
                &labels,
                &mut b,
                |g| g.iter_mut().for_each(|v| *v *= 0.5),
                (0.1, 0.9, 0.0),
            )
            .unwrap();
        assert_eq!(s1, s2, "step {step}: the same score");
        assert_eq!(a, b, "step {step}: the same gradient");
    }
    phased.params(&mut a).unwrap();
    fused.params(&mut b).unwrap();
    assert_eq!(a, b, "the same parameters after 5 steps");
}
