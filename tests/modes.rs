//! The parameter-server modes, stragglers and live switches, through the session.

use std::sync::Arc;
use std::time::Duration;

use ddlab::config::{Experiment, Length, Mode, Straggler};
use ddlab::data::digits;
use ddlab::session::{Session, SessionOptions};
use ddlab::train::{params_hash, Control, Event, Outcome, Phase, WorkerStep};

fn run(exp: Experiment) -> (Session, Vec<WorkerStep>) {
    let mut s = Session::start_with_data(exp, Arc::new(digits()), SessionOptions::default(), None).unwrap();
    let mut reports = Vec::new();
    let outcome = s.run_to_end(|e| {
        if let Event::WorkerStep(w) = e {
            reports.push(w.clone());
        }
    });
    assert_eq!(outcome, Outcome::Completed);
    (s, reports)
}

fn straggling(mode: Mode) -> Experiment {
    Experiment {
        workers: 4,
        mode,
        stragglers: vec![Straggler { worker: 3, factor: 4.0 }],
        length: Length::Steps(60),
        ..Default::default()
    }
}

#[test]
fn ssp_never_lets_a_worker_get_more_than_k_iterations_ahead() {
    for k in [0u32, 1, 3] {
        let (_, reports) = run(straggling(Mode::Ssp(k)));
        let worst = reports.iter().map(|r| r.lead).max().unwrap();
        assert!(
            worst <= u64::from(k),
            "ssp:{k}: a worker pulled {worst} iterations ahead of the slowest"
        );
    }
    // The check can fail: without the bound, the fast workers run far ahead.
    let (_, reports) = run(straggling(Mode::Async));
    assert!(reports.iter().map(|r| r.lead).max().unwrap() > 3);
}

#[test]
fn backup_averages_exactly_n_minus_b_gradients_per_step_and_counts_the_dropped() {
    let (s, reports) = run(straggling(Mode::Backup(1)));
    let last = reports.iter().filter(|r| !r.dropped).map(|r| r.step).max().unwrap();
    // Every step took exactly N − B = 3 gradients, except the last couple: once the
    // budget is spent, leaving workers no longer count towards the N − B.
    for step in 0..last.saturating_sub(2) {
        let used = reports.iter().filter(|r| !r.dropped && r.step == step).count();
        assert_eq!(used, 3, "step {step}");
    }
    let dropped = reports.iter().filter(|r| r.dropped).count() as u64;
    assert!(dropped > 0, "the 4× straggler is late");
    assert_eq!(s.summary().dropped_gradients, dropped);
}

#[test]
fn async_records_staleness_for_every_applied_gradient() {
    let (s, reports) = run(Experiment {
        workers: 4,
        mode: Mode::Async,
        length: Length::Steps(50),
        ..Default::default()
    });
    assert!(reports.iter().all(|r| r.staleness.is_some()));
    let summary = s.summary();
    assert_eq!(summary.steps, 4 * 50, "one server update per push");
    let hist_total: u64 = summary.staleness_histogram.iter().sum();
    assert_eq!(hist_total, 200);
    assert!(summary.staleness_mean.unwrap() > 0.0);
}

/// Starts `exp`, sends `control` once `after` records arrived, runs to the end.
fn switch_during(exp: Experiment, after: usize, control: Control) -> (Session, Vec<Event>) {
    let mut s = Session::start_with_data(exp, Arc::new(digits()), SessionOptions::default(), None).unwrap();
    let mut events = Vec::new();
    let mut sent = false;
    loop {
        let over = s.poll_timeout(Duration::from_millis(5), |e| {
            if !e.is_visual() {
                events.push(e.clone());
            }
        });
        if !sent && s.state().steps.len() >= after {
            s.control(control).unwrap();
            sent = true;
        }
        if over {
            break;
        }
    }
    (s, events)
}

#[test]
fn a_mode_switch_keeps_the_parameters_bit_identical() {
    let base = Experiment {
        workers: 4,
        length: Length::Steps(400),
        ..Default::default()
    };
    let (s, events) = switch_during(base.clone(), 20, Control::SetMode(Mode::Async));
    let segments: Vec<(Mode, u64, u64)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Segment {
                mode,
                update,
                params_hash,
                ..
            } => Some((*mode, *update, *params_hash)),
            _ => None,
        })
        .collect();
    assert_eq!(segments.len(), 2, "{segments:?}");
    let (mode, switched_at, hash) = segments[1];
    assert_eq!(mode, Mode::Async);
    assert!(switched_at >= 20);
    assert_eq!(s.state().segments[1].mode, Mode::Async);

    // The same sync run stopped after exactly that many steps ends with the same bits.
    let (plain, _) = run(Experiment {
        length: Length::Steps(switched_at),
        ..base
    });
    assert_eq!(params_hash(&plain.final_params().unwrap()), hash);
}

#[test]
fn switching_the_threads_live_mid_run_ends_with_the_bits_of_a_run_without_the_switch() {
    // Wide enough that more threads really split the work (gemm's and the elementwise
    // passes' thresholds, see `nn::par`); two workers, so the all-reduce is in the step.
    let base = Experiment {
        workers: 2,
        hidden: vec![512, 64],
        batch: 64,
        length: Length::Steps(60),
        seed: 21,
        ..Default::default()
    };
    let mut s = Session::start_with_data(base.clone(), Arc::new(digits()), SessionOptions::default(), None).unwrap();
    // 1 thread, then 2 from about step 10, then 3 from about step 30: each at the next
    // step, as the lab's t sends it.
    let mut switches = vec![(30, 3), (10, 2)];
    let mut threads_of_segments = Vec::new();
    loop {
        let over = s.poll_timeout(Duration::from_millis(5), |e| {
            if let Event::Segment { threads, update, .. } = e {
                threads_of_segments.push((*threads, *update));
            }
        });
        if let Some(&(at, t)) = switches.last() {
            if s.state().updates() >= at {
                s.control(Control::SetThreads(t)).unwrap();
                switches.pop();
            }
        }
        if over {
            break;
        }
    }
    assert_eq!(s.state().outcome, Some(Outcome::Completed));
    let threads: Vec<usize> = threads_of_segments.iter().map(|(t, _)| *t).collect();
    assert_eq!(threads, [1, 2, 3], "segments: {threads_of_segments:?}");
    assert!(
        threads_of_segments.iter().all(|(_, u)| *u < 60),
        "both switches came before the end: {threads_of_segments:?}"
    );
    assert_eq!(s.summary().threads, 3, "the summary says the threads it ended on");

    let (plain, _) = run(base);
    assert_eq!(
        params_hash(&s.final_params().unwrap()),
        params_hash(&plain.final_params().unwrap()),
        "threads switched live changed the parameters"
    );
}

#[test]
fn changing_the_worker_count_mid_run_continues_to_the_end() {
    let exp = Experiment {
        workers: 4,
        length: Length::Epochs(10),
        ..Default::default()
    };
    let total = ddlab::train::total_samples(&exp, 1438);
    let (s, _) = switch_during(exp, 10, Control::SetWorkers(2));
    let st = s.state();
    assert_eq!(st.outcome, Some(Outcome::Completed));
    assert_eq!(st.segments.iter().map(|g| g.workers).collect::<Vec<_>>(), vec![4, 2]);
    // the switch landed on a whole step and the budget was spent (to within one step)
    assert!(
        total - st.samples() < 2 * 32,
        "total {total}, done {}, segments {:?}",
        st.samples(),
        st.segments
    );
    assert!(st.last_eval().unwrap().test_accuracy > 0.9);
}

#[test]
fn bad_live_controls_are_refused_with_the_flag_sentence() {
    let exp = Experiment {
        workers: 4,
        length: Length::Steps(100_000),
        ..Default::default()
    };
    let mut s = Session::start_with_data(exp, Arc::new(digits()), SessionOptions::default(), None).unwrap();
    let e = s.control(Control::SetMode(Mode::Backup(4))).unwrap_err().to_string();
    assert!(e.contains("B < 4"), "{e}");
    let e = s
        .control(Control::Straggler { worker: 9, factor: 2.0 })
        .unwrap_err()
        .to_string();
    assert!(e.contains("use 0 to 3"), "{e}");
    let e = s.control(Control::SetWorkers(0)).unwrap_err().to_string();
    assert!(e.contains("--workers"), "{e}");
    let no_bandwidth = ddlab::comm::Link {
        latency_us: 1.0,
        gbit_s: 0.0,
    };
    let e = s.control(Control::SetLink(Some(no_bandwidth))).unwrap_err().to_string();
    assert!(e.contains("--link") && e.contains("Gbit/s > 0"), "{e}");
    s.control(Control::Stop).unwrap();
    assert_eq!(s.run_to_end(|_| {}), Outcome::Stopped);
}

#[test]
fn stop_ends_a_parameter_server_run_even_while_workers_wait() {
    for mode in [Mode::Async, Mode::Ssp(0), Mode::Backup(1)] {
        let exp = Experiment {
            mode,
            length: Length::Steps(1_000_000),
            ..straggling(mode)
        };
        let mut s = Session::start_with_data(exp, Arc::new(digits()), SessionOptions::default(), None).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        s.control(Control::Stop).unwrap();
        assert_eq!(s.run_to_end(|_| {}), Outcome::Stopped, "{mode}");
    }
}

#[test]
fn the_parameter_servers_link_serialises_every_pull_and_push() {
    // 2 ms per message on one server link: 3 workers × 10 iterations × (pull + push) =
    // 60 messages one after another, so at least 120 ms — whatever the workers overlap.
    let link = ddlab::comm::Link::new(2000.0, 1000.0).unwrap();
    let exp = Experiment {
        workers: 3,
        mode: Mode::Async,
        link: Some(link),
        length: Length::Steps(10), // 10 × 3 × 32 samples = 10 iterations per worker
        ..Default::default()
    };
    let t0 = std::time::Instant::now();
    let (s, reports) = run(exp);
    assert_eq!(reports.len(), 30);
    let per_message = link.message_time(s.state().params * 4);
    assert!(
        t0.elapsed() >= per_message * 60,
        "{:?} < 60 × {per_message:?}",
        t0.elapsed()
    );
}

#[test]
fn a_straggler_waits_in_proportion_to_its_own_compute() {
    // Worker 1 at 5×: it sleeps 4× its measured forward+backward inside its backward
    // phase, so its backward time is at least 4× its forward time (a lower bound: sleep
    // never returns early).
    let (s, _) = run(Experiment {
        workers: 2,
        stragglers: vec![Straggler { worker: 1, factor: 5.0 }],
        length: Length::Steps(30),
        ..Default::default()
    });
    let w = &s.state().per_worker;
    let (fwd, bwd) = (Phase::Forward.index(), Phase::Backward.index());
    assert!(w[1].phase_ns[bwd] >= 4 * w[1].phase_ns[fwd], "{:?}", w[1].phase_ns);
    let summary = s.summary();
    assert_eq!(summary.worker_steps_per_sec.len(), 2);
}
