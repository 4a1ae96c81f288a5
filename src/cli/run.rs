//! `ddlab run`: one experiment, headless.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::export::Exports;
use super::{ExitError, RunArgs};
use crate::session::{Outcome, Phase, Session, SessionOptions, Summary};

/// How often the headless loop drains the event stream (and the bar redraws).
const POLL: Duration = Duration::from_millis(10);

pub fn run(args: &RunArgs) -> Result<(), ExitError> {
    let exp = args.experiment.experiment();
    if exp.backend == crate::session::Backend::Mpi {
        return run_mpi(args, exp);
    }
    exp.validate().map_err(|e| ExitError::usage(e.to_string()))?;
    // Allowed, as on an oversubscribed node, but said once (`Experiment::oversubscription`).
    if let Some(over) = exp.oversubscription() {
        crate::session::spmd::say(&over);
    }
    let exports = Exports::open(args.json.as_deref(), args.csv.as_deref(), args.trace.as_deref())?;
    let session = Session::start(exp, SessionOptions::default()).map_err(ExitError::from)?;
    drive(args, session, exports)
}

#[cfg(not(feature = "mpi"))]
fn run_mpi(_args: &RunArgs, _exp: crate::session::Experiment) -> Result<(), ExitError> {
    Err(ExitError::usage(
        "--backend mpi: this ddlab was built without MPI: rebuild with `cargo build --release --features mpi` (Debian/Ubuntu: apt-get install libopenmpi-dev openmpi-bin libclang-dev) and start it under mpirun, or use --backend threads",
    ))
}

/// SPMD: every rank of `mpirun -n N ddlab run --backend mpi …` runs this; each trains
/// one worker, rank 0 prints the progress, the summary and the exports. The rank's life
/// (start, agreement, stalls, exit codes) is `session::spmd`'s.
#[cfg(feature = "mpi")]
fn run_mpi(args: &RunArgs, mut exp: crate::session::Experiment) -> Result<(), ExitError> {
    use crate::comm::{Clock, Comm};
    use crate::session::spmd::{self, exit, Rank};

    let mut rank = Rank::start(true).map_err(ExitError::failure)?;
    let (me, size) = (rank.rank, rank.size);
    // What each rank checks alone; then all go on, or all leave with the first refusal.
    let prepared = (|| -> Result<_, String> {
        // Sync: every rank is a worker. The parameter-server modes: rank 0 is the server.
        let workers = if exp.mode.uses_server() { size - 1 } else { size };
        if let Some(n) = args.experiment.workers.filter(|&n| n != workers) {
            return Err(format!(
                "--workers {n} but mpirun started {size} ranks, which make {workers} workers in {} mode (every rank is a worker{}); drop --workers or change mpirun -n",
                exp.mode,
                if exp.mode.uses_server() { ", but rank 0 is the parameter server" } else { "" }
            ));
        }
        if workers == 0 {
            return Err(format!(
                "--mode {} needs a parameter server and at least one worker: use mpirun -n 2 or more",
                exp.mode
            ));
        }
        exp.workers = workers;
        if exp.overlap || exp.link.is_some() || exp.nodes > 1 || exp.intra_link.is_some() {
            return Err("--overlap, --link, --nodes and --intra-link are for the threads backend; over MPI the network is real and the nodes are the hosts (hierarchical and 2d use them): drop them or use --backend threads".into());
        }
        exp.validate().map_err(|e| e.to_string())?;
        let data = std::sync::Arc::new(crate::session::Dataset::load(exp.dataset).map_err(|e| e.to_string())?);
        exp.check_against(data.train_len()).map_err(|e| e.to_string())?;
        crate::gpu::preflight(
            exp.device,
            &exp.gpus,
            &crate::nn::Mlp::new(data.inputs(), &exp.hidden, data.classes),
            exp.batch,
        )?;
        // (only rank 0 writes exports; a path it cannot write stops every rank)
        let exports = match me {
            0 => Some(
                Exports::open(args.json.as_deref(), args.csv.as_deref(), args.trace.as_deref())
                    .map_err(|e| e.message)?,
            ),
            _ => None,
        };
        Ok((data, exports))
    })();
    let refused = |_| ExitError {
        code: exit::BAD_INPUT,
        message: String::new(), // (rank 0 has said it)
    };
    let (data, exports) = match prepared {
        Ok(p) => {
            rank.agree(Ok(())).map_err(refused)?;
            p
        }
        Err(why) => return Err(rank.agree(Err(why)).map_err(refused).unwrap_err()),
    };
    let json = serde_json::to_value(&exp).unwrap_or_default();
    rank.same_everywhere("experiment", &json).map_err(refused)?;

    // A rank that waits for another too long names it and ends the job (rank 0 first
    // writes its exports), unless told to keep waiting.
    let stalled: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let on_stall = {
        let (stalled, keep_waiting) = (Arc::clone(&stalled), args.stall_wait);
        move |stall: spmd::Stall| {
            if keep_waiting {
                spmd::say(
                    &stall
                        .sentence
                        .replace("; ending the job", "; waiting on (--stall-wait)"),
                );
            } else if me == 0 {
                *stalled.lock().unwrap_or_else(|e| e.into_inner()) = Some(stall.sentence);
            } else {
                spmd::leave_stalled(&stall);
            }
        }
    };
    rank.watch_for_stalls(args.stall_timeout.map(Duration::from_secs_f64), on_stall);

    let comm = Comm::new(rank.transport(Clock::start()), exp.allreduce);
    let mut session = Session::start_rank(exp, data, SessionOptions::default(), comm, None)
        .map_err(|e| ExitError::failure(rank.about_me(&e.to_string())))?;
    let mut exports = exports;
    let outcome = if me == 0 {
        follow(args, &mut session, &mut exports, Some(&stalled))?
    } else {
        // A termination signal is rank 0's to act on (it names the step and writes the
        // exports, then leaves, which ends the job); were the others to die of it first,
        // rank 0's transport would fail under it before it could.
        let _ = ctrlc::set_handler(|| {});
        session.run_to_end(spmd::saw)
    };
    // Every rank's end, agreed: rank 0's summary and exports say the job's.
    let verdict = rank.agree_end(&outcome);
    if me == 0 {
        session.settle(verdict.outcome.clone());
        if let Some(exports) = exports.take() {
            exports.finish(session.state(), &session.summary())?;
        }
        if !args.quiet {
            use std::io::Write;
            let _ = std::io::stdout().write_all(table(&session.summary()).as_bytes());
        }
        if !verdict.sentence.is_empty() {
            spmd::say(&verdict.sentence);
        }
    }
    drop(session);
    drop(rank); // finalises MPI
    match verdict.code {
        exit::DONE => Ok(()),
        code => Err(ExitError {
            code,
            message: String::new(), // (rank 0 has said it)
        }),
    }
}

/// Follows a run to its end: progress, exports, Ctrl-C (stop at the next phase, keep
/// the exports); returns how it ended. `stalled`: this is rank 0 of an MPI job, whose
/// collectives cannot be interrupted: a termination signal (mpirun ending the job
/// because a rank died, or Ctrl-C) or a stall its watchdog found then ends this process
/// at once, after it has said at which step and written the exports.
fn follow(
    args: &RunArgs,
    session: &mut Session,
    slot: &mut Option<Exports>,
    stalled: Option<&std::sync::Mutex<Option<String>>>,
) -> Result<Outcome, ExitError> {
    let Some(exports) = slot.as_mut() else {
        return Err(ExitError::failure("the exports were already written"));
    };
    let spmd = stalled.is_some();
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
        let stall = stalled.and_then(|s| s.lock().unwrap_or_else(|e| e.into_inner()).clone());
        if spmd && (interrupted.load(Ordering::SeqCst) || stall.is_some()) {
            bar.finish_and_clear();
            let _ = session.poll(|event| {
                let _ = exports.on_event(event);
            });
            let step = session.state().last_step().map_or(0, |s| s.step);
            let (code, why, outcome) = match stall {
                Some(sentence) => (
                    crate::session::spmd::exit::STALLED,
                    sentence.clone(),
                    Outcome::Failed { message: sentence },
                ),
                None => (
                    crate::session::spmd::exit::TERMINATED,
                    format!("the MPI job is being stopped at step {step} (by mpirun — its message names the rank and node, if one failed — or by you)"),
                    Outcome::Stopped,
                ),
            };
            // (the summary says how the job ended, not "running")
            session.settle(outcome);
            let state = session.state();
            let _ = exports.sync(state);
            if let Some(exports) = slot.take() {
                let _ = exports.finish(state, &session.summary());
            }
            crate::session::spmd::say(&format!("{why}; the summary and exports cover the steps done"));
            crate::session::spmd::ended();
            std::process::exit(code);
        }
        if interrupted.load(Ordering::SeqCst) && !stopping {
            stopping = true;
            let _ = session.control(crate::session::Control::Stop);
        }
        // Drain, then sleep: never block on the channel (see `Session::run_to_end`).
        std::thread::sleep(POLL);
        let over = session.poll(|event| {
            if export_err.is_none() {
                export_err = exports.on_event(event).err();
            }
        });
        let state = session.state();
        if let Some(last) = state.last_step() {
            crate::session::spmd::stepped(last.step);
        }
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
            let _ = session.control(crate::session::Control::Stop);
            while !session.poll(|_| {}) {}
            bar.finish_and_clear();
            return Err(e);
        }
        if over {
            break;
        }
    }
    bar.finish_and_clear();
    let outcome = session.state().outcome.clone().unwrap_or(Outcome::Failed {
        message: "the engine ended without a result".into(),
    });
    if !spmd {
        // (an MPI job's rank 0 writes them once the ranks have agreed how it ended)
        if let Some(exports) = slot.take() {
            exports.finish(session.state(), &session.summary())?;
        }
    }
    if stopping && outcome == Outcome::Stopped {
        return Err(ExitError {
            code: 130,
            message: "interrupted: the summary and exports cover the steps done".into(),
        });
    }
    Ok(outcome)
}

/// Shows a run's progress, then its summary, and writes its exports; the exit code
/// from how it ended.
fn drive(args: &RunArgs, mut session: Session, exports: Exports) -> Result<(), ExitError> {
    let outcome = follow(args, &mut session, &mut Some(exports), None)?;
    if !args.quiet {
        use std::io::Write;
        // A closed pipe (`ddlab run | head`) is not an error worth a panic.
        let _ = std::io::stdout().write_all(table(&session.summary()).as_bytes());
    }
    match outcome {
        Outcome::Completed | Outcome::Stopped => Ok(()),
        Outcome::Diverged { step, worker } => Err(ExitError {
            code: 3,
            message: format!(
                "the run diverged at step {step}: worker {worker}'s loss became NaN, infinite or over 100× chance level; lower --lr (it was {}) or add --warmup",
                session.experiment().lr
            ),
        }),
        Outcome::Failed { message } => Err(ExitError::failure(message)),
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
            (m, _) if m.starts_with("local:") => format!("parameters averaged by {} all-reduce", s.allreduce),
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
        ("all-reduce bytes", crate::units::bytes(s.allreduce_bytes)),
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
