//! The lab's MPI controller refuses clearly when it cannot work (no feature, no mpirun),
//! without MPI installed; the MPI runs themselves are in `tests/mpi.rs`.

use std::sync::Arc;

use ddlab::config::{Backend, Experiment};
use ddlab::session::remote::MpiLaunch;
use ddlab::session::{Session, SessionOptions};

/// Why an MPI session over `launch` was refused.
fn refusal(launch: MpiLaunch) -> String {
    Session::start_mpi(
        exp(),
        Arc::new(ddlab::data::digits()),
        SessionOptions::default(),
        launch,
    )
    .err()
    .expect("refused")
}

fn exp() -> Experiment {
    Experiment {
        backend: Backend::Mpi,
        workers: 2,
        ..Experiment::default()
    }
}

#[test]
fn no_mpirun_on_path_is_one_sentence_naming_what_to_install() {
    let launch = MpiLaunch {
        mpirun: "/nonexistent/mpirun".into(),
        exe: Some(assert_cmd::cargo::cargo_bin("ddlab")),
        ..MpiLaunch::default()
    };
    let err = refusal(launch);
    assert!(err.contains("is not on PATH") && err.contains("openmpi-bin"), "{err}");
    assert_eq!(err.lines().count(), 1);
    // and the threads backend keeps working
    let mut s = Session::start(
        Experiment {
            length: ddlab::config::Length::Steps(5),
            ..Experiment::default()
        },
        SessionOptions::default(),
    )
    .unwrap();
    assert_eq!(s.run_to_end(|_| {}), ddlab::train::Outcome::Completed);
}

#[cfg(not(feature = "mpi"))]
#[test]
fn a_build_without_mpi_says_how_to_rebuild() {
    let err = refusal(MpiLaunch::default());
    assert!(err.contains("--features mpi"), "{err}");
}

#[test]
fn the_controller_address_must_be_one_it_can_listen_on() {
    let launch = MpiLaunch {
        mpirun: "true".into(),
        bind: "203.0.113.7:1".into(), // TEST-NET-3: not this machine
        public: true,
        exe: Some(assert_cmd::cargo::cargo_bin("ddlab")),
        ..MpiLaunch::default()
    };
    let err = refusal(launch);
    assert!(err.contains("cannot listen on 203.0.113.7:1"), "{err}");
}

#[test]
fn an_address_other_machines_can_reach_needs_controller_public() {
    let launch = MpiLaunch {
        mpirun: "true".into(),
        bind: "192.0.2.1:0".into(), // TEST-NET-1
        exe: Some(assert_cmd::cargo::cargo_bin("ddlab")),
        ..MpiLaunch::default()
    };
    let err = refusal(launch);
    assert!(err.contains("--controller-public"), "{err}");
    assert_eq!(err.lines().count(), 1);
    // and from the command line: exit 2, one sentence naming the flag, before the lab opens
    let out = assert_cmd::Command::cargo_bin("ddlab")
        .unwrap()
        .args(["lab", "--backend", "mpi", "--controller-addr", "192.0.2.1:0"])
        .timeout(std::time::Duration::from_secs(20))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("add --controller-public to allow it"), "{stderr}");
}

#[test]
fn an_unspecified_address_is_refused_even_when_public_since_ranks_cannot_connect_to_it() {
    for bind in ["0.0.0.0:0", "[::]:0"] {
        let launch = MpiLaunch {
            mpirun: "true".into(),
            bind: bind.into(),
            public: true,
            exe: Some(assert_cmd::cargo::cargo_bin("ddlab")),
            ..MpiLaunch::default()
        };
        let err = refusal(launch);
        assert!(
            err.contains("give this node's address that the ranks can reach"),
            "{err}"
        );
        let out = assert_cmd::Command::cargo_bin("ddlab")
            .unwrap()
            .args(["lab", "--controller-addr", bind, "--controller-public"])
            .timeout(std::time::Duration::from_secs(20))
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{bind}");
        assert_eq!(String::from_utf8_lossy(&out.stderr).trim().lines().count(), 1);
    }
}

#[test]
fn loopback_needs_no_flag() {
    assert_eq!(ddlab::session::remote::check_bind("127.0.0.1:0", false), Ok(false));
    assert_eq!(ddlab::session::remote::check_bind("[::1]:0", false), Ok(false));
    assert_eq!(ddlab::session::remote::check_bind("localhost:0", false), Ok(false));
    assert_eq!(ddlab::session::remote::check_bind("192.0.2.1:0", true), Ok(true));
}
