//! The MPI backend through `mpirun` on the built binary (MPI can be initialised only
//! once per process, so every test launches its own job). Needs `--features mpi` and an
//! MPI installation: `.ci/run` installs OpenMPI and runs `cargo test --features mpi --test mpi`.
#![cfg(feature = "mpi")]

mod common;

use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};

/// MPI jobs run one at a time: on a 2-core machine several at once measure each other
/// (the check's link test above all), not the code.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// `mpirun -n N ddlab ARGS`, with what OpenMPI needs to run as root and oversubscribed,
/// killed after two minutes rather than hanging a CI job.
fn mpirun(n: usize, args: &[&str]) -> Output {
    common::mpirun(120)
        .args(["-n", &n.to_string()])
        .arg(assert_cmd::cargo::cargo_bin("ddlab"))
        .args(args)
        .output()
        .expect("mpirun is installed (apt-get install openmpi-bin libopenmpi-dev)")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_passes_on_2_and_4_ranks_and_rank_0_alone_prints() {
    let _serial = serial();
    for n in [2, 4] {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("check.json");
        let out = mpirun(n, &["check", "--quick", "--json", json.to_str().unwrap()]);
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "n={n}: {stdout}\n{stderr}");
        assert!(stdout.contains(&format!("ddlab check: {n} ranks (mpi)")), "{stdout}");
        assert_eq!(
            stdout.matches("verdict: PASS").count(),
            1,
            "rank 0 alone prints: {stdout}"
        );
        let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        let ranks = report["ranks"].as_array().unwrap();
        assert_eq!(ranks.len(), n);
        // one process per rank
        let pids: std::collections::BTreeSet<u64> = ranks.iter().map(|r| r["pid"].as_u64().unwrap()).collect();
        assert_eq!(pids.len(), n);
        // the library's own all-reduce is measured and named `mpi`
        assert!(report["bandwidth"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["algorithm"] == "mpi" && r["workers"] == n));
        assert!(report["training_max_relative_diff"].as_f64().unwrap() <= 1e-5);
    }
}

#[test]
fn a_corrupting_rank_is_named_and_the_job_fails() {
    let _serial = serial();
    let out = mpirun(2, &["check", "--quick", "--sizes", "64K", "--inject", "corrupt:1"]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("✗ collectives"), "{stdout}");
    assert!(stdout.contains("on rank 1"), "{stdout}");
    assert!(stdout.contains("element 8191"), "{stdout}\n{stderr}");
}

#[test]
fn a_slow_rank_is_named_by_its_link_and_the_job_fails() {
    let _serial = serial();
    let out = mpirun(4, &["check", "--quick", "--sizes", "4", "--inject", "slow:2"]);
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("slow link: rank 2 ("), "{stdout}\n{stderr}");
    assert!(stdout.contains("→ rank 3"), "{stdout}");
}

#[test]
fn one_rank_under_mpirun_is_warned_about() {
    let _serial = serial();
    let out = mpirun(1, &["check", "--quick", "--sizes", "4"]);
    let (stdout, _) = text(&out);
    assert!(stdout.contains("world size is 1 under mpirun"), "{stdout}");
}

/// The summary object (last line) of a `--json` export.
fn summary(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_json::from_str(text.lines().last().unwrap()).unwrap()
}

/// Every step's loss, in order.
fn losses(path: &std::path::Path) -> Vec<f64> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "step")
        .map(|v| v["loss"].as_f64().unwrap())
        .collect()
}

fn threads_run(n: usize, algo: &str, json: &std::path::Path) {
    let out = Command::new(assert_cmd::cargo::cargo_bin("ddlab"))
        .args([
            "run",
            "-q",
            "--steps",
            "40",
            "--allreduce",
            algo,
            "--workers",
            &n.to_string(),
            "--json",
        ])
        .arg(json)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn sync_over_mpi_equals_threads_for_every_algorithm_on_2_3_and_4_ranks() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    for n in [2, 3, 4] {
        // (hierarchical and 2d over MPI group ranks by host: here one host, one node)
        for algo in ["ring", "tree", "naive", "hierarchical", "2d", "mpi"] {
            let mpi_json = dir.path().join(format!("mpi-{n}-{algo}.jsonl"));
            let out = mpirun(
                n,
                &[
                    "run",
                    "--backend",
                    "mpi",
                    "--steps",
                    "40",
                    "--allreduce",
                    algo,
                    "--json",
                    mpi_json.to_str().unwrap(),
                ],
            );
            let (stdout, stderr) = text(&out);
            assert!(out.status.success(), "n={n} {algo}: {stdout}\n{stderr}");
            // rank 0 alone prints the summary
            assert_eq!(stdout.matches("ddlab run:").count(), 1, "{stdout}");
            assert!(stdout.contains(&format!("{n} workers (MPI ranks)")), "{stdout}");
            // the threads backend's run of the same experiment (mpi: its ring stands in)
            let threads_json = dir.path().join(format!("threads-{n}-{algo}.jsonl"));
            threads_run(n, if algo == "mpi" { "ring" } else { algo }, &threads_json);
            let (m, t) = (summary(&mpi_json), summary(&threads_json));
            assert_eq!(m["workers"], n);
            assert_eq!(m["backend"], "mpi");
            let (lm, lt) = (losses(&mpi_json), losses(&threads_json));
            assert_eq!(lm.len(), 40);
            assert_eq!(lm.len(), lt.len());
            if algo == "mpi" {
                // the library sums in its own order: equal to rounding
                for (a, b) in lm.iter().zip(&lt) {
                    assert!((a - b).abs() <= 1e-4 * b.abs().max(1e-3), "n={n} mpi: {a} vs {b}");
                }
            } else {
                // the same algorithm over MPI messages: the same sums, bit for bit
                assert_eq!(lm, lt, "n={n} {algo}");
                assert_eq!(m["final_params_hash"], t["final_params_hash"], "n={n} {algo}");
            }
        }
    }
}

#[test]
fn parameter_server_modes_run_with_rank_0_as_the_server() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    for (mode, n) in [("async", 4), ("ssp:1", 3), ("backup:1", 4)] {
        let json = dir.path().join(format!("{mode}.jsonl"));
        let out = mpirun(
            n,
            &[
                "run",
                "--backend",
                "mpi",
                "--mode",
                mode,
                "--lr",
                "0.05",
                "--momentum",
                "0",
                "--epochs",
                "10",
                "--json",
                json.to_str().unwrap(),
            ],
        );
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{mode}: {stdout}\n{stderr}");
        assert!(stdout.contains("parameter server on rank 0"), "{stdout}");
        assert_eq!(stdout.matches("ddlab run:").count(), 1, "{stdout}");
        let s = summary(&json);
        assert_eq!(s["workers"], n - 1, "{mode}: one rank is the server");
        assert!(s["test_accuracy"].as_f64().unwrap() > 0.8, "{mode}: {s}");
        let per_worker = s["worker_steps_per_sec"].as_array().unwrap();
        assert_eq!(per_worker.len(), n - 1, "{mode}: every worker reported");
        match mode {
            // staleness ≈ N − 1 when workers take turns
            // (on a loaded machine workers interleave less: some staleness, not N − 1)
            "async" => assert!(s["staleness_mean"].as_f64().unwrap() > 0.2, "{s}"),
            "backup:1" => assert_eq!(s["staleness_max"], 0, "{s}"),
            _ => assert!(s["staleness_mean"].as_f64().is_some(), "{s}"),
        }
    }
}

#[test]
fn what_the_mpi_backend_lacks_is_refused_in_one_line_by_rank_0() {
    let _serial = serial();
    let out = mpirun(2, &["run", "--backend", "mpi", "--overlap", "--steps", "5"]);
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert_eq!(stderr.matches("ddlab: --overlap").count(), 1, "{stderr}");
    let out = mpirun(2, &["run", "--backend", "mpi", "--workers", "3", "--steps", "5"]);
    let (_, stderr) = text(&out);
    assert!(stderr.contains("mpirun started 2 ranks"), "{stderr}");
    let out = mpirun(1, &["run", "--backend", "mpi", "--mode", "async", "--steps", "5"]);
    let (_, stderr) = text(&out);
    assert!(stderr.contains("at least one worker"), "{stderr}");
}

/// Pids of processes whose command line contains `tag` (and, if given, whose
/// environment says they are MPI rank `rank`).
fn pids_with(tag: &str, rank: Option<usize>) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmdline).contains(tag) {
            continue;
        }
        if let Some(r) = rank {
            let env = std::fs::read(entry.path().join("environ")).unwrap_or_default();
            let want = format!("OMPI_COMM_WORLD_RANK={r}\0");
            if !env.windows(want.len()).any(|w| w == want.as_bytes()) {
                continue;
            }
        }
        out.push(pid);
    }
    out
}

/// Starts a long MPI run tagged by its seed; returns the child and waits until rank
/// `rank` exists.
fn long_run(n: usize, seed: &str, json: &std::path::Path) -> std::process::Child {
    let child = Command::new("mpirun")
        .args(["-n", &n.to_string()])
        .arg(assert_cmd::cargo::cargo_bin("ddlab"))
        .args([
            "run",
            "--backend",
            "mpi",
            "--steps",
            "100000000",
            "--seed",
            seed,
            "--json",
        ])
        .arg(json)
        .envs(common::OPENMPI_AS_ROOT)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // wait until the ranks train (the export grows)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::metadata(json).map_or(0, |m| m.len()) < 10_000 {
        assert!(std::time::Instant::now() < deadline, "the MPI run did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child
}

/// Waits for `child`, killing it after `limit`; returns its output and how long it took.
fn wait_within(mut child: std::process::Child, limit: std::time::Duration) -> (Output, std::time::Duration) {
    let t0 = std::time::Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return (child.wait_with_output().unwrap(), t0.elapsed());
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            return (child.wait_with_output().unwrap(), t0.elapsed());
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn a_killed_rank_is_named_within_5_s_and_no_process_is_left() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let seed = format!("7{}", std::process::id());
    let child = long_run(3, &seed, &dir.path().join("m.jsonl"));
    let victims = pids_with(&seed, Some(1));
    assert_eq!(victims.len(), 1, "rank 1's process");
    // (the shell's kill: no procps needed)
    assert!(Command::new("sh")
        .args(["-c", &format!("kill -9 {}", victims[0])])
        .status()
        .unwrap()
        .success());
    let (out, took) = wait_within(child, std::time::Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        took < std::time::Duration::from_secs(5),
        "the job took {took:?} to notice"
    );
    assert!(!out.status.success());
    assert!(stderr.contains("rank 1") && stderr.contains("node"), "{stderr}");
    // and rank 0 says at which step the job ended
    assert!(stderr.contains("at step"), "{stderr}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(pids_with(&seed, None), Vec::<u32>::new(), "stray processes");
}

#[test]
fn a_terminated_job_names_its_step_and_keeps_its_exports() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("m.jsonl");
    let seed = format!("8{}", std::process::id());
    let child = long_run(2, &seed, &json);
    assert!(Command::new("sh")
        .args(["-c", &format!("kill -TERM {}", child.id())])
        .status()
        .unwrap()
        .success());
    let (out, _) = wait_within(child, std::time::Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("is being stopped at step"), "{stderr}");
    let last = std::fs::read_to_string(&json)
        .unwrap()
        .lines()
        .last()
        .unwrap()
        .to_string();
    let summary: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(summary["kind"], "summary", "{last}");
    assert!(summary["steps"].as_u64().unwrap() > 0);
    assert_eq!(summary["outcome"], "stopped", "{last}");
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(pids_with(&seed, None), Vec::<u32>::new(), "stray processes");
}

mod lab_controller {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use ddlab::config::{Backend, Experiment, Length};
    use ddlab::session::remote::MpiLaunch;
    use ddlab::session::{Session, SessionOptions};
    use ddlab::train::{Control, Event, Outcome};

    fn job(workers: usize, seed: u64) -> Session {
        job_with(workers, seed, MpiLaunch::default())
    }

    fn job_with(workers: usize, seed: u64, launch: MpiLaunch) -> Session {
        super::common::allow_openmpi_as_root();
        let launch = MpiLaunch {
            exe: Some(assert_cmd::cargo::cargo_bin("ddlab")),
            ..launch
        };
        let exp = Experiment {
            backend: Backend::Mpi,
            workers,
            seed,
            length: Length::Steps(100_000_000),
            ..Experiment::default()
        };
        Session::start_mpi(exp, Arc::new(ddlab::data::digits()), SessionOptions::default(), launch).unwrap()
    }

    /// Polls until `pred` holds (or fails after 20 s), collecting events.
    fn until(s: &mut Session, events: &mut Vec<Event>, what: &str, pred: impl Fn(&Session) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !pred(s) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            s.poll(|e| events.push(e.clone()));
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn the_lab_drives_a_job_pauses_it_and_relaunches_it_from_the_same_parameters() {
        let _serial = super::serial();
        let mut events = Vec::new();
        let mut s = job(2, 9101);
        until(&mut s, &mut events, "steps from the ranks", |s| {
            s.state().updates() > 20
        });
        assert_eq!(s.hosts().len(), 2, "both ranks connected");
        // pause reaches rank 0, and everyone waits with it
        s.control(Control::Pause).unwrap();
        std::thread::sleep(Duration::from_millis(400));
        s.poll(|_| {});
        let paused_at = s.state().updates();
        std::thread::sleep(Duration::from_millis(400));
        s.poll(|_| {});
        assert_eq!(s.state().updates(), paused_at, "still training while paused");
        s.control(Control::Resume).unwrap();
        until(&mut s, &mut events, "training to resume", |s| {
            s.state().updates() > paused_at + 10
        });
        // a worker-count change stops the job, and a new one goes on from its parameters;
        // a threads change sent with it goes with it (each rank computes on 2 threads)
        s.control(Control::SetWorkers(3)).unwrap();
        s.control(Control::SetThreads(2)).unwrap();
        let before = s.state().updates();
        let mut notes = Vec::new();
        until(&mut s, &mut events, "the relaunch", |s| {
            s.state()
                .current()
                .is_some_and(|seg| seg.workers == 3 && seg.threads == 2)
                && s.state().updates() > before + 10
        });
        notes.extend(s.take_notes());
        let relaunched = notes
            .iter()
            .find_map(|n| n.strip_prefix("relaunched from update "))
            .unwrap_or_else(|| panic!("no relaunch note: {notes:?}"));
        let (update, hash) = relaunched.split_once(" with parameters ").unwrap();
        let segment = events
            .iter()
            .rev()
            .find_map(|e| match e {
                Event::Segment {
                    workers: 3,
                    threads: 2,
                    update,
                    params_hash,
                    ..
                } => Some((*update, *params_hash)),
                _ => None,
            })
            .expect("a segment with 3 workers × 2 threads");
        assert_eq!(segment.0.to_string(), update, "the step count goes on");
        assert_eq!(
            format!("{:016x}", segment.1),
            hash,
            "the new job starts from the old one's parameters"
        );
        // the curves go on: steps only ever grow
        let steps: Vec<u64> = s.state().steps.iter().map(|r| r.step).collect();
        assert!(steps.windows(2).all(|w| w[0] < w[1]), "steps go back");
        // stop: every rank stops at the same step and the session ends
        s.control(Control::Stop).unwrap();
        until(&mut s, &mut events, "the stop", |s| s.state().outcome.is_some());
        assert_eq!(s.state().outcome, Some(Outcome::Stopped));
        assert!(s.final_params().is_some(), "{:?}", s.take_notes());
    }

    #[test]
    fn a_connection_without_the_token_is_refused_and_logged() {
        let _serial = super::serial();
        use std::io::{Read, Write};
        let mut events = Vec::new();
        let mut s = job(2, 9102);
        until(&mut s, &mut events, "steps", |s| s.state().updates() > 5);
        let addr = s.controller_address().unwrap();
        let mut intruder = std::net::TcpStream::connect(&addr).unwrap();
        writeln!(
            intruder,
            r#"{{"hello":{{"token":"guess","rank":0,"size":2,"host":"x","pid":1}}}}"#
        )
        .unwrap();
        intruder.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = Vec::new();
        assert_eq!(
            intruder.read_to_end(&mut buf).unwrap(),
            0,
            "the controller said something"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut notes = Vec::new();
        while !notes.iter().any(|n: &String| n.contains("refused a connection")) {
            assert!(Instant::now() < deadline, "no refusal logged: {notes:?}");
            notes.extend(s.take_notes());
            std::thread::sleep(Duration::from_millis(20));
        }
        // and the job goes on
        let at = s.state().updates();
        until(&mut s, &mut events, "more steps", |s| s.state().updates() > at + 5);
        // once the session is gone, so is the job and the controller's port
        drop(s); // (returns once mpirun has exited)
        std::thread::sleep(Duration::from_millis(300));
        assert!(
            std::net::TcpStream::connect(&addr).is_err(),
            "the controller still listens on {addr}"
        );
    }

    /// Every process whose command line or environment this test can read, and what
    /// it holds.
    fn every_process_text() -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            if entry.file_name().to_string_lossy().parse::<u32>().is_err() {
                continue;
            }
            for file in ["cmdline", "environ"] {
                let path = entry.path().join(file);
                if let Ok(bytes) = std::fs::read(&path) {
                    out.push((path.display().to_string(), bytes));
                }
            }
        }
        out
    }

    #[test]
    fn the_token_travels_in_a_private_file_never_on_a_command_line_or_in_an_environment() {
        let _serial = super::serial();
        use std::os::unix::fs::PermissionsExt;
        let mut events = Vec::new();
        let mut s = job(2, 9106);
        until(&mut s, &mut events, "steps", |s| s.state().updates() > 5);
        // the ranks are told where the token is
        let ranks = super::pids_with("9106", Some(0));
        assert_eq!(ranks.len(), 1);
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", ranks[0])).unwrap();
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let at = args.iter().position(|a| a == "--token-file").expect("--token-file");
        assert!(!args.iter().any(|a| a == "--token"), "{args:?}");
        let path = std::path::PathBuf::from(&args[at + 1]);
        let dir = path.parent().unwrap().to_path_buf();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        let token = std::fs::read_to_string(&path).unwrap();
        assert_eq!(token.len(), 32, "{token:?}");
        // ... and the token itself is nowhere a process shows: not mpirun's command line,
        // not a rank's, not an environment
        for (file, bytes) in every_process_text() {
            assert!(
                !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
                "the token is in {file}"
            );
        }
        // the file goes with the job
        drop(s);
        assert!(!dir.exists(), "{} is left", dir.display());
    }

    /// This process's resident memory, in bytes.
    fn resident() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap();
        kb * 1024
    }

    #[test]
    fn a_gigabyte_without_a_newline_is_cut_after_4_kib_and_the_lab_does_not_grow() {
        let _serial = super::serial();
        use std::io::Write;
        let mut events = Vec::new();
        let mut s = job(2, 9107);
        until(&mut s, &mut events, "steps", |s| s.state().updates() > 5);
        let addr = s.controller_address().unwrap();
        let chunk = vec![b'x'; 1 << 20];
        let before = resident();
        let mut intruder = std::net::TcpStream::connect(&addr).unwrap();
        intruder.set_write_timeout(Some(Duration::from_millis(200))).unwrap();
        let t0 = Instant::now();
        let mut sent: u64 = 0;
        let cut = loop {
            if sent >= 1 << 30 || t0.elapsed() > Duration::from_secs(4) {
                break false;
            }
            match intruder.write(&chunk) {
                Ok(n) => sent += n as u64,
                // (a full buffer is not a cut: the controller may just not read)
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(_) => break true,
            }
        };
        let grew = resident().saturating_sub(before);
        assert!(
            cut,
            "the controller took {sent} bytes without a newline in {:?}",
            t0.elapsed()
        );
        assert!(grew < 8 << 20, "the lab grew by {grew} bytes");
        let mut notes = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !notes.iter().any(|n: &String| n.contains("more than 4096 bytes")) {
            assert!(Instant::now() < deadline, "no refusal logged: {notes:?}");
            notes.extend(s.take_notes());
            std::thread::sleep(Duration::from_millis(20));
        }
        let at = s.state().updates();
        until(&mut s, &mut events, "more steps", |s| s.state().updates() > at + 5);
    }

    #[test]
    fn a_thousand_dripping_connections_do_not_make_a_thousand_threads_and_the_job_goes_on() {
        let _serial = super::serial();
        use std::io::Write;
        let threads = || std::fs::read_dir("/proc/self/task").unwrap().count();
        let mut events = Vec::new();
        let mut s = job(2, 9108);
        until(&mut s, &mut events, "steps", |s| s.state().updates() > 5);
        let addr: std::net::SocketAddr = s.controller_address().unwrap().parse().unwrap();
        let baseline = threads();
        let mut most = baseline;
        let mut open = Vec::new();
        let t0 = Instant::now();
        for _ in 0..1000 {
            if let Ok(c) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
                let _ = c.set_nonblocking(true);
                open.push(c);
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "connecting took too long");
        }
        // a byte now and then from each, for two seconds
        let drip = Instant::now();
        while drip.elapsed() < Duration::from_secs(2) {
            for c in &mut open {
                let _ = c.write(b"{");
            }
            most = most.max(threads());
            s.poll(|e| events.push(e.clone()));
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(
            most <= baseline + ddlab::session::remote::MAX_PENDING + 8,
            "{most} threads with {} connections (from {baseline})",
            open.len()
        );
        let notes = s.take_notes();
        assert!(
            notes.iter().any(|n| n.contains("others have not shown the token yet")),
            "{notes:?}"
        );
        assert!(notes.len() < 100, "{} notes: refusals flood the log", notes.len());
        let at = s.state().updates();
        until(&mut s, &mut events, "more steps", |s| s.state().updates() > at + 5);
        assert_eq!(s.state().outcome, None);
        drop(open);
    }

    #[test]
    fn a_pause_longer_than_the_stall_timeout_is_not_a_stall_but_a_stopped_rank_is() {
        let _serial = super::serial();
        let mut events = Vec::new();
        let launch = MpiLaunch {
            stall_timeout: Some(2.0),
            ..MpiLaunch::default()
        };
        let mut s = job_with(2, 9104, launch);
        until(&mut s, &mut events, "steps", |s| s.state().updates() > 20);
        // A person pauses for twice the stall timeout: rank 1 waits for rank 0 all that
        // time, on purpose.
        s.control(Control::Pause).unwrap();
        std::thread::sleep(Duration::from_secs(5));
        s.poll(|e| events.push(e.clone()));
        assert_eq!(s.state().outcome, None, "a pause ended the job");
        s.control(Control::Resume).unwrap();
        let at = s.state().updates();
        until(&mut s, &mut events, "training to resume", |s| {
            s.state().updates() > at + 20
        });
        // A rank that stops (a frozen node) is named, and the lab says FAILED.
        let victim = super::pids_with("9104", Some(1));
        assert_eq!(victim.len(), 1);
        let t0 = Instant::now();
        std::process::Command::new("sh")
            .args(["-c", &format!("kill -STOP {}", victim[0])])
            .status()
            .unwrap();
        until(&mut s, &mut events, "the stall", |s| s.state().outcome.is_some());
        let _ = std::process::Command::new("sh")
            .args(["-c", &format!("kill -KILL {}", victim[0])])
            .status();
        assert!(t0.elapsed() < Duration::from_secs(2 + 10), "took {:?}", t0.elapsed());
        let Some(Outcome::Failed { message }) = s.state().outcome.clone() else {
            panic!("{:?}", s.state().outcome)
        };
        assert!(
            message.contains("has waited") && message.contains("for rank 1"),
            "{message}"
        );
        drop(s);
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(super::pids_with("9104", None), Vec::<u32>::new(), "stray processes");
    }

    #[test]
    fn a_rank_whose_compute_fails_under_the_lab_is_named_with_its_step() {
        let _serial = super::serial();
        let mut events = Vec::new();
        let launch = MpiLaunch {
            mpirun_args: vec!["-x".into(), "DDLAB_FAIL_AT_STEP=30@1".into()],
            ..MpiLaunch::default()
        };
        let mut s = job_with(2, 9105, launch);
        until(&mut s, &mut events, "the failure", |s| s.state().outcome.is_some());
        let Some(Outcome::Failed { message }) = s.state().outcome.clone() else {
            panic!("{:?}", s.state().outcome)
        };
        assert!(
            message.contains("rank 1 on ") && message.contains("at step 30") && message.contains("DDLAB_FAIL_AT_STEP"),
            "{message}"
        );
    }

    #[test]
    fn a_rank_killed_under_the_lab_is_named_within_5_s_and_no_process_is_left() {
        let _serial = super::serial();
        let mut events = Vec::new();
        let mut s = job(3, 9103);
        until(&mut s, &mut events, "steps", |s| s.state().updates() > 20);
        let victim = super::pids_with("9103", Some(1));
        assert_eq!(victim.len(), 1);
        let t0 = Instant::now();
        std::process::Command::new("sh")
            .args(["-c", &format!("kill -9 {}", victim[0])])
            .status()
            .unwrap();
        until(&mut s, &mut events, "the failure", |s| s.state().outcome.is_some());
        assert!(t0.elapsed() < Duration::from_secs(5), "took {:?}", t0.elapsed());
        let Some(Outcome::Failed { message }) = s.state().outcome.clone() else {
            panic!("{:?}", s.state().outcome)
        };
        assert!(message.contains("rank 1") || message.contains("mpirun"), "{message}");
        drop(s);
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(super::pids_with("9103", None), Vec::<u32>::new(), "stray processes");
    }
}

#[test]
fn a_worker_that_cannot_reach_the_lab_says_so_and_the_job_ends() {
    let _serial = serial();
    let exp = serde_json::to_string(&ddlab::config::Experiment::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, "t").unwrap();
    let t0 = std::time::Instant::now();
    // port 1 on loopback: nothing listens there
    let out = mpirun(
        2,
        &[
            "worker",
            "--controller",
            "127.0.0.1:1",
            "--token-file",
            token.to_str().unwrap(),
            "--experiment",
            &exp,
        ],
    );
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot reach the lab at 127.0.0.1:1"), "{stderr}");
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(60),
        "it hung for {:?}",
        t0.elapsed()
    );
}

/// Runs `run ARGS` on `n` MPI ranks and on `n` worker threads, each with a JSON export
/// in `dir`; both must succeed. Returns the two exports (MPI's, then the threads').
fn over_mpi_and_threads(
    dir: &std::path::Path,
    n: usize,
    args: &[&str],
    what: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let tag = what.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
    let mpi_json = dir.join(format!("mpi-{n}-{tag}.jsonl"));
    let mut mpi_args = vec!["run", "--backend", "mpi", "--json", mpi_json.to_str().unwrap()];
    mpi_args.extend(args);
    let out = mpirun(n, &mpi_args);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "n={n} {what}: {stdout}\n{stderr}");
    let threads_json = dir.join(format!("threads-{n}-{tag}.jsonl"));
    let n_text = n.to_string();
    let mut threads_args = vec![
        "run",
        "-q",
        "--workers",
        &n_text,
        "--json",
        threads_json.to_str().unwrap(),
    ];
    threads_args.extend(args);
    let out = Command::new(assert_cmd::cargo::cargo_bin("ddlab"))
        .args(&threads_args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "n={n} {what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (mpi_json, threads_json)
}

#[test]
fn local_sgd_over_mpi_equals_threads_with_and_without_an_outer_optimizer() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    for (n, algo, outer) in [
        (2, "ring", &[][..]),
        (3, "tree", &[][..]),
        (
            3,
            "ring",
            &["--outer-lr", "0.7", "--outer-momentum", "0.9", "--nesterov"][..],
        ),
    ] {
        let common = [&["--mode", "local:4", "--steps", "30", "--allreduce", algo][..], outer].concat();
        let (mpi_json, threads_json) = over_mpi_and_threads(dir.path(), n, &common, &format!("{algo} {outer:?}"));
        let (m, t) = (summary(&mpi_json), summary(&threads_json));
        assert_eq!(m["mode"], "local:4");
        // the same local steps and the same averaging sums, bit for bit
        assert_eq!(losses(&mpi_json), losses(&threads_json), "n={n} {algo} {outer:?}");
        assert_eq!(m["final_params_hash"], t["final_params_hash"], "n={n} {algo} {outer:?}");
    }
}

#[test]
fn compressed_gradients_over_mpi_equal_threads_with_and_without_error_feedback() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    for (n, extra) in [
        (2, &["--compress", "topk:1"][..]),
        (3, &["--compress", "topk:1", "--no-error-feedback"][..]),
        (3, &["--compress", "powersgd:2"][..]),
    ] {
        let common = [&["--steps", "30"][..], extra].concat();
        let (mpi_json, threads_json) = over_mpi_and_threads(dir.path(), n, &common, &format!("{extra:?}"));
        let (m, t) = (summary(&mpi_json), summary(&threads_json));
        // the same pairs gathered and added in the same order: the same bits
        assert_eq!(losses(&mpi_json), losses(&threads_json), "n={n} {extra:?}");
        assert_eq!(m["final_params_hash"], t["final_params_hash"], "n={n} {extra:?}");
        assert_eq!(
            m["allreduce_bytes"], t["allreduce_bytes"],
            "n={n}: the same bytes on the wire"
        );
    }
}
