//! The real binary in a real terminal: tmux runs the lab, we send keys and read the
//! screen, and check that quitting restores the terminal.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

struct Tmux {
    socket: String,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux runs")
    }
    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "lab"]).stdout).into_owned()
    }
    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "lab"];
        args.extend_from_slice(keys);
        let out = self.cmd(&args);
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    /// Waits (up to 20 s) until the screen satisfies `pred`.
    fn wait_for(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        self.wait_within(Duration::from_secs(20), what, pred)
    }
    /// Waits up to `limit` until the screen satisfies `pred` (a person's patience for
    /// what a key should show).
    fn wait_within(&self, limit: Duration, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let screen = self.screen();
            if pred(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

fn tmux_available() -> bool {
    Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn the_lab_runs_in_a_real_terminal_obeys_keys_and_restores_the_terminal() {
    if !tmux_available() {
        // CI installs tmux (.ci/run); on a machine without it, say so rather than fail.
        assert!(
            std::env::var_os("CI").is_none(),
            "tmux is missing on CI: .ci/run must install it"
        );
        eprintln!("skipping: tmux is not installed (apt-get install tmux)");
        return;
    }
    let bin = assert_cmd::cargo::cargo_bin("ddlab");
    let tmux = Tmux {
        socket: format!("ddlab-test-{}", std::process::id()),
    };
    let shell_cmd = format!(
        "{} lab --workers 3 --steps 100000000; echo DDLAB-EXIT=$?; sleep 60",
        bin.display()
    );
    let started = tmux.cmd(&["new-session", "-d", "-x", "120", "-y", "40", "-s", "lab", &shell_cmd]);
    assert!(started.status.success(), "{}", String::from_utf8_lossy(&started.stderr));

    tmux.wait_for("the lab", |s| {
        s.contains("timeline") && s.contains("3 workers") && s.contains("running")
    });
    tmux.wait_for("training progress", |s| {
        s.contains("test accuracy") && !s.contains("step 0 ")
    });

    tmux.keys(&["m"]);
    tmux.wait_for("the switch to async", |s| {
        s.contains("· async ·") && s.contains("parameter server")
    });

    tmux.keys(&["Space"]);
    tmux.wait_for("pause", |s| s.contains("paused"));
    tmux.keys(&["n"]);
    tmux.wait_for("step mode", |s| s.contains("stepping") && s.contains("About to:"));

    tmux.keys(&["?"]);
    tmux.wait_for("the help", |s| {
        s.contains("pause / resume training") && s.contains("Esc closes")
    });
    tmux.keys(&["Escape"]);
    tmux.wait_for("the help to close", |s| !s.contains("Esc closes"));

    tmux.keys(&["q"]);
    let after = tmux.wait_for("the exit", |s| s.contains("DDLAB-EXIT="));
    assert!(after.contains("DDLAB-EXIT=0"), "{after}");
    assert!(
        !after.contains("timeline"),
        "the lab's screen was left behind:\n{after}"
    );
    let alt = tmux.cmd(&["display-message", "-p", "-t", "lab", "#{alternate_on}"]);
    assert_eq!(
        String::from_utf8_lossy(&alt.stdout).trim(),
        "0",
        "still in the alternate screen"
    );
}

#[test]
fn a_person_presses_t_and_the_header_says_the_new_threads_at_80_columns() {
    if !tmux_available() {
        assert!(std::env::var_os("CI").is_none(), "tmux is missing on CI");
        eprintln!("skipping: tmux is not installed (apt-get install tmux)");
        return;
    }
    let bin = assert_cmd::cargo::cargo_bin("ddlab");
    let tmux = Tmux {
        socket: format!("ddlab-threads-{}", std::process::id()),
    };
    // Wide enough that the threads split real work (see `nn::par`).
    let shell_cmd = format!(
        "{} lab --workers 2 --hidden 512,64 --batch 64 --steps 100000000; echo DDLAB-EXIT=$?; sleep 60",
        bin.display()
    );
    let started = tmux.cmd(&["new-session", "-d", "-x", "80", "-y", "24", "-s", "lab", &shell_cmd]);
    assert!(started.status.success(), "{}", String::from_utf8_lossy(&started.stderr));
    let header = |s: &str| s.lines().next().unwrap_or("").to_string();
    tmux.wait_for("the lab on one thread", |s| {
        header(s).contains("2 workers ·") && header(s).contains("running")
    });
    // A person looks at it for a while before pressing anything.
    std::thread::sleep(Duration::from_secs(2));
    tmux.wait_for("training progress", |s| !header(s).contains("step 0 "));
    tmux.keys(&["t"]);
    let screen = tmux.wait_within(Duration::from_secs(5), "the run on 2 threads", |s| {
        header(s).contains("2 workers × 2 threads")
    });
    let first = header(&screen);
    assert!(first.contains("running"), "the run state left the header: {first}");
    assert!(
        screen.lines().nth(1).is_some_and(|l| l.starts_with("┌ timeline")),
        "the header wrapped at 80 columns:\n{screen}"
    );
    // It goes on training on them.
    let step = |s: &str| {
        header(s)
            .split(" · ")
            .find_map(|p| p.strip_prefix("step ").and_then(|n| n.parse::<u64>().ok()))
    };
    let at = step(&screen).expect("the header names the step");
    tmux.wait_for("steps on 2 threads", |s| {
        header(s).contains("× 2 threads") && step(s).is_some_and(|n| n > at + 10)
    });
    tmux.keys(&["q"]);
    let after = tmux.wait_for("the exit", |s| s.contains("DDLAB-EXIT="));
    assert!(after.contains("DDLAB-EXIT=0"), "{after}");
}

#[test]
fn the_lab_refuses_a_non_terminal_with_the_headless_hint() {
    let out = Command::new(assert_cmd::cargo::cargo_bin("ddlab"))
        .arg("lab")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("needs a terminal") && err.contains("ddlab run"), "{err}");
}

#[test]
fn a_lesson_notices_what_the_learner_does_saves_progress_and_resumes() {
    if !tmux_available() {
        assert!(std::env::var_os("CI").is_none(), "tmux is missing on CI");
        eprintln!("skipping: tmux is not installed (apt-get install tmux)");
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let bin = assert_cmd::cargo::cargo_bin("ddlab");
    let tmux = Tmux {
        socket: format!("ddlab-lesson-{}", std::process::id()),
    };
    let run = |name: &str| {
        format!(
            "DDLAB_DATA_DIR={} {} lesson 1; echo DDLAB-EXIT-{name}=$?; sleep 60",
            data.path().display(),
            bin.display()
        )
    };
    let started = tmux.cmd(&["new-session", "-d", "-x", "160", "-y", "45", "-s", "lab", &run("A")]);
    assert!(started.status.success());
    tmux.wait_for("lesson 1, paused", |s| {
        s.contains("lesson 1 · One training step") && s.contains("page 1/3") && s.contains("paused")
    });
    tmux.wait_for("the prompt", |s| s.contains("☐ try this: Press n"));
    tmux.keys(&["n"]);
    tmux.wait_for("the prompt to notice", |s| {
        s.contains("☑ done: Press n") && s.contains("stepping")
    });
    tmux.keys(&["2"]);
    tmux.wait_for("quiz feedback", |s| s.contains("Right. Backward applies"));
    tmux.keys(&["]"]);
    tmux.wait_for("page 2", |s| s.contains("page 2/3"));
    tmux.keys(&["q"]);
    tmux.wait_for("the exit", |s| s.contains("DDLAB-EXIT-A=0"));
    let progress = std::fs::read_to_string(data.path().join("progress.json")).expect("progress saved");
    let p: serde_json::Value = serde_json::from_str(&progress).unwrap();
    assert_eq!(p["lessons"]["01-one-step"]["page"], 1, "{progress}");
    assert_eq!(p["lessons"]["01-one-step"]["quiz"]["0:0"], true, "{progress}");

    // Opening the lesson again resumes where the learner stopped.
    // (the same pane, a new process: killing the session could stop the tmux server
    // just as the next session wants it)
    let respawned = tmux.cmd(&["respawn-pane", "-k", "-t", "lab", &run("B")]);
    assert!(
        respawned.status.success(),
        "{}",
        String::from_utf8_lossy(&respawned.stderr)
    );
    tmux.wait_for("the resumed lesson", |s| {
        s.contains("page 2/3") && s.contains("Many steps")
    });
    tmux.keys(&["q"]);
    tmux.wait_for("the second exit", |s| s.contains("DDLAB-EXIT-B=0"));
}

#[test]
fn quitting_a_lesson_whose_progress_cannot_be_saved_says_so_after_the_screen_closes() {
    if !tmux_available() {
        assert!(std::env::var_os("CI").is_none(), "tmux is missing on CI");
        eprintln!("skipping: tmux is not installed (apt-get install tmux)");
        return;
    }
    // A data directory below a plain file cannot be made, even by root.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("file"), b"").unwrap();
    let data = dir.path().join("file").join("ddlab");
    let bin = assert_cmd::cargo::cargo_bin("ddlab");
    let tmux = Tmux {
        socket: format!("ddlab-unsaved-{}", std::process::id()),
    };
    let run = format!(
        "DDLAB_DATA_DIR={} {} lesson 1; echo DDLAB-EXIT=$?; sleep 60",
        data.display(),
        bin.display()
    );
    let started = tmux.cmd(&["new-session", "-d", "-x", "160", "-y", "45", "-s", "lab", &run]);
    assert!(started.status.success());
    tmux.wait_for("lesson 1", |s| s.contains("page 1/3"));
    tmux.keys(&["]"]);
    tmux.wait_for("page 2", |s| s.contains("page 2/3"));
    tmux.keys(&["q"]);
    let after = tmux.wait_for("the exit", |s| s.contains("DDLAB-EXIT=0"));
    assert!(
        after.contains("ddlab: could not save lesson progress to"),
        "the person is not told their progress was lost:\n{after}"
    );
}

#[test]
fn the_free_lab_lasts_and_answers_a_person_with_a_busy_process_beside_it() {
    if !tmux_available() {
        assert!(std::env::var_os("CI").is_none(), "tmux is missing on CI");
        eprintln!("skipping: tmux is not installed (apt-get install tmux)");
        return;
    }
    let _busy = common::Busy::start();
    let data = tempfile::tempdir().unwrap();
    let bin = assert_cmd::cargo::cargo_bin("ddlab");
    let tmux = Tmux {
        socket: format!("ddlab-free-{}", std::process::id()),
    };
    let shell_cmd = format!(
        "DDLAB_DATA_DIR={} {}; echo DDLAB-EXIT=$?; sleep 60",
        data.path().display(),
        bin.display()
    );
    let started = tmux.cmd(&["new-session", "-d", "-x", "120", "-y", "40", "-s", "lab", &shell_cmd]);
    assert!(started.status.success(), "{}", String::from_utf8_lossy(&started.stderr));
    tmux.wait_for("the home screen", |s| s.contains("Free lab"));
    tmux.keys(&["Enter"]);
    tmux.wait_for("the free lab", |s| s.contains("4 workers") && s.contains("running"));
    // A person reads the screen for a while before acting: the run is still there.
    std::thread::sleep(Duration::from_secs(5));
    let screen = tmux.screen();
    let header = screen.lines().next().unwrap_or("");
    assert!(
        header.contains("running"),
        "the run ended under the learner's hands:\n{screen}"
    );
    tmux.keys(&["m"]);
    tmux.wait_within(Duration::from_secs(2), "the switch to async", |s| {
        s.contains("· async ·") && s.contains("parameter server")
    });
    tmux.keys(&["+"]);
    tmux.wait_within(Duration::from_secs(2), "a fifth worker", |s| s.contains("5 workers"));
    tmux.keys(&["q"]);
    let after = tmux.wait_for("the exit", |s| s.contains("DDLAB-EXIT="));
    assert!(after.contains("DDLAB-EXIT=0"), "{after}");
    let alt = tmux.cmd(&["display-message", "-p", "-t", "lab", "#{alternate_on}"]);
    assert_eq!(
        String::from_utf8_lossy(&alt.stdout).trim(),
        "0",
        "still in the alternate screen"
    );
}

/// The keys a person presses for `action` (the mode keys cycle: pressed again until the
/// prompt ticks).
fn keys_for(action: ddlab::lesson::LessonAction) -> &'static str {
    use ddlab::lesson::LessonAction::*;
    match action {
        Pause => "Space",
        StepPhase => "n",
        SlowMotion => "z",
        SwitchToSync | SwitchToAsync | SwitchToSsp | SwitchToBackup | SwitchToLocal => "m",
        AddWorker => "+",
        RemoveWorker => "-",
        ChangeThreads => "t",
        ChangeAllreduce => "a",
        ChangeLink => "l",
        AddStraggler | RemoveStraggler => "s",
        LinearLrScaling => "r",
        RaiseLr => "*",
        LowerLr => "/",
        MomentumOff | MomentumOn => "M",
        KeepGhost => "c",
        Restart => "R",
    }
}

#[test]
fn every_lesson_prompt_can_be_done_by_a_person() {
    if !tmux_available() {
        assert!(std::env::var_os("CI").is_none(), "tmux is missing on CI");
        eprintln!("skipping: tmux is not installed (apt-get install tmux)");
        return;
    }
    let lessons = ddlab::lesson::load_from(None).unwrap();
    let bin = assert_cmd::cargo::cargo_bin("ddlab");
    let tmux = Tmux {
        socket: format!("ddlab-prompts-{}", std::process::id()),
    };
    let mut first = true;
    for lesson in &lessons {
        for (p, page) in lesson
            .pages
            .iter()
            .enumerate()
            .filter(|(_, page)| !page.tries.is_empty())
        {
            // Open the lesson at this page, as a learner who left off there.
            let data = tempfile::tempdir().unwrap();
            let progress = serde_json::json!({ "lessons": { lesson.id.clone(): {
                "page": p, "visited": [], "completed": false } } });
            std::fs::write(data.path().join("progress.json"), progress.to_string()).unwrap();
            let run = format!(
                "DDLAB_DATA_DIR={} {} lesson {}; echo DDLAB-EXIT=$?; sleep 60",
                data.path().display(),
                bin.display(),
                lesson.number
            );
            let started = if first {
                tmux.cmd(&["new-session", "-d", "-x", "200", "-y", "70", "-s", "lab", &run])
            } else {
                tmux.cmd(&["respawn-pane", "-k", "-t", "lab", &run])
            };
            first = false;
            assert!(started.status.success(), "{}", String::from_utf8_lossy(&started.stderr));
            let at = format!("page {}/{}", p + 1, lesson.pages.len());
            tmux.wait_for(&format!("lesson {} {at}", lesson.number), |s| {
                s.contains(&format!("lesson {} ·", lesson.number)) && s.contains(&at) && s.contains("try this")
            });
            std::thread::sleep(Duration::from_secs(3));
            for t in &page.tries {
                let done = |s: &str| s.matches("☑ done").count();
                let before = done(&tmux.screen());
                let mut ticked = false;
                // (a page already in the mode its prompt asks for needs a whole round of
                // the mode cycle)
                for _ in 0..ddlab::tui::lab::MODES.len().max(4) {
                    tmux.keys(&[keys_for(t.action)]);
                    let deadline = Instant::now() + Duration::from_secs(3);
                    while Instant::now() < deadline && !ticked {
                        ticked = done(&tmux.screen()) > before;
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    if ticked {
                        break;
                    }
                }
                assert!(
                    ticked,
                    "lesson {} page {}: \"{}\" did not tick:\n{}",
                    lesson.number,
                    p + 1,
                    t.prompt,
                    tmux.screen()
                );
            }
            tmux.keys(&["q"]);
            tmux.wait_for("the exit", |s| s.contains("DDLAB-EXIT=0"));
        }
    }
}
