//! `ddlab run`: one experiment, headless.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::export::Exports;
use super::{CliError, RunArgs};
use crate::session::{Session, SessionError, SessionOptions, Summary};
use crate::train::{Outcome, Phase};

/// How often the headless loop drains the event stream (and the bar redraws).
const POLL: Duration = Duration::from_millis(10);

pub fn run(args: &RunArgs) -> Result<(), CliError> {
    let exp = args.experiment.experiment();
    if exp.backend == crate::config::Backend::Mpi {
        return run_mpi(args, exp);
    }
    exp.validate().map_err(|e| CliError::usage(e.to_string()))?;
    let exports = Exports::open(args.json.as_deref(), args.csv.as_deref(), args.trace.as_deref())?;
    let session = Session::start(exp, SessionOptions::default()).map_err(session_error)?;
    drive(args, session, exports, false)
}

fn session_error(e: SessionError) -> CliError {
    match e {
        SessionError::Config(e) => CliError::usage(e.to_string()),
        SessionError::Data(e) => CliError::usage(e.to_string()),
        SessionError::Device(e) => CliError::usage(e),
    }
}

#[cfg(not(feature = "mpi"))]
fn run_mpi(_args: &RunArgs, _exp: crate::config::Experiment) -> Result<(), CliError> {
    Err(CliError::usage(
        "--backend mpi: this ddlab was built without MPI: rebuild with `cargo build --release --features mpi` (Debian/Ubuntu: apt-get install libopenmpi-dev openmpi-bin libclang-dev) and start it under mpirun, or use --backend threads",
    ))
}

/// SPMD: every rank of `mpirun -n N ddlab run --backend mpi …` runs this; each trains
/// one worker, rank 0 prints the progress, the summary and the exports.
#[cfg(feature = "mpi")]
fn run_mpi(args: &RunArgs, mut exp: crate::config::Experiment) -> Result<(), CliError> {
    use crate::comm::mpi::{abort_world, MpiWorld};
    use crate::comm::{Clock, Collective, Comm, Transport};

    let world = MpiWorld::init().map_err(CliError::failure)?;
    // A panicking rank takes the job down at once: nobody waits forever in a collective.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("ddlab: rank panicked: {info}");
        abort_world(70);
    }));
    let mut t = world.transport(Clock::start());
    let (rank, size) = (t.rank(), t.size());
    // Rank 0 says it before anyone leaves: mpirun stops the job at the first rank to exit
    // with an error, which could otherwise be before rank 0 has printed.
    let mut refuse = |message: String| {
        if rank == 0 {
            eprintln!("ddlab: {message}");
        }
        let _ = t.barrier();
        Err(CliError {
            code: 2,
            message: String::new(),
        })
    };
    // Sync: every rank is a worker. The parameter-server modes: rank 0 is the server.
    let workers = if exp.mode.uses_server() { size - 1 } else { size };
    if let Some(n) = args.experiment.workers.filter(|&n| n != workers) {
        return refuse(format!(
            "--workers {n} but mpirun started {size} ranks, which make {workers} workers in {} mode (every rank is a worker{}); drop --workers or change mpirun -n",
            exp.mode,
            if exp.mode.uses_server() { ", but rank 0 is the parameter server" } else { "" }
        ));
    }
    if workers == 0 {
        return refuse(format!(
            "--mode {} needs a parameter server and at least one worker: use mpirun -n 2 or more",
            exp.mode
        ));
    }
    exp.workers = workers;
    if exp.overlap || exp.link.is_some() || exp.nodes > 1 || exp.intra_link.is_some() {
        return refuse(
            "--overlap, --link, --nodes and --intra-link are for the threads backend; over MPI the network is real and the nodes are the hosts (hierarchical and 2d use them): drop them or use --backend threads".into(),
        );
    }
    if let Err(e) = exp.validate() {
        return refuse(e.to_string());
    }
    let data = match crate::data::Dataset::load(exp.dataset) {
        Ok(d) => std::sync::Arc::new(d),
        Err(e) => return refuse(e.to_string()),
    };
    let mut comm = Comm::new(t, exp.allreduce);
    // --device gpu: every rank needs a GPU. The first rank without one says why, and
    // every rank leaves together.
    let gpu = crate::gpu::preflight(&exp, data.inputs(), data.classes);
    let mut failed = vec![0.0f32; size];
    failed[rank] = f32::from(u8::from(gpu.is_err()));
    if comm.all_reduce_sum(&mut failed).is_err() {
        abort_world(2);
    }
    if let Some(first) = failed.iter().position(|&f| f > 0.0) {
        if let (true, Err(e)) = (rank == first, gpu) {
            let others = failed.iter().filter(|&&f| f > 0.0).count() - 1;
            let also = if others > 0 {
                format!(" (and on {others} more)")
            } else {
                String::new()
            };
            eprintln!("ddlab: rank {rank}{also}: {e}");
        }
        return Err(CliError {
            code: 2,
            message: String::new(),
        });
    }
    if rank == 0 {
        crate::comm::mpi::name_step_at_exit();
        let exports = Exports::open(args.json.as_deref(), args.csv.as_deref(), args.trace.as_deref())
            .inspect_err(|_| abort_world(2))?;
        let session = Session::start_rank(exp, data, SessionOptions::default(), comm, None).map_err(session_error)?;
        let result = drive(args, session, exports, true);
        crate::comm::mpi::ENDED.store(true, std::sync::atomic::Ordering::SeqCst);
        drop(world);
        result
    } else {
        // A termination signal is rank 0's to act on (it names the step and writes the
        // exports, then leaves, which ends the job); were the others to die of it first,
        // rank 0's transport would fail under it before it could.
        let _ = ctrlc::set_handler(|| {});
        let mut session =
            Session::start_rank(exp, data, SessionOptions::default(), comm, None).map_err(session_error)?;
        let outcome = session.run_to_end(|_| {});
        drop(session);
        drop(world);
        // Rank 0 says what happened; the others only set the exit code.
        match outcome {
            Outcome::Completed | Outcome::Stopped => Ok(()),
            Outcome::Diverged { .. } => Err(CliError {
                code: 3,
                message: String::new(),
            }),
            Outcome::Failed { message } => Err(CliError::failure(format!("rank {rank}: {message}"))),
        }
    }
}

/// Shows a run's progress, then its summary, and writes its exports.
/// `spmd`: this is rank 0 of an MPI job, whose collectives cannot be interrupted: a
/// termination signal (mpirun ending the job because a rank died, or Ctrl-C) then ends
/// this process at once, after it has said at which step and written the exports.
fn drive(args: &RunArgs, mut session: Session, mut exports: Exports, spmd: bool) -> Result<(), CliError> {
    let bar = if !args.quiet && std::io::stderr().is_terminal() {
        ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr_with_hz(10))
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} samples  {msg}")
            .expect("a valid template"),
    );

    // Ctrl-C (or SIGTERM, SIGHUP) stops the run at the next phase and still writes the
    // summary and exports.
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&interrupted);
    let _ = ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst));

    let mut export_err = None;
    let mut stopping = false;
    loop {
        #[cfg(feature = "mpi")]
        if spmd {
            if let Some(s) = session.state().last_step() {
                crate::comm::mpi::STEP.store(s.step, Ordering::SeqCst);
            }
        }
        if spmd && interrupted.load(Ordering::SeqCst) {
            bar.finish_and_clear();
            let _ = session.poll(|event| {
                let _ = exports.on_event(event);
            });
            let state = session.state();
            let step = state.last_step().map_or(0, |s| s.step);
            let _ = exports.sync(state);
            let _ = exports.finish(state, &session.summary());
            eprintln!(
                "ddlab: the MPI job is being stopped at step {step} (by mpirun — its message names the rank and node, if one failed — or by you); the summary and exports cover the steps done"
            );
            #[cfg(feature = "mpi")]
            crate::comm::mpi::ENDED.store(true, Ordering::SeqCst);
            std::process::exit(143);
        }
        if interrupted.load(Ordering::SeqCst) && !stopping {
            stopping = true;
            let _ = session.control(crate::train::Control::Stop);
        }
        // Drain, then sleep: never block on the channel (see `Session::run_to_end`).
        std::thread::sleep(POLL);
        let over = session.poll(|event| {
            if export_err.is_none() {
                export_err = exports.on_event(event).err();
            }
        });
        let state = session.state();
        bar.set_length(state.total_samples);
        bar.set_position(state.samples());
        if let Some(last) = state.last_step() {
            let acc = state
                .last_eval()
                .map_or(String::from("–"), |e| format!("{:.1} %", e.test_accuracy * 100.0));
            bar.set_message(format!("loss {:.4}  test {acc}", last.loss));
        }
        if export_err.is_none() {
            export_err = exports.sync(state).err();
        }
        if let Some(e) = export_err.take() {
            let _ = session.control(crate::train::Control::Stop);
            while !session.poll(|_| {}) {}
            bar.finish_and_clear();
            return Err(e);
        }
        if over {
            break;
        }
    }
    bar.finish_and_clear();

    let summary = session.summary();
    exports.finish(session.state(), &summary)?;
    if !args.quiet {
        use std::io::Write;
        // A closed pipe (`ddlab run | head`) is not an error worth a panic.
        let _ = std::io::stdout().write_all(table(&summary).as_bytes());
    }
    match session.state().outcome.clone() {
        Some(Outcome::Stopped) if stopping => Err(CliError { code: 130, message: "interrupted: the summary and exports cover the steps done".into() }),
        Some(Outcome::Completed) | Some(Outcome::Stopped) => Ok(()),
        Some(Outcome::Diverged { step, worker }) => Err(CliError {
            code: 3,
            message: format!(
                "the run diverged at step {step}: worker {worker}'s loss became NaN, infinite or over 100× chance level; lower --lr (it was {}) or add --warmup",
                session.experiment().lr
            ),
        }),
        Some(Outcome::Failed { message }) => Err(CliError::failure(message)),
        None => Err(CliError::failure("the run ended without a result")),
    }
}

/// The human-readable summary.
pub fn table(s: &Summary) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let pct = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{:.2} %", v * 100.0));
    let _ = writeln!(
        out,
        "ddlab run: {} · {} workers{} · {} · {} · hidden {:?} · batch {}/worker",
        s.mode,
        s.workers,
        if s.backend == "mpi" { " (MPI ranks)" } else { "" },
        match (s.mode.as_str(), s.backend.as_str()) {
            ("sync", _) => format!("{} all-reduce", s.allreduce),
            (_, "mpi") => "parameter server on rank 0".to_string(),
            _ => "parameter server".to_string(),
        },
        s.dataset,
        s.hidden,
        s.batch
    );
    let _ = writeln!(out);
    let status = match s.diverged_step {
        Some(step) => format!("DIVERGED at step {step}"),
        None => s.outcome.to_string(),
    };
    let rows = [
        ("result", status),
        ("test accuracy", pct(s.test_accuracy)),
        ("final loss", s.final_loss.map_or("–".into(), |l| format!("{l:.4}"))),
        ("steps", s.steps.to_string()),
        ("samples", s.samples.to_string()),
        ("time", format!("{:.2} s", s.elapsed_s)),
        ("steps/s", format!("{:.1}", s.steps_per_sec)),
        ("samples/s", format!("{:.0}", s.samples_per_sec)),
        ("all-reduce bytes", human_bytes(s.allreduce_bytes as f64)),
        (
            "all-reduce time/step",
            match s.allreduce_model_ms {
                Some(m) => format!(
                    "{:.3} ms; communication {:.3} ms, α-β model {m:.3} ms",
                    s.allreduce_ms, s.allreduce_comm_ms
                ),
                None => format!("{:.3} ms", s.allreduce_ms),
            },
        ),
        (
            "all-reduce busbw",
            s.allreduce_busbw_gbps.map_or("–".into(), |b| format!("{b:.2} GB/s")),
        ),
        ("idle", format!("{:.1} % of worker time", s.idle_fraction * 100.0)),
        (
            "staleness",
            s.staleness_mean.map_or("–".into(), |m| {
                format!("mean {m:.2}, max {}", s.staleness_max.unwrap_or(0))
            }),
        ),
        ("dropped gradients", s.dropped_gradients.to_string()),
    ];
    for (k, v) in rows {
        let _ = writeln!(out, "  {k:<22} {v}");
    }
    let _ = writeln!(out);
    // Only the phases this run went through (sync: no pull/push; async: no all-reduce).
    let used: Vec<Phase> = Phase::ALL
        .into_iter()
        .filter(|p| s.phase_ms.iter().any(|ms| ms[p.index()] > 0.0))
        .collect();
    let _ = write!(out, "  {:<9} {:>9}", "ms/step", "steps/s");
    for p in &used {
        let _ = write!(out, " {:>11}", p.name());
    }
    let _ = writeln!(out);
    for (w, ms) in s.phase_ms.iter().enumerate() {
        let rate = s.worker_steps_per_sec.get(w).copied().unwrap_or(0.0);
        let _ = write!(out, "  {:<9} {rate:>9.1}", format!("worker {w}"));
        for p in &used {
            let _ = write!(out, " {:>11.4}", ms[p.index()]);
        }
        let _ = writeln!(out);
    }
    out
}

/// Sizes in binary units (a 4 MiB buffer is 4194304 bytes).
pub fn binary_bytes(b: usize) -> String {
    match b {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

pub fn human_bytes(b: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = b;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}
