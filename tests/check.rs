//! `ddlab check` on threads: the ladder passes on a healthy machine, and the faults a
//! test injects are caught and named. (The MPI runs are in `tests/mpi.rs`.)

mod common;

use common::ddlab;

fn check(args: &[&str]) -> (Option<i32>, String, serde_json::Value) {
    // One check at a time: checks running side by side would time each other.
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _serial = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("check.json");
    let out = ddlab()
        .args(["check", "--quick", "--json"])
        .arg(&json)
        .args(args)
        .env_remove("OMPI_COMM_WORLD_SIZE")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let report = serde_json::from_str(&std::fs::read_to_string(&json).unwrap_or_default()).unwrap_or_default();
    (out.status.code(), stdout, report)
}

#[test]
fn the_quick_check_passes_with_every_figure_in_the_json() {
    let (code, stdout, report) = check(&["--workers", "3"]);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("verdict: PASS"), "{stdout}");
    for step in ["ranks", "collectives", "bandwidth", "links", "training"] {
        assert!(stdout.contains(&format!("✓ {step}")), "{step}: {stdout}");
    }
    assert_eq!(report["passed"], true);
    assert_eq!(report["ranks"].as_array().unwrap().len(), 3);
    // nccl-tests' rows: every flat algorithm at every quick size (4 B to 4 MB by 16×)
    let rows = report["bandwidth"].as_array().unwrap();
    assert_eq!(rows.len(), 3 * 6);
    for row in rows {
        let (algbw, busbw) = (row["algbw_gbps"].as_f64().unwrap(), row["busbw_gbps"].as_f64().unwrap());
        assert!(algbw > 0.0 && row["time_us"].as_f64().unwrap() > 0.0, "{row}");
        assert!((busbw - algbw * 2.0 * 2.0 / 3.0).abs() < 1e-9 * busbw.max(1.0), "{row}");
        assert_eq!(row["workers"], 3);
    }
    assert!(report["training_max_relative_diff"].as_f64().unwrap() <= 1e-5);
    assert!(report["training_last_loss"].as_f64() < report["training_first_loss"].as_f64());
}

#[test]
fn a_rank_that_corrupts_an_element_is_named_with_the_index_and_exit_code_1() {
    let (code, stdout, report) = check(&["--workers", "2", "--inject", "corrupt:1", "--sizes", "4,64K"]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("✗ collectives"), "{stdout}");
    assert!(stdout.contains("verdict: FAIL"), "{stdout}");
    let first = &report["wrong"][0];
    assert_eq!(first["rank"], 1);
    assert_eq!(first["index"], 0); // the middle of a 1-element buffer
    assert!(stdout.contains("on rank 1"), "{stdout}");
    // and only rank 1's results were wrong
    assert!(report["wrong"].as_array().unwrap().iter().all(|w| w["rank"] == 1));
}

#[test]
fn a_slow_rank_shows_as_its_outgoing_link_and_fails_the_check() {
    let (code, stdout, report) = check(&["--workers", "3", "--inject", "slow:1", "--sizes", "4"]);
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("✗ links"), "{stdout}");
    assert!(
        stdout.contains("slow link: rank 1 (") && stdout.contains("→ rank 2"),
        "{stdout}"
    );
    assert!(stdout.contains("every one sent by rank 1"), "{stdout}");
    // the link map has every ordered pair, and exactly rank 1's links are slow
    let links = report["links"].as_array().unwrap();
    assert_eq!(links.len(), 3 * 2);
    for l in links {
        assert_eq!(l["slow"] == true, l["from_rank"] == 1, "{l}");
    }
}

#[test]
fn bad_check_input_gets_one_line_and_exit_code_2() {
    for (args, says) in [
        (vec!["check", "--workers", "0"], "--workers 0"),
        (vec!["check", "--sizes", "4,lots"], "not a size"),
        (vec!["check", "--inject", "corrupt:9", "--workers", "2"], "no rank 9"),
    ] {
        let out = ddlab().args(&args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[cfg(not(feature = "mpi"))]
#[test]
fn without_the_mpi_feature_the_mpi_backend_says_how_to_rebuild() {
    let out = ddlab().args(["check", "--backend", "mpi"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("--features mpi"), "{stderr}");
    // and under a launcher without the feature, the same advice instead of N lone checks
    let out = ddlab()
        .args(["check"])
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr.contains("--features mpi"), "{stderr}");
}

#[test]
#[cfg(target_os = "linux")]
fn a_busy_machine_is_named_beside_the_figures_it_lowers() {
    // A process that keeps a core busy for the whole check.
    let busy = common::Busy::start();
    let (code, stdout, report) = check(&["--workers", "2"]);
    drop(busy);
    assert_eq!(code, Some(0), "a busy machine is not a broken one: {stdout}");
    assert!(stdout.contains("⚠ other programs used"), "{stdout}");
    let warnings = report["warnings"].as_array().unwrap();
    assert!(
        warnings
            .iter()
            .any(|w| w.as_str().unwrap().contains("check again when it is quiet")),
        "{report}"
    );
}
