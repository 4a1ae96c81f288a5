//! Compressed gradients (`--compress topk:P`): what top-k with error feedback promises.

use std::sync::Arc;

mod common;

use common::relative_difference;
use ddlab::comm::{AllReduceAlgo, Compress};
use ddlab::config::{Experiment, Length};
use ddlab::data::{digits, Dataset};
use ddlab::session::{Session, SessionOptions};
use ddlab::train::{CollectiveKind, Event, Outcome, WorkerStep};

/// Runs `exp` to completion; returns the final parameters, every worker's reports and
/// every message's collective.
fn train(exp: Experiment, data: &Arc<Dataset>) -> (Vec<f32>, Vec<WorkerStep>, Vec<CollectiveKind>) {
    let options = SessionOptions {
        detail: true,
        ..SessionOptions::default()
    };
    let mut s = Session::start_with_data(exp, Arc::clone(data), options, None).expect("valid experiment");
    let (mut reports, mut kinds) = (Vec::new(), Vec::new());
    let outcome = s.run_to_end(|e| match e {
        Event::WorkerStep(r) => reports.push(r.clone()),
        Event::Transfer { collective, .. } => kinds.push(*collective),
        _ => {}
    });
    assert_eq!(outcome, Outcome::Completed);
    (s.final_params().unwrap(), reports, kinds)
}

fn base() -> Experiment {
    Experiment {
        workers: 3,
        hidden: vec![32],
        batch: 16,
        lr: 0.05,
        length: Length::Steps(30),
        seed: 9,
        ..Default::default()
    }
}

#[test]
fn top_k_of_100_percent_equals_plain_sync() {
    let data = Arc::new(digits());
    let (all, _, kinds) = train(
        Experiment {
            compress: Compress::TopK(100.0),
            ..base()
        },
        &data,
    );
    assert!(kinds.contains(&CollectiveKind::AllGather), "top-k all-gathers");
    assert!(!kinds.contains(&CollectiveKind::AllReduce), "and does not all-reduce");
    // The naive all-reduce adds in rank order, as the gathered pairs are added: the bits.
    let (naive, _, _) = train(
        Experiment {
            allreduce: AllReduceAlgo::Naive,
            ..base()
        },
        &data,
    );
    assert!(all == naive, "topk:100 differs from sync over the naive all-reduce");
    // A ring adds in another order: equal to rounding.
    let (ring, _, _) = train(base(), &data);
    let (rel, worst) = relative_difference(&all, &ring);
    assert!(rel <= 1e-5, "topk:100 vs ring sync: {rel:.2e} at {worst}");
}

#[test]
fn top_k_sends_about_p_percent_of_the_bytes_and_replicas_stay_identical() {
    let data = Arc::new(digits());
    let (_, sync, _) = train(base(), &data);
    let (_, topk, _) = train(
        Experiment {
            compress: Compress::TopK(1.0),
            ..base()
        },
        &data,
    );
    let bytes = |r: &[WorkerStep]| r.iter().map(|r| r.bytes_sent).sum::<u64>() as f64;
    let ratio = bytes(&topk) / bytes(&sync);
    // 1 % of the values, each with its index (×2), gathered whole by all (N−1 blocks
    // per rank where the ring sends 2(N−1)/N of the gradient): 2 · N/2 · 1 % = 3 %.
    assert!(
        (0.02..0.05).contains(&ratio),
        "top-k 1 % sent {ratio:.3} of sync's bytes"
    );
    // every replica applied the same sums: the same parameters at the end
    let hashes: Vec<u64> = topk.iter().filter_map(|r| r.replica_hash).collect();
    assert_eq!(hashes.len(), 3, "each worker fingerprints its replica at the last step");
    assert!(hashes.iter().all(|&h| h == hashes[0]), "replicas differ: {hashes:x?}");
}

#[test]
fn without_error_feedback_top_k_learns_less_at_equal_samples() {
    let data = Arc::new(digits());
    // Without momentum: the optimizer's velocity otherwise carries some of what top-k
    // drops from step to step, and hides part of the effect.
    let exp = Experiment {
        workers: 4,
        compress: Compress::TopK(1.0),
        length: Length::Steps(300),
        lr: 0.1,
        momentum: 0.0,
        ..Default::default()
    };
    let loss = |exp: Experiment| {
        let (_, reports, _) = train(exp, &data);
        let last: Vec<f64> = reports.iter().rev().take(4 * 20).map(|r| r.loss).collect();
        last.iter().sum::<f64>() / last.len() as f64
    };
    let with = loss(exp.clone());
    let without = loss(Experiment {
        error_feedback: false,
        ..exp
    });
    assert!(
        without > 1.5 * with,
        "error feedback should matter: loss {with:.3} with, {without:.3} without"
    );
}

#[test]
fn power_sgd_at_full_rank_trains_as_sync_and_at_rank_1_keeps_replicas_identical() {
    let data = Arc::new(digits());
    // hidden 8: matrices 64 × 8 and 8 × 10, so rank 8 loses nothing
    let small = Experiment {
        hidden: vec![8],
        ..base()
    };
    let (sync, _, _) = train(small.clone(), &data);
    let (full, _, kinds) = train(
        Experiment {
            compress: Compress::PowerSgd(8),
            ..small.clone()
        },
        &data,
    );
    assert!(!kinds.contains(&CollectiveKind::AllGather), "PowerSGD all-reduces");
    let (rel, worst) = relative_difference(&full, &sync);
    assert!(rel <= 1e-5, "powersgd:8 vs sync: {rel:.2e} at {worst}");
    // rank 1 on the default network: a twentieth of the bytes or less, one replica
    let (_, sync_reports, _) = train(base(), &data);
    let (_, reports, _) = train(
        Experiment {
            compress: Compress::PowerSgd(1),
            ..base()
        },
        &data,
    );
    let bytes = |r: &[WorkerStep]| r.iter().map(|r| r.bytes_sent).sum::<u64>() as f64;
    let ratio = bytes(&reports) / bytes(&sync_reports);
    assert!(ratio < 0.1, "powersgd:1 sent {ratio:.3} of sync's bytes");
    let hashes: Vec<u64> = reports.iter().filter_map(|r| r.replica_hash).collect();
    assert_eq!(hashes.len(), 3);
    assert!(hashes.iter().all(|&h| h == hashes[0]), "replicas differ: {hashes:x?}");
}
