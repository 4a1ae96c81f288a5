//! The real binary in a real terminal: tmux runs the lab, we send keys and read the
//! screen, and check that quitting restores the terminal.

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
        let deadline = Instant::now() + Duration::from_secs(20);
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
