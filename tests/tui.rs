//! The lab's screens, drawn from deterministic (replayed) state into ratatui's
//! TestBackend and compared with insta snapshots; and the key table end to end.

use std::sync::Arc;

use ddlab::config::{Experiment, Mode};
use ddlab::data::digits;
use ddlab::train::{Event, Outcome, Phase};
use ddlab::tui::app::Lab;
use ddlab::tui::demo::{report, segment, sync_lab};
use ddlab::tui::keys::{Action, LAB_KEYS};
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
    let data = Arc::new(digits());
    let mut lab = Lab::replay(
        Experiment {
            workers: 3,
            mode: Mode::Async,
            ..Default::default()
        },
        data,
    );
    lab.apply(&Event::Started {
        params: 9610,
        total_samples: 42240,
        train_len: 1438,
        nodes: 1,
        intra_link: None,
        wire_bytes: 4,
    });
    lab.apply(&segment(Mode::Async, 3));
    for i in 0..30u64 {
        let w = (i % 3) as usize;
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
    insta::assert_snapshot!(text(&app_with(lab), 120, 40));
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
        assert!(screen.contains(b.help), "the help lacks '{}'", b.help);
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
