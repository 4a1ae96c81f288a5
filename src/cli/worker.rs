//! `ddlab worker`: one rank of an MPI job started by the lab (internal; DESIGN.md
//! decision 5). It connects back to the controller with the job's token (read from the
//! file the lab names); rank 0 streams every event, obeys pause / resume / step /
//! slow-motion / stop, and reports where it ended so that the lab can relaunch from
//! there. Nothing received is ever executed: only `Control` values are read.

use clap::Args;

use super::ExitError;

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The lab's address, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub controller: String,
    /// A file holding the job's token (the controller refuses connections without it).
    /// Never the token itself: a command line can be read by anyone on the machine.
    #[arg(long, value_name = "PATH")]
    pub token_file: std::path::PathBuf,
    /// The experiment, as JSON.
    #[arg(long)]
    pub experiment: String,
    /// Continue a run: UPDATES,SAMPLES already done (rank 0 gets the parameters).
    #[arg(long, value_name = "UPDATES,SAMPLES")]
    pub resume_at: Option<String>,
    /// A rank that waits this many seconds in one MPI call names whom it waits for and
    /// ends the job (default: 30, or 100 steps when steps are fast, at least 5).
    #[arg(long, value_name = "SECONDS")]
    pub stall_timeout: Option<f64>,
}

#[cfg(not(feature = "mpi"))]
pub fn worker(_args: &WorkerArgs) -> Result<(), ExitError> {
    Err(ExitError::usage(
        "ddlab worker needs a ddlab built with MPI: rebuild with `cargo build --release --features mpi`",
    ))
}

#[cfg(feature = "mpi")]
pub fn worker(args: &WorkerArgs) -> Result<(), ExitError> {
    use std::io::{BufRead, BufReader, Write};
    use std::net::{TcpStream, ToSocketAddrs};
    use std::time::Duration;

    use crate::comm::{Clock, Comm};
    use crate::session::remote::Line;
    use crate::session::spmd::{self, exit, Rank};
    use crate::session::Experiment;
    use crate::session::{Control, Event, Outcome};
    use crate::session::{Resume, Session, SessionOptions};

    fn send(out: &mut impl Write, line: &Line) -> bool {
        serde_json::to_string(line).is_ok_and(|l| writeln!(out, "{l}").is_ok())
    }
    let mut rank = Rank::start(true).map_err(ExitError::failure)?;
    let (me, size, host) = (rank.rank, rank.size, rank.host.clone());
    // What each rank does alone before the job can start: read what the lab sent, reach
    // the lab, load the data. Then all go on, or all leave with the first failure.
    let prepared = (|| -> Result<_, String> {
        let exp: Experiment = serde_json::from_str(&args.experiment)
            .map_err(|e| format!("the experiment from the lab is unreadable: {e}"))?;
        let resume_at = match args.resume_at.as_deref() {
            None => None,
            Some(s) => Some(
                s.split_once(',')
                    .and_then(|(u, n)| Some((u.parse::<u64>().ok()?, n.parse::<u64>().ok()?)))
                    .ok_or_else(|| format!("--resume-at {s}: expected UPDATES,SAMPLES"))?,
            ),
        };
        let token = crate::session::remote::read_token_file(&args.token_file)?;
        // Reach the controller, or say why not (never hang).
        let addr = args
            .controller
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| format!("the controller address {} does not resolve", args.controller))?;
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).map_err(|e| {
            format!(
                "cannot reach the lab at {}: {e} (on several nodes, give the lab an address the nodes can reach: --controller-addr)",
                args.controller
            )
        })?;
        let mut out = stream.try_clone().map_err(|e| e.to_string())?;
        let hello = Line::Hello {
            token,
            rank: me,
            size,
            host: host.clone(),
            pid: std::process::id(),
        };
        if !send(&mut out, &hello) {
            return Err("the lab closed the connection".into());
        }
        let data = crate::session::Dataset::load(exp.dataset).map_err(|e| e.to_string())?;
        Ok((exp, resume_at, stream, out, std::sync::Arc::new(data)))
    })();
    let (exp, resume_at, stream, mut out, data) = match prepared {
        Ok(p) => {
            let agreed = rank.agree(Ok(()));
            if let Err(why) = agreed {
                // Rank 0 tells the lab why the job cannot start.
                if me == 0 {
                    let mut out = p.3;
                    let failed = Event::Finished {
                        outcome: Outcome::Failed { message: why },
                        t_ns: 0,
                    };
                    let _ = send(&mut out, &Line::Event(Box::new(failed)));
                }
                return Err(ExitError {
                    code: exit::BAD_INPUT,
                    message: String::new(),
                });
            }
            p
        }
        Err(why) => {
            let _ = rank.agree(Err(why));
            return Err(ExitError {
                code: exit::BAD_INPUT,
                message: String::new(),
            });
        }
    };
    // A rank that waits too long in MPI names whom it waits for and ends the job; rank 0
    // first tells the lab.
    let stalled: std::sync::Arc<std::sync::Mutex<Option<String>>> = Default::default();
    {
        let stalled = std::sync::Arc::clone(&stalled);
        rank.watch_for_stalls(args.stall_timeout.map(Duration::from_secs_f64), move |stall| {
            if me == 0 {
                *stalled.lock().unwrap_or_else(|e| e.into_inner()) = Some(stall.sentence);
            } else {
                spmd::leave_stalled(&stall);
            }
        });
    }
    let comm = Comm::new(rank.transport(Clock::start()), exp.allreduce);
    let fail = |message: String| -> ExitError { ExitError::failure(rank.about_me(&message)) };

    if me != 0 {
        // The lab says when a person holds the run (this rank then waits for rank 0 on
        // purpose, however long).
        if let Ok(from_lab) = stream.try_clone() {
            std::thread::spawn(move || {
                for line in BufReader::new(from_lab).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(Line::Held(on)) = serde_json::from_str::<Line>(&line) {
                        crate::comm::mpi::waiting::hold(on);
                    }
                }
            });
        }
        // (no parameters: rank 0's reach everyone by broadcast, or from the server)
        let resume = resume_at.map(|(updates, samples)| Resume {
            params: Vec::new(),
            updates,
            samples,
        });
        // Its own phases and messages go to the lab too, for the timeline of every worker
        // (rank 0 reports everyone's steps).
        let options = SessionOptions {
            detail: true,
            ..SessionOptions::default()
        };
        let mut session = Session::start_rank(exp, data, options, comm, resume).map_err(|e| fail(e.to_string()))?;
        let mut writer = std::io::BufWriter::new(out.try_clone().map_err(|e| fail(e.to_string()))?);
        let outcome = loop {
            let over = session.poll(|e: &Event| {
                spmd::saw(e);
                if e.is_visual() {
                    let _ = send(&mut writer, &Line::Event(Box::new(e.clone())));
                }
            });
            let _ = writer.flush();
            if over {
                break session.state().outcome.clone().unwrap_or(Outcome::Stopped);
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        drop(writer);
        rank.agree_end(&outcome);
        let _ = send(&mut out, &Line::Bye);
        return Ok(());
    }

    // Rank 0: where to start from, then controls in, events out.
    let mut reader = BufReader::new(stream);
    let resume = match resume_at {
        None => None,
        Some((updates, samples)) => {
            let mut line = String::new();
            let _ = reader.get_ref().set_read_timeout(Some(Duration::from_secs(30)));
            match reader
                .read_line(&mut line)
                .ok()
                .and_then(|_| serde_json::from_str::<Line>(&line).ok())
            {
                Some(Line::Resume(r)) => Some(Resume { updates, samples, ..r }),
                _ => {
                    eprintln!(
                        "ddlab: {}",
                        rank.about_me("the lab did not send the parameters to resume from")
                    );
                    crate::comm::mpi::abort_world(exit::FAILED)
                }
            }
        }
    };
    let _ = reader.get_ref().set_read_timeout(None);
    let (tx, rx) = crossbeam_channel::unbounded::<Option<Control>>();
    std::thread::spawn(move || {
        for line in reader.lines() {
            let Ok(line) = line else { break };
            if let Ok(Line::Control(c)) = serde_json::from_str::<Line>(&line) {
                let _ = tx.send(Some(c));
            }
        }
        let _ = tx.send(None); // the lab is gone
    });
    let options = SessionOptions {
        detail: true,
        ..SessionOptions::default()
    };
    let mut session = Session::start_rank(exp, data, options, comm, resume).map_err(|e| fail(e.to_string()))?;
    let mut writer = std::io::BufWriter::new(out);
    loop {
        if let Some(sentence) = stalled.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            // The job cannot go on: the lab hears why, then the job ends.
            let failed = Event::Finished {
                outcome: Outcome::Failed {
                    message: sentence.clone(),
                },
                t_ns: 0,
            };
            let _ = send(&mut writer, &Line::Event(Box::new(failed)));
            let _ = writer.flush();
            spmd::say(&sentence);
            spmd::ended();
            std::process::exit(exit::STALLED);
        }
        while let Ok(msg) = rx.try_recv() {
            match msg {
                // The lab went away: nobody is watching; end the job.
                None => {
                    eprintln!(
                        "ddlab: {}",
                        rank.about_me("the lab closed the connection; stopping the job")
                    );
                    crate::comm::mpi::abort_world(exit::FAILED)
                }
                // Stop, and any change of the experiment (the lab relaunches): every rank
                // must stop at the same step, so it travels as a switch in the all-reduce.
                Some(Control::Stop) => {
                    let mode = session.state().mode();
                    let _ = session.control(Control::SetMode(mode));
                    let _ = session.control(Control::Resume);
                }
                Some(c @ (Control::Pause | Control::Resume | Control::StepPhase | Control::SetPace { .. })) => {
                    if let Some(on) = crate::session::remote::holds(&c) {
                        crate::comm::mpi::waiting::hold(on);
                    }
                    let _ = session.control(c);
                }
                Some(_) => {}
            }
        }
        let mut broken = false;
        let over = session.poll(|e: &Event| {
            spmd::saw(e);
            // (the end is told once every rank has agreed on it)
            if !matches!(e, Event::Finished { .. }) {
                broken |= !send(&mut writer, &Line::Event(Box::new(e.clone())));
            }
        });
        broken |= writer.flush().is_err();
        if broken {
            eprintln!(
                "ddlab: {}",
                rank.about_me("the lab stopped listening; stopping the job")
            );
            crate::comm::mpi::abort_world(exit::FAILED)
        }
        if over {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let st = session.state();
    let end = Resume {
        params: session.final_params().unwrap_or_default(),
        updates: st.updates(),
        samples: st.samples(),
    };
    let outcome = st.outcome.clone().unwrap_or(Outcome::Stopped);
    let t_ns = st.finished_ns.unwrap_or(0);
    let verdict = rank.agree_end(&outcome);
    let _ = send(&mut writer, &Line::Final(end));
    let finished = Event::Finished {
        outcome: verdict.outcome,
        t_ns,
    };
    let _ = send(&mut writer, &Line::Event(Box::new(finished)));
    let _ = writer.flush();
    drop(session);
    drop(rank);
    Ok(())
}
