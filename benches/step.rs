//! Criterion benchmarks of the hot paths: one training step (on one thread, and on a
//! worker's pool of threads) and one all-reduce.
//! (`ddlab bench` prints the same figures without criterion's statistics.)

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ddlab::comm::AllReduceAlgo;
use ddlab::nn::{flush_denormals, Mlp, Sgd, Workspace};
use ndarray::Array2;

fn training_step(c: &mut Criterion) {
    flush_denormals();
    for sizes in [[64usize, 128, 10], [784, 128, 10]] {
        let mlp = Mlp::new(sizes[0], &sizes[1..2], sizes[2]);
        let batch = 64;
        let x = Array2::from_shape_fn((batch, sizes[0]), |(i, j)| ((i * 31 + j * 7) % 17) as f32 / 17.0);
        let y: Vec<u8> = (0..batch).map(|i| (i % 10) as u8).collect();
        let mut params = vec![0.0; mlp.num_params()];
        mlp.init(&mut params, 1);
        let mut grads = vec![0.0; mlp.num_params()];
        let mut ws = Workspace::new(&mlp, batch);
        let mut sgd = Sgd::new(mlp.num_params(), 0.9, 0.0);
        let name = format!("step {}-{}-{} batch {batch}", sizes[0], sizes[1], sizes[2]);
        c.bench_function(&name, |b| {
            b.iter(|| {
                mlp.loss_and_grad(&params, &x.view(), &y, &mut ws, &mut grads);
                sgd.step(&mut params, &grads, 1e-3);
            })
        });
    }
}

/// One worker's step of MLP 784-1024-10, batch 256, on `--threads` 1, 2 and all cores:
/// the products are large enough for the pool to pay (`ddlab bench` prints the speed-up).
fn training_step_on_threads(c: &mut Criterion) {
    let mut group = c.benchmark_group("step 784-1024-10 batch 256");
    group.sample_size(10);
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
    let counts: Vec<usize> = [1, 2].into_iter().chain((cores > 2).then_some(cores)).collect();
    for threads in counts {
        group.bench_with_input(BenchmarkId::new("threads", threads), &threads, |b, &t| {
            b.iter_custom(|iters| {
                let r = ddlab::bench::bench_steps_on(&[784, 1024, 10], 256, iters as usize, &[t], 1);
                Duration::from_secs_f64(r[0].median_us * 1e-6 * iters as f64)
            })
        });
    }
    group.finish();
}

fn all_reduce(c: &mut Criterion) {
    let mut group = c.benchmark_group("all-reduce 4 MB");
    group.measurement_time(Duration::from_secs(2)).sample_size(10);
    for algo in AllReduceAlgo::FLAT {
        for n in [2usize, 4] {
            group.throughput(Throughput::Bytes(4 << 20));
            group.bench_with_input(BenchmarkId::new(algo.name(), n), &n, |b, &n| {
                b.iter_custom(|iters| {
                    let r = ddlab::bench::bench_allreduce(algo, n, 4 << 20, Duration::from_millis(20));
                    Duration::from_secs_f64(r.time_us * 1e-6 * iters as f64)
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, training_step, training_step_on_threads, all_reduce);
criterion_main!(benches);
