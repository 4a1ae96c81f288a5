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
        exe: Some(assert_cmd::cargo::cargo_bin("ddlab")),
        ..MpiLaunch::default()
    };
    let err = refusal(launch);
    assert!(err.contains("cannot listen on 203.0.113.7:1"), "{err}");
}
