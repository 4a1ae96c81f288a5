//! The controller side of an MPI job driven from the lab (DESIGN.md decision 5): listen
//! on a TCP port, write the run's token to a file only its owner can read, spawn
//! `mpirun -n N <args> ddlab worker --controller ADDR --token-file PATH`, accept the ranks
//! that present the token, feed rank 0's events into the session's stream, send controls
//! to rank 0, and notice at once when a rank or mpirun dies.
//!
//! The port is open to anyone who can reach it, so before a connection has shown the
//! token it gets little: one hello line of at most `HELLO_MAX` bytes within `HANDSHAKE`,
//! and at most `MAX_PENDING` such connections at a time (more are closed at once).
//! Refusals go to the lab's notes, never to the terminal the lab draws on.
//!
//! Only std: the controller needs no MPI library (the workers do).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Resume;
use crate::config::Experiment;
use crate::train::{Control, Event, EventSink, Outcome};

/// How to launch MPI jobs from the lab.
#[derive(Debug, Clone, PartialEq)]
pub struct MpiLaunch {
    /// The launcher (default `mpirun`).
    pub mpirun: String,
    /// Extra arguments for it, e.g. `--hostfile h`.
    pub mpirun_args: Vec<String>,
    /// Where the controller listens and the ranks connect (default loopback, any free
    /// port; on several nodes, an address of this node that they can reach).
    pub bind: String,
    /// The ddlab binary the ranks run (default: this one).
    pub exe: Option<std::path::PathBuf>,
    /// Seconds a rank may wait in one MPI call before it is called stalled (None: the
    /// ranks' own default).
    pub stall_timeout: Option<f64>,
    /// Whether `bind` may be an address other machines can reach (`--controller-public`).
    pub public: bool,
    /// Where the private folder with the token file goes (None: the system's temporary
    /// folder). On several nodes, a folder every node sees at the same path.
    pub token_dir: Option<PathBuf>,
}

impl Default for MpiLaunch {
    fn default() -> Self {
        MpiLaunch {
            mpirun: "mpirun".into(),
            mpirun_args: Vec::new(),
            bind: "127.0.0.1:0".into(),
            exe: None,
            stall_timeout: None,
            public: false,
            token_dir: None,
        }
    }
}

/// The most a connection may send before its token is checked: one hello line.
pub const HELLO_MAX: u64 = 4096;
/// How long a connection has to send its hello line, in all.
pub const HANDSHAKE: Duration = Duration::from_secs(5);
/// Connections that have not yet shown the token, at most, at a time.
pub const MAX_PENDING: usize = 64;

/// Checks where the controller would listen: never an unspecified address (the ranks
/// would be told to connect to 0.0.0.0), and an address other machines can reach only
/// when `public` says so. `Ok(true)` when the address is reachable from other machines.
pub fn check_bind(bind: &str, public: bool) -> Result<bool, String> {
    let addrs: Vec<std::net::SocketAddr> = bind
        .to_socket_addrs()
        .map_err(|e| format!("--controller-addr {bind}: expected HOST:PORT ({e})"))?
        .collect();
    if addrs.iter().any(|a| a.ip().is_unspecified()) {
        return Err(format!(
            "--controller-addr {bind} would tell the ranks to connect to an unspecified address: give this node's address that the ranks can reach, e.g. 10.0.0.5:0 (with --controller-public)"
        ));
    }
    let exposed = addrs.iter().any(|a| !is_loopback(a.ip()));
    if exposed && !public {
        return Err(format!(
            "--controller-addr {bind} can be reached from other machines: add --controller-public to allow it, or use a loopback address like 127.0.0.1:0"
        ));
    }
    Ok(exposed)
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
    }
}

/// A folder only this user can enter, holding the run's token in a file only this user
/// can read; both are removed when it is dropped.
struct TokenFile {
    dir: PathBuf,
    path: PathBuf,
}

impl TokenFile {
    fn create(parent: Option<&Path>, token: &str) -> Result<TokenFile, String> {
        use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
        let parent = parent.map_or_else(std::env::temp_dir, Path::to_path_buf);
        let dir = parent.join(format!("ddlab-{}-{:016x}", std::process::id(), rand::random::<u64>()));
        std::fs::DirBuilder::new().mode(0o700).create(&dir).map_err(|e| {
            format!(
                "cannot create a private folder for the run's token in {}: {e}",
                parent.display()
            )
        })?;
        let path = dir.join("token");
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|mut f| f.write_all(token.as_bytes()));
        if let Err(e) = written {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(format!("cannot write the run's token to {}: {e}", path.display()));
        }
        Ok(TokenFile { dir, path })
    }
}

impl Drop for TokenFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Reads a token file written by the lab (at most a few hundred bytes of it).
pub fn read_token_file(path: &Path) -> Result<String, String> {
    let mut token = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(256).read_to_string(&mut token))
        .map_err(|e| {
            format!(
                "cannot read the run's token from {}: {e} (on several nodes, the lab's --controller-token-dir must be a folder every node shares)",
                path.display()
            )
        })?;
    Ok(token.trim().to_string())
}

static LAUNCH: OnceLock<MpiLaunch> = OnceLock::new();

/// Sets how this process launches MPI jobs (once, from the command line).
pub fn set_launch(launch: MpiLaunch) {
    let _ = LAUNCH.set(launch);
}

/// How this process launches MPI jobs.
pub fn launch() -> MpiLaunch {
    LAUNCH.get().cloned().unwrap_or_default()
}

/// One line between the controller and a worker (JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Line {
    /// A rank introduces itself (its first line).
    Hello {
        token: String,
        rank: usize,
        size: usize,
        host: String,
        pid: u32,
    },
    /// Rank 0's events.
    Event(Box<Event>),
    /// Rank 0, at the end: where a relaunch goes on from.
    Final(Resume),
    /// Controller → rank 0: where to start from (after a relaunch).
    Resume(Resume),
    /// Controller → rank 0.
    Control(Control),
    /// A rank other than 0 is done (its connection closes on purpose).
    Bye,
    /// Controller → every rank but 0: a person holds the run (paused or stepping) or
    /// lets it go on. Waits while held are not stalls.
    Held(bool),
}

/// Whether `control` makes a person hold the run (pause, step: true) or lets it go on
/// (resume: false); None for the others. While held, a rank's long wait is no stall.
pub fn holds(control: &Control) -> Option<bool> {
    match control {
        Control::Pause | Control::StepPhase => Some(true),
        Control::Resume => Some(false),
        _ => None,
    }
}

struct Shared {
    token: String,
    size: usize,
    sink: EventSink,
    /// The job's end has been reported (Finished, or a failure).
    over: AtomicBool,
    last_step: AtomicU64,
    connected: AtomicUsize,
    hosts: Mutex<BTreeMap<usize, String>>,
    rank0: Mutex<Option<TcpStream>>,
    /// The other ranks' connections, to tell them when a person holds the run.
    others: Mutex<Vec<TcpStream>>,
    /// Whether a person holds the run now (for ranks that connect later too).
    held: AtomicBool,
    resume: Option<Resume>,
    final_state: Mutex<Option<Resume>>,
    notes: Mutex<Vec<String>>,
    /// Refusals noted in the current second, and those left out of the notes.
    refusals: Mutex<RefusalLog>,
    /// Connections that have not yet shown the token.
    pending: AtomicUsize,
    stderr_tail: Mutex<Vec<String>>,
    child: Mutex<Option<Child>>,
    /// Removed once the job's processes are gone.
    token_file: Mutex<Option<TokenFile>>,
}

/// Keeps a flood of refused connections from flooding the lab's notes: a few a second,
/// then one line counting the rest.
struct RefusalLog {
    since: Instant,
    noted: u32,
    left_out: u64,
}

/// Refusals noted per second, at most.
const REFUSALS_PER_SECOND: u32 = 5;

impl Shared {
    fn note(&self, text: String) {
        self.notes.lock().unwrap_or_else(|e| e.into_inner()).push(text);
    }

    /// Notes a refused connection (a few a second; the rest are counted).
    fn note_refusal(&self, text: String) {
        let mut log = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        self.flush_refusals(&mut log);
        if log.noted < REFUSALS_PER_SECOND {
            log.noted += 1;
            self.note(text);
        } else {
            log.left_out += 1;
        }
    }

    /// Starts a new second of refusals, counting those left out of the last one.
    fn flush_refusals(&self, log: &mut RefusalLog) {
        if log.since.elapsed() >= Duration::from_secs(1) {
            if log.left_out > 0 {
                self.note(format!("refused {} more connections in that second", log.left_out));
            }
            *log = RefusalLog {
                since: Instant::now(),
                noted: 0,
                left_out: 0,
            };
        }
    }

    /// Reports the job failed (once) and ends it.
    fn fail(&self, message: String) {
        if !self.over.swap(true, Ordering::SeqCst) {
            self.sink.send(Event::Finished {
                outcome: Outcome::Failed { message },
                t_ns: 0,
            });
        }
        self.kill();
    }

    /// Ends the job: mpirun and every rank (its process group), politely, then not.
    fn kill(&self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = child.as_mut() {
            if c.try_wait().ok().flatten().is_none() {
                let pgid = c.id();
                let _ = Command::new("sh")
                    .args(["-c", &format!("kill -TERM -{pgid} 2>/dev/null")])
                    .status();
                let deadline = Instant::now() + Duration::from_secs(3);
                while Instant::now() < deadline && c.try_wait().ok().flatten().is_none() {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = Command::new("sh")
                    .args(["-c", &format!("kill -KILL -{pgid} 2>/dev/null")])
                    .status();
                let _ = c.wait();
            }
        }
        drop(child);
        self.token_file.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    fn last_stderr(&self) -> String {
        let tail = self.stderr_tail.lock().unwrap_or_else(|e| e.into_inner());
        tail.iter()
            .rev()
            .find(|l| !l.trim().is_empty() && !l.starts_with("---"))
            .cloned()
            .unwrap_or_default()
    }
}

/// A running MPI job.
pub struct MpiJob {
    shared: Arc<Shared>,
    /// The command line it was started with, and where the controller listens.
    pub command: String,
    pub address: String,
}

impl MpiJob {
    /// Starts `exp` on `exp.workers` ranks (one more for the parameter-server modes).
    pub fn start(
        exp: &Experiment,
        launch: &MpiLaunch,
        sink: EventSink,
        resume: Option<Resume>,
    ) -> Result<MpiJob, String> {
        if !cfg!(feature = "mpi") && launch.exe.is_none() {
            return Err("the MPI backend needs a ddlab built with MPI: rebuild with `cargo build --release --features mpi` (apt-get install libopenmpi-dev openmpi-bin libclang-dev), or use the threads backend".into());
        }
        let found = Command::new(&launch.mpirun)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if found.is_err() {
            return Err(format!(
                "`{}` is not on PATH: install an MPI (Debian/Ubuntu: apt-get install openmpi-bin libopenmpi-dev; or MPICH), or use the threads backend",
                launch.mpirun
            ));
        }
        let exposed = check_bind(&launch.bind, launch.public)?;
        let listener = TcpListener::bind(&launch.bind)
            .map_err(|e| format!("the controller cannot listen on {}: {e}", launch.bind))?;
        let address = listener.local_addr().map_err(|e| e.to_string())?.to_string();
        let token = format!("{:032x}", rand::random::<u128>());
        // The token travels by a file only this user can read: a command line or an
        // environment can be read by anyone on the machine (/proc/PID/cmdline).
        let token_file = TokenFile::create(launch.token_dir.as_deref(), &token)?;
        let ranks = if exp.mode.uses_server() {
            exp.workers + 1
        } else {
            exp.workers
        };
        let exe = match &launch.exe {
            Some(e) => e.clone(),
            None => std::env::current_exe().map_err(|e| format!("cannot find the ddlab binary: {e}"))?,
        };
        let exp_json = serde_json::to_string(exp).map_err(|e| e.to_string())?;
        let mut args: Vec<String> = launch.mpirun_args.clone();
        args.extend([
            "-n".into(),
            ranks.to_string(),
            exe.display().to_string(),
            "worker".into(),
        ]);
        args.extend([
            "--controller".into(),
            address.clone(),
            "--token-file".into(),
            token_file.path.display().to_string(),
        ]);
        args.extend(["--experiment".into(), exp_json]);
        if let Some(r) = &resume {
            args.extend(["--resume-at".into(), format!("{},{}", r.updates, r.samples)]);
        }
        if let Some(s) = launch.stall_timeout {
            args.extend(["--stall-timeout".into(), s.to_string()]);
        }
        let command = format!(
            "{} {} … worker --controller {address}",
            launch.mpirun,
            args[..launch.mpirun_args.len() + 2].join(" ")
        );
        use std::os::unix::process::CommandExt;
        let mut child = Command::new(&launch.mpirun)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("`{}` could not be started: {e}", launch.mpirun))?;
        let stderr = child.stderr.take();
        let shared = Arc::new(Shared {
            token,
            size: ranks,
            sink,
            over: AtomicBool::new(false),
            last_step: AtomicU64::new(resume.as_ref().map_or(0, |r| r.updates)),
            connected: AtomicUsize::new(0),
            hosts: Mutex::new(BTreeMap::new()),
            rank0: Mutex::new(None),
            others: Mutex::new(Vec::new()),
            held: AtomicBool::new(false),
            resume,
            final_state: Mutex::new(None),
            notes: Mutex::new(Vec::new()),
            refusals: Mutex::new(RefusalLog {
                since: Instant::now(),
                noted: 0,
                left_out: 0,
            }),
            pending: AtomicUsize::new(0),
            stderr_tail: Mutex::new(Vec::new()),
            child: Mutex::new(Some(child)),
            token_file: Mutex::new(Some(token_file)),
        });
        if exposed {
            shared.note(format!(
                "the controller listens on {address}, reachable from other machines (--controller-public): anyone who reaches it may try to connect (refused without the run's token), and the ranks' events and controls cross the network unencrypted"
            ));
        }
        if let Some(stderr) = stderr {
            let s = Arc::clone(&shared);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut tail = s.stderr_tail.lock().unwrap_or_else(|e| e.into_inner());
                    tail.push(line);
                    if tail.len() > 40 {
                        tail.remove(0);
                    }
                }
            });
        }
        let s = Arc::clone(&shared);
        std::thread::spawn(move || accept_loop(listener, s));
        let s = Arc::clone(&shared);
        std::thread::spawn(move || watch(s));
        Ok(MpiJob {
            shared,
            command,
            address,
        })
    }

    /// Sends a control to rank 0 (pause, resume, step, slow motion, stop).
    pub fn send(&self, control: Control) -> Result<(), String> {
        let mut rank0 = self.shared.rank0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(stream) = rank0.as_mut() else {
            return Err("the MPI job has not connected yet: try again in a moment".into());
        };
        let held = holds(&control);
        let line = serde_json::to_string(&Line::Control(control)).map_err(|e| e.to_string())?;
        writeln!(stream, "{line}").map_err(|e| format!("rank 0 cannot be reached: {e}"))?;
        if let Some(held) = held {
            // The other ranks wait in MPI for rank 0 while a person holds it: they are
            // told, so that their stall watch does not end the job.
            self.shared.held.store(held, Ordering::SeqCst);
            let line = serde_json::to_string(&Line::Held(held)).map_err(|e| e.to_string())?;
            for other in self.shared.others.lock().unwrap_or_else(|e| e.into_inner()).iter_mut() {
                let _ = writeln!(other, "{line}");
            }
        }
        Ok(())
    }

    /// What the job has said since the last call (connections, refusals).
    pub fn take_notes(&self) -> Vec<String> {
        std::mem::take(&mut *self.shared.notes.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Where rank 0 ended (parameters, updates, samples), once it has said.
    pub fn final_state(&self) -> Option<Resume> {
        self.shared
            .final_state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The hosts of the ranks connected so far.
    pub fn hosts(&self) -> BTreeMap<usize, String> {
        self.shared.hosts.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for MpiJob {
    fn drop(&mut self) {
        self.shared.over.store(true, Ordering::SeqCst);
        self.shared.kill();
    }
}

/// Accepts the ranks' connections; anything without the token is refused and logged.
/// At most `MAX_PENDING` connections wait for their hello at a time: more are closed at
/// once. Ends (closing the port) once the job is over and its processes are gone.
fn accept_loop(listener: TcpListener, s: Arc<Shared>) {
    if listener.set_nonblocking(true).is_err() {
        s.fail("the controller's port cannot be polled".into());
        return;
    }
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                if s.pending.fetch_add(1, Ordering::SeqCst) >= MAX_PENDING {
                    s.pending.fetch_sub(1, Ordering::SeqCst);
                    drop(stream);
                    s.note_refusal(format!(
                        "refused a connection from {peer}: {MAX_PENDING} others have not shown the token yet"
                    ));
                    continue;
                }
                let _ = stream.set_nonblocking(false);
                let s = Arc::clone(&s);
                std::thread::spawn(move || serve_rank(stream, s));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                {
                    let mut log = s.refusals.lock().unwrap_or_else(|e| e.into_inner());
                    s.flush_refusals(&mut log);
                }
                if s.over.load(Ordering::SeqCst) && s.exited() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

impl Shared {
    /// Whether mpirun (and so every rank) has exited.
    fn exited(&self) -> bool {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        child.as_mut().is_none_or(|c| c.try_wait().ok().flatten().is_some())
    }
}

/// Reads a connection's first line: at most `HELLO_MAX` bytes, all within `HANDSHAKE`
/// (a byte now and then does not keep it open). Says why not, for the notes.
fn read_hello(reader: &mut BufReader<TcpStream>) -> Result<String, String> {
    let deadline = Instant::now() + HANDSHAKE;
    let mut line = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("no hello line within {} s", HANDSHAKE.as_secs()));
        }
        let _ = reader.get_ref().set_read_timeout(Some(left));
        let room = HELLO_MAX - line.len() as u64;
        match (&mut *reader).take(room).read_until(b'\n', &mut line) {
            Ok(_) if line.ends_with(b"\n") => {
                return String::from_utf8(line).map_err(|_| "a hello line that is not UTF-8".into())
            }
            Ok(_) if line.len() as u64 >= HELLO_MAX => {
                return Err(format!("more than {HELLO_MAX} bytes without a hello line"))
            }
            Ok(_) => return Err("it closed before its hello line".into()),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Compares a token in time that does not depend on where it first differs.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// Counts a connection as waiting for its hello until dropped.
struct Pending<'a>(&'a AtomicUsize);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn serve_rank(stream: TcpStream, s: Arc<Shared>) {
    let peer = stream.peer_addr().map_or("?".into(), |a| a.to_string());
    let pending = Pending(&s.pending); // (counted by the accept loop)
    let Ok(write_half) = stream.try_clone() else { return };
    let mut reader = BufReader::new(stream);
    let hello = read_hello(&mut reader)
        .and_then(|l| serde_json::from_str::<Line>(&l).map_err(|_| "a first line that is not a hello".to_string()));
    let (rank, host) = match hello {
        Ok(Line::Hello {
            token,
            rank,
            size,
            host,
            ..
        }) if same_secret(&token, &s.token) && size == s.size && rank < size => (rank, host),
        Ok(_) => {
            s.note_refusal(format!("refused a connection from {peer}: no valid token"));
            return;
        }
        Err(why) => {
            s.note_refusal(format!("refused a connection from {peer}: {why}"));
            return;
        }
    };
    drop(pending);
    let _ = write_half.set_read_timeout(None); // (one socket: this clears the reader's too)
    s.hosts
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(rank, host.clone());
    s.connected.fetch_add(1, Ordering::SeqCst);
    if rank == 0 {
        let mut w = write_half;
        if let Some(r) = &s.resume {
            if let Ok(line) = serde_json::to_string(&Line::Resume(r.clone())) {
                let _ = writeln!(w, "{line}");
            }
        }
        *s.rank0.lock().unwrap_or_else(|e| e.into_inner()) = Some(w);
    } else if let Ok(mut w) = write_half.try_clone() {
        let mut others = s.others.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(line) = serde_json::to_string(&Line::Held(s.held.load(Ordering::SeqCst))) {
            let _ = writeln!(w, "{line}");
        }
        others.push(w);
    }
    let mut done = false;
    for line in reader.lines() {
        let Ok(line) = line else { break };
        match serde_json::from_str::<Line>(&line) {
            Ok(Line::Bye) => done = true,
            // The other ranks send only what they alone saw: their phases and messages.
            Ok(Line::Event(e)) if rank > 0 => {
                if e.is_visual() {
                    s.sink.send(*e);
                }
            }
            Ok(Line::Event(e)) => {
                if let Event::WorkerStep(w) = &*e {
                    s.last_step.store(w.step, Ordering::SeqCst);
                }
                if matches!(&*e, Event::Finished { .. }) {
                    done = true;
                    if s.over.swap(true, Ordering::SeqCst) {
                        continue;
                    }
                }
                s.sink.send(*e);
            }
            Ok(Line::Final(r)) => *s.final_state.lock().unwrap_or_else(|e| e.into_inner()) = Some(r),
            Ok(_) => {}
            Err(e) => s.note(format!("rank {rank} sent an unreadable line ({e}); ignored")),
        }
    }
    // The connection closed: fine once the rank said it was done, a lost rank otherwise.
    if !done && !s.over.load(Ordering::SeqCst) {
        s.fail(format!(
            "rank {rank} on {host} was lost at step {}: the job was stopped (press R to start again)",
            s.last_step.load(Ordering::SeqCst)
        ));
    }
}

/// Watches mpirun: its early exit, or ranks that never connect, end the job with a reason.
fn watch(s: Arc<Shared>) {
    let started = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let status = {
            let mut child = s.child.lock().unwrap_or_else(|e| e.into_inner());
            child.as_mut().and_then(|c| c.try_wait().ok().flatten())
        };
        if let Some(status) = status {
            // No rank is left to read the token.
            s.token_file.lock().unwrap_or_else(|e| e.into_inner()).take();
            // Give the sockets a moment to deliver the last lines.
            std::thread::sleep(Duration::from_millis(300));
            if !s.over.load(Ordering::SeqCst) {
                let why = s.last_stderr();
                s.fail(format!(
                    "mpirun exited ({status}) before the job finished{}",
                    if why.is_empty() {
                        String::new()
                    } else {
                        format!(": {why}")
                    }
                ));
            }
            return;
        }
        if s.over.load(Ordering::SeqCst) {
            return;
        }
        if s.connected.load(Ordering::SeqCst) < s.size && started.elapsed() > Duration::from_secs(30) {
            s.fail(format!(
                "only {} of {} ranks reached the controller within 30 s{}",
                s.connected.load(Ordering::SeqCst),
                s.size,
                match s.last_stderr() {
                    w if w.is_empty() => String::new(),
                    w => format!(": {w}"),
                }
            ));
            return;
        }
    }
}
