//! `ddlab worker`: one rank of an MPI job started by the lab (internal; DESIGN.md
//! decision 5). It connects back to the controller with the job's token; rank 0 streams
//! every event, obeys pause / resume / step / slow-motion / stop, and reports where it
//! ended so that the lab can relaunch from there. Nothing received is ever executed:
//! only `Control` values are read.

use clap::Args;

use super::CliError;

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The lab's address, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub controller: String,
    /// The job's token (the controller refuses connections without it).
    #[arg(long)]
    pub token: String,
    /// The experiment, as JSON.
    #[arg(long)]
    pub experiment: String,
    /// Continue a run: UPDATES,SAMPLES already done (rank 0 gets the parameters).
    #[arg(long, value_name = "UPDATES,SAMPLES")]
    pub resume_at: Option<String>,
}

#[cfg(not(feature = "mpi"))]
pub fn worker(_args: &WorkerArgs) -> Result<(), CliError> {
    Err(CliError::usage(
        "ddlab worker needs a ddlab built with MPI: rebuild with `cargo build --release --features mpi`",
    ))
}

#[cfg(feature = "mpi")]
pub fn worker(args: &WorkerArgs) -> Result<(), CliError> {
    use std::io::{BufRead, BufReader, Write};
    use std::net::{TcpStream, ToSocketAddrs};
    use std::time::Duration;

    use crate::comm::mpi::{abort_world, host_name, MpiWorld};
    use crate::comm::{Clock, Comm, Transport};
    use crate::config::Experiment;
    use crate::session::remote::Line;
    use crate::session::{Resume, Session, SessionOptions};
    use crate::train::{Control, Event};

    let world = MpiWorld::init().map_err(CliError::failure)?;
    std::panic::set_hook(Box::new(|info| {
        eprintln!("ddlab worker: rank panicked: {info}");
        abort_world(70);
    }));
    let t = world.transport(Clock::start());
    let (rank, size) = (t.rank(), t.size());
    let host = host_name();
    let fail = |message: String| -> ! {
        eprintln!("ddlab worker (rank {rank} on {host}): {message}");
        abort_world(1)
    };
    let exp: Experiment = serde_json::from_str(&args.experiment)
        .unwrap_or_else(|e| fail(format!("the experiment from the lab is unreadable: {e}")));
    let resume_at = args.resume_at.as_deref().map(|s| {
        s.split_once(',')
            .and_then(|(u, n)| Some((u.parse::<u64>().ok()?, n.parse::<u64>().ok()?)))
            .unwrap_or_else(|| fail(format!("--resume-at {s}: expected UPDATES,SAMPLES")))
    });
    // Reach the controller, or say why not (never hang).
    let addr = args
        .controller
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| fail(format!("the controller address {} does not resolve", args.controller)));
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap_or_else(|e| {
        fail(format!(
            "cannot reach the lab at {}: {e} (on several nodes, give the lab an address the nodes can reach: --controller-addr)",
            args.controller
        ))
    });
    let mut out = stream.try_clone().unwrap_or_else(|e| fail(e.to_string()));
    let hello = Line::Hello {
        token: args.token.clone(),
        rank,
        size,
        host: host.clone(),
        pid: std::process::id(),
    };
    fn send(out: &mut impl Write, line: &Line) -> bool {
        serde_json::to_string(line).is_ok_and(|l| writeln!(out, "{l}").is_ok())
    }
    if !send(&mut out, &hello) {
        fail("the lab closed the connection".into());
    }
    let data = crate::data::Dataset::load(exp.dataset).unwrap_or_else(|e| fail(e.to_string()));
    let data = std::sync::Arc::new(data);
    let comm = Comm::new(t, exp.allreduce);

    if rank != 0 {
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
        let mut session = Session::start_rank(exp, data, options, comm, resume).unwrap_or_else(|e| fail(e.to_string()));
        let mut writer = std::io::BufWriter::new(out.try_clone().unwrap_or_else(|e| fail(e.to_string())));
        loop {
            let over = session.poll(|e: &Event| {
                if e.is_visual() {
                    let _ = send(&mut writer, &Line::Event(Box::new(e.clone())));
                }
            });
            let _ = writer.flush();
            if over {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(writer);
        let _ = send(&mut out, &Line::Bye);
        drop(out);
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
                _ => fail("the lab did not send the parameters to resume from".into()),
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
    let mut session = Session::start_rank(exp, data, options, comm, resume).unwrap_or_else(|e| fail(e.to_string()));
    let mut writer = std::io::BufWriter::new(out);
    // The end is told after where it ended (so that the lab has both when it sees it).
    let mut finished = None;
    loop {
        while let Ok(msg) = rx.try_recv() {
            match msg {
                // The lab went away: nobody is watching; end the job.
                None => fail("the lab closed the connection; stopping the job".into()),
                // Stop, and any change of the experiment (the lab relaunches): every rank
                // must stop at the same step, so it travels as a switch in the all-reduce.
                Some(Control::Stop) => {
                    let mode = session.state().mode();
                    let _ = session.control(Control::SetMode(mode));
                    let _ = session.control(Control::Resume);
                }
                Some(c @ (Control::Pause | Control::Resume | Control::StepPhase | Control::SetPace { .. })) => {
                    let _ = session.control(c);
                }
                Some(_) => {}
            }
        }
        let mut broken = false;
        let over = session.poll(|e: &Event| {
            if matches!(e, Event::Finished { .. }) {
                finished = Some(e.clone());
            } else {
                broken |= !send(&mut writer, &Line::Event(Box::new(e.clone())));
            }
        });
        broken |= writer.flush().is_err();
        if broken {
            fail("the lab stopped listening; stopping the job".into());
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
    let _ = send(&mut writer, &Line::Final(end));
    if let Some(e) = finished {
        let _ = send(&mut writer, &Line::Event(Box::new(e)));
    }
    let _ = writer.flush();
    drop(session);
    drop(world);
    Ok(())
}
