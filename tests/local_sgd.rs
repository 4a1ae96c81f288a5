//! Local SGD (`--mode local:H`): what averaging parameters every H steps promises.

use std::collections::BTreeMap;
use std::sync::Arc;

mod common;

use common::relative_difference;
use ddlab::comm::AllReduceAlgo;
use ddlab::config::{Experiment, Length, Mode};
use ddlab::data::{digits, Dataset, Sharder};
use ddlab::nn::{Mlp, Sgd, Workspace};
use ddlab::session::{Session, SessionOptions};
use ddlab::train::{Control, Event, Outcome, WorkerStep};

/// Runs `exp` to completion; returns the final parameters and every worker's reports.
fn train(exp: Experiment, data: &Arc<Dataset>) -> (Vec<f32>, Vec<WorkerStep>) {
    let mut s =
        Session::start_with_data(exp, Arc::clone(data), SessionOptions::default(), None).expect("valid experiment");
    let mut reports = Vec::new();
    let outcome = s.run_to_end(|e| {
        if let Event::WorkerStep(r) = e {
            reports.push(r.clone());
        }
    });
    assert_eq!(outcome, Outcome::Completed);
    (s.final_params().unwrap(), reports)
}

#[test]
fn local_1_equals_sync_with_parameter_averaging_for_every_algorithm() {
    // Averaging parameters after one step each equals averaging the gradients first:
    // the update is linear in the gradient, and each worker's momentum buffer averages
    // to sync's. Only the rounding differs.
    let data = Arc::new(digits());
    let base = Experiment {
        workers: 4,
        hidden: vec![32],
        batch: 8,
        lr: 0.05,
        momentum: 0.9,
        length: Length::Steps(40),
        seed: 5,
        ..Default::default()
    };
    let (sync, _) = train(base.clone(), &data);
    for algo in [AllReduceAlgo::Ring, AllReduceAlgo::Tree, AllReduceAlgo::Naive] {
        let (local, _) = train(
            Experiment {
                mode: Mode::Local(1),
                allreduce: algo,
                ..base.clone()
            },
            &data,
        );
        let (rel, worst) = relative_difference(&local, &sync);
        assert!(
            rel <= 1e-6,
            "{algo}: local:1 differs from sync by {rel:.2e} (worst element {worst}: {} vs {})",
            local[worst],
            sync[worst]
        );
    }
}

/// Worker `rank`'s own SGD steps `from..to` of a run of `exp` (as the engine shards the
/// data in its first segment), computed here with the `nn` calls alone.
fn local_steps(
    exp: &Experiment,
    data: &Dataset,
    rank: usize,
    params: &mut [f32],
    sgd: &mut Sgd,
    steps: std::ops::Range<u64>,
) {
    let mlp = Mlp::new(data.inputs(), &exp.hidden, data.classes);
    let sharder = Sharder {
        train_len: data.train_len(),
        workers: exp.workers,
        batch: exp.batch,
        seed: exp.seed,
    };
    let mut ws = Workspace::new(&mlp, exp.batch);
    let mut grads = vec![0.0f32; mlp.num_params()];
    let mut x = ndarray::Array2::<f32>::zeros((exp.batch, mlp.inputs()));
    let mut labels = vec![0u8; exp.batch];
    for step in steps {
        let per_epoch = sharder.steps_per_epoch();
        let perm = sharder.permutation(step / per_epoch);
        for (row, &i) in sharder.batch(&perm, step % per_epoch, rank).iter().enumerate() {
            x.row_mut(row).assign(&data.train_x.row(i as usize));
            labels[row] = data.train_y[i as usize];
        }
        mlp.loss_and_grad(params, &x.view(), &labels, &mut ws, &mut grads);
        sgd.step(params, &grads, exp.lr);
    }
}

#[test]
fn local_h_averaging_equals_the_mean_of_the_workers_parameters_exactly() {
    // Two workers: their sum is the same bits whichever way an algorithm adds, so the
    // engine's average must be exactly (a + b) · ½ of the workers computed here alone.
    ddlab::nn::flush_denormals(); // as the engine's worker threads do
    let data = Arc::new(digits());
    let (h, rounds) = (5u64, 2u64);
    for algo in [AllReduceAlgo::Ring, AllReduceAlgo::Tree, AllReduceAlgo::Naive] {
        let exp = Experiment {
            workers: 2,
            mode: Mode::Local(h as u32),
            allreduce: algo,
            hidden: vec![16],
            batch: 8,
            lr: 0.05,
            momentum: 0.9,
            length: Length::Steps(h * rounds),
            seed: 3,
            ..Default::default()
        };
        let (engine, _) = train(exp.clone(), &data);
        let mlp = Mlp::new(data.inputs(), &exp.hidden, data.classes);
        let mut mean = vec![0.0f32; mlp.num_params()];
        mlp.init(&mut mean, exp.seed);
        // (each worker keeps its own momentum across averages)
        let mut sgds: Vec<Sgd> = (0..2).map(|_| Sgd::new(mean.len(), exp.momentum, 0.0)).collect();
        for round in 0..rounds {
            let mut replicas = [mean.clone(), mean.clone()];
            for (rank, (replica, sgd)) in replicas.iter_mut().zip(&mut sgds).enumerate() {
                local_steps(&exp, &data, rank, replica, sgd, round * h..(round + 1) * h);
            }
            assert_ne!(replicas[0], replicas[1], "the replicas drift apart between averages");
            for (m, (a, b)) in mean.iter_mut().zip(replicas[0].iter().zip(&replicas[1])) {
                *m = (a + b) * 0.5;
            }
        }
        let differ = engine
            .iter()
            .zip(&mean)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(
            differ, 0,
            "{algo}: {differ} parameters differ from the mean of the workers' own"
        );
    }
}

#[test]
fn replicas_are_identical_after_each_averaging_and_only_then() {
    let data = Arc::new(digits());
    let exp = Experiment {
        workers: 4,
        mode: Mode::Local(4),
        hidden: vec![32],
        length: Length::Steps(42),
        eval_every: 10,
        ..Default::default()
    };
    let (_, reports) = train(exp, &data);
    let mut hashes: BTreeMap<u64, Vec<(usize, u64)>> = BTreeMap::new();
    for r in &reports {
        if let Some(h) = r.replica_hash {
            hashes.entry(r.step).or_default().push((r.worker, h));
        }
    }
    // every 4th step, and the last (a run ends with identical replicas)
    let steps: Vec<u64> = hashes.keys().copied().collect();
    assert_eq!(steps, vec![3, 7, 11, 15, 19, 23, 27, 31, 35, 39, 41]);
    for (step, of) in &hashes {
        assert_eq!(of.len(), 4, "step {step}: every worker reports its replica");
        assert!(
            of.iter().all(|&(_, h)| h == of[0].1),
            "step {step}: replicas differ: {of:?}"
        );
    }
    let distinct: std::collections::HashSet<u64> = hashes.values().map(|v| v[0].1).collect();
    assert_eq!(distinct.len(), hashes.len(), "each averaging moves the parameters");
    // between averages nothing travels: the bytes are the averages' alone
    let quiet = reports.iter().filter(|r| r.replica_hash.is_none());
    assert!(quiet.clone().count() > 0 && quiet.clone().all(|r| r.bytes_sent == 0));
}

#[test]
fn local_h_sends_h_times_fewer_bytes_than_sync() {
    let data = Arc::new(digits());
    let base = Experiment {
        workers: 4,
        length: Length::Steps(160),
        ..Default::default()
    };
    let bytes = |exp: Experiment| {
        let (_, reports) = train(exp, &data);
        reports.iter().map(|r| r.bytes_sent).sum::<u64>()
    };
    let sync = bytes(base.clone());
    let local = bytes(Experiment {
        mode: Mode::Local(8),
        ..base.clone()
    });
    // the same all-reduce of the same length, 160/8 = 20 times instead of 160
    assert_eq!(sync, local * 8, "sync {sync} B, local:8 {local} B");
}

#[test]
fn an_outer_optimizer_changes_the_result_and_lr_1_without_momentum_is_plain_averaging() {
    let data = Arc::new(digits());
    let base = Experiment {
        workers: 2,
        mode: Mode::Local(4),
        hidden: vec![16],
        length: Length::Steps(24),
        ..Default::default()
    };
    let (plain, _) = train(base.clone(), &data);
    let (again, _) = train(
        Experiment {
            outer_lr: 1.0,
            outer_momentum: 0.0,
            ..base.clone()
        },
        &data,
    );
    assert_eq!(plain, again);
    let (diloco, reports) = train(
        Experiment {
            outer_lr: 0.7,
            outer_momentum: 0.9,
            nesterov: true,
            ..base.clone()
        },
        &data,
    );
    let (rel, _) = relative_difference(&diloco, &plain);
    assert!(rel > 1e-4, "the outer step made no difference ({rel:.2e})");
    // the outer step keeps the replicas identical
    for step in [3u64, 7, 23] {
        let h: Vec<u64> = reports
            .iter()
            .filter(|r| r.step == step)
            .filter_map(|r| r.replica_hash)
            .collect();
        assert!(h.len() == 2 && h[0] == h[1], "step {step}: {h:?}");
    }
}

#[test]
fn switching_live_to_local_continues_from_the_same_step() {
    let data = Arc::new(digits());
    let exp = Experiment {
        workers: 3,
        length: Length::Steps(60),
        ..Default::default()
    };
    let options = SessionOptions {
        start_paused: true,
        ..SessionOptions::default()
    };
    let mut s = Session::start_with_data(exp, Arc::clone(&data), options, None).unwrap();
    s.control(Control::SetMode(Mode::Local(4))).unwrap();
    s.control(Control::Resume).unwrap();
    let mut averaged_at = Vec::new();
    let outcome = s.run_to_end(|e| {
        if let Event::WorkerStep(r) = e {
            if r.replica_hash.is_some() && r.worker == 0 {
                averaged_at.push(r.step);
            }
        }
    });
    assert_eq!(outcome, Outcome::Completed);
    let modes: Vec<Mode> = s.state().segments.iter().map(|seg| seg.mode).collect();
    assert_eq!(modes, vec![Mode::Sync, Mode::Local(4)]);
    // (local:4 from step 1: averages after 4 of its own steps)
    assert_eq!(averaged_at.first(), Some(&4), "{averaged_at:?}");
    assert_eq!(averaged_at.last(), Some(&59));
}
