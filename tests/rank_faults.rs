//! One rank fails, the job does not hang (DESIGN.md decision 8). Each probe gives one
//! rank a different environment or flag (OpenMPI's MPMD syntax, `-n 1 … : -n 1 …`), or
//! stops or breaks one rank, and asserts what an operator reads: the job ends within
//! seconds, with the documented exit code and one sentence naming the rank, its host,
//! the step and the cause; no process is left; the exports are whole.
#![cfg(feature = "mpi")]

mod common;

use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One job at a time: a leftover process check must see only its own job's.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn bin() -> String {
    assert_cmd::cargo::cargo_bin("ddlab").display().to_string()
}

/// Environment variables for one rank (name, value).
type Env<'a> = &'a [(&'a str, &'a str)];

/// `mpirun` with one app context per entry (environment, arguments), as
/// `mpirun -n 1 -x K=V ddlab ARGS : -n 1 …`.
fn mpmd(parts: &[(Env, Vec<String>)]) -> Command {
    let mut cmd = common::mpirun(60);
    for (i, (env, args)) in parts.iter().enumerate() {
        if i > 0 {
            cmd.arg(":");
        }
        cmd.args(["-n", "1"]);
        for (k, v) in *env {
            cmd.args(["-x", &format!("{k}={v}")]);
        }
        cmd.arg(bin()).args(args);
    }
    cmd
}

/// The same arguments on `n` ranks, with `env` for rank `on` alone.
fn job(n: usize, args: &[&str], on: Option<(usize, &[(&str, &str)])>) -> Command {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let none: &[(&str, &str)] = &[];
    let parts: Vec<(Env, Vec<String>)> = (0..n)
        .map(|r| match on {
            Some((rank, env)) if rank == r => (env, args.clone()),
            _ => (none, args.clone()),
        })
        .collect();
    mpmd(&parts)
}

/// What the operator gets: the job's output and how long it took.
fn run(mut cmd: Command) -> (Output, Duration) {
    let t = Instant::now();
    let out = cmd.output().expect("mpirun is installed (apt-get install openmpi-bin)");
    (out, t.elapsed())
}

/// The processes of this test binary's ddlab still alive (pid, MPI rank), read from
/// `/proc` (no `pgrep`: a fresh machine may not have procps).
fn left() -> Vec<(u32, Option<usize>)> {
    let bin = bin();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if cmdline.split(|&b| b == 0).next() != Some(bin.as_bytes()) {
            continue;
        }
        let env = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let rank = env
            .split(|&b| b == 0)
            .find_map(|kv| kv.strip_prefix(b"OMPI_COMM_WORLD_RANK="))
            .and_then(|r| std::str::from_utf8(r).ok()?.parse().ok());
        out.push((pid, rank));
    }
    out
}

/// The job ended within `limit` with `code`, said `want` (each) in ddlab's sentences on
/// stderr, and left no process.
fn ended_as(out: &Output, took: Duration, limit: Duration, code: i32, want: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(took < limit, "took {took:?}: {stderr}");
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    let ours: Vec<&str> = stderr.lines().filter(|l| l.starts_with("ddlab: ")).collect();
    assert!(!ours.is_empty(), "no sentence from ddlab: {stderr}");
    for w in want {
        assert!(ours.iter().any(|l| l.contains(w)), "no sentence says {w:?}: {stderr}");
    }
    assert!(!stderr.contains("panicked"), "{stderr}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(left().is_empty(), "processes left: {:?}", left());
    stderr
}

/// The summary line of a JSON export: the export is whole (every line parses).
fn summary(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).expect("the export was written");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("a broken export line ({e}): {l}")))
        .collect();
    let last = lines.last().expect("a summary line").clone();
    assert_eq!(last["kind"], "summary", "{last}");
    last
}

/// The summary of a job a stall ended: whole, covering the steps done, and saying the
/// job failed with rank 0's sentence (not "running").
fn stalled_summary(json: &std::path::Path, stderr: &str) {
    let s = summary(json);
    assert!(s["steps"].as_u64().unwrap() > 0, "{s}\n{stderr}");
    assert_eq!(s["outcome"], "failed", "{s}");
    assert!(s["failure"].as_str().unwrap_or("").contains("has waited"), "{s}");
}

fn host() -> String {
    let out = Command::new("mpirun")
        .args(["-n", "1", "hostname"])
        .envs(common::OPENMPI_AS_ROOT)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

const LIMIT: Duration = Duration::from_secs(10);

#[test]
fn a_diverging_run_ends_every_rank_at_the_same_step_with_exit_code_3() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("m.jsonl");
    let (out, took) = run(job(
        2,
        &[
            "run",
            "--backend",
            "mpi",
            "--lr",
            "30",
            "--steps",
            "2000",
            "--json",
            json.to_str().unwrap(),
        ],
        None,
    ));
    ended_as(&out, took, LIMIT, 3, &["diverged at step"]);
    let s = summary(&json);
    assert_eq!(s["outcome"], "diverged", "{s}");
    assert_eq!(s["diverged"], true, "{s}");
}

#[test]
fn data_missing_on_one_rank_is_named_and_every_rank_leaves() {
    let _serial = serial();
    let host = host();
    for rank in [1, 0] {
        let env: &[(&str, &str)] = &[("DDLAB_ASSETS", "/nonexistent/assets")];
        let (out, took) = run(job(
            2,
            &["run", "--backend", "mpi", "--dataset", "mnist", "--steps", "5"],
            Some((rank, env)),
        ));
        let stderr = ended_as(
            &out,
            took,
            LIMIT,
            2,
            &[&format!("rank {rank} on {host}"), "/nonexistent/assets"],
        );
        assert_eq!(
            stderr.lines().filter(|l| l.starts_with("ddlab: ")).count(),
            1,
            "{stderr}"
        );
    }
}

#[test]
fn flags_that_differ_between_ranks_are_named_at_start() {
    let _serial = serial();
    let args = |steps: &str, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["run", "--backend", "mpi", "--steps", steps]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let none: &[(&str, &str)] = &[];
    let (out, took) = run(mpmd(&[(none, args("50", &[])), (none, args("100", &[]))]));
    ended_as(&out, took, LIMIT, 2, &["different experiments", "rank 1 has length"]);
    // --overlap on rank 0 alone: refused there, and every rank leaves.
    let (out, took) = run(mpmd(&[(none, args("50", &["--overlap"])), (none, args("50", &[]))]));
    ended_as(&out, took, LIMIT, 2, &["rank 0 on", "--overlap"]);
    // The check: different sizes on the two ranks.
    let check = |sizes: &str| -> Vec<String> { vec!["check".into(), "--sizes".into(), sizes.into()] };
    let (out, took) = run(mpmd(&[(none, check("4")), (none, check("4,64K"))]));
    ended_as(&out, took, LIMIT, 2, &["different checks", "rank 1 has sizes"]);
}

#[test]
fn an_export_rank_0_cannot_write_is_said_before_the_job_ends() {
    let _serial = serial();
    let (out, took) = run(job(
        2,
        &["run", "--backend", "mpi", "--steps", "5", "--json", "/nonexistent/x"],
        None,
    ));
    ended_as(&out, took, LIMIT, 2, &["--json", "/nonexistent/x"]);
}

#[test]
fn the_threads_check_under_mpirun_says_what_it_checks() {
    let _serial = serial();
    let (out, took) = run(job(2, &["check", "--backend", "threads"], None));
    let stderr = ended_as(
        &out,
        took,
        LIMIT,
        2,
        &["--backend threads checks this machine's threads"],
    );
    assert!(!stderr.contains("built without MPI"), "{stderr}");
}

#[test]
fn a_rank_whose_compute_fails_is_named_in_every_mode_on_any_rank() {
    let _serial = serial();
    let host = host();
    for mode in ["sync", "async", "ssp:1", "backup:1"] {
        // 3 ranks: the first, a middle one and the last (the parameter server, rank 0,
        // computes nothing).
        let ranks: &[usize] = if mode == "sync" { &[0, 1, 2] } else { &[1, 2] };
        for &rank in ranks {
            let dir = tempfile::tempdir().unwrap();
            let json = dir.path().join("m.jsonl");
            let at = format!("3@{rank}");
            let env: &[(&str, &str)] = &[("DDLAB_FAIL_AT_STEP", &at)];
            let args = [
                "run",
                "--backend",
                "mpi",
                "--mode",
                mode,
                "--lr",
                "0.01",
                "--steps",
                "100000",
                "--json",
                json.to_str().unwrap(),
            ];
            let (out, took) = run(job(3, &args, Some((rank, env))));
            let stderr = ended_as(
                &out,
                took,
                LIMIT,
                1,
                &[&format!("rank {rank} on {host}"), "injected with DDLAB_FAIL_AT_STEP"],
            );
            let s = summary(&json);
            assert_eq!(s["outcome"], "failed", "{mode} rank {rank}: {s}\n{stderr}");
            assert!(s["failure"].as_str().unwrap().contains(&format!("rank {rank}")), "{s}");
        }
    }
}

/// Runs an endless `ddlab run` over MPI with `extra` flags on `n` ranks (a 3 s stall
/// timeout, its JSON export to `json`), stops rank `victim` once the job trains (as a
/// swapping or frozen node would be), and returns the job's output and how long it took
/// from then.
fn stop_one_rank(n: usize, extra: &[&str], json: &std::path::Path, victim: usize) -> (Output, Duration) {
    stop_one_rank_of(n, extra, |_| "3", json, victim)
}

/// `stop_one_rank`, with each rank's stall timeout in seconds from `timeout(rank)`.
fn stop_one_rank_of(
    n: usize,
    extra: &[&str],
    timeout: impl Fn(usize) -> &'static str,
    json: &std::path::Path,
    victim: usize,
) -> (Output, Duration) {
    let none: &[(&str, &str)] = &[];
    let parts: Vec<(Env, Vec<String>)> = (0..n)
        .map(|r| {
            let mut args = vec!["run", "--backend", "mpi", "--steps", "100000000", "--json"];
            args.push(json.to_str().unwrap());
            args.extend_from_slice(&["--stall-timeout", timeout(r)]);
            args.extend_from_slice(extra);
            (none, args.into_iter().map(String::from).collect())
        })
        .collect();
    let mut cmd = mpmd(&parts);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let t = Instant::now();
    let child = cmd.spawn().unwrap();
    let pid = loop {
        assert!(t.elapsed() < Duration::from_secs(20), "the job did not start");
        std::thread::sleep(Duration::from_millis(200));
        let found = left()
            .into_iter()
            .find_map(|(pid, rank)| (rank == Some(victim)).then_some(pid));
        if let (Some(pid), true) = (found, json.exists()) {
            break pid;
        }
    };
    std::thread::sleep(Duration::from_millis(500));
    Command::new("sh")
        .args(["-c", &format!("kill -STOP {pid}")])
        .status()
        .unwrap();
    let stopped = Instant::now();
    let out = child.wait_with_output().unwrap();
    let took = stopped.elapsed();
    let _ = Command::new("sh")
        .args(["-c", &format!("kill -KILL {pid} 2>/dev/null")])
        .status();
    (out, took)
}

#[test]
fn a_stalled_rank_is_named_by_the_rank_waiting_for_it_and_the_job_ends() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("m.jsonl");
    let (out, took) = stop_one_rank(2, &[], &json, 1);
    let stderr = ended_as(
        &out,
        took,
        Duration::from_secs(3 + 10),
        4,
        &["has waited", "for rank 1"],
    );
    stalled_summary(&json, &stderr);
}

/// With more than two ranks a collective does not say who has not arrived: the ranks'
/// signs of life (a side channel) do. Every rank that speaks names the stopped one — in
/// the library's all-reduce, and in a ring where a rank waits for a neighbour that
/// itself waits — and no other rank as not running.
#[test]
fn with_four_ranks_every_waiting_rank_names_the_stalled_one_in_any_collective() {
    let _serial = serial();
    for (algo, victim) in [("mpi", 2), ("ring", 1)] {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("m.jsonl");
        let (out, took) = stop_one_rank(4, &["--allreduce", algo], &json, victim);
        let stderr = ended_as(&out, took, Duration::from_secs(3 + 10), 4, &["has waited 3 s at step"]);
        let named = format!("rank {victim} on {} (no sign of life for", host());
        for line in stderr.lines().filter(|l| l.contains("has waited")) {
            assert!(line.contains(&named), "{algo}: {line}\n{stderr}");
            for other in (0..4).filter(|&r| r != victim) {
                assert!(
                    !line.contains(&format!("rank {other} on {} (no sign", host())),
                    "{algo}: rank {other} was named: {line}"
                );
            }
        }
        stalled_summary(&json, &stderr);
    }
}

/// A rank that finds the stall before rank 0 does (its timeout is shorter here; on a
/// busy machine a tick is enough) leaves only once rank 0 has had time to find it too
/// and write the summary: were it to leave at once, mpirun would kill rank 0 and the
/// export would end without one.
#[test]
fn rank_0_writes_the_summary_when_another_rank_finds_the_stall_first() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("m.jsonl");
    let rank_0_later = |r| if r == 0 { "4.5" } else { "3" };
    let (out, took) = stop_one_rank_of(3, &[], rank_0_later, &json, 2);
    let stderr = ended_as(&out, took, Duration::from_secs(3 + 10), 4, &["rank 1 on", "rank 0 on"]);
    let rank_0 = stderr.lines().find(|l| l.starts_with("ddlab: rank 0 on ")).unwrap();
    assert!(rank_0.contains("for rank 2 on"), "{rank_0}");
    assert!(
        !rank_0.contains("rank 1 on"),
        "rank 0 named rank 1, which waited too: {rank_0}"
    );
    stalled_summary(&json, &stderr);
}

#[test]
fn workers_waiting_for_a_stalled_parameter_server_name_it_and_the_step_they_reached() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("m.jsonl");
    let (out, took) = stop_one_rank(3, &["--mode", "async"], &json, 0);
    let stderr = ended_as(
        &out,
        took,
        Duration::from_secs(3 + 10),
        4,
        &["has waited 3 s at step", "for rank 0 on "],
    );
    // Each worker names the server version it last computed on: it trained, so not 0
    // (the server, not the worker, makes a parameter server's step reports).
    for worker in [1, 2] {
        let said = stderr
            .lines()
            .find(|l| l.starts_with(&format!("ddlab: rank {worker} on ")))
            .unwrap_or_else(|| panic!("rank {worker} said nothing: {stderr}"));
        let step: u64 = said
            .split(" at step ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no step in {said:?}"));
        assert!(step > 0, "{said}");
    }
}
