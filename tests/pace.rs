//! A person's pace keeps the physics (DESIGN.md decision 7): slow motion dilates time,
//! so idle shares and staleness are those of full speed; step mode moves events in the
//! order full speed has them; the first press after a pause is no burst.
//!
//! The runs of one test file compete for two cores with each other: they take turns
//! (`one_at_a_time`), so that full speed is full speed.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ddlab::config::{Experiment, Length, Mode, Straggler};
use ddlab::data::digits;
use ddlab::session::{Session, SessionOptions, Summary};
use ddlab::train::{Control, Event, Outcome, Phase};

fn one_at_a_time() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}

fn summary(exp: Experiment) -> Summary {
    let mut s = Session::start_with_data(exp, Arc::new(digits()), SessionOptions::default(), None).unwrap();
    assert_eq!(s.run_to_end(|_| {}), Outcome::Completed);
    s.summary()
}

#[test]
fn slow_motion_keeps_the_idle_share_behind_a_four_times_straggler() {
    let _turn = one_at_a_time();
    for workers in [2, 4] {
        // A step long enough (about two milliseconds of compute) that the hand-over of
        // the all-reduce does not decide the idle share at full speed: a waiter's
        // wake-up there (a sleeping virtual CPU takes long to wake) counts as idle, and
        // at half this compute it put full speed's idle share 0.08-0.1 above slow
        // motion's with 2 workers.
        let exp = Experiment {
            workers,
            hidden: vec![1024],
            batch: 64,
            stragglers: vec![Straggler { worker: 1, factor: 4.0 }],
            length: Length::Steps(30),
            ..Default::default()
        };
        let full = summary(exp.clone());
        let slow = summary(Experiment { slow: 20.0, ..exp });
        let (a, b) = (full.idle_fraction, slow.idle_fraction);
        eprintln!("{workers} workers: idle {a:.3} at full speed, {b:.3} at ×20");
        assert!(
            (a - b).abs() <= 0.1,
            "{workers} workers: idle {a:.3} at full speed, {b:.3} at ×20"
        );
        // Most of the fast workers' time is waiting, at either pace.
        let fast_share = (workers as f64 - 1.0) / workers as f64;
        assert!(b > 0.5 * fast_share, "{workers} workers: idle {b:.3} at ×20");
        assert!(slow.steps_per_sec < full.steps_per_sec / 5.0, "×20 is slower");
    }
}

#[test]
fn slow_motion_keeps_async_staleness() {
    let _turn = one_at_a_time();
    for workers in [4, 8] {
        let exp = Experiment {
            workers,
            mode: Mode::Async,
            lr: 0.01,
            length: Length::Steps(300),
            ..Default::default()
        };
        let full = summary(exp.clone()).staleness_mean.unwrap();
        let slow = summary(Experiment { slow: 30.0, ..exp }).staleness_mean.unwrap();
        assert!(
            (full - slow).abs() <= 1.0,
            "{workers} workers: staleness {full:.2} at full speed, {slow:.2} at ×30"
        );
        assert!(
            (slow - (workers as f64 - 1.0)).abs() <= 1.0,
            "{workers} workers: staleness {slow:.2} at ×30, about N − 1 expected"
        );
    }
}

/// Presses "step" `presses` times, each once the previous one has moved something.
fn step(s: &mut Session, presses: usize, mut on: impl FnMut(&Event)) {
    for _ in 0..presses {
        s.control(Control::StepPhase).unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut moved = false;
        while !moved && Instant::now() < deadline {
            s.poll_timeout(Duration::from_millis(5), |e| {
                moved |= matches!(e, Event::Phase { .. });
                on(e);
            });
        }
        assert!(moved, "a press moved nothing");
    }
}

#[test]
fn step_mode_in_async_interleaves_workers_as_full_speed_does() {
    let _turn = one_at_a_time();
    let exp = Experiment {
        workers: 4,
        mode: Mode::Async,
        lr: 0.01,
        length: Length::Steps(10_000),
        ..Default::default()
    };
    let options = SessionOptions {
        start_paused: true,
        ..Default::default()
    };
    let mut s = Session::start_with_data(exp, Arc::new(digits()), options, None).unwrap();
    let mut phases = 0;
    // Four events per iteration (pull, forward, backward, push): 40 iterations.
    step(&mut s, 160, |e| phases += usize::from(matches!(e, Event::Phase { .. })));
    assert_eq!(phases, 160, "one event per press");
    let mean = s.state().staleness_mean().unwrap();
    assert!(
        (mean - 3.0).abs() <= 1.0,
        "mean staleness {mean:.2} in step mode, N − 1 = 3 expected"
    );
    s.control(Control::Stop).unwrap();
    s.run_to_end(|_| {});
}

#[test]
fn step_mode_keeps_the_ssp_bound_and_a_straggler_waits_for_no_one() {
    let _turn = one_at_a_time();
    let exp = Experiment {
        workers: 3,
        mode: Mode::Ssp(1),
        lr: 0.01,
        stragglers: vec![Straggler { worker: 2, factor: 4.0 }],
        length: Length::Steps(10_000),
        ..Default::default()
    };
    let options = SessionOptions {
        start_paused: true,
        ..Default::default()
    };
    let mut s = Session::start_with_data(exp, Arc::new(digits()), options, None).unwrap();
    let mut waits = 0;
    step(&mut s, 150, |e| {
        waits += usize::from(matches!(e, Event::Phase { phase: Phase::Wait, .. }));
    });
    let st = s.state();
    // The fast workers ran into the bound behind the straggler (as at full speed), and
    // nobody pulled more than K = 1 iteration ahead of the slowest.
    assert!(waits > 0, "no SSP wait in 150 events");
    assert!(st.steps.len() > 10, "{} pushes in 150 events", st.steps.len());
    s.control(Control::Stop).unwrap();
    s.run_to_end(|_| {});
}

#[test]
fn the_first_step_after_a_pause_moves_one_phase_not_a_burst() {
    let _turn = one_at_a_time();
    for mode in [Mode::Sync, Mode::Async] {
        let exp = Experiment {
            workers: 4,
            mode,
            lr: 0.01,
            length: Length::Steps(1_000_000),
            ..Default::default()
        };
        let mut s = Session::start_with_data(exp, Arc::new(digits()), SessionOptions::default(), None).unwrap();
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(300) {
            s.poll_timeout(Duration::from_millis(5), |_| {});
        }
        s.control(Control::Pause).unwrap();
        // Let the workers reach their gates, and read everything they did before.
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(300) {
            s.poll_timeout(Duration::from_millis(5), |_| {});
        }
        let mut phases = Vec::new();
        s.control(Control::StepPhase).unwrap();
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(400) {
            s.poll_timeout(Duration::from_millis(5), |e| {
                if let Event::Phase { worker, .. } = e {
                    phases.push(*worker);
                }
            });
        }
        match mode {
            Mode::Sync => {
                assert!(!phases.is_empty(), "{mode}: the press moved nothing");
                for w in 0..4 {
                    let n = phases.iter().filter(|&&p| p == w).count();
                    assert!(n <= 1, "{mode}: worker {w} went through {n} phases in one press");
                }
            }
            _ => assert_eq!(phases.len(), 1, "{mode}: one event per press, got {phases:?}"),
        }
        s.control(Control::Stop).unwrap();
        s.run_to_end(|_| {});
    }
}
