//! The threads backend on a machine other programs fill (a person's build, a browser):
//! the real binary beside busy processes. Its own test binary, so that no other test's
//! run keeps the machine busy meanwhile.

mod common;

/// The cores each of `pid`'s threads named `ddlab-worker-*` may run on, as Linux lists
/// them (`0-1`, `1`).
#[cfg(target_os = "linux")]
fn worker_cores(pid: u32) -> Vec<String> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| {
            let dir = t.ok()?.path();
            let name = std::fs::read_to_string(dir.join("comm")).ok()?;
            if !name.starts_with("ddlab-worker") {
                return None;
            }
            let status = std::fs::read_to_string(dir.join("status")).ok()?;
            let line = status.lines().find(|l| l.starts_with("Cpus_allowed_list:"))?;
            Some(line.split_whitespace().nth(1)?.to_string())
        })
        .collect()
}

#[test]
#[cfg(target_os = "linux")]
fn beside_busy_programs_sync_and_parameter_server_workers_share_one_core_and_spread_when_they_end() {
    let own = std::fs::read_to_string("/proc/self/status").unwrap();
    let all = own.lines().find(|l| l.starts_with("Cpus_allowed_list:")).unwrap();
    let all = all.split_whitespace().nth(1).unwrap().to_string();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if !(2..=8).contains(&cores) {
        eprintln!("skipped: {cores} cores (this needs 2 to 8, filled by as many busy processes)");
        return;
    }
    let within = |what: &str, pid: u32, done: &dyn Fn(&[String]) -> bool| {
        let start = std::time::Instant::now();
        loop {
            let now = worker_cores(pid);
            if now.len() == 4 && done(&now) {
                return;
            }
            assert!(
                start.elapsed() < std::time::Duration::from_secs(10),
                "{what}: the 4 workers' cores after 10 s: {now:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    };
    // sync (the transports' waits), and a parameter-server mode (its workers wait on
    // the server's lock): a run started on a quiet machine gathers once it fills, and a
    // person's build ending gives the run its cores back.
    for mode in ["sync", "ssp:2"] {
        let run = Ended(
            std::process::Command::new(assert_cmd::cargo::cargo_bin("ddlab"))
                .args(["run", "-q", "--workers", "4", "--mode", mode, "--steps", "100000000"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        let pid = run.0.id();
        within("started", pid, &|_| true);
        let busy: Vec<common::Busy> = (0..cores).map(|_| common::Busy::start()).collect();
        within(&format!("{mode}, beside {cores} busy processes"), pid, &|now| {
            now.iter().all(|c| !c.contains(['-', ',']) && *c == now[0])
        });
        drop(busy);
        // (another program busy on this machine meanwhile keeps it full: this waits)
        within(&format!("{mode}, once they ended"), pid, &|now| {
            now.iter().all(|c| *c == all)
        });
    }
}

/// A child process ended when dropped (also when the test fails).
struct Ended(std::process::Child);

impl Drop for Ended {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
