//! Several hosts on one machine (DESIGN.md decision 9): each host a network namespace
//! with its own hostname, joined to the others by a bridge, OpenMPI starting ranks in them
//! through an rsh agent (`tests/multihost/hosts.sh`). Ranks of one host talk over shared
//! memory, ranks of different hosts over TCP across the bridge; one host's link can be
//! rate-limited or taken down.
//!
//! Needs `--features mpi`, root, iproute2 (`ip`, `tc`), util-linux (`unshare`) and
//! OpenMPI. Where one is missing each test says so in one line and passes, except under
//! CI (`CI` set), where it fails: `.ci/run` runs `cargo test --features mpi --test multihost`.
#![cfg(feature = "mpi")]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One job at a time: on a 2-core machine jobs side by side would time each other.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/multihost/hosts.sh")
}

fn ddlab() -> PathBuf {
    assert_cmd::cargo::cargo_bin("ddlab")
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

/// Why these tests cannot run here, if they cannot.
fn missing() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let root = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1))
        == Some("0");
    if !root {
        return Some("they need root (network namespaces, veth pairs)".into());
    }
    for (tool, package) in [
        ("ip", "iproute2"),
        ("tc", "iproute2"),
        ("unshare", "util-linux"),
        ("mpirun", "openmpi-bin"),
    ] {
        if !on_path(tool) {
            return Some(format!("'{tool}' is not on PATH (install {package})"));
        }
    }
    None
}

/// `hosts.sh CMD DIR ARGS…`, which must succeed.
fn hosts_sh(cmd: &str, dir: &Path, args: &[&str]) {
    let out = Command::new(script()).arg(cmd).arg(dir).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "hosts.sh {cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test bed of `m` hosts with `slots` ranks each, torn down when dropped (also when
/// the test fails: the drop runs while the panic unwinds).
struct Hosts {
    dir: tempfile::TempDir,
    /// The hosts' names, host 1 first.
    names: Vec<String>,
    /// The bridge's address on this side: the controller listens there.
    bridge: String,
}

impl Hosts {
    /// `None` (after one line on stderr) where the test bed cannot be built, except on CI.
    fn up(m: usize, slots: usize) -> Option<Hosts> {
        if let Some(why) = missing() {
            assert!(
                std::env::var_os("CI").is_none(),
                "the multi-host tests must run on CI, but {why}"
            );
            eprintln!("skipped: the multi-host tests cannot run here: {why}");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        hosts_sh("up", dir.path(), &[&m.to_string(), "--slots", &slots.to_string()]);
        let state = std::fs::read_to_string(dir.path().join("state")).unwrap();
        let field = |k: &str| {
            state
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap()
                .to_string()
        };
        let prefix = field("PREFIX");
        Some(Hosts {
            names: (1..=m).map(|i| format!("{prefix}-h{i}")).collect(),
            bridge: format!("{}.254", field("SUBNET")),
            dir,
        })
    }

    /// `hosts.sh CMD <this bed> ARGS…`.
    fn sh(&self, cmd: &str, args: &[&str]) {
        hosts_sh(cmd, self.dir.path(), args);
    }

    /// `mpirun -n N --hostfile … <ddlab> ARGS` through the hosts.
    fn mpirun(&self, n: usize, args: &[&str]) -> Command {
        let mut c = Command::new(script());
        c.arg("run")
            .arg(self.dir.path())
            .args(["timeout", "300", "mpirun", "--hostfile"])
            .arg(self.dir.path().join("hostfile"))
            .args(["-n", &n.to_string()])
            .arg(ddlab())
            .args(args);
        c
    }

    /// What mpirun needs, as command-line arguments (for the lab's launcher).
    fn mpirun_args(&self) -> Vec<String> {
        let env = std::fs::read_to_string(self.dir.path().join("env")).unwrap();
        let mut args = vec![
            "--hostfile".to_string(),
            self.dir.path().join("hostfile").display().to_string(),
        ];
        for line in env.lines() {
            if let Some((k, v)) = line.strip_prefix("export OMPI_MCA_").and_then(|l| l.split_once('=')) {
                args.extend(["--mca".into(), k.into(), v.into()]);
            }
        }
        args
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        let _ = Command::new(script()).arg("down").arg(self.dir.path()).status();
    }
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_default()).unwrap_or_default()
}

/// `ddlab check --quick` across the hosts; returns the exit status, stdout and the JSON.
fn check(hosts: &Hosts, n: usize) -> (bool, String, serde_json::Value) {
    let out_json = hosts.dir.path().join("check.json");
    let args = [
        "check",
        "--quick",
        "--sizes",
        "4,64K",
        "--json",
        out_json.to_str().unwrap(),
    ];
    let out = hosts.mpirun(n, &args).output().unwrap();
    let (stdout, stderr) = text(&out);
    let report = json(&out_json);
    (out.status.success(), format!("{stdout}\n{stderr}"), report)
}

/// The `(from_rank, to_rank)` of the links the report calls slow.
fn slow_links(report: &serde_json::Value) -> Vec<(u64, u64)> {
    report["links"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["slow"] == true)
        .map(|l| (l["from_rank"].as_u64().unwrap(), l["to_rank"].as_u64().unwrap()))
        .collect()
}

/// The slowest network link of a report, GB/s.
fn slowest_network_gbps(report: &serde_json::Value) -> f64 {
    report["links"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["kind"] == "net")
        .map(|l| l["gbps"].as_f64().unwrap())
        .fold(f64::INFINITY, f64::min)
}

#[test]
fn the_check_passes_on_two_and_three_hosts_and_groups_ranks_by_host() {
    let _serial = serial();
    for (m, slots) in [(2, 2), (3, 2)] {
        let Some(hosts) = Hosts::up(m, slots) else { return };
        let n = m * slots;
        let (ok, out, report) = check(&hosts, n);
        assert!(ok, "{m} hosts: {out}");
        assert!(
            out.contains(&format!("{n} ranks on {m} hosts: {} (ranks 0–1)", hosts.names[0])),
            "{out}"
        );
        assert_eq!(out.matches("verdict: PASS").count(), 1, "rank 0 alone prints: {out}");
        // every rank reports the host it ran on, grouped in the order of the hostfile
        let groups: Vec<(String, Vec<u64>)> = report["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| {
                let ranks = h["ranks"].as_array().unwrap().iter().map(|r| r.as_u64().unwrap());
                (h["host"].as_str().unwrap().to_string(), ranks.collect())
            })
            .collect();
        let want: Vec<(String, Vec<u64>)> = (0..m)
            .map(|h| {
                (
                    hosts.names[h].clone(),
                    ((h * slots) as u64..((h + 1) * slots) as u64).collect(),
                )
            })
            .collect();
        assert_eq!(groups, want);
        // the link map: every ordered pair, shared memory inside a host, network between
        let links = report["links"].as_array().unwrap();
        assert_eq!(links.len(), n * (n - 1));
        for l in links {
            let same = l["from_host"] == l["to_host"];
            assert_eq!(l["kind"], if same { "shm" } else { "net" }, "{l}");
            let (from, to) = (l["from_rank"].as_u64().unwrap(), l["to_rank"].as_u64().unwrap());
            assert_eq!(
                l["from_host"].as_str(),
                Some(hosts.names[from as usize / slots].as_str())
            );
            assert_eq!(l["to_host"].as_str(), Some(hosts.names[to as usize / slots].as_str()));
            assert!(l["gbps"].as_f64().unwrap() > 0.0, "{l}");
        }
        assert!(slow_links(&report).is_empty(), "{out}");
        assert!(report["training_max_relative_diff"].as_f64().unwrap() <= 1e-5);
    }
}

/// The check twice: as the hosts are (it must pass), then with `host`'s link limited
/// to a tenth of the slowest network link that run measured, in `direction` (a tenth of
/// every healthy link, also when other processes slow the machine's TCP down).
fn check_at_a_tenth(hosts: &Hosts, n: usize, host: &str, direction: &str) -> (bool, String, serde_json::Value) {
    let (ok, out, report) = check(hosts, n);
    assert!(ok, "unlimited: {out}");
    let mbit = ((slowest_network_gbps(&report) * 8000.0 / 10.0) as u64).max(8);
    hosts.sh("limit", &[host, &format!("{mbit}mbit"), direction]);
    check(hosts, n)
}

#[test]
fn a_host_limited_to_a_tenth_fails_the_check_by_name_with_every_pair_through_it() {
    let _serial = serial();
    let Some(hosts) = Hosts::up(3, 1) else { return };
    let (ok, out, report) = check_at_a_tenth(&hosts, 3, "3", "both");
    assert!(!ok, "{out}");
    let h3 = &hosts.names[2];
    assert!(out.contains("✗ links"), "{out}");
    assert!(out.contains(&format!("every one to or from host {h3}")), "{out}");
    // exactly the four pairs through host 3 (rank 2), each named
    let mut slow = slow_links(&report);
    slow.sort_unstable();
    assert_eq!(slow, vec![(0, 2), (1, 2), (2, 0), (2, 1)], "{out}");
    for (from, to) in slow {
        let name = |r: u64| format!("rank {r} ({})", hosts.names[r as usize]);
        assert!(
            out.contains(&format!("slow link: {} → {}", name(from), name(to))),
            "{out}"
        );
    }
    assert!(out.contains("verdict: FAIL — links failed"), "{out}");
}

#[test]
fn one_slow_direction_between_two_hosts_fails_the_check_and_is_named() {
    let _serial = serial();
    let Some(hosts) = Hosts::up(2, 2) else { return };
    // what host 2 sends is slow; what it receives is not
    let (ok, out, report) = check_at_a_tenth(&hosts, 4, "2", "out");
    assert!(!ok, "{out}");
    let (h1, h2) = (&hosts.names[0], &hosts.names[1]);
    assert!(out.contains(&format!("every one from host {h2} to host {h1}")), "{out}");
    let mut slow = slow_links(&report);
    slow.sort_unstable();
    assert_eq!(slow, vec![(2, 0), (2, 1), (3, 0), (3, 1)], "{out}");
}

/// Every step's loss, in order, from a `--json` export.
fn losses(path: &Path) -> Vec<f64> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "step")
        .map(|v| v["loss"].as_f64().unwrap())
        .collect()
}

fn summary(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_json::from_str(text.lines().last().unwrap()).unwrap()
}

/// The threads backend's run of the same experiment: `ddlab run --workers N ARGS`.
fn threads_run(n: usize, args: &[&str], json: &Path) {
    let out = Command::new(ddlab())
        .args(["run", "-q", "--steps", "30", "--workers", &n.to_string(), "--json"])
        .arg(json)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn training_across_hosts_equals_threads_and_hierarchical_groups_by_the_real_hosts() {
    let _serial = serial();
    for (m, slots, algos) in [
        (2, 2, &["ring", "tree", "naive", "hierarchical", "2d"][..]),
        (3, 2, &["ring", "hierarchical", "2d"][..]),
    ] {
        let Some(hosts) = Hosts::up(m, slots) else { return };
        let n = m * slots;
        let dir = hosts.dir.path();
        for algo in algos {
            let mpi_json = dir.join(format!("mpi-{algo}.jsonl"));
            let out = hosts
                .mpirun(
                    n,
                    &[
                        "run",
                        "--backend",
                        "mpi",
                        "--steps",
                        "30",
                        "--allreduce",
                        algo,
                        "--json",
                        mpi_json.to_str().unwrap(),
                    ],
                )
                .output()
                .unwrap();
            let (stdout, stderr) = text(&out);
            assert!(out.status.success(), "{m} hosts, {algo}: {stdout}\n{stderr}");
            // hierarchical and 2d: the threads backend with the same nodes, emulated
            let nodes = m.to_string();
            let grouped = ["--nodes", &nodes];
            let node_args: &[&str] = if algo == &"hierarchical" || algo == &"2d" {
                &grouped
            } else {
                &[]
            };
            let threads_json = dir.join(format!("threads-{algo}.jsonl"));
            threads_run(n, &[&["--allreduce", algo][..], node_args].concat(), &threads_json);
            let (lm, lt) = (losses(&mpi_json), losses(&threads_json));
            assert_eq!(lm.len(), 30, "{m} hosts, {algo}");
            assert_eq!(lm, lt, "{m} hosts, {algo}: the same sums, bit for bit");
            assert_eq!(
                summary(&mpi_json)["final_params_hash"],
                summary(&threads_json)["final_params_hash"],
                "{m} hosts, {algo}"
            );
            if !node_args.is_empty() {
                // and the grouping is what made it equal: one node sums in another order
                let flat_json = dir.join(format!("flat-{algo}.jsonl"));
                threads_run(n, &["--allreduce", algo], &flat_json);
                assert_ne!(
                    summary(&mpi_json)["final_params_hash"],
                    summary(&flat_json)["final_params_hash"],
                    "{m} hosts, {algo}: grouping by host changed nothing"
                );
            }
        }
    }
}

/// Pids of processes whose command line contains `tag`.
fn pids_with(tag: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(tag) && pid != std::process::id() {
            out.push(pid);
        }
    }
    out
}

#[test]
fn a_host_whose_link_goes_down_ends_the_job_named_within_seconds_with_no_process_left() {
    let _serial = serial();
    let Some(hosts) = Hosts::up(2, 2) else { return };
    let json = hosts.dir.path().join("run.jsonl");
    let seed = format!("6{}", std::process::id());
    let mut child = hosts
        .mpirun(
            4,
            &[
                "run",
                "--backend",
                "mpi",
                "--steps",
                "100000000",
                "--seed",
                &seed,
                "--json",
                json.to_str().unwrap(),
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(&json).map_or(0, |m| m.len()) < 10_000 {
        assert!(Instant::now() < deadline, "the job did not start training");
        std::thread::sleep(Duration::from_millis(50));
    }
    let t0 = Instant::now();
    hosts.sh("link", &["2", "down"]);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if t0.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = t0.elapsed();
    let out = child.wait_with_output().unwrap();
    let (_, stderr) = text(&out);
    assert!(took < Duration::from_secs(15), "the job took {took:?} to end: {stderr}");
    assert!(!status.success());
    // mpirun names the host it lost, and rank 0 the step the job reached
    assert!(stderr.contains(&hosts.names[1]), "{stderr}");
    assert!(stderr.contains("at step"), "{stderr}");
    // no rank is left, on either side of the dead link
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pids_with(&seed).is_empty() {
        assert!(Instant::now() < deadline, "stray processes: {:?}", pids_with(&seed));
        std::thread::sleep(Duration::from_millis(100));
    }
}

mod lab {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use ddlab::config::{Backend, Experiment, Length};
    use ddlab::session::remote::MpiLaunch;
    use ddlab::session::{Session, SessionOptions};
    use ddlab::train::{Control, Outcome};

    #[test]
    fn the_lab_drives_a_job_across_hosts_through_the_bridge() {
        let _serial = super::serial();
        let Some(hosts) = super::Hosts::up(2, 2) else { return };
        super::common::allow_openmpi_as_root();
        let launch = MpiLaunch {
            mpirun_args: hosts.mpirun_args(),
            // the ranks reach the lab at the bridge's address, from inside their hosts
            bind: format!("{}:0", hosts.bridge),
            public: true,
            exe: Some(super::ddlab()),
            ..MpiLaunch::default()
        };
        let exp = Experiment {
            backend: Backend::Mpi,
            workers: 4,
            seed: 9201,
            length: Length::Steps(100_000_000),
            ..Experiment::default()
        };
        let mut s =
            Session::start_mpi(exp, Arc::new(ddlab::data::digits()), SessionOptions::default(), launch).unwrap();
        assert!(s.controller_address().unwrap().starts_with(&hosts.bridge));
        let until = |s: &mut Session, what: &str, pred: &dyn Fn(&Session) -> bool| {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !pred(s) {
                assert!(
                    Instant::now() < deadline,
                    "timed out waiting for {what}: {:?}",
                    s.take_notes()
                );
                s.poll(|_| {});
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        until(&mut s, "steps from the ranks", &|s| s.state().updates() > 20);
        // every rank connected back, from its own host
        let seen: std::collections::BTreeMap<usize, String> = s.hosts();
        assert_eq!(seen.len(), 4, "{seen:?}");
        for (rank, host) in &seen {
            assert_eq!(host, &hosts.names[rank / 2], "{seen:?}");
        }
        s.control(Control::Stop).unwrap();
        until(&mut s, "the stop", &|s| s.state().outcome.is_some());
        assert_eq!(s.state().outcome, Some(Outcome::Stopped));
        assert!(s.final_params().is_some());
    }
}
