//! Helpers shared by the integration tests (each test binary uses some of them).
#![allow(dead_code)]

/// What OpenMPI needs to run as root (as CI does) and with more ranks than cores.
pub const OPENMPI_AS_ROOT: [(&str, &str); 3] = [
    ("OMPI_ALLOW_RUN_AS_ROOT", "1"),
    ("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"),
    ("OMPI_MCA_rmaps_base_oversubscribe", "1"),
];

/// A process that keeps a core busy while it lives (as a browser or a build would),
/// started from this process as a person's would be from their shell.
pub struct Busy(std::process::Child);

impl Busy {
    pub fn start() -> Busy {
        Busy(
            std::process::Command::new("sh")
                .args(["-c", "exec yes > /dev/null"])
                .spawn()
                .expect("sh runs"),
        )
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The ddlab binary of this build.
pub fn ddlab() -> assert_cmd::Command {
    assert_cmd::Command::cargo_bin("ddlab").expect("the binary is built")
}

/// `mpirun ARGS…` to be completed by the caller, killed after `limit_s` seconds rather
/// than hanging a CI job, with [`OPENMPI_AS_ROOT`].
pub fn mpirun(limit_s: u32) -> std::process::Command {
    let mut c = std::process::Command::new("timeout");
    c.args([limit_s.to_string().as_str(), "mpirun"]).envs(OPENMPI_AS_ROOT);
    c
}

/// For tests whose mpirun the library starts (the lab's launcher): [`OPENMPI_AS_ROOT`]
/// in this process's environment, which the launcher passes on.
pub fn allow_openmpi_as_root() {
    for (k, v) in OPENMPI_AS_ROOT {
        std::env::set_var(k, v);
    }
}

/// ‖a − b‖ / ‖b‖, and the worst element, for a readable failure.
pub fn relative_difference(a: &[f32], b: &[f32]) -> (f64, usize) {
    let (mut diff, mut norm, mut worst) = (0.0f64, 0.0f64, (0usize, 0.0f32));
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        diff += f64::from(x - y).powi(2);
        norm += f64::from(y).powi(2);
        if (x - y).abs() > worst.1 {
            worst = (i, (x - y).abs());
        }
    }
    ((diff / norm).sqrt(), worst.0)
}
