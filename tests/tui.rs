//! The lab's screens, drawn from deterministic (replayed) state into ratatui's
//! TestBackend and compared with insta snapshots; and the key table end to end.

use std::sync::Arc;

use ddlab::config::{Experiment, Mode};
use ddlab::data::digits;
use ddlab::train::{Event, Outcome, Phase};
use ddlab::tui::demo::{report, segment, started, sync_lab, sync_lab_on};
use ddlab::tui::keys::{Action, LAB_KEYS};
use ddlab::tui::lab::Lab;
use ddlab::tui::theme::Theme;
use ddlab::tui::{view, App, Screen};
use ratatui::backend::TestBackend;
use ratatui::Terminal;

const NO_COLOR: Theme = Theme { color: false };

fn text(app: &App, w: u16, h: u16) -> String {
    let mut terminal = Terminal::new(TestBackend::new(w, h)).unwrap();
    terminal.draw(|f| view::draw(f, app)).unwrap();
    let buf = terminal.backend().buffer().clone();
    (0..h)
        .map(|y| {
            (0..w)
                .map(|x| buf[(x, y)].symbol().to_string())
                .collect::<String>()
                .trim_end()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn app_with(lab: Lab) -> App {
    let data = Arc::clone(&lab.data);
    App::new(Screen::Lab, Some(lab), Experiment::default(), data, NO_COLOR)
}

#[test]
fn lab_screen_running_sync_at_80x24() {
    insta::assert_snapshot!(text(&app_with(sync_lab(4, 12, false)), 80, 24));
}

#[test]
fn lab_screen_paused_mid_all_reduce_at_120x40() {
    let mut lab = sync_lab(4, 12, true);
    lab.paused = true;
    insta::assert_snapshot!(text(&app_with(lab), 120, 40));
}

#[test]
fn lab_screen_async_with_staleness_at_120x40() {
    insta::assert_snapshot!(text(&app_with(async_lab(3)), 120, 40));
}

/// An async run of `workers` workers, scripted: each pushes in turn.
fn async_lab(workers: usize) -> Lab {
    let data = Arc::new(digits());
    let mut lab = Lab::replay(
        Experiment {
            workers,
            mode: Mode::Async,
            ..Default::default()
        },
        data,
    );
    lab.apply(&started());
    lab.apply(&segment(Mode::Async, workers));
    for i in 0..10 * workers as u64 {
        let w = (i % workers as u64) as usize;
        let t = i * 40_000;
        for (phase, a, b) in [
            (Phase::Pull, 0, 5_000),
            (Phase::Forward, 5_000, 20_000),
            (Phase::Backward, 20_000, 35_000),
            (Phase::Push, 35_000, 40_000),
        ] {
            lab.apply(&Event::Phase {
                worker: w,
                step: i,
                phase,
                start_ns: t + a,
                end_ns: t + b,
            });
        }
        lab.apply(&Event::WorkerStep(report(w, i, t + 40_000, Some(i.min(2)))));
    }
    lab
}

/// What every lab screen must be at any size: a header of one line (it never wraps),
/// nothing drawn past the width, the keys at the bottom.
fn check_frame(screen: &str, w: u16, what: &str) {
    let lines: Vec<&str> = screen.lines().collect();
    assert!(lines[0].contains("ddlab"), "{what}: the header:\n{screen}");
    assert!(
        lines[1].starts_with('┌')
            || lines[1].starts_with('┏')
            || lines[1].starts_with('╔')
            || lines[1].starts_with('│'),
        "{what}: the header wrapped:\n{screen}"
    );
    assert!(
        lines.iter().all(|l| l.chars().count() <= w as usize),
        "{what}: too wide"
    );
    assert!(lines.last().unwrap().contains("q quit"), "{what}: the keys:\n{screen}");
}

#[test]
fn every_screen_works_at_80x24_100x30_and_120x40() {
    for (w, h) in [(80u16, 24u16), (100, 30), (120, 40)] {
        let free = text(&app_with(sync_lab(4, 12, false)), w, h);
        check_frame(&free, w, "free lab");
        insta::assert_snapshot!(format!("free_lab_{w}x{h}"), free);

        // Eight async workers: those that do not fit are counted, not silently left out.
        let many = text(&app_with(async_lab(8)), w, h);
        check_frame(&many, w, "async");
        if h < 30 {
            assert!(many.contains("more workers"), "async at {w}x{h}:\n{many}");
        }
        insta::assert_snapshot!(format!("async_8_workers_{w}x{h}"), many);

        // A lesson page with a quiz: its prompt and quiz are reachable by scrolling, and
        // the page keys stay on screen.
        let mut lesson = lesson_page_app();
        let top = text(&lesson, w, h);
        assert!(
            top.contains("1–4 answer") && top.contains("esc lessons"),
            "{w}x{h}:\n{top}"
        );
        insta::assert_snapshot!(format!("lesson_page_{w}x{h}"), top);
        for _ in 0..10 {
            lesson.update(Action::PageDown);
            text(&lesson, w, h); // (the view measures how far the page scrolls)
        }
        let bottom = text(&lesson, w, h);
        assert!(
            bottom.contains("press 1–4 to answer"),
            "{w}x{h}: the quiz is out of reach:\n{bottom}"
        );
        assert!(
            bottom.contains("try this"),
            "{w}x{h}: the prompt is out of reach:\n{bottom}"
        );

        // The help: every binding reachable (scrolled when the screen is short).
        let mut app = app_with(sync_lab(4, 3, false));
        app.update(Action::Help);
        let mut seen = String::new();
        for _ in 0..10 {
            seen.push_str(&text(&app, w, h));
            app.handle_key(crossterm::event::KeyEvent::new(
                crossterm::event::KeyCode::PageDown,
                crossterm::event::KeyModifiers::NONE,
            ));
        }
        for b in LAB_KEYS {
            let first_words: String = b.help_text().chars().take(24).collect();
            assert!(
                seen.contains(&first_words),
                "{w}x{h}: the help never shows '{first_words}'"
            );
        }
        app.help_scroll.set(0);
        insta::assert_snapshot!(format!("help_{w}x{h}"), text(&app, w, h));
    }
}

/// Lesson 1's first page (a prompt, then a quiz) beside a running lab, not yet answered.
fn lesson_page_app() -> App {
    let lessons = ddlab::lesson::load_from(None).unwrap();
    let mut lab = sync_lab(1, 3, false);
    lab.paused = true;
    let mut app = app_with(lab);
    app.lesson = Some(ddlab::tui::LessonView::new(lessons[0].clone(), 0));
    app
}

#[test]
fn tab_moves_the_focus_and_f_zooms_the_focused_panel_to_the_whole_screen() {
    let mut app = app_with(sync_lab(4, 12, false));
    app.update(Action::FocusNext); // the timeline (the first panel)
    app.update(Action::FocusNext); // the collective view
    app.update(Action::Zoom);
    let zoomed = text(&app, 120, 40);
    assert!(zoomed.contains("ring all-reduce · 4 workers"), "{zoomed}");
    assert!(
        !zoomed.contains("timeline") && !zoomed.contains("training loss"),
        "{zoomed}"
    );
    check_frame(&zoomed, 120, "zoomed");
    app.handle_key(crossterm::event::KeyEvent::new(
        crossterm::event::KeyCode::Esc,
        crossterm::event::KeyModifiers::NONE,
    ));
    assert!(!app.zoomed, "esc leaves the zoom first");
    assert_eq!(app.screen, Screen::Lab, "… and stays in the lab");
}

#[test]
fn lab_screen_diverged() {
    let mut lab = sync_lab(2, 3, false);
    lab.apply(&Event::Finished {
        outcome: Outcome::Diverged { step: 3, worker: 1 },
        t_ns: 400_000,
    });
    let screen = text(&app_with(lab), 100, 30);
    assert!(screen.contains("DIVERGED at step 3"), "{screen}");
    insta::assert_snapshot!(screen);
}

#[test]
fn too_small_terminal_gets_a_message_not_a_panic() {
    let screen = text(&app_with(sync_lab(2, 2, false)), 40, 10);
    assert!(
        screen.contains("ddlab needs at") && screen.contains("60×18"),
        "{screen}"
    );
    insta::assert_snapshot!(screen);
}

#[test]
fn home_screen_and_help_overlay() {
    let data = Arc::new(digits());
    let mut app = App::new(Screen::Home, None, Experiment::default(), data, NO_COLOR);
    insta::assert_snapshot!("home", text(&app, 80, 24));
    app.update(Action::Help);
    insta::assert_snapshot!("home_help", text(&app, 80, 24));
}

#[test]
fn help_lists_every_binding_of_the_table() {
    let mut app = app_with(sync_lab(2, 2, false));
    app.update(Action::Help);
    let screen = text(&app, 120, 40);
    for b in LAB_KEYS {
        if b.help.is_empty() {
            // a key without a line of its own is named on another key's line
            assert!(
                LAB_KEYS.iter().any(|o| o.help.contains(b.label)),
                "no line of the help names {}",
                b.label
            );
            continue;
        }
        // (long lines wrap: their first words are on one line)
        let help: String = b.help_text().chars().take(30).collect();
        assert!(screen.contains(&help), "the help lacks '{help}'");
    }
}

#[test]
fn sixteen_workers_at_200x60_render() {
    let app = app_with(sync_lab(16, 8, false));
    let screen = text(&app, 200, 60);
    assert!(screen.contains("w15"), "{screen}");
}

#[test]
fn replayed_controls_update_the_lab_without_a_session() {
    // In replay mode actions change the settings and say so; none needs a session.
    let mut app = app_with(sync_lab(4, 3, false));
    app.update(Action::CycleLink);
    app.update(Action::ToggleStraggler);
    app.update(Action::KeepGhost);
    let lab = app.lab.as_ref().unwrap();
    assert!(lab.exp.link.is_some());
    assert_eq!(lab.exp.stragglers.len(), 1);
    assert_eq!(lab.ghosts.len(), 1);
    assert!(lab.messages.iter().any(|m| m.contains("straggler")));
}

/// Lesson 1 beside a replayed lab, with the first page's prompt done and its quiz answered.
fn lesson_app() -> App {
    let lessons = ddlab::lesson::load_from(None).unwrap();
    let mut lab = sync_lab(1, 3, false);
    lab.paused = true;
    let mut app = app_with(lab);
    app.lesson = Some(ddlab::tui::LessonView::new(lessons[0].clone(), 0));
    app
}

#[test]
fn a_lesson_page_beside_the_lab_ticks_prompts_and_answers_quizzes() {
    let mut app = lesson_app();
    let before = text(&app, 160, 45);
    assert!(before.contains("☐ try this: Press n"), "{before}");
    assert!(before.contains("press 1–4 to answer"), "{before}");
    // the learner steps one phase: the prompt notices
    app.update(Action::StepPhase);
    // and answers the quiz wrongly: immediate feedback with the right answer
    app.update(Action::Answer(1));
    let after = text(&app, 160, 45);
    assert!(after.contains("☑ done: Press n"), "{after}");
    assert!(after.contains("Not quite: the answer is 2."), "{after}");
    insta::assert_snapshot!("lesson_page", after);
    // a second answer does not change the first
    app.update(Action::Answer(2));
    assert_eq!(app.lesson.as_ref().unwrap().answers, vec![Some(1)]);
    // pages: forward, not past the end, back
    app.update(Action::NextPage);
    assert_eq!(app.lesson.as_ref().unwrap().page, 1);
    assert!(text(&app, 160, 45).contains("page 2/3"));
    app.update(Action::NextPage);
    app.update(Action::NextPage);
    assert_eq!(app.lesson.as_ref().unwrap().page, 2);
    app.update(Action::PrevPage);
    assert_eq!(app.lesson.as_ref().unwrap().page, 1);
    // esc: back to the menu, which lists every lesson
    app.update(Action::Back);
    assert_eq!(app.screen, Screen::Home);
    let home = text(&app, 120, 30);
    assert!(
        home.contains("1. One training step") && home.contains("10. Going to a cluster"),
        "{home}"
    );
}

#[test]
fn every_prompt_action_can_be_done_in_the_lab() {
    // Each prompt's action, done with the lab's own key on a lab whose settings allow it
    // (the mode key cycles: to reach a mode, start from the one before it).
    use ddlab::lesson::LessonAction;
    use ddlab::tui::lesson::detect;
    let base = Experiment::default();
    let with = |f: &dyn Fn(&mut Experiment)| {
        let mut e = base.clone();
        f(&mut e);
        e
    };
    let cases: Vec<(LessonAction, Action, Experiment)> = vec![
        (LessonAction::Pause, Action::TogglePause, base.clone()),
        (LessonAction::StepPhase, Action::StepPhase, base.clone()),
        (LessonAction::SlowMotion, Action::SlowMotion, base.clone()),
        (
            LessonAction::SwitchToSync,
            Action::CycleMode,
            with(&|e| e.mode = Mode::Local(8)),
        ),
        (LessonAction::SwitchToAsync, Action::CycleMode, base.clone()),
        (
            LessonAction::SwitchToSsp,
            Action::CycleMode,
            with(&|e| e.mode = Mode::Async),
        ),
        (
            LessonAction::SwitchToBackup,
            Action::CycleMode,
            with(&|e| e.mode = Mode::Ssp(2)),
        ),
        (
            LessonAction::SwitchToLocal,
            Action::CycleMode,
            with(&|e| e.mode = Mode::Backup(1)),
        ),
        (LessonAction::AddWorker, Action::MoreWorkers, base.clone()),
        (LessonAction::RemoveWorker, Action::FewerWorkers, base.clone()),
        (LessonAction::ChangeThreads, Action::CycleThreads, base.clone()),
        (LessonAction::ChangeAllreduce, Action::CycleAllReduce, base.clone()),
        (LessonAction::ChangeLink, Action::CycleLink, base.clone()),
        (LessonAction::AddStraggler, Action::ToggleStraggler, base.clone()),
        (
            LessonAction::RemoveStraggler,
            Action::ToggleStraggler,
            with(&|e| e.stragglers = vec!["0:4".parse().unwrap()]),
        ),
        (LessonAction::LinearLrScaling, Action::CycleLrRule, base.clone()),
        (LessonAction::RaiseLr, Action::RaiseLr, base.clone()),
        (LessonAction::LowerLr, Action::LowerLr, base.clone()),
        (LessonAction::MomentumOff, Action::ToggleMomentum, base.clone()),
        (
            LessonAction::MomentumOn,
            Action::ToggleMomentum,
            with(&|e| e.momentum = 0.0),
        ),
        (LessonAction::KeepGhost, Action::KeepGhost, base.clone()),
        (LessonAction::Restart, Action::Restart, base.clone()),
    ];
    let mut covered = std::collections::HashSet::new();
    for (want, action, before) in &cases {
        let mut app = app_with(Lab::replay(before.clone(), Arc::new(digits())));
        app.update(*action);
        let after = &app.lab.as_ref().unwrap().exp;
        let did = detect(*action, before, after);
        assert!(did.contains(want), "{want:?} from {action:?}: {did:?}");
        // The key said what it did, or why not.
        assert!(app.lab.as_ref().unwrap().error.is_none(), "{want:?}: refused");
        covered.insert(*want);
    }
    for a in LessonAction::ALL {
        assert!(covered.contains(&a), "no way to do {a:?} in the lab");
    }
}

/// A lab whose workers run on GPUs: the header names the GPU, the timeline's legend has
/// the copies to and from the host, and they are drawn as phases of their own.
#[test]
fn lab_screen_on_gpus_shows_the_copies() {
    let exp = Experiment {
        workers: 2,
        device: ddlab::config::Device::Gpu,
        ..Experiment::default()
    };
    let screen = text(&app_with(sync_lab_on(exp, 3, false)), 120, 40);
    assert!(screen.contains("on gpu0 demo GPU (vulkan) ×2"), "{screen}");
    assert!(
        screen.contains("h=to host") && screen.contains("d=to device"),
        "{screen}"
    );
    assert!(screen.contains("BBhh") && screen.contains("AAdd"), "{screen}");
    insta::assert_snapshot!(screen);
}

/// Reads the lab's run until `pred` holds of it (or fails after 10 s).
fn drain_until(lab: &mut Lab, what: &str, pred: impl Fn(&Lab) -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !pred(lab) {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
        lab.drain();
    }
}

#[test]
fn switches_made_while_paused_add_up_and_apply_together_and_restart_keeps_the_pace() {
    let exp = Experiment {
        workers: 4,
        ..Default::default()
    };
    let mut lab = Lab::start(exp, Arc::new(digits()), true).unwrap();
    drain_until(&mut lab, "the first segment", |l| l.state().current().is_some());
    // m m m from sync: async, ssp:2, then backup:1 (the third mode); + + two workers.
    for _ in 0..3 {
        lab.update(Action::CycleMode);
    }
    lab.update(Action::MoreWorkers);
    lab.update(Action::MoreWorkers);
    assert_eq!(lab.exp.mode, Mode::Backup(1));
    assert_eq!(lab.exp.workers, 6);
    assert_eq!(lab.error, None);
    assert_eq!(lab.pending(), "backup:1 · 6 workers");
    let header = text(&app_with_running(&lab), 200, 40);
    assert!(
        header
            .lines()
            .next()
            .unwrap()
            .contains("on resume: backup:1 · 6 workers"),
        "{header}"
    );
    // Nothing applied while paused: still sync on 4.
    assert_eq!((lab.current_mode(), lab.current_workers()), (Mode::Sync, 4));
    lab.update(Action::TogglePause);
    drain_until(&mut lab, "both switches applied together", |l| {
        let seg = l.state().current().unwrap();
        seg.mode == Mode::Backup(1) && seg.workers == 6
    });
    // One segment took both: no segment in between ran with only one of them.
    assert!(lab
        .state()
        .segments
        .iter()
        .all(|s| (s.mode == Mode::Sync) == (s.workers == 4)));
    assert_eq!(lab.pending(), "");
    // Slow motion (about 1 step a second), paused, restart: the new run keeps the pace
    // and the pause.
    lab.update(Action::SlowMotion);
    lab.update(Action::SlowMotion);
    let pace = lab.exp.slow;
    assert!(pace > 1.0, "z slows the run: ×{pace}");
    assert_eq!(lab.pace_target, Some(1.0));
    lab.update(Action::TogglePause);
    lab.update(Action::Restart);
    assert!(lab.paused, "a paused lab restarts paused");
    assert_eq!(lab.exp.slow, pace);
    let session = lab.session.as_ref().unwrap();
    assert_eq!(session.experiment().slow, pace, "the new run's pace");
}

/// An app around a running lab, for drawing it (the lab stays with the test).
fn app_with_running(lab: &Lab) -> App {
    let mut replay = Lab::replay(lab.exp.clone(), Arc::clone(&lab.data));
    replay.replay = lab.state().clone();
    replay.view = lab.view.clone();
    replay.paused = lab.paused;
    app_with(replay)
}

/// The key a person presses, as the terminal delivers it.
fn press(app: &mut App, c: char) {
    app.handle_key(crossterm::event::KeyEvent::new(
        crossterm::event::KeyCode::Char(c),
        crossterm::event::KeyModifiers::NONE,
    ));
}

#[test]
fn t_asks_for_two_threads_per_worker_and_the_header_and_numbers_say_them_once_taken() {
    let mut app = app_with(sync_lab(4, 12, false));
    press(&mut app, 't');
    let lab = app.lab.as_mut().unwrap();
    // (every machine's cycle goes 1 → 2: even one core shows threads taking turns)
    assert_eq!(lab.exp.threads, 2, "t from one thread asks for two");
    assert_eq!(lab.error, None);
    assert_eq!(lab.pending(), "2 threads per worker");
    let (said, bad) = lab.status();
    assert!(
        said.starts_with("2 threads per worker from the next step: the same numbers, another speed") && !bad,
        "{said}"
    );
    // Asked, not yet taken: the header says what runs and what comes.
    let asked = text(&app, 80, 24);
    let header = asked.lines().next().unwrap();
    assert!(
        header.contains("4 workers · ")
            && header.contains("running")
            && header.ends_with("next step: 2 threads per worker"),
        "{header}"
    );
    // The run takes them at its next step (a segment with 2 threads), and a step on
    // them is reported: its compute took half as long.
    let lab = app.lab.as_mut().unwrap();
    lab.apply(&Event::Segment {
        index: 1,
        mode: Mode::Sync,
        workers: 4,
        threads: 2,
        allreduce: ddlab::comm::AllReduceAlgo::Ring,
        link: None,
        lr_scaling: ddlab::nn::LrScaling::None,
        lr: 0.1,
        momentum: 0.9,
        update: 12,
        samples: 12 * 128,
        params_hash: 0,
        t_ns: 1_300_000,
    });
    for w in 0..4 {
        let mut step = report(w, 13, 1_400_000, None);
        step.phase_ns[Phase::Forward.index()] /= 2;
        step.phase_ns[Phase::Backward.index()] /= 2;
        step.phase_ns[Phase::Update.index()] /= 2;
        lab.apply(&Event::WorkerStep(step));
    }
    assert_eq!(lab.pending(), "", "taken: nothing pending");
    let small = text(&app, 80, 24);
    let header = small.lines().next().unwrap();
    assert!(header.contains("4 workers × 2 threads"), "{header}");
    assert!(
        header.ends_with("running"),
        "the run state stays at 80 columns: {header}"
    );
    let large = text(&app, 120, 40);
    assert!(large.contains("compute 0.018 ms/step · 2 threads"), "{large}");
    // (what was said names this machine's cores when they are fewer than the threads:
    // a snapshot holds on every machine without it)
    let lab = app.lab.as_mut().unwrap();
    lab.said = None;
    lab.messages.clear();
    insta::assert_snapshot!("two_threads_80x24", text(&app, 80, 24));
    insta::assert_snapshot!("two_threads_120x40", text(&app, 120, 40));
}

#[test]
fn t_goes_back_to_one_thread_after_the_machines_cores() {
    use ddlab::tui::lab::{cores, thread_counts};
    let mut app = app_with(sync_lab(2, 3, false));
    let cycle = thread_counts(cores());
    let mut seen = Vec::new();
    for _ in 0..cycle.len() {
        press(&mut app, 't');
        seen.push(app.lab.as_ref().unwrap().exp.threads);
    }
    let mut expected = cycle[1..].to_vec();
    expected.push(1);
    assert_eq!(seen, expected);
}

#[test]
fn threads_switched_with_t_in_a_running_lab_keep_the_parameters_of_one_thread() {
    use ddlab::config::Length;
    // Wide enough that more threads really split the work (see `nn::par`).
    let exp = Experiment {
        workers: 2,
        hidden: vec![512, 64],
        batch: 64,
        seed: 5,
        ..Default::default()
    };
    let mut lab = Lab::start(exp.clone(), Arc::new(digits()), false).unwrap();
    drain_until(&mut lab, "some steps on one thread", |l| l.state().updates() >= 10);
    lab.update(Action::CycleThreads);
    assert_eq!(lab.error, None);
    drain_until(&mut lab, "the run on 2 threads", |l| {
        l.state().current().is_some_and(|s| s.threads == 2) && l.state().updates() >= l.state().segments[1].update + 10
    });
    // Again: the next count up the cycle, or back to 1 on a 2-core machine.
    lab.update(Action::CycleThreads);
    let third = lab.exp.threads;
    assert_ne!(third, 2);
    drain_until(&mut lab, "the third segment", |l| l.state().segments.len() == 3);
    let seg = &lab.state().segments[2];
    assert_eq!(seg.threads, third);
    // The parameters the third segment starts from are those of a plain run on one
    // thread stopped at the same update.
    let plain = Experiment {
        length: Length::Steps(seg.update),
        ..exp
    };
    let mut s = ddlab::session::Session::start_with_data(
        plain,
        Arc::new(digits()),
        ddlab::session::SessionOptions::default(),
        None,
    )
    .unwrap();
    s.run_to_end(|_| {});
    assert_eq!(
        ddlab::train::params_hash(&s.final_params().unwrap()),
        seg.params_hash,
        "after update {} on 1 then 2 threads",
        seg.update
    );
}

#[test]
fn with_compressed_gradients_m_says_why_the_run_stays_in_sync() {
    let exp = Experiment {
        compress: "topk:1".parse().unwrap(),
        ..Default::default()
    };
    let mut lab = Lab::start(exp, Arc::new(digits()), true).unwrap();
    drain_until(&mut lab, "the first segment", |l| l.state().current().is_some());
    lab.update(Action::CycleMode);
    assert_eq!(lab.exp.mode, Mode::Sync);
    let error = lab.error.clone().expect("m is refused, with the reason");
    assert!(error.starts_with("sync is the only mode this run allows: "), "{error}");
    assert!(error.contains("compress"), "{error}");
}

/// While a person steps a sync run, a change names the step it applies from, and the
/// run switches exactly there: before the first phase, from step 1 (step 0's gradients
/// carry the news); pressed once a step's forward is done, from two steps on.
#[test]
fn a_change_made_while_stepping_names_the_step_it_applies_from_and_applies_there() {
    let mut lab = Lab::start(Experiment::default(), Arc::new(digits()), true).unwrap();
    drain_until(&mut lab, "the first segment", |l| l.state().current().is_some());
    lab.update(Action::CycleAllReduce);
    let said = lab.status().0;
    assert!(said.contains("from step 1 "), "{said}");
    let next = lab.exp.allreduce;
    // One press at a time, as a person: the next only once the last one's phase (or
    // round) has reached the lab, so the lab never falls behind the run.
    let step_until = |lab: &mut Lab, what: &str, pred: &dyn Fn(&Lab) -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let seen = |lab: &Lab| {
            (
                lab.state().segments.len(),
                lab.view.last_span(0).map(|s| (s.step, s.phase, s.end_ns)),
                lab.view.transfers.len(),
            )
        };
        while !pred(lab) {
            let before = seen(lab);
            lab.update(Action::StepPhase);
            while seen(lab) == before {
                assert!(std::time::Instant::now() < deadline, "timed out stepping until {what}");
                std::thread::sleep(std::time::Duration::from_millis(10));
                lab.drain();
            }
        }
    };
    step_until(&mut lab, "the switch", &|l| l.state().segments.len() == 2);
    assert_eq!(current_algo_and_step(&lab), (next, 1), "the new all-reduce from step 1");
    // Step into a later step's backward (its forward done), then change again.
    step_until(&mut lab, "a forward done", &|l| {
        l.view
            .last_span(0)
            .is_some_and(|s| s.step >= 3 && s.phase == Phase::Forward)
    });
    let at = lab.view.last_span(0).unwrap().step;
    lab.update(Action::CycleAllReduce);
    let said = lab.status().0;
    assert!(said.contains(&format!("from step {} ", at + 2)), "{said}");
    let third = lab.exp.allreduce;
    assert_ne!(third, next);
    step_until(&mut lab, "the second switch", &|l| l.state().segments.len() == 3);
    assert_eq!(current_algo_and_step(&lab), (third, at + 2));
}

/// The current segment's all-reduce and first step.
fn current_algo_and_step(lab: &Lab) -> (ddlab::comm::AllReduceAlgo, u64) {
    let seg = lab.state().current().unwrap();
    (seg.allreduce, seg.update)
}

/// A run that stays near chance says so, with what to try, on the status line: async
/// at a high LR with momentum (lesson 7's collapse) is not left looking like any run.
#[test]
fn a_run_near_chance_gets_a_hint_on_the_status_line() {
    let mut lab = async_lab(4);
    assert!(!lab.status().0.contains("not learning"), "no evaluation yet");
    let eval = |step: u64, accuracy: f64| Event::Eval {
        step,
        samples: step * 32 + 1,
        epoch: 0,
        test_loss: 2.3,
        test_accuracy: accuracy,
        t_ns: step * 40_000,
    };
    lab.apply(&eval(20, 0.09));
    assert!(
        !lab.status().0.contains("not learning"),
        "one evaluation is not a trend"
    );
    lab.apply(&eval(40, 0.11));
    let (said, bad) = lab.status();
    assert!(
        said.contains("not learning: test accuracy 11 % is near chance (10 %)"),
        "{said}"
    );
    assert!(said.contains("/ lowers the LR, M turns momentum off"), "{said}");
    assert!(bad);
    // Learning again: the hint goes.
    lab.apply(&eval(60, 0.6));
    assert!(!lab.status().0.contains("not learning"), "{}", lab.status().0);
}

/// The parameter-server panel lists every worker, one that has not pushed yet too (a
/// missing row would look like a worker that does not exist).
#[test]
fn the_server_panel_lists_a_worker_that_has_not_pushed_yet() {
    let exp = Experiment {
        workers: 4,
        mode: Mode::Backup(1),
        ..Default::default()
    };
    let mut lab = Lab::replay(exp, Arc::new(digits()));
    lab.apply(&started());
    lab.apply(&segment(Mode::Backup(1), 4));
    for w in 0..3 {
        lab.apply(&Event::WorkerStep(report(w, 0, 40_000, Some(0))));
    }
    let screen = text(&app_with(lab), 100, 30);
    assert!(screen.contains("w3  no push yet"), "{screen}");
    assert!(screen.contains("w2  pushed"), "{screen}");
}

/// Held right after a switch from async to sync, the explanation speaks of the sync
/// segment's first phase, not of the pull the async workers would have done next.
#[test]
fn held_after_a_switch_the_explanation_speaks_of_the_new_segments_first_phase() {
    let mut lab = async_lab(4);
    let mut sync = segment(Mode::Sync, 4);
    if let Event::Segment { t_ns, update, .. } = &mut sync {
        *t_ns = 10_000_000; // after every span of the async segment
        *update = 40;
    }
    lab.apply(&sync);
    lab.exp.mode = Mode::Sync;
    lab.paused = true;
    let screen = text(&app_with(lab), 120, 40);
    assert!(!screen.contains("will fetch"), "{screen}");
    assert!(screen.contains("About to: forward"), "{screen}");
}
