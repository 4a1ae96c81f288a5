//! Training end to end through the session: the invariants DESIGN.md promises.

use std::sync::Arc;
use std::time::Duration;

mod common;

use common::relative_difference;
use ddlab::comm::AllReduceAlgo;
use ddlab::config::{Experiment, Length};
use ddlab::data::{digits, Dataset};
use ddlab::session::{Session, SessionOptions};
use ddlab::train::{CollectiveKind, Control, Event, Outcome, Phase};

fn train(exp: Experiment, data: &Arc<Dataset>) -> Session {
    let mut s =
        Session::start_with_data(exp, Arc::clone(data), SessionOptions::default(), None).expect("valid experiment");
    let outcome = s.run_to_end(|_| {});
    assert_eq!(outcome, Outcome::Completed);
    s
}

#[test]
fn sync_with_n_workers_equals_one_worker_with_n_times_the_batch() {
    let data = Arc::new(digits());
    let base = Experiment {
        hidden: vec![32],
        lr: 0.05,
        momentum: 0.9,
        length: Length::Steps(50),
        seed: 11,
        ..Default::default()
    };
    for n in [2usize, 3, 4, 8] {
        let batch = 8;
        let one = train(
            Experiment {
                workers: 1,
                batch: n * batch,
                ..base.clone()
            },
            &data,
        )
        .final_params()
        .unwrap();
        for algo in AllReduceAlgo::ALL {
            let many = train(
                Experiment {
                    workers: n,
                    batch,
                    allreduce: algo,
                    ..base.clone()
                },
                &data,
            )
            .final_params()
            .unwrap();
            let (rel, worst) = relative_difference(&many, &one);
            assert!(
                rel <= 1e-5,
                "N={n} {algo}: parameters differ by {rel:.2e} (worst element {worst}: {} vs {})",
                many[worst],
                one[worst]
            );
        }
    }
}

#[test]
fn the_equivalence_check_notices_a_different_computation() {
    // Guard against a vacuous comparison: a different learning rate must fail it.
    let data = Arc::new(digits());
    let base = Experiment {
        hidden: vec![32],
        length: Length::Steps(20),
        ..Default::default()
    };
    let a = train(
        Experiment {
            workers: 2,
            batch: 8,
            ..base.clone()
        },
        &data,
    )
    .final_params()
    .unwrap();
    let b = train(
        Experiment {
            workers: 1,
            batch: 16,
            lr: base.lr * 1.01,
            ..base.clone()
        },
        &data,
    )
    .final_params()
    .unwrap();
    assert!(relative_difference(&a, &b).0 > 1e-5);
}

fn loss_curve(exp: Experiment, data: &Arc<Dataset>) -> Vec<u64> {
    train(exp, data)
        .state()
        .steps
        .iter()
        .map(|s| s.loss.to_bits())
        .collect()
}

#[test]
fn same_seed_and_config_give_an_identical_loss_curve() {
    let data = Arc::new(digits());
    let exp = Experiment {
        workers: 4,
        length: Length::Steps(60),
        ..Default::default()
    };
    let a = loss_curve(exp.clone(), &data);
    assert_eq!(a.len(), 60);
    assert_eq!(a, loss_curve(exp.clone(), &data));
    assert_ne!(
        a,
        loss_curve(
            Experiment {
                seed: exp.seed + 1,
                ..exp
            },
            &data
        )
    );
}

#[test]
fn digits_reach_95_percent_test_accuracy_within_330_steps() {
    let data = Arc::new(digits());
    let s = train(Experiment::default(), &data);
    let summary = s.summary();
    assert_eq!(summary.steps, 330, "the default: 30 epochs of 11 steps");
    let acc = summary.test_accuracy.unwrap();
    assert!(acc >= 0.95, "test accuracy {acc}");
    // and it learned: the loss fell by an order of magnitude
    let steps = &s.state().steps;
    assert!(steps.last().unwrap().loss < steps[0].loss / 10.0);
}

#[test]
fn a_huge_learning_rate_diverges_cleanly_at_a_reported_step() {
    let data = Arc::new(digits());
    let exp = Experiment {
        lr: 1e6,
        length: Length::Steps(100),
        ..Default::default()
    };
    let mut s = Session::start_with_data(exp, data, SessionOptions::default(), None).unwrap();
    match s.run_to_end(|_| {}) {
        Outcome::Diverged { step, .. } => {
            assert!(step < 100);
            assert_eq!(s.summary().diverged_step, Some(step));
            assert!(s.summary().diverged);
        }
        other => panic!("expected divergence, got {other:?}"),
    }
}

#[test]
fn step_phase_moves_every_worker_through_one_phase_or_one_all_reduce_round_and_stop_ends_the_run() {
    let data = Arc::new(digits());
    let exp = Experiment {
        workers: 3,
        length: Length::Steps(1000),
        ..Default::default()
    };
    let options = SessionOptions {
        start_paused: true,
        ..Default::default()
    };
    let mut s = Session::start_with_data(exp, data, options, None).unwrap();
    let mut phases: Vec<(usize, Phase)> = Vec::new();
    fn collect(s: &mut Session, phases: &mut Vec<(usize, Phase)>, wait: Duration) {
        let deadline = std::time::Instant::now() + wait;
        while std::time::Instant::now() < deadline {
            s.poll_timeout(Duration::from_millis(10), |e| {
                if let Event::Phase { worker, phase, .. } = e {
                    phases.push((*worker, *phase));
                }
            });
        }
    }
    collect(&mut s, &mut phases, Duration::from_millis(150));
    assert!(phases.is_empty(), "a paused run moved: {phases:?}");

    // A ring over 3 workers has 4 rounds: the all-reduce takes one press per round.
    for (i, expected) in [
        Phase::Forward,
        Phase::Backward,
        Phase::AllReduce,
        Phase::AllReduce,
        Phase::AllReduce,
        Phase::AllReduce,
        Phase::Update,
        Phase::Forward,
    ]
    .into_iter()
    .enumerate()
    {
        s.control(Control::StepPhase).unwrap();
        collect(&mut s, &mut phases, Duration::from_millis(300));
        assert_eq!(phases.len(), 3 * (i + 1), "after {} steps: {phases:?}", i + 1);
        let mut workers: Vec<usize> = phases[3 * i..]
            .iter()
            .map(|&(w, p)| {
                assert_eq!(p, expected);
                w
            })
            .collect();
        workers.sort();
        assert_eq!(workers, vec![0, 1, 2]);
    }
    assert_eq!(s.state().steps.len(), 1, "one whole step is done");

    s.control(Control::Stop).unwrap();
    assert_eq!(s.run_to_end(|_| {}), Outcome::Stopped);
}

#[test]
fn step_mode_shows_every_all_reduce_round_as_it_happens_for_every_algorithm() {
    // One press per round: after each press the lab has exactly that round's messages
    // (the reduce-scatter rounds and everything going to worker 0 included).
    let data = Arc::new(digits());
    for (algo, workers) in [
        (AllReduceAlgo::Ring, 4),
        (AllReduceAlgo::Naive, 3),
        (AllReduceAlgo::Tree, 4),
        (AllReduceAlgo::Hierarchical, 4),
        (AllReduceAlgo::TwoD, 4),
    ] {
        let exp = Experiment {
            workers,
            nodes: if AllReduceAlgo::FLAT.contains(&algo) { 1 } else { 2 },
            allreduce: algo,
            length: Length::Steps(100),
            ..Default::default()
        };
        let options = SessionOptions {
            detail: true,
            start_paused: true,
            ..Default::default()
        };
        let mut s = Session::start_with_data(exp, Arc::clone(&data), options, None).unwrap();
        let mut rounds_seen: Vec<Vec<u32>> = Vec::new();
        let mut presses = 0;
        // forward, backward, then the all-reduce round by round until an update shows.
        loop {
            s.control(Control::StepPhase).unwrap();
            presses += 1;
            let (mut rounds, mut updated) = (Vec::new(), false);
            let deadline = std::time::Instant::now() + Duration::from_millis(300);
            while std::time::Instant::now() < deadline {
                s.poll_timeout(Duration::from_millis(10), |e| match e {
                    Event::Transfer {
                        collective: CollectiveKind::AllReduce,
                        transfer,
                        ..
                    } => rounds.push(transfer.round),
                    Event::Phase {
                        phase: Phase::Update, ..
                    } => updated = true,
                    _ => {}
                });
            }
            if updated {
                break;
            }
            if presses > 2 {
                rounds.sort();
                rounds.dedup();
                rounds_seen.push(rounds);
            }
            assert!(presses < 64, "{algo}: no update after {presses} presses");
        }
        // Every press inside the all-reduce showed messages of one round, the rounds in
        // order. (Over nodes, a rank that receives one shard before it sends its own
        // sends in the press after its partner's: a round may take two presses.)
        let flat: Vec<u32> = rounds_seen.iter().flatten().copied().collect();
        assert!(!flat.is_empty(), "{algo}: no messages seen while stepping");
        let in_order = if AllReduceAlgo::FLAT.contains(&algo) {
            flat.windows(2).all(|w| w[0] < w[1])
        } else {
            flat.windows(2).all(|w| w[0] <= w[1])
        };
        assert!(in_order, "{algo}: rounds by press {rounds_seen:?}");
        assert!(
            rounds_seen.iter().filter(|r| !r.is_empty()).count() >= 2,
            "{algo}: the all-reduce went by in one press: {rounds_seen:?}"
        );
        if algo == AllReduceAlgo::Ring {
            let expected: Vec<Vec<u32>> = (0..6).map(|r| vec![r]).collect();
            assert_eq!(rounds_seen, expected, "ring over 4: 6 rounds, one per press");
        }
        if algo == AllReduceAlgo::Naive {
            assert_eq!(rounds_seen[0], vec![0], "everyone's gradient goes to worker 0 first");
        }
        s.control(Control::Stop).unwrap();
        s.run_to_end(|_| {});
    }
}

#[test]
fn pause_and_resume_continue_to_completion() {
    let data = Arc::new(digits());
    let exp = Experiment {
        length: Length::Steps(200),
        ..Default::default()
    };
    let mut s = Session::start_with_data(exp, data, SessionOptions::default(), None).unwrap();
    s.control(Control::Pause).unwrap();
    assert!(s.is_paused());
    std::thread::sleep(Duration::from_millis(50));
    s.control(Control::Resume).unwrap();
    assert_eq!(s.run_to_end(|_| {}), Outcome::Completed);
    assert_eq!(s.state().steps.len(), 200);
}

#[test]
fn stop_releases_workers_waiting_in_a_slow_all_reduce() {
    // A 1 s link: workers sit in the all-reduce; Stop must end the run promptly.
    let data = Arc::new(digits());
    let exp = Experiment {
        link: Some(ddlab::comm::Link::new(1_000_000.0, 1.0).unwrap()),
        length: Length::Steps(10),
        ..Default::default()
    };
    let mut s = Session::start_with_data(exp, data, SessionOptions::default(), None).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let t = std::time::Instant::now();
    s.control(Control::Stop).unwrap();
    assert_eq!(s.run_to_end(|_| {}), Outcome::Stopped);
    assert!(t.elapsed() < Duration::from_secs(5), "stop took {:?}", t.elapsed());
}

#[test]
fn every_step_reports_per_worker_metrics_and_all_reduce_bytes() {
    let data = Arc::new(digits());
    let exp = Experiment {
        workers: 4,
        length: Length::Steps(30),
        eval_every: 10,
        ..Default::default()
    };
    let s = train(exp, &data);
    let st = s.state();
    assert_eq!(st.steps.len(), 30);
    assert_eq!(st.evals.iter().map(|e| e.step).collect::<Vec<_>>(), vec![10, 20, 30]);
    // ring: each worker sends 2(N−1) chunks of 1/N of the gradient and its flags per step
    let per_worker = 2 * 3 * ((st.params + ddlab::train::STEP_FLAGS) / 4) * 4;
    for rec in &st.steps {
        let expected = 4 * per_worker;
        assert!(
            (rec.bytes_sent as i64 - expected as i64).abs() <= 4 * 2 * 3 * 4,
            "{} vs {expected}",
            rec.bytes_sent
        );
        assert!(
            rec.grad_norm_reduced <= rec.grad_norm + 1e-9,
            "averaging cannot lengthen the gradient beyond the mean norm"
        );
    }
    assert_eq!(st.steps.last().unwrap().samples, 30 * 4 * 32);
}

#[test]
fn detail_mode_reports_every_transfer_and_every_batch_of_a_slow_step() {
    // At full speed detail is sampled (a step every 20 ms at most); in slow motion
    // (×1000) every step is slower than that, so every step is reported whole.
    let data = Arc::new(digits());
    let exp = Experiment {
        workers: 4,
        length: Length::Steps(5),
        allreduce: AllReduceAlgo::Naive,
        ..Default::default()
    };
    let options = SessionOptions {
        detail: true,
        start_paused: true,
        ..Default::default()
    };
    let mut s = Session::start_with_data(exp, data, options, None).unwrap();
    s.control(Control::SetPace { factor: 1000.0 }).unwrap();
    s.control(Control::Resume).unwrap();
    let (mut transfers, mut batches, mut broadcasts) = (Vec::new(), 0, 0);
    s.run_to_end(|e| match e {
        Event::Transfer {
            step,
            collective: CollectiveKind::AllReduce,
            transfer,
        } => transfers.push((*step, *transfer)),
        Event::Transfer {
            collective: CollectiveKind::Broadcast,
            ..
        } => broadcasts += 1,
        Event::Batch { indices, .. } => {
            assert_eq!(indices.len(), 32);
            batches += 1;
        }
        _ => {}
    });
    assert_eq!(batches, 5 * 4);
    assert_eq!(broadcasts, 3, "a binomial tree over 4 ranks sends 3 messages");
    // naive: 3 sends to the root and 3 sends back, per step
    assert_eq!(transfers.len(), 5 * 6);
    for step in 0..5 {
        let to_root = transfers.iter().filter(|(s, t)| *s == step && t.to == 0).count();
        let from_root = transfers.iter().filter(|(s, t)| *s == step && t.from == 0).count();
        assert_eq!((to_root, from_root), (3, 3));
    }
    assert_eq!(s.dropped_events(), 0);
}

#[test]
fn at_full_speed_detail_is_sampled_but_every_sampled_step_is_whole() {
    let data = Arc::new(digits());
    let exp = Experiment {
        workers: 3,
        length: Length::Steps(3000),
        ..Default::default()
    };
    let options = SessionOptions {
        detail: true,
        ..Default::default()
    };
    let mut s = Session::start_with_data(exp, data, options, None).unwrap();
    let mut per_step: std::collections::BTreeMap<u64, usize> = Default::default();
    s.run_to_end(|e| {
        if let Event::Transfer {
            step,
            collective: CollectiveKind::AllReduce,
            ..
        } = e
        {
            *per_step.entry(*step).or_default() += 1;
        }
    });
    assert!(per_step.len() < 3000, "every step was detailed");
    assert!(
        per_step.values().all(|&n| n == 3 * 4),
        "ring with 3 workers: 3 × 2(N−1) messages: {per_step:?}"
    );
}

#[test]
fn runs_over_an_emulated_link_report_the_alpha_beta_model_beside_the_measurement() {
    let data = Arc::new(digits());
    for algo in [AllReduceAlgo::Ring, AllReduceAlgo::Tree] {
        let exp = Experiment {
            workers: 4,
            allreduce: algo,
            link: Some(ddlab::comm::Link::new(200.0, 1.0).unwrap()),
            length: Length::Steps(5),
            ..Default::default()
        };
        let s = train(exp, &data);
        let summary = s.summary();
        let model = summary.allreduce_model_ms.expect("a model with a link");
        // ring: 6 rounds, tree: 2 rounds, each at least α = 200 µs
        assert!(model > 0.39, "{algo}: {model} ms");
        // (The strict comparison, with everyone starting together, is in
        // tests/collectives.rs; here workers arrive at different times.)
        assert!(
            summary.allreduce_comm_ms > model / 2.0,
            "{algo}: {} vs {model}",
            summary.allreduce_comm_ms
        );
        assert!(s.state().steps.iter().all(|r| r.allreduce_model_ns.is_some()));
    }
    // Without a link there is nothing to model.
    let s = train(
        Experiment {
            length: Length::Steps(3),
            ..Default::default()
        },
        &data,
    );
    assert_eq!(s.summary().allreduce_model_ms, None);
}

#[test]
fn overlap_and_every_bucket_size_give_bit_identical_parameters() {
    let data = Arc::new(digits());
    for algo in [
        AllReduceAlgo::Ring,
        AllReduceAlgo::Tree,
        AllReduceAlgo::Naive,
        AllReduceAlgo::TwoD,
    ] {
        let base = Experiment {
            workers: 3,
            hidden: vec![32, 16],
            allreduce: algo,
            length: Length::Steps(30),
            ..Default::default()
        };
        let plain = train(base.clone(), &data).final_params().unwrap();
        for bucket_kb in [1, 4, 1024] {
            let overlapped = train(
                Experiment {
                    overlap: true,
                    bucket_kb,
                    ..base.clone()
                },
                &data,
            )
            .final_params()
            .unwrap();
            assert!(
                plain.iter().zip(&overlapped).all(|(a, b)| a.to_bits() == b.to_bits()),
                "{algo}, buckets of {bucket_kb} KB: parameters differ"
            );
        }
    }
}

#[test]
fn with_overlap_all_reduce_slices_run_during_backward() {
    // The last layer's bucket is all-reduced while backward still works on the first
    // layers. (Worker 0 is made 3× slower, so its backward phase surely outlasts the
    // communication thread's wake-up.)
    let data = Arc::new(digits());
    let exp = Experiment {
        workers: 2,
        hidden: vec![256, 256],
        overlap: true,
        bucket_kb: 1,
        stragglers: vec![ddlab::config::Straggler { worker: 0, factor: 3.0 }],
        link: Some(ddlab::comm::Link::new(300.0, 1.0).unwrap()),
        length: Length::Steps(5),
        ..Default::default()
    };
    let mut s = Session::start_with_data(exp, data, SessionOptions::default(), None).unwrap();
    let mut spans: Vec<(usize, u64, Phase, u64, u64)> = Vec::new();
    s.run_to_end(|e| {
        if let Event::Phase {
            worker,
            step,
            phase,
            start_ns,
            end_ns,
        } = e
        {
            spans.push((*worker, *step, *phase, *start_ns, *end_ns));
        }
    });
    let overlapping = spans.iter().filter(|a| a.0 == 0 && a.2 == Phase::AllReduce).any(|a| {
        spans
            .iter()
            .any(|b| b.0 == a.0 && b.1 == a.1 && b.2 == Phase::Backward && a.3 < b.4 && a.3 >= b.3)
    });
    assert!(overlapping, "no all-reduce slice started inside a backward slice");
}

/// Final parameters of `exp` on `data` as bits.
fn final_bits(exp: Experiment, data: &Arc<Dataset>) -> Vec<u32> {
    train(exp, data)
        .final_params()
        .unwrap()
        .iter()
        .map(|v| v.to_bits())
        .collect()
}

#[test]
fn one_two_and_three_threads_per_worker_give_bit_identical_parameters() {
    // Wide enough that the threads really split the work: products over gemm's
    // threshold for threads, activations over the elementwise passes' (see `nn::par`).
    let data = Arc::new(digits());
    for (workers, overlap) in [(1, false), (2, false), (2, true)] {
        let base = Experiment {
            workers,
            overlap,
            hidden: vec![512, 64],
            batch: 64,
            length: Length::Steps(8),
            ..Default::default()
        };
        let one = final_bits(base.clone(), &data);
        for threads in [2, 3] {
            let many = final_bits(
                Experiment {
                    threads,
                    ..base.clone()
                },
                &data,
            );
            assert!(
                one == many,
                "{workers} workers (overlap {overlap}) on {threads} threads each: the parameters differ from one thread's"
            );
        }
    }
}

#[test]
fn sync_equivalence_holds_with_two_threads_per_worker() {
    let data = Arc::new(digits());
    let base = Experiment {
        hidden: vec![512],
        lr: 0.05,
        threads: 2,
        length: Length::Steps(20),
        seed: 11,
        ..Default::default()
    };
    for n in [2usize, 4] {
        let batch = 32;
        let one = Experiment {
            workers: 1,
            batch: n * batch,
            ..base.clone()
        };
        let one = train(one, &data).final_params().unwrap();
        for algo in [AllReduceAlgo::Ring, AllReduceAlgo::Tree] {
            let many = Experiment {
                workers: n,
                batch,
                allreduce: algo,
                ..base.clone()
            };
            let many = train(many, &data).final_params().unwrap();
            let (rel, worst) = relative_difference(&many, &one);
            assert!(
                rel <= 1e-5,
                "N={n} {algo}, 2 threads each: parameters differ by {rel:.2e} (worst element {worst})"
            );
        }
    }
}

#[test]
fn changing_the_threads_live_switches_at_the_next_step_and_changes_no_bit() {
    let data = Arc::new(digits());
    let exp = Experiment {
        workers: 2,
        hidden: vec![512],
        batch: 64,
        length: Length::Steps(12),
        ..Default::default()
    };
    // Sent while paused before the first step: the switch comes after step 0 in both
    // runs, so both shuffle alike and only the thread count differs.
    let run = |threads: usize| {
        let options = SessionOptions {
            start_paused: true,
            ..SessionOptions::default()
        };
        let mut s = Session::start_with_data(exp.clone(), Arc::clone(&data), options, None).unwrap();
        let refused = s.control(Control::SetThreads(0)).unwrap_err().to_string();
        assert!(refused.starts_with("--threads: 0 is not allowed"), "{refused}");
        s.control(Control::SetThreads(threads)).unwrap();
        s.control(Control::Resume).unwrap();
        assert_eq!(s.run_to_end(|_| {}), Outcome::Completed);
        let segments: Vec<u64> = s.state().segments.iter().map(|seg| seg.update).collect();
        assert_eq!(segments, vec![0, 1], "{threads} threads: a new segment after step 0");
        let bits: Vec<u32> = s.final_params().unwrap().iter().map(|v| v.to_bits()).collect();
        bits
    };
    assert!(run(1) == run(3), "the parameters depend on the thread count");
}
